//! Noise over blocking std sockets, for the node's peers in this crate: the benchmark's
//! generator and sink (`bench-mix --noise`) and `probe`. A handshake and a reader, with
//! [`super::link`]; the node itself speaks Noise through its shard driver.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use super::framing::Deframer;
use super::link::{Handshake, Opener, Transport};

/// Run `handshake` over `stream` to its end; what the peer sent after its last handshake
/// message stays in the returned deframer. A read that times out (the stream's read timeout)
/// fails the handshake: a peer that stalls cannot hold the caller.
pub fn handshake(
    stream: &mut TcpStream,
    mut handshake: Handshake,
) -> std::io::Result<(Transport, Deframer)> {
    let mut deframer = Deframer::new();
    let broken = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    while !handshake.is_finished() {
        if handshake.is_my_turn() {
            let mut out = Vec::new();
            handshake.write_next(&mut out).map_err(|e| broken(&e))?;
            stream.write_all(&out)?;
            continue;
        }
        loop {
            if let Some((header, payload)) = deframer.next_message().map_err(|e| broken(&e))? {
                handshake.read(header, payload).map_err(|e| broken(&e))?;
                break;
            }
            match stream.read(deframer.spare_mut()) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => deframer.advance(n),
                Err(e) => return Err(e),
            }
        }
    }
    let transport = handshake.into_transport().map_err(|e| broken(&e))?;
    Ok((transport, deframer))
}

/// The frame stream of a Noise connection, read as a plain one would be.
pub struct NoiseSource {
    opener: Opener,
}

impl NoiseSource {
    /// After [`handshake`].
    pub fn new(transport: Transport, deframer: Deframer) -> NoiseSource {
        NoiseSource {
            opener: Opener::new(transport, deframer),
        }
    }

    /// Fill `buf` with the next plaintext bytes (0: closed); a read timeout passes through.
    pub fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.opener.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(failure) => return Err(std::io::Error::other(failure.as_str())),
            }
            match stream.read(self.opener.spare_mut())? {
                0 => return Ok(0),
                n => self.opener.advance(n),
            }
        }
    }
}
