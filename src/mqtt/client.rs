//! One MQTT connection kept alive. rumqttc's event loop runs in its own task; it reconnects
//! with jittered exponential backoff after any error, resubscribes on every ConnAck, and reports
//! [`MqttEvent`]s on a bounded channel. Publishing never blocks the caller: while disconnected a
//! publish is dropped (clean sessions: rumqttc discards what was queued) and the caller re-asserts
//! its state on the next [`MqttEvent::Connected`].
//!
//! [`MqttHandle::publish_confirmed`] reports the broker's PUBACK for one publish. rumqttc does not
//! expose that per message, so the wrapper matches them itself: QoS 1 publishes leave in the
//! order they were queued (each shows up as `Outgoing::Publish(pkid)`), so a FIFO of waiters turns
//! into a map from packet id to waiter, and the PUBACK with that id fires it. A lost connection
//! drops every waiter unfired: the caller keeps the data and sends it again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
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
    pub last_will: Option<LastWill>,
}

/// A retained last-will message.
#[derive(Debug, Clone)]
pub struct LastWill {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
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
    waiters: Arc<Mutex<Waiters>>,
}

/// PUBACK waiters: queued in publish order until their packet id is known.
#[derive(Default)]
struct Waiters {
    queued: VecDeque<Option<oneshot::Sender<()>>>,
    by_pkid: HashMap<u16, oneshot::Sender<()>>,
}

impl Waiters {
    fn clear(&mut self) {
        self.queued.clear();
        self.by_pkid.clear();
    }
}

/// Publish refused: the outgoing queue is full (typically while disconnected).
#[derive(Debug, thiserror::Error)]
#[error("MQTT outgoing queue full or closed: {0}")]
pub struct PublishError(String);

impl MqttHandle {
    /// Queues a QoS 1 publish. An empty retained payload clears the retained message.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), PublishError> {
        self.queue(topic, payload, retain, None)
    }

    /// Queues a QoS 1 publish; the receiver fires when the broker acknowledges it, and is dropped
    /// unfired if the connection is lost first.
    pub fn publish_confirmed(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<oneshot::Receiver<()>, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.queue(topic, payload, retain, Some(tx))?;
        Ok(rx)
    }

    fn queue(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        waiter: Option<oneshot::Sender<()>>,
    ) -> Result<(), PublishError> {
        // Held across try_publish so the FIFO order is the order rumqttc sends in.
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.queued.push_back(waiter);
        let res = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload);
        if let Err(e) = res {
            w.queued.pop_back();
            return Err(PublishError(e.to_string()));
        }
        Ok(())
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
    if let Some(w) = &opts.last_will {
        o.set_last_will(rumqttc::LastWill::new(
            w.topic.clone(),
            w.payload.clone(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    let (client, eventloop) = AsyncClient::new(o, 1024);
    let (tx, rx) = mpsc::channel(1024);
    let waiters = Arc::new(Mutex::new(Waiters::default()));
    let handle = MqttHandle {
        client: client.clone(),
        waiters: waiters.clone(),
    };
    tokio::spawn(run(client, eventloop, opts, tx, waiters, cancel));
    (handle, rx)
}

async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    opts: ClientOptions,
    tx: mpsc::Sender<MqttEvent>,
    waiters: Arc<Mutex<Waiters>>,
    cancel: CancellationToken,
) {
    let lock = || waiters.lock().unwrap_or_else(|e| e.into_inner());
    let mut backoff = Duration::from_millis(100);
    let mut connected = false;
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
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut w = lock();
                if let Some(Some(waiter)) = w.queued.pop_front() {
                    w.by_pkid.insert(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = lock().by_pkid.remove(&ack.pkid) {
                    let _ = waiter.send(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                lock().clear();
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
