//! The scheduler: the runtime shell around [`crate::domain::resolve`]. It owns the playlist
//! catalog and the retained timeline topics, and
//!
//! - reloads the playlists directory when told (debounced file watch, SIGHUP), keeping each broken
//!   file's last good version live and logging its errors as `file:line:col: message`;
//! - resolves every channel (and every individually targeted display) over the horizon and
//!   publishes a new signed version only when what the screens will show has changed (content
//!   compared over the window the previous version covers, not timestamps), or when the previous
//!   version's horizon is half used up;
//! - records each version in the store before publishing it, so versions only grow across restarts;
//! - re-asserts every retained payload on each (re)connection, and restores a topic at once when
//!   another client overwrites it.

pub mod catalog;
pub mod events;
pub mod files;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{Playlist, TargetRef, resolve};
use crate::metrics::Metrics;
use crate::mqtt::{MqttEvent, MqttHandle};
use crate::scheduler::catalog::{Catalog, Trust};
use crate::store::{Published, Store};
use crate::wire::{KeyPair, Signed, SignedBody, Timeline, Topic, sign};

/// A signed payload to put on a retained topic through the scheduler, so that it is versioned,
/// stored, re-asserted and restored exactly like timelines (used for alerts).
pub struct PublishRequest {
    /// The topic.
    pub topic: Topic,
    /// The content.
    pub payload: Signed,
    /// When receivers must stop honouring it.
    pub expires_at: DateTime<Utc>,
    /// Publish only if the topic currently holds the alert with this id (for clears, so that
    /// clearing an old alert cannot remove a newer one).
    pub if_current_alert: Option<String>,
    /// The version published (`None` if skipped), and whether the broker connection was up:
    /// when it was not, the payload is stored and goes out when the connection is back.
    pub reply: oneshot::Sender<anyhow::Result<(Option<u64>, bool)>>,
}

/// How long a payload we published counts as "ours" when it echoes back to our subscription.
const ECHO_WINDOW: Duration = Duration::from_secs(10);

/// A topic overwritten by another client is restored at most this often: a flood of junk on a
/// daemon topic costs each subscriber one copy of the payload per interval, not one per message.
const RESTORE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a signed timeline clear stays valid (see [`Scheduler::clear`]).
const CLEAR_LIFETIME: chrono::Duration = chrono::Duration::days(365);

/// Quiet time after a complete change (a file closed after writing or renamed into place, an
/// API save, SIGHUP): long enough to take a multi-file checkout in one reload (`git` writes a
/// checkout's files back to back, well under a millisecond apart), short beside the 50 ms an
/// edit may take to reach the screens' broker.
const SETTLE: Duration = Duration::from_millis(5);

/// A directory that keeps changing is reloaded after this many debounces at the latest.
const MAX_HOLD_DEBOUNCES: u32 = 10;

/// A request to reload the playlists directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Everything written so far is complete: reload after `SETTLE` of quiet.
    Complete,
    /// A file is still being written: reload after `schedule.debounce` of quiet.
    Writing,
    /// SIGHUP: as `Complete`, but every file is read again (no stamp is trusted: a network
    /// file system may serve old attributes) and every target resolved.
    Everything,
}

/// The scheduler's state. Built by [`Scheduler::new`], driven by [`Scheduler::run`].
pub struct Scheduler {
    cfg: Arc<Config>,
    keys: Arc<KeyPair>,
    store: Arc<Store>,
    mqtt: MqttHandle,
    metrics: Metrics,
    catalog_tx: watch::Sender<Arc<Catalog>>,
    published: BTreeMap<String, Published>,
    /// A publishing pass failed: the next one resolves every target.
    retry_all: bool,
    /// Storing the good sources failed: the next reload compares and stores them all.
    persist_all: bool,
    /// The timeline last published on a topic, as published (what `published` holds as JSON),
    /// so deciding whether a new one differs does not decode it again; dropped when anything
    /// else is recorded on the topic.
    held: HashMap<String, Timeline>,
    recent: HashMap<String, VecDeque<(Instant, [u8; 32])>>,
    /// Per topic: when it was last restored, and whether another restore is waiting.
    restores: HashMap<String, (Instant, bool)>,
    /// Timelines not published because they are over `mqtt.max_payload`: topic → packet bytes.
    oversize: HashMap<String, usize>,
    connected: bool,
    /// The highest version ever published on any topic, kept in `data_dir/versions.hwm` beside
    /// the signing key, so that a database restored from an old backup (or lost) does not
    /// restart versions below what agents hold (they would refuse every payload as a
    /// rollback, alerts included).
    high_water: u64,
    /// Every new version is above this: the high-water mark when the database was behind it.
    floor: u64,
    /// The highest version any registered display reports holding (from the fleet intake).
    agents_hold: AgentsHold,
}

/// The highest payload version registered displays report holding (`held_max` in their signed
/// status), shared by the fleet intake (which raises it) and the scheduler (which adopts it when
/// it is above everything it knows of: a database and high-water mark both lost or restored).
#[derive(Clone, Default)]
pub struct AgentsHold {
    /// The version.
    pub max: Arc<std::sync::atomic::AtomicU64>,
    /// Woken when it rises.
    pub raised: Arc<tokio::sync::Notify>,
}

impl AgentsHold {
    /// Records a display's `held_max`; wakes the scheduler when it is a new maximum.
    pub fn report(&self, held_max: u64) {
        let before = self
            .max
            .fetch_max(held_max, std::sync::atomic::Ordering::Relaxed);
        if held_max > before {
            self.raised.notify_one();
        }
    }
}

/// A display claiming to hold a version more than this above the high-water mark is not
/// believed (a misbehaving or hostile agent could otherwise push versions toward overflow).
const MAX_ADOPTED_JUMP: u64 = 1_000_000_000;

/// The file of the version high-water mark.
pub const HIGH_WATER_FILE: &str = "versions.hwm";

/// The targets a publishing pass resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every target: at start, on (re)connection, on SIGHUP and after a failed pass.
    All,
    /// The periodic pass: the targets with no timeline yet, or whose timeline has used half
    /// its horizon. No other target can need a new one: nothing it plays changed (a change
    /// comes with a reload, which publishes what it touches), and over what it holds its
    /// timeline resolves the same (`needs_publish`).
    Due,
    /// The targets that some playlists (the versions before and after a reload of the files
    /// that changed) can affect: their channels, every display on those channels, and the
    /// displays they name. A target's timeline is resolved from the playlists that match it
    /// (`TargetRef::matches`) and nothing else, so no other target's timeline can differ from
    /// the one it holds; what time alone changes there, the periodic pass publishes.
    Touched {
        /// Channels named by a changed playlist.
        channels: BTreeSet<String>,
        /// Displays named by a changed playlist.
        displays: BTreeSet<String>,
    },
}

impl Scope {
    /// The scope of a reload that changed `playlists` (old and new versions).
    pub fn touched<'a>(playlists: impl Iterator<Item = &'a Playlist>) -> Scope {
        let (mut channels, mut displays) = (BTreeSet::new(), BTreeSet::new());
        for p in playlists {
            channels.extend(p.channels.iter().cloned());
            displays.extend(p.displays.iter().cloned());
        }
        Scope::Touched { channels, displays }
    }

    fn includes(&self, t: &Target) -> bool {
        match self {
            Scope::All | Scope::Due => true,
            Scope::Touched { channels, displays } => {
                channels.contains(&t.channel)
                    || matches!(&t.topic, Topic::DisplayTimeline(d) if displays.contains(d))
            }
        }
    }
}

/// A target with its topic.
#[derive(Clone)]
struct Target {
    topic: Topic,
    channel: String,
}

impl Target {
    fn as_ref(&self) -> TargetRef<'_> {
        match &self.topic {
            Topic::DisplayTimeline(d) => TargetRef::Display {
                id: d,
                channel: &self.channel,
            },
            _ => TargetRef::Channel(&self.channel),
        }
    }
}

/// The playlists that match one of `targets` (what resolving them reads), copied: each copy
/// computes its windows anew. Every live playlist for [`Scope::All`].
fn matching<'a>(
    live: impl Iterator<Item = &'a Playlist>,
    targets: &[&Target],
    scope: &Scope,
) -> Vec<Playlist> {
    live.filter(|p| *scope == Scope::All || targets.iter().any(|t| t.as_ref().matches(p)))
        .cloned()
        .collect()
}

impl Scheduler {
    /// Loads what was published before (from the store) and the playlists directory.
    pub fn new(
        cfg: Arc<Config>,
        keys: Arc<KeyPair>,
        store: Arc<Store>,
        mqtt: MqttHandle,
        metrics: Metrics,
        catalog_tx: watch::Sender<Arc<Catalog>>,
    ) -> anyhow::Result<Scheduler> {
        let published: BTreeMap<String, Published> = store
            .published()?
            .into_iter()
            .map(|p| (p.topic.clone(), p))
            .collect();
        let high_water = std::fs::read_to_string(cfg.data_dir.join(HIGH_WATER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let stored_max = published.values().map(|p| p.version).max().unwrap_or(0);
        let floor = if stored_max < high_water {
            tracing::warn!(
                stored = stored_max,
                high_water,
                "the database is behind the versions already published (restored from a backup, or lost): new versions continue above {high_water}"
            );
            high_water
        } else {
            0
        };
        let mut s = Scheduler {
            cfg,
            keys,
            store,
            mqtt,
            metrics,
            catalog_tx,
            published,
            held: HashMap::new(),
            retry_all: false,
            persist_all: false,
            recent: HashMap::new(),
            restores: HashMap::new(),
            oversize: HashMap::new(),
            connected: false,
            high_water,
            floor,
            agents_hold: AgentsHold::default(),
        };
        s.reload(false);
        s.persist_good()?;
        Ok(s)
    }

    /// The catalog as last published (the last good sources stored by the last leader, or by
    /// this daemon before a restart), to seed [`Scheduler::new`] and the API: a file that is
    /// broken now keeps the version that was live.
    pub fn last_published(
        cfg: &Config,
        store: &Store,
    ) -> Result<Arc<Catalog>, crate::store::StoreError> {
        let ctx = cfg.schedule.validation_context();
        Ok(Arc::new(Catalog::from_sources(
            &store.good_playlists()?,
            &ctx,
        )))
    }

    fn playlists_dir(&self) -> &PathBuf {
        &self.cfg.schedule.playlists_dir
    }

    /// Re-reads the playlists directory (parsing only the files whose bytes changed); the
    /// files that changed and the targets they can affect.
    pub fn reload(&mut self, everything: bool) -> (BTreeSet<PathBuf>, Scope) {
        let previous = self.catalog_tx.borrow().clone();
        let ctx = self.cfg.schedule.validation_context();
        let trust = if everything {
            Trust::Nothing
        } else {
            Trust::Stamps
        };
        let catalog = match Catalog::load(self.playlists_dir(), &ctx, Some(&previous), trust) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    dir = %self.playlists_dir().display(),
                    error = %e,
                    "cannot read the playlists directory; keeping every playlist as it was"
                );
                return (BTreeSet::new(), Scope::touched(std::iter::empty()));
            }
        };

        let changed = catalog.changed(&previous);
        let mut broken = 0;
        for (path, state) in &catalog.files {
            if !state.errors.is_empty() {
                broken += 1;
            }
            if !changed.contains(path) {
                continue;
            }
            for e in &state.errors {
                tracing::error!("{e}");
            }
            if !state.errors.is_empty() && state.good.is_some() {
                tracing::warn!(file = %path.display(), "keeping the last good version of this playlist live");
            }
        }
        let live = catalog.live().count();
        self.metrics.reloads.inc();
        self.metrics.playlists_live.set(live as i64);
        self.metrics.playlist_errors.set(broken);
        tracing::info!(live, broken, changed = changed.len(), dir = %self.playlists_dir().display(), "playlists loaded");
        let good = |c: &Catalog, path: &PathBuf| {
            c.files
                .get(path)
                .and_then(|s| s.good.as_ref().map(|(p, _)| p.clone()))
        };
        let touched: Vec<Playlist> = changed
            .iter()
            .flat_map(|path| [good(&previous, path), good(&catalog, path)])
            .flatten()
            .collect();
        self.catalog_tx.send_replace(Arc::new(catalog));
        let scope = if everything {
            Scope::All
        } else {
            Scope::touched(touched.iter())
        };
        (changed, scope)
    }

    /// After a reload's pass (the files are the source of truth; this copy only keeps a file
    /// that breaks later on its last good version across a restart): the changed files' good
    /// sources, or all of them compared when an earlier store failed.
    fn persist(&mut self, changed: &BTreeSet<PathBuf>) {
        let all = std::mem::take(&mut self.persist_all);
        let res = tokio::task::block_in_place(|| {
            if all {
                self.persist_good()
            } else {
                self.persist_changed(changed)
            }
        });
        if let Err(e) = res {
            self.persist_all = true;
            tracing::error!(error = %format!("{e:#}"), "cannot store the live playlists; trying again on the next reload");
        }
    }

    /// Stores the live sources of the files a reload changed, for the next start.
    fn persist_changed(&self, changed: &BTreeSet<PathBuf>) -> anyhow::Result<()> {
        let catalog = self.catalog_tx.borrow().clone();
        let (mut set, mut removed) = (Vec::new(), Vec::new());
        for path in changed {
            let key = path.display().to_string();
            match catalog.files.get(path).and_then(|s| s.good.as_ref()) {
                Some((_, src)) => set.push((key, src.clone())),
                None => removed.push(key),
            }
        }
        if !set.is_empty() || !removed.is_empty() {
            self.store.update_good_playlists(&set, &removed)?;
        }
        Ok(())
    }

    /// Stores the live sources (if they differ from the stored ones) for the next start.
    fn persist_good(&self) -> anyhow::Result<()> {
        let good = self.catalog_tx.borrow().good_sources();
        if self.store.good_playlists()? != good {
            self.store.set_good_playlists(&good)?;
        }
        Ok(())
    }

    fn targets<'a>(&self, playlists: impl Iterator<Item = &'a Playlist> + Clone) -> Vec<Target> {
        let mut out: Vec<Target> = self
            .cfg
            .schedule
            .channels
            .iter()
            .map(|c| Target {
                topic: Topic::ChannelTimeline(c.clone()),
                channel: c.clone(),
            })
            .collect();
        for (display, channel) in &self.cfg.schedule.displays {
            if playlists.clone().any(|p| p.displays.contains(display)) {
                out.push(Target {
                    topic: Topic::DisplayTimeline(display.clone()),
                    channel: channel.clone(),
                });
            }
        }
        out
    }

    /// Resolves the targets in `scope` at `now` and publishes what changed; clears display
    /// timelines no longer targeted. Returns how many new versions were published.
    pub async fn publish_due(
        &mut self,
        issued: DateTime<Utc>,
        scope: &Scope,
    ) -> anyhow::Result<usize> {
        // Timelines start on a whole second (readable); the signing time stays precise, since
        // agents measure their apply latency from it.
        let now = issued.trunc_subsecs(0);
        let catalog = self.catalog_tx.borrow().clone();
        let horizon = self.cfg.schedule.horizon;
        let prefix = self.cfg.mqtt.topic_prefix.clone();
        // Which targets exist depends on every playlist; a scoped pass resolves its targets
        // from the playlists that can match them (a copy each: its windows are computed anew),
        // spread over the cores.
        let targets = self.targets(catalog.live());
        let chosen: Vec<&Target> = targets
            .iter()
            .filter(|t| match scope {
                Scope::Due => self.is_due(&t.topic.render(&prefix), now),
                _ => scope.includes(t),
            })
            .collect();
        let playlists = Arc::new(matching(catalog.live(), &chosen, scope));
        let chosen: Vec<Target> = chosen.into_iter().cloned().collect();
        let tz = self.cfg.schedule.timezone.name();
        let resolved = in_parallel(chosen, move |t: Target| {
            let tl = resolve(&playlists, t.as_ref(), now, now + horizon, tz);
            (t.topic.render(&prefix), tl)
        })
        .await?;
        let batch = resolved
            .into_iter()
            .filter(|(topic, tl)| self.needs_publish(topic, tl, now))
            .collect();
        let count = self.publish_timelines(batch, issued).await?;
        // Display timelines no longer targeted are cleared, so those displays follow their channel.
        let prefix = &self.cfg.mqtt.topic_prefix;
        let wanted: Vec<String> = targets.iter().map(|t| t.topic.render(prefix)).collect();
        let stale: Vec<String> = self
            .published
            .iter()
            // A timeline (body set), or a clear from before clears were signed (empty payload).
            .filter(|(topic, p)| {
                (p.body.is_some() || p.payload.is_empty()) && !wanted.contains(topic)
            })
            .filter(|(topic, _)| {
                matches!(
                    Topic::parse(prefix, topic),
                    Some(Topic::DisplayTimeline(_) | Topic::ChannelTimeline(_))
                )
            })
            .map(|(t, _)| t.clone())
            .collect();
        for topic in stale {
            self.clear(topic, now).await?;
        }
        Ok(count)
    }

    fn needs_publish(&self, topic: &str, tl: &Timeline, now: DateTime<Utc>) -> bool {
        let horizon = self.cfg.schedule.horizon;
        match (self.published.get(topic), self.held.get(topic)) {
            (Some(prev), Some(old)) => differs(old, prev.issued_at, tl, now, horizon),
            (prev, _) => needs_publish(prev, tl, now, horizon),
        }
    }

    /// Whether `topic` has no timeline yet, or its timeline has used half its horizon (what
    /// the periodic pass resolves).
    fn is_due(&self, topic: &str, now: DateTime<Utc>) -> bool {
        self.published
            .get(topic)
            .is_none_or(|p| p.body.is_none() || now >= p.issued_at + self.cfg.schedule.horizon / 2)
    }

    /// The next version of `topic`: above what is stored for it and above the floor.
    fn next_version(&self, topic: &str) -> u64 {
        self.published
            .get(topic)
            .map_or(0, |p| p.version)
            .max(self.floor)
            + 1
    }

    /// Keeps the high-water mark at `version` or above (a failure is logged: publishing goes on).
    /// Written once per pass (the highest version of its batch), however many channels it
    /// publishes.
    fn raise_high_water(&mut self, version: u64) {
        if version <= self.high_water {
            return;
        }
        let path = self.cfg.data_dir.join(HIGH_WATER_FILE);
        match crate::keys::write_atomic(&path, format!("{version}\n").as_bytes(), 0o644) {
            Ok(()) => self.high_water = version,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %format!("{e:#}"), "cannot keep the version high-water mark")
            }
        }
    }

    async fn record(&mut self, p: Published) -> anyhow::Result<()> {
        self.record_all(vec![p]).await
    }

    /// Stores `rows` in one transaction, then sends each (stored before sent: a version on the
    /// broker is always one the store knows).
    async fn record_all(&mut self, rows: Vec<Published>) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (rows, refused) = self
            .store
            .call(move |store| {
                let refused = store.record_published_all(&rows)?;
                Ok((rows, refused))
            })
            .await?;
        if let Some(p) = refused.map(|i| &rows[i]) {
            anyhow::bail!(
                "store refused version {} of {} (a newer one is stored: is another marquee using this data directory?)",
                p.version,
                p.topic
            );
        }
        if let Some(top) = rows.iter().map(|p| p.version).max() {
            self.raise_high_water(top);
        }
        for p in rows {
            if self.connected {
                self.send(&p.topic, p.payload.clone());
            }
            self.held.remove(&p.topic);
            self.published.insert(p.topic.clone(), p);
        }
        Ok(())
    }

    /// Publishes `batch` (topic, timeline): each encoded once and signed (Ed25519 hashes the
    /// ~100 kB body twice) on the blocking pool, the batch split over the cores; then all stored
    /// in one commit and sent. Answers how many were published.
    async fn publish_timelines(
        &mut self,
        batch: Vec<(String, Timeline)>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let work: Vec<(String, u64, Timeline)> = batch
            .into_iter()
            .map(|(topic, tl)| {
                let version = self.next_version(&topic);
                (topic, version, tl)
            })
            .collect();
        let keys = self.keys.clone();
        let signed = in_parallel(work, move |(topic, version, tl)| {
            sign_one(&keys, topic, version, tl, now)
        })
        .await?;
        let mut rows = Vec::new();
        let mut timelines = Vec::new();
        for one in signed {
            let (topic, version, tl, body, payload) = one?;
            if self.too_big(&topic, payload.len()) {
                continue;
            }
            tracing::info!(topic = %topic, version, segments = tl.segments.len(), bytes = payload.len(), "publishing timeline");
            rows.push(Published {
                topic: topic.clone(),
                version,
                payload,
                body: Some(body),
                issued_at: now,
            });
            timelines.push((topic, tl));
        }
        let n = rows.len();
        self.record_all(rows).await?;
        for (topic, tl) in timelines {
            self.held.insert(topic, tl);
        }
        self.metrics.timelines_published.inc_by(n as u64);
        Ok(n)
    }

    /// Whether a payload of `len` bytes on `topic` is over the broker's packet limit (then it is
    /// never sent: one packet over the limit would cost the connection, and every other topic
    /// with it; the last good version stays retained). Logged once per size.
    fn too_big(&mut self, topic: &str, len: usize) -> bool {
        let size = crate::preview::publish_size(topic, len);
        let over = size > self.cfg.mqtt.max_payload;
        let changed = if over {
            let new = self.oversize.insert(topic.to_owned(), size) != Some(size);
            if new {
                tracing::error!(
                    topic = %topic,
                    bytes = size,
                    limit = self.cfg.mqtt.max_payload,
                    "timeline too large for mqtt.max_payload; not published, the last good version stays (see `marquee check`)"
                );
            }
            new
        } else {
            self.oversize.remove(topic).is_some()
        };
        if changed {
            self.metrics
                .timelines_oversize
                .set(self.oversize.len() as i64);
        }
        over
    }

    /// Ends the timeline on `topic` with a signed clear (retained, so a display that connects
    /// later learns it too). Its expiry is far: a clear shows nothing, so a late one does no harm,
    /// while an expired one would be refused by every agent that joins after it.
    async fn clear(&mut self, topic: String, now: DateTime<Utc>) -> anyhow::Result<()> {
        let version = self.next_version(&topic);
        tracing::info!(topic = %topic, version, "clearing the timeline (no longer targeted)");
        let body = SignedBody {
            topic: topic.clone(),
            version,
            issued_at: now,
            expires_at: now + CLEAR_LIFETIME,
            payload: Signed::TimelineClear,
        };
        let payload = sign(&self.keys, &body);
        self.record(Published {
            topic,
            version,
            payload,
            body: None,
            issued_at: now,
        })
        .await
    }

    fn send(&mut self, topic: &str, payload: Vec<u8>) {
        if !crate::leader::may_act() {
            tracing::warn!(topic, "not sent: this node's leader lease has ended");
            return;
        }
        let digest: [u8; 32] = Sha256::digest(&payload).into();
        let recent = self.recent.entry(topic.to_owned()).or_default();
        recent.push_back((Instant::now(), digest));
        while recent.len() > 8 {
            recent.pop_front();
        }
        if let Err(e) = self.mqtt.publish(topic, payload, true) {
            tracing::warn!(topic, error = %e, "publish not queued; it will be re-asserted on reconnect");
        }
    }

    /// The shared record of what displays hold (give it to the fleet intake).
    pub fn agents_hold(&self) -> AgentsHold {
        self.agents_hold.clone()
    }

    /// Adopts the highest version displays report holding when it is above every version this
    /// daemon knows of (its database and high-water mark were lost or restored from an old
    /// backup): new versions continue above it, and everything current is signed again so every
    /// screen takes it (they would refuse lower versions as rollbacks).
    async fn adopt_agents_versions(&mut self) {
        let held = self
            .agents_hold
            .max
            .load(std::sync::atomic::Ordering::Relaxed);
        let known = self
            .published
            .values()
            .map(|p| p.version)
            .max()
            .unwrap_or(0)
            .max(self.high_water)
            .max(self.floor);
        if held <= known {
            return;
        }
        if held > known.saturating_add(MAX_ADOPTED_JUMP) {
            tracing::warn!(
                held,
                known,
                "a display reports an implausible version; not adopted"
            );
            return;
        }
        tracing::warn!(
            held,
            known,
            "displays hold versions above any this daemon knows (its database restored or lost): continuing above them"
        );
        self.floor = held;
        self.raise_high_water(held);
        let own = self.keys.public().clone();
        match self.resign(&own).await {
            Ok(n) => tracing::info!(payloads = n, "signed again above the adopted version"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot sign again above the adopted version")
            }
        }
    }

    /// After a key rotation: signs every current retained payload again with the new key, under
    /// the next version of its topic, keeping its content and expiry (`old`: the previous public
    /// key, to read them). Expired payloads stay as they are; agents refuse them either way.
    /// Returns how many were signed again. Call before the first connection (they go out with
    /// the re-assertion).
    pub async fn resign(&mut self, old: &crate::wire::PublicKey) -> anyhow::Result<usize> {
        let now = Utc::now();
        let current: Vec<Published> = self.published.values().cloned().collect();
        let mut n = 0;
        for p in current {
            if p.payload.is_empty() {
                continue;
            }
            let body = match crate::wire::verify(old, &p.topic, &p.payload, None, now) {
                Ok(b) => b,
                Err(e) => {
                    // Expired (an alert): cleared, as a re-assertion would; under the new key it
                    // could no longer be told from a forgery.
                    tracing::info!(topic = %p.topic, reason = %e, "not signed again; cleared");
                    self.record(Published {
                        payload: Vec::new(),
                        body: None,
                        issued_at: now,
                        ..p
                    })
                    .await?;
                    continue;
                }
            };
            let version = self.next_version(&p.topic);
            let payload = sign(
                &self.keys,
                &SignedBody {
                    topic: p.topic.clone(),
                    version,
                    issued_at: now,
                    expires_at: body.expires_at,
                    payload: body.payload,
                },
            );
            self.record(Published {
                version,
                payload,
                issued_at: if p.body.is_some() { p.issued_at } else { now },
                ..p
            })
            .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Publishes a signed payload on a retained topic (see [`PublishRequest`]).
    pub async fn publish_signed(&mut self, req: &PublishRequest) -> anyhow::Result<Option<u64>> {
        let topic = req.topic.render(&self.cfg.mqtt.topic_prefix);
        let now = Utc::now();
        if let Some(id) = &req.if_current_alert {
            let current = self.published.get(&topic).and_then(|p| {
                crate::wire::verify(self.keys.public(), &topic, &p.payload, None, now).ok()
            });
            if !matches!(current.map(|b| b.payload), Some(Signed::Alert(a) | Signed::AlertAt(a)) if &a.id == id)
            {
                return Ok(None);
            }
        }
        let version = self.next_version(&topic);
        let body = SignedBody {
            topic: topic.clone(),
            version,
            issued_at: now,
            expires_at: req.expires_at,
            payload: req.payload.clone(),
        };
        let payload = sign(&self.keys, &body);
        tracing::info!(topic = %topic, version, "publishing signed payload");
        self.record(Published {
            topic,
            version,
            payload,
            body: None,
            issued_at: now,
        })
        .await?;
        Ok(Some(version))
    }

    /// Publishes every retained payload again (after a (re)connection). Alerts that expired in
    /// the meantime are cleared instead (receivers would refuse them anyway).
    pub fn reassert(&mut self) {
        let now = Utc::now();
        let prefix = self.cfg.mqtt.topic_prefix.clone();
        let all: Vec<(String, Vec<u8>)> = self
            .published
            .values()
            .map(|p| {
                let expired_alert = matches!(
                    Topic::parse(&prefix, &p.topic),
                    Some(Topic::Alert(_) | Topic::AlertHeld(_))
                ) && !p.payload.is_empty()
                    && matches!(
                        crate::wire::verify(self.keys.public(), &p.topic, &p.payload, None, now),
                        Err(crate::wire::WireError::Expired(_))
                    );
                let payload = if expired_alert {
                    Vec::new()
                } else {
                    p.payload.clone()
                };
                (p.topic.clone(), payload)
            })
            .collect();
        tracing::info!(topics = all.len(), "re-asserting retained timelines");
        for (topic, payload) in all {
            self.send(&topic, payload);
        }
    }

    /// Handles a message on one of our own topics: anything other than what we published (or a
    /// fresh echo of it) is overwritten at once with our payload.
    pub fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let prefix = &self.cfg.mqtt.topic_prefix;
        let ours = match self.published.get(topic) {
            Some(p) => p.payload.clone(),
            None => {
                // A timeline topic we never published (left by an older configuration or
                // written by someone else): clear it, so no screen takes it for ours (at most
                // once a second, like a restore).
                if payload.is_empty() || Topic::parse(prefix, topic).is_none() {
                    return;
                }
                Vec::new()
            }
        };
        if payload == ours.as_slice() {
            return;
        }
        let digest: [u8; 32] = Sha256::digest(payload).into();
        if let Some(recent) = self.recent.get_mut(topic) {
            recent.retain(|(at, _)| at.elapsed() < ECHO_WINDOW);
            if recent.iter().any(|(_, d)| *d == digest) {
                return; // an echo of one of our own recent publishes
            }
        }
        match self.restores.get_mut(topic) {
            Some((at, waiting)) if at.elapsed() < RESTORE_INTERVAL => {
                if !*waiting {
                    tracing::warn!(
                        topic,
                        bytes = payload.len(),
                        "retained topic overwritten again; restoring it once the interval has passed"
                    );
                }
                *waiting = true;
            }
            _ if !self.published.contains_key(topic) => {
                tracing::warn!(
                    topic,
                    "unexpected retained payload on a Marquee topic; clearing it"
                );
                self.restore(topic.to_owned(), ours);
            }
            _ => {
                tracing::warn!(
                    topic,
                    bytes = payload.len(),
                    "retained topic overwritten by another client; restoring it"
                );
                self.restore(topic.to_owned(), ours);
            }
        }
    }

    fn restore(&mut self, topic: String, payload: Vec<u8>) {
        self.metrics.retained_restored.inc();
        self.send(&topic, payload);
        // Junk on ever new topic names must not grow this for ever: entries past their
        // interval, with nothing waiting, carry no information.
        if self.restores.len() >= 4096 {
            self.restores
                .retain(|_, (at, waiting)| *waiting || at.elapsed() < RESTORE_INTERVAL);
        }
        self.restores.insert(topic, (Instant::now(), false));
    }

    /// When the next waiting restore is due, if any.
    fn next_restore(&self) -> Option<Instant> {
        self.restores
            .values()
            .filter(|(_, waiting)| *waiting)
            .map(|(at, _)| *at + RESTORE_INTERVAL)
            .min()
    }

    /// Restores the topics whose interval has passed.
    fn restore_due(&mut self) {
        let due: Vec<String> = self
            .restores
            .iter()
            .filter(|(_, (at, waiting))| *waiting && at.elapsed() >= RESTORE_INTERVAL)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in due {
            // Ours, or empty for a topic we never published.
            let p = self
                .published
                .get(&topic)
                .map(|p| p.payload.clone())
                .unwrap_or_default();
            self.restore(topic, p);
        }
    }

    fn next_due(&self) -> DateTime<Utc> {
        let half = self.cfg.schedule.horizon / 2;
        // Only timelines are republished when due (alerts and clears are signed once).
        self.published
            .values()
            .filter(|p| p.body.is_some())
            .map(|p| p.issued_at + half)
            .min()
            .unwrap_or_else(|| Utc::now() + half)
    }

    /// Runs until `cancel`: reloads on `reloads` (debounced), publishes `publishes`, republishes
    /// when due, re-asserts on reconnection, restores overwritten topics. `ready` fires after the first connection, once
    /// every timeline is published. `watchdog` is systemd's interval, if any.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<MqttEvent>,
        mut reloads: mpsc::Receiver<Reload>,
        mut publishes: mpsc::Receiver<PublishRequest>,
        mut ready: Option<oneshot::Sender<()>>,
        watchdog: Option<Duration>,
        cancel: CancellationToken,
    ) {
        let tick = watchdog.map_or(Duration::from_secs(30), |w| w / 2);
        let raised = self.agents_hold.raised.clone();
        // The full pass runs a tick after the last one at the latest, however often other
        // work (reloads, the echo of every publish) wakes the loop.
        let mut last_full = Instant::now();
        loop {
            let due = (self.next_due() - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(tick.saturating_sub(last_full.elapsed()));
            let restore_at = self.next_restore();
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(MqttEvent::Connected) => {
                        self.connected = true;
                        self.metrics.mqtt_connected.set(1);
                        self.metrics.mqtt_connects.inc();
                        self.reassert();
                        let _ = self.step().await;
                        last_full = Instant::now();
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Some(MqttEvent::Disconnected(_)) => {
                        self.connected = false;
                        self.metrics.mqtt_connected.set(0);
                    }
                    Some(MqttEvent::Message { topic, payload, .. }) => self.on_message(&topic, &payload),
                    None => break,
                },
                Some(req) = publishes.recv() => {
                    let res = self.publish_signed(&req).await;
                    let _ = req.reply.send(res.map(|v| (v, self.connected)));
                }
                Some(first) = reloads.recv() => {
                    let t0 = Instant::now();
                    let everything = self.settle(first, &mut reloads).await;
                    let t1 = Instant::now();
                    let (changed, scope) = self.reload(everything);
                    let t2 = Instant::now();
                    // A pass that failed left targets behind: this one does them all.
                    let scope = if std::mem::take(&mut self.retry_all) { Scope::All } else { scope };
                    let published = self.step_in(&scope).await;
                    let t3 = Instant::now();
                    if scope == Scope::All {
                        last_full = Instant::now();
                    }
                    self.persist(&changed);
                    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                    tracing::info!(
                        published,
                        settle_ms = ms(t0, t1),
                        load_ms = ms(t1, t2),
                        publish_ms = ms(t2, t3),
                        persist_ms = ms(t3, Instant::now()),
                        "reload applied"
                    );
                }
                _ = tokio::time::sleep_until(restore_at.unwrap_or_else(Instant::now).into()), if restore_at.is_some() => {
                    self.restore_due();
                }
                _ = tokio::time::sleep(due) => {
                    let scope = if std::mem::take(&mut self.retry_all) { Scope::All } else { Scope::Due };
                    let _ = self.step_in(&scope).await;
                    last_full = Instant::now();
                }
                _ = raised.notified() => {
                    self.adopt_agents_versions().await;
                }
            }
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }

    /// Waits for the playlists directory to go quiet after `first`: `SETTLE` after a complete
    /// change, `schedule.debounce` while a file is still being written, and never longer than
    /// `MAX_HOLD_DEBOUNCES` debounces in all (a directory that never stops changing is still read).
    /// Whether a [`Reload::Everything`] was among the requests.
    async fn settle(&self, first: Reload, reloads: &mut mpsc::Receiver<Reload>) -> bool {
        let debounce = self.cfg.schedule.debounce;
        let until = tokio::time::Instant::now() + debounce * MAX_HOLD_DEBOUNCES;
        let mut last = first;
        let mut everything = first == Reload::Everything;
        loop {
            let quiet = match last {
                Reload::Complete | Reload::Everything => SETTLE.min(debounce),
                Reload::Writing => debounce,
            };
            let wait = quiet.min(until.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, reloads.recv()).await {
                Ok(Some(r)) => {
                    everything |= r == Reload::Everything;
                    last = r;
                }
                _ => return everything,
            }
        }
    }

    /// Publishes what is due on every target; returns how many new versions went out.
    async fn step(&mut self) -> usize {
        self.step_in(&Scope::All).await
    }

    /// Publishes what is due on the targets of `scope`.
    async fn step_in(&mut self, scope: &Scope) -> usize {
        match self.publish_due(Utc::now(), scope).await {
            Ok(n) => n,
            Err(e) => {
                self.retry_all = true;
                tracing::error!(error = %format!("{e:#}"), "publishing timelines failed; the next pass (a reload, or the periodic one) resolves every target");
                0
            }
        }
    }
}

/// A signed timeline ready to store: topic, version, the timeline, its JSON, the payload.
type Signed1 = (String, u64, Timeline, String, Vec<u8>);

/// Encodes a timeline once and signs it.
fn sign_one(
    keys: &KeyPair,
    topic: String,
    version: u64,
    tl: Timeline,
    now: DateTime<Utc>,
) -> anyhow::Result<Signed1> {
    let json = serde_json::value::to_raw_value(&tl)?;
    let payload = crate::wire::sign_timeline(keys, &topic, version, now, tl.until, &json);
    Ok((topic, version, tl, json.get().to_owned(), payload))
}

/// `f` over `items` on the blocking pool, the items split into one run per core; the answers
/// in the items' order.
async fn in_parallel<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> anyhow::Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = items.len().div_ceil(cores.min(items.len()));
    let f = Arc::new(f);
    let mut runs = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<T> = items.by_ref().take(per).collect();
        let f = f.clone();
        runs.push(tokio::task::spawn_blocking(move || {
            chunk.into_iter().map(|x| f(x)).collect::<Vec<R>>()
        }));
    }
    let mut out = Vec::new();
    for run in runs {
        out.extend(run.await?);
    }
    Ok(out)
}

pub fn needs_publish(
    prev: Option<&Published>,
    tl: &Timeline,
    now: DateTime<Utc>,
    horizon: chrono::Duration,
) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    let Some(old) = prev
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Timeline>(b).ok())
    else {
        return true;
    };
    differs(&old, prev.issued_at, tl, now, horizon)
}

/// [`needs_publish`] over `old`, the timeline published at `issued_at`.
fn differs(
    old: &Timeline,
    issued_at: DateTime<Utc>,
    tl: &Timeline,
    now: DateTime<Utc>,
    horizon: chrono::Duration,
) -> bool {
    let half_used = now >= issued_at + horizon / 2;
    half_used || old.until <= now || old.clipped(now, old.until) != tl.clipped(now, old.until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::playlist::{Playlist, ValidationContext};
    use chrono::Duration as D;

    fn playlist(text: &str) -> Playlist {
        let src = format!(
            r#"{{"id": "p", "targets": {{"channels": ["lobby"]}},
                "schedule": [{{"start": "08:00", "end": "18:00"}}],
                "items": [{{"id": "a", "text": {{"en": "{text}"}}}}]}}"#
        );
        let ctx = ValidationContext {
            channels: vec!["lobby".into()],
            displays: Default::default(),
            timezone: chrono_tz::UTC,
        };
        Playlist::parse("p.json", None, &src, &ctx).unwrap()
    }

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2021-05-15T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + D::hours(h)
    }

    fn tl(text: &str, now: DateTime<Utc>) -> Timeline {
        resolve(
            &[playlist(text)],
            TargetRef::Channel("lobby"),
            now,
            now + D::hours(48),
            "UTC",
        )
    }

    fn published(tl: &Timeline, issued: DateTime<Utc>) -> Published {
        Published {
            topic: "t".into(),
            version: 1,
            payload: b"x".to_vec(),
            body: Some(serde_json::to_string(tl).unwrap()),
            issued_at: issued,
        }
    }

    /// A generated playlist: `seed` picks its tier, channels, displays, window and text.
    fn generated(id: usize, seed: u64, text: &str) -> Playlist {
        let tiers = ["fallback", "normal", "normal", "interrupt", "emergency"];
        let channels: Vec<String> = (0..1 + seed % 3)
            .map(|k| format!("\"c{}\"", (seed / 3 + k * 7) % 8))
            .collect();
        let displays: Vec<String> = (0..seed % 2)
            .map(|k| format!("\"d{}\"", (seed / 5 + k) % 6))
            .collect();
        let start = seed % 20;
        let src = format!(
            r#"{{"id": "p{id}", "tier": "{}", "weight": {}, "targets": {{"channels": [{}], "displays": [{}]}},
                "schedule": [{{"start": "{start:02}:00", "end": "{:02}:30"}}],
                "items": [{{"id": "a", "text": {{"en": "{text}"}}, "seconds": {}}}]}}"#,
            tiers[(seed % 5) as usize],
            1 + seed % 3,
            channels.join(", "),
            displays.join(", "),
            (start + 1 + seed % 4) % 24,
            5 + seed % 10
        );
        let ctx = ValidationContext {
            channels: (0..8).map(|c| format!("c{c}")).collect(),
            displays: (0..6)
                .map(|d| (format!("d{d}"), format!("c{}", d % 8)))
                .collect(),
            timezone: chrono_tz::UTC,
        };
        Playlist::parse("p.json", None, &src, &ctx).unwrap()
    }

    /// What a reload's scope leaves out cannot change: over many generated catalogs and edits
    /// (text, tier and targets changed, a playlist removed or added), every channel and display
    /// whose resolved timeline differs after the edit is in the scope of the old and new
    /// versions of the edited playlist.
    #[test]
    fn a_reload_resolves_every_target_its_change_can_affect() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let now = at(30);
        let targets: Vec<Target> = (0..8)
            .map(|c| Target {
                topic: Topic::ChannelTimeline(format!("c{c}")),
                channel: format!("c{c}"),
            })
            .chain((0..6).map(|d| Target {
                topic: Topic::DisplayTimeline(format!("d{d}")),
                channel: format!("c{}", d % 8),
            }))
            .collect();
        let timelines = |set: &[Playlist]| -> Vec<Timeline> {
            targets
                .iter()
                .map(|t| resolve(set, t.as_ref(), now, now + D::hours(48), "UTC"))
                .collect()
        };
        let (mut checked, mut outside, mut changed) = (0, 0, 0);
        for _ in 0..300 {
            let before: Vec<Playlist> = (0..12).map(|i| generated(i, next(), "old")).collect();
            let k = (next() % 13) as usize;
            let mut after = before.clone();
            let mut touched: Vec<Playlist> = Vec::new();
            match next() % 3 {
                // Removed (or, for k = 12, nothing to remove: an added one below).
                0 if k < 12 => {
                    touched.push(after.remove(k));
                }
                _ if k == 12 => {
                    let new = generated(12, next(), "added");
                    touched.push(new.clone());
                    after.push(new);
                }
                // Edited: a new seed changes its tier, targets, window and text.
                _ => {
                    let new = generated(k, next(), "edited");
                    touched.push(before[k].clone());
                    touched.push(new.clone());
                    after[k] = new;
                }
            }
            let scope = Scope::touched(touched.iter());
            let (old, new) = (timelines(&before), timelines(&after));
            // The pass resolves its targets from the playlists that match them only.
            let chosen: Vec<&Target> = targets.iter().filter(|t| scope.includes(t)).collect();
            let subset = matching(after.iter(), &chosen, &scope);
            for (i, t) in targets.iter().enumerate() {
                if scope.includes(t) {
                    checked += 1;
                    changed += usize::from(old[i] != new[i]);
                    let from_subset = resolve(&subset, t.as_ref(), now, now + D::hours(48), "UTC");
                    assert_eq!(
                        from_subset, new[i],
                        "{:?} resolved from too few playlists",
                        t.topic
                    );
                } else {
                    outside += 1;
                    assert_eq!(
                        old[i], new[i],
                        "{:?} changed outside the reload's scope {scope:?}",
                        t.topic
                    );
                }
            }
        }
        // Both sides were exercised: most targets are left out, some are resolved, and many
        // of those did change.
        assert!(
            checked > 300 && outside > 1000 && changed > 100,
            "{checked} {outside} {changed}"
        );
    }

    #[test]
    fn same_content_later_is_not_republished() {
        let prev = published(&tl("hello", at(0)), at(0));
        // Three hours on, the window has moved but the content over the old window is the same.
        assert!(!needs_publish(
            Some(&prev),
            &tl("hello", at(3)),
            at(3),
            D::hours(48)
        ));
    }

    #[test]
    fn changed_content_is_republished() {
        let prev = published(&tl("hello", at(0)), at(0));
        assert!(needs_publish(
            Some(&prev),
            &tl("changed", at(3)),
            at(3),
            D::hours(48)
        ));
    }

    #[test]
    fn republished_when_half_the_horizon_is_used() {
        let prev = published(&tl("hello", at(0)), at(0));
        assert!(!needs_publish(
            Some(&prev),
            &tl("hello", at(23)),
            at(23),
            D::hours(48)
        ));
        assert!(needs_publish(
            Some(&prev),
            &tl("hello", at(24)),
            at(24),
            D::hours(48)
        ));
    }

    #[test]
    fn first_and_cleared_topics_are_published() {
        assert!(needs_publish(
            None,
            &tl("hello", at(0)),
            at(0),
            D::hours(48)
        ));
        let mut cleared = published(&tl("hello", at(0)), at(0));
        cleared.body = None;
        assert!(needs_publish(
            Some(&cleared),
            &tl("hello", at(1)),
            at(1),
            D::hours(48)
        ));
    }
}
