//! Lua 5.1 string patterns over bytes, with bounded work: a port of the matcher in
//! LuaJIT 2.1's `lib_string.c` (OpenResty's luajit2 fork, as bundled by `luajit-src`).
//!
//! In: a subject, a pattern (the caller strips a leading `^` and anchors the search itself, as
//! LuaJIT's callers do) and a step limit. Out: where the pattern matched and its captures, or
//! LuaJIT's error, or `MatchError::StepLimit`.
//!
//! The port keeps LuaJIT's structure function by function (`do_match` is `match`, `max_expand`,
//! `min_expand`, `start_capture`, `end_capture`, `match_balance`, `class_end`,
//! `match_bracket_class`, ...), with the same recursion points, so it raises "pattern too complex"
//! for exactly the patterns LuaJIT does. Invariants carried over from the C code:
//!   * positions are byte offsets into the subject; reading the subject at its length yields 0,
//!     as C reads the NUL terminator every Lua string has (`%f` and `%b` look there);
//!   * the pattern is a C string: it ends at its first NUL byte (`c_string`), and reading past
//!     its end yields 0;
//!   * character classes (`classes`) are LuaJIT's own ASCII table (`lj_char_bits`); bytes
//!     128..=255 belong to no class.
//!
//! What is added: every elementary attempt costs steps, in proportion to the CPU time it takes
//! (one per `do_match` iteration and per backtrack, one per subject byte a repetition or `%b`
//! scans, the length of a `[set]` each time the set is scanned, one per 16 bytes a back-reference
//! compares), and the matcher stops as soon as `limit` steps are spent.
//!
//! Recursion is bounded by `MAX_DEPTH` nested `do_match` calls (LuaJIT's `LJ_MAX_XLEVEL`). Each
//! level is one `do_match` frame plus at most one `max_expand`/`min_expand`/capture frame;
//! `deepest_pattern_recursion_uses_a_small_known_stack` measures the whole recursion at the
//! maximum depth: 50 KiB in a release build (254 bytes a level through `max_expand`, the
//! largest; 127 through `min_expand` or `?`), asserted below 96 KiB. The matcher never runs
//! while `gsub` calls back into Lua, so this does not add up across nested callbacks.
//!
//! Beside the matcher, by concern: `error` (LuaJIT's errors, word for word) and `plain` (what
//! callers do to a pattern before matching, and the plain search `find` uses instead). The
//! matcher's mutually recursive functions stay together in this file, hence in one codegen unit:
//! the stack per level measured above depends on how they are inlined into each other.

mod error;
mod plain;

use super::classes::match_class;

pub use self::error::{MatchError, PatternError};
pub use self::plain::{c_string, find_plain, has_specials, split_anchor};

/// Most captures in one pattern (LuaJIT's `LUA_MAXCAPTURES`).
pub const MAX_CAPTURES: usize = 32;

/// Most nested `do_match` calls (LuaJIT's `LJ_MAX_XLEVEL`); deeper is "pattern too complex".
pub const MAX_DEPTH: u32 = 200;

const ESC: u8 = b'%';

/// Bytes a back-reference compares per step.
const BYTES_PER_STEP: usize = 16;

type Step<T> = Result<T, MatchError>;

/// One capture of a successful match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture<'a> {
    Bytes(&'a [u8]),
    /// A position capture `()`: the 1-based offset in the subject.
    Position(usize),
}

#[derive(Debug, Clone, Copy)]
enum CaptureLen {
    Unfinished,
    Position,
    Closed(usize),
}

#[derive(Debug, Clone, Copy)]
struct CaptureSlot {
    start: usize,
    len: CaptureLen,
}

/// LuaJIT's `MatchState` plus the step counter.
pub struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    /// Captures started (finished or not): `captures[..level]` are live.
    level: usize,
    depth: u32,
    captures: [CaptureSlot; MAX_CAPTURES],
    steps: u64,
    limit: u64,
    #[cfg(test)]
    stack: StackProbe,
}

impl<'a> Matcher<'a> {
    /// A matcher for `pattern` (read up to its first NUL; without the anchor) over `subject`,
    /// stopping once `limit` steps are spent.
    pub fn new(subject: &'a [u8], pattern: &'a [u8], limit: u64) -> Self {
        Matcher {
            src: subject,
            pat: c_string(pattern),
            level: 0,
            depth: 0,
            captures: [CaptureSlot {
                start: 0,
                len: CaptureLen::Unfinished,
            }; MAX_CAPTURES],
            steps: 0,
            limit,
            #[cfg(test)]
            stack: StackProbe::default(),
        }
    }

    /// Steps spent since the last `take_steps`.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Returns the steps spent and starts counting from zero (the limit applies to the new count).
    pub fn take_steps(&mut self) -> u64 {
        std::mem::take(&mut self.steps)
    }

    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Matches the pattern at subject offset `start` only; `Some(end)` on success.
    pub fn match_at(&mut self, start: usize) -> Step<Option<usize>> {
        self.level = 0;
        self.depth = 0;
        self.do_match(start, 0)
    }

    /// Tries every start from `from` to the end of the subject (inclusive: an empty match at the
    /// end counts), or only `from` when `anchored`: `Some((start, end))` of the first match.
    pub fn search(&mut self, from: usize, anchored: bool) -> Step<Option<(usize, usize)>> {
        let mut start = from;
        while start <= self.src.len() {
            if let Some(end) = self.match_at(start)? {
                return Ok(Some((start, end)));
            }
            if anchored {
                break;
            }
            start += 1;
        }
        Ok(None)
    }

    /// The subject bytes `begin..end`.
    pub fn subject(&self, begin: usize, end: usize) -> &'a [u8] {
        &self.src[begin..end]
    }

    /// How many values the captures of the last match make (`push_captures`): the captures, or
    /// the whole match when there are none and `whole_if_none`.
    pub fn capture_count(&self, whole_if_none: bool) -> usize {
        if self.level == 0 && whole_if_none {
            1
        } else {
            self.level
        }
    }

    /// Capture `i` of the last match, which spanned `start..end` (`push_onecapture`). Index 0
    /// without captures is the whole match.
    pub fn capture(&self, i: usize, start: usize, end: usize) -> Result<Capture<'a>, PatternError> {
        if i >= self.level {
            return if i == 0 {
                Ok(Capture::Bytes(&self.src[start..end]))
            } else {
                Err(PatternError::InvalidCaptureIndex)
            };
        }
        let slot = self.captures[i];
        match slot.len {
            CaptureLen::Unfinished => Err(PatternError::UnfinishedCapture),
            CaptureLen::Position => Ok(Capture::Position(slot.start + 1)),
            CaptureLen::Closed(len) => Ok(Capture::Bytes(&self.src[slot.start..slot.start + len])),
        }
    }

    #[inline]
    fn spend(&mut self, steps: u64) -> Step<()> {
        self.steps = self.steps.saturating_add(steps);
        if self.steps >= self.limit {
            return Err(MatchError::StepLimit);
        }
        Ok(())
    }

    /// The pattern byte at `p`, 0 past the end.
    #[inline]
    fn pat_at(&self, p: usize) -> u8 {
        self.pat.get(p).copied().unwrap_or(0)
    }

    /// The subject byte at `s`, 0 at (and past) the end.
    #[inline]
    fn src_at(&self, s: usize) -> u8 {
        self.src.get(s).copied().unwrap_or(0)
    }

    /// LuaJIT's `match`: matches the pattern from `p` against the subject from `s`; `Some(end)`
    /// on success. Items that need no backtracking loop here instead of recursing (LuaJIT's
    /// `goto init`), so only `?`, repetitions and captures add a level.
    fn do_match(&mut self, s: usize, p: usize) -> Step<Option<usize>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PatternError::TooComplex.into());
        }
        #[cfg(test)]
        self.stack.record(self.depth);
        let result = self.match_here(s, p);
        self.depth -= 1;
        result
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> Step<Option<usize>> {
        loop {
            self.spend(1)?;
            match self.pat_at(p) {
                b'(' => {
                    return if self.pat_at(p + 1) == b')' {
                        self.start_capture(s, p + 2, CaptureLen::Position)
                    } else {
                        self.start_capture(s, p + 1, CaptureLen::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                ESC if self.pat_at(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(end) => {
                        s = end;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                ESC if self.pat_at(p + 1) == b'f' => {
                    p += 2;
                    if self.pat_at(p) != b'[' {
                        return Err(PatternError::MissingFrontierBracket.into());
                    }
                    let ep = self.class_end(p)?;
                    self.spend(3 * (ep - p) as u64)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if self.match_bracket_class(previous, p, ep - 1)
                        || !self.match_bracket_class(self.src_at(s), p, ep - 1)
                    {
                        return Ok(None);
                    }
                    p = ep;
                }
                ESC if self.pat_at(p + 1).is_ascii_digit() => match self.match_back_reference(s, self.pat_at(p + 1))? {
                    Some(end) => {
                        s = end;
                        p += 2;
                    }
                    None => return Ok(None),
                },
                0 => return Ok(Some(s)),
                b'$' if self.pat_at(p + 1) == 0 => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                _ => {
                    // A single-character item, maybe followed by a repetition.
                    let ep = self.class_end(p)?;
                    self.spend(self.item_cost(p, ep))?;
                    let matched = s < self.src.len() && self.single_match(self.src[s], p, ep);
                    match self.pat_at(ep) {
                        b'?' => {
                            if matched && let Some(end) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(end));
                            }
                            p = ep + 1;
                        }
                        b'*' => return self.max_expand(s, p, ep),
                        b'+' => {
                            return if matched {
                                self.max_expand(s + 1, p, ep)
                            } else {
                                Ok(None)
                            };
                        }
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            if !matched {
                                return Ok(None);
                            }
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Steps one test of the item `pat[p..ep]` against a byte costs: the set's length for a
    /// `[set]` (scanned byte by byte), else 1 or 2.
    #[inline]
    fn item_cost(&self, p: usize, ep: usize) -> u64 {
        (ep - p) as u64
    }

    /// The longest run of the item, then shorter ones until the rest of the pattern matches.
    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Step<Option<usize>> {
        let cost = self.item_cost(p, ep);
        let mut count = 0;
        while s + count < self.src.len() {
            self.spend(cost)?;
            if !self.single_match(self.src[s + count], p, ep) {
                break;
            }
            count += 1;
        }
        loop {
            if let Some(end) = self.do_match(s + count, ep + 1)? {
                return Ok(Some(end));
            }
            if count == 0 {
                return Ok(None);
            }
            count -= 1;
        }
    }

    /// The shortest run of the item for which the rest of the pattern matches.
    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Step<Option<usize>> {
        let cost = self.item_cost(p, ep);
        loop {
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            self.spend(cost)?;
            if s < self.src.len() && self.single_match(self.src[s], p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, len: CaptureLen) -> Step<Option<usize>> {
        let level = self.level;
        if level >= MAX_CAPTURES {
            return Err(PatternError::TooManyCaptures.into());
        }
        self.captures[level] = CaptureSlot { start: s, len };
        self.level = level + 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Step<Option<usize>> {
        let l = self.capture_to_close()?;
        self.captures[l].len = CaptureLen::Closed(s - self.captures[l].start);
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.captures[l].len = CaptureLen::Unfinished;
        }
        Ok(result)
    }

    /// The innermost capture still open.
    fn capture_to_close(&self) -> Result<usize, PatternError> {
        (0..self.level)
            .rev()
            .find(|&l| matches!(self.captures[l].len, CaptureLen::Unfinished))
            .ok_or(PatternError::InvalidPatternCapture)
    }

    /// `%1`..`%9`: the same bytes as a finished capture. (`%0` is an invalid index; a position
    /// capture never matches, as its C length is `(size_t)-2`.)
    fn match_back_reference(&mut self, s: usize, digit: u8) -> Step<Option<usize>> {
        let l = match (digit - b'0').checked_sub(1) {
            Some(l) if (l as usize) < self.level => l as usize,
            _ => return Err(PatternError::InvalidCaptureIndex.into()),
        };
        let slot = self.captures[l];
        match slot.len {
            CaptureLen::Unfinished => Err(PatternError::InvalidCaptureIndex.into()),
            CaptureLen::Position => Ok(None),
            CaptureLen::Closed(len) => {
                if self.src.len() - s < len {
                    return Ok(None);
                }
                self.spend((len / BYTES_PER_STEP) as u64)?;
                let matches = self.src[slot.start..slot.start + len] == self.src[s..s + len];
                Ok(matches.then_some(s + len))
            }
        }
    }

    /// `%bxy`: a balanced run from `x` to its matching `y`.
    fn match_balance(&mut self, s: usize, p: usize) -> Step<Option<usize>> {
        let open = self.pat_at(p);
        let close = self.pat_at(p + 1);
        if open == 0 || close == 0 {
            return Err(PatternError::Unbalanced.into());
        }
        if self.src_at(s) != open {
            return Ok(None);
        }
        let mut depth = 1usize;
        for i in s + 1..self.src.len() {
            self.spend(1)?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    /// Where the single-character item at `p` ends (`classend`).
    #[inline]
    fn class_end(&self, p: usize) -> Result<usize, PatternError> {
        let mut p = p;
        let first = self.pat_at(p);
        p += 1;
        match first {
            ESC => {
                if self.pat_at(p) == 0 {
                    return Err(PatternError::EndsWithEscape);
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.pat_at(p) == b'^' {
                    p += 1;
                }
                // The first member is taken unconditionally, so `[]]` is the set of `]`.
                loop {
                    let c = self.pat_at(p);
                    if c == 0 {
                        return Err(PatternError::MissingBracket);
                    }
                    p += 1;
                    if c == ESC && self.pat_at(p) != 0 {
                        p += 1;
                    }
                    if self.pat_at(p) == b']' {
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    /// Whether byte `c` matches the item `pat[p..ep]`.
    #[inline]
    fn single_match(&self, c: u8, p: usize, ep: usize) -> bool {
        match self.pat[p] {
            b'.' => true,
            ESC => match_class(c, self.pat_at(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            literal => literal == c,
        }
    }

    /// Whether `c` is in the set `pat[p..=end]`, where `pat[p]` is `[` and `pat[end]` is `]`.
    fn match_bracket_class(&self, c: u8, p: usize, end: usize) -> bool {
        let mut p = p;
        let mut found = true;
        if self.pat_at(p + 1) == b'^' {
            found = false;
            p += 1;
        }
        p += 1;
        while p < end {
            if self.pat[p] == ESC {
                p += 1;
                if match_class(c, self.pat_at(p)) {
                    return found;
                }
            } else if self.pat_at(p + 1) == b'-' && p + 2 < end {
                if self.pat[p] <= c && c <= self.pat[p + 2] {
                    return found;
                }
                p += 2;
            } else if self.pat[p] == c {
                return found;
            }
            p += 1;
        }
        !found
    }
}

/// Test-only record of how deep the native stack went under `do_match`.
#[cfg(test)]
#[derive(Default)]
struct StackProbe {
    /// Address of a local in the outermost `do_match` frame.
    top: usize,
    /// Lowest such address seen (stacks grow down on every target we build for).
    lowest: usize,
}

#[cfg(test)]
impl StackProbe {
    #[inline(always)]
    fn record(&mut self, depth: u32) {
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        if depth == 1 && self.top == 0 {
            self.top = here;
            self.lowest = here;
        }
        self.lowest = self.lowest.min(here);
    }
}

#[cfg(test)]
impl Matcher<'_> {
    /// Native stack bytes the deepest `do_match` recursion so far took below the outermost one.
    pub(super) fn stack_used(&self) -> usize {
        self.stack.top - self.stack.lowest
    }
}
