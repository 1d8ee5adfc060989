//! One MQTT connection kept alive. rumqttc's event loop runs in its own task; it reconnects
//! with jittered exponential backoff after any error, resubscribes on every ConnAck, and reports
//! [`MqttEvent`]s on a bounded channel. Publishing never blocks the caller: while disconnected a
//! publish is dropped (clean sessions: rumqttc discards what was queued) and the caller re-asserts
//! its state on the next [`MqttEvent::Connected`].
//! Delivery that must not be lost is acknowledged end to end by the application (see the agent's
//! outbox), never by a broker PUBACK: a broker acknowledges, then drops, messages that nobody is
//! subscribed to yet.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client id.
    pub client_id: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Largest packet in either direction.
    pub max_packet: usize,
    /// Filters to (re)subscribe on every connection, at QoS 1.
    pub subscriptions: Vec<String>,
    /// Last will, if any.
    pub last_will: Option<WillFn>,
    /// TLS (`mqtts://`), if any.
    pub tls: Option<Tls>,
}

/// TLS to the broker: the CA certificates to trust (PEM) and, for mutual TLS, a client
/// certificate chain and key (PEM).
#[derive(Clone)]
pub struct Tls {
    /// Trusted CA certificates, PEM.
    pub ca: Vec<u8>,
    /// Client certificate chain and private key, PEM.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_bytes", &self.ca.len())
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

/// A retained last-will message.
#[derive(Debug, Clone)]
pub struct LastWill {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Makes the last will for connection number `n` (1 for the first, +1 for each reconnect): an
/// agent signs a will that names its connection, so an old will replayed later is refused.
#[derive(Clone)]
pub struct WillFn(pub std::sync::Arc<dyn Fn(u64) -> LastWill + Send + Sync>);

impl WillFn {
    /// The same will for every connection.
    pub fn fixed(will: LastWill) -> WillFn {
        WillFn(std::sync::Arc::new(move |_| will.clone()))
    }
}

impl std::fmt::Debug for WillFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WillFn")
    }
}

/// What happened on the connection.
#[derive(Debug, Clone)]
pub enum MqttEvent {
    /// Connected (again) and subscribed: re-assert retained state now.
    Connected,
    /// Lost the connection; reconnecting.
    Disconnected(String),
    /// A message on a subscribed topic.
    Message {
        /// Topic.
        topic: String,
        /// Payload bytes.
        payload: Bytes,
        /// Delivered as a retained message (sent on subscribe).
        retained: bool,
    },
}

/// Publishes on the connection.
#[derive(Clone)]
pub struct MqttHandle {
    client: AsyncClient,
    connection: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Publish refused: the outgoing queue is full (typically while disconnected).
#[derive(Debug, thiserror::Error)]
#[error("MQTT outgoing queue full or closed: {0}")]
pub struct PublishError(String);

impl MqttHandle {
    /// Queues a QoS 1 publish. An empty retained payload clears the retained message.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), PublishError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| PublishError(e.to_string()))
    }

    /// The number of the current (or next) connection: 1 for the first, +1 per reconnect.
    pub fn connection(&self) -> u64 {
        self.connection.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends DISCONNECT (the broker then drops the last will).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    max.mul_f64(0.5 + frac / 2.0)
}

/// Opens the connection and starts its task. The task ends when `cancel` fires (after sending
/// DISCONNECT) and the event channel then closes.
pub fn connect(
    opts: ClientOptions,
    cancel: CancellationToken,
) -> (MqttHandle, mpsc::Receiver<MqttEvent>) {
    let mut o = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
    o.set_keep_alive(opts.keep_alive);
    o.set_max_packet_size(opts.max_packet, opts.max_packet);
    o.set_clean_session(true);
    if let Some((u, p)) = &opts.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &opts.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client_auth.clone(),
            },
        ));
    }
    let (client, eventloop) = AsyncClient::new(o, 1024);
    let (tx, rx) = mpsc::channel(1024);
    let handle = MqttHandle {
        client: client.clone(),
        connection: Default::default(),
    };
    tokio::spawn(run(
        client,
        eventloop,
        opts,
        tx,
        handle.connection.clone(),
        cancel,
    ));
    (handle, rx)
}

/// Numbers the next connection and gives it its own last will.
fn next_connection(
    eventloop: &mut EventLoop,
    opts: &ClientOptions,
    counter: &std::sync::atomic::AtomicU64,
) {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if let Some(will) = &opts.last_will {
        let w = (will.0)(n);
        eventloop.mqtt_options.set_last_will(rumqttc::LastWill::new(
            w.topic,
            w.payload,
            QoS::AtLeastOnce,
            true,
        ));
    }
}

async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    opts: ClientOptions,
    tx: mpsc::Sender<MqttEvent>,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected = false;
    next_connection(&mut eventloop, &opts, &counter);
    loop {
        let polled = tokio::select! {
            _ = cancel.cancelled() => break,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                connected = true;
                for f in &opts.subscriptions {
                    if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                        tracing::warn!(filter = %f, error = %e, "MQTT subscribe not queued");
                    }
                }
                if tx.send(MqttEvent::Connected).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ev = MqttEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                    retained: p.retain,
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let reason = e.to_string();
                if connected {
                    connected = false;
                    tracing::warn!(broker = %format!("{}:{}", opts.host, opts.port), error = %reason, "MQTT connection lost; reconnecting");
                    if tx.send(MqttEvent::Disconnected(reason)).await.is_err() {
                        break;
                    }
                } else {
                    tracing::debug!(error = %reason, "MQTT connect failed; retrying");
                }
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                next_connection(&mut eventloop, &opts, &counter);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Say goodbye properly (the will is not sent on a clean DISCONNECT), then stop polling: a
    // further poll would silently reconnect.
    if connected {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}
