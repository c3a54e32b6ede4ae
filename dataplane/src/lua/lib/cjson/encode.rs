//! Lua values to JSON text, as upstream's `json_append_data`: tables are
//! arrays when every key is a positive integer (within the sparse-array
//! rules) or their metatable says so, objects otherwise; numbers are
//! `%.{precision}g`; strings are escaped byte by byte and never validated.

use mlua::{Lua, Table, Value};

use super::{Config, Failure, HARD_DEPTH, InvalidNumbers, Meter, NODE_UNITS, Shared, empty_array_ptr};
use crate::lua::args::type_name;

struct Encoder<'a> {
    cfg: &'a Config,
    array_mt: *const std::ffi::c_void,
    empty_array_mt: *const std::ffi::c_void,
    out: Vec<u8>,
    /// The largest output the running code may build.
    limit: usize,
    meter: Meter,
}

pub(super) fn encode(lua: &Lua, cfg: &Config, shared: &Shared, v: &Value) -> Result<Value, Failure> {
    let mut e = Encoder {
        cfg,
        array_mt: shared.array_mt.to_pointer(),
        empty_array_mt: shared.empty_array_mt.to_pointer(),
        out: Vec::new(),
        limit: crate::lua::budget::max_string_len(),
        meter: Meter::new(),
    };
    e.value(v, 0)?;
    e.meter.finish()?;
    Ok(Value::String(lua.create_string(&e.out)?))
}

fn fail(msg: String) -> Failure {
    Failure::Message(msg)
}

/// What LuaJIT raises when an allocation fails: the output would be larger
/// than the running code may build.
fn out_of_memory() -> Failure {
    Failure::Lua(mlua::Error::MemoryError("not enough memory".into()))
}

fn serialise_error(v: &Value, reason: &str) -> Failure {
    fail(format!("Cannot serialise {}: {reason}", type_name(v)))
}

impl Encoder<'_> {
    fn room(&self) -> Result<(), Failure> {
        if self.out.len() > self.limit {
            return Err(out_of_memory());
        }
        Ok(())
    }

    /// Appends `v`; `Ok(false)` when it was skipped as an unsupported type
    /// (`encode_skip_unsupported_value_types`), having appended nothing.
    fn value(&mut self, v: &Value, depth: i32) -> Result<bool, Failure> {
        self.meter.add(NODE_UNITS)?;
        match v {
            Value::String(s) => self.string(&s.as_bytes())?,
            Value::Integer(i) => self.number(*i as f64, v)?,
            Value::Number(n) => self.number(*n, v)?,
            Value::Boolean(true) => self.out.extend_from_slice(b"true"),
            Value::Boolean(false) => self.out.extend_from_slice(b"false"),
            Value::Nil => self.out.extend_from_slice(b"null"),
            Value::Table(t) => self.table(t, depth + 1)?,
            Value::LightUserData(p) if p.0.is_null() => self.out.extend_from_slice(b"null"),
            Value::LightUserData(p) if p.0 == empty_array_ptr() => self.out.extend_from_slice(b"[]"),
            // Upstream appends nothing for any other light userdata.
            Value::LightUserData(_) => {}
            _ if self.cfg.skip_unsupported => return Ok(false),
            _ => return Err(serialise_error(v, "type not supported")),
        }
        self.room()?;
        Ok(true)
    }

    fn string(&mut self, s: &[u8]) -> Result<(), Failure> {
        // Escaping is the only work here that grows with the input.
        self.meter.add(s.len() as u64 / crate::lua::budget::BYTES_PER_UNIT)?;
        if self.out.len().saturating_add(s.len()) > self.limit {
            return Err(out_of_memory());
        }
        self.out.reserve(s.len() + 2);
        self.out.push(b'"');
        for &b in s {
            match escape(b, self.cfg.escape_forward_slash) {
                Some(esc) => self.out.extend_from_slice(esc.as_bytes()),
                None => self.out.push(b),
            }
        }
        self.out.push(b'"');
        Ok(())
    }

    fn number(&mut self, n: f64, v: &Value) -> Result<(), Failure> {
        if !n.is_finite() {
            match self.cfg.encode_invalid_numbers {
                InvalidNumbers::Refuse => return Err(serialise_error(v, "must not be NaN or Infinity")),
                InvalidNumbers::Allow => {
                    let text: &[u8] = if n.is_nan() {
                        b"NaN"
                    } else if n < 0.0 {
                        b"-Infinity"
                    } else {
                        b"Infinity"
                    };
                    self.out.extend_from_slice(text);
                    return Ok(());
                }
                InvalidNumbers::Null => {
                    self.out.extend_from_slice(b"null");
                    return Ok(());
                }
            }
        }
        self.out
            .extend_from_slice(fmt_g(n, self.cfg.number_precision).as_bytes());
        Ok(())
    }

    fn table(&mut self, t: &Table, depth: i32) -> Result<(), Failure> {
        if depth > self.cfg.encode_max_depth || depth > HARD_DEPTH || crate::lua::stack::exhausted() {
            return Err(fail(format!("Cannot serialise, excessive nesting ({depth})")));
        }
        let mt = t.metatable();
        let mut as_array = false;
        if let Some(mt) = &mt {
            as_array = mt.to_pointer() == self.array_mt || !mt.raw_get::<Value>("__len")?.is_nil();
        }
        if as_array {
            let len = i64::try_from(t.raw_len()).unwrap_or(i64::MAX);
            return self.array(t, depth, len);
        }
        let len = self.array_length(t)?;
        if len > 0 || (len == 0 && !self.cfg.empty_table_as_object) {
            return self.array(t, depth, i64::from(len));
        }
        if let Some(mt) = &mt
            && mt.to_pointer() == self.empty_array_mt
        {
            self.out.extend_from_slice(b"[]");
            return Ok(());
        }
        self.object(t, depth)
    }

    /// Upstream's `lua_array_length`: the largest key when every key is a
    /// positive integer and the table is not excessively sparse; -1 (or,
    /// with keys past a C int, whatever upstream's conversion gives) for an
    /// object.
    fn array_length(&mut self, t: &Table) -> Result<i32, Failure> {
        let mut max: i32 = 0;
        let mut items: i32 = 0;
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair?;
            self.meter.add(NODE_UNITS)?;
            let k = match k {
                Value::Integer(i) => i as f64,
                Value::Number(n) => n,
                _ => return Ok(-1),
            };
            if k != 0.0 && k.floor() == k && k >= 1.0 {
                if k > f64::from(max) {
                    // A C double -> int conversion: x86 gives INT_MIN out of range.
                    max = if k < 2_147_483_648.0 { k as i32 } else { i32::MIN };
                }
                items = items.wrapping_add(1);
                continue;
            }
            return Ok(-1);
        }
        let cfg = self.cfg;
        if cfg.sparse_ratio > 0 && max > items.wrapping_mul(cfg.sparse_ratio) && max > cfg.sparse_safe {
            if !cfg.sparse_convert {
                return Err(fail("Cannot serialise table: excessively sparse array".into()));
            }
            return Ok(-1);
        }
        Ok(max)
    }

    fn array(&mut self, t: &Table, depth: i32, len: i64) -> Result<(), Failure> {
        self.out.push(b'[');
        let mut comma = 0u32;
        for i in 1..=len {
            let at = self.out.len();
            if comma > 0 {
                self.out.push(b',');
            }
            comma = comma.saturating_add(1);
            let v: Value = t.raw_get(i)?;
            if !self.value(&v, depth)? {
                self.out.truncate(at);
                if comma == 1 {
                    comma = 0;
                }
            }
            // A huge length over holes still costs its iterations.
            self.room()?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn object(&mut self, t: &Table, depth: i32) -> Result<(), Failure> {
        self.out.push(b'{');
        let mut comma = 0u32;
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            let at = self.out.len();
            if comma > 0 {
                self.out.push(b',');
            }
            comma = comma.saturating_add(1);
            match &k {
                Value::Integer(i) => {
                    self.out.push(b'"');
                    self.number(*i as f64, &k)?;
                    self.out.extend_from_slice(b"\":");
                }
                Value::Number(n) => {
                    self.out.push(b'"');
                    self.number(*n, &k)?;
                    self.out.extend_from_slice(b"\":");
                }
                Value::String(s) => {
                    self.string(&s.as_bytes())?;
                    self.out.push(b':');
                }
                _ => return Err(serialise_error(&k, "table key must be a number or string")),
            }
            if !self.value(&v, depth)? {
                self.out.truncate(at);
                if comma == 1 {
                    comma = 0;
                }
            }
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// The escape of byte `b` in a JSON string, `None` for itself: `"`, `\`,
/// the C0 controls (the short forms for \b \t \n \f \r), DEL as `\u007f`,
/// and `/` as `\/` unless turned off. Bytes >= 0x80 pass through.
pub(crate) fn escape(b: u8, forward_slash: bool) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t", "\\n",
        "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014",
        "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e",
        "\\u001f",
    ];
    match b {
        0..=0x1f => Some(CONTROL[usize::from(b)]),
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        b'/' if forward_slash => Some("\\/"),
        0x7f => Some("\\u007f"),
        _ => None,
    }
}

/// C's `%.{precision}g` of a finite `n` (what upstream's `fpconv_g_fmt`
/// prints): `precision` significant digits, trailing zeros dropped,
/// exponent form when the exponent is below -4 or at least the precision.
pub(crate) fn fmt_g(n: f64, precision: i32) -> String {
    let p = usize::try_from(precision.clamp(1, 17)).unwrap_or(14);
    if n == 0.0 {
        return if n.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let sci = format!("{:.*e}", p - 1, n);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i64 {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim_fraction(mantissa), exp.abs());
    }
    let decimals = usize::try_from(p as i64 - 1 - exp).unwrap_or(0);
    trim_fraction(&format!("{n:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}
