//! The wire protocol v1, shared by the daemon and the display agents: typed topics ([`topic`]),
//! the timeline payload ([`timeline`]) and the signed envelope ([`envelope`]).
//!
//! No I/O, no async runtime, no MQTT crate: a display vendor can read this module alone
//! (with `docs/protocol.md`) and implement a compatible agent.

pub mod agent;
pub mod alert;
pub mod envelope;
pub mod timeline;
pub mod topic;

pub use envelope::{
    KeyPair, PublicKey, Signed, SignedBody, WireError, sign, sign_timeline, verify,
};
pub use timeline::{Item, Segment, Target, Tier, Timeline};
pub use topic::{Topic, valid_name};
