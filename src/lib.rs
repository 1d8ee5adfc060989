//! Marquee: a publicity daemon. A central scheduler turns playlist files into signed, retained MQTT
//! timelines for display agents (lobby, subway, bus and public screens).
//!
//! The crate is split the way the design asks (see `docs/` and the module docs):
//! pure protocol code in [`wire`], pure scheduling logic in [`domain`], and the runtime shells
//! ([`scheduler`], [`mqtt`], [`store`], [`http`], [`daemon`]) that feed `now` in and perform what comes out.

pub mod agent;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod fleet;
pub mod http;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod preview;
pub mod scheduler;
pub mod sms;
pub mod store;
pub mod wire;
