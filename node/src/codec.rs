//! The wire format of rdask's protocols: length-prefixed postcard frames with a size limit.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. A frame
//! whose announced length is over the limit is refused before any of it is read, so an
//! oversized or hostile message costs the node nothing but a closed stream.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The client protocol's name.
pub const CLIENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/rdask/client/1");

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
    let buf = postcard::to_allocvec(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if buf.len() > max || buf.len() > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes is over the frame limit of {max} bytes",
                buf.len()
            ),
        ));
    }
    io.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    io.write_all(&buf).await
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
}
