//! Checking a response against an expectation, with `run_nginx.py`'s messages.

use super::case::Expect;
use super::http::Response;

/// A problem with a case itself (a bad `body_like` regex), not with the response.
#[derive(Debug, PartialEq)]
pub struct BadCase(pub String);

/// Compares request `i`'s response with its expectation; returns the problems
/// found (empty when it matches). Multi-line problems carry an indented diff.
pub fn compare(i: usize, exp: &Expect, resp: &Response) -> Result<Vec<String>, BadCase> {
    let mut problems = Vec::new();
    if let Some(want) = exp.status
        && i64::from(resp.status) != want
    {
        problems.push(format!("request {i}: status {}, expected {want}", resp.status));
    }
    if let Some(want) = &exp.body
        && resp.body != want.as_bytes()
    {
        problems.push(format!(
            "request {i}: body differs, {}",
            body_diff(want.as_bytes(), &resp.body)
        ));
    }
    if let Some(pattern) = &exp.body_like {
        let text = String::from_utf8_lossy(&resp.body);
        if !regex_search(pattern, &text).map_err(|e| BadCase(format!("bad body_like regex: {e}")))? {
            problems.push(format!(
                "request {i}: body does not match /{}/\n      actual: {}",
                short_str(pattern, 200),
                short_bytes(&resp.body, 300)
            ));
        }
    }
    for (name, want) in exp.headers.iter().flat_map(|h| h.iter()) {
        let got = header_value(&resp.headers, name);
        match (want, &got) {
            (None, Some(got)) => {
                problems.push(format!("request {i}: header {name} present ({got:?}), expected absent"))
            }
            (Some(want), got) if got.as_deref().unwrap_or("") != want => {
                problems.push(format!("request {i}: header {name} = {got:?}, expected {want:?}"));
            }
            _ => {}
        }
    }
    Ok(problems)
}

/// All values of a header, joined with ", "; `None` when absent.
pub fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Python `re.search(pattern, text)`, with PCRE2 in UTF and Unicode-property
/// mode (Python's `str` patterns are Unicode-aware).
pub fn regex_search(pattern: &str, text: &str) -> Result<bool, String> {
    let re = compile_python_regex(pattern)?;
    re.is_match(text.as_bytes()).map_err(|e| e.to_string())
}

/// Compiles a Python `re` pattern with PCRE2 (also used for `--filter`).
pub fn compile_python_regex(pattern: &str) -> Result<pcre2::bytes::Regex, String> {
    pcre2::bytes::RegexBuilder::new()
        .utf(true)
        .ucp(true)
        .jit_if_available(true)
        .build(&python_to_pcre(pattern))
        .map_err(|e| e.to_string())
}

/// Rewrites the Python escapes PCRE spells differently: `\Z` (end of text,
/// PCRE's `\z`) and `\uXXXX` / `\UXXXXXXXX` (PCRE's `\x{...}`).
fn python_to_pcre(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' || i + 1 >= chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let next = chars[i + 1];
        let hex_len = match next {
            'u' => 4,
            'U' => 8,
            _ => 0,
        };
        let hex: Option<String> = chars.get(i + 2..i + 2 + hex_len).map(|h| h.iter().collect());
        match (next, hex) {
            ('Z', _) => {
                out.push_str("\\z");
                i += 2;
            }
            ('u' | 'U', Some(h)) if h.chars().all(|c| c.is_ascii_hexdigit()) => {
                out.push_str(&format!("\\x{{{h}}}"));
                i += 2 + hex_len;
            }
            _ => {
                out.push(c);
                out.push(next);
                i += 2;
            }
        }
    }
    out
}

/// Python's `repr(bytes)` without the `b'…'`, cut to `limit` characters.
pub fn short_bytes(b: &[u8], limit: usize) -> String {
    let mut s = String::new();
    for &byte in b {
        match byte {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(byte as char),
            _ => s.push_str(&format!("\\x{byte:02x}")),
        }
    }
    cut(s, limit)
}

/// A string escaped like Python's `repr(str)` (roughly), cut to `limit` characters.
pub fn short_str(text: &str, limit: usize) -> String {
    let s: String = text.escape_debug().collect();
    cut(s, limit)
}

fn cut(s: String, limit: usize) -> String {
    let n = s.chars().count();
    if n <= limit {
        return s;
    }
    let head: String = s.chars().take(limit).collect();
    format!("{head}...({n} chars)")
}

/// Where two bodies first differ, with some context from both.
pub fn body_diff(expected: &[u8], actual: &[u8]) -> String {
    let n = expected.iter().zip(actual).take_while(|(a, b)| a == b).count();
    let lo = n.saturating_sub(40);
    let window = |b: &[u8]| short_bytes(&b[lo.min(b.len())..(n + 80).min(b.len())], 200);
    format!(
        "first difference at byte {n}\n      expected: ...{}\n      actual:   ...{}",
        window(expected),
        window(actual)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::case::OrderedMap;

    fn resp(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.to_vec(),
            note: None,
        }
    }

    #[test]
    fn status_and_body() {
        let exp = Expect {
            status: Some(200),
            body: Some("héllo\n".into()),
            ..Expect::default()
        };
        assert!(
            compare(0, &exp, &resp(200, &[], "héllo\n".as_bytes()))
                .unwrap()
                .is_empty()
        );
        let p = compare(1, &exp, &resp(500, &[], b"hello\n")).unwrap();
        assert_eq!(p[0], "request 1: status 500, expected 200");
        assert!(
            p[1].starts_with("request 1: body differs, first difference at byte 1\n"),
            "{}",
            p[1]
        );
        assert!(p[1].contains("expected: ...h\\xc3\\xa9llo\\n"), "{}", p[1]);
    }

    #[test]
    fn headers_join_missing_and_absent() {
        let exp = Expect {
            headers: Some(OrderedMap(vec![
                ("set-cookie".into(), Some("a=1, b=2".into())),
                ("X-Missing".into(), Some("".into())),
                ("X-Gone".into(), None),
            ])),
            ..Expect::default()
        };
        let ok = resp(200, &[("Set-Cookie", "a=1"), ("SET-COOKIE", "b=2")], b"");
        assert!(compare(0, &exp, &ok).unwrap().is_empty());
        let bad = resp(200, &[("Set-Cookie", "a=1"), ("x-gone", "")], b"");
        let p = compare(0, &exp, &bad).unwrap();
        assert_eq!(
            p[0],
            "request 0: header set-cookie = Some(\"a=1\"), expected \"a=1, b=2\""
        );
        assert_eq!(p[1], "request 0: header X-Gone present (\"\"), expected absent");
        let exp = Expect {
            headers: Some(OrderedMap(vec![("X-A".into(), Some("v".into()))])),
            ..Expect::default()
        };
        assert_eq!(
            compare(0, &exp, &ok).unwrap()[0],
            "request 0: header X-A = None, expected \"v\""
        );
    }

    #[test]
    fn body_like_is_a_python_search() {
        assert!(regex_search("(?s)500 Internal", "<h1>500 Internal Server Error</h1>").unwrap());
        assert!(regex_search(r"(?s)\A[12]\n\Z", "1\n").unwrap());
        assert!(!regex_search(r"(?s)\A[12]\Z", "1\n").unwrap());
        assert!(regex_search(r"(?s)^[12]$", "1\n").unwrap());
        assert!(regex_search(r"\0foo", "a\0foo").unwrap());
        assert!(regex_search(r"^hello\u7ae0亦$", "hello章亦").unwrap());
        assert!(regex_search(r"^\w+$", "章亦").unwrap());
        assert!(regex_search("(?s)", "").unwrap());
        assert!(regex_search(r"\\Z", "\\Z").unwrap());
        assert!(regex_search("(", "").is_err());
        let exp = Expect {
            body_like: Some("(".into()),
            ..Expect::default()
        };
        assert!(
            compare(0, &exp, &resp(200, &[], b""))
                .unwrap_err()
                .0
                .starts_with("bad body_like regex")
        );
    }

    #[test]
    fn body_like_on_invalid_utf8_uses_replacement() {
        let exp = Expect {
            body_like: Some("^a\u{fffd}b$".into()),
            ..Expect::default()
        };
        assert!(compare(0, &exp, &resp(200, &[], b"a\xffb")).unwrap().is_empty());
    }

    #[test]
    fn short_cuts_long_text() {
        assert_eq!(short_bytes(b"ab\n\x00", 10), "ab\\n\\x00");
        assert_eq!(short_bytes(b"abcdef", 3), "abc...(6 chars)");
    }
}
