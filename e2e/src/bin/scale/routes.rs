//! The benchmark's routes: realistic LuaRoutes, generated and compiled as the
//! controller would compile them, and the encoded size of a push carrying them.

use anyhow::Context;
use moongate_proto::v1 as pb;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_route::compile::{Compiler, compile_route};
use moongate_route::source::parse_routes;
use prost::Message;

/// Route `i` at `revision`: a distinct hostname, an authenticated JSON API
/// location (access + content handler) and an exact health location.
fn route_yaml(i: usize, revision: i64) -> String {
    let ns = format!("team-{}", i % 20);
    let name = format!("app-{i:05}");
    format!(
        r#"apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {{name: {name}, namespace: {ns}, generation: {revision}}}
spec:
  hostnames: [{name}.{ns}.example.com]
  locations:
    - path: /api/
      access: |
        local token = ngx.var.http_authorization
        if token ~= "Bearer {name}-secret" then
          ngx.header["WWW-Authenticate"] = "Bearer"
          return ngx.exit(ngx.HTTP_UNAUTHORIZED)
        end
      content: |
        ngx.header["Content-Type"] = "application/json"
        ngx.header["X-Route"] = "{ns}/{name}"
        ngx.say('{{"app":"{name}","revision":{revision},"uri":"', ngx.var.uri, '"}}')
    - path: /healthz
      match: Exact
      content: |
        ngx.say("ok {name} revision {revision}")
"#
    )
}

pub(crate) fn compile(compiler: &Compiler, i: usize, revision: i64) -> anyhow::Result<pb::Route> {
    let yaml = route_yaml(i, revision);
    let parsed = parse_routes(&yaml, None)
        .map_err(|e| anyhow::anyhow!("route {i}: {e}"))?
        .pop()
        .context("no route parsed")?;
    compile_route(compiler, &parsed, i as i64).map_err(|problems| anyhow::anyhow!("route {i}: {problems:?}"))
}

/// The route delta round `round` changes: spread over the map.
pub(crate) fn changed_index(round: usize, routes: usize) -> usize {
    (round * 7919 + routes / 2) % routes
}

pub(crate) fn push_len(push: Push) -> usize {
    pb::ControllerMessage { kind: Some(push) }.encoded_len()
}
