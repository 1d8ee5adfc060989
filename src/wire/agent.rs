//! What agents publish: a retained status (with an offline last-will) and event batches (acks
//! and proof of play). Agents are not trusted signers; the daemon treats these as reports.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `marquee/v1/agent/{display}/status`, retained. The last-will carries `online: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Display id.
    pub display: String,
    /// Whether the agent is connected.
    pub online: bool,
    /// The agent's channel.
    pub channel: String,
    /// Applied timeline: topic and version (`None` before any).
    pub timeline: Option<Applied>,
    /// Alert on screen now, if any (id).
    pub alert: Option<String>,
    /// Agent software version.
    pub agent_version: String,
    /// When the agent process started.
    pub started_at: DateTime<Utc>,
    /// When this status was written.
    pub at: DateTime<Utc>,
    /// The agent's MQTT connection number in this run (1, 2, … per reconnect). The last will
    /// names the connection it was made for, so the daemon takes a will only for the
    /// connection it last heard online, once.
    #[serde(default)]
    pub connection: u64,
    /// Which agent process this is: `{host}/{boot id}/{pid}`. Two instances reporting for one
    /// display (a copied config) are flagged as a conflict.
    #[serde(default)]
    pub instance: String,
    /// The broker the agent is connected to (`host:port`).
    #[serde(default)]
    pub broker: String,
    /// The highest payload version the agent holds on any topic: a daemon whose database was
    /// restored from an old backup continues above it.
    #[serde(default)]
    pub held_max: u64,
}

/// A payload the agent applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Topic it came on.
    pub topic: String,
    /// Its version.
    pub version: u64,
}

/// One report. `id` is `{display}:{outbox}:{sequence}`: unique per display for ever, so the
/// daemon stores each event once however often it is redelivered. The daemon keys events by
/// (display, id) and refuses an id that does not start with the batch's `{display}:{outbox}:`, so
/// one display cannot pre-empt or overwrite another's ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id.
    pub id: String,
    /// When it happened (agent clock).
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Kinds of report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A new timeline was verified and applied.
    TimelineApplied {
        /// Topic.
        topic: String,
        /// Version.
        version: u64,
        /// Milliseconds from the daemon signing it to the agent applying it.
        latency_ms: i64,
    },
    /// An alert went on screen.
    AlertDisplayed {
        /// Alert id.
        alert: String,
        /// Milliseconds from signing to display.
        latency_ms: i64,
    },
    /// Proof of play: an item was on screen from `start` to `end`.
    Play {
        /// Item id.
        item: String,
        /// Playlist id (or `fallback` for the agent's local fallback).
        playlist: String,
        /// Language shown.
        lang: String,
        /// Start.
        start: DateTime<Utc>,
        /// End.
        end: DateTime<Utc>,
    },
    /// A payload was refused (forged, replayed, rolled back, expired).
    Refused {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

/// `marquee/v1/agent/{display}/events`: a batch, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Display id.
    pub display: String,
    /// The agent's outbox (a random id per agent cache database), the middle part of every
    /// event id in the batch; echoed in the receipt.
    pub outbox: String,
    /// The agent's sequence number of the last event in the batch (echoed in the ack).
    pub upto: u64,
    /// Events.
    pub events: Vec<Event>,
}

/// The daemon's receipt (signed, on `marquee/v1/agent/{display}/ack`): every event of the agent
/// up to sequence `upto` is stored. Only then does the agent delete them from its outbox; a PUBACK
/// from the broker is not enough (a broker drops messages nobody is subscribed to yet). The agent
/// refuses a receipt for another outbox (a receipt replayed after its cache was reset) or for a
/// sequence it never assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    /// Display id.
    pub display: String,
    /// The outbox whose events are stored.
    pub outbox: String,
    /// Last stored sequence number.
    pub upto: u64,
}

/// `marquee/v1/daemon/status`, retained: published on every connection of the daemon, after its
/// subscriptions; the last-will says `online: false`. Agents send their buffered events as soon as
/// it says online (a hint only: receipts are what counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Whether the daemon is connected.
    pub online: bool,
}
