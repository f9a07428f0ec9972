//! Inputs the fuzzers found (tests/fuzz_regressions/*, each a client frame), kept as
//! regression tests: sent by a peer into a document that has content, each is refused
//! (or harmless), quickly and without a large allocation, and the document keeps serving:
//! a newcomer syncs it and can edit it.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, YClient};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn fuzzer_findings_are_refused_and_the_document_keeps_serving() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut inputs: Vec<_> =
        std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    // As in production without RUST_BACKTRACE: a caught panic prints one line, and does not
    // load debug info to symbolise a backtrace (that alone is ~140 MiB, and would be
    // counted against the input below).
    std::panic::set_hook(Box::new(|info| eprintln!("caught panic: {info}")));
    let server = TestServer::start().await;
    for (i, path) in inputs.iter().enumerate() {
        let doc = format!("regression-{i}");
        let mut writer = YClient::join(&server, &doc).await;
        writer.insert(0, "seed").await;
        writer.pump_until(|c| c.updates_received == 1).await;

        let before = peak_rss_kib();
        let mut hostile = YClient::join(&server, &doc).await;
        hostile.send(Bytes::from(std::fs::read(path).expect("read"))).await;
        hostile.pump_for(Duration::from_millis(200)).await;
        let grew = peak_rss_kib().saturating_sub(before);
        println!("{}: closed {:?}, peak RSS +{grew} KiB", path.display(), hostile.closed);
        assert!(grew < 64 * 1024, "{} grew the process by {grew} KiB", path.display());

        // The document still serves: a newcomer syncs it, edits, and gets its echo.
        let mut late = YClient::join(&server, &doc).await;
        assert!(
            late.text().starts_with("seed") || late.text().contains("seed"),
            "{:?}",
            late.text()
        );
        late.insert(0, "after ").await;
        late.pump_until(|c| c.updates_received >= 1).await;
        writer.pump_until(|c| c.text().contains("after ")).await;
    }
    server.stop().await;
}
