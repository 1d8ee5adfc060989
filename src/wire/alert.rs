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
}

/// Ends an alert before its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertClear {
    /// Id of the alert that ends.
    pub id: String,
}
