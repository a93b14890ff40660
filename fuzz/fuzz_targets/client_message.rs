//! Fuzz target: The client request/response body decoders on arbitrary bodies of every frame kind.
//! The body lives in `ringlog_net::fuzzing::client_message` so that stable CI runs it too.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog_net::fuzzing::client_message(data);
});
