//! A minimal HTTP/1.1 client over a raw socket: enough for status codes, headers and small
//! bodies, without pulling an HTTP client into the build. Shared with the integration tests
//! (`tests/common` includes this file), so there is one such client in the repository.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// Status line and header lines, lower-cased.
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response. `version` is the
/// request line's HTTP version (`HTTP/1.1` normally; tests send others on purpose).
pub(crate) async fn request(
    url: &str,
    method: &str,
    version: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("http:// only"))?;
    let (host, path) =
        rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).await?;
    let mut head = format!("{method} {path} {version}\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            response.extend_from_slice(&chunk[..n]);
            // A 101 keeps the connection open for the new protocol: stop at its head.
            if response.starts_with(b"HTTP/1.1 101")
                && response.windows(4).any(|w| w == b"\r\n\r\n")
            {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await??;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&response[..i], response[i + 4..].to_vec()),
        None => (&response[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(HttpResponse { status, headers: head, body })
}
