//! Values detached from their message: large byte values travel beside a frame, not in it.
//!
//! A message (a client's submission, a node's reply, a batch between nodes) may carry
//! values of any size: scattered data, task results, task arguments. Inside a frame they
//! would be bound by the frame limit and copied into it. Fields of values are marked
//! `#[serde(with = "rdask_graph::detached")]` (or [`option`] for an `Option<Bytes>`):
//!
//! - encoded plainly (the usual postcard of bytes) by every ordinary encoding: hashing,
//!   replicas, values stored by the simulator;
//! - encoded by [`encode`], a value of at least the threshold is left out of the message
//!   and pushed to a list, in order, and a small marker takes its place; smaller values
//!   stay inline. The writer sends the message, then the listed values raw, each from its
//!   own buffer (never copied into a frame).
//! - decoded by [`decode`] with the values that followed the message, in the same order.
//!
//! The two modes differ in the message's bytes, so a message encoded by [`encode`] must be
//! decoded by [`decode`]; the protocols that use it do so for every message.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bounded::{self, DecodeError, Limits};

/// Values of at least this many bytes are detached by [`encode`]: below it, a value costs
/// less inline than as a write of its own.
pub const THRESHOLD: usize = 4 << 10;

struct Sink {
    threshold: usize,
    out: Vec<Bytes>,
}

thread_local! {
    /// Set while [`encode`] runs on this thread.
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
    /// Set while [`decode`] runs on this thread.
    static SOURCE: RefCell<Option<VecDeque<Bytes>>> = const { RefCell::new(None) };
}

/// Encodes `msg` with its values of at least `threshold` bytes detached: returns the
/// message's bytes and the detached values, in the order the decoder wants them.
pub fn encode<T: Serialize + ?Sized>(
    msg: &T,
    threshold: usize,
) -> Result<(Vec<u8>, Vec<Bytes>), postcard::Error> {
    let _guard = Guard::sink(threshold);
    let bytes = postcard::to_allocvec(msg)?;
    let values = SINK.with(|s| s.borrow_mut().take().map(|s| s.out).unwrap_or_default());
    Ok((bytes, values))
}

/// Decodes a message written by [`encode`] within `limits`, given the values that were
/// detached from it. Every value must be used: a value left over, or one missing, is an
/// error.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    values: Vec<Bytes>,
    limits: Limits,
) -> Result<T, DetachedError> {
    let _guard = Guard::source(values);
    let msg = bounded::decode(bytes, limits);
    let left = SOURCE.with(|s| s.borrow_mut().take().map_or(0, |v| v.len()));
    let msg = msg.map_err(|e| match e {
        DecodeError::Codec(postcard::Error::SerdeDeCustom)
            if MISSING.with(|m| m.replace(false)) =>
        {
            DetachedError::Missing
        }
        e => DetachedError::Decode(e),
    })?;
    match left {
        0 => Ok(msg),
        n => Err(DetachedError::LeftOver(n)),
    }
}

thread_local! {
    static MISSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Why a message with detached values could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DetachedError {
    /// The message's own bytes.
    #[error("{0}")]
    Decode(DecodeError),
    /// The message names more detached values than came with it.
    #[error("a detached value is missing")]
    Missing,
    /// Values came with the message that it does not name.
    #[error("{0} detached values left over")]
    LeftOver(usize),
}

/// Sets the sink or the source for the current thread, and clears it when dropped (also
/// on a panic inside a `Serialize` or `Deserialize` impl).
struct Guard;

impl Guard {
    fn sink(threshold: usize) -> Guard {
        SINK.with(|s| {
            *s.borrow_mut() = Some(Sink {
                threshold,
                out: Vec::new(),
            })
        });
        Guard
    }

    fn source(values: Vec<Bytes>) -> Guard {
        SOURCE.with(|s| *s.borrow_mut() = Some(values.into()));
        MISSING.with(|m| m.set(false));
        Guard
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        SINK.with(|s| s.borrow_mut().take());
        SOURCE.with(|s| s.borrow_mut().take());
    }
}

/// Bytes written as bytes (serde writes a `&[u8]` as a sequence otherwise).
struct Inline<'a>(&'a [u8]);

impl Serialize for Inline<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Serializes a value field: plainly, or (inside [`encode`]) as `None` for a detached value
/// and `Some(bytes)` for an inline one.
pub fn serialize<S: Serializer>(value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    let detach = SINK.with(|sink| {
        sink.borrow_mut().as_mut().map(|sink| {
            let detach = value.len() >= sink.threshold;
            if detach {
                sink.out.push(value.clone());
            }
            detach
        })
    });
    match detach {
        None => s.serialize_bytes(value),
        Some(true) => s.serialize_none(),
        Some(false) => s.serialize_some(&Inline(value)),
    }
}

/// Deserializes a value field written by [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let detached_mode = SOURCE.with(|s| s.borrow().is_some());
    if !detached_mode {
        return Bytes::deserialize(d);
    }
    match Option::<Bytes>::deserialize(d)? {
        Some(inline) => Ok(inline),
        None => SOURCE
            .with(|s| s.borrow_mut().as_mut().and_then(VecDeque::pop_front))
            .ok_or_else(|| {
                MISSING.with(|m| m.set(true));
                serde::de::Error::custom("a detached value is missing")
            }),
    }
}

/// The same for an `Option<Bytes>` field.
pub mod option {
    use super::*;

    /// Serializes an optional value field (see [`super::serialize`]).
    pub fn serialize<S: Serializer>(value: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(v) => s.serialize_some(&Field(v)),
        }
    }

    /// Deserializes an optional value field written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        Option::<FieldOwned>::deserialize(d).map(|o| o.map(|f| f.0))
    }

    struct Field<'a>(&'a Bytes);

    impl Serialize for Field<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, s)
        }
    }

    struct FieldOwned(Bytes);

    impl<'de> Deserialize<'de> for FieldOwned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d).map(FieldOwned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Value(#[serde(with = "crate::detached")] Bytes),
        Data {
            key: String,
            #[serde(with = "crate::detached::option")]
            value: Option<Bytes>,
        },
        Many(Vec<Msg>),
    }

    fn bytes(n: usize, b: u8) -> Bytes {
        Bytes::from(vec![b; n])
    }

    #[test]
    fn large_values_are_detached_in_order_and_come_back() {
        let msg = Msg::Many(vec![
            Msg::Value(bytes(10, 1)),
            Msg::Value(bytes(5000, 2)),
            Msg::Data {
                key: "k".into(),
                value: None,
            },
            Msg::Data {
                key: "l".into(),
                value: Some(bytes(9000, 3)),
            },
            Msg::Data {
                key: "m".into(),
                value: Some(bytes(3, 4)),
            },
        ]);
        let (wire, values) = encode(&msg, THRESHOLD).unwrap();
        assert_eq!(values, vec![bytes(5000, 2), bytes(9000, 3)]);
        assert!(wire.len() < 100, "{}", wire.len());
        let back: Msg = decode(&wire, values.clone(), Limits::for_message(wire.len())).unwrap();
        assert_eq!(back, msg);
        // Plain encoding is postcard's usual one, and unaffected.
        let plain = postcard::to_allocvec(&msg).unwrap();
        assert!(plain.len() > 14_000);
        assert_eq!(postcard::from_bytes::<Msg>(&plain).unwrap(), msg);
        // Missing and extra values are errors.
        let err = decode::<Msg>(&wire, values[..1].to_vec(), Limits::for_message(100));
        assert_eq!(err.unwrap_err(), DetachedError::Missing);
        let mut more = values.clone();
        more.push(bytes(1, 1));
        let err = decode::<Msg>(&wire, more, Limits::for_message(100));
        assert_eq!(err.unwrap_err(), DetachedError::LeftOver(1));
        // The thread is back to plain encoding afterwards.
        assert_eq!(postcard::to_allocvec(&msg).unwrap(), plain);
    }
}
