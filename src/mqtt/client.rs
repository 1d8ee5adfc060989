//! One MQTT connection kept alive. rumqttc's event loop runs in its own task; it reconnects
//! with jittered exponential backoff after any error (reset only once a connection has held for
//! 30 s, so a broker or a rival client that keeps dropping us is not hammered), moves to the next
//! broker of its list after a failed connect, treats a refused subscription as a failed
//! connection, resubscribes on every ConnAck, and reports
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
    /// Brokers to try, as (host, port): the first one tried is picked at random (so a fleet
    /// spreads), the next one after a failed connect, and a broker that accepted is kept until
    /// its connection drops and a reconnect to it fails.
    pub brokers: Vec<(String, u16)>,
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
    subscriptions: std::sync::Arc<Vec<String>>,
    connection: std::sync::Arc<std::sync::atomic::AtomicU64>,
    broker: std::sync::Arc<std::sync::Mutex<String>>,
}

/// A connection that lasted at least this long resets the reconnect back-off; shorter ones (a
/// broker that accepts then drops us, another client taking our id) keep it growing.
const HELD: Duration = Duration::from_secs(30);

/// The longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long one connect attempt (TCP, TLS, CONNACK) may take before the next broker is tried.
const CONNECT_TIMEOUT_SECS: u64 = 5;

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

    /// Subscribes to every filter again: the broker re-sends their retained messages.
    pub fn resubscribe(&self) {
        for f in self.subscriptions.iter() {
            let _ = self.client.try_subscribe(f, QoS::AtLeastOnce);
        }
    }

    /// The broker of the current (or last) connection, `host:port`.
    pub fn broker(&self) -> String {
        self.broker.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Sends DISCONNECT (the broker then drops the last will).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// Whether the broker delivers through a shared subscription (`$share/{group}/{filter}`, MQTT
/// 5.0 §4.8.2; Mosquitto takes it from 3.1.1 clients too): on a connection of its own (client id
/// `{base}-probe`), subscribes `$share/marquee-probe/{topic}`, publishes one message on `topic`
/// and waits up to `within` for it. A broker that refuses the filter, or takes `$share/…` for
/// an ordinary topic, never delivers it: `false`.
pub async fn probe_shared(base: &ClientOptions, topic: &str, within: Duration) -> bool {
    let cancel = CancellationToken::new();
    let opts = ClientOptions {
        client_id: format!("{}-probe", base.client_id),
        subscriptions: vec![format!("$share/marquee-probe/{topic}")],
        last_will: None,
        ..base.clone()
    };
    let (handle, mut events) = connect(opts, cancel.clone());
    let delivered = tokio::time::timeout(within, async {
        while let Some(ev) = events.recv().await {
            match ev {
                // After the SUBSCRIBE on the wire: the broker takes them in order.
                MqttEvent::Connected => {
                    let _ = handle.publish(topic, b"probe".to_vec(), false);
                }
                MqttEvent::Message { topic: t, .. } if t == topic => return true,
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    cancel.cancel();
    delivered
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    max.mul_f64(0.5 + frac / 2.0)
}

/// The rumqttc options for broker `i` of `opts`.
fn options_for(opts: &ClientOptions, i: usize) -> MqttOptions {
    let (host, port) = opts.brokers[i % opts.brokers.len()].clone();
    let mut o = MqttOptions::new(opts.client_id.clone(), host, port);
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
    o
}

/// Opens the connection and starts its task. The task ends when `cancel` fires (after sending
/// DISCONNECT) and the event channel then closes.
///
/// # Panics
/// If `opts.brokers` is empty (configuration always names at least one).
pub fn connect(
    opts: ClientOptions,
    cancel: CancellationToken,
) -> (MqttHandle, mpsc::Receiver<MqttEvent>) {
    assert!(!opts.brokers.is_empty(), "no broker to connect to");
    let first = {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        u32::from_le_bytes(b) as usize % opts.brokers.len()
    };
    let (client, mut eventloop) = AsyncClient::new(options_for(&opts, first), 1024);
    let mut net = rumqttc::NetworkOptions::new();
    // Small packets (an alert, a receipt) go out at once, not after Nagle's 40 ms.
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(net);
    let (tx, rx) = mpsc::channel(1024);
    let (host, port) = &opts.brokers[first];
    let handle = MqttHandle {
        client: client.clone(),
        subscriptions: std::sync::Arc::new(opts.subscriptions.clone()),
        connection: Default::default(),
        broker: std::sync::Arc::new(std::sync::Mutex::new(format!("{host}:{port}"))),
    };
    let session = Session {
        client,
        eventloop,
        opts,
        tx,
        handle: handle.clone(),
        broker: first,
        backoff: Duration::from_millis(100),
        connected: None,
        refused: false,
        pending: Default::default(),
    };
    tokio::spawn(run(session, cancel));
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

/// Polls the connection until `cancel`, reconnecting (with back-off, and failover across the
/// brokers) and handing messages to the owner.
async fn run(mut c: Session, cancel: CancellationToken) {
    next_connection(&mut c.eventloop, &c.opts, &c.handle.connection);
    loop {
        let polled = tokio::select! {
            _ = cancel.cancelled() => break,
            p = c.eventloop.poll() => p,
        };
        let went_on = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => c.connected().await,
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                c.subscribed(&ack);
                true
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ev = MqttEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                    retained: p.retain,
                };
                c.tx.send(ev).await.is_ok()
            }
            Ok(_) => true,
            Err(e) => match c.lost(e.to_string()).await {
                Some(wait) => tokio::select! {
                    _ = cancel.cancelled() => false,
                    _ = tokio::time::sleep(wait) => true,
                },
                None => false,
            },
        };
        if !went_on {
            break;
        }
    }
    c.goodbye().await;
}

/// One client's connection state across reconnects.
struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    opts: ClientOptions,
    tx: mpsc::Sender<MqttEvent>,
    handle: MqttHandle,
    /// Index of the broker in use.
    broker: usize,
    backoff: Duration,
    /// Since when the current connection is up.
    connected: Option<std::time::Instant>,
    /// The broker refused a subscription on this connection: try the next broker.
    refused: bool,
    /// Filters subscribed on this connection and not yet answered, in order (SUBACKs come in
    /// the order of the SUBSCRIBEs).
    pending: std::collections::VecDeque<String>,
}

impl Session {
    fn name(&self) -> String {
        let (h, p) = &self.opts.brokers[self.broker % self.opts.brokers.len()];
        format!("{h}:{p}")
    }

    /// CONNACK: subscribe, tell the owner; false when the owner is gone.
    async fn connected(&mut self) -> bool {
        self.connected = Some(std::time::Instant::now());
        if let Ok(mut b) = self.handle.broker.lock() {
            *b = self.name();
        }
        self.pending.clear();
        for f in &self.opts.subscriptions {
            match self.client.try_subscribe(f, QoS::AtLeastOnce) {
                Ok(()) => self.pending.push_back(f.clone()),
                Err(e) => tracing::warn!(filter = %f, error = %e, "MQTT subscribe not queued"),
            }
        }
        self.tx.send(MqttEvent::Connected).await.is_ok()
    }

    /// SUBACK: a refused filter drops the connection.
    fn subscribed(&mut self, ack: &rumqttc::SubAck) {
        let filter = self.pending.pop_front().unwrap_or_default();
        if ack
            .return_codes
            .iter()
            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
        {
            // A client that cannot hear its topics only looks healthy: treat it as a failed
            // connection (the broker's ACL, or its limits, refused it).
            tracing::warn!(broker = %self.name(), filter = %filter, "the broker refused a subscription; disconnecting and trying again");
            self.refused = true;
            let _ = self.client.try_disconnect();
        }
    }

    /// A lost connection or a failed connect: the wait before the next attempt (on the next
    /// broker of the list after a failed connect or a refused subscription); `None` when the
    /// owner is gone.
    async fn lost(&mut self, reason: String) -> Option<Duration> {
        let was_connected = self.connected.is_some();
        if let Some(since) = self.connected.take() {
            if since.elapsed() >= HELD {
                self.backoff = Duration::from_millis(100);
            }
            tracing::warn!(broker = %self.name(), error = %reason, held_s = since.elapsed().as_secs(), "MQTT connection lost; reconnecting");
            self.tx.send(MqttEvent::Disconnected(reason)).await.ok()?;
        } else {
            tracing::warn!(broker = %self.name(), error = %reason, "MQTT connect failed");
        }
        let move_on = !was_connected | std::mem::take(&mut self.refused);
        if move_on && self.opts.brokers.len() > 1 {
            self.broker = (self.broker + 1) % self.opts.brokers.len();
            tracing::info!(broker = %self.name(), "trying the next broker");
            let net = self.eventloop.network_options();
            self.eventloop.mqtt_options = options_for(&self.opts, self.broker);
            self.eventloop.set_network_options(net);
        }
        let wait = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        next_connection(&mut self.eventloop, &self.opts, &self.handle.connection);
        Some(wait)
    }

    /// Says goodbye properly (the will is not sent on a clean DISCONNECT), then stops polling:
    /// a further poll would silently reconnect.
    async fn goodbye(&mut self) {
        if self.connected.is_some() {
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = self.eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}
