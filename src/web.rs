//! The browser editor's files: built into the binary by build.rs (so a copied or installed
//! `tandem` serves the editor with no source tree around), or read from `--web-dir` while
//! developing the editor.
//!
//! Caching follows the build's naming: files under `assets/` carry a content hash in their
//! name and are cached for a year (`immutable`); the pages and the service worker keep their
//! names across builds and are revalidated on every load, so a new build shows at once.

use std::path::{Component, Path, PathBuf};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Where the editor comes from.
#[derive(Debug, Clone)]
pub(crate) enum Web {
    Embedded,
    Dir(PathBuf),
    /// `--web-dir=` (empty): no pages at all.
    Off,
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

impl Web {
    pub(crate) fn from_flag(web_dir: Option<&Path>) -> Web {
        match web_dir {
            None => Web::Embedded,
            Some(dir) if dir.as_os_str().is_empty() => Web::Off,
            Some(dir) => Web::Dir(dir.to_path_buf()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !matches!(self, Web::Off)
    }

    /// Whether an editor is there to serve (for the startup log).
    pub(crate) fn built(&self) -> bool {
        match self {
            Web::Embedded => !embedded::FILES.is_empty(),
            Web::Dir(dir) => dir.join("editor.html").is_file(),
            Web::Off => false,
        }
    }

    /// The file's bytes: borrowed from the binary (no copy per request) or read from disk.
    async fn read(&self, name: &str) -> Option<Bytes> {
        match self {
            Web::Embedded => embedded::FILES
                .binary_search_by(|(n, _)| (*n).cmp(name))
                .ok()
                .map(|i| Bytes::from_static(embedded::FILES[i].1)),
            Web::Dir(dir) => {
                // Only plain relative paths: nothing outside the directory is ever read.
                let rel = Path::new(name);
                if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                    return None;
                }
                tokio::fs::read(dir.join(rel)).await.ok().map(Bytes::from)
            }
            Web::Off => None,
        }
    }

    /// An HTML page (`index.html`, `editor.html`); a page explaining the missing build when
    /// there is none.
    pub(crate) async fn page(&self, name: &str) -> Response {
        match self.read(name).await {
            Some(html) => ([(header::CACHE_CONTROL, REVALIDATE)], Html(html)).into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, Html(NOT_BUILT)).into_response(),
        }
    }

    /// Any other file, with its content type and caching.
    pub(crate) async fn file(&self, name: &str) -> Response {
        let Some(bytes) = self.read(name).await else {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        };
        let cache = if name.starts_with("assets/") { IMMUTABLE } else { REVALIDATE };
        let mut response = bytes.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        response
    }
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "map" | "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Tandem</title>\
<body style=\"font-family:system-ui;max-width:40rem;margin:4rem auto;line-height:1.5\">\
<h1>The editor is not built</h1><p>This server was compiled without the browser editor, \
usually because <code>npm</code> was not found at build time. Install Node.js 18+ and npm, \
then rebuild (<code>cargo run --release</code>). Yjs clients can still connect to \
<code>/ws/{document}</code>.</p>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_is_sorted_for_lookup() {
        assert!(embedded::FILES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[tokio::test]
    async fn a_web_dir_never_reads_outside_itself() {
        let web = Web::Dir(PathBuf::from("/etc"));
        for name in ["../etc/passwd", "/etc/passwd", "a/../../passwd"] {
            assert!(web.read(name).await.is_none(), "{name}");
        }
    }
}
