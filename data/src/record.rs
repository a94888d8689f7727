//! The record a worker stores for each key: a version and either a value or a tombstone.
//!
//! Versions are given by chd and only grow, so "newest wins" is a plain comparison and a delete
//! (a tombstone with a higher version) can never be undone by an older value arriving late.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u64,
    /// `None` is a tombstone: the key was deleted at `version`.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

impl Record {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The stored form: 8 bytes of big-endian version, a tag byte, then the value's raw bytes.
    /// Hand-rolled rather than postcard so that a value is not copied through a serializer and
    /// so that the version can be read without decoding the value.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(9 + len);
        out.extend_from_slice(&self.version.to_be_bytes());
        match &self.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let version = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let value = match bytes.get(8)? {
            0 if bytes.len() == 9 => None,
            1 => Some(bytes[9..].to_vec()),
            _ => return None,
        };
        Some(Record { version, value })
    }

    /// The version of an encoded record, without copying its value.
    pub fn decode_version(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for r in [
            Record { version: 7, value: Some(b"hello".to_vec()) },
            Record { version: u64::MAX, value: Some(vec![]) },
            Record { version: 1, value: None },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
            assert_eq!(Record::decode_version(&r.encode()), Some(r.version));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Record::decode(b""), None);
        assert_eq!(Record::decode(&[0; 8]), None);
        assert_eq!(Record::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 9]), None);
        assert_eq!(Record::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 5]), None);
    }
}
