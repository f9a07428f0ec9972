//! Build steps outside Rust:
//! - rebuild when migrations change (`sqlx::migrate!` embeds them);
//! - build the browser editor (web/ → web/dist) with npm, and embed web/dist into the
//!   binary (`$OUT_DIR/web_assets.rs`, a table of `include_bytes!`), so the binary serves
//!   the editor wherever it is copied.
//!
//! Without npm the server still builds and runs: the table is empty, the WebSocket API
//! works and `/` explains that the editor was not built. Set TANDEM_SKIP_WEB_BUILD=1 to
//! skip the web build (whatever web/dist already holds is still embedded).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for path in ["web/src", "web/build.mjs", "web/package.json", "web/package-lock.json"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=TANDEM_SKIP_WEB_BUILD");
    let skip = std::env::var_os("TANDEM_SKIP_WEB_BUILD").is_some_and(|v| v != "0");
    if !skip && let Err(why) = build_web(Path::new("web")) {
        println!("cargo:warning=browser editor not built: {why}");
        println!("cargo:warning=the server works without it; / will say the editor is missing");
    }
    if let Err(e) = embed_web(Path::new("web/dist")) {
        panic!("embedding web/dist: {e}");
    }
}

/// Writes `$OUT_DIR/web_assets.rs`: `FILES`, every file under `dist` as (path, bytes).
fn embed_web(dist: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    if dist.join("editor.html").is_file() {
        collect(dist, dist, &mut files)?;
    }
    files.sort();
    let mut code = String::from("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for (name, path) in files {
        code.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
    }
    code.push_str("];\n");
    let out = std::env::var("OUT_DIR").map_err(std::io::Error::other)?;
    std::fs::write(Path::new(&out).join("web_assets.rs"), code)
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, files)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let name = rel.to_string_lossy().replace('\\', "/");
            let absolute = std::fs::canonicalize(&path)?;
            files.push((name, absolute.to_string_lossy().into_owned()));
        }
    }
    Ok(())
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
