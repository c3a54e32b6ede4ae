//! The checks behind each fuzz target, one function per target, so that a
//! crash the fuzzer finds can be replayed by name.
//!
//! Every check states a property, not just "does not panic": what the
//! controller accepts, the dataplane accepts; a record that decodes encodes
//! back to the same bytes and can be restored into Lua.

use mlua::{Lua, Value};
use moongate_controller::snapshot;
use moongate_controller::source::{self, SourcedRoute};
use moongate_dataplane::config::Config;
use moongate_dataplane::durable_timer::codec;
use moongate_proto::v1 as pb;
use prost::Message;

/// Route YAML through the controller's parse, validation and Lua compile,
/// then the wire and the dataplane's config: a snapshot the controller
/// built must round-trip and be accepted.
pub fn route_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let routes = match source::parse_routes(text, None) {
        Ok(routes) => routes,
        Err(e) => return drop(e.to_string()),
    };
    let sources: Vec<SourcedRoute> = routes
        .into_iter()
        .map(|route| SourcedRoute {
            file: "fuzz.yaml".into(),
            route,
        })
        .collect();
    let built = match snapshot::from_sources(&sources, 1) {
        Ok(built) => built,
        Err(e) => return drop(e.to_string()),
    };
    for refused in &built.refused {
        drop(refused.to_string());
    }
    let wire = built.snapshot.encode_to_vec();
    let decoded = pb::Snapshot::decode(wire.as_slice()).expect("an encoded snapshot decodes");
    assert_eq!(decoded, built.snapshot, "the snapshot changed on the wire");
    if let Err(e) = Config::try_from(&decoded) {
        panic!("the dataplane refused a snapshot the controller built: {e}");
    }
}

/// Bytes from a controller (a `ControllerMessage` on the stream) or from the
/// snapshot store (a `Snapshot`): decoded and made a config, or refused.
pub fn snapshot(data: &[u8]) {
    if let Ok(message) = pb::ControllerMessage::decode(data) {
        match message.kind {
            Some(pb::controller_message::Kind::Snapshot(s)) => config(&s),
            Some(pb::controller_message::Kind::Delta(d)) => config(&snapshot::build(d.upserted, d.upserted_endpoints, d.version)),
            None => {}
        }
    }
    if let Ok(s) = pb::Snapshot::decode(data) {
        config(&s);
    }
}

fn config(s: &pb::Snapshot) {
    if let Err(e) = Config::try_from(s) {
        drop(e.to_string());
    }
}

/// A durable dict entry as read from redb.
pub fn shdict_record(data: &[u8]) {
    moongate_dataplane::shdict::fuzz_record_roundtrip(data);
}

/// A fresh VM with `ngx.re`, per input: nothing carries over, so every
/// finding replays from its input alone.
fn lua_with_re() -> Lua {
    let lua = Lua::new();
    let ngx = lua.create_table().expect("a table");
    moongate_dataplane::lua::api::re::register(&lua, &ngx).expect("ngx.re registers");
    lua.globals().set("ngx", ngx).expect("a global");
    lua
}

/// A durable timer record as read from redb: one that decodes encodes back
/// to the same bytes, and its arguments can be restored into Lua.
pub fn timer_record(data: &[u8]) {
    let Ok(record) = codec::decode(data) else { return };
    assert_eq!(codec::encode(&record), data, "a decoded record encodes differently");
    let lua = Lua::new();
    for arg in &record.args {
        if let Err(e) = codec::to_lua(&lua, arg) {
            panic!("a decoded argument cannot be restored: {e}");
        }
    }
}

/// Drives `ngx.re`: `call`, `subject`, `regex`, `options`, `replacement`.
const RE_DRIVER_LUA: &str = r#"
local call, subject, regex, options, replacement = ...
local re = ngx.re
if call == 0 then return pcall(re.match, subject, regex, options)
elseif call == 1 then return pcall(re.find, subject, regex, options)
elseif call == 2 then return pcall(re.sub, subject, regex, replacement, options)
elseif call == 3 then return pcall(re.gsub, subject, regex, replacement, options)
elseif call == 4 then
    return pcall(re.gsub, subject, regex, function(m) return m[0] .. (m[1] or "") end, options)
else
    local ok, it = pcall(re.gmatch, subject, regex, options)
    if not ok or not it then return ok, it end
    for _ = 0, #subject + 1 do
        local ok, m, err = pcall(it)
        if not ok or not m then return ok, m, err end
    end
end
"#;

/// `ngx.re` option strings, with the pattern, subject and replacement they
/// apply to: the first byte picks the function, NUL separates the rest.
pub fn re_options(data: &[u8]) {
    let Some((&call, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let (options, regex, subject, replacement) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let lua = lua_with_re();
    let driver = lua.load(RE_DRIVER_LUA).into_function().expect("the driver compiles");
    let s = |b: &[u8]| Value::String(lua.create_string(b).expect("a string"));
    let args = (i64::from(call % 6), s(subject), s(regex), s(options), s(replacement));
    if let Err(e) = driver.call::<mlua::MultiValue>(args) {
        panic!("ngx.re raised past pcall: {e}");
    }
}
