//! Finding 6: tenants reaching each other's locations through subrequests and
//! `ngx.exec`. Subrequests and exec stay on the request's own virtual server;
//! across routes they reach only locations that allow it (`allowFrom`), never
//! carry `ctx`/`vars` into another route, and `internal: true` locations are
//! closed to clients. Each target counts its runs in its namespace's dict, so
//! "its handler never ran" is read back, not inferred.

use super::{assert_ok, content, docs, tenant};
use crate::common::Server;

/// The target of namespace a: `/secret` counts its runs and answers a secret;
/// `/hits` reads the count.
fn secret_keeper(extra_location_fields: &str) -> String {
    tenant(
        "a",
        "keeper",
        "a.example",
        "  sharedDicts: [{name: ad, capacity: 1Mi}]\n",
        &[
            format!(
                "  - path: /secret\n{extra_location_fields}    content: |\n      ngx.shared.ad:incr('hits', 1, 0)\n      ngx.say('A-SECRET')\n"
            ),
            content("/hits", "ngx.say(ngx.shared.ad:get('hits') or 0)"),
        ],
    )
}

fn hits(s: &Server) -> String {
    s.get_host("a.example", "/hits").text()
}

/// Finding 6: namespace b's route (b.example) set `Host: a.example` with
/// `ngx.req.set_header` and then `ngx.location.capture("/secret")` or
/// `ngx.exec("/secret")` reached namespace a's location. After: neither
/// reaches a's handler; a's secret never appears in b's response.
#[test]
fn a_subrequest_or_exec_with_a_forged_host_stays_on_its_own_virtual_server() {
    let s = Server::start(&docs(&[
        secret_keeper(""),
        tenant(
            "b",
            "thief",
            "b.example",
            "",
            &[
                content(
                    "/capture",
                    "ngx.req.set_header('Host', 'a.example')\nlocal r = ngx.location.capture('/secret')\nngx.say('captured ', r.status, ' ', r.body)",
                ),
                content("/exec", "ngx.req.set_header('Host', 'a.example')\nngx.exec('/secret')"),
            ],
        ),
    ]));
    for path in ["/capture", "/exec"] {
        let r = s
            .try_get_host("b.example", path, "")
            .unwrap_or_else(|e| panic!("{path}: no response: {e}"));
        assert!(
            !r.text().contains("A-SECRET"),
            "b.example{path} got a.example's secret: {:?}",
            r.text()
        );
    }
    assert_eq!(hits(&s), "0\n", "a's /secret handler ran for b's requests");
}

/// Finding 6: a subrequest or exec from one route to a location of another
/// route of the same virtual server reached it unconditionally. After: without
/// `allowFrom` it does not (403 or 404) and the target's handler never runs.
#[test]
fn subrequests_and_exec_to_another_routes_location_do_not_reach_it_without_allow_from() {
    let s = Server::start(&docs(&[
        secret_keeper(""),
        tenant(
            "a",
            "caller",
            "a.example",
            "",
            &[
                content(
                    "/capture",
                    "local r = ngx.location.capture('/secret')\nngx.say('captured ', r.status)",
                ),
                content("/exec", "ngx.exec('/secret')"),
            ],
        ),
    ]));
    let r = s.get_host("a.example", "/capture");
    assert!(
        r.text() == "captured 403\n" || r.text() == "captured 404\n" || r.status >= 400,
        "the capture reached another route's location: {r:?}"
    );
    let r = s.get_host("a.example", "/exec");
    assert!(
        r.status == 403 || r.status == 404,
        "exec reached another route's location: {r:?}"
    );
    assert_eq!(hits(&s), "0\n", "the target's handler ran");
}

/// Finding 6: `vars` and `ctx` passed to another route's location overrode
/// what its own checks read (`vars` replaced the location's own variables).
/// After: the target's check is never bypassed — the subrequest is refused
/// (no `allowFrom`), or `ctx`/`vars` are refused in the caller.
#[test]
fn ctx_and_vars_cannot_bypass_another_routes_checks() {
    let s = Server::start(&docs(&[
        tenant(
            "a",
            "guarded",
            "a.example",
            "",
            &["  - path: /admin\n    vars: {role: guest}\n    access: |\n      if ngx.var.role ~= 'admin' and not ngx.ctx.admin then return ngx.exit(403) end\n    content: ngx.say('ADMIN-AREA')\n".to_string()],
        ),
        tenant(
            "a",
            "caller",
            "a.example",
            "",
            &[content(
                "/call",
                "for _, opts in ipairs({ { vars = { role = 'admin' } }, { ctx = { admin = true } } }) do\n  local ok, r = pcall(ngx.location.capture, '/admin', opts)\n  ngx.say(ok and (r.status .. ' ' .. r.body) or 'refused')\nend",
            )],
        ),
    ]));
    assert_eq!(s.get_host("a.example", "/admin").status, 403, "a client is refused");
    let r = s.get_host("a.example", "/call");
    assert!(
        !r.text().contains("ADMIN-AREA"),
        "vars/ctx bypassed another route's check: {r:?}"
    );
}

/// Finding 6 (field being added): even with `allowFrom` naming the caller,
/// `ctx` and `vars` across routes are refused with an error in the caller,
/// while the same capture without them reaches the target.
#[test]
fn ctx_and_vars_passed_to_another_routes_location_are_refused_in_the_caller() {
    let s = Server::start(&docs(&[
        secret_keeper("    allowFrom: [{namespace: a, name: caller}]\n"),
        tenant(
            "a",
            "caller",
            "a.example",
            "",
            &[content(
                "/call",
                "local plain = ngx.location.capture('/secret')\nlocal with_vars = pcall(ngx.location.capture, '/secret', { vars = { role = 'admin' } })\nlocal with_ctx = pcall(ngx.location.capture, '/secret', { ctx = { admin = true } })\nngx.say(plain.status, ' ', plain.body, 'vars ', tostring(with_vars), ' ctx ', tostring(with_ctx))",
            )],
        ),
    ]));
    let r = s.get_host("a.example", "/call");
    assert_ok(
        &r,
        "200 A-SECRET\nvars false ctx false\n",
        "allowed capture; ctx/vars refused",
        &s,
    );
    assert_eq!(hits(&s), "1\n", "only the plain capture ran the target");
}

/// Finding 6 (field being added): `internal: true` is nginx's `internal`: a
/// client request gets 404, subrequests and `ngx.exec` of the same route reach it.
#[test]
fn internal_locations_are_404_to_clients_and_reachable_by_subrequest_and_exec() {
    let s = Server::start(&tenant(
        "a",
        "inner",
        "a.example",
        "",
        &[
            "  - path: /int\n    internal: true\n    content: ngx.say('INTERNAL')\n".to_string(),
            content(
                "/front",
                "local r = ngx.location.capture('/int')\nngx.print(r.status, ' ', r.body)",
            ),
            content("/jump", "ngx.exec('/int')"),
        ],
    ));
    assert_eq!(s.get_host("a.example", "/int").status, 404, "a client request is 404");
    assert_ok(
        &s.get_host("a.example", "/front"),
        "200 INTERNAL\n",
        "a subrequest reaches it",
        &s,
    );
    assert_ok(
        &s.get_host("a.example", "/jump"),
        "INTERNAL\n",
        "ngx.exec reaches it",
        &s,
    );
}

/// Finding 6 (field being added): `allowFrom: [{namespace, name}]` lets the
/// named routes' subrequests and exec reach a location of another route; any
/// other route gets 403 or 404 and the target's handler does not run.
#[test]
fn allow_from_lets_only_the_named_routes_reach_a_location() {
    let calls = |name: &str| {
        tenant(
            "a",
            name,
            "a.example",
            "",
            &[
                content(
                    &format!("/{name}/capture"),
                    "local r = ngx.location.capture('/secret')\nngx.print(r.status, ' ', r.body)",
                ),
                content(&format!("/{name}/exec"), "ngx.exec('/secret')"),
            ],
        )
    };
    let s = Server::start(&docs(&[
        secret_keeper("    allowFrom: [{namespace: a, name: friend}]\n"),
        calls("friend"),
        calls("stranger"),
    ]));
    assert_ok(
        &s.get_host("a.example", "/friend/capture"),
        "200 A-SECRET\n",
        "friend's capture",
        &s,
    );
    assert_ok(
        &s.get_host("a.example", "/friend/exec"),
        "A-SECRET\n",
        "friend's exec",
        &s,
    );
    assert_eq!(hits(&s), "2\n");
    let r = s.get_host("a.example", "/stranger/capture");
    let text = r.text();
    assert!(
        text.starts_with("403 ") || text.starts_with("404 ") || r.status >= 400,
        "stranger's capture: {r:?}"
    );
    assert!(!r.text().contains("A-SECRET"));
    let r = s.get_host("a.example", "/stranger/exec");
    assert!(r.status == 403 || r.status == 404, "stranger's exec: {r:?}");
    assert_eq!(hits(&s), "2\n", "the target ran for a route allowFrom does not name");
}
