//! MQTT: the only module that touches rumqttc and rumqttd. [`broker`] runs the embedded broker;
//! [`client`] keeps one connection alive (reconnecting with jittered backoff, resubscribing on
//! every ConnAck) and turns it into a stream of [`client::MqttEvent`]s plus a publish handle.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod client;

pub use client::{
    ClientOptions, LastWill, MqttEvent, MqttHandle, Tls, WillFn, connect, probe_shared,
};

/// Parses broker URLs (`mqtt://host:port`, `tcp://`, or `mqtts://` / `ssl://` for TLS; default
/// ports 1883 and 8883) into (host, port) pairs and whether they use TLS. Every problem is
/// pushed to `problems`, naming `key` and the URL; all URLs must agree on TLS.
pub fn parse_broker_urls(
    urls: &[String],
    key: &str,
    problems: &mut Vec<String>,
) -> (Vec<(String, u16)>, bool) {
    let mut out = Vec::new();
    let mut tls_seen = None;
    for (i, url) in urls.iter().enumerate() {
        let place = if urls.len() > 1 {
            format!("{key}[{i}]")
        } else {
            key.to_owned()
        };
        match url::Url::parse(url) {
            Ok(u)
                if matches!(u.scheme(), "mqtt" | "tcp" | "mqtts" | "ssl")
                    && u.host_str().is_some_and(|h| !h.is_empty()) =>
            {
                let tls = matches!(u.scheme(), "mqtts" | "ssl");
                if *tls_seen.get_or_insert(tls) != tls {
                    problems.push(format!(
                        "{place}: {url:?}: mix of TLS and plain brokers; use mqtts:// for all or none"
                    ));
                }
                let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
                out.push((u.host_str().unwrap_or_default().to_owned(), port));
            }
            _ => problems.push(format!(
                "{place}: {url:?} is not a broker URL like mqtt://127.0.0.1:1883"
            )),
        }
    }
    if urls.is_empty() {
        problems.push(format!("{key}: name at least one broker"));
    }
    (out, tls_seen.unwrap_or(false))
}
