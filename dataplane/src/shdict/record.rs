//! The on-disk form of one durable dict entry (the value of a redb row whose
//! key is the dict key).
//!
//! Layout, little-endian: `[version u8][flags u32][expires u64][tag u8][payload]`.
//! `expires` is absolute Unix ms (0 = never), so a restart can tell what
//! expired while the process was down. Tags: 0 false, 1 true, 2 number (f64),
//! 3 string (the rest of the record), 4 list (items up to the end, each
//! `[2][f64]` or `[3][len u32][bytes]`).
//!
//! Decoding reads bytes from disk, so it never panics and never trusts a
//! length: anything malformed is `None`, and the caller drops that entry.

use std::collections::VecDeque;

use super::entries::Stored;
use super::{ListItem, Value};

/// Bumped when the layout changes; a record of another version is dropped.
const VERSION: u8 = 1;

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
    let mut out = Vec::with_capacity(16 + payload_hint(value));
    out.push(VERSION);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    match value {
        Stored::Scalar(Value::Bool(false)) => out.push(TAG_FALSE),
        Stored::Scalar(Value::Bool(true)) => out.push(TAG_TRUE),
        Stored::Scalar(Value::Number(n)) => {
            out.push(TAG_NUMBER);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Stored::Scalar(Value::Str(s)) => {
            out.push(TAG_STRING);
            out.extend_from_slice(s);
        }
        Stored::List(items) => {
            out.push(TAG_LIST);
            for item in items {
                match item {
                    ListItem::Number(n) => {
                        out.push(TAG_NUMBER);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    ListItem::Str(s) => {
                        out.push(TAG_STRING);
                        // List items come from Lua strings that fit in a dict,
                        // far below 4 GiB; saturate rather than wrap anyway.
                        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
                        out.extend_from_slice(s);
                    }
                }
            }
        }
    }
    out
}

pub(super) fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let flags = u32::from_le_bytes(r.array()?);
    let expires = u64::from_le_bytes(r.array()?);
    let value = match r.u8()? {
        TAG_FALSE if r.0.is_empty() => Stored::Scalar(Value::Bool(false)),
        TAG_TRUE if r.0.is_empty() => Stored::Scalar(Value::Bool(true)),
        TAG_NUMBER => {
            let n = f64::from_le_bytes(r.array()?);
            if !r.0.is_empty() {
                return None;
            }
            Stored::Scalar(Value::Number(n))
        }
        TAG_STRING => Stored::Scalar(Value::Str(r.0.to_vec())),
        TAG_LIST => {
            let mut items = VecDeque::new();
            while !r.0.is_empty() {
                items.push_back(match r.u8()? {
                    TAG_NUMBER => ListItem::Number(f64::from_le_bytes(r.array()?)),
                    TAG_STRING => {
                        let len = usize::try_from(u32::from_le_bytes(r.array()?)).ok()?;
                        ListItem::Str(r.take(len)?.to_vec())
                    }
                    _ => return None,
                });
            }
            // The dict deletes lists that become empty; an empty one on disk
            // is malformed.
            if items.is_empty() {
                return None;
            }
            Stored::List(items)
        }
        _ => return None,
    };
    Some(Record { value, flags, expires })
}

/// The fuzz target's property (`fuzz/`): a record that decodes encodes back
/// to the same bytes (the layout has one form per value).
#[cfg(feature = "fuzzing")]
pub fn check_roundtrip(bytes: &[u8]) {
    if let Some(r) = decode(bytes) {
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

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn malformed_records_are_rejected_without_panicking() {
        let good = encode(&Stored::List(VecDeque::from([ListItem::Str(b"abc".to_vec())])), 1, 2);
        // Every truncation of a list record is malformed (the version-only
        // and header-only prefixes included).
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_none(), "prefix of {n} bytes");
        }
        assert!(decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_none(), "version");
        let mut bad_tag = encode(&Stored::Scalar(Value::Bool(true)), 0, 0);
        bad_tag[13] = 77;
        assert!(decode(&bad_tag).is_none());
        let mut long_len = good.clone();
        long_len[15] = 0xff;
        assert!(decode(&long_len).is_none());
        assert!(decode(&encode(&Stored::List(VecDeque::new()), 0, 0)).is_none());
    }
}
