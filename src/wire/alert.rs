//! The alert payload (`kind` = `alert`), published retained on `marquee/v1/alert/{scope}`.
//! An alert preempts normal content on every display in its scope until it expires or a signed
//! clear (`kind` = `alert_clear`) for its id arrives.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An emergency alert as screens receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Alert id (stable across updates of the same alert).
    pub id: String,
    /// `minor`, `moderate`, `severe`, `extreme` (for styling).
    pub severity: String,
    /// Text per language.
    pub text: BTreeMap<String, String>,
    /// When it was raised.
    pub issued_at: DateTime<Utc>,
    /// When it ends by itself.
    pub expires_at: DateTime<Utc>,
    /// When it starts, for an alert published ahead of its start (CAP `<effective>` or
    /// `<onset>` in the future). Only in `alert_at` payloads: an agent that does not know that
    /// kind refuses it and so never shows the alert early; the daemon publishes it again as an
    /// `alert` when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
}

impl Alert {
    /// Whether the alert is on screens at `now`: started and not expired.
    pub fn showing(&self, now: DateTime<Utc>) -> bool {
        self.starts_at.is_none_or(|s| s <= now) && now < self.expires_at
    }

    /// When it went (or goes) on screens: its start, else when it was raised.
    pub fn shown_from(&self) -> DateTime<Utc> {
        self.starts_at.unwrap_or(self.issued_at)
    }
}

/// Ends an alert before its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertClear {
    /// Id of the alert that ends.
    pub id: String,
}
