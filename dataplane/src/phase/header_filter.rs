//! `header_filter_by_lua`: runs once, when the response head is sent — at
//! the first output, `ngx.send_headers()`, or the end of the content phase —
//! with `ngx.status` and `ngx.header` still writable. The handler is put on
//! the request when the location is entered (`RequestState::header_filter`)
//! and run by `lua::api::output::send_header`, so it runs at the same moment
//! nginx runs it, even in the middle of a content handler.
