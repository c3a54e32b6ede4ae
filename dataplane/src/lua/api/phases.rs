//! Where each phase-restricted `ngx` API may run: one table, so the rule for
//! an API lives in one place and the test below pins it to lua-nginx-module.
//!
//! `readme` is the API's **context:** line in lua-nginx-module's README,
//! restricted to the request phases Moongate has (no set_by_lua, ssl_* or
//! server_rewrite). `beyond_readme` lists the phases where lua-nginx-module's
//! code accepts the call although the README omits them (seen on Debian's
//! nginx 1.22 with libnginx-mod-http-lua): scripts written against real
//! nginx rely on those, so refusing them would break working code.
//!
//! APIs allowed in every request phase (`ngx.var`, `ngx.log`, `ngx.shared`,
//! the time and codec functions, …) are not listed: they need no check.
//! Outside a request (init, init_worker, timers) an API that needs one fails
//! in `context::current`; the few that run in timers without a request
//! (`ngx.sleep`, `ngx.thread.*`, `ngx.exit`) say so at their call site.

use crate::config::Phase;
use crate::context;
use crate::request::RequestState;

/// One phase-restricted API.
#[derive(Debug)]
pub struct Api {
    /// The name nginx's error messages and Moongate's logs use.
    pub name: &'static str,
    pub readme: &'static [Phase],
    pub beyond_readme: &'static [Phase],
    /// Allowed in `ngx.timer` callbacks too (the README lists `ngx.timer.*`).
    pub timers: bool,
}

impl Api {
    pub fn allows(&self, phase: Phase) -> bool {
        self.readme.contains(&phase) || self.beyond_readme.contains(&phase)
    }

    /// Fails with lua-nginx-module's message when the request's phase forbids this API.
    pub fn check(&self, r: &RequestState) -> mlua::Result<()> {
        if self.allows(r.phase) {
            Ok(())
        } else {
            Err(context::disabled(r.phase))
        }
    }
}

use Phase::{Access as A, BodyFilter as BF, Content as C, HeaderFilter as HF, Rewrite as R};

const RAC: &[Phase] = &[R, A, C];
const NONE: &[Phase] = &[];

const fn api(name: &'static str, readme: &'static [Phase], beyond_readme: &'static [Phase]) -> Api {
    Api {
        name,
        readme,
        beyond_readme,
        timers: false,
    }
}

const fn with_timers(api: Api) -> Api {
    Api { timers: true, ..api }
}

pub const SAY: Api = api("ngx.say", RAC, NONE);
pub const PRINT: Api = api("ngx.print", RAC, NONE);
pub const FLUSH: Api = api("ngx.flush", RAC, NONE);
pub const EOF: Api = api("ngx.eof", RAC, NONE);
pub const SEND_HEADERS: Api = api("ngx.send_headers", RAC, NONE);
pub const EXEC: Api = api("ngx.exec", RAC, NONE);
pub const REDIRECT: Api = api("ngx.redirect", RAC, NONE);
/// Also timers and balancer_by_lua* in the README; timers have no request
/// (see `output::exit`) and Moongate's balancer ends with `ngx.balancer`.
pub const EXIT: Api = with_timers(api("ngx.exit", &[R, A, C, HF], NONE));
/// The table `ngx.arg`, read or written.
pub const ARG: Api = api("ngx.arg", &[BF], NONE);
pub const LOCATION_CAPTURE: Api = api("ngx.location.capture", RAC, NONE);
pub const LOCATION_CAPTURE_MULTI: Api = api("ngx.location.capture_multi", RAC, NONE);
/// Without `jump`; with it, rewrite_by_lua* only (checked at the call).
pub const REQ_SET_URI: Api = api("ngx.req.set_uri", &[R, A, C, HF, BF], &[Phase::Log]);
pub const REQ_READ_BODY: Api = api("ngx.req.read_body", RAC, NONE);
pub const REQ_SET_BODY_DATA: Api = api("ngx.req.set_body_data", RAC, NONE);
pub const REQ_INIT_BODY: Api = api("ngx.req.init_body", RAC, NONE);
pub const REQ_APPEND_BODY: Api = api("ngx.req.append_body", RAC, NONE);
pub const REQ_FINISH_BODY: Api = api("ngx.req.finish_body", RAC, NONE);
pub const REQ_SOCKET: Api = api("ngx.req.socket", RAC, NONE);
/// The yielding APIs: also in timers, which have no request.
pub const SLEEP: Api = with_timers(api("ngx.sleep", RAC, NONE));
pub const THREAD_SPAWN: Api = with_timers(api("ngx.thread.spawn", RAC, NONE));
pub const THREAD_WAIT: Api = with_timers(api("ngx.thread.wait", RAC, NONE));
pub const THREAD_KILL: Api = with_timers(api("ngx.thread.kill", RAC, NONE));

/// Every API above, for lookups by name and for the test.
pub const ALL: &[&Api] = &[
    &SAY,
    &PRINT,
    &FLUSH,
    &EOF,
    &SEND_HEADERS,
    &EXEC,
    &REDIRECT,
    &EXIT,
    &ARG,
    &LOCATION_CAPTURE,
    &LOCATION_CAPTURE_MULTI,
    &REQ_SET_URI,
    &REQ_READ_BODY,
    &REQ_SET_BODY_DATA,
    &REQ_INIT_BODY,
    &REQ_APPEND_BODY,
    &REQ_FINISH_BODY,
    &REQ_SOCKET,
    &SLEEP,
    &THREAD_SPAWN,
    &THREAD_WAIT,
    &THREAD_KILL,
];

/// The entry for `name`, for the checks the prelude asks for by name.
pub fn by_name(name: &str) -> Option<&'static Api> {
    ALL.iter().copied().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each API's **context:** line, copied from lua-nginx-module's
    /// README.markdown (v0.10.19). A change to the table above that the
    /// README does not back fails here.
    const README: &[(&str, &str)] = &[
        ("ngx.say", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.print", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.flush", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.eof", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.send_headers", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.exec", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        ("ngx.redirect", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        (
            "ngx.exit",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*, header_filter_by_lua*, ngx.timer.*, \
             balancer_by_lua*, ssl_certificate_by_lua*, ssl_session_fetch_by_lua*, \
             ssl_session_store_by_lua*, ssl_client_hello_by_lua*",
        ),
        ("ngx.arg", "set_by_lua*, body_filter_by_lua*"),
        (
            "ngx.location.capture",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        (
            "ngx.location.capture_multi",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        (
            "ngx.req.set_uri",
            "set_by_lua*, rewrite_by_lua*, access_by_lua*, content_by_lua*, header_filter_by_lua*, \
             body_filter_by_lua*",
        ),
        ("ngx.req.read_body", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        (
            "ngx.req.set_body_data",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        (
            "ngx.req.init_body",
            "set_by_lua*, rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        (
            "ngx.req.append_body",
            "set_by_lua*, rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        (
            "ngx.req.finish_body",
            "set_by_lua*, rewrite_by_lua*, access_by_lua*, content_by_lua*",
        ),
        ("ngx.req.socket", "rewrite_by_lua*, access_by_lua*, content_by_lua*"),
        (
            "ngx.sleep",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*, ngx.timer.*, ssl_certificate_by_lua*, \
             ssl_session_fetch_by_lua*, ssl_client_hello_by_lua*",
        ),
        (
            "ngx.thread.spawn",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*, ngx.timer.*, ssl_certificate_by_lua*, \
             ssl_session_fetch_by_lua*, ssl_client_hello_by_lua*",
        ),
        (
            "ngx.thread.wait",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*, ngx.timer.*, ssl_certificate_by_lua*, \
             ssl_session_fetch_by_lua*, ssl_client_hello_by_lua*",
        ),
        (
            "ngx.thread.kill",
            "rewrite_by_lua*, access_by_lua*, content_by_lua*, ngx.timer.*, ssl_certificate_by_lua*, \
             ssl_session_fetch_by_lua*, ssl_client_hello_by_lua*",
        ),
    ];

    /// Where lua-nginx-module's code goes beyond its README (observed with
    /// Debian's nginx 1.22 + libnginx-mod-http-lua): each entry is a
    /// deliberate, checked exception.
    const BEYOND_README: &[(&str, &[Phase])] = &[("ngx.req.set_uri", &[Phase::Log])];

    /// Contexts of the README with no request phase in Moongate (timers are
    /// `Api::timers`; Moongate's balancer phase only takes `ngx.balancer`).
    const NOT_A_REQUEST_PHASE: &[&str] = &[
        "set_by_lua*",
        "ngx.timer.*",
        "balancer_by_lua*",
        "ssl_certificate_by_lua*",
        "ssl_session_fetch_by_lua*",
        "ssl_session_store_by_lua*",
        "ssl_client_hello_by_lua*",
    ];

    fn request_phases(readme: &str) -> Vec<Phase> {
        let all = [R, A, C, HF, BF, Phase::Log, Phase::Balancer];
        let mut phases = Vec::new();
        for context in readme.split(',').map(str::trim) {
            match all.iter().find(|p| context::context_name(**p) == context) {
                Some(p) if !NOT_A_REQUEST_PHASE.contains(&context) => phases.push(*p),
                _ => assert!(NOT_A_REQUEST_PHASE.contains(&context), "unknown context {context:?}"),
            }
        }
        phases.sort_by_key(|p| *p as usize);
        phases
    }

    fn sorted(phases: &[Phase]) -> Vec<Phase> {
        let mut v = phases.to_vec();
        v.sort_by_key(|p| *p as usize);
        v
    }

    #[test]
    fn every_api_runs_where_the_readme_says() {
        for (name, readme) in README {
            let api = by_name(name).unwrap_or_else(|| panic!("{name} missing from the phase table"));
            assert_eq!(sorted(api.readme), request_phases(readme), "{name}: README phases");
            let beyond = BEYOND_README
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[][..], |(_, p)| *p);
            assert_eq!(
                sorted(api.beyond_readme),
                sorted(beyond),
                "{name}: phases beyond the README"
            );
            assert_eq!(api.timers, readme.contains("ngx.timer.*"), "{name}: in timers");
        }
        for api in ALL {
            assert!(
                README.iter().any(|(n, _)| *n == api.name),
                "{} has no README line",
                api.name
            );
        }
    }

    #[test]
    fn refusals_name_the_phase_as_nginx_does() {
        let mlua::Error::RuntimeError(e) = context::disabled(HF) else {
            panic!("not a runtime error")
        };
        assert_eq!(e, "API disabled in the context of header_filter_by_lua*");
    }
}
