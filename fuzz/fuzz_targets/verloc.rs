//! Peer input of VerLoc: arbitrary bytes as an echo (the listener's side), as a reply to a
//! fixed echo (the measurer's side), and as a topology document (fetched over HTTP).
//!
//! Checks: nothing panics; an echo that checks is answered with a reply that checks; a reply
//! that checks carries exactly the echo sent.

#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use nym_mixnode::topology::parse_topology;
use nym_mixnode::verloc::packet::{
    answer_echo, build_echo, check_echo, check_reply, EchoBytes, ReplyBytes, ECHO_LENGTH,
    REPLY_LENGTH,
};

fuzz_target!(|data: &[u8]| {
    let me = SigningKey::from_bytes(&[1; 32]);
    let them = SigningKey::from_bytes(&[2; 32]);
    if let Ok(echo) = EchoBytes::try_from(data.get(..ECHO_LENGTH).unwrap_or(&[])) {
        if check_echo(&echo).is_ok() {
            let reply = answer_echo(&echo, &them).expect("a checked echo is answered");
            assert!(check_reply(&reply, &echo, &them.verifying_key()).is_ok());
        }
    }
    if let Ok(reply) = ReplyBytes::try_from(data.get(..REPLY_LENGTH).unwrap_or(&[])) {
        let sent = build_echo(7, &me);
        if check_reply(&reply, &sent, &them.verifying_key()).is_ok() {
            assert_eq!(&reply[..ECHO_LENGTH], &sent[..]);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(topology) = parse_topology(text, "fuzz") {
            assert!(topology
                .nodes
                .iter()
                .all(|n| n.verloc_port != 0 && n.mix_port != 0));
        }
    }
});
