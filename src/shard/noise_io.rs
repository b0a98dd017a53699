//! The driver's Noise I/O: runs a handshake over a glommio `TcpStream` within its deadline,
//! then reads or writes through the transport. The cryptography and the framing are
//! [`crate::noise`]'s (pure); this file only moves bytes and maps every error to the
//! [`Failure`] it is counted as. A link's cipher state lives in the one task that uses it (the
//! reader of an inbound connection, the writer of an outbound one), in the shard that owns
//! the connection: nothing here is shared or locked.

use std::io::ErrorKind;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::noise::framing::Deframer;
use crate::noise::link::{Handshake, HandshakeError, Opener, Transport};
use crate::noise::Failure;

/// Why a read through Noise stopped.
pub(super) enum ReadError {
    /// The socket failed (a timeout is the caller's to count, as on a plain link).
    Io(std::io::Error),
    /// The peer broke Noise.
    Noise(Failure),
}

/// The time left before `deadline`, or a timeout.
fn left(deadline: Instant) -> Result<std::time::Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(left)
    }
}

fn io_failure(error: &std::io::Error) -> Failure {
    match error.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Closed,
    }
}

/// Run `handshake` to its end on `stream`, everything within `deadline`. Bytes the peer sent
/// after its last handshake message stay in `deframer` for the transport.
pub(super) async fn handshake(
    stream: &mut TcpStream,
    mut handshake: Handshake,
    deframer: &mut Deframer,
    deadline: Instant,
) -> Result<Transport, Failure> {
    let mut out = Vec::with_capacity(128);
    while !handshake.is_finished() {
        if handshake.is_my_turn() {
            out.clear();
            handshake
                .write_next(&mut out)
                .map_err(|_| Failure::BadHandshake)?;
            stream
                .set_write_timeout(Some(left(deadline)?))
                .map_err(|_| Failure::Closed)?;
            stream.write_all(&out).await.map_err(|e| io_failure(&e))?;
            continue;
        }
        loop {
            match deframer.next_message() {
                Ok(Some((header, payload))) => {
                    handshake.read(header, payload).map_err(|e| match e {
                        HandshakeError::NotHandshake
                        | HandshakeError::TooShort(_)
                        | HandshakeError::Crypto => Failure::BadHandshake,
                    })?;
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::of_frame(e, true)),
            }
            stream
                .set_read_timeout(Some(left(deadline)?))
                .map_err(|_| Failure::Closed)?;
            match stream.read(deframer.spare_mut()).await {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => deframer.advance(n),
                Err(e) => return Err(io_failure(&e)),
            }
        }
    }
    handshake
        .into_transport()
        .map_err(|_| Failure::BadHandshake)
}

/// The reading end of an inbound Noise link: ciphertext in, the frame stream out.
pub(super) struct NoiseReader {
    opener: Opener,
}

impl NoiseReader {
    pub(super) fn new(transport: Transport, deframer: Deframer) -> NoiseReader {
        NoiseReader {
            opener: Opener::new(transport, deframer),
        }
    }

    /// Fill `buf` with the frame stream's next bytes (0: the peer closed), reading the socket
    /// only while no whole message is buffered, each read within `deadline`.
    pub(super) async fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        deadline: Instant,
    ) -> Result<usize, ReadError> {
        loop {
            match self.opener.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(failure) => return Err(ReadError::Noise(failure)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Io(ErrorKind::TimedOut.into()));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| ReadError::Io(std::io::Error::other(e.to_string())))?;
            match stream.read(self.opener.spare_mut()).await {
                Ok(0) => return Ok(0),
                Ok(n) => self.opener.advance(n),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// The writing end of an outbound Noise link: a writer's batch of frames in as few data
/// messages as fit, in one buffer reused for every batch.
pub(super) struct NoiseWriter {
    transport: Transport,
    sealed: Vec<u8>,
}

impl NoiseWriter {
    pub(super) fn new(transport: Transport) -> NoiseWriter {
        NoiseWriter {
            transport,
            sealed: Vec::new(),
        }
    }

    /// Seal `batch` and write it.
    pub(super) async fn write_all(
        &mut self,
        stream: &mut TcpStream,
        batch: &[u8],
    ) -> std::io::Result<()> {
        self.sealed.clear();
        self.transport
            .seal(batch, &mut self.sealed)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream.write_all(&self.sealed).await
    }
}
