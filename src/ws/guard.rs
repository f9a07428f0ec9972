//! What one connection may send: the per-connection limits, applied in the connection's
//! own task (so on all cores, before the room sees anything). Pure: time is passed in, and
//! a frame either comes out decoded and within bounds or as the error that closes the
//! connection.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::Error;
use crate::limit::Bucket;
use crate::protocol::{self, FrameLimits, Incoming};

/// State requests a connection may make at once before the per-minute rate applies.
const STATE_REQUEST_BURST: f64 = 10.0;

pub(crate) struct Guard {
    frame: FrameLimits,
    updates: Bucket,
    awareness_bytes: Bucket,
    state_requests: Bucket,
    /// Awareness client ids this connection announced a state for.
    ids: HashSet<u64>,
    max_ids: usize,
}

impl Guard {
    pub(crate) fn new(config: &Config, now: Instant) -> Guard {
        let awareness_burst = 16.0 * config.max_awareness_bytes as f64;
        Guard {
            frame: FrameLimits {
                max_awareness_entries: config.max_awareness_ids.max(1),
                max_awareness_bytes: config.max_awareness_bytes,
            },
            updates: Bucket::new(config.max_updates_per_sec, config.max_updates_burst, now),
            awareness_bytes: Bucket::new(config.max_awareness_bytes_per_sec, awareness_burst, now),
            state_requests: Bucket::new(
                config.max_state_requests_per_min / 60.0,
                STATE_REQUEST_BURST,
                now,
            ),
            ids: HashSet::new(),
            max_ids: config.max_awareness_ids.max(1),
        }
    }

    /// Decodes `frame` and charges it against this connection's limits.
    pub(crate) fn check(&mut self, frame: &Bytes, now: Instant) -> Result<Vec<Incoming>, Error> {
        // decode_frame guards yrs's own decoders; this catches a bug of ours as well, so
        // that it costs this connection (1011) and nothing else.
        let decoded = catch_unwind(AssertUnwindSafe(|| protocol::decode_frame(frame, &self.frame)));
        let msgs = match decoded {
            Ok(result) => result?,
            Err(_) => {
                tracing::error!(bytes = frame.len(), "decoding a frame panicked");
                return Err(Error::Internal);
            }
        };
        for msg in &msgs {
            match msg {
                Incoming::Update(_) => {
                    if !self.updates.take(1.0, now) {
                        return Err(Error::RateLimited("too many updates per second".into()));
                    }
                }
                Incoming::SyncStep1(_) => {
                    if !self.state_requests.take(1.0, now) {
                        return Err(Error::RateLimited("too many state requests".into()));
                    }
                }
                Incoming::Awareness { update } => {
                    let bytes: usize = update.clients.values().map(|e| e.json.len()).sum();
                    if !self.awareness_bytes.take(bytes as f64, now) {
                        return Err(Error::RateLimited("too much awareness per second".into()));
                    }
                    for (id, entry) in &update.clients {
                        if &*entry.json != "null" {
                            self.ids.insert(id.get());
                        }
                    }
                    if self.ids.len() > self.max_ids {
                        return Err(Error::TooManyAwarenessIds { limit: self.max_ids });
                    }
                }
                Incoming::QueryAwareness => {}
            }
        }
        Ok(msgs)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use yrs::ClientID;
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};

    use super::*;

    fn config() -> Config {
        Config::for_data_dir("/nonexistent")
    }

    fn presence(id: u64, json: &str) -> Bytes {
        let mut update = AwarenessUpdate { clients: Default::default() };
        update
            .clients
            .insert(ClientID::new(id), AwarenessUpdateEntry { clock: 1, json: json.into() });
        protocol::awareness(&update)
    }

    #[test]
    fn updates_beyond_the_burst_close_with_1008() {
        let t0 = Instant::now();
        let mut guard = Guard::new(&config(), t0);
        let update = protocol::sync_update(&[0, 0]);
        for _ in 0..1000 {
            guard.check(&update, t0).expect("within the burst");
        }
        assert_eq!(guard.check(&update, t0).map(|_| ()).map_err(|e| e.close_code()), Err(1008));
        // 200/s refill: a second later, 200 more.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..200 {
            guard.check(&update, t1).expect("refilled");
        }
    }

    #[test]
    fn a_connection_announces_a_bounded_number_of_ids() {
        let t0 = Instant::now();
        let mut guard = Guard::new(&config(), t0);
        for id in 0..8 {
            guard.check(&presence(id, "{}"), t0).expect("within the limit");
        }
        guard.check(&presence(3, "{\"again\":1}"), t0).expect("the same id again is fine");
        guard.check(&presence(100, "null"), t0).expect("a removal announces nothing");
        let err = guard.check(&presence(8, "{}"), t0).unwrap_err();
        assert_eq!(err.close_code(), 1008);
    }

    #[test]
    fn awareness_bytes_are_rate_limited() {
        let t0 = Instant::now();
        let mut guard = Guard::new(&config(), t0);
        let state = format!("{{\"a\":\"{}\"}}", "x".repeat(60_000));
        let frame = presence(1, &state);
        let sent = (0..100).take_while(|_| guard.check(&frame, t0).is_ok()).count();
        assert_eq!(sent, 17, "a 1 MiB burst of 60 KB states");
    }

    #[test]
    fn state_requests_are_rate_limited() {
        let t0 = Instant::now();
        let mut guard = Guard::new(&config(), t0);
        let step1 = protocol::sync_step1(&yrs::StateVector::default());
        let sent = (0..100).take_while(|_| guard.check(&step1, t0).is_ok()).count();
        assert_eq!(sent, 10);
    }
}
