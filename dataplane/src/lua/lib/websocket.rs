//! lua-resty-websocket's `resty.websocket.protocol` (also under Debian's name,
//! `nginx.websocket.protocol`), on which its `server` and `client` modules,
//! loaded unmodified from a route's own sources, frame their messages.
//! Upstream unmasks through `ffi`; the Lua side here (`websocket_protocol.lua`)
//! calls `xor` below instead, and is compiled per route in the route's own
//! environment.

use mlua::{Function, Lua, Table, Value};

use crate::lua::budget;

const SOURCE: &str = include_str!("websocket_protocol.lua");

/// `data` XOR the 4-byte masking `key`, repeated (RFC 6455 §5.3).
fn xor(data: &[u8], key: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        return data.to_vec();
    }
    data.iter().zip(key.iter().cycle()).map(|(d, k)| d ^ k).collect()
}

/// Adds the protocol module to the registry `libs`.
pub fn register(lua: &Lua, libs: &Table) -> mlua::Result<()> {
    let natives = lua.create_table()?;
    natives.raw_set(
        "xor",
        lua.create_function(|lua, (data, key): (mlua::LuaString, mlua::LuaString)| {
            let data = data.as_bytes();
            budget::charge_bytes(data.len())?;
            lua.create_string(xor(&data, &key.as_bytes()))
        })?,
    )?;
    for name in ["resty.websocket.protocol", "nginx.websocket.protocol"] {
        let natives = natives.clone();
        let make = lua.create_function(move |lua, (_route_ngx, env): (Value, Table)| {
            let build: Function = lua
                .load(SOURCE)
                .set_name("=resty/websocket/protocol.lua")
                .set_environment(env)
                .into_function()?;
            build.call::<Value>(natives.clone())
        })?;
        libs.raw_set(name, make)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::xor;

    #[test]
    fn masking_is_rfc_6455s() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let key = [0x37, 0xfa, 0x21, 0x3d];
        assert_eq!(xor(b"Hello", &key), [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!(xor(&xor(b"Hello", &key), &key), b"Hello");
        assert_eq!(xor(b"", &key), b"");
    }
}
