//! The mix-port frame codec: a small header (`[version][size_tag][packet_type]` plus, in
//! version 8, `[key_rotation]`) followed by exactly one packet whose length the size tag
//! implies. There is no length prefix.
//!
//! [`decode_header`] checks a header byte by byte ("not enough bytes yet" is `Ok(None)`), and
//! [`FrameDecoder`] cuts a byte stream into frames inside one fixed buffer allocated at
//! construction and compacted in place, never reallocated.
//!
//! This module deliberately does not parse or check the packet itself (that is
//! [`crate::sphinx`]'s job), does not read sockets, and does not decide what happens to an
//! Outfox packet: it only tells the caller its type and length so the frame can be skipped
//! and counted. A [`FrameError`] means the stream is corrupt and the caller should close it.

use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE;

use crate::accounting::DropReason;

/// Bytes every Sphinx packet spends on its header and payload padding markers.
pub const SPHINX_PACKET_OVERHEAD: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE;

/// Size of an ack's body: a 16-byte IV and a 5-byte fragment identifier (Nym's
/// `ACK_IV_SIZE + FRAG_ID_LEN`).
const ACK_BODY_LEN: usize = 16 + 5;

/// Outfox overhead, as in Nym's `nym-outfox` constants: `MIX_PARAMS_LEN (6)` plus, for each of
/// `DEFAULT_HOPS (4)` hops, a group element (32), a tag (16) and routing information (32).
const OUTFOX_PACKET_OVERHEAD: usize = 6 + (32 + 16 + 32) * 4;

/// Smallest Outfox message (Nym's `MIN_PACKET_SIZE`), the body of an Outfox ack.
const OUTFOX_ACK_BODY_LEN: usize = 48;

/// Length of a regular Sphinx packet (2 KiB body).
pub const PACKET_LEN_REGULAR: usize = 2 * 1024 + SPHINX_PACKET_OVERHEAD;
/// Length of a Sphinx ack packet.
pub const PACKET_LEN_ACK: usize = ACK_BODY_LEN + SPHINX_PACKET_OVERHEAD;
/// Length of an extended Sphinx packet with a 32 KiB body.
pub const PACKET_LEN_EXTENDED32: usize = 32 * 1024 + SPHINX_PACKET_OVERHEAD;
/// Length of an extended Sphinx packet with an 8 KiB body.
pub const PACKET_LEN_EXTENDED8: usize = 8 * 1024 + SPHINX_PACKET_OVERHEAD;
/// Length of an extended Sphinx packet with a 16 KiB body.
pub const PACKET_LEN_EXTENDED16: usize = 16 * 1024 + SPHINX_PACKET_OVERHEAD;
/// Length of a regular Outfox packet (2 KiB body).
pub const PACKET_LEN_OUTFOX_REGULAR: usize = 2 * 1024 + OUTFOX_PACKET_OVERHEAD;
/// Length of an Outfox ack packet.
pub const PACKET_LEN_OUTFOX_ACK: usize = OUTFOX_ACK_BODY_LEN + OUTFOX_PACKET_OVERHEAD;

const _: () = assert!(HEADER_SIZE == 348);
const _: () = assert!(PAYLOAD_OVERHEAD_SIZE == 17);
const _: () = assert!(PACKET_LEN_REGULAR == 2413);
const _: () = assert!(PACKET_LEN_ACK == 386);
const _: () = assert!(PACKET_LEN_EXTENDED32 == 33133);
const _: () = assert!(PACKET_LEN_EXTENDED8 == 8557);
const _: () = assert!(PACKET_LEN_EXTENDED16 == 16749);
const _: () = assert!(PACKET_LEN_OUTFOX_REGULAR == 2374);
const _: () = assert!(PACKET_LEN_OUTFOX_ACK == 374);

/// Header length of packet version 7: `[version][size_tag][packet_type]`.
pub const HEADER_LEN_V7: usize = 3;
/// Header length of packet version 8: `[version][size_tag][packet_type][key_rotation]`.
pub const HEADER_LEN_V8: usize = 4;
/// The longest frame header.
pub const HEADER_LEN_MAX: usize = HEADER_LEN_V8;

/// The longest packet any size tag implies.
pub const PACKET_LEN_MAX: usize = PACKET_LEN_EXTENDED32;
/// The longest frame: sizes [`FrameDecoder`]'s buffer.
pub const FRAME_LEN_MAX: usize = HEADER_LEN_MAX + PACKET_LEN_MAX;

const OFFSET_VERSION: usize = 0;
const OFFSET_SIZE_TAG: usize = 1;
const OFFSET_PACKET_TYPE: usize = 2;
const OFFSET_KEY_ROTATION: usize = 3;

/// The packet format version in the first header byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Version {
    /// Three-byte header, no key rotation byte.
    V7 = 7,
    /// Four-byte header with a key rotation byte.
    V8 = 8,
}

impl Version {
    /// The version a header byte names, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            7 => Some(Version::V7),
            8 => Some(Version::V8),
            _ => None,
        }
    }

    /// Length of a header of this version.
    pub fn header_len(self) -> usize {
        match self {
            Version::V7 => HEADER_LEN_V7,
            Version::V8 => HEADER_LEN_V8,
        }
    }
}

/// Which packet length the frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SizeTag {
    /// Regular Sphinx packet, 2413 bytes.
    Regular = 1,
    /// Sphinx ack packet, 386 bytes.
    Ack = 2,
    /// Extended Sphinx packet with a 32 KiB body, 33133 bytes.
    Extended32 = 3,
    /// Extended Sphinx packet with an 8 KiB body, 8557 bytes.
    Extended8 = 4,
    /// Extended Sphinx packet with a 16 KiB body, 16749 bytes.
    Extended16 = 5,
    /// Regular Outfox packet, 2374 bytes.
    OutfoxRegular = 6,
    /// Outfox ack packet, 374 bytes.
    OutfoxAck = 7,
}

impl SizeTag {
    /// Every size tag, in tag order.
    pub const ALL: [SizeTag; 7] = [
        SizeTag::Regular,
        SizeTag::Ack,
        SizeTag::Extended32,
        SizeTag::Extended8,
        SizeTag::Extended16,
        SizeTag::OutfoxRegular,
        SizeTag::OutfoxAck,
    ];

    /// The size tag a header byte names, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(SizeTag::Regular),
            2 => Some(SizeTag::Ack),
            3 => Some(SizeTag::Extended32),
            4 => Some(SizeTag::Extended8),
            5 => Some(SizeTag::Extended16),
            6 => Some(SizeTag::OutfoxRegular),
            7 => Some(SizeTag::OutfoxAck),
            _ => None,
        }
    }

    /// Length in bytes of the packet that follows the header.
    pub const fn packet_len(self) -> usize {
        match self {
            SizeTag::Regular => PACKET_LEN_REGULAR,
            SizeTag::Ack => PACKET_LEN_ACK,
            SizeTag::Extended32 => PACKET_LEN_EXTENDED32,
            SizeTag::Extended8 => PACKET_LEN_EXTENDED8,
            SizeTag::Extended16 => PACKET_LEN_EXTENDED16,
            SizeTag::OutfoxRegular => PACKET_LEN_OUTFOX_REGULAR,
            SizeTag::OutfoxAck => PACKET_LEN_OUTFOX_ACK,
        }
    }

    /// Whether this size belongs to the Outfox format rather than Sphinx.
    pub const fn is_outfox(self) -> bool {
        matches!(self, SizeTag::OutfoxRegular | SizeTag::OutfoxAck)
    }

    /// The Sphinx payload size (packet length less the Sphinx header) a sender passes to
    /// `SphinxPacketBuilder::with_payload_size` to make a packet of this size.
    pub const fn sphinx_payload_len(self) -> usize {
        self.packet_len() - HEADER_SIZE
    }
}

/// Which packet format the frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// A Sphinx mix packet.
    Sphinx = 0,
    /// An Outfox packet: framed and skipped, never mixed by this node.
    Outfox = 2,
}

impl PacketType {
    /// The packet type a header byte names, if any. Type 1 (the retired "VPN" mode) is not
    /// accepted.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(PacketType::Sphinx),
            2 => Some(PacketType::Outfox),
            _ => None,
        }
    }
}

/// Which of the node's Sphinx keys the sender used (version 8 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyRotation {
    /// The sender did not say; also what a version 7 header implies.
    Unknown = 0,
    /// The key of the odd rotation.
    Odd = 1,
    /// The key of the even rotation.
    Even = 2,
}

impl KeyRotation {
    /// The key rotation a header byte names, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(KeyRotation::Unknown),
            1 => Some(KeyRotation::Odd),
            2 => Some(KeyRotation::Even),
            _ => None,
        }
    }
}

/// Why a byte stream is not a valid frame stream. Any of these means the connection is
/// corrupt and should be closed: with no length prefix there is no way to resynchronise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first header byte is not version 7 or 8.
    #[error("unknown packet version {0}")]
    UnknownVersion(u8),
    /// The size tag is not 1 to 7.
    #[error("unknown packet size tag {0}")]
    UnknownSizeTag(u8),
    /// The packet type is not 0 (Sphinx) or 2 (Outfox).
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// The key rotation byte is not 0, 1 or 2.
    #[error("unknown key rotation {0}")]
    UnknownKeyRotation(u8),
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Packet format version; decides the header length.
    pub version: Version,
    /// Which packet length follows.
    pub size_tag: SizeTag,
    /// Which packet format follows.
    pub packet_type: PacketType,
    /// Which key the sender used; always [`KeyRotation::Unknown`] for version 7, and not
    /// encoded in a version 7 header.
    pub key_rotation: KeyRotation,
}

impl FrameHeader {
    /// Length of this header on the wire.
    pub fn encoded_len(&self) -> usize {
        self.version.header_len()
    }

    /// Length of the packet that follows this header.
    pub fn packet_len(&self) -> usize {
        self.size_tag.packet_len()
    }

    /// Length of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        self.encoded_len() + self.packet_len()
    }

    /// Writes the header to the start of `out` and returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`Self::encoded_len`]: a caller bug, never peer input.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let len = self.encoded_len();
        assert!(out.len() >= len, "frame header output buffer too short");
        out[OFFSET_VERSION] = self.version as u8;
        out[OFFSET_SIZE_TAG] = self.size_tag as u8;
        out[OFFSET_PACKET_TYPE] = self.packet_type as u8;
        if self.version == Version::V8 {
            out[OFFSET_KEY_ROTATION] = self.key_rotation as u8;
        }
        len
    }

    /// Whether this node can mix the packet: only Sphinx packets of a Sphinx size are.
    ///
    /// An Outfox packet is [`DropReason::UnsupportedPacketType`]; a Sphinx type with an
    /// Outfox size tag (or the reverse) is [`DropReason::BadFrame`]. Neither corrupts the
    /// stream: the frame's length is known, so the caller skips it, counts it, and reads on.
    pub fn check_mixable(&self) -> Result<(), DropReason> {
        match (self.packet_type, self.size_tag.is_outfox()) {
            (PacketType::Sphinx, false) => Ok(()),
            (PacketType::Outfox, true) => Err(DropReason::UnsupportedPacketType),
            _ => Err(DropReason::BadFrame),
        }
    }
}

/// Decodes a frame header from the start of `bytes`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, header_len)))` once the
/// header is whole. Every byte present is checked even before the header is whole, so a
/// corrupt stream is detected as early as possible.
pub fn decode_header(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let Some(&version_byte) = bytes.get(OFFSET_VERSION) else {
        return Ok(None);
    };
    let version = Version::from_u8(version_byte).ok_or(FrameError::UnknownVersion(version_byte))?;

    let Some(&size_tag_byte) = bytes.get(OFFSET_SIZE_TAG) else {
        return Ok(None);
    };
    let size_tag =
        SizeTag::from_u8(size_tag_byte).ok_or(FrameError::UnknownSizeTag(size_tag_byte))?;

    let Some(&packet_type_byte) = bytes.get(OFFSET_PACKET_TYPE) else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(packet_type_byte)
        .ok_or(FrameError::UnknownPacketType(packet_type_byte))?;

    let key_rotation = match version {
        Version::V7 => KeyRotation::Unknown,
        Version::V8 => {
            let Some(&key_rotation_byte) = bytes.get(OFFSET_KEY_ROTATION) else {
                return Ok(None);
            };
            KeyRotation::from_u8(key_rotation_byte)
                .ok_or(FrameError::UnknownKeyRotation(key_rotation_byte))?
        }
    };

    let header = FrameHeader {
        version,
        size_tag,
        packet_type,
        key_rotation,
    };
    Ok(Some((header, version.header_len())))
}

/// One whole frame, borrowed from the [`FrameDecoder`]'s buffer until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The decoded header.
    pub header: FrameHeader,
    /// The packet bytes, exactly `header.packet_len()` long.
    pub packet: &'a [u8],
}

/// Cuts a byte stream into frames inside one buffer of [`FRAME_LEN_MAX`] bytes, allocated
/// once.
///
/// Use: read from the socket into [`Self::spare_mut`], call [`Self::advance`] with the count
/// read, then call [`Self::next_frame`] until it returns `Ok(None)`. Consumed bytes are
/// reclaimed by moving the (at most one) partial frame to the front of the buffer, only when
/// the rest of that frame would not fit behind it.
pub struct FrameDecoder {
    buffer: Box<[u8]>,
    /// Start of the bytes not yet returned as frames.
    start: usize,
    /// End of the bytes received.
    end: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with its buffer allocated.
    pub fn new() -> Self {
        FrameDecoder {
            buffer: vec![0u8; FRAME_LEN_MAX].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Size of the buffer: the longest frame.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// Room to read into. Empty only while a whole frame is waiting to be taken with
    /// [`Self::next_frame`]; after `next_frame` returned `Ok(None)` it is never empty.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.compact_if_needed();
        &mut self.buffer[self.end..]
    }

    /// Marks `count` bytes of [`Self::spare_mut`] as received.
    ///
    /// # Panics
    /// If `count` exceeds the spare room: a caller bug.
    pub fn advance(&mut self, count: usize) {
        assert!(
            count <= self.buffer.len() - self.end,
            "advance past spare room"
        );
        self.end += count;
    }

    /// Copies as many bytes of `bytes` as fit into the spare room and returns how many did;
    /// a convenience for callers (tests, fuzzers) that hold bytes instead of a socket.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare_mut();
        let count = spare.len().min(bytes.len());
        spare[..count].copy_from_slice(&bytes[..count]);
        self.advance(count);
        count
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the reason the stream is
    /// corrupt. After an error the decoder keeps returning it: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let pending = &self.buffer[self.start..self.end];
        let Some((header, header_len)) = decode_header(pending)? else {
            return Ok(None);
        };
        let frame_len = header_len + header.packet_len();
        if pending.len() < frame_len {
            return Ok(None);
        }
        let packet_start = self.start + header_len;
        let packet_end = self.start + frame_len;
        self.start = packet_end;
        if self.start == self.end {
            // Nothing pending: reset for free instead of compacting later.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(Frame {
            header,
            packet: &self.buffer[packet_start..packet_end],
        }))
    }

    /// Moves the pending bytes to the front when the frame they begin would not fit behind
    /// them. A corrupt header is left for `next_frame` to report.
    fn compact_if_needed(&mut self) {
        if self.start == 0 {
            return;
        }
        let pending = &self.buffer[self.start..self.end];
        let needed_len = match decode_header(pending) {
            Ok(Some((header, _))) => header.frame_len(),
            Ok(None) | Err(_) => HEADER_LEN_MAX,
        };
        if self.start + needed_len > self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        assert!(self.start <= self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: Version, size_tag: SizeTag, packet_type: PacketType) -> FrameHeader {
        FrameHeader {
            version,
            size_tag,
            packet_type,
            key_rotation: match version {
                Version::V7 => KeyRotation::Unknown,
                Version::V8 => KeyRotation::Even,
            },
        }
    }

    fn frame_bytes(h: &FrameHeader, fill: u8) -> Vec<u8> {
        let mut out = vec![0u8; h.frame_len()];
        let n = h.encode(&mut out);
        out[n..].fill(fill);
        out
    }

    #[test]
    fn header_round_trips_for_every_tag_version_and_type() {
        for version in [Version::V7, Version::V8] {
            for size_tag in SizeTag::ALL {
                for packet_type in [PacketType::Sphinx, PacketType::Outfox] {
                    let h = header(version, size_tag, packet_type);
                    let mut out = [0u8; HEADER_LEN_MAX];
                    let n = h.encode(&mut out);
                    assert_eq!(n, h.encoded_len());
                    assert_eq!(decode_header(&out[..n]), Ok(Some((h, n))));
                    for short in 0..n {
                        assert_eq!(decode_header(&out[..short]), Ok(None));
                    }
                }
            }
        }
    }

    #[test]
    fn wire_bytes_match_the_spec() {
        let h = header(Version::V8, SizeTag::Regular, PacketType::Sphinx);
        let mut out = [0u8; 4];
        assert_eq!(h.encode(&mut out), 4);
        assert_eq!(out, [8, 1, 0, 2]);
        let h = header(Version::V7, SizeTag::Ack, PacketType::Sphinx);
        assert_eq!(h.encode(&mut out), 3);
        assert_eq!(&out[..3], &[7, 2, 0]);
        assert_eq!(h.packet_len(), 386);
    }

    #[test]
    fn corrupt_headers_are_reported_as_soon_as_the_byte_arrives() {
        assert_eq!(decode_header(&[6]), Err(FrameError::UnknownVersion(6)));
        assert_eq!(
            decode_header(&[0, 1, 0]),
            Err(FrameError::UnknownVersion(0))
        );
        assert_eq!(decode_header(&[8, 0]), Err(FrameError::UnknownSizeTag(0)));
        assert_eq!(
            decode_header(&[7, 8, 0]),
            Err(FrameError::UnknownSizeTag(8))
        );
        assert_eq!(
            decode_header(&[7, 1, 1]),
            Err(FrameError::UnknownPacketType(1))
        );
        assert_eq!(
            decode_header(&[8, 1, 3]),
            Err(FrameError::UnknownPacketType(3))
        );
        assert_eq!(
            decode_header(&[8, 1, 0, 3]),
            Err(FrameError::UnknownKeyRotation(3))
        );
        assert_eq!(decode_header(&[8, 1, 0]), Ok(None));
    }

    #[test]
    fn mixability_depends_on_type_and_size_family() {
        let sphinx = header(Version::V8, SizeTag::Regular, PacketType::Sphinx);
        assert_eq!(sphinx.check_mixable(), Ok(()));
        let outfox = header(Version::V8, SizeTag::OutfoxRegular, PacketType::Outfox);
        assert_eq!(
            outfox.check_mixable(),
            Err(DropReason::UnsupportedPacketType)
        );
        let mismatched = header(Version::V8, SizeTag::OutfoxAck, PacketType::Sphinx);
        assert_eq!(mismatched.check_mixable(), Err(DropReason::BadFrame));
        let mismatched = header(Version::V7, SizeTag::Ack, PacketType::Outfox);
        assert_eq!(mismatched.check_mixable(), Err(DropReason::BadFrame));
    }

    /// A stream of mixed frames, fed in chunks of every awkward size, comes out whole and in
    /// order, and the buffer is never reallocated.
    #[test]
    fn decoder_reassembles_frames_across_any_chunking() {
        let headers: Vec<FrameHeader> = [
            (Version::V8, SizeTag::Regular, PacketType::Sphinx),
            (Version::V7, SizeTag::Ack, PacketType::Sphinx),
            (Version::V8, SizeTag::Extended32, PacketType::Sphinx),
            (Version::V8, SizeTag::OutfoxAck, PacketType::Outfox),
            (Version::V7, SizeTag::Extended8, PacketType::Sphinx),
            (Version::V8, SizeTag::Extended16, PacketType::Sphinx),
            (Version::V8, SizeTag::Extended32, PacketType::Sphinx),
            (Version::V8, SizeTag::OutfoxRegular, PacketType::Outfox),
            (Version::V8, SizeTag::Ack, PacketType::Sphinx),
        ]
        .into_iter()
        .map(|(v, s, t)| header(v, s, t))
        .collect();
        let mut stream = Vec::new();
        for (i, h) in headers.iter().enumerate() {
            stream.extend_from_slice(&frame_bytes(h, i as u8 + 1));
        }

        for chunk_len in [1, 3, 4, 385, 1000, 2417, 33137, 70_000] {
            let mut decoder = FrameDecoder::new();
            let buffer_address = decoder.buffer.as_ptr();
            let mut fed = 0;
            let mut decoded = 0;
            while decoded < headers.len() {
                let chunk_end = (fed + chunk_len).min(stream.len());
                let pushed = decoder.push(&stream[fed..chunk_end]);
                fed += pushed;
                while let Some(frame) = decoder.next_frame().expect("valid stream") {
                    let h = headers[decoded];
                    assert_eq!(frame.header, h);
                    assert_eq!(frame.packet.len(), h.packet_len());
                    assert!(frame.packet.iter().all(|&b| b == decoded as u8 + 1));
                    decoded += 1;
                }
                assert!(pushed > 0 || fed == stream.len(), "decoder stalled");
            }
            assert_eq!(fed, stream.len());
            assert_eq!(decoder.buffered_len(), 0);
            assert_eq!(decoder.buffer.as_ptr(), buffer_address);
            assert_eq!(decoder.capacity(), FRAME_LEN_MAX);
        }
    }

    #[test]
    fn decoder_reports_corruption_after_valid_frames() {
        let h = header(Version::V7, SizeTag::Ack, PacketType::Sphinx);
        let mut stream = frame_bytes(&h, 9);
        stream.extend_from_slice(&[9, 1, 0]);
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(&stream), stream.len());
        assert!(decoder
            .next_frame()
            .expect("first frame is valid")
            .is_some());
        assert_eq!(
            decoder.next_frame().map(|f| f.is_some()),
            Err(FrameError::UnknownVersion(9))
        );
        assert_eq!(
            decoder.next_frame().map(|f| f.is_some()),
            Err(FrameError::UnknownVersion(9))
        );
    }

    #[test]
    fn spare_room_is_never_empty_while_waiting_for_a_frame() {
        let h = header(Version::V8, SizeTag::Extended32, PacketType::Sphinx);
        let frame = frame_bytes(&h, 7);
        let mut decoder = FrameDecoder::new();
        // A small frame first, so the big one starts mid-buffer and needs compacting.
        let small = frame_bytes(&header(Version::V7, SizeTag::Ack, PacketType::Sphinx), 1);
        decoder.push(&small);
        decoder.push(&frame[..100]);
        assert!(decoder.next_frame().expect("valid").is_some());
        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(decoder.spare_mut().len() >= frame.len() - 100);
        decoder.push(&frame[100..]);
        let got = decoder.next_frame().expect("valid").expect("whole frame");
        assert_eq!(got.packet, &frame[4..]);
    }
}
