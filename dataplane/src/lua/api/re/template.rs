//! Replacement templates of `ngx.re.sub`/`gsub` (string replace argument).
//!
//! In: the template bytes (`$0`, `$1`, `${12}`, `$$` and literal text), then
//! per match the subject and the capture spans. Out: the compiled pieces, or
//! an error for templates lua-nginx-module's script compiler rejects (named
//! variables, unclosed `${`, a trailing `$`), then the expanded bytes.

use super::pcre::Match;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Capture(usize),
}

/// A compiled replacement template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// The template is malformed; callers report
/// "failed to compile the replacement template".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTemplate;

impl Template {
    /// Parses like `ngx_http_lua_script_compile`: after `$` comes `$`
    /// (literal dollar), digits, or `{digits}`; anything else is an error
    /// because named captures are not supported there.
    pub fn compile(src: &[u8]) -> Result<Template, BadTemplate> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < src.len() {
            if src[i] != b'$' {
                literal.push(src[i]);
                i += 1;
                continue;
            }
            i += 1;
            match src.get(i) {
                None => return Err(BadTemplate),
                Some(b'$') => {
                    literal.push(b'$');
                    i += 1;
                }
                Some(b'{') => {
                    let digits = count_digits(&src[i + 1..]);
                    if digits == 0 || src.get(i + 1 + digits) != Some(&b'}') {
                        return Err(BadTemplate);
                    }
                    flush(&mut pieces, &mut literal);
                    pieces.push(Piece::Capture(parse_number(&src[i + 1..i + 1 + digits])));
                    i += digits + 2;
                }
                Some(_) => {
                    let digits = count_digits(&src[i..]);
                    if digits == 0 {
                        return Err(BadTemplate);
                    }
                    flush(&mut pieces, &mut literal);
                    pieces.push(Piece::Capture(parse_number(&src[i..i + digits])));
                    i += digits;
                }
            }
        }
        flush(&mut pieces, &mut literal);
        Ok(Template { pieces })
    }

    /// Appends the expansion for one match to `out`. A group that did not
    /// take part in the match, or lies beyond `rc`, expands to nothing.
    pub fn expand(&self, subject: &[u8], m: &Match, out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Capture(n) if *n < m.rc => {
                    if let Some(Some((from, to))) = m.spans.get(*n) {
                        out.extend_from_slice(&subject[*from..*to]);
                    }
                }
                Piece::Capture(_) => {}
            }
        }
    }
}

fn flush(pieces: &mut Vec<Piece>, literal: &mut Vec<u8>) {
    if !literal.is_empty() {
        pieces.push(Piece::Literal(std::mem::take(literal)));
    }
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Saturates instead of overflowing: any huge group number is simply absent.
fn parse_number(digits: &[u8]) -> usize {
    digits.iter().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(tpl: &str, subject: &str, m: &Match) -> String {
        let mut out = Vec::new();
        Template::compile(tpl.as_bytes())
            .unwrap()
            .expand(subject.as_bytes(), m, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn expands_groups_and_dollars() {
        // "a b c d" =~ /(b) (c)/
        let m = Match {
            rc: 3,
            spans: vec![Some((2, 5)), Some((2, 3)), Some((4, 5))],
        };
        assert_eq!(
            expand("[$0] [$1] [${2}] [$3] [$134]", "a b c d", &m),
            "[b c] [b] [c] [] []"
        );
        assert_eq!(expand("ho$$wdy", "a b c d", &m), "ho$wdy");
        assert_eq!(expand("$1a$99999999999999999999999", "a b c d", &m), "ba");
        assert_eq!(expand("plain", "a b c d", &m), "plain");
    }

    #[test]
    fn unset_groups_and_rc_limit_expand_to_nothing() {
        let m = Match {
            rc: 1,
            spans: vec![Some((0, 1)), Some((0, 1))],
        };
        assert_eq!(expand("<$1>", "x", &m), "<>");
        let m = Match {
            rc: 3,
            spans: vec![Some((0, 1)), None, Some((0, 1))],
        };
        assert_eq!(expand("<$1|$2>", "x", &m), "<|x>");
    }

    #[test]
    fn rejects_what_nginx_rejects() {
        for bad in [
            "$",
            "[$hello]",
            "[${hello}]",
            "[${134]",
            "[${134",
            "[${",
            "${}",
            "$-",
            "${1a}",
        ] {
            assert_eq!(Template::compile(bad.as_bytes()), Err(BadTemplate), "{bad}");
        }
    }
}
