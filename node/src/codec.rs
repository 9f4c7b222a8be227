//! The wire format of rdask's protocols: length-prefixed postcard frames with a size limit.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. A frame
//! whose announced length is over the limit is refused before any of it is read, so an
//! oversized or hostile message costs the node nothing but a closed stream.
//!
//! Messages of the client protocol and of the node protocol may carry values of any size
//! (scattered data, arguments, results). They travel as *messages* ([`encode_message`],
//! [`read_message`]): a frame of the message in which every value of at least
//! [`rdask_graph::detached::THRESHOLD`] bytes is left out (see [`rdask_graph::detached`]);
//! when values were left out, the top bit of the frame's length is set and a second frame
//! follows with their lengths, then the values themselves, raw, each written straight from
//! its buffer and read into a buffer that grows as its bytes arrive. Values are not bound
//! by the frame limit but each by the value limit (`--max-value-bytes`). A message with no
//! values left out is a plain frame, so a peer of another version still reads a `Hello`
//! and its refusal.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use rdask_actors::protocol::{PeerBatch, PeerMsg};
use rdask_graph::bounded::{self, Limits};
use rdask_graph::detached;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The client protocol's name.
pub const CLIENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/client/1");

/// The node-to-node protocol's name.
pub const NODE_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/node/1");

/// Default limit on one value sent between nodes: 8 GiB.
pub const DEFAULT_MAX_VALUE: u64 = rdask_graph::registry::DEFAULT_MAX_VALUE;

/// The first piece of a frame or value read before its buffer grows (doubling with what
/// arrived), so that a header announcing a large value costs memory only as its bytes
/// arrive.
const FIRST_CHUNK: usize = 64 << 10;

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
    let buf = read_growing(io, len).await?;
    decode_message(&buf)
}

/// Decodes a message of a protocol (a frame's bytes) within the bounds of
/// [`Limits::for_message`]: no recursion or element count that the bytes do not pay for.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    bounded::decode(bytes, Limits::for_message(bytes.len())).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed {}: {e}", std::any::type_name::<T>()),
        )
    })
}

/// Reads exactly `len` bytes into a buffer that grows with the bytes received (it at most
/// doubles what has arrived), never from the announced length alone: a header announcing
/// gigabytes costs memory only as they come.
async fn read_growing<R: AsyncRead + Unpin>(io: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len.min(FIRST_CHUNK)];
    let mut filled = 0;
    loop {
        io.read_exact(&mut buf[filled..]).await?;
        filled = buf.len();
        if filled == len {
            return Ok(buf);
        }
        // A zeroed buffer twice the size (or the rest), the bytes so far copied in: zeroed
        // memory comes from the allocator as fresh pages, not written a byte at a time.
        let mut bigger = vec![0u8; len.min(filled * 2)];
        bigger[..filled].copy_from_slice(&buf);
        buf = bigger;
    }
}

/// Encodes a value and writes it as one frame of at most `max` bytes, then flushes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    io: &mut W,
    value: &T,
    max: usize,
) -> io::Result<()> {
    let buf =
        encode_frame(value, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&buf).await?;
    io.flush().await
}

/// Set in a frame's length when detached values follow the frame.
const HAS_VALUES: u32 = 1 << 31;

/// Why a message cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Its frame (without the values that travel beside it) is over the frame limit.
    #[error(
        "a message of {len} bytes (without its values) is over the frame limit of {max} bytes \
         (--max-frame-bytes)"
    )]
    FrameTooLarge {
        /// The frame's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One of its values is over the value limit.
    #[error("a value of {len} bytes is over the value limit of {max} bytes (--max-value-bytes)")]
    ValueTooLarge {
        /// The value's size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The codec refused it.
    #[error("cannot encode a message: {0}")]
    Codec(String),
}

/// A message ready to be written: its frames and the values that follow them.
#[derive(Clone, Debug)]
pub struct Encoded {
    frames: Vec<u8>,
    values: Vec<Bytes>,
}

impl Encoded {
    /// Bytes it takes on the wire.
    pub fn wire_len(&self) -> u64 {
        self.frames.len() as u64 + self.values.iter().map(|v| v.len() as u64).sum::<u64>()
    }

    /// Writes it, without flushing.
    pub async fn write<W: AsyncWrite + Unpin>(&self, io: &mut W) -> io::Result<()> {
        io.write_all(&self.frames).await?;
        for v in &self.values {
            io.write_all(v).await?;
        }
        Ok(())
    }
}

/// Encodes a message of the client or node protocol: its values of
/// [`rdask_graph::detached::THRESHOLD`] bytes or more travel beside the frame, each at most
/// `max_value` bytes; the frame at most `max_frame` bytes.
pub fn encode_message<T: Serialize>(
    msg: &T,
    max_frame: usize,
    max_value: u64,
) -> Result<Encoded, EncodeError> {
    let encode =
        |threshold| detached::encode(msg, threshold).map_err(|e| EncodeError::Codec(e.to_string()));
    let (mut body, mut values) = encode(detached::THRESHOLD)?;
    if body.len() > max_frame {
        // Many small values may be what makes the frame large: detach them all.
        (body, values) = encode(1)?;
    }
    if let Some(v) = values.iter().find(|v| v.len() as u64 > max_value) {
        return Err(EncodeError::ValueTooLarge {
            len: v.len() as u64,
            max: max_value,
        });
    }
    let too_large = |len: usize| EncodeError::FrameTooLarge {
        len,
        max: max_frame,
    };
    if body.len() > max_frame || body.len() >= HAS_VALUES as usize {
        return Err(too_large(body.len()));
    }
    let mut frames = Vec::with_capacity(body.len() + 8 + values.len() * 5);
    let mut len = body.len() as u32;
    if !values.is_empty() {
        len |= HAS_VALUES;
    }
    frames.extend_from_slice(&len.to_be_bytes());
    frames.extend_from_slice(&body);
    if !values.is_empty() {
        let lens: Vec<u64> = values.iter().map(|v| v.len() as u64).collect();
        let at = frames.len();
        frames.extend_from_slice(&[0; 4]);
        frames =
            postcard::to_extend(&lens, frames).map_err(|e| EncodeError::Codec(e.to_string()))?;
        let lens_len = frames.len() - at - 4;
        if lens_len > max_frame {
            return Err(too_large(lens_len));
        }
        frames[at..at + 4].copy_from_slice(&(lens_len as u32).to_be_bytes());
    }
    Ok(Encoded { frames, values })
}

/// Reads one message written as [`encode_message`] writes it: a frame of at most
/// `max_frame` bytes, and the values beside it, each at most `max_value` bytes (refused
/// before any of its bytes is read). Decoding is bounded ([`Limits::for_message`]); every
/// error is an [`io::ErrorKind::InvalidData`] (or the reader's own), after which the stream
/// cannot be read further.
pub async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    max_frame: usize,
    max_value: u64,
) -> io::Result<T> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    let has_values = len & HAS_VALUES != 0;
    let len = (len & !HAS_VALUES) as usize;
    if len > max_frame {
        return Err(invalid(format!(
            "frame of {len} bytes is over the limit of {max_frame} bytes"
        )));
    }
    let body = read_growing(io, len).await?;
    let mut values = Vec::new();
    if has_values {
        let lens: Vec<u64> = read_frame(io, max_frame).await?;
        if let Some(big) = lens.iter().find(|&&l| l > max_value) {
            return Err(invalid(format!(
                "a value of {big} bytes is over the value limit of {max_value} bytes"
            )));
        }
        for len in lens {
            values.push(read_body(io, len).await?);
        }
    }
    detached::decode(&body, values, Limits::for_message(body.len()))
        .map_err(|e| invalid(format!("malformed {}: {e}", std::any::type_name::<T>())))
}

/// Writes a batch of messages for another node, without flushing, as messages
/// ([`encode_message`]): values beside the frame. A batch whose messages do not fit in one
/// frame, or that carries a value over `max_value`, is split in two, recursively; a single
/// message that does not fit, or carries such a value, is dropped (the receiver would
/// refuse it). What was dropped is returned, for the log.
pub async fn write_peer_batch<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: PeerBatch,
    max_frame: usize,
    max_value: u64,
) -> Result<Vec<String>, io::Error> {
    let mut dropped = Vec::new();
    let PeerBatch { load, msgs } = batch;
    // Batches to write; split while one cannot be sent whole. A stack: the head of a split
    // batch is pushed last, so it is written first.
    let mut parts = vec![msgs];
    while let Some(msgs) = parts.pop() {
        if msgs.is_empty() {
            continue;
        }
        let batch = PeerBatch { load, msgs };
        match encode_message(&batch, max_frame, max_value) {
            Ok(encoded) => encoded.write(io).await?,
            Err(reason) => {
                let PeerBatch { mut msgs, .. } = batch;
                if msgs.len() == 1 {
                    dropped.push(format!("{}: {reason}", describe(&msgs[0])));
                    continue;
                }
                let tail = msgs.split_off(msgs.len() / 2);
                parts.push(tail);
                parts.push(msgs);
            }
        }
    }
    Ok(dropped)
}

/// A message, for the log.
fn describe(m: &PeerMsg) -> String {
    match m {
        PeerMsg::Assign(a) => format!("the assignment of {}", a.key),
        PeerMsg::Stolen { .. } => "a Stolen message".into(),
        PeerMsg::Release { .. } => "a Release message".into(),
        PeerMsg::Data { key, .. } => format!("the value of {key}"),
        // The others are small.
        _ => "a peer message".into(),
    }
}

/// Encodes a value as one frame (length prefix included) of at most `max` bytes.
fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 4];
    buf = postcard::to_extend(value, buf).map_err(|e| e.to_string())?;
    let len = buf.len() - 4;
    if len > max || len >= HAS_VALUES as usize {
        return Err(format!(
            "message of {len} bytes is over the frame limit of {max} bytes"
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads one batch written by [`write_peer_batch`] (see [`read_message`]).
pub async fn read_peer_batch<R: AsyncRead + Unpin>(
    io: &mut R,
    max_frame: usize,
    max_value: u64,
) -> io::Result<PeerBatch> {
    read_message(io, max_frame, max_value).await
}

/// Reads a value of `len` bytes (see [`read_growing`]).
async fn read_body<R: AsyncRead + Unpin>(io: &mut R, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a value of {len} bytes is larger than this machine's address space"),
        )
    })?;
    read_growing(io, len).await.map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use rdask_actors::protocol::{ClientRequest, LoadHint};

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
    fn batches_round_trip_with_their_large_values_after_the_frame() {
        let big = Bytes::from(vec![7u8; 3 * FIRST_CHUNK + 5]);
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
        // the frame is small: the value follows it
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
        assert!(dropped[0].contains("xxx"), "{dropped:?}");
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
        let large = Bytes::from(vec![1u8; 10_000]);
        let sent = batch(vec![
            data("small", Some(Bytes::from_static(b"ok"))),
            data("large", Some(large)),
        ]);
        let mut wire = Vec::new();
        let dropped = block(write_peer_batch(&mut wire, sent.clone(), 1024, 5_000)).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(
            dropped[0].contains("large") && dropped[0].contains("--max-value-bytes"),
            "{dropped:?}"
        );
        let back = block(read_peer_batch(&mut Cursor::new(wire), 1024, 5_000)).unwrap();
        assert_eq!(back.msgs, sent.msgs[..1].to_vec());

        // a receiver with a lower limit refuses the message before reading the value
        let mut wire = Vec::new();
        block(write_peer_batch(&mut wire, sent, 1024, 1 << 20)).unwrap();
        let err = block(read_peer_batch(&mut Cursor::new(wire), 1024, 50)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("value limit"), "{err}");
    }

    /// A message's frame and a tail of value lengths and bytes, as a hostile writer makes it.
    fn raw(msg: &impl Serialize, lens: Option<&[u64]>, tail: &[u8]) -> Vec<u8> {
        let body = postcard::to_allocvec(msg).unwrap();
        let mut len = body.len() as u32;
        if lens.is_some() {
            len |= HAS_VALUES;
        }
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend(body);
        if let Some(lens) = lens {
            wire.extend(encode_frame(&lens.to_vec(), 1 << 20).unwrap());
        }
        wire.extend_from_slice(tail);
        wire
    }

    /// The detached form of a batch with one value (a marker in place of the value).
    fn with_marker() -> Vec<u8> {
        let (bytes, values) = detached::encode(
            &batch(vec![data("a", Some(Bytes::from(vec![0u8; 5000])))]),
            detached::THRESHOLD,
        )
        .unwrap();
        assert_eq!(values.len(), 1);
        bytes
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        struct Raw(Vec<u8>);
        impl Serialize for Raw {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(self.0.len())?;
                for b in &self.0 {
                    t.serialize_element(b)?;
                }
                t.end()
            }
        }
        let marker = Raw(with_marker());
        let cases: Vec<(Vec<u8>, io::ErrorKind)> = vec![
            // more values than markers
            (
                raw(&marker, Some(&[1, 2]), b"xyz"),
                io::ErrorKind::InvalidData,
            ),
            // fewer values than markers
            (raw(&marker, Some(&[]), b""), io::ErrorKind::InvalidData),
            // a marker and no values at all
            (raw(&marker, None, b""), io::ErrorKind::InvalidData),
            // a length no machine can hold: the stream ends before the buffer grows much
            (
                raw(&marker, Some(&[u64::MAX]), b"xyz"),
                io::ErrorKind::UnexpectedEof,
            ),
            // a value cut short
            (
                raw(&marker, Some(&[10]), b"abc"),
                io::ErrorKind::UnexpectedEof,
            ),
        ];
        for (wire, kind) in cases {
            let err =
                block(read_peer_batch(&mut Cursor::new(wire), 1 << 20, u64::MAX)).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
        }
        // garbage
        let mut state = 0x9e37_79b9u64;
        for len in 0..300usize {
            let mut buf = ((len as u32) | if len % 2 == 0 { HAS_VALUES } else { 0 })
                .to_be_bytes()
                .to_vec();
            for _ in 0..len + 64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = block(read_peer_batch(&mut Cursor::new(buf), 1 << 20, 1 << 20));
            let _ = block(read_message::<Envelope<ClientRequest>, _>(
                &mut Cursor::new(Vec::new()),
                1 << 20,
                1 << 20,
            ));
        }
    }

    /// A frame of 10,000 nested `Forward`s (30 KB, the encoding a recursive request type
    /// had) decoded on a thread with a 2 MiB stack: an error, not an abort.
    #[test]
    fn deeply_nested_frames_are_errors_on_a_small_stack() {
        let mut body = vec![1u8]; // Envelope.id = 1
        for _ in 0..10_000 {
            body.extend_from_slice(&[18, 0]); // Forward { owner: "", request: …
        }
        body.push(4);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend(body);
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                block(read_message::<Envelope<ClientRequest>, _>(
                    &mut Cursor::new(frame),
                    64 << 20,
                    1 << 30,
                ))
                .is_err()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(r);
    }

    #[test]
    fn client_messages_carry_values_of_any_size_beside_the_frame() {
        use rdask_actors::protocol::{ClientResponse, KeyResult};
        let big = Bytes::from(vec![9u8; 3 << 20]);
        let reply = Envelope {
            id: 7,
            body: ClientResponse::Results(vec![
                KeyResult::Value(big.clone()),
                KeyResult::Pending,
                KeyResult::Value(Bytes::from_static(b"tiny")),
            ]),
        };
        // The frame limit is far below the value: only the frame counts.
        let encoded = encode_message(&reply, 1024, 1 << 30).unwrap();
        assert!(encoded.wire_len() > big.len() as u64);
        let mut wire = Vec::new();
        block(encoded.write(&mut wire)).unwrap();
        let back: Envelope<ClientResponse> =
            block(read_message(&mut Cursor::new(wire), 1024, 1 << 30)).unwrap();
        assert_eq!(back, reply);
        // Over the value limit: an error naming the flag, before anything is written.
        let err = encode_message(&reply, 1024, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("--max-value-bytes"), "{err}");
        let many = ClientRequest::Release {
            keys: vec!["k".into(); 1000],
        };
        let err = encode_message(&Envelope { id: 1, body: many }, 1024, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("--max-frame-bytes"), "{err}");
    }
}
