//! Frame decoding: any bytes from a socket decode to messages or to an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem::protocol::{FrameLimits, decode_frame};

// yrs's decoders can panic on hostile input; decode_frame catches that (and says "invalid").
// libFuzzer's hook would abort before the catch, so it is silenced: a panic nobody catches
// still aborts, since it cannot unwind out of the fuzz entry point.
fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let frame = bytes::Bytes::copy_from_slice(data);
    let _ = decode_frame(&frame, &FrameLimits::default());
});
