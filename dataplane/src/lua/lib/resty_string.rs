//! lua-resty-string (0.11) without `ffi`: `resty.string` (`to_hex`, `atoi`), the digest objects
//! `resty.md5`, `resty.sha1`, `resty.sha224`, `resty.sha256`, `resty.sha384`, `resty.sha512`
//! (`:new()`, `:update(s)`, `:final()`, `:reset()`), `resty.random` (`bytes`) and `resty.aes`
//! (ECB and CBC with 128/192/256-bit keys, PKCS#7 padding, keys derived as OpenSSL's
//! `EVP_BytesToKey` does, or given raw with an IV through the `{iv = ..., method = ...}` form).
//!
//! Upstream calls OpenSSL through `ffi`; here the same computations run on RustCrypto, with the
//! same return values: `final` and `encrypt` return binary strings, failures return `nil` (and
//! upstream's message where it has one) rather than raising. Where upstream hands out cdata (the
//! digest context, `aes.hash.md5`, a cipher's `method`), Moongate hands out a userdata or a
//! name string that only these modules understand.
//!
//! Differences, all where upstream's behaviour is an accident of OpenSSL: `final` resets the
//! object (OpenSSL leaves a finished context in an unspecified state; call `reset` as upstream
//! code does anyway), and AES modes other than ECB and CBC raise instead of being offered.
//!
//! Every function whose work grows with its input charges it to the running code's budget.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use md5::{Digest, Md5};
use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};
use sha1::Sha1;
use sha2::{Sha224, Sha256, Sha384, Sha512};

use crate::lua::args::{Where, arg_error, type_error};
use crate::lua::budget;

const VERSION: &str = "0.11";

/// The digests upstream offers, by the name `aes.hash` knows them as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

const KINDS: [(&str, Kind); 6] = [
    ("md5", Kind::Md5),
    ("sha1", Kind::Sha1),
    ("sha224", Kind::Sha224),
    ("sha256", Kind::Sha256),
    ("sha384", Kind::Sha384),
    ("sha512", Kind::Sha512),
];

/// A running digest.
#[derive(Clone)]
enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha224(Sha224),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

macro_rules! each_hasher {
    ($self:expr, $h:ident => $body:expr) => {
        match $self {
            Hasher::Md5($h) => $body,
            Hasher::Sha1($h) => $body,
            Hasher::Sha224($h) => $body,
            Hasher::Sha256($h) => $body,
            Hasher::Sha384($h) => $body,
            Hasher::Sha512($h) => $body,
        }
    };
}

impl Hasher {
    fn new(kind: Kind) -> Hasher {
        match kind {
            Kind::Md5 => Hasher::Md5(Md5::new()),
            Kind::Sha1 => Hasher::Sha1(Sha1::new()),
            Kind::Sha224 => Hasher::Sha224(Sha224::new()),
            Kind::Sha256 => Hasher::Sha256(Sha256::new()),
            Kind::Sha384 => Hasher::Sha384(Sha384::new()),
            Kind::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        each_hasher!(self, h => Digest::update(h, data))
    }

    /// The digest of everything since the last reset; the hasher starts over.
    fn finish(&mut self) -> Vec<u8> {
        each_hasher!(self, h => h.finalize_reset().to_vec())
    }

    fn reset(&mut self) {
        each_hasher!(self, h => Digest::reset(h))
    }
}

/// `digest(parts...)` in one go.
fn digest(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Hasher::new(kind);
    for p in parts {
        h.update(p);
    }
    h.finish()
}

/// The object `resty.<digest>:new()` returns. Its metatable is shared by every route of the
/// VM; mlua protects it (`__metatable`), so no route can see or change it.
struct HashObject(Hasher);

impl UserData for HashObject {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("update", |lua, this, s: MultiValue| {
            let data = string_arg(lua, &s, 0, 2)?;
            budget::charge_bytes(data.len())?;
            this.0.update(&data);
            Ok(true)
        });
        methods.add_method_mut("final", |lua, this, ()| lua.create_string(this.0.finish()));
        methods.add_method_mut("reset", |_, this, ()| {
            this.0.reset();
            Ok(true)
        });
    }
}

/// Argument `index` of `args` (0-based), which Lua numbers `narg`, as a string's bytes (what
/// `#s` and an ffi `const char *` accept).
pub(super) fn string_arg(lua: &Lua, args: &MultiValue, index: usize, narg: usize) -> mlua::Result<Vec<u8>> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        other => Err(type_error(lua, narg, "string", other, Where::Lauxlib)),
    }
}

/// Lower-case hex, as `ngx_hex_dump`.
pub(super) fn to_hex(data: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    data.iter()
        .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .collect()
}

/// `ngx_atoi`: decimal digits only, no sign, no space; -1 (`NGX_ERROR`) for anything else, for
/// the empty string and for a value past `intptr_t`.
fn atoi(data: &[u8]) -> i64 {
    if data.is_empty() {
        return -1;
    }
    let mut value: i64 = 0;
    for &b in data {
        if !b.is_ascii_digit() {
            return -1;
        }
        match value.checked_mul(10).and_then(|v| v.checked_add(i64::from(b - b'0'))) {
            Some(v) => value = v,
            None => return -1,
        }
    }
    value
}

/// An AES block cipher of one of the three key sizes.
enum Block {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl Block {
    fn new(key: &[u8]) -> Option<Block> {
        Some(match key.len() {
            16 => Block::A128(aes::Aes128::new_from_slice(key).ok()?),
            24 => Block::A192(aes::Aes192::new_from_slice(key).ok()?),
            32 => Block::A256(aes::Aes256::new_from_slice(key).ok()?),
            _ => return None,
        })
    }

    fn encrypt(&self, block: &mut [u8; 16]) {
        let mut b = Array::from(*block);
        match self {
            Block::A128(c) => c.encrypt_block(&mut b),
            Block::A192(c) => c.encrypt_block(&mut b),
            Block::A256(c) => c.encrypt_block(&mut b),
        }
        *block = b.into();
    }

    fn decrypt(&self, block: &mut [u8; 16]) {
        let mut b = Array::from(*block);
        match self {
            Block::A128(c) => c.decrypt_block(&mut b),
            Block::A192(c) => c.decrypt_block(&mut b),
            Block::A256(c) => c.decrypt_block(&mut b),
        }
        *block = b.into();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ecb,
    Cbc,
}

/// A cipher as `aes.cipher` names it: "aes-<bits>-<mode>".
fn parse_method(method: &str) -> Option<(usize, Mode)> {
    let rest = method.strip_prefix("aes-")?;
    let (bits, mode) = rest.split_once('-')?;
    let key_len = match bits {
        "128" => 16,
        "192" => 24,
        "256" => 32,
        _ => return None,
    };
    let mode = match mode {
        "ecb" => Mode::Ecb,
        "cbc" => Mode::Cbc,
        _ => return None,
    };
    Some((key_len, mode))
}

/// The key and IV `EVP_BytesToKey(cipher, md, salt, data, count)` derives:
/// D_i = md^count(D_{i-1} || data || salt), concatenated until both are filled.
fn bytes_to_key(kind: Kind, salt: Option<&[u8]>, data: &[u8], count: u32, key_len: usize, iv_len: usize) -> Vec<u8> {
    let salt = salt.unwrap_or_default();
    let mut out = Vec::with_capacity(key_len + iv_len + 64);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < key_len + iv_len {
        let mut d = digest(kind, &[&prev, data, salt]);
        for _ in 1..count {
            d = digest(kind, &[&d]);
        }
        out.extend_from_slice(&d);
        prev = d;
    }
    out.truncate(key_len + iv_len);
    out
}

/// The object `resty.aes:new()` returns.
struct AesObject {
    block: Block,
    mode: Mode,
    iv: [u8; 16],
}

impl AesObject {
    /// PKCS#7-padded encryption, as `EVP_EncryptUpdate` + `EVP_EncryptFinal_ex` from the
    /// original IV (upstream re-initialises the context before every call).
    fn encrypt(&self, data: &[u8]) -> Vec<u8> {
        let pad = 16 - data.len() % 16;
        let mut out = Vec::with_capacity(data.len() + pad);
        out.extend_from_slice(data);
        out.resize(data.len() + pad, pad as u8);
        let mut prev = self.iv;
        for chunk in out.chunks_exact_mut(16) {
            let mut block = [0u8; 16];
            block.copy_from_slice(chunk);
            if self.mode == Mode::Cbc {
                block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
            }
            self.block.encrypt(&mut block);
            chunk.copy_from_slice(&block);
            prev = block;
        }
        out
    }

    /// The inverse; `None` where `EVP_DecryptFinal_ex` fails (not whole blocks, bad padding).
    fn decrypt(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.is_empty() || !data.len().is_multiple_of(16) {
            return None;
        }
        let mut out = data.to_vec();
        let mut prev = self.iv;
        for chunk in out.chunks_exact_mut(16) {
            let mut block = [0u8; 16];
            block.copy_from_slice(chunk);
            let cipher_block = block;
            self.block.decrypt(&mut block);
            if self.mode == Mode::Cbc {
                block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
            }
            chunk.copy_from_slice(&block);
            prev = cipher_block;
        }
        let pad = usize::from(*out.last()?);
        if pad == 0 || pad > 16 || !out[out.len() - pad..].iter().all(|&b| usize::from(b) == pad) {
            return None;
        }
        out.truncate(out.len() - pad);
        Some(out)
    }
}

impl UserData for AesObject {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("encrypt", |lua, this, args: MultiValue| {
            let data = string_arg(lua, &args, 0, 2)?;
            budget::charge_bytes(data.len() * 4)?;
            lua.create_string(this.encrypt(&data))
        });
        methods.add_method("decrypt", |lua, this, args: MultiValue| {
            let data = string_arg(lua, &args, 0, 2)?;
            budget::charge_bytes(data.len() * 4)?;
            this.decrypt(&data).map(|d| lua.create_string(d)).transpose()
        });
    }
}

/// `aes.cipher(size, mode)`: `{size = size, cipher = mode, method = "aes-<size>-<mode>"}`.
fn aes_cipher(lua: &Lua, (size, mode): (Value, Value)) -> mlua::Result<Table> {
    let size = if size.is_nil() { Value::Integer(128) } else { size };
    let mode = if mode.is_nil() {
        Value::String(lua.create_string("cbc")?)
    } else {
        mode
    };
    let text = |v: &Value| -> mlua::Result<String> {
        match v {
            Value::String(_) | Value::Integer(_) | Value::Number(_) => Ok(lua
                .coerce_string(v.clone())?
                .map(|s| s.to_string_lossy())
                .unwrap_or_default()),
            other => Err(mlua::Error::runtime(format!(
                "attempt to concatenate a {} value",
                crate::lua::args::type_name(other)
            ))),
        }
    };
    let method = format!("aes-{}-{}", text(&size)?, text(&mode)?);
    if parse_method(&method).is_none() {
        let (bits, m) = (text(&size)?, text(&mode)?);
        let offered = ["128", "192", "256"].contains(&bits.as_str())
            && ["cfb1", "cfb8", "cfb128", "ofb", "ctr"].contains(&m.as_str());
        if offered {
            return Err(mlua::Error::runtime(format!(
                "resty.aes: {method} is not available in Moongate (ecb and cbc are)"
            )));
        }
        // What indexing ffi.C with an undeclared name raises upstream.
        return Err(mlua::Error::runtime(format!(
            "missing declaration for symbol 'EVP_aes_{bits}_{m}'"
        )));
    }
    let t = lua.create_table()?;
    t.raw_set("size", size)?;
    t.raw_set("cipher", mode)?;
    t.raw_set("method", method)?;
    Ok(t)
}

/// `aes:new(key, salt, cipher, hash, hash_rounds)`.
fn aes_new(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let fail = |msg: Option<&str>| -> mlua::Result<MultiValue> {
        let mut r = MultiValue::new();
        r.push_back(Value::Nil);
        if let Some(m) = msg {
            r.push_back(Value::String(lua.create_string(m)?));
        }
        Ok(r)
    };
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
    let (key, salt, cipher, hash, rounds) = (arg(1), arg(2), arg(3), arg(4), arg(5));
    let (key_len, mode) = match &cipher {
        Value::Nil => (16, Mode::Cbc),
        Value::Table(t) => match t.raw_get::<Value>("method")? {
            Value::String(m) => parse_method(&m.to_string_lossy())
                .ok_or_else(|| arg_error(lua, 4, "cipher from aes.cipher expected", Where::Lauxlib))?,
            _ => return Err(arg_error(lua, 4, "cipher from aes.cipher expected", Where::Lauxlib)),
        },
        other => return Err(type_error(lua, 4, "table", Some(other), Where::Lauxlib)),
    };
    let key_bytes = |v: &Value| -> mlua::Result<Vec<u8>> {
        match v {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            other => Err(type_error(lua, 2, "string", Some(other), Where::Lauxlib)),
        }
    };
    let (gen_key, iv) = match &hash {
        Value::Table(h) => {
            let iv = match h.raw_get::<Value>("iv")? {
                Value::String(s) if s.as_bytes().len() == 16 => s.as_bytes().to_vec(),
                _ => return fail(Some("bad iv")),
            };
            let gen_key = match h.raw_get::<Value>("method")? {
                Value::Nil | Value::Boolean(false) => key_bytes(&key)?,
                Value::Function(f) => match f.call::<Value>(key.clone())? {
                    Value::String(s) => s.as_bytes().to_vec(),
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "attempt to get length of a {} value",
                            crate::lua::args::type_name(&other)
                        )));
                    }
                },
                _ => return Err(mlua::Error::runtime("attempt to call field 'method'")),
            };
            if gen_key.len() != key_len {
                return fail(Some("bad key length"));
            }
            (gen_key, iv)
        }
        _ => {
            let kind = match &hash {
                Value::Nil => Kind::Md5,
                Value::String(s) => match KINDS.iter().find(|(n, _)| n.as_bytes() == &*s.as_bytes()) {
                    Some((_, k)) => *k,
                    None => return Err(arg_error(lua, 5, "hash from aes.hash expected", Where::Lauxlib)),
                },
                other => return Err(type_error(lua, 5, "table", Some(other), Where::Lauxlib)),
            };
            let data = key_bytes(&key)?;
            let salt = match &salt {
                Value::Nil => None,
                Value::String(s) if s.as_bytes().len() == 8 => Some(s.as_bytes().to_vec()),
                Value::String(_) => return fail(Some("salt must be 8 characters or nil")),
                other => return Err(type_error(lua, 3, "string", Some(other), Where::Lauxlib)),
            };
            // ffi converts the count to a C int; below one round means one.
            let count = match &rounds {
                Value::Nil => 1,
                Value::Integer(i) => (*i).clamp(1, i64::from(i32::MAX)) as u32,
                Value::Number(n) if n.is_finite() => n.clamp(1.0, f64::from(i32::MAX)) as u32,
                other => return Err(type_error(lua, 6, "number", Some(other), Where::Lauxlib)),
            };
            let iv_len = if mode == Mode::Ecb { 0 } else { 16 };
            // Two or three digests of at most 64 bytes of output each, `count` rounds apiece.
            let per_round = data.len() + 8 + 64 + 128;
            let blocks = (key_len + iv_len).div_ceil(16) as u64;
            budget::charge(
                blocks.saturating_mul(u64::from(count)).saturating_mul(per_round as u64) / budget::BYTES_PER_UNIT,
            )?;
            let out = bytes_to_key(kind, salt.as_deref(), &data, count, key_len, iv_len);
            let mut iv = out[key_len..].to_vec();
            iv.resize(16, 0);
            (out[..key_len].to_vec(), iv)
        }
    };
    let Some(block) = Block::new(&gen_key) else {
        return fail(None);
    };
    let mut iv_arr = [0u8; 16];
    iv_arr.copy_from_slice(&iv[..16]);
    let obj = lua.create_userdata(AesObject {
        block,
        mode,
        iv: iv_arr,
    })?;
    let mut r = MultiValue::new();
    r.push_back(Value::UserData(obj));
    Ok(r)
}

/// `resty.random.bytes(len, strong)`: both kinds come from the OS-seeded CSPRNG; `nil` for a
/// length that is not a non-negative number or exceeds the route's string limit.
fn random_bytes(lua: &Lua, (len, _strong): (Value, Value)) -> mlua::Result<Option<mlua::LuaString>> {
    use rand::RngCore as _;
    let len = match len {
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        _ => return Ok(None),
    };
    if len.is_nan() || len < 0.0 || len > budget::max_string_len() as f64 {
        return Ok(None);
    }
    let len = len as usize;
    budget::charge_bytes(len * 2)?;
    let mut buf = vec![0u8; len];
    rand::rng().fill_bytes(&mut buf);
    lua.create_string(buf).map(Some)
}

/// Adds the modules to the registry `libs`.
pub fn register(lua: &Lua, libs: &Table) -> mlua::Result<()> {
    let to_hex_fn = lua.create_function(|lua, args: MultiValue| {
        let data = string_arg(lua, &args, 0, 1)?;
        budget::charge_bytes(data.len() * 2)?;
        lua.create_string(to_hex(&data))
    })?;
    let atoi_fn = lua.create_function(|lua, args: MultiValue| {
        let data = string_arg(lua, &args, 0, 1)?;
        budget::charge_bytes(data.len())?;
        Ok(atoi(&data) as f64)
    })?;
    libs.raw_set(
        "resty.string",
        super::fresh_table(
            lua,
            vec![
                ("_VERSION", Value::String(lua.create_string(VERSION)?)),
                ("to_hex", Value::Function(to_hex_fn)),
                ("atoi", Value::Function(atoi_fn)),
            ],
        )?,
    )?;
    libs.raw_set(
        "resty.sha",
        super::fresh_table(lua, vec![("_VERSION", Value::String(lua.create_string(VERSION)?))])?,
    )?;
    for (name, kind) in KINDS {
        let new =
            lua.create_function(move |lua, _self: MultiValue| lua.create_userdata(HashObject(Hasher::new(kind))))?;
        libs.raw_set(
            format!("resty.{name}"),
            super::fresh_table(
                lua,
                vec![
                    ("_VERSION", Value::String(lua.create_string(VERSION)?)),
                    ("new", Value::Function(new)),
                ],
            )?,
        )?;
    }
    libs.raw_set(
        "resty.random",
        super::fresh_table(
            lua,
            vec![
                ("_VERSION", Value::String(lua.create_string(VERSION)?)),
                ("bytes", Value::Function(lua.create_function(random_bytes)?)),
            ],
        )?,
    )?;
    let cipher = lua.create_function(aes_cipher)?;
    let new = lua.create_function(aes_new)?;
    let make_aes = lua.create_function(move |lua, (_ngx, _env): (Value, Value)| {
        let hash = lua.create_table()?;
        for (n, _) in KINDS {
            hash.raw_set(n, n)?;
        }
        let m = lua.create_table()?;
        m.raw_set("_VERSION", VERSION)?;
        m.raw_set("hash", hash)?;
        m.raw_set("cipher", cipher.clone())?;
        m.raw_set("new", new.clone())?;
        Ok(m)
    })?;
    libs.raw_set("resty.aes", make_aes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_is_ngx_atoi() {
        assert_eq!(atoi(b"123"), 123);
        assert_eq!(atoi(b""), -1);
        assert_eq!(atoi(b"-1"), -1);
        assert_eq!(atoi(b" 1"), -1);
        assert_eq!(atoi(b"9223372036854775807"), i64::MAX);
        assert_eq!(atoi(b"9223372036854775808"), -1);
        assert_eq!(to_hex(b"\x00\xffA"), b"00ff41");
    }

    #[test]
    fn digests_match_known_vectors() {
        let hex = |k: Kind, s: &[u8]| String::from_utf8(to_hex(&digest(k, &[s]))).unwrap();
        assert_eq!(hex(Kind::Md5, b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(Kind::Sha1, b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(Kind::Sha224, b"abc"),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        let mut h = Hasher::new(Kind::Sha256);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            String::from_utf8(to_hex(&h.finish())).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// FIPS-197 appendix C.1 and the padding rules of EVP.
    #[test]
    fn aes_round_trips_and_rejects_bad_padding() {
        let key: Vec<u8> = (0u8..16).collect();
        let obj = AesObject {
            block: Block::new(&key).unwrap(),
            mode: Mode::Ecb,
            iv: [0; 16],
        };
        let plain: Vec<u8> = (0u8..16).map(|i| i * 0x11).collect();
        let ct = obj.encrypt(&plain);
        assert_eq!(
            String::from_utf8(to_hex(&ct[..16])).unwrap(),
            "69c4e0d86a7b0430d8cdb78070b4c55a"
        );
        assert_eq!(ct.len(), 32);
        assert_eq!(obj.decrypt(&ct).unwrap(), plain);
        assert_eq!(obj.decrypt(&ct[..15]), None);
        assert_eq!(obj.decrypt(b""), None);
        let cbc = AesObject {
            block: Block::new(&key).unwrap(),
            mode: Mode::Cbc,
            iv: [7; 16],
        };
        for n in [0, 1, 15, 16, 17, 100] {
            let p = vec![b'x'; n];
            assert_eq!(cbc.decrypt(&cbc.encrypt(&p)).unwrap(), p);
        }
        // A corrupted last block decrypts to bytes whose padding does not check out.
        let mut last = cbc.encrypt(b"hello");
        last[15] ^= 0xff;
        assert_eq!(cbc.decrypt(&last), None);
    }

    #[test]
    fn bytes_to_key_chains_digests() {
        let out = bytes_to_key(Kind::Md5, Some(&[1, 2, 3, 4, 5, 6, 7, 8]), b"secret", 1, 16, 16);
        // The bytes are checked against the real openssl in tests/libs.rs; here the
        // construction: D1 = md5(data || salt), D2 = md5(D1 || data || salt).
        assert_eq!(
            out[..16],
            digest(Kind::Md5, &[b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]])[..]
        );
        assert_eq!(
            out[16..],
            digest(Kind::Md5, &[&out[..16], b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]])[..]
        );
    }
}
