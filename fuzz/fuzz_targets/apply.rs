//! Decode + apply through the room core, on a document that already has content; the
//! stored rows must rebuild the room's document (see tandem::fuzzing).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: quiet_caught_panics(), |data: &[u8]| {
    tandem::fuzzing::frame_into_room(data);
});

/// The room catches panics inside yrs's integration (and rebuilds the document); libFuzzer's
/// hook would abort on them before they are caught. A panic nobody catches still aborts:
/// it cannot unwind out of the fuzz entry point.
/// `TANDEM_FUZZ_PANICS=1` prints every panic, caught or not (to see what a crash was).
fn quiet_caught_panics() {
    if std::env::var_os("TANDEM_FUZZ_PANICS").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
}
