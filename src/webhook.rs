//! Webhooks that are never lost: every event is a row of the store's outbox, written in the
//! same transaction as the commit (or deletion) that caused it, and deleted only after the
//! receiver answered 2xx. This task only reads the outbox and reports outcomes back through
//! the store's writer, so a crash at any point leaves the row in place and a restart resumes
//! delivery: at least once, never zero times.
//!
//! Deliveries run beside the rooms and never inside them: a slow or dead receiver delays its
//! own events and nothing else. Per receiver and document, events go out in order (the
//! store hands out only the first pending row of each pair); across documents they run
//! concurrently.
//!
//! Each request is signed: `X-Tandem-Signature-256: sha256=HEX(HMAC-SHA256(secret,
//! timestamp + "." + body))` with the timestamp in `X-Tandem-Timestamp`, so a receiver can
//! check both who sent it and that it is not an old one replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{Store, WebhookEvent, WebhookOutbox, WebhookOutcome};

/// Events read (and delivered at once) per round.
const BATCH: i64 = 64;
/// Longest sleep between two looks at the outbox when nothing is due.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// First retry after a failure; doubles from there up to `--webhook-retry-max-secs`.
const FIRST_RETRY_MS: f64 = 1000.0;

/// The outbox settings for the store, from the flags; refuses URLs it cannot deliver to.
pub(crate) fn outbox(config: &Config) -> anyhow::Result<Option<WebhookOutbox>> {
    let urls: Vec<String> =
        config.webhook_url.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        return Ok(None);
    }
    for url in &urls {
        let uri: hyper::Uri = url.parse().with_context(|| format!("--webhook-url {url:?}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            anyhow::bail!(
                "--webhook-url {url:?}: only http:// URLs are supported (put a TLS-terminating proxy in front of an https receiver)"
            );
        }
    }
    if config.webhook_secret.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "webhooks are not signed: set --webhook-secret so receivers can verify them"
        );
    }
    Ok(Some(WebhookOutbox {
        urls,
        debounce_ms: config.webhook_debounce_ms.min(i64::MAX as u64) as i64,
        max_wait_ms: config.webhook_max_wait_ms.min(i64::MAX as u64) as i64,
    }))
}

/// Counters since this process started (the outbox itself is in the store).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
}

/// The JSON body of every delivery.
#[derive(Serialize)]
struct Body<'a> {
    event: &'a str,
    document: &'a str,
    seq: i64,
    updated_at: i64,
    node: &'a str,
    delivery_id: String,
}

pub(crate) struct Worker {
    store: Store,
    node: String,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    retry_max_ms: f64,
    client: Client<HttpConnector, Full<Bytes>>,
    counters: Arc<Counters>,
}

impl Worker {
    pub(crate) fn new(
        store: Store,
        config: &Config,
        node: String,
        counters: Arc<Counters>,
    ) -> Worker {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Worker {
            store,
            node,
            secret: config.webhook_secret.clone().filter(|s| !s.is_empty()).map(String::into_bytes),
            timeout: Duration::from_secs_f64(config.webhook_timeout_secs.max(0.1)),
            retry_max_ms: (config.webhook_retry_max_secs * 1000.0).max(FIRST_RETRY_MS),
            client: Client::builder(TokioExecutor::new()).build(connector),
            counters,
        }
    }

    /// Delivers until `shutdown`. Whatever is in flight then is abandoned; its rows stay,
    /// and the next start delivers them again.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            let now = now_millis();
            let due = match self.store.webhook_due(now, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook outbox");
                    Vec::new()
                }
            };
            if due.is_empty() {
                let next = self.store.webhook_next_due().await.ok().flatten();
                let wait = next.map_or(IDLE_POLL, |at| {
                    Duration::from_millis((at - now).clamp(5, IDLE_POLL.as_millis() as i64) as u64)
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.store.webhook_events_queued() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            let deliveries = futures_util::future::join_all(due.iter().map(|e| self.deliver(e)));
            let outcomes = tokio::select! {
                outcomes = deliveries => outcomes,
                _ = shutdown.cancelled() => return,
            };
            for outcome in outcomes {
                if let Err(e) = self.store.record_webhook(outcome).await {
                    tracing::warn!(error = %e, "cannot record a webhook outcome; it will be delivered again");
                }
            }
        }
    }

    async fn deliver(&self, event: &WebhookEvent) -> WebhookOutcome {
        let delivery_id = format!("{}-{}", event.id, event.seq);
        let body = Body {
            event: &event.event,
            document: &event.doc,
            seq: event.seq,
            updated_at: event.updated_at,
            node: &self.node,
            delivery_id: delivery_id.clone(),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let timestamp = now_millis() / 1000;
        let mut request = hyper::Request::post(&event.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .header("X-Tandem-Event", &event.event)
            .header("X-Tandem-Delivery", &delivery_id)
            .header("X-Tandem-Timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            request = request.header("X-Tandem-Signature-256", sign(secret, timestamp, &body));
        }
        let result = match request.body(Full::new(Bytes::from(body))) {
            Err(e) => Err(format!("cannot build the request: {e}")),
            Ok(request) => match tokio::time::timeout(self.timeout, self.client.request(request))
                .await
            {
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                Ok(Err(e)) => Err(format!("request failed: {}", error_chain(&e))),
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("answered HTTP {}", response.status().as_u16())),
            },
        };
        match result {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %event.url, doc = %event.doc, event = %event.event, seq = event.seq, "webhook delivered");
                WebhookOutcome::Delivered { id: event.id, seq: event.seq }
            }
            Err(error) => {
                self.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let delay = self.backoff_ms(event.attempts);
                tracing::warn!(url = %event.url, doc = %event.doc, event = %event.event, attempts = event.attempts + 1, retry_in_ms = delay, %error, "webhook delivery failed");
                WebhookOutcome::Failed { id: event.id, error, retry_at: now_millis() + delay }
            }
        }
    }

    /// Exponential backoff with jitter: between half and all of 1 s × 2^attempts, capped.
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let full =
            (FIRST_RETRY_MS * 2f64.powi(attempts.clamp(0, 40) as i32)).min(self.retry_max_ms);
        (full * (0.5 + fastrand::f64() * 0.5)) as i64
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `timestamp.body`.
pub(crate) fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this cannot happen.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature matches HMAC-SHA256 as any receiver computes it (RFC 4231 case 2).
    #[test]
    fn signature_is_standard_hmac_sha256() {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(sign(b"k", 1, "{}").starts_with("sha256="));
        assert_eq!(sign(b"k", 1, "{}").len(), 7 + 64);
    }
}
