//! Fuzz target: The streaming and one-shot frame decoders, then every body decoder on each decoded frame.
//! The body lives in `ringlog_net::fuzzing::frame_decoder` so that stable CI runs it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog_net::fuzzing::frame_decoder(data);
});
