//! JSON text to Lua values, as upstream's tokenizer and recursive parser:
//! the text ends at its first NUL byte (upstream reads a C string), numbers
//! are whatever C's `strtod` accepts at that point (hex, `inf`, `nan` only
//! with `decode_invalid_numbers`), `\u` escapes become UTF-8 (surrogate
//! pairs combined, lone surrogates refused), other bytes are copied as they
//! are, duplicate keys keep the last value, `null` is the NULL light
//! userdata.

use mlua::{Lua, Table, Value};

use super::{Config, Failure, HARD_DEPTH, Meter, NODE_UNITS, Shared};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    ObjBegin,
    ObjEnd,
    ArrBegin,
    ArrEnd,
    String,
    Number(f64),
    Boolean(bool),
    Null,
    Colon,
    Comma,
    End,
    Error(&'static str),
}

impl Kind {
    /// What an error message says was found.
    fn name(self) -> &'static str {
        match self {
            Kind::ObjBegin => "T_OBJ_BEGIN",
            Kind::ObjEnd => "T_OBJ_END",
            Kind::ArrBegin => "T_ARR_BEGIN",
            Kind::ArrEnd => "T_ARR_END",
            Kind::String => "T_STRING",
            Kind::Number(_) => "T_NUMBER",
            Kind::Boolean(_) => "T_BOOLEAN",
            Kind::Null => "T_NULL",
            Kind::Colon => "T_COLON",
            Kind::Comma => "T_COMMA",
            Kind::End => "T_END",
            Kind::Error(what) => what,
        }
    }
}

#[derive(Clone, Copy)]
struct Token {
    kind: Kind,
    /// 0-based offset where the token (or its error) is.
    index: usize,
}

struct Parser<'a> {
    lua: &'a Lua,
    cfg: &'a Config,
    array_mt: Option<Table>,
    data: &'a [u8],
    pos: usize,
    depth: i32,
    /// The text of the last string token.
    tmp: Vec<u8>,
    meter: Meter,
}

pub(super) fn decode(lua: &Lua, cfg: &Config, shared: &Shared, data: &[u8]) -> Result<Value, Failure> {
    if data.len() >= 2 && (data[0] == 0 || data[1] == 0) {
        return Err(Failure::Message("JSON parser does not support UTF-16 or UTF-32".into()));
    }
    let mut p = Parser {
        lua,
        cfg,
        array_mt: cfg.decode_array_with_array_mt.then(|| shared.array_mt.clone()),
        data,
        pos: 0,
        depth: 0,
        tmp: Vec::new(),
        meter: Meter::new(),
    };
    let token = p.next_token()?;
    let v = p.value(token)?;
    let token = p.next_token()?;
    if token.kind != Kind::End {
        return Err(p.error("the end", token));
    }
    p.meter.finish()?;
    Ok(v)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Parser<'_> {
    /// The byte at `i`; 0 past the end, as upstream sees the C string's NUL.
    fn at(&self, i: usize) -> u8 {
        self.data.get(i).copied().unwrap_or(0)
    }

    fn error(&self, expected: &str, token: Token) -> Failure {
        Failure::Message(format!(
            "Expected {expected} but found {} at character {}",
            token.kind.name(),
            token.index + 1
        ))
    }

    fn starts_with(&self, word: &[u8]) -> bool {
        self.data.get(self.pos..).is_some_and(|rest| rest.starts_with(word))
    }

    fn next_token(&mut self) -> Result<Token, Failure> {
        let start = self.pos;
        while is_ws(self.at(self.pos)) {
            self.pos += 1;
        }
        self.meter
            .add(NODE_UNITS + (self.pos - start) as u64 / crate::lua::budget::BYTES_PER_UNIT)?;
        let index = self.pos;
        let ch = self.at(self.pos);
        let single = match ch {
            b'{' => Some(Kind::ObjBegin),
            b'}' => Some(Kind::ObjEnd),
            b'[' => Some(Kind::ArrBegin),
            b']' => Some(Kind::ArrEnd),
            b',' => Some(Kind::Comma),
            b':' => Some(Kind::Colon),
            0 => return Ok(Token { kind: Kind::End, index }),
            _ => None,
        };
        if let Some(kind) = single {
            self.pos += 1;
            return Ok(Token { kind, index });
        }
        let token = |kind| Ok(Token { kind, index });
        match ch {
            b'"' => self.string_token(),
            b'-' | b'0'..=b'9' => {
                if !self.cfg.decode_invalid_numbers && self.is_invalid_number() {
                    return token(Kind::Error("invalid number"));
                }
                token(self.number_token())
            }
            b't' | b'f' | b'n' | b'i' | b'I' | b'N' | b'+' => {
                if self.starts_with(b"true") {
                    self.pos += 4;
                    token(Kind::Boolean(true))
                } else if self.starts_with(b"false") {
                    self.pos += 5;
                    token(Kind::Boolean(false))
                } else if self.starts_with(b"null") {
                    self.pos += 4;
                    token(Kind::Null)
                } else if self.cfg.decode_invalid_numbers && self.is_invalid_number() {
                    token(self.number_token())
                } else {
                    token(Kind::Error("invalid token"))
                }
            }
            _ => token(Kind::Error("invalid token")),
        }
    }

    /// Upstream's `json_is_invalid_number`: what strict JSON refuses but
    /// `strtod` takes (a leading `+`, hex, leading zeros, inf, nan).
    fn is_invalid_number(&self) -> bool {
        let mut p = self.pos;
        if self.at(p) == b'+' {
            return true;
        }
        if self.at(p) == b'-' {
            p += 1;
        }
        let c = self.at(p);
        if c == b'0' {
            let c2 = self.at(p + 1);
            return (c2 | 0x20) == b'x' || c2.is_ascii_digit();
        }
        if c <= b'9' {
            return false;
        }
        let word = |w: &[u8]| (0..3).all(|i| self.at(p + i).to_ascii_lowercase() == w[i]);
        word(b"inf") || word(b"nan")
    }

    fn number_token(&mut self) -> Kind {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let rest = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        match strtod(rest) {
            Some((n, used)) => {
                self.pos += used;
                Kind::Number(n)
            }
            None => Kind::Error("invalid number"),
        }
    }

    fn string_token(&mut self) -> Result<Token, Failure> {
        let index = self.pos;
        self.pos += 1;
        self.tmp.clear();
        loop {
            let ch = self.at(self.pos);
            match ch {
                b'"' => break,
                0 => return Ok(self.token_error("unexpected end of string")),
                b'\\' => {
                    let unescaped = match self.at(self.pos + 1) {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b't' => b'\t',
                        b'n' => b'\n',
                        b'f' => 0x0c,
                        b'r' => b'\r',
                        b'u' => {
                            if self.unicode_escape() {
                                continue;
                            }
                            return Ok(self.token_error("invalid unicode escape code"));
                        }
                        _ => return Ok(self.token_error("invalid escape code")),
                    };
                    self.tmp.push(unescaped);
                    self.pos += 2;
                }
                _ => {
                    // Copy the run of plain bytes at once.
                    let start = self.pos;
                    let rest = &self.data[start..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b == 0)
                        .unwrap_or(rest.len());
                    self.tmp.extend_from_slice(&rest[..n]);
                    self.pos += n;
                }
            }
        }
        self.pos += 1;
        self.meter
            .add(self.tmp.len() as u64 / crate::lua::budget::BYTES_PER_UNIT)?;
        Ok(Token {
            kind: Kind::String,
            index,
        })
    }

    fn token_error(&self, what: &'static str) -> Token {
        Token {
            kind: Kind::Error(what),
            index: self.pos,
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let mut v = 0;
        for i in 0..4 {
            v = v << 4 | char::from(self.at(at + i)).to_digit(16)?;
        }
        Some(v)
    }

    /// `\uXXXX` (and a following low surrogate) at `pos`, appended as UTF-8.
    fn unicode_escape(&mut self) -> bool {
        let Some(mut cp) = self.hex4(self.pos + 2) else {
            return false;
        };
        let mut len = 6;
        if cp & 0xF800 == 0xD800 {
            if cp & 0x400 != 0 {
                return false;
            }
            if self.at(self.pos + 6) != b'\\' || self.at(self.pos + 7) != b'u' {
                return false;
            }
            let Some(low) = self.hex4(self.pos + 8) else {
                return false;
            };
            if low & 0xFC00 != 0xDC00 {
                return false;
            }
            cp = (((cp & 0x3FF) << 10) | (low & 0x3FF)) + 0x10000;
            len = 12;
        }
        let mut buf = [0u8; 4];
        let utf8 = match char::from_u32(cp) {
            Some(c) => c.encode_utf8(&mut buf).as_bytes(),
            None => return false,
        };
        self.tmp.extend_from_slice(utf8);
        self.pos += len;
        true
    }

    fn descend(&mut self) -> Result<(), Failure> {
        self.depth += 1;
        if self.depth > self.cfg.decode_max_depth || self.depth > HARD_DEPTH || crate::lua::stack::exhausted() {
            return Err(Failure::Message(format!(
                "Found too many nested data structures ({}) at character {}",
                self.depth, self.pos
            )));
        }
        Ok(())
    }

    fn value(&mut self, token: Token) -> Result<Value, Failure> {
        Ok(match token.kind {
            Kind::String => Value::String(self.lua.create_string(&self.tmp)?),
            Kind::Number(n) => Value::Number(n),
            Kind::Boolean(b) => Value::Boolean(b),
            Kind::Null => Value::NULL,
            Kind::ObjBegin => Value::Table(self.object()?),
            Kind::ArrBegin => Value::Table(self.array()?),
            _ => return Err(self.error("value", token)),
        })
    }

    fn object(&mut self) -> Result<Table, Failure> {
        self.descend()?;
        let t = self.lua.create_table()?;
        let mut token = self.next_token()?;
        if token.kind == Kind::ObjEnd {
            self.depth -= 1;
            return Ok(t);
        }
        loop {
            if token.kind != Kind::String {
                return Err(self.error("object key string", token));
            }
            let key = self.lua.create_string(&self.tmp)?;
            token = self.next_token()?;
            if token.kind != Kind::Colon {
                return Err(self.error("colon", token));
            }
            token = self.next_token()?;
            let v = self.value(token)?;
            t.raw_set(key, v)?;
            token = self.next_token()?;
            if token.kind == Kind::ObjEnd {
                self.depth -= 1;
                return Ok(t);
            }
            if token.kind != Kind::Comma {
                return Err(self.error("comma or object end", token));
            }
            token = self.next_token()?;
        }
    }

    fn array(&mut self) -> Result<Table, Failure> {
        self.descend()?;
        let t = self.lua.create_table()?;
        if let Some(mt) = &self.array_mt {
            t.set_metatable(Some(mt.clone()))?;
        }
        let mut token = self.next_token()?;
        if token.kind == Kind::ArrEnd {
            self.depth -= 1;
            return Ok(t);
        }
        let mut i: i64 = 1;
        loop {
            let v = self.value(token)?;
            t.raw_set(i, v)?;
            i += 1;
            token = self.next_token()?;
            if token.kind == Kind::ArrEnd {
                self.depth -= 1;
                return Ok(t);
            }
            if token.kind != Kind::Comma {
                return Err(self.error("comma or array end", token));
            }
            token = self.next_token()?;
        }
    }
}

/// The longest prefix of `s` that C's `strtod` (glibc, "C" locale) converts,
/// with its value and length; `None` when it converts nothing. Forms: an
/// optional sign, then `inf`/`infinity`, `nan`/`nan(chars)` (any case), a
/// hex float (`0x` digits, `.`, `p` exponent), or a decimal float.
pub(crate) fn strtod(s: &[u8]) -> Option<(f64, usize)> {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut i = 0;
    let negative = match at(0) {
        b'-' => {
            i = 1;
            true
        }
        b'+' => {
            i = 1;
            false
        }
        _ => false,
    };
    let sign = |v: f64| if negative { -v } else { v };
    let word = |from: usize, w: &[u8]| (0..w.len()).all(|k| at(from + k).to_ascii_lowercase() == w[k]);
    if word(i, b"inf") {
        let used = if word(i + 3, b"inity") { i + 8 } else { i + 3 };
        return Some((sign(f64::INFINITY), used));
    }
    if word(i, b"nan") {
        let mut used = i + 3;
        if at(used) == b'(' {
            let mut j = used + 1;
            while at(j).is_ascii_alphanumeric() || at(j) == b'_' {
                j += 1;
            }
            if at(j) == b')' {
                used = j + 1;
            }
        }
        return Some((sign(f64::NAN), used));
    }
    if at(i) == b'0' && (at(i + 1) | 0x20) == b'x' {
        if let Some((v, used)) = hex_float(&s[i + 2..]) {
            return Some((sign(v), i + 2 + used));
        }
        // "0x" without hex digits: strtod takes the "0".
        return Some((sign(0.0), i + 1));
    }
    let start = i;
    let mut digits = 0;
    while at(i).is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if at(i) == b'.' {
        i += 1;
        while at(i).is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    if (at(i) | 0x20) == b'e' {
        let mut j = i + 1;
        if matches!(at(j), b'+' | b'-') {
            j += 1;
        }
        if at(j).is_ascii_digit() {
            while at(j).is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    let text = std::str::from_utf8(&s[start..i]).ok()?;
    // Rust's parser refuses a bare "." around digits no more than strtod
    // does ("1.", ".5" are both fine), and rounds correctly as glibc does.
    let v: f64 = text.parse().ok()?;
    Some((sign(v), i))
}

/// The hex digits (with an optional point and binary exponent) after "0x":
/// value and bytes used, `None` without a digit.
fn hex_float(s: &[u8]) -> Option<(f64, usize)> {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let digit = |b: u8| char::from(b).to_digit(16);
    let mut mantissa: u64 = 0;
    let mut exp: i64 = 0;
    let mut sticky = false;
    let mut digits = 0;
    let mut i = 0;
    let mut add = |d: u32, fraction: bool, mantissa: &mut u64, exp: &mut i64| {
        if *mantissa >> 60 == 0 {
            *mantissa = *mantissa << 4 | u64::from(d);
            if fraction {
                *exp -= 4;
            }
        } else {
            sticky |= d != 0;
            if !fraction {
                *exp += 4;
            }
        }
    };
    while let Some(d) = digit(at(i)) {
        add(d, false, &mut mantissa, &mut exp);
        i += 1;
        digits += 1;
    }
    if at(i) == b'.' {
        let mut j = i + 1;
        let mut frac = 0;
        while let Some(d) = digit(at(j)) {
            add(d, true, &mut mantissa, &mut exp);
            j += 1;
            frac += 1;
        }
        if digits + frac > 0 {
            i = j;
            digits += frac;
        }
    }
    if digits == 0 {
        return None;
    }
    if (at(i) | 0x20) == b'p' {
        let mut j = i + 1;
        let negative = match at(j) {
            b'-' => {
                j += 1;
                true
            }
            b'+' => {
                j += 1;
                false
            }
            _ => false,
        };
        if at(j).is_ascii_digit() {
            let mut e: i64 = 0;
            while at(j).is_ascii_digit() {
                e = (e * 10 + i64::from(at(j) - b'0')).min(100_000);
                j += 1;
            }
            exp += if negative { -e } else { e };
            i = j;
        }
    }
    if sticky {
        mantissa |= 1;
    }
    let mut v = mantissa as f64;
    let mut e = exp.clamp(-5000, 5000);
    while e != 0 && v != 0.0 && v.is_finite() {
        let step = e.clamp(-1000, 1000);
        v *= 2f64.powi(step as i32);
        e -= step;
    }
    Some((v, i))
}
