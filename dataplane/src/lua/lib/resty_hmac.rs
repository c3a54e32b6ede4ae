//! lua-resty-hmac (jkeys089, 0.06) without `ffi`: `resty.hmac`, and the part of lua-resty-jwt's
//! `resty.evp` that HMAC-only code reaches.
//!
//! `resty.hmac`: `hmac:new(key, hmac.ALGOS.X)` (MD5 when the algorithm is omitted, as
//! upstream), `:update(s)` -> true, `:final([s [, hex]])` -> the MAC as a binary string (lower
//! hex when `hex` is `true`), `:reset()` -> true (the same key, a fresh MAC). `ALGOS` holds MD5,
//! SHA1, SHA256, SHA384 and SHA512, as upstream's; where upstream hands out `EVP_MD` cdata,
//! these are name strings only this module understands. As with the digest objects of
//! `resty_string`, `final` leaves the object reset (OpenSSL leaves a finished context
//! unspecified; upstream code calls `reset` anyway).
//!
//! `resty.evp` (lua-resty-jwt's, 0.2.x) is built on OpenSSL's RSA and X.509 through `ffi`.
//! Moongate implements none of that: lua-resty-jwt `require`s it at load, so the module exists,
//! with upstream's `CONST` table, and every constructor (`RSASigner`, `RSAVerifier`,
//! `RSAEncryptor`, `RSADecryptor`, `Cert`, `PublicKey`) answers `nil, err` saying so. jwt then
//! fails RS256 tokens with that reason; HS256/HS512 never reach it.

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use sha1::Sha1;
use sha2::{Sha256, Sha384, Sha512};

use super::resty_string::{string_arg, to_hex};
use crate::lua::args::{Where, arg_error};
use crate::lua::budget;

const HMAC_VERSION: &str = "0.06";

/// The names in `hmac.ALGOS`, as upstream's table keys.
const ALGOS: [&str; 5] = ["MD5", "SHA1", "SHA256", "SHA384", "SHA512"];

/// A running MAC; `Clone` keeps the keyed initial state for `reset`.
#[derive(Clone)]
enum Running {
    Md5(Hmac<Md5>),
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

macro_rules! each_mac {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Running::Md5($m) => $body,
            Running::Sha1($m) => $body,
            Running::Sha256($m) => $body,
            Running::Sha384($m) => $body,
            Running::Sha512($m) => $body,
        }
    };
}

impl Running {
    /// `None` for a name not in `ALGOS`. HMAC takes keys of any length.
    fn new(algo: &str, key: &[u8]) -> Option<Running> {
        let keyed = |r: Result<Running, hmac::digest::InvalidLength>| r.ok();
        match algo {
            "MD5" => keyed(Hmac::<Md5>::new_from_slice(key).map(Running::Md5)),
            "SHA1" => keyed(Hmac::<Sha1>::new_from_slice(key).map(Running::Sha1)),
            "SHA256" => keyed(Hmac::<Sha256>::new_from_slice(key).map(Running::Sha256)),
            "SHA384" => keyed(Hmac::<Sha384>::new_from_slice(key).map(Running::Sha384)),
            "SHA512" => keyed(Hmac::<Sha512>::new_from_slice(key).map(Running::Sha512)),
            _ => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        each_mac!(self, m => m.update(data))
    }

    /// The MAC of everything fed in.
    fn into_mac(self) -> Vec<u8> {
        each_mac!(self, m => m.finalize().into_bytes().to_vec())
    }
}

/// What `hmac:new` returns: the running MAC and, for `reset`, the state right after keying.
struct HmacObject {
    running: Running,
    initial: Running,
}

impl HmacObject {
    /// The MAC of everything since the last reset; the object starts over with the same key.
    fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.running, self.initial.clone()).into_mac()
    }
}

impl UserData for HmacObject {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("update", |lua, this, args: MultiValue| {
            let data = string_arg(lua, &args, 0, 2)?;
            budget::charge_bytes(data.len())?;
            this.running.update(&data);
            Ok(true)
        });
        methods.add_method_mut("final", |lua, this, args: MultiValue| {
            match args.front() {
                None | Some(Value::Nil) => {}
                Some(_) => {
                    let data = string_arg(lua, &args, 0, 2)?;
                    budget::charge_bytes(data.len())?;
                    this.running.update(&data);
                }
            }
            let mac = this.finish();
            if matches!(args.get(1), Some(Value::Boolean(true))) {
                return lua.create_string(to_hex(&mac));
            }
            lua.create_string(mac)
        });
        methods.add_method_mut("reset", |_, this, ()| {
            this.running = this.initial.clone();
            Ok(true)
        });
    }
}

/// `hmac:new(key, algo)` (also `hmac.new(self, key, algo)`): arguments after `self`.
fn hmac_new(lua: &Lua, args: MultiValue) -> mlua::Result<mlua::AnyUserData> {
    let key = string_arg(lua, &args, 1, 2)?;
    budget::charge_bytes(key.len())?;
    let algo = match args.get(2) {
        None | Some(Value::Nil) => "MD5".to_string(),
        Some(Value::String(s)) => s.to_string_lossy(),
        Some(_) => return Err(arg_error(lua, 3, "hash from hmac.ALGOS expected", Where::Lauxlib)),
    };
    let Some(running) = Running::new(&algo, &key) else {
        return Err(arg_error(lua, 3, "hash from hmac.ALGOS expected", Where::Lauxlib));
    };
    lua.create_userdata(HmacObject {
        initial: running.clone(),
        running,
    })
}

/// The `CONST` of lua-resty-jwt's evp.lua (padding modes and digest names).
const EVP_CONST: [(&str, Const); 8] = [
    ("SHA256_DIGEST", Const::Str("SHA256")),
    ("SHA512_DIGEST", Const::Str("SHA512")),
    ("RSA_PKCS1_PADDING", Const::Int(1)),
    ("RSA_SSLV23_PADDING", Const::Int(2)),
    ("RSA_NO_PADDING", Const::Int(3)),
    ("RSA_PKCS1_OAEP_PADDING", Const::Int(4)),
    ("RSA_X931_PADDING", Const::Int(5)),
    ("RSA_PKCS1_PSS_PADDING", Const::Int(6)),
];

enum Const {
    Str(&'static str),
    Int(i64),
}

/// What every `resty.evp` constructor answers.
const EVP_UNSUPPORTED: &str =
    "RSA keys and X.509 certificates are not supported in Moongate (resty.evp); use HS256/HS384/HS512";

pub fn register(lua: &Lua, libs: &Table) -> mlua::Result<()> {
    let new = lua.create_function(hmac_new)?;
    let make_hmac = lua.create_function(move |lua, (_ngx, _env): (Value, Value)| {
        let algos = lua.create_table()?;
        for name in ALGOS {
            algos.raw_set(name, name)?;
        }
        let m = lua.create_table()?;
        m.raw_set("_VERSION", HMAC_VERSION)?;
        m.raw_set("ALGOS", algos)?;
        m.raw_set("new", new.clone())?;
        Ok(m)
    })?;
    libs.raw_set("resty.hmac", make_hmac)?;

    let refuse = lua.create_function(|lua, _args: MultiValue| {
        let mut r = MultiValue::new();
        r.push_back(Value::Nil);
        r.push_back(Value::String(lua.create_string(EVP_UNSUPPORTED)?));
        Ok(r)
    })?;
    let make_evp = lua.create_function(move |lua, (_ngx, _env): (Value, Value)| {
        let consts = lua.create_table()?;
        for (name, v) in EVP_CONST {
            match v {
                Const::Str(s) => consts.raw_set(name, s)?,
                Const::Int(i) => consts.raw_set(name, i)?,
            }
        }
        let m = lua.create_table()?;
        m.raw_set("CONST", consts)?;
        for class in [
            "RSASigner",
            "RSAVerifier",
            "RSAEncryptor",
            "RSADecryptor",
            "Cert",
            "PublicKey",
        ] {
            let c = lua.create_table()?;
            c.raw_set("new", refuse.clone())?;
            m.raw_set(class, c)?;
        }
        Ok(m)
    })?;
    libs.raw_set("resty.evp", make_evp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (key "Jefe") and RFC 2202 for MD5/SHA1.
    #[test]
    fn macs_match_the_rfc_vectors() {
        let mac = |algo: &str| {
            String::from_utf8(to_hex(
                &object(algo, b"Jefe").finish_with(b"what do ya want for nothing?"),
            ))
            .unwrap()
        };
        assert_eq!(mac("MD5"), "750c783e6ab0b503eaa86e310a5db738");
        assert_eq!(mac("SHA1"), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        assert_eq!(
            mac("SHA256"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            mac("SHA384"),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            mac("SHA512"),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        assert!(Running::new("SHA224", b"k").is_none());
    }

    #[test]
    fn final_starts_the_same_key_over() {
        let mut o = object("SHA256", b"Jefe");
        o.running.update(b"what do ya ");
        o.running.update(b"want for nothing?");
        let first = o.finish();
        assert_eq!(o.finish_with(b"what do ya want for nothing?"), first);
    }

    fn object(algo: &str, key: &[u8]) -> HmacObject {
        let running = Running::new(algo, key).unwrap();
        HmacObject {
            initial: running.clone(),
            running,
        }
    }

    impl HmacObject {
        fn finish_with(&mut self, data: &[u8]) -> Vec<u8> {
            self.running.update(data);
            self.finish()
        }
    }
}
