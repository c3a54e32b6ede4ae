//! Why a match stops without a result: the step limit, or one of LuaJIT's pattern errors, with
//! LuaJIT's message word for word.

use std::fmt;

/// Why a match stopped without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchError {
    /// The step limit was reached; the match was abandoned where it stood.
    StepLimit,
    /// The pattern is malformed or misuses captures; LuaJIT raises the same error.
    Pattern(PatternError),
}

/// LuaJIT's pattern errors (`LJ_ERR_STRPAT*`, `LJ_ERR_STRCAP*` in `lj_errmsg.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    EndsWithEscape,
    MissingBracket,
    Unbalanced,
    MissingFrontierBracket,
    InvalidPatternCapture,
    InvalidCaptureIndex,
    TooManyCaptures,
    UnfinishedCapture,
    TooComplex,
}

impl PatternError {
    /// LuaJIT's message, word for word.
    pub fn message(self) -> &'static str {
        match self {
            PatternError::EndsWithEscape => "malformed pattern (ends with '%')",
            PatternError::MissingBracket => "malformed pattern (missing ']')",
            PatternError::Unbalanced => "unbalanced pattern",
            PatternError::MissingFrontierBracket => "missing '[' after '%f' in pattern",
            PatternError::InvalidPatternCapture => "invalid pattern capture",
            PatternError::InvalidCaptureIndex => "invalid capture index",
            PatternError::TooManyCaptures => "too many captures",
            PatternError::UnfinishedCapture => "unfinished capture",
            PatternError::TooComplex => "pattern too complex",
        }
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl From<PatternError> for MatchError {
    fn from(e: PatternError) -> Self {
        MatchError::Pattern(e)
    }
}
