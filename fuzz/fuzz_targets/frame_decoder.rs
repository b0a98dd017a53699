//! Arbitrary bytes, fed in arbitrary chunks, through `FrameDecoder`; the frames it yields must
//! equal a one-shot decode of the whole stream with `decode_header`, up to the first error.
//!
//! Input layout: `[control length % 16][control bytes][stream]`; control bytes choose the
//! chunk lengths in turn (none: one chunk).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nym_mixnode::framing::{decode_header, FrameDecoder, FrameError, FrameHeader};

/// Frames of the whole stream, decoded at once, and the error that ended it, if any.
fn one_shot(stream: &[u8]) -> (Vec<(FrameHeader, Vec<u8>)>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match decode_header(rest) {
            Err(error) => return (frames, Some(error)),
            Ok(None) => return (frames, None),
            Ok(Some((header, header_len))) => {
                assert_eq!(header_len, header.encoded_len());
                let frame_len = header_len + header.packet_len();
                if rest.len() < frame_len {
                    return (frames, None);
                }
                frames.push((header, rest[header_len..frame_len].to_vec()));
                rest = &rest[frame_len..];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control_len, rest)) = data.split_first() else {
        return;
    };
    let control_len = (control_len as usize % 16).min(rest.len());
    let (control, stream) = rest.split_at(control_len);
    let (expected, expected_error) = one_shot(stream);

    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    let mut got_error = None;
    let mut fed = 0;
    let mut turn = 0;
    'feed: while fed < stream.len() {
        let chunk_len = match control.get(turn % control.len().max(1)) {
            Some(&byte) => byte as usize * 131 + 1,
            None => stream.len(),
        };
        turn += 1;
        let chunk_end = (fed + chunk_len).min(stream.len());
        let pushed = decoder.push(&stream[fed..chunk_end]);
        fed += pushed;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert_eq!(frame.packet.len(), frame.header.packet_len());
                    got.push((frame.header, frame.packet.to_vec()));
                }
                Ok(None) => break,
                Err(error) => {
                    got_error = Some(error);
                    break 'feed;
                }
            }
        }
        // Room is only lacking while a whole frame waits, and every whole frame was taken.
        assert!(pushed > 0 || chunk_end == fed, "decoder stalled");
    }
    if got_error.is_none() {
        // Everything was fed; a trailing partial header may still hold a corrupt byte.
        if let Err(error) = decoder.next_frame() {
            got_error = Some(error);
        }
    }
    assert_eq!(got, expected);
    assert_eq!(got_error, expected_error);
});
