//! Inputs the fuzzers found (tests/fuzz_regressions/*), kept as regression tests: each is
//! refused quickly, without a large allocation, and the process carries on.

use std::path::Path;

use bytes::Bytes;
use tandem::protocol::{FrameLimits, decode_frame};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn fuzzer_findings_are_refused_without_large_allocations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    for path in inputs {
        let before = peak_rss_kib();
        let frame = Bytes::from(std::fs::read(&path).expect("read"));
        let started = std::time::Instant::now();
        // The connection decodes the frame; the room decodes the updates in it.
        let refused = match decode_frame(&frame, &FrameLimits::default()) {
            Err(e) => Some(e.to_string()),
            Ok(msgs) => msgs.iter().find_map(|msg| match msg {
                tandem::protocol::Incoming::Update(raw) => {
                    tandem::protocol::decode_update(raw).err().map(|e| e.to_string())
                }
                _ => None,
            }),
        };
        let grew = peak_rss_kib().saturating_sub(before);
        println!("{}: {refused:?} in {:?}, peak RSS +{grew} KiB", path.display(), started.elapsed());
        assert!(refused.is_some(), "{} was accepted", path.display());
        assert!(grew < 64 * 1024, "{} made the process grow by {grew} KiB", path.display());
    }
}
