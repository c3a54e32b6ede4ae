//! Safe PCRE2 layer under `ngx.re`.
//!
//! In: a pattern (bytes) plus PCRE2 compile options, then subjects (bytes), a
//! start offset and the exec mode (backtracking or DFA, UTF check on/off).
//! Out: a compiled [`Regex`] (capture count, name table) and per exec either
//! the capture spans or a PCRE1-numbered error code, because lua-nginx-module
//! 0.10.23 (built on PCRE1) reports `pcre_exec() failed: N` with PCRE1 numbers
//! and `pcre_compile() failed: ...` with PCRE1 wording; scripts compare those.
//!
//! Compiled regexes live in a bounded per-thread cache (one Lua VM per thread),
//! so hot handlers never recompile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::ptr;
use std::rc::Rc;

use pcre2_sys::*;

/// lua-nginx-module writes compile errors into a 128-byte buffer (127 bytes
/// plus NUL), so long messages come out truncated; scripts see the same.
const MAX_ERR_MSG_LEN: usize = 127;

/// Workspace size (in ints) lua-nginx-module gives `pcre_dfa_exec`.
const DFA_WORKSPACE_COUNT: usize = 1000;

/// Regexes kept per thread; lua-nginx-module's default `lua_regex_cache_max_entries`.
const CACHE_MAX_ENTRIES: usize = 1024;

/// PCRE1 `PCRE_ERROR_*` codes reported by `ngx.re` on exec failures.
const PCRE1_ERROR_BADUTF8: i32 = -10;
const PCRE1_ERROR_BADUTF8_OFFSET: i32 = -11;

/// Compile options for the `ngx.re` option letters (PCRE1 flag → PCRE2 option).
pub const OPT_CASELESS: u32 = PCRE2_CASELESS;
pub const OPT_MULTILINE: u32 = PCRE2_MULTILINE;
pub const OPT_DOTALL: u32 = PCRE2_DOTALL;
pub const OPT_EXTENDED: u32 = PCRE2_EXTENDED;
pub const OPT_ANCHORED: u32 = PCRE2_ANCHORED;
pub const OPT_UTF: u32 = PCRE2_UTF;
pub const OPT_DUPNAMES: u32 = PCRE2_DUPNAMES;
/// PCRE1's `PCRE_JAVASCRIPT_COMPAT` was split into these three in PCRE2.
pub const OPT_JAVASCRIPT: u32 = PCRE2_ALT_BSUX | PCRE2_ALLOW_EMPTY_CLASS | PCRE2_MATCH_UNSET_BACKREF;

/// One successful exec: `rc` as PCRE returns it (highest set group + 1) and
/// the spans of groups `0..=capture_count` (`None` when unset). DFA matches
/// carry only the whole-match span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rc: usize,
    pub spans: Vec<Option<(usize, usize)>>,
}

impl Match {
    /// Whole-match span; always set on a successful exec.
    pub fn whole(&self) -> (usize, usize) {
        self.spans.first().copied().flatten().unwrap_or((0, 0))
    }
}

/// How to run one exec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecMode {
    /// Use the DFA matcher (longest match, no groups).
    pub dfa: bool,
    /// The caller validated the whole subject with [`check_utf8`]; PCRE2 then
    /// skips its own per-exec scan (which would make `gsub` quadratic).
    pub utf_checked: bool,
}

/// Validates a subject for a UTF regex; `Err` is PCRE1's bad-UTF-8 code.
pub fn check_utf8(subject: &[u8]) -> Result<(), i32> {
    std::str::from_utf8(subject).map(drop).map_err(|_| PCRE1_ERROR_BADUTF8)
}

/// A compiled pattern, JIT-compiled when the platform supports it.
pub struct Regex {
    code: *mut pcre2_code_8,
    match_data: *mut pcre2_match_data_8,
    capture_count: usize,
    utf: bool,
    /// Name table in PCRE order (sorted by name): (group number, name).
    names: Vec<(usize, Vec<u8>)>,
}

impl Drop for Regex {
    fn drop(&mut self) {
        // SAFETY: both pointers were returned non-null by PCRE2 in `compile`
        // and are owned solely by this value, so they are freed exactly once.
        unsafe {
            pcre2_match_data_free_8(self.match_data);
            pcre2_code_free_8(self.code);
        }
    }
}

impl Regex {
    /// Compiles `pattern`; the error is the lua-nginx-module message
    /// (`pcre_compile() failed: ... in "..." [at "..."]`).
    pub fn compile(pattern: &[u8], options: u32) -> Result<Regex, Vec<u8>> {
        let mut errcode: c_int = 0;
        let mut erroffset: usize = 0;
        // SAFETY: the pattern pointer/length pair is a valid slice (PCRE2 never
        // reads past `len`, and accepts a dangling pointer for len 0 only when
        // non-null, which slices guarantee); the out-pointers are live locals.
        let code = unsafe {
            pcre2_compile_8(
                pattern.as_ptr(),
                pattern.len(),
                options,
                &mut errcode,
                &mut erroffset,
                ptr::null_mut(),
            )
        };
        if code.is_null() {
            return Err(compile_error_message(pattern, errcode, erroffset));
        }
        // Owned from here on, so every early return frees it.
        let mut re = Regex {
            code,
            match_data: ptr::null_mut(),
            capture_count: 0,
            utf: false,
            names: Vec::new(),
        };

        // JIT failure (e.g. no JIT on this CPU) just leaves the interpreter in use.
        // SAFETY: `code` is a valid compiled pattern.
        unsafe { pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) };

        re.capture_count = re.info_u32(PCRE2_INFO_CAPTURECOUNT)? as usize;
        // Inline (*UTF) turns UTF on too, so ask the compiled pattern.
        re.utf = re.info_u32(PCRE2_INFO_ALLOPTIONS)? & PCRE2_UTF != 0;
        re.names = re.read_name_table()?;
        // SAFETY: `code` is valid; the match data gets capture_count + 1 pairs.
        re.match_data = unsafe { pcre2_match_data_create_from_pattern_8(code, ptr::null_mut()) };
        if re.match_data.is_null() {
            return Err(b"no memory".to_vec());
        }
        Ok(re)
    }

    /// Whether the pattern was compiled in UTF mode (subjects must be UTF-8).
    pub fn is_utf(&self) -> bool {
        self.utf
    }

    /// Number of capturing groups (not counting group 0).
    pub fn capture_count(&self) -> usize {
        self.capture_count
    }

    /// (group number, name) pairs in PCRE name-table order.
    pub fn names(&self) -> &[(usize, Vec<u8>)] {
        &self.names
    }

    fn info_u32(&self, what: u32) -> Result<u32, Vec<u8>> {
        let mut value: u32 = 0;
        // SAFETY: for the u32-valued info items asked here PCRE2 writes one u32
        // into the provided location.
        let rc = unsafe { pcre2_pattern_info_8(self.code, what, (&mut value as *mut u32).cast()) };
        if rc != 0 {
            return Err(format!("pcre2_pattern_info() failed: {rc}").into_bytes());
        }
        Ok(value)
    }

    fn read_name_table(&self) -> Result<Vec<(usize, Vec<u8>)>, Vec<u8>> {
        let count = self.info_u32(PCRE2_INFO_NAMECOUNT)? as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        let entry_size = self.info_u32(PCRE2_INFO_NAMEENTRYSIZE)? as usize;
        let mut table: *const u8 = ptr::null();
        // SAFETY: PCRE2_INFO_NAMETABLE writes a pointer into the table owned by `code`.
        let rc =
            unsafe { pcre2_pattern_info_8(self.code, PCRE2_INFO_NAMETABLE, (&mut table as *mut *const u8).cast()) };
        if rc != 0 || table.is_null() || entry_size < 3 {
            return Err(b"cannot acquire named subpattern table".to_vec());
        }
        // SAFETY: the table holds `count` entries of `entry_size` bytes each and
        // lives as long as `code`; we copy it out immediately.
        let raw = unsafe { std::slice::from_raw_parts(table, count * entry_size) };
        Ok(raw
            .chunks_exact(entry_size)
            .map(|entry| {
                let group = usize::from(entry[0]) << 8 | usize::from(entry[1]);
                let name = &entry[2..];
                let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                (group, name[..len].to_vec())
            })
            .collect())
    }

    /// Runs the regex on `subject` from byte offset `start`, giving up after
    /// `match_limit` of PCRE2's backtracking steps (`-8`, as PCRE1's
    /// `PCRE_ERROR_MATCHLIMIT`). `Ok(None)` is no match; `Err(code)` carries
    /// the PCRE1 error number.
    pub fn exec(&self, subject: &[u8], start: usize, mode: ExecMode, match_limit: u32) -> Result<Option<Match>, i32> {
        let context = MATCH_CONTEXT.with(|c| c.0);
        // SAFETY: the context is this thread's own, valid for its life.
        unsafe { pcre2_set_match_limit_8(context, match_limit) };
        let mut options = 0;
        if mode.utf_checked {
            // PCRE2 must not see invalid UTF-8 under NO_UTF_CHECK (undefined
            // behaviour), so the one thing left to verify is the start offset.
            if subject.get(start).is_some_and(|&b| b & 0xC0 == 0x80) {
                return Err(PCRE1_ERROR_BADUTF8_OFFSET);
            }
            options |= PCRE2_NO_UTF_CHECK;
        }
        let dfa = mode.dfa;
        let mut rc = if dfa {
            let mut workspace = [0 as c_int; DFA_WORKSPACE_COUNT];
            // SAFETY: subject slice, match data and workspace are valid for the
            // lengths passed; PCRE2 validates `start` against the length.
            unsafe {
                pcre2_dfa_match_8(
                    self.code,
                    subject.as_ptr(),
                    subject.len(),
                    start,
                    options,
                    self.match_data,
                    context,
                    workspace.as_mut_ptr(),
                    DFA_WORKSPACE_COUNT,
                )
            }
        } else {
            self.run_match(subject, start, options, context)
        };
        if rc == PCRE2_ERROR_JIT_STACKLIMIT {
            // The JIT's machine stack is small; the interpreter keeps its
            // frames on the heap and copes with deeper backtracking.
            rc = self.run_match(subject, start, options | PCRE2_NO_JIT, context);
        }
        if rc == PCRE2_ERROR_NOMATCH {
            return Ok(None);
        }
        if rc < 0 {
            return Err(pcre1_exec_error(rc));
        }
        // DFA: 0 means "more matches than ovector slots"; the first (longest)
        // one is still there, which is all ngx.re uses.
        let rc = (rc as usize).max(1);
        let slots = if dfa { 1 } else { self.capture_count + 1 };
        // SAFETY: the ovector has at least `slots` pairs (match data was sized
        // from the pattern) and stays valid until the next exec on `self`.
        let ovector = unsafe { std::slice::from_raw_parts(pcre2_get_ovector_pointer_8(self.match_data), slots * 2) };
        let spans = (0..slots)
            .map(|i| {
                let (from, to) = (ovector[2 * i], ovector[2 * i + 1]);
                // \K inside a lookahead can report end < start; clamp so that
                // slicing never panics.
                (i < rc && from != PCRE2_UNSET && from <= subject.len()).then(|| (from, to.clamp(from, subject.len())))
            })
            .collect();
        Ok(Some(Match {
            rc: rc.min(slots),
            spans,
        }))
    }

    fn run_match(&self, subject: &[u8], start: usize, options: u32, context: *mut pcre2_match_context_8) -> c_int {
        // SAFETY: subject slice, match data and context are valid; PCRE2 validates `start`.
        unsafe {
            pcre2_match_8(
                self.code,
                subject.as_ptr(),
                subject.len(),
                start,
                options,
                self.match_data,
                context,
            )
        }
    }
}

/// Maps a PCRE2 exec error to the PCRE1 number lua-nginx-module reports.
fn pcre1_exec_error(rc: c_int) -> i32 {
    match rc {
        PCRE2_ERROR_UTF8_ERR21..=PCRE2_ERROR_UTF8_ERR1 => PCRE1_ERROR_BADUTF8,
        PCRE2_ERROR_BADUTFOFFSET => PCRE1_ERROR_BADUTF8_OFFSET,
        PCRE2_ERROR_PARTIAL => -12,
        PCRE2_ERROR_BADOFFSET => -24,
        PCRE2_ERROR_BADOPTION => -3,
        PCRE2_ERROR_NOMEMORY | PCRE2_ERROR_HEAPLIMIT => -6,
        PCRE2_ERROR_MATCHLIMIT => -8,
        PCRE2_ERROR_INTERNAL => -14,
        PCRE2_ERROR_DFA_UITEM | PCRE2_ERROR_DFA_UFUNC => -16,
        PCRE2_ERROR_DFA_UCOND => -17,
        PCRE2_ERROR_DFA_WSSIZE => -19,
        PCRE2_ERROR_DFA_RECURSE => -20,
        PCRE2_ERROR_DEPTHLIMIT => -21,
        PCRE2_ERROR_RECURSELOOP => -26,
        PCRE2_ERROR_JIT_STACKLIMIT => -27,
        PCRE2_ERROR_DFA_BADRESTART => -30,
        other => other,
    }
}

/// Builds lua-nginx-module's compile error text, PCRE1 wording where known.
fn compile_error_message(pattern: &[u8], errcode: c_int, erroffset: usize) -> Vec<u8> {
    let text = if errcode < 0 {
        // Negative codes at compile time are UTF-8 validity errors in the pattern.
        "invalid UTF-8 string".to_string()
    } else {
        pcre1_compile_text(errcode).map_or_else(|| pcre2_error_text(errcode), str::to_string)
    };
    let mut msg = b"pcre_compile() failed: ".to_vec();
    msg.extend_from_slice(text.as_bytes());
    msg.extend_from_slice(b" in \"");
    msg.extend_from_slice(pattern);
    msg.push(b'"');
    if erroffset < pattern.len() {
        msg.extend_from_slice(b" at \"");
        msg.extend_from_slice(&pattern[erroffset..]);
        msg.push(b'"');
    }
    msg.truncate(MAX_ERR_MSG_LEN);
    msg
}

/// PCRE1 texts for the PCRE2 compile errors that have a PCRE1 twin.
fn pcre1_compile_text(errcode: c_int) -> Option<&'static str> {
    Some(match errcode as u32 {
        PCRE2_ERROR_END_BACKSLASH => "\\ at end of pattern",
        PCRE2_ERROR_END_BACKSLASH_C => "\\c at end of pattern",
        PCRE2_ERROR_UNKNOWN_ESCAPE => "unrecognized character follows \\",
        PCRE2_ERROR_QUANTIFIER_OUT_OF_ORDER => "numbers out of order in {} quantifier",
        PCRE2_ERROR_QUANTIFIER_TOO_BIG => "number too big in {} quantifier",
        PCRE2_ERROR_MISSING_SQUARE_BRACKET => "missing terminating ] for character class",
        PCRE2_ERROR_ESCAPE_INVALID_IN_CLASS => "invalid escape sequence in character class",
        PCRE2_ERROR_CLASS_RANGE_ORDER => "range out of order in character class",
        PCRE2_ERROR_QUANTIFIER_INVALID => "nothing to repeat",
        PCRE2_ERROR_INVALID_AFTER_PARENS_QUERY => "unrecognized character after (? or (?-",
        PCRE2_ERROR_POSIX_CLASS_NOT_IN_CLASS => "POSIX named classes are supported only within a class",
        PCRE2_ERROR_POSIX_NO_SUPPORT_COLLATING => "POSIX collating elements are not supported",
        PCRE2_ERROR_MISSING_CLOSING_PARENTHESIS => "missing )",
        PCRE2_ERROR_BAD_SUBPATTERN_REFERENCE => "reference to non-existent subpattern",
        PCRE2_ERROR_MISSING_COMMENT_CLOSING => "missing ) after comment",
        PCRE2_ERROR_PATTERN_TOO_LARGE => "regular expression is too large",
        PCRE2_ERROR_HEAP_FAILED => "failed to get memory",
        PCRE2_ERROR_UNMATCHED_CLOSING_PARENTHESIS => "unmatched parentheses",
        PCRE2_ERROR_LOOKBEHIND_NOT_FIXED_LENGTH => "lookbehind assertion is not fixed length",
        PCRE2_ERROR_TOO_MANY_CONDITION_BRANCHES => "conditional group contains more than two branches",
        PCRE2_ERROR_UNKNOWN_POSIX_CLASS => "unknown POSIX class name",
        PCRE2_ERROR_CODE_POINT_TOO_BIG => "character value in \\x{} or \\o{} is too large",
        PCRE2_ERROR_UNSUPPORTED_ESCAPE_SEQUENCE => "PCRE does not support \\L, \\l, \\N{name}, \\U, or \\u",
        PCRE2_ERROR_UNRECOGNIZED_AFTER_QUERY_P => "unrecognized character after (?P",
        PCRE2_ERROR_MISSING_NAME_TERMINATOR => "syntax error in subpattern name (missing terminator)",
        PCRE2_ERROR_DUPLICATE_SUBPATTERN_NAME => "two named subpatterns have the same name",
        PCRE2_ERROR_INVALID_SUBPATTERN_NAME => "group name must start with a non-digit",
        PCRE2_ERROR_MALFORMED_UNICODE_PROPERTY => "malformed \\P or \\p sequence",
        PCRE2_ERROR_UNKNOWN_UNICODE_PROPERTY => "unknown property name after \\P or \\p",
        PCRE2_ERROR_OCTAL_BYTE_TOO_BIG => "octal value is greater than \\377 in 8-bit non-UTF-8 mode",
        PCRE2_ERROR_VERB_UNKNOWN => "(*VERB) not recognized or malformed",
        PCRE2_ERROR_SUBPATTERN_NAME_EXPECTED => "subpattern name expected",
        PCRE2_ERROR_SUBPATTERN_NAMES_MISMATCH => "different names for subpatterns of the same number are not allowed",
        PCRE2_ERROR_MARK_MISSING_ARGUMENT => "(*MARK) must have an argument",
        PCRE2_ERROR_BACKSLASH_K_SYNTAX => "\\k is not followed by a braced, angle-bracketed, or quoted name",
        PCRE2_ERROR_BACKSLASH_U_CODE_POINT_TOO_BIG => "character value in \\u.... sequence is too large",
        _ => return None,
    })
}

fn pcre2_error_text(errcode: c_int) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: PCRE2 writes at most `buf.len()` bytes, NUL included, and
    // returns the message length (or a negative code).
    let len = unsafe { pcre2_get_error_message_8(errcode, buf.as_mut_ptr(), buf.len()) };
    match usize::try_from(len) {
        Ok(len) => String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned(),
        Err(_) => format!("error {errcode}"),
    }
}

/// Per-thread compiled-regex cache, keyed by (options, pattern).
#[derive(Default)]
struct Cache {
    by_options: HashMap<u32, HashMap<Vec<u8>, Rc<Regex>>>,
    entries: usize,
}

/// A match context, for its match limit; one per thread, set before each exec.
struct MatchContext(*mut pcre2_match_context_8);

impl Drop for MatchContext {
    fn drop(&mut self) {
        // SAFETY: created by `pcre2_match_context_create_8`, freed once.
        unsafe { pcre2_match_context_free_8(self.0) }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    // SAFETY: a null general context means PCRE2's default allocator. A null
    // result would make PCRE2 use its defaults (no limit from us) — it only
    // happens when out of memory at thread start.
    static MATCH_CONTEXT: MatchContext = MatchContext(unsafe { pcre2_match_context_create_8(ptr::null_mut()) });
}

/// Returns the compiled regex for (pattern, options), compiling on a miss.
/// Errors are not cached: bad patterns are rare and cheap to reject again.
pub fn cached(pattern: &[u8], options: u32) -> Result<Rc<Regex>, Vec<u8>> {
    let hit = CACHE.with_borrow(|cache| cache.by_options.get(&options).and_then(|m| m.get(pattern)).cloned());
    if let Some(re) = hit {
        return Ok(re);
    }
    let re = Rc::new(Regex::compile(pattern, options)?);
    CACHE.with_borrow_mut(|cache| {
        if cache.entries >= CACHE_MAX_ENTRIES {
            // Dropping everything keeps the bound with no bookkeeping on hits;
            // the hot set refills within a few requests.
            cache.by_options.clear();
            cache.entries = 0;
        }
        cache
            .by_options
            .entry(options)
            .or_default()
            .insert(pattern.to_vec(), Rc::clone(&re));
        cache.entries += 1;
    });
    Ok(re)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 10_000_000;

    const NORMAL: ExecMode = ExecMode {
        dfa: false,
        utf_checked: false,
    };
    const DFA: ExecMode = ExecMode {
        dfa: true,
        utf_checked: false,
    };

    fn err(pattern: &[u8], options: u32) -> String {
        String::from_utf8(Regex::compile(pattern, options).err().expect("compile error")).unwrap()
    }

    #[test]
    fn compile_errors_use_pcre1_wording() {
        assert_eq!(err(b"(abc", 0), r#"pcre_compile() failed: missing ) in "(abc""#);
        assert_eq!(
            err(b"a[", 0),
            r#"pcre_compile() failed: missing terminating ] for character class in "a[""#
        );
        assert_eq!(
            err(b"a)", 0),
            r#"pcre_compile() failed: unmatched parentheses in "a)" at ")""#
        );
        assert_eq!(
            Regex::compile(b"\xff", OPT_UTF).err().unwrap(),
            b"pcre_compile() failed: invalid UTF-8 string in \"\xff\" at \"\xff\"".to_vec()
        );
        assert!(err(&[b'('; 200], 0).len() <= MAX_ERR_MSG_LEN);
    }

    #[test]
    fn exec_reports_spans_and_rc() {
        let re = Regex::compile(b"([0-9])|(x)", 0).unwrap();
        assert_eq!(re.capture_count(), 2);
        let m = re.exec(b"ab12", 0, NORMAL, LIMIT).unwrap().unwrap();
        assert_eq!(m.rc, 2);
        assert_eq!(m.spans, vec![Some((2, 3)), Some((2, 3)), None]);
        assert_eq!(re.exec(b"ab12", 3, NORMAL, LIMIT).unwrap().unwrap().whole(), (3, 4));
        assert_eq!(re.exec(b"ab", 0, NORMAL, LIMIT), Ok(None));
        assert_eq!(re.exec(b"ab", 3, NORMAL, LIMIT), Err(-24));
    }

    #[test]
    fn dfa_finds_longest_match_without_groups() {
        let re = Regex::compile(b"(he|hell)", 0).unwrap();
        let m = re.exec(b"hello", 0, DFA, LIMIT).unwrap().unwrap();
        assert_eq!((m.rc, m.spans), (1, vec![Some((0, 4))]));
        let backref = Regex::compile(b"(a)\\1", 0).unwrap();
        assert_eq!(backref.exec(b"aa", 0, DFA, LIMIT), Err(-16));
    }

    #[test]
    fn bad_utf8_subject_is_pcre1_error() {
        let re = Regex::compile("你好".as_bytes(), OPT_UTF).unwrap();
        assert!(re.is_utf());
        assert_eq!(re.exec(&"你好".as_bytes()[..4], 0, NORMAL, LIMIT), Err(-10));
        assert_eq!(check_utf8(&"你好".as_bytes()[..4]), Err(-10));
        let any = Regex::compile(b"", OPT_UTF).unwrap();
        assert_eq!(any.exec("章".as_bytes(), 1, NORMAL, LIMIT), Err(-11));
        let checked = ExecMode {
            dfa: false,
            utf_checked: true,
        };
        assert_eq!(any.exec("章".as_bytes(), 1, checked, LIMIT), Err(-11));
        assert_eq!(
            any.exec("章".as_bytes(), 3, checked, LIMIT).unwrap().unwrap().whole(),
            (3, 3)
        );
        assert!(Regex::compile(b"(*UTF)x", 0).unwrap().is_utf());
    }

    #[test]
    fn name_table_and_cache() {
        let re = cached(b"(?<b>x)(?<a>y)", 0).unwrap();
        assert_eq!(re.names(), &[(2, b"a".to_vec()), (1, b"b".to_vec())]);
        assert!(Rc::ptr_eq(&re, &cached(b"(?<b>x)(?<a>y)", 0).unwrap()));
        assert!(!Rc::ptr_eq(&re, &cached(b"(?<b>x)(?<a>y)", OPT_CASELESS).unwrap()));
    }
}
