//! The wire format of rdask's protocols: length-prefixed postcard frames with a size limit.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. A frame
//! whose announced length is over the limit is refused before any of it is read, so an
//! oversized or hostile message costs the node nothing but a closed stream.
//!
//! Between nodes (`/rdask/node/1`) a [`PeerBatch`] travels as a frame holding its messages
//! with the values of [`PeerMsg::Data`] taken out, followed by those values raw: see
//! [`write_peer_batch`]. Values are not bound by the frame limit (results of hundreds of
//! MiB move between nodes) but each one by its own limit.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use rdask_actors::protocol::{LoadHint, PeerBatch, PeerMsg};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The client protocol's name.
pub const CLIENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/client/1");

/// The node-to-node protocol's name.
pub const NODE_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/node/1");

/// Default limit on one value sent between nodes: 8 GiB.
pub const DEFAULT_MAX_VALUE: u64 = 8 << 30;

/// Values are read in pieces of this size into their (exactly sized) buffer, so that a
/// header announcing a large value costs memory only as its bytes arrive.
const BODY_CHUNK: usize = 1 << 20;

/// One message of a session: a request or its response, matched by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the client, echoed by the node.
    pub id: u64,
    /// The request or response.
    pub body: T,
}

/// Default limit on one frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Reads one frame of at most `max` bytes and decodes it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> io::Result<T> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed {}: {e}", std::any::type_name::<T>()),
        )
    })
}

/// Encodes a value and writes it as one frame of at most `max` bytes, then flushes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    io: &mut W,
    value: &T,
    max: usize,
) -> io::Result<()> {
    write_frame_unflushed(io, value, max).await?;
    io.flush().await
}

/// Encodes a value and writes it as one frame of at most `max` bytes, without flushing (to
/// send several frames with one flush).
pub async fn write_frame_unflushed<T: Serialize, W: AsyncWrite + Unpin>(
    io: &mut W,
    value: &T,
    max: usize,
) -> io::Result<()> {
    let buf =
        encode_frame(value, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&buf).await
}

/// The frame of a [`PeerBatch`] on the wire: its messages with every `Data` value replaced
/// by an empty one, and the lengths of those values, which follow the frame raw, in order.
#[derive(Serialize, Deserialize)]
struct BatchHeader {
    load: LoadHint,
    msgs: Vec<PeerMsg>,
    bodies: Vec<u64>,
}

/// Takes the values out of the `Data` messages of `msgs`, leaving empty ones in their
/// place. A message whose value is over `max_value` is dropped (and reported in `dropped`).
fn take_bodies(msgs: &mut Vec<PeerMsg>, max_value: u64, dropped: &mut Vec<String>) -> Vec<Bytes> {
    let mut bodies = Vec::new();
    msgs.retain_mut(|m| {
        if let PeerMsg::Data {
            key,
            value: Some(v),
            ..
        } = m
        {
            if v.len() as u64 > max_value {
                dropped.push(format!(
                    "the value of {key} ({} bytes) is over the value limit of {max_value} bytes",
                    v.len()
                ));
                return false;
            }
            bodies.push(std::mem::take(v));
        }
        true
    });
    bodies
}

/// Writes a batch of messages for another node, without flushing:
///
/// 1. one frame (at most `max_frame` bytes, as [`write_frame_unflushed`]) of the batch's
///    load and messages, in which every `PeerMsg::Data { value: Some(v) }` carries an
///    empty `v`, and the list of the lengths of those values, in order;
/// 2. the values themselves, raw, in that order, written straight from their buffers.
///
/// A `Data` message whose value is over `max_value` is dropped (the receiver would refuse
/// it); a batch whose messages do not fit in one frame is split in two, recursively, and a
/// single message that does not fit is dropped. What was dropped is returned, for the log.
pub async fn write_peer_batch<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: PeerBatch,
    max_frame: usize,
    max_value: u64,
) -> Result<Vec<String>, io::Error> {
    let mut dropped = Vec::new();
    let PeerBatch { load, mut msgs } = batch;
    let bodies = take_bodies(&mut msgs, max_value, &mut dropped);
    // Frames to write: (messages, their bodies); split while a frame is too large.
    let mut parts = vec![(msgs, bodies)];
    while let Some((msgs, bodies)) = parts.pop() {
        if msgs.is_empty() {
            continue;
        }
        let header = BatchHeader {
            load,
            bodies: bodies.iter().map(|b| b.len() as u64).collect(),
            msgs,
        };
        match encode_frame(&header, max_frame) {
            Ok(frame) => {
                io.write_all(&frame).await?;
                for b in &bodies {
                    io.write_all(b).await?;
                }
            }
            Err(reason) => {
                let BatchHeader { mut msgs, .. } = header;
                if msgs.len() == 1 {
                    dropped.push(format!("a {} message: {reason}", kind(&msgs[0])));
                    continue;
                }
                // Split the messages, and their bodies with them.
                let tail = msgs.split_off(msgs.len() / 2);
                let head_bodies = msgs.iter().filter(|m| has_body(m)).count();
                let mut bodies = bodies;
                let tail_bodies = bodies.split_off(head_bodies);
                // `parts` is a stack: push the tail first so that the head is written first.
                parts.push((tail, tail_bodies));
                parts.push((msgs, bodies));
            }
        }
    }
    Ok(dropped)
}

fn has_body(m: &PeerMsg) -> bool {
    matches!(m, PeerMsg::Data { value: Some(_), .. })
}

fn kind(m: &PeerMsg) -> &'static str {
    match m {
        PeerMsg::Assign(_) => "Assign",
        PeerMsg::Stolen { .. } => "Stolen",
        PeerMsg::Release { .. } => "Release",
        PeerMsg::Data { .. } => "Data",
        // The others are small.
        _ => "peer",
    }
}

/// Encodes a value as one frame (length prefix included) of at most `max` bytes.
fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 4];
    buf = postcard::to_extend(value, buf).map_err(|e| e.to_string())?;
    let len = buf.len() - 4;
    if len > max || len > u32::MAX as usize {
        return Err(format!(
            "message of {len} bytes is over the frame limit of {max} bytes"
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads one batch written by [`write_peer_batch`]: its frame (at most `max_frame` bytes),
/// then its values, each into a buffer of exactly its size. A frame that is malformed, that
/// announces a value over `max_value`, or whose value lengths do not match its `Data`
/// messages is an [`io::ErrorKind::InvalidData`] error, returned before any value is read;
/// the stream cannot be read further after any error.
pub async fn read_peer_batch<R: AsyncRead + Unpin>(
    io: &mut R,
    max_frame: usize,
    max_value: u64,
) -> io::Result<PeerBatch> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    let header: BatchHeader = read_frame(io, max_frame).await?;
    let BatchHeader {
        load,
        mut msgs,
        bodies,
    } = header;
    let announced = msgs.iter().filter(|m| has_body(m)).count();
    if announced != bodies.len() {
        return Err(invalid(format!(
            "malformed batch: {announced} values announced by its messages, {} lengths",
            bodies.len()
        )));
    }
    for m in &msgs {
        if let PeerMsg::Data { value: Some(v), .. } = m
            && !v.is_empty()
        {
            return Err(invalid(
                "malformed batch: a value inside its frame instead of after it".into(),
            ));
        }
    }
    if let Some(len) = bodies.iter().find(|&&l| l > max_value) {
        return Err(invalid(format!(
            "a value of {len} bytes is over the value limit of {max_value} bytes"
        )));
    }
    let mut lens = bodies.into_iter();
    for m in &mut msgs {
        if let PeerMsg::Data { value: Some(v), .. } = m {
            let len = lens.next().expect("counted above");
            *v = read_body(io, len).await?;
        }
    }
    Ok(PeerBatch { load, msgs })
}

/// Reads `len` bytes into a buffer of exactly that size, a piece at a time.
async fn read_body<R: AsyncRead + Unpin>(io: &mut R, len: u64) -> io::Result<Bytes> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot hold a value of {len} bytes"),
        )
    };
    let len = usize::try_from(len).map_err(|_| too_large())?;
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| too_large())?;
    while buf.len() < len {
        let start = buf.len();
        let end = len.min(start + BODY_CHUNK);
        buf.resize(end, 0);
        io.read_exact(&mut buf[start..end]).await?;
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use rdask_actors::protocol::ClientRequest;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip() {
        let req = ClientRequest::Gather {
            keys: vec!["inc-1".into()],
            wait_ms: 5,
        };
        let mut buf = Vec::new();
        block(write_frame(&mut buf, &req, 1024)).unwrap();
        let back: ClientRequest = block(read_frame(&mut Cursor::new(buf), 1024)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut buf = (u32::MAX).to_be_bytes().to_vec();
        buf.extend_from_slice(&[0; 16]);
        let err = block(read_frame::<ClientRequest, _>(&mut Cursor::new(buf), 1024)).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let big = ClientRequest::Release {
            keys: vec!["k".into(); 1000],
        };
        let err = block(write_frame(&mut Vec::new(), &big, 100)).unwrap_err();
        assert!(err.to_string().contains("frame limit"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut state = 0x1234_5678u64;
        for len in 0..200usize {
            let mut buf = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = block(read_frame::<ClientRequest, _>(
                &mut Cursor::new(buf),
                1 << 20,
            ));
        }
        let err = block(read_frame::<ClientRequest, _>(
            &mut Cursor::new(vec![0, 0]),
            1024,
        ));
        assert!(err.is_err());
    }

    fn data(key: &str, value: Option<Bytes>) -> PeerMsg {
        PeerMsg::Data {
            owner: rdask_gossip::NodeId("owner".into()),
            key: key.into(),
            value,
        }
    }

    fn batch(msgs: Vec<PeerMsg>) -> PeerBatch {
        PeerBatch {
            load: LoadHint {
                queued: 3,
                running: 2,
                nthreads: 4,
                paused: true,
            },
            msgs,
        }
    }

    #[test]
    fn batches_round_trip_with_their_values_after_the_frame() {
        let big = Bytes::from(vec![7u8; 3 * BODY_CHUNK + 5]);
        let sent = batch(vec![
            PeerMsg::Steal { want: 2 },
            data("a-1", Some(big.clone())),
            data("a-2", None),
            data("a-3", Some(Bytes::new())),
            data("a-4", Some(Bytes::from_static(b"four"))),
            PeerMsg::Steal { want: 5 },
        ]);
        let mut wire = Vec::new();
        let dropped = block(write_peer_batch(&mut wire, sent.clone(), 1024, 1 << 30)).unwrap();
        assert!(dropped.is_empty());
        // the frame is small: the values follow it
        assert!(wire.len() > big.len() && wire.len() < big.len() + 1024);
        let mut r = Cursor::new(wire);
        let back = block(read_peer_batch(&mut r, 1024, 1 << 30)).unwrap();
        assert_eq!(back, sent);
        // nothing left over
        assert!(block(read_peer_batch(&mut r, 1024, 1 << 30)).is_err());
    }

    #[test]
    fn a_batch_over_the_frame_limit_is_split_and_a_single_message_over_it_dropped() {
        let mut msgs: Vec<PeerMsg> = (0..200)
            .map(|i| data(&format!("k-{i}"), Some(Bytes::from(vec![i as u8; 100]))))
            .collect();
        // a message over the frame limit by itself (no value, a long key)
        msgs.push(data(&"x".repeat(400), None));
        let sent = batch(msgs);
        let mut wire = Vec::new();
        let dropped = block(write_peer_batch(&mut wire, sent.clone(), 256, 1 << 20)).unwrap();
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].contains("Data"), "{dropped:?}");
        let mut r = Cursor::new(wire);
        let mut got = Vec::new();
        while let Ok(b) = block(read_peer_batch(&mut r, 256, 1 << 20)) {
            assert_eq!(b.load, sent.load);
            got.extend(b.msgs);
        }
        assert_eq!(got, sent.msgs[..200].to_vec());
    }

    #[test]
    fn values_over_the_value_limit_are_not_sent_and_refused_when_received() {
        let sent = batch(vec![
            data("small", Some(Bytes::from_static(b"ok"))),
            data("large", Some(Bytes::from(vec![1u8; 100]))),
        ]);
        let mut wire = Vec::new();
        let dropped = block(write_peer_batch(&mut wire, sent.clone(), 1024, 10)).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].contains("large"), "{dropped:?}");
        let back = block(read_peer_batch(&mut Cursor::new(wire), 1024, 10)).unwrap();
        assert_eq!(back.msgs, sent.msgs[..1].to_vec());

        // a receiver with a lower limit refuses the batch before reading the value
        let mut wire = Vec::new();
        block(write_peer_batch(&mut wire, sent, 1024, 1000)).unwrap();
        let err = block(read_peer_batch(&mut Cursor::new(wire), 1024, 50)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("value limit"), "{err}");
    }

    fn raw(header: &BatchHeader, tail: &[u8]) -> Vec<u8> {
        let mut wire = encode_frame(header, 1 << 20).unwrap();
        wire.extend_from_slice(tail);
        wire
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        let load = LoadHint::default();
        let cases = [
            // more lengths than values
            BatchHeader {
                load,
                msgs: vec![data("a", Some(Bytes::new()))],
                bodies: vec![1, 2],
            },
            // fewer lengths than values
            BatchHeader {
                load,
                msgs: vec![data("a", Some(Bytes::new())), data("b", Some(Bytes::new()))],
                bodies: vec![1],
            },
            // a value inside the frame
            BatchHeader {
                load,
                msgs: vec![data("a", Some(Bytes::from_static(b"x")))],
                bodies: vec![1],
            },
            // a length no machine can hold
            BatchHeader {
                load,
                msgs: vec![data("a", Some(Bytes::new()))],
                bodies: vec![u64::MAX],
            },
        ];
        for h in &cases {
            let err = block(read_peer_batch(
                &mut Cursor::new(raw(h, b"xyz")),
                1 << 20,
                u64::MAX,
            ))
            .unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::OutOfMemory
                ),
                "{err}"
            );
        }
        // a value cut short
        let h = BatchHeader {
            load,
            msgs: vec![data("a", Some(Bytes::new()))],
            bodies: vec![10],
        };
        let err = block(read_peer_batch(
            &mut Cursor::new(raw(&h, b"abc")),
            1 << 20,
            100,
        ))
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // garbage
        let mut state = 0x9e37_79b9u64;
        for len in 0..300usize {
            let mut buf = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len + 64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = block(read_peer_batch(&mut Cursor::new(buf), 1 << 20, 1 << 20));
        }
    }
}
