//! What the use cases share: the context they run in ([`Ctx`]), who asks ([`Principal`]), their
//! typed errors ([`Error`]) and the audit write ([`audit`]).
//!
//! The use cases themselves live by area: alerts and CAP in [`crate::alerts`], campaigns in
//! [`crate::sms::campaigns`]. The HTTP API, the CAP feed poller and the held-alert starter call
//! the same functions; none of them holds the web server's state, and none answers HTTP: the
//! handlers in [`crate::http`] parse a request, call, and turn the outcome or the [`Error`] into
//! JSON (`http::error` maps each variant to its status).

use std::sync::Arc;

use crate::config::{Config, Role};
use crate::store::{Store, StoreError};

/// What a use case may touch. Cheap to share (`Arc`s and channel senders).
pub struct Ctx {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// The database.
    pub store: Arc<Store>,
    /// Signed retained publications (alerts) go through the scheduler, the single writer of
    /// retained topics.
    pub publisher: tokio::sync::mpsc::Sender<crate::scheduler::PublishRequest>,
    /// Wakes the SMS dispatcher after a campaign change.
    pub sms_waker: crate::sms::dispatch::Waker,
    /// Wakes the task that starts alerts held until their CAP start time.
    pub held_alerts: Arc<tokio::sync::Notify>,
    /// The daemon's signing key (for the audit anchor).
    pub signing: Arc<crate::wire::KeyPair>,
    /// The display registry (reach of the two-person rule; who has not acknowledged).
    pub registry: Arc<crate::registry::Registry>,
}

/// Who asks: an API token (or the daemon itself, for the CAP feed and held alerts).
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token name (recorded in the audit log).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// May skip the two-person rule.
    pub emergency: bool,
}

/// Why a use case did not do what was asked. The HTTP layer maps `Invalid` to 400, `NotFound`
/// to 404, `Conflict` to 409, `Forbidden` to 403, a full disk to 507 and the rest to 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; `field` names it as the request spells it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such alert or campaign.
    #[error("{0}")]
    NotFound(String),
    /// The thing is not in a state that allows this (`code`: `wrong_state`, `not_pending`,
    /// `missed_start`, `approve_the_alert`).
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The two-person rule: the second person must be another token.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed (a full disk among others).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log could not be written (so nothing was changed).
    #[error("audit log: {0}")]
    Audit(StoreError),
    /// The daemon itself failed (a task that is not running, a lost reply).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A bad request field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A state conflict.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    /// Whether the request itself was refused (a bad field, a missing thing, a wrong state, the
    /// two-person rule), so asking again unchanged cannot succeed; the rest are the daemon's
    /// own failures, worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::Invalid { .. }
                | Error::NotFound(_)
                | Error::Conflict { .. }
                | Error::Forbidden(_)
        )
    }

    /// Whether it failed for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Store(e) | Error::Audit(e) if e.is_disk_full())
    }
}

/// Records a change in the audit log (before it takes effect: no audit, no change), then signs
/// the log's new head outside the database ([`Anchoring`]).
pub async fn audit(
    ctx: &Ctx,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), Error> {
    let entry = crate::store::audit::NewEntry::new(actor, action, target, detail);
    let anchoring = ctx.anchoring();
    ctx.store
        .call(move |s| {
            anchoring.write(s.audit(chrono::Utc::now(), &entry)?);
            Ok(())
        })
        .await
        .map_err(Error::Audit)
}

impl Ctx {
    /// What signs the audit log's head after a write (run it where the write ran: off the async
    /// threads).
    pub fn anchoring(&self) -> Anchoring {
        Anchoring {
            keys: self.signing.clone(),
            data_dir: self.cfg.data_dir.clone(),
        }
    }
}

/// Signs the head of the audit log and writes it beside the database.
pub struct Anchoring {
    keys: Arc<crate::wire::KeyPair>,
    data_dir: std::path::PathBuf,
}

impl Anchoring {
    /// Writes the signed head (`seq`, `hash`), so a deleted tail or a rewritten log shows
    /// (`marquee audit verify`). A failure is logged: the entry is already committed.
    pub fn write(&self, (seq, hash): (u64, String)) {
        if let Err(e) =
            crate::store::anchor::Anchor::sign(&self.keys, seq, &hash).write(&self.data_dir)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot write the audit anchor");
        }
    }
}
