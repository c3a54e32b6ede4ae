//! A minimal HTTP/1.1 client that sends a case's request and reads the response
//! exactly as `run_nginx.py` does with Python's `http.client`: same request bytes,
//! interim `100 Continue` skipped, headers decoded as ISO-8859-1, body framed by
//! chunked encoding, Content-Length or connection close, and a short body kept
//! with a note rather than rejected.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::case::Request;

/// Longest status, header, chunk-size or trailer line accepted (`http.client._MAXLINE`).
const MAX_LINE: usize = 65536;
/// Most header lines accepted; `run_nginx.py` raises Python's limit to this.
const MAX_HEADERS: usize = 10000;

/// One final response.
#[derive(Debug, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Header names and values in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set when the body ended early (the body then holds what arrived).
    pub note: Option<String>,
}

/// Why no response could be read: the text after "no valid response".
#[derive(Debug)]
pub struct HttpError(pub String);

impl HttpError {
    fn protocol(kind: &str, what: impl std::fmt::Display) -> Self {
        HttpError(format!("{kind}: {what}"))
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // A socket read timeout surfaces as WouldBlock (EAGAIN) on Unix.
            io::ErrorKind::WouldBlock => HttpError("TimedOut: timed out".into()),
            kind => HttpError(format!("{kind:?}: {e}")),
        }
    }
}

/// The request as bytes: head, then body (sent separately, as Python does).
pub fn encode_request(req: &Request) -> (Vec<u8>, Vec<u8>) {
    let method = req.method.as_deref().unwrap_or("GET");
    let uri = req.uri.as_deref().unwrap_or("/");
    let body = req.body.as_deref().unwrap_or("").as_bytes().to_vec();
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {uri} HTTP/1.1\r\n").into_bytes();
    if !has("host") {
        head.extend_from_slice(b"Host: localhost\r\n");
    }
    if !has("connection") {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    for (k, v) in &headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    (head, body)
}

/// A socket whose every read waits at most `read_timeout` and never past `deadline`.
struct DeadlineStream {
    stream: TcpStream,
    read_timeout: Duration,
    deadline: Instant,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "case deadline reached"));
        }
        self.stream.set_read_timeout(Some(left.min(self.read_timeout)))?;
        self.stream.read(buf)
    }
}

/// Sends one request on a new connection to 127.0.0.1:`port` and reads the response.
pub fn send_request(port: u16, req: &Request, timeout: Duration, deadline: Instant) -> Result<Response, HttpError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "case deadline reached").into());
    }
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(left))?;
    stream.set_write_timeout(Some(timeout.min(left)))?;
    let (head, body) = encode_request(req);
    stream.write_all(&head)?;
    if !body.is_empty() {
        stream.write_all(&body)?;
    }
    let reader = DeadlineStream {
        stream,
        read_timeout: timeout,
        deadline,
    };
    read_response(reader, req.method.as_deref().unwrap_or("GET"))
}

/// Reads one line of at most `MAX_LINE` bytes (with its line ending); empty at EOF.
fn read_line<R: Read>(r: &mut BufReader<R>, what: &str) -> Result<Vec<u8>, HttpError> {
    let mut line = Vec::new();
    r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if line.len() > MAX_LINE {
        return Err(HttpError::protocol(
            "LineTooLong",
            format!("got more than {MAX_LINE} bytes when reading {what}"),
        ));
    }
    Ok(line)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn is_blank_line(line: &[u8]) -> bool {
    matches!(line, b"\r\n" | b"\n" | b"")
}

/// Status line → (version, status).
fn read_status<R: Read>(r: &mut BufReader<R>) -> Result<(String, u16), HttpError> {
    let raw = read_line(r, "status line")?;
    if raw.is_empty() {
        return Err(HttpError::protocol(
            "RemoteDisconnected",
            "Remote end closed connection without response",
        ));
    }
    let line = latin1(&raw);
    let bad = || HttpError::protocol("BadStatusLine", format!("{line:?}"));
    let mut parts = line.split_whitespace();
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/") {
        return Err(bad());
    }
    let status: u16 = status.parse().map_err(|_| bad())?;
    if !(100..=999).contains(&status) {
        return Err(bad());
    }
    Ok((version.to_string(), status))
}

/// The raw header lines up to the blank line (`http.client._read_headers`).
fn read_header_lines<R: Read>(r: &mut BufReader<R>) -> Result<Vec<Vec<u8>>, HttpError> {
    let mut lines = Vec::new();
    loop {
        let line = read_line(r, "header line")?;
        if is_blank_line(&line) {
            return Ok(lines);
        }
        lines.push(line);
        if lines.len() > MAX_HEADERS {
            return Err(HttpError::protocol(
                "HTTPException",
                format!("got more than {MAX_HEADERS} headers"),
            ));
        }
    }
}

/// Header lines → (name, value) pairs the way Python's email parser reads them:
/// the first line that is not a header ends the headers, a line starting with
/// whitespace continues the previous value, values lose leading blanks and the
/// final line ending only.
fn parse_headers(lines: &[Vec<u8>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in lines {
        let line = latin1(raw);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(&line);
            }
            continue;
        }
        let Some(colon) = line.find(':') else { break };
        let name = &line[..colon];
        if !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            break;
        }
        if colon == 0 {
            continue;
        }
        out.push((
            name.to_string(),
            line[colon + 1..].trim_start_matches([' ', '\t']).to_string(),
        ));
    }
    for (_, value) in &mut out {
        let trimmed = value.trim_end_matches(['\r', '\n']).len();
        value.truncate(trimmed);
    }
    out
}

fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads the final response from `r`; `method` matters for HEAD.
pub fn read_response<R: Read>(r: R, method: &str) -> Result<Response, HttpError> {
    let mut r = BufReader::new(r);
    let (version, status) = loop {
        let (version, status) = read_status(&mut r)?;
        if status != 100 {
            break (version, status);
        }
        read_header_lines(&mut r)?;
    };
    if !(version == "HTTP/1.0" || version == "HTTP/0.9" || version.starts_with("HTTP/1.")) {
        return Err(HttpError::protocol("UnknownProtocol", format!("{version:?}")));
    }
    let headers = parse_headers(&read_header_lines(&mut r)?);
    let chunked = first_header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut length = match first_header(&headers, "content-length") {
        Some(v) if !chunked => v.trim().parse::<u64>().ok(),
        _ => None,
    };
    if status == 204 || status == 304 || (100..200).contains(&status) || method == "HEAD" {
        length = Some(0);
    }
    let mut resp = Response {
        status,
        headers,
        ..Response::default()
    };
    if method == "HEAD" {
        return Ok(resp);
    }
    let complete = if chunked {
        read_chunked(&mut r, &mut resp.body)?
    } else if let Some(n) = length {
        r.by_ref().take(n).read_to_end(&mut resp.body)?;
        resp.body.len() as u64 == n
    } else {
        r.read_to_end(&mut resp.body)?;
        true
    };
    if !complete {
        resp.note = Some("incomplete response body".into());
    }
    Ok(resp)
}

/// Decodes a chunked body into `body`; `Ok(false)` when it ends early (then
/// `body` holds the complete chunks only, as Python's `IncompleteRead.partial`).
fn read_chunked<R: Read>(r: &mut BufReader<R>, body: &mut Vec<u8>) -> Result<bool, HttpError> {
    loop {
        let line = read_line(r, "chunk size")?;
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = parse_chunk_size(size_part) else {
            return Ok(false);
        };
        if size == 0 {
            loop {
                let line = read_line(r, "trailer line")?;
                if is_blank_line(&line) {
                    return Ok(true);
                }
            }
        }
        let mut chunk = Vec::new();
        r.by_ref().take(size).read_to_end(&mut chunk)?;
        if chunk.len() as u64 != size {
            return Ok(false);
        }
        // The CRLF after the data is consumed without being checked, as Python does.
        let mut crlf = Vec::new();
        r.by_ref().take(2).read_to_end(&mut crlf)?;
        body.extend_from_slice(&chunk);
        if crlf.len() != 2 {
            return Ok(false);
        }
    }
}

/// A chunk size as Python's `int(line, 16)` reads it: surrounding whitespace,
/// an optional `+`, an optional `0x` and `_` between digits are allowed.
fn parse_chunk_size(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .map_or(text, |t| t.strip_prefix('_').unwrap_or(t));
    if text.is_empty() || text.starts_with('_') || text.ends_with('_') || text.contains("__") {
        return None;
    }
    u64::from_str_radix(&text.replace('_', ""), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::case::OrderedMap;

    fn parse(raw: &[u8]) -> Response {
        read_response(raw, "GET").unwrap()
    }

    #[test]
    fn encodes_like_http_client() {
        let req = Request {
            method: Some("POST".into()),
            uri: Some("/t?a=%20".into()),
            headers: Some(OrderedMap(vec![("X-B".into(), "é".into()), ("x-a".into(), "1".into())])),
            body: Some("hi".into()),
            client_timeout_s: None,
        };
        let (head, body) = encode_request(&req);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /t?a=%20 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-B: é\r\nx-a: 1\r\nContent-Length: 2\r\n\r\n"
        );
        assert_eq!(body, b"hi");
        let req = Request {
            headers: Some(OrderedMap(vec![
                ("host".into(), "a".into()),
                ("Connection".into(), "keep-alive".into()),
            ])),
            ..Request::default()
        };
        let (head, body) = encode_request(&req);
        assert_eq!(head, b"GET / HTTP/1.1\r\nhost: a\r\nConnection: keep-alive\r\n\r\n");
        assert!(body.is_empty());
    }

    #[test]
    fn content_length_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nhelloEXTRA");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.headers[1], ("X-A".into(), "v ".into()));
        assert_eq!(r.note, None);
    }

    #[test]
    fn short_content_length_body_is_kept_with_a_note() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel");
        assert_eq!(r.body, b"hel");
        assert_eq!(r.note.as_deref(), Some("incomplete response body"));
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n\
                    5;ext=1\r\nhello\r\n0x1\r\n!\r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nignored";
        let r = parse(raw);
        assert_eq!(r.body, b"hello!0123456789");
        assert_eq!(r.note, None);
    }

    #[test]
    fn truncated_chunked_body_keeps_complete_chunks() {
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde");
        assert_eq!(r.body, b"abc");
        assert_eq!(r.note.as_deref(), Some("incomplete response body"));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        assert_eq!(r.body, b"abc");
        assert!(r.note.is_some());
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(r.body, b"");
        assert!(r.note.is_some());
    }

    #[test]
    fn skips_100_continue_and_reads_to_eof_without_length() {
        let r = parse(b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 201 Created\r\nA: 1\r\na: 2\r\n\r\nbody...");
        assert_eq!(r.status, 201);
        assert_eq!(r.headers, vec![("A".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(r.body, b"body...");
    }

    #[test]
    fn no_body_for_head_304_and_1xx() {
        let r = read_response(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..], "HEAD").unwrap();
        assert_eq!(r.body, b"");
        assert_eq!(r.note, None);
        assert_eq!(parse(b"HTTP/1.1 304 Not Modified\r\n\r\nxyz").body, b"");
    }

    #[test]
    fn headers_are_latin1_and_folded() {
        let r = parse(b"HTTP/1.1 200 OK\r\nX-U: \xc3\xa9\r\nX-F: a\r\n b\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.headers[0].1, "\u{c3}\u{a9}");
        assert_eq!(r.headers[1].1, "a\r\n b");
    }

    #[test]
    fn bad_responses_are_errors() {
        let err = |raw: &[u8]| read_response(raw, "GET").unwrap_err().0;
        assert!(err(b"").starts_with("RemoteDisconnected"));
        assert!(err(b"garbage\r\n\r\n").starts_with("BadStatusLine"));
        assert!(err(b"HTTP/1.1 20 OK\r\n\r\n").starts_with("BadStatusLine"));
        assert!(err(b"HTTP/2.0 200 OK\r\n\r\n").starts_with("UnknownProtocol"));
        let long = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; MAX_LINE], b"\r\n\r\n"].concat();
        assert!(err(&long).starts_with("LineTooLong"));
    }

    #[test]
    fn status_line_without_reason() {
        assert_eq!(parse(b"HTTP/1.1 404\r\n\r\n").status, 404);
    }
}
