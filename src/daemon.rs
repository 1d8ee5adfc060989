//! `marquee serve`: wires the parts together and runs them until SIGTERM/SIGINT.
//!
//! Start order: signals → data directory and secrets → store → HTTP listener bound (a standby
//! on a shared store serves it now and waits for the leader lease) → embedded broker (if
//! configured) → MQTT connection → scheduler (the API served now when alone) → fleet intake,
//! SMS dispatch, feeds. `READY=1` goes to systemd only once the broker is connected and every
//! timeline is published. Shutdown: one cancellation token stops every task;
//! they drain within a grace period.

use std::collections::BTreeMap;
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
use crate::mqtt::{self, ClientOptions};
use crate::scheduler::{Reload, Scheduler};
use crate::store::Store;
use crate::wire::Topic;
use crate::wire::agent::DaemonStatus;
use crate::wire::topic::Filter;

const GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until a termination signal.
///
/// On a shared (PostgreSQL) store the node serves the API at once, as a standby; every request
/// to publish goes through the store to the leader (`crate::handoff`). Only once it holds the
/// leader lease does it connect to the broker and start what a fleet must see once: the
/// scheduler, the fleet intake, SMS dispatch, held alerts and CAP feeds. Alone (SQLite), the API
/// opens once the scheduler exists and a key rotation is audited.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let mut signals = Signals::new()?;
    keys::ensure_data_dir(&cfg.data_dir)?;
    let (signing, origin) = signing_key(&cfg)?;
    let tokens = api_tokens(&cfg)?;
    let (store, db, node) = open_store(&cfg)?;
    drop_cut_off_imports(&store);
    let (metrics, cancel, tracker) = (
        Metrics::default(),
        CancellationToken::new(),
        TaskTracker::new(),
    );
    let registry = load_registry(&cfg, &store, &db)?;
    let signing = Arc::new(signing);
    let catalog_tx = tokio::sync::watch::Sender::new(Scheduler::last_published(&cfg, &store)?);
    let (reload_tx, reload_rx) = mpsc::channel(64);
    let (app, publish_rx) = context(&cfg, &store, &signing, &registry);
    let (listener, http_addr, api_url) = bind_http(&cfg).await?;
    let web = (catalog_tx.subscribe(), tokens, reload_tx.clone());
    let (state, sms) = sms_and_api(&app, &metrics, http_addr, &tracker, &cancel, web)?;
    start_store_upkeep(&store, &metrics, &tracker, &cancel);
    let mut listener = Some((listener, api_url.clone()));
    let publishing = CancellationToken::new();
    let intake = share_intake(&state, node.as_deref(), &tracker, &cancel).await;
    let publish_rx = match &node {
        Some(node) => {
            serve_http(&state, listener.take(), &tracker, &cancel);
            let (to_scheduler, rx) = mpsc::channel(64);
            tracker.spawn(crate::handoff::sequence(
                app.clone(),
                node.clone(),
                (publish_rx, to_scheduler),
                catalog_tx.clone(),
                publishing.clone(),
                cancel.clone(),
            ));
            rx
        }
        None => publish_rx,
    };
    let Some(lease) = lead_unless_stopped(&cfg, &store, &mut signals, (&cancel, &tracker)).await?
    else {
        return Ok(());
    };
    if node.is_some() {
        // What the last leader published (a standby may have waited for weeks).
        catalog_tx.send_replace(Scheduler::last_published(&cfg, &store)?);
    }
    let (brokers, credentials, _broker) = start_broker(&cfg, &store).await?;
    let shared = Intake::close(intake).await;
    let (mqtt, events) = connect_mqtt(&cfg, brokers.clone(), credentials, shared, &cancel)?;
    let scheduler = scheduler(&app, &mqtt, &metrics, catalog_tx, &origin).await?;
    serve_http(&state, listener.take(), &tracker, &cancel);
    let agents_hold = scheduler.agents_hold();
    start_leading(&state, sms, &tracker, &cancel);
    let intake = (mqtt.clone(), events);
    let sched_rx = start_intake(&state, intake, agents_hold, &tracker, &cancel);
    let _watcher = if cfg.schedule.watch {
        crate::scheduler::files::watch_playlists(&cfg, reload_tx.clone())
    } else {
        None
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let watchdog = sd_notify::watchdog_enabled();
    let rx = (sched_rx, reload_rx, publish_rx);
    tracker.spawn(scheduler.run(rx.0, rx.1, rx.2, Some(ready_tx), watchdog, cancel.clone()));
    publishing.cancel();
    let broker = brokers.iter().map(|(h, p)| format!("{h}:{p}"));
    let running = Running {
        ready: ready_rx,
        reload: reload_tx,
        broker: broker.collect::<Vec<_>>().join(", "),
        http_addr,
        api_url,
    };
    until_signal(&cfg, running, &mut signals, &cancel).await;
    shutdown(&cancel, &tracker, Some(&mqtt)).await;
    step_down(&store, lease).await;
    Ok(())
}

/// The signals the daemon handles, listened to from the start: one that comes while a standby
/// takes over is not lost, and SIGHUP never ends the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Serves the API on `listener` (once: `None` when it already runs).
fn serve_http(
    state: &Arc<AppState>,
    listener: Option<(tokio::net::TcpListener, String)>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let Some((listener, api)) = listener else {
        return;
    };
    tracing::info!(api, role = ?crate::leader::role(), "API listening");
    let state = state.clone();
    let cancel = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = http::serve(listener, state, cancel.clone()).await {
            tracing::error!(error = %e, "HTTP server failed");
            cancel.cancel();
        }
    });
}

/// The leader's scheduler; after a key rotation, everything current signed again with the new
/// key, and audited.
async fn scheduler(
    app: &Arc<crate::app::Ctx>,
    mqtt: &mqtt::MqttHandle,
    metrics: &Metrics,
    catalog_tx: tokio::sync::watch::Sender<Arc<crate::scheduler::catalog::Catalog>>,
    origin: &keys::KeyOrigin,
) -> anyhow::Result<Scheduler> {
    let mut scheduler = Scheduler::new(
        app.cfg.clone(),
        app.signing.clone(),
        app.store.clone(),
        mqtt.clone(),
        metrics.clone(),
        catalog_tx,
    )?;
    if let keys::KeyOrigin::Rotated(old) = origin {
        let n = scheduler.resign(old).await?;
        finish_rotation(app, old.id(), n).await?;
    }
    Ok(scheduler)
}

/// Waits for the leader lease on a shared store ([`lead`]); `Ok(None)` when a termination
/// signal came first: the standby's tasks are stopped, and a lease taken meanwhile is given
/// back.
async fn lead_unless_stopped(
    cfg: &Config,
    store: &Arc<Store>,
    signals: &mut Signals,
    (cancel, tracker): (&CancellationToken, &TaskTracker),
) -> anyhow::Result<Option<Option<Led>>> {
    let lead = lead(cfg, store);
    tokio::pin!(lead);
    loop {
        tokio::select! {
            led = &mut lead => return Ok(Some(led?)),
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: nothing to reload on a standby (its scheduler reads the playlists when it leads)");
            }
        }
    }
    shutdown(cancel, tracker, None).await;
    if let Some(node) = store.node().map(str::to_owned)
        && let Err(e) = store.call(move |s| s.resign_node(&node)).await
    {
        tracing::warn!(error = %e, "cannot give the leader lease back; it ends by itself");
    }
    Ok(None)
}

/// Stops every task (each drains within [`GRACE`]), then leaves the broker.
async fn shutdown(
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    mqtt: Option<&mqtt::MqttHandle>,
) {
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("tasks did not finish within {GRACE:?}; exiting anyway");
    }
    if let Some(mqtt) = mqtt {
        mqtt.disconnect().await;
    }
    tracing::info!("stopped");
}

/// The use cases' context, and the receiving end of its publisher (the scheduler's).
fn context(
    cfg: &Arc<Config>,
    store: &Arc<Store>,
    signing: &Arc<crate::wire::KeyPair>,
    registry: &Arc<crate::registry::Registry>,
) -> (
    Arc<crate::app::Ctx>,
    mpsc::Receiver<crate::scheduler::PublishRequest>,
) {
    // Alerts wait here for the scheduler, the single writer of retained topics.
    let (publish_tx, publish_rx) = mpsc::channel(64);
    let app = crate::app::Ctx {
        cfg: cfg.clone(),
        store: store.clone(),
        publisher: publish_tx,
        sms_waker: crate::sms::dispatch::Waker::default(),
        held_alerts: Arc::new(tokio::sync::Notify::new()),
        signing: signing.clone(),
        registry: registry.clone(),
    };
    (Arc::new(app), publish_rx)
}

/// Ends a key rotation: audited (which also signs the audit anchor again with the new key),
/// then the old key's files are retired.
async fn finish_rotation(app: &crate::app::Ctx, old: &str, n: usize) -> anyhow::Result<()> {
    tracing::warn!(
        payloads = n,
        "signed every current payload again with the new key"
    );
    crate::app::audit(
        app,
        "marquee",
        "key.rotate",
        app.signing.public().id(),
        serde_json::json!({"old_key": old, "signed_again": n}),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot audit the key rotation: {e}"))?;
    keys::finish_rotation(&app.cfg.data_dir)
}

/// Every node: the disk-reserve watch and the checkpoints.
fn start_store_upkeep(
    store: &Arc<Store>,
    metrics: &Metrics,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    tracker.spawn(watch_reserve(
        store.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    tracker.spawn(checkpoints(store.clone(), cancel.clone()));
}

/// The leader: routes the broker's events (agents' reports to the fleet intake, the rest to
/// the scheduler: returned) and runs the fleet intake.
fn start_intake(
    state: &Arc<AppState>,
    (mqtt, events): (mqtt::MqttHandle, mpsc::Receiver<mqtt::MqttEvent>),
    agents_hold: crate::scheduler::AgentsHold,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> mpsc::Receiver<mqtt::MqttEvent> {
    let (cfg, store, metrics) = (&state.cfg, &state.store, &state.metrics);
    // Agents' reports go to the fleet intake; everything else to the scheduler.
    let (sched_tx, sched_rx) = mpsc::channel(1024);
    let (fleet_tx, fleet_rx) = mpsc::channel(4096);
    tracker.spawn(crate::scheduler::events::route_events(
        events,
        cfg.mqtt.topic_prefix.clone(),
        mqtt.clone(),
        sched_tx,
        fleet_tx,
    ));
    tracker.spawn(crate::fleet::run(
        store.clone(),
        cfg.mqtt.topic_prefix.clone(),
        fleet_rx,
        metrics.clone(),
        crate::fleet::Receipts {
            keys: state.signing.clone(),
            mqtt,
        },
        crate::fleet::Rules {
            registry: state.registry.clone(),
            agents_hold,
            retention: Some(cfg.retention),
        },
        cancel.clone(),
    ));
    sched_rx
}

/// The shared subscription group of the nodes' event intake.
const SHARE: &str = "$share/marquee";

/// A standby's share of the agents' event intake ([`share_intake`]).
struct Intake {
    stop: CancellationToken,
    connection: tokio::task::JoinHandle<()>,
}

impl Intake {
    /// This node leads: its intake connection closes (its main connection takes the node's
    /// share from now on; both would use the node's broker account, whose client id the
    /// broker may take from the account name, `use_username_as_clientid`). Whether events are
    /// shared.
    async fn close(intake: Option<Intake>) -> bool {
        let Some(intake) = intake else {
            return false;
        };
        intake.stop.cancel();
        let _ = intake.connection.await;
        true
    }
}

/// On a shared store with `share_events` and an external broker that delivers through shared
/// subscriptions (probed at start, [`mqtt::probe_shared`]): every node takes a share of the agents' event
/// batches ([`SHARE`]`/…/agent/+/events`), stores them and sends their receipts. A standby does
/// so on a connection of its own (client id `{client_id}-intake-{node}`), returned here, which it
/// closes when it leads; the leader on its main connection. `None` when nothing is shared: the
/// leader takes every event alone. Statuses stay with the leader: they are retained, and a
/// shared subscription is not sent retained messages.
async fn share_intake(
    state: &Arc<AppState>,
    node: Option<&str>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Option<Intake> {
    let cfg = &state.cfg;
    let shared = matches!(
        cfg.store,
        crate::config::StoreConfig::Postgres {
            share_events: true,
            ..
        }
    );
    let (Some(node), BrokerConfig::External { brokers, .. }, true) =
        (node, &cfg.mqtt.broker, shared)
    else {
        return None;
    };
    let prefix = cfg.mqtt.topic_prefix.clone();
    let opts = ClientOptions {
        client_id: format!("{}-intake-{node}", cfg.mqtt.client_id),
        brokers: brokers.clone(),
        credentials: cfg.mqtt.credentials.clone(),
        keep_alive: cfg.mqtt.keep_alive,
        max_packet: cfg.mqtt.max_payload,
        subscriptions: vec![format!("{SHARE}/{}", Filter::AgentEvents.render(&prefix))],
        tls: cfg.mqtt.tls.clone(),
        last_will: None,
    };
    let probe = format!("{prefix}/v1/probe/{node}");
    // Longer than one connect attempt (5 s), so a dead first broker is not a "no".
    if !mqtt::probe_shared(&opts, &probe, Duration::from_secs(8)).await {
        tracing::info!(
            "the broker does not deliver through shared subscriptions ($share): the leader alone takes the agents' events"
        );
        return None;
    }
    let stop = cancel.child_token();
    let (handle, mut events) = mqtt::connect(opts, stop.clone());
    let (tx, rx) = mpsc::channel(4096);
    // Ends once the connection has said goodbye (its task then drops the event channel).
    let connection = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let mqtt::MqttEvent::Message {
                topic,
                payload,
                retained,
            } = ev
                && tx.send((topic, payload, retained)).await.is_err()
            {
                return;
            }
        }
    });
    tracker.spawn(crate::fleet::run(
        state.store.clone(),
        prefix,
        rx,
        state.metrics.clone(),
        crate::fleet::Receipts {
            keys: state.signing.clone(),
            mqtt: handle,
        },
        crate::fleet::Rules {
            registry: state.registry.clone(),
            agents_hold: crate::scheduler::AgentsHold::default(),
            retention: None,
        },
        stop.clone(),
    ));
    tracing::info!(
        node,
        "sharing the agents' event intake with the other nodes"
    );
    Some(Intake { stop, connection })
}

/// The signing key (created, loaded, or the prepared next one switched to), logged.
fn signing_key(cfg: &Config) -> anyhow::Result<(crate::wire::KeyPair, keys::KeyOrigin)> {
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
    Ok((signing, origin))
}

/// The API tokens: the generated admin token (created on first start) and the configured ones,
/// none of which may share its secret.
fn api_tokens(cfg: &Config) -> anyhow::Result<Tokens> {
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
    Ok(tokens)
}

/// The store (SQLite with its disk reserve, or PostgreSQL) and its name for messages; on a
/// shared (PostgreSQL) store, this node's name, and the node is a standby until it leads.
fn open_store(cfg: &Config) -> anyhow::Result<(Arc<Store>, String, Option<String>)> {
    let store = match &cfg.store {
        crate::config::StoreConfig::Sqlite => {
            let db = cfg.data_dir.join("marquee.db");
            let store = Store::open(&db)
                .with_context(|| format!("cannot open {}", db.display()))?
                .keep_reserve(&cfg.data_dir, cfg.disk_reserve);
            (Arc::new(store), db.display().to_string(), None)
        }
        crate::config::StoreConfig::Postgres { url, node, .. } => {
            let store = Store::connect_configured(&cfg.store)
                .with_context(|| format!("cannot open the PostgreSQL store {url}"))?;
            store.set_node(node);
            // Its broker account goes into the generated Mosquitto ACL next to the other
            // nodes' (`marquee broker mosquitto`).
            let user = cfg.mqtt.credentials.as_ref().map(|c| c.0.as_str());
            store
                .record_node(node, user, chrono::Utc::now())
                .with_context(|| format!("cannot record node {node} in the store"))?;
            crate::leader::standby();
            (Arc::new(store), url.clone(), Some(node.clone()))
        }
    };
    // The daemon's broker account gets every topic in the generated ACL: a display registered
    // under that name would get them too (registration refuses it; this is the other order).
    if let Some((user, _)) = &cfg.mqtt.credentials
        && store.0.registry()?.iter().any(|d| d.id == *user)
    {
        anyhow::bail!(
            "{}: mqtt.username: {user:?} is a registered display's id; give the daemon another broker account (or remove the display: marquee display remove {user})",
            cfg.file
        );
    }
    Ok(store)
}

/// The display registry as stored (on a shared store, every node reads it again when another
/// changes it: `crate::handoff::follow`).
fn load_registry(
    cfg: &Config,
    store: &Store,
    db: &str,
) -> anyhow::Result<Arc<crate::registry::Registry>> {
    let registry = crate::registry::Registry::load(store)
        .with_context(|| format!("cannot read the display registry in {db}"))?;
    for (id, channel) in &cfg.schedule.displays {
        if registry.get(id).is_none() {
            tracing::warn!(
                display = %id,
                "declared under [[schedule.displays]] but not registered: its reports are dropped until `marquee display add {id} --channel {channel}`"
            );
        }
    }
    Ok(registry)
}

/// Sharing a PostgreSQL store: waits to lead before anything the fleet must see once, then keeps
/// the lease (`crate::leader`) until its token is cancelled. Answers the node, the epoch, that
/// token and the keeping task; `None` on SQLite (one daemon).
async fn lead(cfg: &Config, store: &Arc<Store>) -> anyhow::Result<Option<Led>> {
    let crate::config::StoreConfig::Postgres { node, lease, .. } = &cfg.store else {
        return Ok(None);
    };
    let epoch = crate::leader::acquire(store, node, *lease).await?;
    let keep = CancellationToken::new();
    let kept = tokio::spawn(crate::leader::keep(
        store.clone(),
        node.clone(),
        epoch,
        *lease,
        keep.clone(),
    ));
    Ok(Some((node.clone(), epoch, keep, kept)))
}

/// After the drain (answers in flight were stored as the leader's), stops keeping the lease
/// and gives it back.
async fn step_down(store: &Arc<Store>, lease: Option<Led>) {
    if let Some((node, epoch, keep, kept)) = lease {
        keep.cancel();
        let _ = kept.await;
        crate::leader::resign(store, &node, epoch).await;
    }
}

/// What [`lead`] answers.
type Led = (String, i64, CancellationToken, tokio::task::JoinHandle<()>);

/// A list import cut off by a crash or restart left an `importing` campaign: never sent. (On a
/// shared store, only this node's: another node's import may be under way.)
fn drop_cut_off_imports(store: &Store) {
    match store.drop_importing(None) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            campaigns = n,
            "removed campaigns whose list import was cut off"
        ),
        Err(e) => tracing::error!(error = %e, "cannot remove cut-off imports"),
    }
}

/// Starts the embedded broker when configured; returns the brokers to connect to, the daemon's
/// credentials and the embedded broker (kept alive by the caller).
async fn start_broker(cfg: &Config, store: &Store) -> anyhow::Result<Connection> {
    match &cfg.mqtt.broker {
        BrokerConfig::Embedded { listen, users } => {
            // The embedded broker died with the last daemon: no display's last will was
            // delivered, so what the store says about them is not known until they report.
            if let Err(e) = store.displays_unknown() {
                tracing::error!(error = %e, "cannot mark the displays unknown");
            }
            start_embedded(cfg, *listen, users).await
        }
        BrokerConfig::External { brokers, .. } => {
            Ok((brokers.clone(), cfg.mqtt.credentials.clone(), None))
        }
    }
}

/// Binds the API's address; returns the listener, the bound address and the API's URL (a
/// warning when tokens would cross the network in clear text).
async fn bind_http(
    cfg: &Config,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr, String)> {
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
    Ok((listener, http_addr, api_url))
}

/// The daemon's broker connection: its subscriptions (the retained topics it owns, for their
/// echo, and the agents' reports: their events as a member of the nodes' [`SHARE`] group when
/// the broker shares, [`share_intake`]) and its last will (`offline`).
fn connect_mqtt(
    cfg: &Config,
    brokers: Vec<(String, u16)>,
    credentials: Option<(String, String)>,
    shared_intake: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<(mqtt::MqttHandle, mpsc::Receiver<mqtt::MqttEvent>)> {
    let prefix = &cfg.mqtt.topic_prefix;
    let events = Filter::AgentEvents.render(prefix);
    let subscriptions = vec![
        Filter::ChannelTimelines.render(prefix),
        Filter::DisplayTimelines.render(prefix),
        Filter::AgentStatus.render(prefix),
        if shared_intake {
            format!("{SHARE}/{events}")
        } else {
            events
        },
        Filter::Alerts.render(prefix),
        Filter::HeldAlerts.render(prefix),
    ];
    Ok(mqtt::connect(
        ClientOptions {
            client_id: cfg.mqtt.client_id.clone(),
            brokers,
            credentials,
            keep_alive: cfg.mqtt.keep_alive,
            max_packet: cfg.mqtt.max_payload,
            subscriptions,
            tls: cfg.mqtt.tls.clone(),
            last_will: Some(mqtt::WillFn::fixed(mqtt::LastWill {
                topic: Topic::DaemonStatus.render(prefix),
                payload: serde_json::to_vec(&DaemonStatus { online: false })?,
            })),
        },
        cancel.child_token(),
    ))
}

/// Every node: the delivery-report intake, and the web server's state (the dispatcher and the
/// reconciler are built, to be started by [`start_leading`]). `web`: the catalog view, the
/// tokens and the reload sender the API needs.
fn sms_and_api(
    app: &Arc<crate::app::Ctx>,
    metrics: &Metrics,
    http_addr: std::net::SocketAddr,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    web: (
        tokio::sync::watch::Receiver<Arc<crate::scheduler::catalog::Catalog>>,
        Tokens,
        mpsc::Sender<Reload>,
    ),
) -> anyhow::Result<(Arc<AppState>, crate::sms::dispatch::Dispatcher)> {
    let (catalog, tokens, reload) = web;
    let (cfg, store) = (&app.cfg, &app.store);
    let sms_health = crate::sms::dispatch::Health::default();
    let (reports, intake) =
        crate::sms::dlr::intake(store.clone(), metrics.clone(), cancel.child_token());
    tracker.spawn(intake);
    let dispatcher = crate::sms::dispatch::Dispatcher::new(
        cfg.clone(),
        store.clone(),
        metrics.clone(),
        app.sms_waker.clone(),
        sms_health.clone(),
        http_addr,
    )?;
    let reconciler = Arc::new(crate::sms::reconcile::Reconciler::new(
        dispatcher.gateways(),
        store.clone(),
    ));
    let state = Arc::new(AppState {
        app: app.clone(),
        catalog,
        metrics: metrics.clone(),
        tokens,
        reload,
        reports,
        reconciler,
        sms_health,
    });
    Ok((state, dispatcher))
}

/// The leader: SMS dispatch and reconciliation, the held-alert starter and the CAP feeds.
fn start_leading(
    state: &Arc<AppState>,
    dispatcher: crate::sms::dispatch::Dispatcher,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let app = &state.app;
    tracker.spawn(state.reconciler.clone().run(cancel.clone()));
    tracker.spawn(dispatcher.run(cancel.clone()));
    tracker.spawn(crate::alerts::start_held_alerts(
        app.clone(),
        cancel.clone(),
    ));
    for (url, every) in app.cfg.cap_feeds.clone() {
        tracing::info!(feed = %url, every = ?every, "polling the CAP feed");
        tracker.spawn(crate::alerts::cap_feed::run(
            app.clone(),
            state.metrics.clone(),
            url,
            every,
            cancel.clone(),
        ));
    }
}

/// What the main loop watches once everything runs.
struct Running {
    ready: oneshot::Receiver<()>,
    reload: mpsc::Sender<Reload>,
    broker: String,
    http_addr: std::net::SocketAddr,
    api_url: String,
}

/// Tells systemd `READY=1` once the scheduler has published everything, reloads on SIGHUP,
/// and returns on SIGTERM, SIGINT or a fatal error (`cancel`).
async fn until_signal(
    cfg: &Config,
    mut r: Running,
    signals: &mut Signals,
    cancel: &CancellationToken,
) {
    let mut waiting = tokio::time::interval(Duration::from_secs(5));
    waiting.tick().await;
    let mut ready = false;
    loop {
        tokio::select! {
            res = &mut r.ready, if !ready => {
                ready = true;
                if res.is_ok() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    tracing::info!(http = %r.http_addr, api = %r.api_url, mqtt = %r.broker, playlists = %cfg.schedule.playlists_dir.display(), "marquee ready");
                }
            }
            _ = waiting.tick(), if !ready => {
                tracing::warn!(mqtt = %r.broker, "still waiting for the MQTT broker");
            }
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading playlists");
                let _ = r.reload.try_send(Reload::Everything);
            }
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = cancel.cancelled() => return,
        }
    }
}

/// Every second: the write-ahead log checkpointed off the writers' path ([`Store::checkpoint`]).
async fn checkpoints(store: Arc<Store>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = store.call(|s| s.checkpoint()).await {
            tracing::warn!(error = %e, "checkpoint of the write-ahead log failed; writers checkpoint past the backstop");
        }
    }
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

#[cfg(feature = "embedded-broker")]
type Broker = Option<mqtt::broker::EmbeddedBroker>;
#[cfg(not(feature = "embedded-broker"))]
type Broker = Option<()>;

/// The brokers to connect to, the daemon's credentials, and the embedded broker if any.
type Connection = (Vec<(String, u16)>, Option<(String, String)>, Broker);

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
        vec![(addr.ip().to_string(), addr.port())],
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
