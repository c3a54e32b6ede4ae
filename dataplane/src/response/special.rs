//! nginx's special response pages: what a client gets for `ngx.exit(404)`,
//! a Lua error (500) or a redirect when no output was sent.

use bytes::Bytes;

/// The HTML body nginx sends for `status`, or `None` for statuses without one.
pub fn page(status: u16) -> Option<Bytes> {
    if status < 300 || status == 304 {
        return None;
    }
    let reason = match status {
        302 => "Found",
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    let title = if reason.is_empty() {
        status.to_string()
    } else {
        format!("{status} {reason}")
    };
    Some(Bytes::from(format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>moongate</center>\r\n</body>\r\n</html>\r\n"
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_look_like_nginx() {
        let p = super::page(404).unwrap();
        let s = std::str::from_utf8(&p).unwrap();
        assert!(s.contains("<title>404 Not Found</title>"));
        assert!(super::page(204).is_none());
    }
}
