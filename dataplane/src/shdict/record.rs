//! The on-disk form of one durable dict entry (the value of a redb row whose
//! key is the dict key), written with the shared framing of
//! `redb_file::codec`.
//!
//! Layout, little-endian: `[version u8][flags u32][expires u64][tag u8][payload]`.
//! `expires` is absolute Unix ms (0 = never), so a restart can tell what
//! expired while the process was down. Tags: 0 false, 1 true, 2 number (f64),
//! 3 string (the rest of the record), 4 list (items up to the end, each
//! `[2][f64]` or `[3][len u32][bytes]`).
//!
//! Decoding reads bytes from disk, so it never panics and never trusts a
//! length: anything malformed is a `DecodeError` saying what is wrong, and
//! the caller drops that entry.

use std::collections::VecDeque;

use super::entries::Stored;
use super::{ListItem, Value};
use crate::redb_file::codec::{DecodeError, Format};

/// Bumped when the layout changes; a record of another version is dropped.
const FORMAT: Format = Format::new("durable shared dict entry", 1);

const TAG_FALSE: u8 = 0;
const TAG_TRUE: u8 = 1;
const TAG_NUMBER: u8 = 2;
const TAG_STRING: u8 = 3;
const TAG_LIST: u8 = 4;

/// An entry as decoded from disk.
#[derive(Debug)]
pub(super) struct Record {
    pub value: Stored,
    pub flags: u32,
    pub expires: u64,
}

pub(super) fn encode(value: &Stored, flags: u32, expires: u64) -> Vec<u8> {
    let mut w = FORMAT.writer(15 + payload_hint(value));
    w.u32(flags);
    w.u64(expires);
    match value {
        Stored::Scalar(Value::Bool(false)) => w.u8(TAG_FALSE),
        Stored::Scalar(Value::Bool(true)) => w.u8(TAG_TRUE),
        Stored::Scalar(Value::Number(n)) => {
            w.u8(TAG_NUMBER);
            w.f64(*n);
        }
        Stored::Scalar(Value::Str(s)) => {
            w.u8(TAG_STRING);
            w.raw(s);
        }
        Stored::List(items) => {
            w.u8(TAG_LIST);
            for item in items {
                match item {
                    ListItem::Number(n) => {
                        w.u8(TAG_NUMBER);
                        w.f64(*n);
                    }
                    ListItem::Str(s) => {
                        // List items come from Lua strings that fit in a
                        // dict, far below 4 GiB.
                        w.u8(TAG_STRING);
                        w.bytes(s);
                    }
                }
            }
        }
    }
    w.finish()
}

pub(super) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = FORMAT.reader(bytes)?;
    let flags = r.u32("flags")?;
    let expires = r.u64("expiry time")?;
    let value = match r.u8("value tag")? {
        TAG_FALSE => Stored::Scalar(Value::Bool(false)),
        TAG_TRUE => Stored::Scalar(Value::Bool(true)),
        TAG_NUMBER => Stored::Scalar(Value::Number(r.f64("number")?)),
        TAG_STRING => Stored::Scalar(Value::Str(r.rest().to_vec())),
        TAG_LIST => {
            let mut items = VecDeque::new();
            while !r.is_empty() {
                items.push_back(match r.u8("list item tag")? {
                    TAG_NUMBER => ListItem::Number(r.f64("list item number")?),
                    TAG_STRING => ListItem::Str(r.bytes("list item string")?.to_vec()),
                    tag => return Err(r.bad_tag("list item tag", tag)),
                });
            }
            // The dict deletes lists that become empty; an empty one on disk
            // is malformed.
            if items.is_empty() {
                return Err(r.invalid("list", "empty (the dict never stores an empty list)"));
            }
            Stored::List(items)
        }
        tag => return Err(r.bad_tag("value tag", tag)),
    };
    r.finish()?;
    Ok(Record { value, flags, expires })
}

/// The fuzz target's property (`fuzz/`): a record that decodes encodes back
/// to the same bytes (the layout has one form per value).
#[cfg(feature = "fuzzing")]
pub fn check_roundtrip(bytes: &[u8]) {
    if let Ok(r) = decode(bytes) {
        assert_eq!(
            encode(&r.value, r.flags, r.expires),
            bytes,
            "a decoded record encodes differently"
        );
    }
}

fn payload_hint(value: &Stored) -> usize {
    match value {
        Stored::Scalar(Value::Str(s)) => s.len(),
        Stored::Scalar(_) => 8,
        Stored::List(items) => items.len() * 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb_file::codec::Problem;

    fn roundtrip(value: Stored) {
        let bytes = encode(&value, 0xdead_beef, 1_700_000_000_123);
        let rec = decode(&bytes).expect("decodes");
        assert_eq!(rec.flags, 0xdead_beef);
        assert_eq!(rec.expires, 1_700_000_000_123);
        assert_eq!(format!("{:?}", rec.value), format!("{value:?}"));
    }

    #[test]
    fn every_value_type_roundtrips() {
        roundtrip(Stored::Scalar(Value::Bool(false)));
        roundtrip(Stored::Scalar(Value::Bool(true)));
        roundtrip(Stored::Scalar(Value::Number(-0.5)));
        roundtrip(Stored::Scalar(Value::Str(Vec::new())));
        roundtrip(Stored::Scalar(Value::Str(vec![0, 255, 3])));
        roundtrip(Stored::List(VecDeque::from([
            ListItem::Str(b"a".to_vec()),
            ListItem::Number(7.0),
            ListItem::Str(Vec::new()),
        ])));
    }

    /// The bytes every release has written: a change here breaks the files
    /// already on disk.
    #[test]
    fn the_layout_is_byte_for_byte_the_stored_one() {
        let head = |tag: u8| {
            let mut v = vec![1, 4, 3, 2, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11];
            v.push(tag);
            v
        };
        let (flags, expires) = (0x0102_0304, 0x1122_3344_5566_7788);
        let cases: Vec<(Stored, Vec<u8>)> = vec![
            (Stored::Scalar(Value::Bool(false)), head(0)),
            (Stored::Scalar(Value::Bool(true)), head(1)),
            (
                Stored::Scalar(Value::Number(1.0)),
                [head(2), 1.0f64.to_le_bytes().to_vec()].concat(),
            ),
            (
                Stored::Scalar(Value::Str(b"hi".to_vec())),
                [head(3), b"hi".to_vec()].concat(),
            ),
            (
                Stored::List(VecDeque::from([ListItem::Str(b"ab".to_vec()), ListItem::Number(-2.5)])),
                [
                    head(4),
                    vec![3, 2, 0, 0, 0, b'a', b'b', 2],
                    (-2.5f64).to_le_bytes().to_vec(),
                ]
                .concat(),
            ),
        ];
        for (value, bytes) in cases {
            assert_eq!(encode(&value, flags, expires), bytes, "{value:?}");
            let rec = decode(&bytes).expect("decodes");
            assert_eq!((rec.flags, rec.expires), (flags, expires));
            assert_eq!(format!("{:?}", rec.value), format!("{value:?}"));
        }
    }

    #[test]
    fn malformed_records_are_rejected_without_panicking() {
        let problem = |bytes: &[u8]| decode(bytes).expect_err("malformed").problem;
        let good = encode(&Stored::List(VecDeque::from([ListItem::Str(b"abc".to_vec())])), 1, 2);
        // Every truncation of a list record is malformed (the version-only
        // and header-only prefixes included).
        for n in 0..good.len() {
            assert!(
                matches!(problem(&good[..n]), Problem::Truncated { .. } | Problem::Invalid { .. }),
                "prefix of {n} bytes"
            );
        }
        assert_eq!(
            problem(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Problem::Version { found: 9, expected: 1 }
        );
        let mut bad_tag = encode(&Stored::Scalar(Value::Bool(true)), 0, 0);
        bad_tag[13] = 77;
        assert_eq!(
            problem(&bad_tag),
            Problem::Tag {
                field: "value tag",
                tag: 77
            }
        );
        let mut long_len = good.clone();
        long_len[15] = 0xff;
        assert!(matches!(
            problem(&long_len),
            Problem::Truncated {
                field: "list item string",
                ..
            }
        ));
        assert!(matches!(
            problem(&encode(&Stored::List(VecDeque::new()), 0, 0)),
            Problem::Invalid { field: "list", .. }
        ));
        let trailing = [encode(&Stored::Scalar(Value::Number(1.0)), 0, 0), vec![0]].concat();
        assert_eq!(problem(&trailing), Problem::Trailing { len: 1 });
        let err = decode(&bad_tag).unwrap_err().to_string();
        assert_eq!(err, "corrupt durable shared dict entry: unknown value tag 77");
    }
}
