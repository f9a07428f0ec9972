//! Build steps outside Rust:
//! - rebuild when migrations change (`sqlx::migrate!` embeds them);
//! - build the browser editor (web/ → web/dist) with npm, so `cargo run` alone serves it.
//!
//! Without npm the server still builds and runs: the WebSocket API works and `/` explains
//! that the editor was not built. Set TANDEM_SKIP_WEB_BUILD=1 to skip the web build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for path in ["web/src", "web/build.mjs", "web/package.json", "web/package-lock.json"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=TANDEM_SKIP_WEB_BUILD");
    if std::env::var_os("TANDEM_SKIP_WEB_BUILD").is_some_and(|v| v != "0") {
        return;
    }
    if let Err(why) = build_web(Path::new("web")) {
        println!("cargo:warning=browser editor not built: {why}");
        println!("cargo:warning=the server works without it; / will say the editor is missing");
    }
}

fn build_web(web: &Path) -> Result<(), String> {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    if Command::new(npm).arg("--version").output().is_err() {
        return Err("npm not found (install Node.js 18+ and npm, then rebuild)".into());
    }
    // Install only when node_modules is missing or older than the lock file.
    let marker = web.join("node_modules/.package-lock.json");
    let stale = match (modified(&marker), modified(&web.join("package-lock.json"))) {
        (Some(installed), Some(locked)) => installed < locked,
        _ => true,
    };
    if stale {
        run(Command::new(npm).args(["ci", "--no-audit", "--no-fund"]).current_dir(web))?;
    }
    run(Command::new("node").arg("build.mjs").current_dir(web))
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "{command:?} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
