use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The name of a task and of its result: `prefix-suffix`, e.g. `inc-3f9a0c1d2e4b5a69`.
///
/// The prefix (everything before the last `-`, or the whole key when it has none) groups
/// tasks of the same kind in progress displays, as Dask's key prefixes do. Keys are cheap to
/// clone (a shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(Arc<str>);

impl Key {
    /// A key `prefix-<16 hex digits of hash>`.
    ///
    /// Made for every task a client submits, so written without `format!`: the digits go
    /// into a buffer on the stack and the key is allocated once (a formatted `String`
    /// turned into a shared string costs two allocations and ~1,700 instructions).
    pub fn with_hash(prefix: &str, hash: u64) -> Key {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut tail = [0u8; 17];
        tail[0] = b'-';
        for (i, d) in tail[1..].iter_mut().enumerate() {
            *d = DIGITS[((hash >> (60 - 4 * i)) & 0xf) as usize];
        }
        let tail = std::str::from_utf8(&tail).expect("ASCII");
        const INLINE: usize = 96;
        if prefix.len() + tail.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            let n = prefix.len();
            buf[..n].copy_from_slice(prefix.as_bytes());
            buf[n..n + tail.len()].copy_from_slice(tail.as_bytes());
            // A prefix (valid UTF-8) followed by ASCII.
            let text = std::str::from_utf8(&buf[..n + tail.len()]).expect("UTF-8");
            Key(Arc::from(text))
        } else {
            let mut text = String::with_capacity(prefix.len() + tail.len());
            text.push_str(prefix);
            text.push_str(tail);
            Key(Arc::from(text))
        }
    }

    /// The whole key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix that groups this key with others of its kind: the part before the last
    /// `-`, or the whole key when it has none.
    pub fn prefix(&self) -> &str {
        // A plain backwards scan: keys are short, and the dash is usually 17 bytes from
        // the end, where `rfind`'s general search costs more than it saves.
        match self.0.bytes().rposition(|b| b == b'-') {
            Some(0) | None => &self.0,
            Some(i) => &self.0[..i],
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key(Arc::from(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(Arc::from(s))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

/// The identity of a submitted graph, chosen by the client so that a resubmission of the
/// same graph is recognised.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GraphId(pub u128);

impl fmt::Display for GraphId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for GraphId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GraphId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_part_before_the_last_dash() {
        assert_eq!(Key::with_hash("inc", 7).prefix(), "inc");
        assert_eq!(Key::with_hash("inc", 7).as_str(), "inc-0000000000000007");
        for (prefix, hash) in [("inc", u64::MAX), ("", 0x0123_4567_89ab_cdef), ("é-ü", 42)] {
            assert_eq!(
                Key::with_hash(prefix, hash).as_str(),
                format!("{prefix}-{hash:016x}")
            );
        }
        let long = "p".repeat(200);
        assert_eq!(
            Key::with_hash(&long, 1).as_str(),
            format!("{long}-{:016x}", 1)
        );
        assert_eq!(Key::from("read-csv-12").prefix(), "read-csv");
        assert_eq!(Key::from("single").prefix(), "single");
        assert_eq!(Key::from("-x").prefix(), "-x");
    }

    #[test]
    fn keys_round_trip_through_postcard_as_strings() {
        let k = Key::from("sum-42");
        let bytes = postcard::to_allocvec(&k).unwrap();
        assert_eq!(postcard::from_bytes::<Key>(&bytes).unwrap(), k);
        let s: String = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(s, "sum-42");
    }
}
