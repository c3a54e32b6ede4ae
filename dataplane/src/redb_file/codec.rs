//! The framing of the records Moongate stores as redb values: durable dict
//! entries (`shdict::record`), durable timers (`durable_timer::codec`), the
//! durable store's bookkeeping (`shdict::durable`) and the last applied
//! config (`discovery::store`).
//!
//! Each record type keeps its own layout in its own module and writes it
//! with the primitives here, so they all share one set of conventions:
//! - a leading version byte ([`Format`]): a record of another version is an
//!   error, never misread;
//! - fixed-width integers and `f64`s, little-endian;
//! - lengths and counts as `u32` before what they count (a length that does
//!   not fit is written as `u32::MAX`, which never decodes: callers bound
//!   their sizes far below 4 GiB);
//! - decoding reads untrusted bytes: every read is bounds-checked, no length
//!   or count is trusted before the bytes it promises are there, and nothing
//!   panics. Anything malformed is a [`DecodeError`] naming the record type
//!   and the field that is wrong, for the caller to log and drop the row.
//!
//! The config snapshot is a protobuf message, framed by protobuf itself;
//! it is stored unframed as it always was, and decoded through
//! [`decode_protobuf`] into the same error.

/// A record that does not decode: what it was meant to be, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {record}: {problem}")]
pub struct DecodeError {
    /// The record type, e.g. "durable timer record".
    pub record: &'static str,
    pub problem: Problem,
}

/// What is wrong with a record; `field` names the part being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("version {found}, but this build reads version {expected}")]
    Version { found: u8, expected: u8 },
    #[error("{field} is cut short: {needed} bytes needed, {left} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("{len} bytes left over after the end of the record")]
    Trailing { len: usize },
    #[error("{len} bytes, more than the {max} this record may have")]
    TooLarge { len: usize, max: usize },
    #[error("unknown {field} {tag}")]
    Tag { field: &'static str, tag: u8 },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: &'static str },
    #[error("{0}")]
    Protobuf(String),
}

/// A versioned record type: its name (for errors) and the version it is
/// written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub record: &'static str,
    pub version: u8,
}

impl Format {
    pub const fn new(record: &'static str, version: u8) -> Format {
        Format { record, version }
    }

    /// A writer that has written the version byte; `capacity` is a hint.
    pub fn writer(self, capacity: usize) -> Writer {
        let mut out = Vec::with_capacity(capacity.saturating_add(1));
        out.push(self.version);
        Writer(out)
    }

    /// A reader past the version byte, which must be this format's.
    pub fn reader(self, bytes: &[u8]) -> Result<Reader<'_>, DecodeError> {
        let mut r = Reader::unversioned(self.record, bytes);
        let found = r.u8("version")?;
        if found != self.version {
            return Err(r.error(Problem::Version {
                found,
                expected: self.version,
            }));
        }
        Ok(r)
    }

    /// As `reader`, refusing records longer than `max` bytes first.
    pub fn reader_at_most(self, bytes: &[u8], max: usize) -> Result<Reader<'_>, DecodeError> {
        if bytes.len() > max {
            return Err(DecodeError {
                record: self.record,
                problem: Problem::TooLarge { len: bytes.len(), max },
            });
        }
        self.reader(bytes)
    }
}

/// Builds a record; see the module header for the conventions.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A writer without a version byte (fixed-layout values).
    pub fn unversioned(capacity: usize) -> Writer {
        Writer(Vec::with_capacity(capacity))
    }

    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A length or count, as `u32` (saturated: see the module header).
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    /// Bytes as they are, unprefixed: the end of a record, whose length is
    /// what is left.
    pub fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a record from untrusted bytes; every read is checked and names the
/// field it reads in its error.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    record: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `bytes` without a version byte (fixed-layout values).
    pub fn unversioned(record: &'static str, bytes: &'a [u8]) -> Reader<'a> {
        Reader { record, rest: bytes }
    }

    /// The error `problem` in this record.
    pub fn error(&self, problem: Problem) -> DecodeError {
        DecodeError {
            record: self.record,
            problem,
        }
    }

    /// `field` holds `tag`, which the layout does not define.
    pub fn bad_tag(&self, field: &'static str, tag: u8) -> DecodeError {
        self.error(Problem::Tag { field, tag })
    }

    /// `field` breaks a rule of the layout, stated by `why`.
    pub fn invalid(&self, field: &'static str, why: &'static str) -> DecodeError {
        self.error(Problem::Invalid { field, why })
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(self.error(Problem::Truncated {
                field,
                needed: n,
                left: self.rest.len(),
            }));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let head = self.take(field, N)?;
        let mut out = [0; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    pub fn f64(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        self.array(field).map(f64::from_le_bytes)
    }

    /// A length written by [`Writer::len`].
    pub fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        // Beyond usize (16-bit targets only) it cannot be there anyway.
        self.u32(field).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A count of items each taking at least `min_item_bytes`, refused
    /// unless that many bytes are left: a bad count never makes the caller
    /// allocate or loop more than the input justifies.
    pub fn count(&mut self, field: &'static str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.len(field)?;
        let needed = n.saturating_mul(min_item_bytes);
        if needed > self.rest.len() {
            return Err(self.error(Problem::Truncated {
                field,
                needed,
                left: self.rest.len(),
            }));
        }
        Ok(n)
    }

    /// Bytes written by [`Writer::bytes`].
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field)?;
        self.take(field, n)
    }

    /// A UTF-8 string written by [`Writer::bytes`].
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b).map_err(|_| self.error(Problem::NotUtf8 { field }))
    }

    /// Everything left (the last field of a record, written by [`Writer::raw`]).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Ends the record: anything left is an error.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.error(Problem::Trailing { len: self.rest.len() }))
        }
    }
}

/// Decodes a protobuf message stored as a record (unframed: protobuf frames
/// and evolves its own fields).
pub fn decode_protobuf<M: prost::Message + Default>(record: &'static str, bytes: &[u8]) -> Result<M, DecodeError> {
    M::decode(bytes).map_err(|e| DecodeError {
        record,
        problem: Problem::Protobuf(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Format = Format::new("test record", 3);

    #[test]
    fn what_is_written_reads_back() {
        let mut w = F.writer(0);
        w.u8(7);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.f64(-0.5);
        w.bytes(b"ab");
        w.len(2);
        w.bytes("é".as_bytes());
        w.raw(b"tail");
        let bytes = w.finish();
        let mut r = F.reader(&bytes).unwrap();
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u32("b"), Ok(0xdead_beef));
        assert_eq!(r.u64("c"), Ok(u64::MAX - 1));
        assert_eq!(r.f64("d"), Ok(-0.5));
        assert_eq!(r.bytes("e"), Ok(&b"ab"[..]));
        assert_eq!(r.count("f", 1), Ok(2));
        assert_eq!(r.str("g"), Ok("é"));
        assert_eq!(r.rest(), b"tail");
        assert!(r.is_empty());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn errors_name_the_record_and_the_field() {
        let err = |bytes: &[u8], read: fn(&mut Reader<'_>) -> Result<(), DecodeError>| {
            F.reader(bytes).and_then(|mut r| read(&mut r)).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[], |_| Ok(())),
            "corrupt test record: version is cut short: 1 bytes needed, 0 left"
        );
        assert_eq!(
            err(&[4], |_| Ok(())),
            "corrupt test record: version 4, but this build reads version 3"
        );
        assert_eq!(
            err(&[3, 1, 2], |r| r.u32("flags").map(drop)),
            "corrupt test record: flags is cut short: 4 bytes needed, 2 left"
        );
        assert_eq!(
            err(&[3, 9, 0, 0, 0, b'x'], |r| r.bytes("name").map(drop)),
            "corrupt test record: name is cut short: 9 bytes needed, 1 left"
        );
        assert_eq!(
            err(&[3, 1, 0, 0, 0, 0xff], |r| r.str("name").map(drop)),
            "corrupt test record: name is not UTF-8"
        );
        assert_eq!(
            err(&[3, 0xff, 0xff, 0xff, 0xff, 1, 2], |r| r.count("pairs", 2).map(drop)),
            "corrupt test record: pairs is cut short: 8589934590 bytes needed, 2 left"
        );
        let mut r = F.reader(&[3, 1, 2]).unwrap();
        r.u8("tag").unwrap();
        assert_eq!(
            r.finish().unwrap_err().to_string(),
            "corrupt test record: 1 bytes left over after the end of the record"
        );
        assert_eq!(
            F.reader_at_most(&[3, 0, 0], 2).unwrap_err().problem,
            Problem::TooLarge { len: 3, max: 2 }
        );
    }

    #[test]
    fn an_unfitting_length_is_written_as_one_that_never_decodes() {
        let mut w = Writer::unversioned(0);
        w.len(usize::MAX);
        assert_eq!(w.finish(), u32::MAX.to_le_bytes());
    }

    #[test]
    fn a_bad_protobuf_names_the_record() {
        let e = decode_protobuf::<moongate_proto::v1::Snapshot>("stored config snapshot", b"\xff\xff").unwrap_err();
        assert_eq!(e.record, "stored config snapshot");
        assert!(e.to_string().starts_with("corrupt stored config snapshot: "), "{e}");
    }
}
