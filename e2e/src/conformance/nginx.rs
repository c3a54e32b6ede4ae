//! The nginx.conf `run_nginx.py` generates for a case, for the runner's hidden
//! `--nginx` mode: running the cases against the reference checks the runner's
//! client and comparisons independently of the dataplane.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::case::{Case, OrderedMap, PHASES};

/// Quotes a string as one nginx config token that nginx reads back unchanged.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A `*_by_lua_block` with the code verbatim; a newline is added before the
/// closing brace when the code does not end with one (it may end in a comment).
fn lua_block(out: &mut String, directive: &str, code: &str, indent: &str) {
    let nl = if code.ends_with('\n') { "" } else { "\n" };
    let _ = writeln!(out, "{indent}{directive} {{{code}{nl}{indent}}}");
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The configuration for `case` with prefix `prefix`, listening on 127.0.0.1:`port`.
pub fn gen_conf(case: &Case, prefix: &Path, port: u16, modules: &[PathBuf]) -> String {
    let prefix = prefix.display();
    let mut out = String::new();
    for m in modules {
        let _ = writeln!(out, "load_module {};", m.display());
    }
    // For `clear_headers` (more_clear_headers), as run_nginx.py loads it.
    let clears = case
        .locations
        .iter()
        .flatten()
        .any(|l| l.clear_headers.as_ref().is_some_and(|h| !h.is_empty()));
    if clears {
        out.push_str("load_module /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so;\n");
    }
    out.push_str("worker_processes 1;\nmaster_process on;\ndaemon off;\n");
    let _ = writeln!(out, "pid {prefix}/logs/nginx.pid;");
    let _ = writeln!(out, "error_log {prefix}/logs/error.log debug;");
    if running_as_root() {
        out.push_str("user nobody nogroup;\n");
    }
    out.push_str("events {\n    worker_connections 1024;\n    accept_mutex off;\n}\n");
    out.push_str("http {\n    access_log off;\n");
    for what in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(out, "    {what}_temp_path {prefix}/{what}_temp;");
    }
    out.push_str("    default_type text/plain;\n    keepalive_timeout 68s;\n");
    for (name, size) in case.shared_dicts.iter().flat_map(OrderedMap::iter) {
        let _ = writeln!(out, "    lua_shared_dict {name} {size};");
    }
    if let Some(code) = &case.init {
        lua_block(&mut out, "init_by_lua_block", code, "    ");
    }
    if let Some(code) = &case.init_worker {
        lua_block(&mut out, "init_worker_by_lua_block", code, "    ");
    }
    out.push_str("    server {\n");
    let _ = writeln!(out, "        listen 127.0.0.1:{port};");
    out.push_str("        server_name localhost;\n        client_max_body_size 30M;\n");
    if case.server_tokens == Some(false) {
        out.push_str("        server_tokens off;\n");
    }
    for (key, value) in case.lua_socket.iter().flat_map(OrderedMap::iter) {
        let _ = writeln!(out, "        lua_socket_{key} {value};");
    }
    for loc in case.locations.as_deref().unwrap_or_default() {
        match loc.modifier.as_deref().unwrap_or("") {
            "" => {
                let _ = writeln!(out, "        location {} {{", quote(&loc.path));
            }
            m => {
                let _ = writeln!(out, "        location {m} {} {{", quote(&loc.path));
            }
        }
        let ind = "            ";
        if let Some(t) = &loc.default_type {
            let _ = writeln!(out, "{ind}default_type {};", quote(t));
        }
        for (name, value) in loc.vars.iter().flat_map(OrderedMap::iter) {
            let _ = writeln!(out, "{ind}set ${name} {};", quote(value));
        }
        if loc.need_request_body == Some(true) {
            let _ = writeln!(out, "{ind}lua_need_request_body on;");
        }
        for (key, value) in loc.lua_socket.iter().flat_map(OrderedMap::iter) {
            let _ = writeln!(out, "{ind}lua_socket_{key} {value};");
        }
        let phases = loc.phases.as_ref();
        for (key, directive) in PHASES.iter().map(|p| (*p, format!("{p}_by_lua_block"))) {
            let code = phases
                .and_then(|ph| ph.iter().find(|(k, _)| *k == key))
                .and_then(|(_, c)| c.as_deref());
            if let Some(code) = code {
                lua_block(&mut out, &directive, code, ind);
            }
        }
        if let Some(url) = &loc.proxy_pass {
            let _ = writeln!(out, "{ind}proxy_pass {url};");
        }
        if let Some(names) = loc.clear_headers.as_ref().filter(|h| !h.is_empty()) {
            let _ = writeln!(out, "{ind}more_clear_headers {};", names.join(" "));
        }
        out.push_str("        }\n");
    }
    out.push_str("    }\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::case::parse_case;

    #[test]
    fn generates_locations_in_order() {
        let text = r#"{"shared_dicts":{"d":"1m"},"init":"x=1",
            "locations":[{"modifier":"=","path":"/a\"b","vars":{"v":"1"},"need_request_body":true,
                          "phases":{"content":"\nngx.say(1) -- c","rewrite":"r\n"}},
                         {"path":"/p","default_type":"text/html"}],
            "requests":[{}],"expect":[{}]}"#;
        let case = parse_case(text, Path::new("c.json")).unwrap().case.unwrap();
        let conf = gen_conf(&case, Path::new("/tmp/p"), 8080, &[]);
        assert!(conf.contains("    lua_shared_dict d 1m;\n    init_by_lua_block {x=1\n    }\n"));
        assert!(conf.contains(
            "        location = \"/a\\\"b\" {\n            set $v \"1\";\n            lua_need_request_body on;\n            \
             rewrite_by_lua_block {r\n            }\n            content_by_lua_block {\nngx.say(1) -- c\n            }\n"
        ));
        assert!(conf.contains("        location \"/p\" {\n            default_type \"text/html\";\n        }\n"));
        assert!(conf.contains("listen 127.0.0.1:8080;"));
    }
}
