//! Fuzz target: The peer body decoders (Raft messages, coalesced heartbeats, handshakes) on arbitrary bodies.
//! The body lives in `ringlog_net::fuzzing::peer_message` so that stable CI runs it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog_net::fuzzing::peer_message(data);
});
