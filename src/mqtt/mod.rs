//! MQTT: the only module that touches rumqttc and rumqttd. [`broker`] runs the embedded broker;
//! [`client`] keeps one connection alive (reconnecting with jittered backoff, resubscribing on
//! every ConnAck) and turns it into a stream of [`client::MqttEvent`]s plus a publish handle.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod client;

pub use client::{ClientOptions, LastWill, MqttEvent, MqttHandle, Tls, WillFn, connect};
