//! The JWT path: a token string through verification to an access decision.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tandem::fuzzing::token_decision(data);
});
