//! `marquee serve`: wires the parts together and runs them until SIGTERM/SIGINT.
//!
//! Start order: data directory and secrets → store → embedded broker (if configured) → HTTP
//! listener → MQTT connection → scheduler. `READY=1` goes to systemd only once the broker is
//! connected and every timeline is published. Shutdown: one cancellation token stops every task;
//! they drain within a grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BrokerConfig, Config, Role};
use crate::http::{self, AppState, auth::Tokens};
use crate::keys;
use crate::metrics::Metrics;
use crate::mqtt::{self, ClientOptions, MqttEvent};
use crate::scheduler::{Reload, Scheduler};
use crate::store::Store;
use crate::wire::Topic;
use crate::wire::agent::DaemonStatus;
use crate::wire::topic::Filter;

const GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until a termination signal.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    keys::ensure_data_dir(&cfg.data_dir)?;
    let (signing, origin) = keys::load_or_create_signing_key(&cfg.data_dir)?;
    let pub_path = cfg.data_dir.join(keys::SIGNING_PUB);
    match &origin {
        keys::KeyOrigin::Created => {
            tracing::info!(public_key = %pub_path.display(), key_id = signing.public().id(), "created a new signing key pair; point agents' public_key_file at the public key")
        }
        keys::KeyOrigin::Loaded => {
            tracing::info!(public_key = %pub_path.display(), key_id = signing.public().id(), "signing key loaded")
        }
        keys::KeyOrigin::Rotated(old) => {
            tracing::warn!(public_key = %pub_path.display(), key_id = signing.public().id(), old_key_id = old.id(), "switched to the prepared next signing key; signing everything current again with it")
        }
    }
    let (admin_token, created) = keys::load_or_create_admin_token(&cfg.data_dir)?;
    let token_path = cfg.data_dir.join(keys::ADMIN_TOKEN);
    if created {
        tracing::info!(file = %token_path.display(), "created the admin API token (mode 0600); use it as MARQUEE_TOKEN");
    }
    let mut tokens = Tokens::default();
    tokens.add("admin", Role::Admin, false, &admin_token);
    for t in &cfg.tokens {
        if t.secret.trim() == admin_token.trim() {
            anyhow::bail!(
                "auth.tokens ({}): the same secret as the generated admin token ({}): give it its own",
                t.name,
                token_path.display()
            );
        }
        tokens.add(&t.name, t.role, t.emergency, &t.secret);
    }

    let db = cfg.data_dir.join("marquee.db");
    let store = Arc::new(
        Store::open(&db)
            .with_context(|| format!("cannot open {}", db.display()))?
            .keep_reserve(&cfg.data_dir, cfg.disk_reserve),
    );
    // A list import cut off by a crash or restart left an `importing` campaign: never sent.
    match store.drop_importing(None) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            campaigns = n,
            "removed campaigns whose list import was cut off"
        ),
        Err(e) => tracing::error!(error = %e, "cannot remove cut-off imports"),
    }
    let registry = crate::registry::Registry::load(&store)
        .with_context(|| format!("cannot read the display registry in {}", db.display()))?;
    for (id, channel) in &cfg.schedule.displays {
        if registry.get(id).is_none() {
            tracing::warn!(
                display = %id,
                "declared under [[schedule.displays]] but not registered: its reports are dropped until `marquee display add {id} --channel {channel}`"
            );
        }
    }
    let metrics = Metrics::default();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // The broker.
    let (brokers, credentials, _broker) = match &cfg.mqtt.broker {
        BrokerConfig::Embedded { listen, users } => {
            // The embedded broker died with the last daemon: no display's last will was
            // delivered, so what the store says about them is not known until they report.
            if let Err(e) = store.displays_unknown() {
                tracing::error!(error = %e, "cannot mark the displays unknown");
            }
            let (host, port, credentials, broker) = start_embedded(&cfg, *listen, users).await?;
            (vec![(host, port)], credentials, broker)
        }
        BrokerConfig::External { brokers, .. } => {
            (brokers.clone(), cfg.mqtt.credentials.clone(), None)
        }
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", cfg.listen))?;
    let http_addr = listener.local_addr()?;
    let api_url = match &cfg.tls {
        Some(_) => format!("https://{http_addr}"),
        None => format!("http://{http_addr}"),
    };
    if cfg.tls.is_none() && !http_addr.ip().is_loopback() {
        tracing::warn!(
            http = %http_addr,
            "the API is served in clear text off loopback: tokens and delivery reports cross the network readable; set [server] tls_cert_file and tls_key_file, or put a TLS proxy in front"
        );
    }

    let prefix = &cfg.mqtt.topic_prefix;
    let (mqtt, events) = mqtt::connect(
        ClientOptions {
            client_id: cfg.mqtt.client_id.clone(),
            brokers: brokers.clone(),
            credentials,
            keep_alive: cfg.mqtt.keep_alive,
            max_packet: cfg.mqtt.max_payload,
            subscriptions: vec![
                Filter::ChannelTimelines.render(prefix),
                Filter::DisplayTimelines.render(prefix),
                Filter::AgentStatus.render(prefix),
                Filter::AgentEvents.render(prefix),
                Filter::Alerts.render(prefix),
                Filter::HeldAlerts.render(prefix),
            ],
            tls: cfg.mqtt.tls.clone(),
            last_will: Some(mqtt::WillFn::fixed(mqtt::LastWill {
                topic: Topic::DaemonStatus.render(prefix),
                payload: serde_json::to_vec(&DaemonStatus { online: false })?,
            })),
        },
        cancel.child_token(),
    );

    let signing = Arc::new(signing);
    let (mut scheduler, catalog) = Scheduler::new(
        cfg.clone(),
        signing.clone(),
        store.clone(),
        mqtt.clone(),
        metrics.clone(),
    )?;
    let agents_hold = scheduler.agents_hold();
    let resigned = match &origin {
        keys::KeyOrigin::Rotated(old) => {
            let n = scheduler.resign(old).await?;
            tracing::warn!(
                payloads = n,
                "signed every current payload again with the new key"
            );
            Some((old.id().to_owned(), n))
        }
        _ => None,
    };
    let (publish_tx, publish_rx) = mpsc::channel(64);
    let sms_waker = crate::sms::dispatch::Waker::default();
    let sms_health = crate::sms::dispatch::Health::default();
    let (reports, intake) =
        crate::sms::dlr::intake(store.clone(), metrics.clone(), cancel.child_token());
    tracker.spawn(intake);
    let dispatcher = crate::sms::dispatch::Dispatcher::new(
        cfg.clone(),
        store.clone(),
        metrics.clone(),
        sms_waker.clone(),
        sms_health.clone(),
        http_addr,
    )?;
    let reconciler = Arc::new(crate::sms::reconcile::Reconciler::new(
        dispatcher.gateways(),
        store.clone(),
    ));
    tracker.spawn(reconciler.clone().run(cancel.clone()));
    let (reload_tx, reload_rx) = mpsc::channel(64);
    let state = Arc::new(AppState {
        app: Arc::new(crate::app::Ctx {
            cfg: cfg.clone(),
            store: store.clone(),
            publisher: publish_tx,
            sms_waker,
            held_alerts: Arc::new(tokio::sync::Notify::new()),
            signing: signing.clone(),
            registry: registry.clone(),
        }),
        catalog,
        metrics: metrics.clone(),
        tokens,
        reload: reload_tx.clone(),
        reports,
        reconciler: reconciler.clone(),
        sms_health,
    });
    if let Some((old, n)) = resigned {
        // Audited (which also signs the audit anchor again with the new key).
        http::audit(
            &state,
            "marquee",
            "key.rotate",
            signing.public().id(),
            serde_json::json!({"old_key": old, "signed_again": n}),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot audit the key rotation: {}", e.message))?;
        keys::finish_rotation(&cfg.data_dir)?;
    }
    tracker.spawn(dispatcher.run(cancel.clone()));
    tracker.spawn(crate::alerts::start_held_alerts(
        state.app.clone(),
        cancel.clone(),
    ));
    for (url, every) in cfg.cap_feeds.clone() {
        tracing::info!(feed = %url, every = ?every, "polling the CAP feed");
        tracker.spawn(crate::alerts::cap_feed::run(
            state.app.clone(),
            metrics.clone(),
            url,
            every,
            cancel.clone(),
        ));
    }
    // Agents' reports go to the fleet intake; everything else to the scheduler.
    let (sched_tx, sched_rx) = mpsc::channel(1024);
    let (fleet_tx, fleet_rx) = mpsc::channel(4096);
    tracker.spawn(route_events(
        events,
        cfg.mqtt.topic_prefix.clone(),
        mqtt.clone(),
        sched_tx,
        fleet_tx,
    ));
    tracker.spawn(watch_reserve(
        store.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    tracker.spawn(crate::fleet::run(
        store.clone(),
        cfg.mqtt.topic_prefix.clone(),
        fleet_rx,
        metrics.clone(),
        crate::fleet::Receipts {
            keys: signing.clone(),
            mqtt: mqtt.clone(),
        },
        crate::fleet::Rules {
            registry,
            agents_hold,
            retention: cfg.retention,
        },
        cancel.clone(),
    ));
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = http::serve(listener, state, cancel.clone()).await {
                tracing::error!(error = %e, "HTTP server failed");
                cancel.cancel();
            }
        });
    }

    let _watcher = if cfg.schedule.watch {
        watch_playlists(&cfg, reload_tx.clone())
    } else {
        None
    };
    let (ready_tx, mut ready_rx) = oneshot::channel();
    let watchdog = sd_notify::watchdog_enabled();
    tracker.spawn(scheduler.run(
        sched_rx,
        reload_rx,
        publish_rx,
        Some(ready_tx),
        watchdog,
        cancel.clone(),
    ));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let broker = brokers
        .iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut waiting = tokio::time::interval(Duration::from_secs(5));
    waiting.tick().await;
    let mut ready = false;
    loop {
        tokio::select! {
            r = &mut ready_rx, if !ready => {
                ready = true;
                if r.is_ok() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    tracing::info!(http = %http_addr, api = %api_url, mqtt = %broker, playlists = %cfg.schedule.playlists_dir.display(), "marquee ready");
                }
            }
            _ = waiting.tick(), if !ready => {
                tracing::warn!(mqtt = %broker, "still waiting for the MQTT broker");
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading playlists");
                let _ = reload_tx.try_send(Reload::Complete);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = cancel.cancelled() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("tasks did not finish within {GRACE:?}; exiting anyway");
    }
    mqtt.disconnect().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every 5 s: the disk reserve's state as metrics, and the reserve taken back once the disk
/// has room again (bulk writes resume).
async fn watch_reserve(store: Arc<Store>, metrics: Metrics, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let (held, bulk) = store
            .call(|s| Ok((s.refill_reserve(), s.bulk_ok().is_ok())))
            .await
            .unwrap_or((false, false));
        metrics.disk_reserve_in_use.set(i64::from(!held));
        metrics.disk_bulk_refused.set(i64::from(!bulk));
    }
}

/// Splits the connection's events between the scheduler and the fleet intake, and announces the
/// daemon on every connection (after the subscriptions, which the broker handles first).
async fn route_events(
    mut events: mpsc::Receiver<MqttEvent>,
    prefix: String,
    mqtt: mqtt::MqttHandle,
    scheduler: mpsc::Sender<MqttEvent>,
    fleet: mpsc::Sender<(String, bytes::Bytes, bool)>,
) {
    let online = serde_json::to_vec(&DaemonStatus { online: true }).unwrap_or_default();
    while let Some(ev) = events.recv().await {
        if matches!(ev, MqttEvent::Connected)
            && let Err(e) = mqtt.publish(&Topic::DaemonStatus.render(&prefix), online.clone(), true)
        {
            tracing::warn!(error = %e, "daemon status not published");
        }
        let sent = match ev {
            MqttEvent::Message {
                topic,
                payload,
                retained,
            } if matches!(
                Topic::parse(&prefix, &topic),
                Some(Topic::AgentStatus(_) | Topic::AgentEvents(_))
            ) =>
            {
                fleet.send((topic, payload, retained)).await.is_ok()
            }
            other => scheduler.send(other).await.is_ok(),
        };
        if !sent {
            return;
        }
    }
}

#[cfg(feature = "embedded-broker")]
type Broker = Option<mqtt::broker::EmbeddedBroker>;
#[cfg(not(feature = "embedded-broker"))]
type Broker = Option<()>;

type Connection = (String, u16, Option<(String, String)>, Broker);

#[cfg(feature = "embedded-broker")]
async fn start_embedded(
    cfg: &Config,
    listen: std::net::SocketAddr,
    users: &BTreeMap<String, String>,
) -> anyhow::Result<Connection> {
    let mut users = users.clone();
    // With authentication on, the daemon gets an account of its own for this run.
    let credentials = if users.is_empty() {
        None
    } else {
        let mut b = [0u8; 24];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let pair = ("marquee-daemon".to_owned(), hex::encode(b));
        users.insert(pair.0.clone(), pair.1.clone());
        Some(pair)
    };
    let broker = mqtt::broker::start(listen, &users, cfg.mqtt.max_payload).await?;
    let addr = broker.addr();
    tracing::info!(listen = %addr, auth = !users.is_empty(), "embedded MQTT broker listening");
    Ok((
        addr.ip().to_string(),
        addr.port(),
        credentials,
        Some(broker),
    ))
}

#[cfg(not(feature = "embedded-broker"))]
async fn start_embedded(
    _: &Config,
    _: std::net::SocketAddr,
    _: &BTreeMap<String, String>,
) -> anyhow::Result<Connection> {
    anyhow::bail!("this build has no embedded broker: set mqtt.embedded = false and mqtt.url")
}

/// Watches the playlists directory; every change pokes `reload` with whether a file is still
/// being written (the scheduler waits for quiet accordingly).
fn watch_playlists(
    cfg: &Config,
    reload: mpsc::Sender<Reload>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = cfg.schedule.playlists_dir.clone();
    let mut writes = Writes::default();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(e) = ev
            && let Some(hint) = writes.note(&e)
        {
            let _ = reload.try_send(hint);
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch playlist files; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot watch the playlists directory; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}

/// The files in the playlists directory that were created or written to and not yet closed.
/// A file closed after writing, renamed into place or removed is complete; a file only ever
/// written (a platform that reports no close, a writer that keeps it open) keeps the full
/// debounce.
#[derive(Default)]
struct Writes {
    open: std::collections::HashSet<PathBuf>,
}

impl Writes {
    /// Takes one watch event; says what it asks of the scheduler (nothing for reads and opens).
    fn note(&mut self, e: &notify::Event) -> Option<Reload> {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &e.paths {
                    self.open.remove(p);
                }
            }
            EventKind::Access(_) => return None,
            EventKind::Create(CreateKind::Folder) => {}
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                self.open.extend(e.paths.iter().cloned());
            }
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                for p in &e.paths {
                    self.open.remove(p);
                }
            }
            _ => {}
        }
        Some(if self.open.is_empty() {
            Reload::Complete
        } else {
            Reload::Writing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
    };

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    }

    #[test]
    fn a_file_is_complete_when_closed_renamed_or_removed() {
        let mut w = Writes::default();
        let create = EventKind::Create(CreateKind::File);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        // In place: created, written, closed.
        assert_eq!(w.note(&ev(create, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(w.note(&ev(write, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(
            w.note(&ev(
                EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any)),
                &["/p/a.json"]
            )),
            None
        );
        assert_eq!(w.note(&ev(close, &["/p/a.json"])), Some(Reload::Complete));
        // Two writers: one closing leaves the other in progress.
        w.note(&ev(write, &["/p/a.json"]));
        w.note(&ev(write, &["/p/b.json"]));
        assert_eq!(w.note(&ev(close, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(w.note(&ev(close, &["/p/b.json"])), Some(Reload::Complete));
        // Atomic save: a temporary file written, then renamed over the playlist.
        w.note(&ev(create, &["/p/.a.json.tmp"]));
        assert_eq!(
            w.note(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/p/.a.json.tmp", "/p/a.json"]
            )),
            Some(Reload::Complete)
        );
        // Removed while written; a new directory is nothing to wait for.
        w.note(&ev(write, &["/p/c.json"]));
        assert_eq!(
            w.note(&ev(
                EventKind::Remove(notify::event::RemoveKind::File),
                &["/p/c.json"]
            )),
            Some(Reload::Complete)
        );
        assert_eq!(
            w.note(&ev(EventKind::Create(CreateKind::Folder), &["/p/sub"])),
            Some(Reload::Complete)
        );
    }
}
