//! The display agent (`marquee agent`): subscribes to its channel's and its own timeline and to
//! the alert scopes that reach it; verifies every payload with the daemon's pinned public key;
//! keeps the last verified payloads on disk; plays by its own clock ([`player`]); renders
//! ([`render`], [`web`]); and reports status (retained, offline last-will) and events (timeline
//! applied, alert displayed, proof of play) from a durable outbox that survives being offline.
//! Events leave the outbox only when the daemon's signed receipt says it stored them.

pub mod config;
pub mod player;
pub mod render;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use self::config::{AgentConfig, RenderKind};
use self::player::{Frame, FrameKind, effective, frame_at};
use self::render::Renderer;
use crate::mqtt::{self, ClientOptions, LastWill, MqttEvent, MqttHandle};
use crate::store::agent::AgentStore;
use crate::wire::agent::{Applied, Event, EventBatch, EventKind, Status};
use crate::wire::alert::Alert;
use crate::wire::{Signed, SignedBody, Timeline, Topic, WireError, verify};

/// Events sent per batch.
const BATCH: usize = 500;
/// A batch not receipted by the daemon within this is sent again (the daemon stores each event id
/// once, so a resend never counts twice); the wait doubles up to [`MAX_ACK_WAIT`] while receipts
/// stay away, so a fleet does not flood the broker while the daemon is down.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Longest wait between resends.
const MAX_ACK_WAIT: Duration = Duration::from_secs(60);

/// The topics an agent listens to.
struct Topics {
    channel: String,
    display: String,
    alerts: Vec<String>,
    status: String,
    events: String,
    ack: String,
    daemon: String,
}

struct Agent {
    cfg: AgentConfig,
    topics: Topics,
    store: Arc<AgentStore>,
    mqtt: MqttHandle,
    renderer: Box<dyn Renderer>,
    /// Per topic: the version and exact bytes last applied (rollback protection, re-assert detection).
    held: HashMap<String, (u64, Vec<u8>)>,
    channel_tl: Option<(u64, Timeline)>,
    display_tl: Option<(u64, Timeline)>,
    /// Per alert topic: the alert in force.
    alerts: BTreeMap<String, Alert>,
    current: Option<Frame>,
    acked_alerts: Vec<String>,
    started_at: DateTime<Utc>,
    connected: bool,
    /// The batch awaiting the daemon's receipt: its last sequence number and when it was sent.
    in_flight: Option<(u64, tokio::time::Instant)>,
    /// Current wait for a receipt before resending.
    ack_wait: Duration,
    /// Random id of the outbox database, part of every event id.
    instance: String,
    /// The highest sequence number sent in this process: receipts above it are refused.
    sent_upto: u64,
    /// This process (see [`instance_id`]).
    instance_id: String,
    /// Per topic: start of the current minute, refusals reported in it, refusals not reported.
    refusals: HashMap<String, (tokio::time::Instant, u32, u64)>,
}

/// Refusal events reported per topic and minute (see [`Agent::refused`]).
const REFUSALS_PER_MINUTE: u32 = 5;

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.cache_dir)
        .with_context(|| format!("cannot create cache_dir {}", cfg.cache_dir.display()))?;
    let db = cfg.cache_dir.join("agent.db");
    let store =
        Arc::new(AgentStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let topics = Topics::new(&cfg);
    let cancel = CancellationToken::new();
    let renderer = renderer(&cfg, &cancel).await?;
    let started_at = Utc::now();
    let instance_id = instance_id();
    let will = last_will(&cfg, &topics, started_at, &instance_id);
    let mut subscriptions = vec![
        topics.channel.clone(),
        topics.display.clone(),
        topics.ack.clone(),
    ];
    subscriptions.extend(topics.alerts.iter().cloned());
    let (mqtt, mut events) = mqtt::connect(
        ClientOptions {
            client_id: format!("marquee-agent-{}", cfg.id),
            brokers: cfg.brokers.clone(),
            credentials: cfg.credentials.clone(),
            keep_alive: cfg.keep_alive,
            max_packet: cfg.max_payload,
            subscriptions,
            tls: cfg.tls.clone(),
            last_will: Some(will),
        },
        cancel.child_token(),
    );
    let mut agent = Agent {
        cfg,
        topics,
        store: store.clone(),
        mqtt,
        renderer,
        held: HashMap::new(),
        channel_tl: None,
        display_tl: None,
        alerts: BTreeMap::new(),
        current: None,
        acked_alerts: Vec::new(),
        started_at,
        connected: false,
        in_flight: None,
        ack_wait: ACK_WAIT,
        instance: store.instance()?,
        sent_upto: 0,
        instance_id,
        refusals: HashMap::new(),
    };
    if agent.cfg.report_key.is_none() {
        tracing::warn!(
            "no report_key_file: this display's reports (status, plays, alert acks) go unsigned and the daemon drops them; register it with `marquee display add`"
        );
    }
    agent.restore_cache()?;
    tracing::info!(display = %agent.cfg.id, channel = %agent.cfg.channel, brokers = ?agent.cfg.brokers, "agent started");
    agent.serve(&mut events).await?;
    agent.goodbye(&mut events).await;
    cancel.cancel();
    tracing::info!("agent stopped");
    Ok(())
}

impl Topics {
    fn new(cfg: &AgentConfig) -> Topics {
        let p = &cfg.topic_prefix;
        Topics {
            channel: Topic::ChannelTimeline(cfg.channel.clone()).render(p),
            display: Topic::DisplayTimeline(cfg.id.clone()).render(p),
            alerts: ["all", cfg.channel.as_str(), cfg.id.as_str()]
                .iter()
                .flat_map(|s| {
                    [
                        Topic::Alert((*s).to_owned()).render(p),
                        Topic::AlertHeld((*s).to_owned()).render(p),
                    ]
                })
                .collect(),
            status: Topic::AgentStatus(cfg.id.clone()).render(p),
            events: Topic::AgentEvents(cfg.id.clone()).render(p),
            ack: Topic::AgentAck(cfg.id.clone()).render(p),
            daemon: Topic::DaemonStatus.render(p),
        }
    }
}

/// The configured renderer (the web one starts its server here).
async fn renderer(
    cfg: &AgentConfig,
    cancel: &CancellationToken,
) -> anyhow::Result<Box<dyn Renderer>> {
    Ok(match cfg.render {
        RenderKind::Jsonl => Box::new(render::Jsonl {
            display: cfg.id.clone(),
        }),
        RenderKind::Terminal => Box::new(render::Terminal),
        RenderKind::Web => {
            let (web, addr) = web::start(&cfg.id, cfg.web_listen, cancel.clone()).await?;
            tracing::info!(url = %format!("http://{addr}/"), "web renderer listening; point the kiosk browser at it");
            Box::new(web)
        }
    })
}

/// The will of connection n, signed when that connection is made (the broker sends it if the
/// connection drops): an offline status that names the connection, so an old will replayed
/// later is refused.
fn last_will(
    cfg: &AgentConfig,
    topics: &Topics,
    started_at: DateTime<Utc>,
    instance: &str,
) -> mqtt::WillFn {
    let offline = Status {
        display: cfg.id.clone(),
        online: false,
        channel: cfg.channel.clone(),
        timeline: None,
        alert: None,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        at: started_at,
        connection: 0,
        instance: instance.to_owned(),
        broker: String::new(),
        held_max: 0,
    };
    let (key, topic) = (cfg.report_key.clone(), topics.status.clone());
    mqtt::WillFn(Arc::new(move |n| {
        let now = Utc::now();
        let status = Status {
            connection: n,
            at: now,
            ..offline.clone()
        };
        LastWill {
            topic: topic.clone(),
            payload: report_bytes(
                key.as_deref(),
                &topic,
                Signed::Status(status),
                now,
                STATUS_LIFETIME,
            ),
        }
    }))
}

impl Agent {
    /// Plays, takes the broker's messages, reports, until SIGTERM or SIGINT (SIGHUP reloads
    /// the keys).
    async fn serve(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<MqttEvent>,
    ) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut flush = tokio::time::interval(self.cfg.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(STATUS_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = Utc::now();
            self.render(now);
            let mut until = self.current.as_ref().map_or(now, |f| f.until);
            if let Some(start) = self.next_alert_start(now) {
                until = until.min(start);
            }
            let wait = (until - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                ev = events.recv() => match ev {
                    Some(MqttEvent::Connected) => {
                        self.connected = true;
                        self.publish_status();
                        self.flush();
                    }
                    Some(MqttEvent::Disconnected(_)) => {
                        self.connected = false;
                        self.in_flight = None;
                    }
                    Some(MqttEvent::Message { topic, payload, .. }) => self.on_message(&topic, &payload),
                    None => return Ok(()),
                },
                _ = flush.tick() => self.flush(),
                _ = heartbeat.tick() => self.publish_status(),
                _ = hup.recv() => self.reload_keys(),
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }

    /// Leaves the last frame on screen, records its play, hands over what is buffered and
    /// says goodbye (an offline status).
    async fn goodbye(&mut self, events: &mut tokio::sync::mpsc::Receiver<MqttEvent>) {
        self.finish_frame(Utc::now());
        self.drain(events, Duration::from_secs(3)).await;
        if self.connected {
            let mut status = self.status();
            status.online = false;
            let bytes = self.report(&self.topics.status, Signed::Status(status), STATUS_LIFETIME);
            let _ = self.mqtt.publish(&self.topics.status, bytes, true);
        }
    }
}

impl Agent {
    /// Loads the verified payloads from the cache: the agent plays at once, broker or not.
    fn restore_cache(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        for (topic, version, bytes) in self.store.payloads()? {
            // Held versions survive even when the payload has expired: no rollback after a restart.
            self.held.insert(topic.clone(), (version, bytes.clone()));
            match self.verify(&topic, &bytes, None, now) {
                Ok(body) => {
                    tracing::info!(topic = %topic, version, "playing cached payload");
                    self.apply(&topic, body.version, body.payload);
                }
                Err(WireError::Expired(at)) => {
                    tracing::info!(topic = %topic, expired = %at, "cached payload has expired");
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "cached payload no longer verifies; ignoring it")
                }
            }
        }
        Ok(())
    }

    fn on_message(&mut self, topic: &str, bytes: &[u8]) {
        if topic == self.topics.ack {
            self.on_ack(bytes);
            return;
        }
        if topic == self.topics.daemon {
            let online = serde_json::from_slice::<crate::wire::agent::DaemonStatus>(bytes)
                .is_ok_and(|s| s.online);
            if online {
                // The daemon (re)subscribed: whatever was sent before may have gone nowhere.
                self.in_flight = None;
                self.ack_wait = ACK_WAIT;
                self.flush();
            }
            return;
        }
        if bytes.is_empty() {
            // Anyone can publish an empty payload: it ends nothing here (a timeline ends only by
            // a signed clear, an alert by a signed clear or its expiry). The daemon restores the
            // topic; its bytes equal what is held and change nothing either.
            if topic == self.topics.display || self.alerts.contains_key(topic) {
                tracing::warn!(
                    topic,
                    "topic emptied on the broker; ignored (only a signed clear or the expiry ends what it carried)"
                );
                self.refused(topic, "empty payload (not signed)".into());
            }
            return;
        }
        let held = self.held.get(topic);
        if held.is_some_and(|(_, b)| b == bytes) {
            return; // the same payload again (re-asserted after a broker restart)
        }
        let now = Utc::now();
        match self.verify(topic, bytes, held.map(|(v, _)| *v), now) {
            Ok(body) => {
                let latency_ms = (now - body.issued_at).num_milliseconds();
                self.held
                    .insert(topic.to_owned(), (body.version, bytes.to_vec()));
                if let Err(e) = self.store.put_payload(topic, body.version, bytes) {
                    tracing::error!(error = %e, "cannot cache the payload");
                }
                let is_timeline = matches!(body.payload, Signed::Timeline(_));
                tracing::info!(topic, version = body.version, latency_ms, "applied");
                self.apply(topic, body.version, body.payload);
                if is_timeline {
                    self.event(EventKind::TimelineApplied {
                        topic: topic.to_owned(),
                        version: body.version,
                        latency_ms,
                    });
                }
                self.publish_status();
            }
            Err(e) => {
                tracing::warn!(topic, reason = %e, "refused payload; nothing shown from it");
                self.refused(topic, e.to_string());
            }
        }
    }

    /// Reports a refused payload, at most [`REFUSALS_PER_MINUTE`] per topic a minute: a flood of
    /// junk on a topic must not flood the outbox and the daemon's store. The rest are counted
    /// and the count reported with the next refusal after the minute.
    fn refused(&mut self, topic: &str, reason: String) {
        let now = tokio::time::Instant::now();
        let (start, count, suppressed) =
            self.refusals.entry(topic.to_owned()).or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *count) = (now, 0);
        }
        if *count >= REFUSALS_PER_MINUTE {
            *suppressed += 1;
            return;
        }
        *count += 1;
        let reason = match std::mem::take(suppressed) {
            0 => reason,
            n => format!("{reason} (and {n} more refusals not reported)"),
        };
        self.event(EventKind::Refused {
            topic: topic.to_owned(),
            reason,
        });
    }

    /// Verifies a payload with the pinned key, or, during a key rotation, with the configured
    /// next key (the envelope names its key; a payload of another key is refused as ever).
    fn verify(
        &self,
        topic: &str,
        bytes: &[u8],
        held: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<crate::wire::SignedBody, WireError> {
        match (
            verify(&self.cfg.public_key, topic, bytes, held, now),
            &self.cfg.next_public_key,
        ) {
            (Err(WireError::BadSignature { .. }), Some(next)) => {
                verify(next, topic, bytes, held, now)
            }
            (r, _) => r,
        }
    }

    /// SIGHUP: reads the config file again for its key settings (`public_key_file`,
    /// `next_public_key_file`) and the keys they name, so a rotation needs no restart; then
    /// subscribes again, so the broker re-sends the retained payloads refused under the old keys
    /// (MQTT 3.1.1 §3.8.4). A config that no longer reads keeps the keys held.
    fn reload_keys(&mut self) {
        let cfg = match AgentConfig::load(&self.cfg.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the config again; keeping the keys held");
                return;
            }
        };
        tracing::info!(
            key_id = cfg.public_key.id(),
            next_key_id = cfg.next_public_key.as_ref().map(|k| k.id().to_owned()),
            "public keys read again"
        );
        self.cfg.public_key = cfg.public_key;
        self.cfg.public_key_file = cfg.public_key_file;
        self.cfg.next_public_key = cfg.next_public_key;
        self.cfg.next_public_key_file = cfg.next_public_key_file;
        self.mqtt.resubscribe();
    }

    /// The daemon's signed receipt: events up to `upto` are stored and leave the outbox.
    fn on_ack(&mut self, bytes: &[u8]) {
        let upto = match self.verify(&self.topics.ack, bytes, None, Utc::now()) {
            Ok(body) => match body.payload {
                Signed::EventAck(a)
                    if a.display == self.cfg.id
                        && a.outbox == self.instance
                        && a.upto <= self.sent_upto =>
                {
                    a.upto
                }
                Signed::EventAck(a) => {
                    tracing::warn!(
                        outbox = %a.outbox,
                        upto = a.upto,
                        sent_upto = self.sent_upto,
                        "refused event receipt: for another outbox or for events never sent"
                    );
                    return;
                }
                _ => return,
            },
            Err(e) => {
                tracing::warn!(topic = %self.topics.ack, reason = %e, "refused event receipt");
                return;
            }
        };
        if let Err(e) = self.store.confirm_events(upto) {
            tracing::error!(error = %e, "cannot update the event outbox");
            return;
        }
        self.ack_wait = ACK_WAIT;
        if self.in_flight.is_some_and(|(seq, _)| seq <= upto) {
            self.in_flight = None;
            self.flush();
        }
    }

    fn apply(&mut self, topic: &str, version: u64, payload: Signed) {
        match payload {
            Signed::Timeline(tl) if topic == self.topics.display => {
                self.display_tl = Some((version, tl))
            }
            Signed::Timeline(tl) if topic == self.topics.channel => {
                self.channel_tl = Some((version, tl))
            }
            Signed::Timeline(_) => {
                tracing::warn!(topic, "timeline on an unexpected topic; ignored")
            }
            Signed::TimelineClear if topic == self.topics.display => {
                tracing::info!(
                    topic,
                    "display timeline cleared; following the channel timeline"
                );
                self.display_tl = None;
            }
            Signed::TimelineClear if topic == self.topics.channel => self.channel_tl = None,
            Signed::TimelineClear => {}
            Signed::Alert(a) | Signed::AlertAt(a) => {
                if let Some(at) = a.starts_at.filter(|at| *at > Utc::now()) {
                    tracing::info!(alert = %a.id, starts_at = %at, "alert held until its start");
                }
                self.alerts.insert(topic.to_owned(), a);
            }
            Signed::AlertClear(c) => {
                self.alerts.retain(|_, a| a.id != c.id);
            }
            Signed::EventAck(_) | Signed::Status(_) | Signed::Events(_) => {}
        }
    }

    fn timeline(&self, now: DateTime<Utc>) -> (Option<&Timeline>, Option<u64>) {
        let display = self.display_tl.as_ref().map(|(_, t)| t);
        let channel = self.channel_tl.as_ref().map(|(_, t)| t);
        let tl = effective(display, channel, now);
        let version = match tl {
            Some(t) if display.is_some_and(|d| std::ptr::eq(d, t)) => {
                self.display_tl.as_ref().map(|(v, _)| *v)
            }
            Some(_) => self.channel_tl.as_ref().map(|(v, _)| *v),
            None => None,
        };
        (tl, version)
    }

    /// The most severe, most recent unexpired alert.
    fn alert(&self, now: DateTime<Utc>) -> Option<&Alert> {
        self.alerts
            .values()
            .filter(|a| a.showing(now))
            .max_by_key(|a| (severity_rank(&a.severity), a.shown_from()))
    }

    /// The next start of an alert held for later, if any.
    fn next_alert_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.alerts
            .values()
            .filter_map(|a| a.starts_at.filter(|s| *s > now && *s < a.expires_at))
            .min()
    }

    fn render(&mut self, now: DateTime<Utc>) {
        let (tl, version) = self.timeline(now);
        let frame = frame_at(
            tl,
            self.alert(now),
            &self.cfg.fallback,
            &self.cfg.language,
            now,
        );
        if self.current.as_ref() == Some(&frame) {
            return;
        }
        self.finish_frame(now);
        self.renderer.show(&frame, version);
        if frame.kind == FrameKind::Alert && !self.acked_alerts.contains(&frame.item) {
            let issued = self.alert(now).map_or(now, Alert::shown_from);
            self.acked_alerts.push(frame.item.clone());
            self.event(EventKind::AlertDisplayed {
                alert: frame.item.clone(),
                latency_ms: (now - issued).num_milliseconds(),
            });
            self.publish_status();
        }
        self.current = Some(frame);
    }

    /// Records proof of play for the frame leaving the screen.
    fn finish_frame(&mut self, now: DateTime<Utc>) {
        let Some(f) = self.current.take() else { return };
        if !self.cfg.proof_of_play || now <= f.start {
            return;
        }
        self.event(EventKind::Play {
            item: f.item,
            playlist: f.playlist,
            lang: f.lang,
            start: f.start,
            end: now.min(f.until),
        });
    }

    fn event(&mut self, kind: EventKind) {
        let (id, instance) = (&self.cfg.id, &self.instance);
        let res = self.store.push_event(
            |seq| {
                serde_json::to_string(&Event {
                    id: format!("{id}:{instance}:{seq}"),
                    at: Utc::now(),
                    kind,
                })
                .unwrap_or_default()
            },
            self.cfg.max_buffered_events,
        );
        match res {
            Ok((_, dropped)) if dropped > 0 => {
                tracing::warn!(dropped, "event outbox full; dropped the oldest events")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot buffer an event"),
        }
    }

    /// Sends the oldest buffered events if connected and no batch is awaiting its receipt (or the
    /// receipt is overdue: then the batch goes again).
    fn flush(&mut self) {
        if !self.connected {
            return;
        }
        if let Some((_, at)) = self.in_flight {
            if at.elapsed() < self.ack_wait {
                return;
            }
            self.ack_wait = (self.ack_wait * 2).min(MAX_ACK_WAIT);
        }
        let pending = match self.store.pending_events(BATCH) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event outbox");
                return;
            }
        };
        let last = pending.last().map_or(0, |(s, _)| *s);
        let events: Vec<Event> = pending
            .iter()
            .filter_map(|(_, b)| serde_json::from_str(b).ok())
            .collect();
        let batch = EventBatch {
            display: self.cfg.id.clone(),
            outbox: self.instance.clone(),
            upto: last,
            events,
        };
        let bytes = self.report(&self.topics.events, Signed::Events(batch), EVENTS_LIFETIME);
        match self.mqtt.publish(&self.topics.events, bytes, false) {
            Ok(()) => {
                self.sent_upto = self.sent_upto.max(last);
                self.in_flight = Some((last, tokio::time::Instant::now()));
            }
            Err(e) => tracing::debug!(error = %e, "events not sent; will retry"),
        }
    }

    /// On shutdown: sends buffered events until the daemon has receipted them all, the connection
    /// is gone, or `limit` passes. What is left stays on disk for the next start.
    async fn drain(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<MqttEvent>,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.connected || self.store.pending_events(1).map_or(true, |p| p.is_empty()) {
                return;
            }
            self.flush();
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(MqttEvent::Message { topic, payload, .. }) => self.on_message(&topic, &payload),
                    Some(MqttEvent::Connected) => {}
                    Some(MqttEvent::Disconnected(_)) | None => self.connected = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!("events left in the outbox are sent on the next start");
                    return;
                }
            }
        }
    }

    fn status(&self) -> Status {
        let now = Utc::now();
        let (tl, version) = self.timeline(now);
        let topic = tl.map(|t| match t.target {
            crate::wire::Target::Display(_) => self.topics.display.clone(),
            crate::wire::Target::Channel(_) => self.topics.channel.clone(),
        });
        Status {
            display: self.cfg.id.clone(),
            online: true,
            channel: self.cfg.channel.clone(),
            timeline: topic
                .zip(version)
                .map(|(topic, version)| Applied { topic, version }),
            alert: self.alert(now).map(|a| a.id.clone()),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at,
            at: now,
            connection: self.mqtt.connection(),
            instance: self.instance_id.clone(),
            broker: self.mqtt.broker(),
            held_max: self.held.values().map(|(v, _)| *v).max().unwrap_or(0),
        }
    }

    fn publish_status(&mut self) {
        if !self.connected {
            return;
        }
        let bytes = self.report(
            &self.topics.status,
            Signed::Status(self.status()),
            STATUS_LIFETIME,
        );
        if let Err(e) = self.mqtt.publish(&self.topics.status, bytes, true) {
            tracing::debug!(error = %e, "status not sent; will resend on reconnect");
        }
    }

    /// A report for `topic`, signed with this display's report key (see [`report_bytes`]).
    fn report(&self, topic: &str, payload: Signed, lifetime: chrono::Duration) -> Vec<u8> {
        report_bytes(
            self.cfg.report_key.as_deref(),
            topic,
            payload,
            Utc::now(),
            lifetime,
        )
    }
}

/// This agent process: `{host name}/{first 8 of the boot id}/{pid}`, the same for one process
/// and different for two (a config copied to a second screen, or a restart).
fn instance_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let boot = read("/proc/sys/kernel/random/boot_id");
    format!(
        "{}/{}/{}",
        crate::host_name(),
        boot.get(..8).unwrap_or(&boot),
        std::process::id()
    )
}

/// How long a signed status stays valid: it is retained, and a will is signed when its connection
/// is made and may be sent by the broker much later. (Replays are refused by order and by
/// connection number, not by expiry.)
const STATUS_LIFETIME: chrono::Duration = chrono::Duration::days(365);

/// How often a connected agent publishes its status even when nothing changed: the daemon's
/// view of it is never older than this.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(120);

/// How long a signed event batch stays valid (it is signed anew at every resend).
const EVENTS_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// A report in the signed envelope (version: the batch's `upto`, or a status's time in ms), or
/// its bare JSON when the display has no report key (the daemon drops those).
fn report_bytes(
    key: Option<&crate::wire::KeyPair>,
    topic: &str,
    payload: Signed,
    now: DateTime<Utc>,
    lifetime: chrono::Duration,
) -> Vec<u8> {
    let version = match &payload {
        Signed::Events(b) => b.upto,
        Signed::Status(s) => s.at.timestamp_millis().max(0) as u64,
        _ => 0,
    };
    match (key, payload) {
        (Some(keys), payload) => crate::wire::sign(
            keys,
            &SignedBody {
                topic: topic.to_owned(),
                version,
                issued_at: now,
                expires_at: now + lifetime,
                payload,
            },
        ),
        (None, Signed::Status(s)) => serde_json::to_vec(&s).unwrap_or_default(),
        (None, Signed::Events(b)) => serde_json::to_vec(&b).unwrap_or_default(),
        (None, _) => Vec::new(),
    }
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "extreme" => 4,
        "severe" => 3,
        "moderate" => 2,
        "minor" => 1,
        _ => 0,
    }
}
