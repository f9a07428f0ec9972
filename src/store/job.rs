//! The writer's queue: what rooms and handlers ask a backend's writer to commit, and the
//! reply each gets once its group is committed (or failed). Shared by every backend, so
//! that group commit means the same thing whatever the database.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Appended, Result, Revocation, StoreError, WebhookOutcome};
use crate::id::DocId;

pub(super) enum Job {
    Append {
        doc: DocId,
        updates: Vec<Bytes>,
        /// The document's life the writer knows (0: any); PostgreSQL only.
        epoch: i64,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Compact {
        doc: DocId,
        snapshot: Vec<u8>,
        upto_seq: i64,
        epoch: i64,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// A deny-list entry (rare; it rides along with whatever group is committing).
    Revoke { revocation: Revocation, reply: oneshot::Sender<Result<()>> },
    /// Every stored row of a document goes; true if there was any.
    Delete { doc: DocId, reply: oneshot::Sender<Result<bool>> },
    /// What a webhook delivery attempt came to.
    Webhook { outcome: WebhookOutcome, reply: oneshot::Sender<Result<()>> },
}

/// What one job did, inside a group that committed.
pub(super) enum Done {
    Appended(Appended),
    /// An append to a document deleted under its writer: nothing written.
    Gone,
    Compacted(bool),
    Revoked,
    Deleted(bool),
    Recorded,
}

impl Job {
    pub(super) fn reply(self, result: Result<Done>) {
        // The room may have gone away (shutdown); nothing to tell then.
        match self {
            Job::Append { reply, doc, .. } => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Appended(a) => Ok(a),
                    Done::Gone => Err(StoreError::Deleted(doc.as_str().to_string())),
                    _ => Err(StoreError::Unavailable("writer mixed up replies".into())),
                }));
            }
            Job::Compact { reply, .. } => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Compacted(c) => Ok(c),
                    _ => Err(StoreError::Unavailable("writer mixed up replies".into())),
                }));
            }
            Job::Revoke { reply, .. } => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Revoked => Ok(()),
                    _ => Err(StoreError::Unavailable("writer mixed up replies".into())),
                }));
            }
            Job::Delete { reply, .. } => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Deleted(existed) => Ok(existed),
                    _ => Err(StoreError::Unavailable("writer mixed up replies".into())),
                }));
            }
            Job::Webhook { reply, .. } => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Recorded => Ok(()),
                    _ => Err(StoreError::Unavailable("writer mixed up replies".into())),
                }));
            }
        }
    }

    /// What the job is about, for log lines.
    pub(super) fn subject(&self) -> &str {
        match self {
            Job::Append { doc, .. } | Job::Compact { doc, .. } | Job::Delete { doc, .. } => {
                doc.as_str()
            }
            Job::Revoke { .. } => "(deny list)",
            Job::Webhook { .. } => "(webhook outbox)",
        }
    }
}
