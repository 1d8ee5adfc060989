//! `marquee-bench`: reruns Marquee's speed and footprint claims on this machine, against the real
//! daemon binary, a real Mosquitto (or the embedded broker) and N simulated agents in one process
//! (light MQTT subscribers that verify every signature, as real agents do). Loopback only; every
//! wait is bounded. Prints the figures; never part of the test suite's pass/fail.
//!
//! ```text
//! cargo build --release --bins
//! target/release/marquee-bench fanout --agents 2000 --runs 5
//! target/release/marquee-bench fanout --agents 300 --embedded
//! target/release/marquee-bench emergency --agents 2000 --runs 5
//! target/release/marquee-bench footprint --runs 5
//! target/release/marquee-bench broker-memory --agents 10000
//! target/release/marquee-bench resolver --playlists 1000 --channels 100
//! target/release/marquee-bench catalog --playlists 1000 --channels 100
//! target/release/marquee-bench sms-fake
//! target/release/marquee-bench sms-store
//! target/release/marquee-bench sms-kannel
//! target/release/marquee-bench sms-batch
//! ```
// Functions stay short enough to read at once (clippy.toml: at most 80 lines; tests aside).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod batch;
mod broker_mem;
mod catalog;
mod fleet;
#[path = "../../../tests/it/kannel.rs"]
mod kannel;
mod lists;
mod playlist_set;
mod sms;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use marquee::mqtt::{self, ClientOptions, MqttEvent};
use marquee::wire::{PublicKey, Signed, verify};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "marquee-bench",
    about = "Rerunnable Marquee benchmarks (loopback only)"
)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Playlist edit → every simulated agent holds the new signed timeline; baseline: one
    /// same-size retained publish to the same subscribers.
    Fanout {
        /// Simulated agents.
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        /// Measured runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Use the daemon's embedded broker instead of Mosquitto.
        #[arg(long)]
        embedded: bool,
        /// Agents only parse what they get instead of verifying it (transport-only comparison).
        #[arg(long)]
        no_verify: bool,
        /// Run the simulated agents in this many processes of their own (0: in the bench's).
        #[arg(long, default_value_t = 0)]
        fleet_procs: usize,
        /// The daemon on a core Mosquitto, the agents on a site Mosquitto bridged to it (the
        /// per-site topology of docs/brokers.md); the baseline is published at the core too.
        #[arg(long, conflicts_with = "embedded")]
        bridged: bool,
    },
    /// `POST /api/v1/alerts` → every simulated agent holds the verified alert.
    Emergency {
        /// Simulated agents.
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        /// Measured runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Agents only parse the alert instead of verifying it (transport-only comparison).
        #[arg(long)]
        no_verify: bool,
        /// Run the simulated agents in this many processes of their own (0: in the bench's).
        #[arg(long, default_value_t = 0)]
        fleet_procs: usize,
    },
    /// (Internal) a share of the simulated fleet, reporting on stdout.
    #[command(hide = true)]
    FleetProc {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        key: String,
        #[arg(long)]
        no_verify: bool,
    },
    /// One playlist edited in a big catalog: the file written → the new timelines of its
    /// channels at a subscriber of the broker; baseline: one same-size retained publish to it.
    Catalog {
        /// Playlists.
        #[arg(long, default_value_t = 1000)]
        playlists: usize,
        /// Channels.
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Measured edits.
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// The resolver alone: 48 h timelines of every channel from many playlists.
    Resolver {
        /// Playlists.
        #[arg(long, default_value_t = 1000)]
        playlists: usize,
        /// Channels.
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Measured runs.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// A template campaign through a stand-in that takes Tencent `SendSms` batches, next to a
    /// plain client sending the same signed batches.
    SmsBatch {
        /// Recipients.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Numbers per request.
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// Requests in flight (and baseline concurrency).
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        /// Runs (the median ratio is the figure).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The Tencent stand-in of `sms-batch` (run by it as its own process).
    #[command(hide = true)]
    TencentGateway {
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
    /// SMS campaign through a minimal local gateway (a separate process answering 202 at once);
    /// baseline: a plain keep-alive HTTP client sending the same requests.
    SmsFake {
        /// Recipients.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// In-flight window (and baseline connections).
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// The gateway's `claim_ahead` (default: the daemon's; at the bench's pace, twice the window).
        #[arg(long)]
        claim_ahead: Option<usize>,
        /// Baseline requests.
        #[arg(long, default_value_t = 200_000)]
        baseline: usize,
        /// Runs, each with a fresh daemon and store (the median is the figure).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Keep the daemon's state in PostgreSQL at this URL (a fresh schema per run; the
        /// password from MARQUEE_BENCH_PG_PASSWORD), instead of SQLite.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// The dispatcher's store work alone (claim and answer of every message, no HTTP) at
    /// several claim sizes.
    SmsStore {
        /// Messages per run.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Messages per claim, one run each.
        #[arg(long, value_delimiter = ',', default_value = "8,24,64,256")]
        batch: Vec<usize>,
        /// Claimers working at once, one run each (threads, each on store connections of its
        /// own, as dispatching nodes would be; more than one needs --postgres).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        claimers: Vec<usize>,
        /// Keep the state in PostgreSQL at this URL (a fresh schema per run; the password from
        /// MARQUEE_BENCH_PG_PASSWORD), instead of SQLite.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// SMS campaign through a real Kannel (bearerbox + smsbox + fakesmsc); baseline: a plain
    /// keep-alive HTTP client against the same Kannel.
    SmsKannel {
        /// Recipients.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// In-flight window (and baseline connections).
        #[arg(long, default_value_t = 128)]
        in_flight: usize,
        /// Baseline requests.
        #[arg(long, default_value_t = 20_000)]
        baseline: usize,
        /// Kannel dlr-mask for both (31: every report; 3: final ones only).
        #[arg(long, default_value_t = 31)]
        dlr_mask: u32,
    },
    /// (internal) The minimal gateway process of `sms-fake`.
    #[command(hide = true)]
    Gateway {
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
    /// A large recipient list uploaded and made a campaign: the daemon's peak RSS, the time and
    /// alert latency during the import; baseline: the same list as `recipients_csv` JSON text.
    ListImport {
        /// Rows of the generated list.
        #[arg(long, default_value_t = 5_000_000)]
        rows: usize,
        /// Skip the baseline run (the JSON text path holds the whole list in memory).
        #[arg(long)]
        no_baseline: bool,
    },
    /// The broker's RSS per idle agent connection (embedded broker: the daemon's), agents
    /// subscribed as real ones are; baseline: Mosquitto with the same fleet.
    BrokerMemory {
        /// Simulated idle agents.
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
    },
    /// Start-up to READY, idle daemon RSS with the example set, one agent's RSS.
    Footprint {
        /// Measured runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

const LOBBY: &str = "marquee/v1/channel/lobby/timeline";
const ALERT_ALL: &str = "marquee/v1/alert/all";
const BASELINE: &str = "bench/baseline";
const DEADLINE: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    marquee::install_crypto_provider();
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match args.scenario {
            Scenario::Fanout {
                agents,
                runs,
                embedded,
                no_verify,
                fleet_procs,
                bridged,
            } => {
                let broker = match (embedded, bridged) {
                    (true, _) => Broker::Embedded,
                    (false, true) => Broker::Bridged,
                    (false, false) => Broker::Mosquitto,
                };
                fanout(agents, runs, broker, Check::of(no_verify), fleet_procs).await
            }
            Scenario::Emergency {
                agents,
                runs,
                no_verify,
                fleet_procs,
            } => emergency(agents, runs, Check::of(no_verify), fleet_procs).await,
            Scenario::FleetProc {
                port,
                from,
                count,
                key,
                no_verify,
            } => fleet::child(port, from, count, &key, !no_verify).await,
            Scenario::Footprint { runs } => footprint(runs).await,
            Scenario::BrokerMemory { agents } => broker_mem::run(agents).await,
            Scenario::ListImport { rows, no_baseline } => lists::import(rows, !no_baseline).await,
            Scenario::SmsFake {
                messages,
                in_flight,
                claim_ahead,
                baseline,
                runs,
                postgres,
            } => {
                let window = (in_flight, claim_ahead);
                sms::fake(messages, window, baseline, runs, postgres.as_deref()).await
            }
            Scenario::SmsStore {
                messages,
                batch,
                claimers,
                postgres,
            } => sms::store(messages, &batch, &claimers, postgres.as_deref()),
            Scenario::SmsBatch {
                messages,
                batch,
                in_flight,
                runs,
            } => batch::run(messages, batch, in_flight, runs).await,
            Scenario::TencentGateway { port } => batch::gateway(port).await,
            Scenario::SmsKannel {
                messages,
                in_flight,
                baseline,
                dlr_mask,
            } => sms::kannel(messages, in_flight, baseline, dlr_mask).await,
            Scenario::Gateway { port } => sms::gateway(port).await,
            Scenario::Resolver {
                playlists,
                channels,
                runs,
            } => resolver(playlists, channels, runs),
            Scenario::Catalog {
                playlists,
                channels,
                runs,
            } => catalog::run(playlists, channels, runs).await,
        }
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cores} cores, {mem} GiB")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dir = std::env::temp_dir().join(format!("marquee-bench-{}", hex::encode(b)));
        std::fs::create_dir_all(dir.join("playlists"))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo_playlists() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playlists")
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// A kB figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), 0 when unreadable.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, in seconds; `pid` may be `self`.
fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the command name: state is field 0, utime 11, stime 12 (clock ticks).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

fn mosquitto(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    mosquitto_with(dir, "mosquitto.conf", "")
}

/// A Mosquitto on a free port with `extra` configuration, its file named `name` in `dir`.
fn mosquitto_with(dir: &Path, name: &str, extra: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let conf = dir.join(name);
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n{extra}"
        ),
    )?;
    let bin = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto is not installed (apt-get install mosquitto)")?;
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("mosquitto did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((Proc(child), port))
}

/// The daemon with its readiness time and HTTP address.
struct Daemon {
    proc: Proc,
    ready_after: Duration,
    http: String,
    data: PathBuf,
}

fn daemon(dir: &Path, mqtt_section: &str) -> anyhow::Result<Daemon> {
    daemon_with(dir, mqtt_section, "", &[])
}

/// The daemon with extra config sections and environment variables.
/// Starts `marquee-bench SUBCOMMAND --port P` (a stand-in gateway that counts what it gets)
/// and waits until it answers; its base URL, `http://127.0.0.1:P/`.
async fn counting_gateway(subcommand: &str) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let gw = Proc(
        Command::new(std::env::current_exe()?)
            .args([subcommand, "--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}/");
    let t = Instant::now();
    while gateway_count(&base).await.is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the bench gateway ({subcommand}) did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((gw, base))
}

/// What a [`counting_gateway`] has received so far.
async fn gateway_count(base: &str) -> anyhow::Result<u64> {
    Ok(marquee::http_client()
        .build()?
        .get(format!("{base}count"))
        .send()
        .await?
        .text()
        .await?
        .trim()
        .parse()?)
}

fn daemon_with(
    dir: &Path,
    mqtt_section: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Daemon> {
    let cfg = dir.join("marquee.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n[mqtt]\n{mqtt_section}\n[schedule]\nplaylists_dir = {:?}\n\
             [[schedule.displays]]\nid = \"lobby-east-1\"\nchannel = \"lobby\"\n{extra}",
            dir.join("data").display().to_string(),
            dir.join("playlists").display().to_string()
        ),
    )?;
    spawn_daemon(&cfg, dir.join("data"), env)
}

/// Starts `marquee serve -c cfg` and waits for READY; `data` is its data directory.
fn spawn_daemon(cfg: &Path, data: PathBuf, env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
    let bin = std::env::current_exe()?.with_file_name("marquee");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` first",
            bin.display()
        );
    }
    let t0 = Instant::now();
    let mut child = Command::new(&bin)
        .args(["--log-format", "json", "serve", "-c"])
        .arg(cfg)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // MARQUEE_BENCH_DAEMON_LOG=FILE keeps the daemon's log (e.g. its reload timings).
    let mut keep =
        std::env::var_os("MARQUEE_BENCH_DAEMON_LOG").and_then(|p| std::fs::File::create(p).ok());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "marquee ready"
            {
                let _ = tx.send(v["http"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the daemon did not become ready")?;
    Ok(Daemon {
        proc: Proc(child),
        ready_after: t0.elapsed(),
        http: format!("http://{http}"),
        data,
    })
}

/// What a simulated agent saw.
struct Seen {
    agent: usize,
    kind: Kind,
    at: Instant,
    at_utc: DateTime<Utc>,
}

/// What a simulated agent does with each message it gets.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// What a real agent does: signature, topic binding, expiry (`marquee::wire::verify`).
    Verify,
    /// Only reads the version and signing time (the transport-only comparison).
    Parse,
}

impl Check {
    fn of(no_verify: bool) -> Check {
        if no_verify {
            Check::Parse
        } else {
            Check::Verify
        }
    }
}

/// The part of an envelope `Check::Parse` reads.
#[derive(serde::Deserialize)]
struct Peek {
    body: PeekBody,
}

#[derive(serde::Deserialize)]
struct PeekBody {
    version: u64,
    issued_at: DateTime<Utc>,
    /// `{"kind": …, "data": …}`: only an alert's id is read.
    #[serde(default)]
    payload: Option<PeekPayload>,
}

#[derive(serde::Deserialize)]
struct PeekPayload {
    kind: String,
    #[serde(default)]
    data: Option<PeekData>,
}

#[derive(serde::Deserialize)]
struct PeekData {
    #[serde(default)]
    id: Option<String>,
}

/// Reads an envelope as `check` says; `bound` is the topic its signature must name.
fn read(
    check: Check,
    key: &PublicKey,
    bound: &str,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Option<Kind> {
    match check {
        Check::Parse => {
            let p = serde_json::from_slice::<Peek>(payload).ok()?;
            match p.body.payload {
                Some(PeekPayload { kind, data }) if kind == "alert" => {
                    Some(Kind::Alert { id: data?.id? })
                }
                _ => Some(Kind::Timeline {
                    version: p.body.version,
                    issued: p.body.issued_at,
                }),
            }
        }
        Check::Verify => {
            let b = verify(key, bound, payload, None, now).ok()?;
            match b.payload {
                Signed::Timeline(_) => Some(Kind::Timeline {
                    version: b.version,
                    issued: b.issued_at,
                }),
                Signed::Alert(a) => Some(Kind::Alert { id: a.id }),
                _ => None,
            }
        }
    }
}

enum Kind {
    Connected,
    Timeline { version: u64, issued: DateTime<Utc> },
    Alert { id: String },
    Baseline { seq: u64 },
}

/// A loopback client of the bench's broker.
fn bench_client(client_id: String, port: u16, subscriptions: Vec<String>) -> ClientOptions {
    ClientOptions {
        client_id,
        brokers: vec![("127.0.0.1".into(), port)],
        credentials: None,
        keep_alive: Duration::from_secs(60),
        max_packet: 4 << 20,
        subscriptions,
        last_will: None,
        tls: None,
    }
}

/// Simulated agent `i`: reads (and verifies, with [`Check::Verify`]) what it gets, and tells
/// `tx` when.
fn agent(
    i: usize,
    port: u16,
    key: PublicKey,
    check: Check,
    cancel: &CancellationToken,
    tx: mpsc::Sender<Seen>,
) {
    let subscriptions = vec![LOBBY.into(), ALERT_ALL.into(), BASELINE.into()];
    let (_handle, mut events) = mqtt::connect(
        bench_client(format!("bench-agent-{i}"), port, subscriptions),
        cancel.child_token(),
    );
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let at = Instant::now();
            let at_utc = Utc::now();
            let kind = match ev {
                MqttEvent::Connected => Kind::Connected,
                // The baseline carries a copy of the lobby's signed bytes, so an agent does
                // the same work for it as for the daemon's own publish.
                MqttEvent::Message { topic, payload, .. } if topic == BASELINE => {
                    match read(check, &key, LOBBY, &payload, at_utc) {
                        Some(Kind::Timeline { version, .. }) => Kind::Baseline { seq: version },
                        _ => continue,
                    }
                }
                MqttEvent::Message { topic, payload, .. } if !payload.is_empty() => {
                    match read(check, &key, &topic, &payload, at_utc) {
                        Some(k) => k,
                        None => continue,
                    }
                }
                _ => continue,
            };
            let seen = Seen {
                agent: i,
                kind,
                at,
                at_utc,
            };
            if tx.send(seen).await.is_err() {
                return;
            }
        }
    });
}

/// Waits until each of the `n` agents connected; what they saw meanwhile.
async fn all_connected(rx: &mut mpsc::Receiver<Seen>, n: usize) -> anyhow::Result<Vec<Seen>> {
    let mut connected = vec![false; n];
    let mut up = 0;
    let deadline = Instant::now() + DEADLINE;
    let mut early = Vec::new();
    while up < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(s)) => {
                if matches!(s.kind, Kind::Connected) {
                    if !connected[s.agent] {
                        connected[s.agent] = true;
                        up += 1;
                    }
                } else {
                    early.push(s);
                }
            }
            _ => bail!("only {up} of {n} simulated agents connected within {DEADLINE:?}"),
        }
    }
    Ok(early)
}

/// The simulated fleet: its reports, and its processes when it has its own (else the bench's).
struct Fleet {
    rx: mpsc::Receiver<Seen>,
    procs: Vec<Proc>,
}

impl Fleet {
    /// CPU seconds the fleet has used so far (the bench's own when it runs in it).
    fn cpu(&self) -> f64 {
        if self.procs.is_empty() {
            cpu_secs("self")
        } else {
            fleet::cpu(&self.procs)
        }
    }

    /// How the fleet runs, for the report's header.
    fn how(&self) -> String {
        match self.procs.len() {
            0 => "in the bench's process".into(),
            n => format!("in {n} processes of its own"),
        }
    }
}

/// Connects `n` simulated agents (in waves, as a fleet coming up does), in `procs` processes
/// of their own (0: in this one).
async fn start_fleet(
    n: usize,
    port: u16,
    key: PublicKey,
    check: Check,
    procs: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<Fleet> {
    if procs > 0 {
        let (rx, procs) = fleet::spawn(n, procs, port, &key, check)?;
        return Ok(Fleet {
            rx: forward_once_connected(rx, n).await?,
            procs,
        });
    }
    Ok(Fleet {
        rx: fleet_here(n, port, key, check, cancel).await?,
        procs: Vec::new(),
    })
}

/// The fleet in this process.
async fn fleet_here(
    n: usize,
    port: u16,
    key: PublicKey,
    check: Check,
    cancel: &CancellationToken,
) -> anyhow::Result<mpsc::Receiver<Seen>> {
    let (tx, rx) = mpsc::channel::<Seen>(1 << 20);
    agents_in_waves(0..n, port, &key, check, cancel, tx).await;
    forward_once_connected(rx, n).await
}

/// Starts agents `range`, 200 at a time 150 ms apart (as a fleet coming up does).
async fn agents_in_waves(
    range: std::ops::Range<usize>,
    port: u16,
    key: &PublicKey,
    check: Check,
    cancel: &CancellationToken,
    tx: mpsc::Sender<Seen>,
) {
    let first = range.start;
    for i in range {
        agent(i, port, key.clone(), check, cancel, tx.clone());
        if (i - first) % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

/// Waits until all `n` agents connected, then passes every other report through.
async fn forward_once_connected(
    mut rx: mpsc::Receiver<Seen>,
    n: usize,
) -> anyhow::Result<mpsc::Receiver<Seen>> {
    let (out_tx, out_rx) = mpsc::channel::<Seen>(1 << 20);
    // Wait for every agent to connect, then pass everything else through.
    let early = all_connected(&mut rx, n).await?;
    for s in early {
        out_tx.send(s).await?;
    }
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            if out_tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(out_rx)
}

/// Latency figures in milliseconds.
struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        v[(((v.len() as f64) * q).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: *v.last().unwrap_or(&0.0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// When one agent got something: monotonic instant, wall clock, and the payload's signing time
/// (for timelines).
type Receipt = (Instant, DateTime<Utc>, Option<DateTime<Utc>>);

/// Waits until every agent reported something `matches` accepts; returns each agent's first
/// such report.
async fn until_all(
    rx: &mut mpsc::Receiver<Seen>,
    n: usize,
    matches: impl Fn(&Kind) -> bool,
) -> anyhow::Result<Vec<Receipt>> {
    let mut got: Vec<Option<Receipt>> = vec![None; n];
    let mut count = 0;
    let deadline = Instant::now() + DEADLINE;
    while count < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(s)) = tokio::time::timeout(left, rx.recv()).await else {
            bail!("only {count} of {n} agents got it within {DEADLINE:?}");
        };
        if matches(&s.kind) && got[s.agent].is_none() {
            let issued = match s.kind {
                Kind::Timeline { issued, .. } => Some(issued),
                _ => None,
            };
            got[s.agent] = Some((s.at, s.at_utc, issued));
            count += 1;
        }
    }
    Ok(got.into_iter().flatten().collect())
}

const BENCH_PLAYLIST: &str = r#"{"id": "bench", "tier": "interrupt", "targets": {"channels": ["lobby"]},
 "schedule": [{"start": "00:00", "end": "00:00"}],
 "items": [{"id": "b", "text": {"zh": "基准测试 RUN", "en": "benchmark RUN"}, "seconds": 10}]}"#;

fn write_playlist(dir: &Path, run: usize) -> anyhow::Result<()> {
    let path = dir.join("playlists/bench.json");
    let tmp = dir.join("playlists/.bench.json.tmp");
    std::fs::write(&tmp, BENCH_PLAYLIST.replace("RUN", &run.to_string()))?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn setup_site(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(repo_playlists())? {
        let e = e?;
        std::fs::copy(e.path(), dir.join("playlists").join(e.file_name()))?;
    }
    write_playlist(dir, 0)
}

/// Mosquitto (or a port for the daemon's embedded broker): its process, port, and the daemon's
/// `[mqtt]` section for it.
/// Where the fan-out's daemon and agents meet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Broker {
    /// The daemon's embedded broker.
    Embedded,
    /// One Mosquitto.
    Mosquitto,
    /// The daemon on a core Mosquitto, the agents on a site Mosquitto bridged to it.
    Bridged,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Embedded => "embedded (rumqttd)",
            Broker::Mosquitto => "Mosquitto",
            Broker::Bridged => {
                "bridged Mosquitto (daemon and baseline on the core, agents on a site)"
            }
        }
    }
}

/// The brokers of `broker` (kept alive by the caller), the port the agents connect to, and
/// the daemon's `[mqtt]` section.
fn broker_for(dir: &Path, broker: Broker) -> anyhow::Result<(Vec<Proc>, u16, String)> {
    let section = |port: u16| format!("embedded = false\nurl = \"mqtt://127.0.0.1:{port}\"");
    match broker {
        Broker::Embedded => {
            let port = free_port()?;
            Ok((
                Vec::new(),
                port,
                format!("embedded = true\nlisten = \"127.0.0.1:{port}\""),
            ))
        }
        Broker::Mosquitto => {
            let (m, port) = mosquitto(dir)?;
            Ok((vec![m], port, section(port)))
        }
        Broker::Bridged => {
            let (core, core_port) = mosquitto(dir)?;
            // As config/brokers/mosquitto-site.conf bridges, plus the baseline's topic.
            let bridge = format!(
                "connection core\naddress 127.0.0.1:{core_port}\nbridge_protocol_version mqttv311\n\
                 try_private true\ncleansession true\nrestart_timeout 1 10\n\
                 topic marquee/v1/channel/# in 1\ntopic marquee/v1/display/# in 1\n\
                 topic marquee/v1/alert/# in 1\ntopic marquee/v1/daemon/# in 1\n\
                 topic marquee/v1/agent/+/ack in 1\ntopic marquee/v1/agent/+/status out 1\n\
                 topic marquee/v1/agent/+/events out 1\ntopic {BASELINE} in 1\n"
            );
            let (site, site_port) = mosquitto_with(dir, "site.conf", &bridge)?;
            Ok((vec![core, site], site_port, section(core_port)))
        }
    }
}

async fn fanout(
    agents: usize,
    runs: usize,
    broker: Broker,
    check: Check,
    procs: usize,
) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    setup_site(dir)?;
    let (brokers, port, section) = broker_for(dir, broker)?;
    let d = daemon(dir, &section)?;
    let key = PublicKey::from_hex(&std::fs::read_to_string(d.data.join("signing.pub"))?)?;
    let cancel = CancellationToken::new();
    let t = Instant::now();
    let mut fleet = start_fleet(agents, port, key, check, procs, &cancel).await?;
    let checks = match check {
        Check::Verify => "each verifies every message",
        Check::Parse => "each only parses every message",
    };
    println!(
        "# fanout: {} broker, {agents} simulated agents {} ({checks}; connected in {:.2} s), {runs} runs, {}",
        broker.name(),
        fleet.how(),
        t.elapsed().as_secs_f64(),
        machine()
    );
    until_all(&mut fleet.rx, agents, |k| {
        matches!(k, Kind::Timeline { .. })
    })
    .await?;
    let broker_pids: Vec<String> = brokers.iter().map(|m| m.0.id().to_string()).collect();
    let daemon_pid = d.proc.0.id().to_string();
    // Publisher for the baseline, where the daemon publishes (the core when bridged).
    let publish_port = section
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap_or(port);
    let (publisher, _pub_events) = mqtt::connect(
        bench_client("bench-baseline".into(), publish_port, Vec::new()),
        cancel.child_token(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut edit_p99, mut pub_p99, mut base_p99) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "run | edit→all agents p50/p99/max ms | publish→all agents p50/p99/max ms | baseline publish→all p50/p99/max ms | CPU ms of the run: broker / daemon / fleet"
    );
    for run in 1..=runs {
        let cpu = |f: &Fleet| {
            (
                broker_pids.iter().map(|p| cpu_secs(p)).sum::<f64>(),
                cpu_secs(&daemon_pid),
                f.cpu(),
            )
        };
        let before = cpu(&fleet);
        let (edit, publ, base) =
            fanout_run(&mut fleet.rx, agents, &d, dir, run, &publisher).await?;
        let after = cpu(&fleet);
        let ms = |s: &Stats| format!("{:.1} / {:.1} / {:.1}", s.p50, s.p99, s.max);
        println!(
            "{run} | {} | {} | {} | {:.0} / {:.0} / {:.0}",
            ms(&edit),
            ms(&publ),
            ms(&base),
            (after.0 - before.0) * 1e3,
            (after.1 - before.1) * 1e3,
            (after.2 - before.2) * 1e3,
        );
        edit_p99.push(edit.p99);
        pub_p99.push(publ.p99);
        base_p99.push(base.p99);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (e, p, b) = (median(edit_p99), median(pub_p99), median(base_p99));
    println!(
        "median p99: edit→all {e:.1} ms (target < 250) | publish→all {p:.1} ms vs baseline {b:.1} ms = {:.2}× (target ≤ 1.5×) | daemon RSS {} MB",
        p / b.max(0.001),
        rss_kb(d.proc.0.id()) / 1024
    );
    cancel.cancel();
    Ok(())
}

/// One fan-out run: an edit to every agent (from the file's write, and from the timeline's
/// signing), then the same bytes published by a plain client (the baseline); their latencies.
async fn fanout_run(
    rx: &mut mpsc::Receiver<Seen>,
    agents: usize,
    d: &Daemon,
    dir: &Path,
    run: usize,
    publisher: &mqtt::MqttHandle,
) -> anyhow::Result<(Stats, Stats, Stats)> {
    let since = |got: &[Receipt], t0: Instant| {
        stats(
            got.iter()
                .map(|(at, _, _)| at.duration_since(t0).as_secs_f64() * 1000.0)
                .collect(),
        )
    };
    // Edit → new signed timeline at every agent.
    let held = lobby_published(d).map_or(0, |(v, _)| v);
    let t0 = Instant::now();
    write_playlist(dir, run)?;
    let got = until_all(
        rx,
        agents,
        |k| matches!(k, Kind::Timeline { version: v, .. } if *v > held),
    )
    .await?;
    let edit = since(&got, t0);
    let publ = stats(
        got.iter()
            .filter_map(|(_, utc, issued)| {
                issued.map(|i| (*utc - i).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            })
            .collect(),
    );
    // Baseline: the same bytes, retained, published once by a plain client.
    let (version, payload) = lobby_published(d).context("the lobby timeline is not stored")?;
    let t1 = Instant::now();
    publisher.publish(BASELINE, payload, true)?;
    let got = until_all(
        rx,
        agents,
        |k| matches!(k, Kind::Baseline { seq } if *seq == version),
    )
    .await?;
    Ok((edit, publ, since(&got, t1)))
}

/// The lobby timeline as last published: its version and signed bytes.
fn lobby_published(d: &Daemon) -> Option<(u64, Vec<u8>)> {
    marquee::store::Store::open(&d.data.join("marquee.db"))
        .and_then(|s| s.published())
        .ok()?
        .into_iter()
        .find(|p| p.topic == LOBBY)
        .map(|p| (p.version, p.payload))
}

async fn emergency(agents: usize, runs: usize, check: Check, procs: usize) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    setup_site(dir)?;
    let (mq, port) = mosquitto(dir)?;
    let d = daemon(
        dir,
        &format!("embedded = false\nurl = \"mqtt://127.0.0.1:{port}\""),
    )?;
    let key = PublicKey::from_hex(&std::fs::read_to_string(d.data.join("signing.pub"))?)?;
    let token = std::fs::read_to_string(d.data.join("admin.token"))?
        .trim()
        .to_owned();
    let cancel = CancellationToken::new();
    let mut fleet = start_fleet(agents, port, key, check, procs, &cancel).await?;
    println!(
        "# emergency: Mosquitto, {agents} simulated agents {} ({}), {runs} runs, {}",
        fleet.how(),
        match check {
            Check::Verify => "each verifies the alert",
            Check::Parse => "each only parses the alert",
        },
        machine()
    );
    println!(
        "run | POST /api/v1/alerts → every agent holds the alert: p50/p99/max ms | CPU ms of the run: broker / daemon / fleet"
    );
    let (broker_pid, daemon_pid) = (mq.0.id().to_string(), d.proc.0.id().to_string());
    let cpu = |f: &Fleet| (cpu_secs(&broker_pid), cpu_secs(&daemon_pid), f.cpu());
    let http = marquee::http_client().build()?;
    let mut p99s = Vec::new();
    for run in 1..=runs {
        let before = cpu(&fleet);
        let t0 = Instant::now();
        let resp: serde_json::Value = http
            .post(format!("{}/api/v1/alerts", d.http))
            .bearer_auth(&token)
            .json(&serde_json::json!({"text": {"en": format!("bench alert {run}")}, "expires_in": "5m"}))
            .send()
            .await?
            .json()
            .await?;
        let id = resp["id"].as_str().context("no alert id")?.to_owned();
        let got = until_all(
            &mut fleet.rx,
            agents,
            |k| matches!(k, Kind::Alert { id: a } if *a == id),
        )
        .await?;
        let after = cpu(&fleet);
        let s = stats(
            got.iter()
                .map(|(at, _, _)| at.duration_since(t0).as_secs_f64() * 1000.0)
                .collect(),
        );
        println!(
            "{run} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0}",
            s.p50,
            s.p99,
            s.max,
            (after.0 - before.0) * 1e3,
            (after.1 - before.1) * 1e3,
            (after.2 - before.2) * 1e3
        );
        p99s.push(s.p99);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("median p99: {:.1} ms (target < 500)", median(p99s));
    cancel.cancel();
    Ok(())
}

/// An agent configuration for the site in `dir`, on the daemon's embedded broker.
fn agent_config(dir: &Path, d: &Daemon, port: u16) -> anyhow::Result<PathBuf> {
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "id = \"bench-1\"\nchannel = \"lobby\"\npublic_key_file = {:?}\ncache_dir = {:?}\nrender = \"jsonl\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n[fallback]\ntext = {{ en = \"x\" }}\n",
            d.data.join("signing.pub").display().to_string(),
            dir.join("agent-cache").display().to_string()
        ),
    )?;
    Ok(agent_cfg)
}

/// `cmd`'s process 3 s after it starts (connected and playing), and its RSS then in kB.
async fn settled(cmd: &mut Command) -> anyhow::Result<(Proc, u64)> {
    let p = Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = rss_kb(p.0.id());
    Ok((p, rss))
}

async fn footprint(runs: usize) -> anyhow::Result<()> {
    println!(
        "# footprint: embedded broker, example playlists, {runs} runs, {}",
        machine()
    );
    println!(
        "run | start→READY ms (first start: keys generated) | restart→READY ms | daemon RSS idle MB | marquee-agent RSS MB | `marquee agent` RSS MB"
    );
    let (mut first, mut again, mut drss, mut arss, mut frss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let scratch = Scratch::new()?;
        let dir = &scratch.0;
        setup_site(dir)?;
        let port = free_port()?;
        let section = format!("embedded = true\nlisten = \"127.0.0.1:{port}\"");
        let d = daemon(dir, &section)?;
        let f = d.ready_after;
        drop(d);
        let d = daemon(dir, &section)?;
        let r = d.ready_after;
        let agent_cfg = agent_config(dir, &d, port)?;
        let slim = std::env::current_exe()?.with_file_name("marquee-agent");
        if !slim.exists() {
            bail!(
                "{} is missing: run `cargo build --release --bins` first",
                slim.display()
            );
        }
        let (agent, ar) = settled(Command::new(&slim).arg("-c").arg(&agent_cfg)).await?;
        // The daemon idle with one agent connected.
        let dr = rss_kb(d.proc.0.id());
        drop(agent);
        // The same agent run as a subcommand of the full binary, for comparison.
        let (_full, fr) = settled(
            Command::new(std::env::current_exe()?.with_file_name("marquee"))
                .args(["agent", "-c"])
                .arg(&agent_cfg),
        )
        .await?;
        println!(
            "{run} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}",
            f.as_secs_f64() * 1000.0,
            r.as_secs_f64() * 1000.0,
            dr as f64 / 1024.0,
            ar as f64 / 1024.0,
            fr as f64 / 1024.0
        );
        frss.push(fr as f64 / 1024.0);
        first.push(f.as_secs_f64() * 1000.0);
        again.push(r.as_secs_f64() * 1000.0);
        drss.push(dr as f64 / 1024.0);
        arss.push(ar as f64 / 1024.0);
    }
    println!(
        "median: first start→READY {:.1} ms, restart→READY {:.1} ms (target < 200) | daemon RSS {:.1} MB (target < 20) | marquee-agent RSS {:.1} MB (target < 10); `marquee agent` {:.1} MB",
        median(first),
        median(again),
        median(drss),
        median(arss),
        median(frss)
    );
    Ok(())
}

/// `marquee-bench resolver`: every channel resolved over 48 h, several runs.
fn resolver(n: usize, channels: usize, runs: usize) -> anyhow::Result<()> {
    use marquee::domain::{TargetRef, resolve};
    let (playlists, names) = playlist_set::generate(n, channels)?;
    let start = DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")?.with_timezone(&Utc);
    println!(
        "# resolver: {n} playlists × {channels} channels, 48 h timelines, {runs} runs, {}",
        machine()
    );
    println!("run | all channels ms | per channel ms | segments | items");
    let mut totals = Vec::new();
    for run in 1..=runs {
        // A new start each run, as the scheduler's `now` moves: every playlist's windows are
        // computed afresh (once per run, then shared by the channels it targets).
        let from = start + chrono::Duration::seconds(run as i64);
        let until = from + chrono::Duration::hours(48);
        let t = Instant::now();
        let (mut segments, mut items) = (0, 0);
        for c in &names {
            let tl = resolve(
                &playlists,
                TargetRef::Channel(c),
                from,
                until,
                "Asia/Shanghai",
            );
            segments += tl.segments.len();
            items += tl.segments.iter().map(|s| s.items.len()).sum::<usize>();
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "{run} | {ms:.1} | {:.2} | {segments} | {items}",
            ms / channels as f64
        );
        totals.push(ms);
    }
    println!(
        "median: {:.1} ms for all {channels} channels (target < 50)",
        median(totals)
    );
    Ok(())
}
