//! Test harness: free ports, a temp site (config + playlists + data dir), the daemon process with
//! its JSON log, a verifying MQTT subscriber, and a Mosquitto process. Everything binds 127.0.0.1.
//! Nothing sleeps to wait: every wait polls with a deadline and fails with what it was waiting for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use marquee::wire::{PublicKey, Signed, SignedBody, Timeline, verify};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_marquee")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port that was free a moment ago (bind :0, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics after `DEADLINE` saying `what`.
pub async fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_with(what, String::new, f).await
}

/// Like [`eventually`]; a timeout also prints `detail()` (what was seen meanwhile).
pub async fn eventually_with<T>(
    what: &str,
    detail: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}{}",
            detail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an async check.
pub use crate::kannel::wait_for as eventually_async;

/// Whether this run keeps the daemons' state in PostgreSQL (`MARQUEE_TEST_POSTGRES`, set by
/// `scripts/test` for its second pass over the suite).
pub fn on_postgres() -> bool {
    std::env::var_os("MARQUEE_TEST_POSTGRES").is_some()
}

/// On PostgreSQL, the `[store]` section for the site at `dir`: a schema of its own on the test
/// server (created here), the password from the environment as an operator would give it.
/// Empty on SQLite.
fn postgres_store(dir: &Path) -> String {
    let Ok(url) = std::env::var("MARQUEE_TEST_POSTGRES") else {
        return String::new();
    };
    let password = std::env::var("MARQUEE_TEST_POSTGRES_PASSWORD").ok();
    // The test cluster takes TCP connections over TLS only.
    let ca = std::env::var("MARQUEE_TEST_POSTGRES_CA").ok();
    let pem = ca.as_ref().map(|p| std::fs::read(p).unwrap());
    let url = marquee::store::Store::schema_url(
        &url,
        password.as_deref(),
        pem.as_deref(),
        &schema_of(dir),
    )
    .expect("the test PostgreSQL server");
    let ca_file = ca.map_or(String::new(), |p| format!("ca_file = {p:?}\n"));
    format!(
        "\n[store]\nurl = \"{url}\"\npassword_env = \"MARQUEE_TEST_POSTGRES_PASSWORD\"\n{ca_file}"
    )
}

/// Runs PostgreSQL's client `tool` (Debian's, as `scripts/test` installs it) on the test
/// server at `url` with `args`; panics with its error output when it fails.
fn pg_tool(tool: &str, url: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .arg(url)
        .env(
            "PGPASSWORD",
            std::env::var("MARQUEE_TEST_POSTGRES_PASSWORD").unwrap_or_default(),
        )
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (run the README's test command)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PostgreSQL schema of the site at `dir`.
fn schema_of(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().to_lowercase();
    format!("it_{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A temp directory laid out like a site: `marquee.toml`, `playlists/`, `data/`.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// A site with the shipped example playlists and a config for the given broker section.
    pub fn new(mqtt_section: &str, extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let pl = dir.path().join("playlists");
        std::fs::create_dir(&pl).unwrap();
        for e in std::fs::read_dir(repo().join("playlists")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), pl.join(e.file_name())).unwrap();
        }
        let site = Site { dir };
        site.write_config(mqtt_section, extra);
        site
    }

    pub fn write_config(&self, mqtt_section: &str, extra: &str) {
        let d = self.dir.path();
        let cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[mqtt]\n{mqtt_section}\n\n[schedule]\nplaylists_dir = {:?}\n{extra}\n\
             [[schedule.displays]]\nid = \"lobby-east-1\"\nchannel = \"lobby\"\n{}",
            d.join("data").display().to_string(),
            d.join("playlists").display().to_string(),
            postgres_store(d),
        );
        std::fs::write(self.config(), cfg).unwrap();
    }

    /// Appends sections (e.g. `[[auth.tokens]]`) at the end of the config.
    pub fn append_config(&self, text: &str) {
        let mut cfg = std::fs::read_to_string(self.config()).unwrap();
        cfg.push('\n');
        cfg.push_str(text);
        std::fs::write(self.config(), cfg).unwrap();
    }

    /// Adds `lines` (keys) to the `[server]` section.
    pub fn server_keys(&self, lines: &str) {
        let cfg = std::fs::read_to_string(self.config()).unwrap().replacen(
            "[server]\n",
            &format!("[server]\n{lines}\n"),
            1,
        );
        std::fs::write(self.config(), cfg).unwrap();
    }

    /// Adds `lines` (keys) to the `[store]` section (PostgreSQL runs only).
    pub fn store_keys(&self, lines: &str) {
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        assert!(
            cfg.contains("[store]\n"),
            "no [store] section: not a PostgreSQL run"
        );
        let cfg = cfg.replacen("[store]\n", &format!("[store]\n{lines}\n"), 1);
        std::fs::write(self.config(), cfg).unwrap();
    }

    /// Points this site's daemon at `other`'s database (PostgreSQL runs only), with its
    /// signing key: two nodes of one fleet.
    pub fn share_store_and_key_of(&self, other: &Site) {
        let cfg = std::fs::read_to_string(self.config())
            .unwrap()
            .replace(&schema_of(self.dir.path()), &schema_of(other.dir.path()));
        std::fs::write(self.config(), cfg).unwrap();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for f in ["signing.key", "signing.pub", "versions.hwm"] {
            let from = other.dir.path().join("data").join(f);
            if from.exists() {
                std::fs::copy(&from, data.join(f)).unwrap();
            }
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("marquee.toml")
    }

    pub fn playlist(&self, id: &str) -> PathBuf {
        self.dir.path().join("playlists").join(format!("{id}.json"))
    }

    pub fn public_key(&self) -> PublicKey {
        let hex = std::fs::read_to_string(self.dir.path().join("data/signing.pub")).unwrap();
        PublicKey::from_hex(&hex).unwrap()
    }

    /// A copy of the site's store, taken with its daemon stopped: SQLite's file, or on
    /// PostgreSQL a `pg_dump` of the site's schema (plain SQL).
    pub fn backup_store(&self, to: &Path) {
        let Ok(url) = std::env::var("MARQUEE_TEST_POSTGRES") else {
            std::fs::copy(self.dir.path().join("data/marquee.db"), to).unwrap();
            return;
        };
        pg_tool(
            "pg_dump",
            &url,
            &[
                "--no-owner",
                "--schema",
                &schema_of(self.dir.path()),
                "--file",
                &to.display().to_string(),
            ],
        );
    }

    /// Puts back what [`Site::backup_store`] took (the daemon stopped): the SQLite file, or the
    /// site's PostgreSQL schema dropped and loaded again from the dump.
    pub fn restore_store(&self, from: &Path) {
        let Ok(url) = std::env::var("MARQUEE_TEST_POSTGRES") else {
            std::fs::copy(from, self.dir.path().join("data/marquee.db")).unwrap();
            return;
        };
        let drop = format!("DROP SCHEMA {} CASCADE", schema_of(self.dir.path()));
        pg_tool("psql", &url, &["-v", "ON_ERROR_STOP=1", "-q", "-c", &drop]);
        let file = from.display().to_string();
        pg_tool("psql", &url, &["-v", "ON_ERROR_STOP=1", "-q", "-f", &file]);
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Rewrites a playlist file atomically (as editors do), replacing `from` with `to`.
    pub fn edit(&self, id: &str, from: &str, to: &str) {
        let path = self.playlist(id);
        let src = std::fs::read_to_string(&path).unwrap();
        assert!(src.contains(from), "{from:?} not in {id}");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, src.replace(from, to)).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
}

/// The daemon process with its JSON log lines.
pub struct Daemon {
    child: Child,
    pub log: Arc<Mutex<Vec<Value>>>,
    pub http: String,
}

impl Daemon {
    /// Starts `marquee serve` and waits for "marquee ready".
    pub async fn start(site: &Site) -> Daemon {
        Daemon::start_with_env(site, &[]).await
    }

    /// Same, with extra environment variables.
    pub async fn start_with_env(site: &Site, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(Command::new(bin()), site, env).await
    }

    /// Same, with at most `nofile` open files (util-linux `prlimit`).
    pub async fn start_with_nofile(site: &Site, nofile: u64) -> Daemon {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin());
        Daemon::spawn(cmd, site, &[]).await
    }

    async fn spawn(cmd: Command, site: &Site, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::launch(cmd, site, env);
        d.wait_ready().await;
        d
    }

    /// Starts a daemon that shares a PostgreSQL store with a running leader: returns once it
    /// says it is a standby, with its API's address (a standby answers the API).
    pub async fn start_standby(site: &Site, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::launch(Command::new(bin()), site, env);
        d.wait_log("standby", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("standby:"))
        })
        .await;
        let listening = d
            .wait_log("API listening", |v| v["message"] == "API listening")
            .await;
        d.http = listening["api"].as_str().unwrap().to_owned();
        d
    }

    /// Waits for "marquee ready" (a standby: once it leads) and takes the API's address.
    pub async fn wait_ready(&mut self) {
        let ready = self
            .wait_log("marquee ready", |v| v["message"] == "marquee ready")
            .await;
        self.http = ready["api"].as_str().unwrap().to_owned();
    }

    /// Waits for the process to end on its own; returns its exit code.
    pub async fn wait_exit(&mut self, what: &str) -> Option<i32> {
        let child = &mut self.child;
        eventually(what, || child.try_wait().unwrap()).await.code()
    }

    fn launch(mut cmd: Command, site: &Site, env: &[(&str, &str)]) -> Daemon {
        let mut child = cmd
            .args(["--log-format", "json", "serve", "-c"])
            .arg(site.config())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        Daemon {
            child,
            log,
            http: String::new(),
        }
    }

    /// Waits for a log line matching `pred`.
    /// Times out (with the log so far) after [`DEADLINE`].
    pub async fn wait_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let log = self.log.clone();
        let child = &mut self.child;
        eventually_with(
            what,
            || format!("; log:\n{}", dump(&log)),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "daemon exited ({status}) while waiting for {what}; log:\n{}",
                        dump(&log)
                    );
                }
                log.lock().unwrap().iter().find(|v| pred(v)).cloned()
            },
        )
        .await
    }

    /// Waits for the `n`-th (1-based) "reload applied" line and returns how many versions it published.
    pub async fn reload_applied(&mut self, n: usize) -> u64 {
        let log = self.log.clone();
        eventually(&format!("reload #{n} to be applied"), || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|v| v["message"] == "reload applied")
                .nth(n - 1)
                .map(|v| v["published"].as_u64().unwrap())
        })
        .await
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let child = &mut self.child;
        let status = eventually("daemon to exit after SIGTERM", || child.try_wait().unwrap()).await;
        status.code()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = marquee::http_client()
            .timeout(DEADLINE)
            .build()
            .unwrap()
            .get(format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = marquee::http_client()
            .timeout(DEADLINE)
            .build()
            .unwrap()
            .request(method, format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Runs `marquee ARGS --url … --token TOKEN` against this daemon; asserts success and
    /// returns standard output.
    pub fn cli(&self, token: &str, args: &[&str]) -> String {
        let out = Command::new(bin())
            .args(args)
            .args(["--url", &self.http, "--token", token])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Value of a Prometheus counter or gauge.
    pub async fn metric(&self, token: &str, name: &str) -> f64 {
        let (_, body) = self.get("/metrics", Some(token)).await;
        let text = body.as_str().unwrap().to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dump(log: &Arc<Mutex<Vec<Value>>>) -> String {
    log.lock()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A message received by [`Sub`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    /// Verifies the payload as a daemon would have signed it (no rollback check).
    pub fn verified(&self, key: &PublicKey) -> Result<SignedBody, marquee::wire::WireError> {
        verify(key, &self.topic, &self.payload, None, Utc::now())
    }

    pub fn timeline(&self, key: &PublicKey) -> (u64, Timeline) {
        let body = self
            .verified(key)
            .unwrap_or_else(|e| panic!("{}: {e}", self.topic));
        let Signed::Timeline(tl) = body.payload else {
            panic!("{}: not a timeline", self.topic)
        };
        (body.version, tl)
    }
}

/// Adds (or creates the file with) a Mosquitto account.
pub fn mosquitto_account(file: &Path, user: &str, pw: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd.arg("-b").arg(file).args([user, pw]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An MQTT subscriber that records everything it receives.
pub struct Sub {
    pub client: AsyncClient,
    rx: mpsc::Receiver<Msg>,
    pub seen: Vec<Msg>,
}

impl Sub {
    pub async fn connect(port: u16, filter: &str) -> Sub {
        Sub::connect_as(port, filter, None).await
    }

    /// Connects with a broker account (user name, password).
    pub async fn connect_as(port: u16, filter: &str, account: Option<(&str, &str)>) -> Sub {
        let mut o = MqttOptions::new(format!("test-{}", free_port()), "127.0.0.1", port);
        if let Some((user, password)) = account {
            o.set_credentials(user, password);
        }
        o.set_max_packet_size(8 << 20, 8 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::channel(10_000);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Sub {
            client,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a message (received from now on, or already seen and not yet taken) matching `pred`.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let start = Instant::now();
        loop {
            while let Ok(m) = self.rx.try_recv() {
                self.seen.push(m);
            }
            if let Some(i) = self.seen.iter().position(&pred) {
                return self.seen.remove(i);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; saw: {:?}",
                self.seen.iter().map(|m| &m.topic).collect::<Vec<_>>()
            );
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await
            {
                self.seen.push(m);
            }
        }
    }

    /// Waits for the timeline of `channel` with version ≥ `min_version`, verified with `key`.
    pub async fn timeline(
        &mut self,
        key: &PublicKey,
        topic: &str,
        min_version: u64,
    ) -> (u64, Timeline) {
        let m = self
            .wait(&format!("{topic} version >= {min_version}"), |m| {
                m.topic == topic && m.verified(key).is_ok_and(|b| b.version >= min_version)
            })
            .await;
        m.timeline(key)
    }
}

/// A real Mosquitto on a free loopback port (no persistence, anonymous allowed).
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// The daemon's `[mqtt]` section for this broker.
    pub fn section(&self) -> String {
        format!("embedded = false\nurl = \"mqtt://127.0.0.1:{}\"", self.port)
    }

    pub async fn start() -> Mosquitto {
        Mosquitto::start_on(free_port(), tempfile::tempdir().unwrap()).await
    }

    /// An anonymous Mosquitto on `port`.
    pub async fn start_on_port(port: u16) -> Mosquitto {
        Mosquitto::start_on(port, tempfile::tempdir().unwrap()).await
    }

    /// An anonymous Mosquitto with `extra` lines in its config (e.g. `max_packet_size 65536`).
    pub async fn start_with_extra(extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}\n"
        );
        Mosquitto::start_with(port, tempfile::tempdir().unwrap(), &conf).await
    }

    /// A Mosquitto on `port` with the whole config `conf_text` (its listener on `port`).
    pub async fn start_config(port: u16, conf_text: &str) -> Mosquitto {
        Mosquitto::start_with(port, tempfile::tempdir().unwrap(), conf_text).await
    }

    async fn start_on(port: u16, dir: tempfile::TempDir) -> Mosquitto {
        let conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        Mosquitto::start_with(port, dir, &conf).await
    }

    /// A Mosquitto that admits only the accounts of `passwd` and confines them by `acl`
    /// (Mosquitto's own `password_file` and `acl_file`).
    pub async fn start_secured(passwd: &Path, acl: &Path) -> Mosquitto {
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\nuse_username_as_clientid true\npersistence false\npassword_file {}\nacl_file {}\n{}",
            passwd.display(),
            acl.display(),
            // Started as root, Mosquitto drops to the `mosquitto` user and then cannot read the
            // files (mode 0600, ours) again on SIGHUP: stay the user that wrote them.
            if is_root() { "user root\n" } else { "" }
        );
        Mosquitto::start_with(port, tempfile::tempdir().unwrap(), &conf).await
    }

    /// SIGHUP: Mosquitto reads its password and ACL files again.
    pub fn reload(&self) {
        Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// A Mosquitto with a plain listener on `port` and a TLS listener on `tls_port`, whose
    /// certificate (for IP 127.0.0.1) is signed by a fresh test CA written to `{dir}/ca.pem`.
    pub async fn start_tls() -> (Mosquitto, u16, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        test_certs(d);
        let (port, tls_port) = (free_port(), free_port());
        let conf = format!(
            "user root\nallow_anonymous true\npersistence false\nlistener {port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\n\
             cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            d.display()
        );
        let ca = d.join("ca.pem");
        let mq = Mosquitto::start_with(port, dir, &conf).await;
        (mq, tls_port, ca)
    }

    async fn start_with(port: u16, dir: tempfile::TempDir, conf_text: &str) -> Mosquitto {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, conf_text).unwrap();
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed: run the README's test command (scripts/test), which installs it");
        eventually("mosquitto to accept connections", || {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("mosquitto exited: {s}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .await;
        Mosquitto { child, port, dir }
    }

    /// Kills it (SIGKILL) and starts a fresh one on the same port: retained messages are gone.
    pub async fn restart(self) -> Mosquitto {
        self.restart_after(|| async {}).await
    }

    /// Kills it, runs `while_down`, then starts a fresh one on the same port.
    pub async fn restart_after<F: std::future::Future<Output = ()>>(
        mut self,
        while_down: impl FnOnce() -> F,
    ) -> Mosquitto {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while_down().await;
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Mosquitto::start_on(port, dir).await
    }
}

fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto")
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers display `id` with the daemon (`marquee display add`) and writes its agent config
/// (with the issued report key and broker password) into the site; returns the config's path.
pub fn agent_config(d: &Daemon, site: &Site, id: &str, channel: &str, broker_port: u16) -> PathBuf {
    let creds = site.dir.path().join("credentials");
    let out = creds.display().to_string();
    d.cli(
        &site.admin_token(),
        &["display", "add", id, "--channel", channel, "--out", &out],
    );
    let path = unregistered_agent_config(site, id, channel, broker_port);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[mqtt]\n",
        &format!(
            "[mqtt]\nusername = \"{id}\"\npassword_file = {:?}\n",
            creds
                .join(format!("{id}.broker.password"))
                .display()
                .to_string()
        ),
        1,
    );
    std::fs::write(
        &path,
        format!(
            "report_key_file = {:?}\n{text}",
            creds.join(format!("{id}.report.key")).display().to_string()
        ),
    )
    .unwrap();
    path
}

/// An agent config for a display that is not registered (its reports are dropped).
pub fn unregistered_agent_config(
    site: &Site,
    id: &str,
    channel: &str,
    broker_port: u16,
) -> PathBuf {
    let d = site.dir.path();
    let path = d.join(format!("agent-{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "id = \"{id}\"\nchannel = \"{channel}\"\npublic_key_file = {:?}\ncache_dir = {:?}\nrender = \"jsonl\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nkeep_alive = \"1s\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\n\
             [fallback]\nseconds = 5\ntext = {{ zh = \"本地备用\", en = \"local fallback\" }}\n\
             [report]\nflush_interval = \"100ms\"\n",
            d.join("data/signing.pub").display().to_string(),
            d.join(format!("cache-{id}")).display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// Writes a test CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`) into `d`, with openssl.
pub fn test_certs(d: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl is missing");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=marquee-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// A running `marquee agent` with its frames (stdout, jsonl) and log (stderr, JSON).
pub struct AgentProc {
    child: Child,
    pub frames: Arc<Mutex<Vec<Value>>>,
    pub log: Arc<Mutex<Vec<Value>>>,
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<Value>>> {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let s = sink.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
            s.lock().unwrap().push(v);
        }
    });
    sink
}

impl AgentProc {
    /// `marquee agent`.
    pub fn start(config: &Path, extra: &[&str]) -> AgentProc {
        AgentProc::spawn(
            bin(),
            &["--log-format", "json", "agent", "-c"],
            config,
            extra,
        )
    }

    /// The agent-only binary, `marquee-agent`.
    pub fn start_slim(config: &Path, extra: &[&str]) -> AgentProc {
        AgentProc::spawn(
            env!("CARGO_BIN_EXE_marquee-agent"),
            &["--json", "-c"],
            config,
            extra,
        )
    }

    fn spawn(bin: &str, args: &[&str], config: &Path, extra: &[&str]) -> AgentProc {
        let mut child = Command::new(bin)
            .args(args)
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let frames = collect(child.stdout.take().unwrap());
        let log = collect(child.stderr.take().unwrap());
        AgentProc { child, frames, log }
    }

    /// Waits for a frame matching `pred` and returns it.
    pub async fn frame(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let frames = self.frames.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        eventually_with(
            what,
            || format!("; agent log:\n{}", dump(&log)),
            || {
                if let Ok(Some(s)) = child.try_wait() {
                    panic!(
                        "agent exited ({s}) waiting for {what}; log:\n{}",
                        dump(&log)
                    );
                }
                frames.lock().unwrap().iter().find(|v| pred(v)).cloned()
            },
        )
        .await
    }

    pub async fn wait_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let log = self.log.clone();
        eventually(what, || {
            log.lock().unwrap().iter().find(|v| pred(v)).cloned()
        })
        .await
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the agent.
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn shown(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.frames.lock().unwrap().iter().any(pred)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let child = &mut self.child;
        let status = eventually("agent to exit", || child.try_wait().unwrap()).await;
        status.code()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The text of a jsonl frame.
pub fn text_of(v: &Value) -> &str {
    v["text"].as_str().unwrap_or("")
}

/// Registers `id` (`marquee display add`) and returns its report key.
pub fn register(d: &Daemon, site: &Site, id: &str, channel: &str) -> marquee::wire::KeyPair {
    let out = site.dir.path().join("credentials");
    let dir = out.display().to_string();
    d.cli(
        &site.admin_token(),
        &["display", "add", id, "--channel", channel, "--out", &dir],
    );
    let hex = std::fs::read_to_string(out.join(format!("{id}.report.key"))).unwrap();
    marquee::wire::KeyPair::from_hex(&hex).unwrap()
}

/// A report signed as an agent signs it.
pub fn sign_report(keys: &marquee::wire::KeyPair, topic: &str, payload: Signed) -> Vec<u8> {
    marquee::wire::sign(
        keys,
        &SignedBody {
            topic: topic.into(),
            version: 1,
            issued_at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::hours(1),
            payload,
        },
    )
}

/// Signs `payload` for `topic` with the site daemon's own key (as the daemon would).
pub fn sign_as_daemon(
    site: &Site,
    topic: &str,
    version: u64,
    expires_in: chrono::Duration,
    payload: Signed,
) -> Vec<u8> {
    let secret = std::fs::read_to_string(site.dir.path().join("data/signing.key")).unwrap();
    let keys = marquee::wire::KeyPair::from_hex(&secret).unwrap();
    marquee::wire::sign(
        &keys,
        &SignedBody {
            topic: topic.into(),
            version,
            issued_at: Utc::now(),
            expires_at: Utc::now() + expires_in,
            payload,
        },
    )
}

/// A signed alert payload.
pub fn alert(
    site: &Site,
    topic: &str,
    version: u64,
    id: &str,
    text: &str,
    lasts: chrono::Duration,
) -> Vec<u8> {
    let a = marquee::wire::alert::Alert {
        id: id.into(),
        severity: "extreme".into(),
        text: [
            ("en".to_string(), text.to_string()),
            ("zh".to_string(), text.to_string()),
        ]
        .into(),
        issued_at: Utc::now(),
        expires_at: Utc::now() + lasts,
        starts_at: None,
    };
    sign_as_daemon(site, topic, version, lasts, Signed::Alert(a))
}

/// A broker stand-in that answers as EMQX does when its ACL denies a subscription: SUBACK with
/// the failure code 0x80 (MQTT 3.1.1 §3.9.3) for every filter ending in one of `denied`, and
/// granted QoS 1 otherwise. It speaks just enough MQTT 3.1.1 for a client to connect, subscribe,
/// publish (QoS 1, acknowledged) and ping; it delivers nothing. Returns its port.
pub fn denying_broker(denied: &'static [&'static str]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let read_packet = |s: &mut std::net::TcpStream| -> Option<(u8, Vec<u8>)> {
                    let mut h = [0u8; 1];
                    s.read_exact(&mut h).ok()?;
                    let (mut len, mut mult) = (0usize, 1usize);
                    loop {
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).ok()?;
                        len += (b[0] & 0x7f) as usize * mult;
                        mult *= 128;
                        if b[0] & 0x80 == 0 {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    s.read_exact(&mut body).ok()?;
                    Some((h[0], body))
                };
                while let Some((h, body)) = read_packet(&mut s) {
                    let reply: Vec<u8> = match h >> 4 {
                        1 => vec![0x20, 0x02, 0x00, 0x00],
                        8 => {
                            let mut codes = Vec::new();
                            let mut i = 2;
                            while i + 2 <= body.len() {
                                let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                                let filter = String::from_utf8_lossy(&body[i + 2..i + 2 + n]);
                                let deny = denied.iter().any(|d| filter.ends_with(d));
                                codes.push(if deny { 0x80 } else { 0x01 });
                                i += 2 + n + 1;
                            }
                            let mut r = vec![0x90, (2 + codes.len()) as u8, body[0], body[1]];
                            r.extend(codes);
                            r
                        }
                        3 if h & 0x06 != 0 => {
                            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                            vec![0x40, 0x02, body[2 + n], body[3 + n]]
                        }
                        12 => vec![0xd0, 0x00],
                        14 => return,
                        _ => continue,
                    };
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An interrupt playlist on the lobby channel with one-second items (frames and plays come fast).
pub fn interrupt(text: &str) -> String {
    let from = (Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = (Utc::now() + chrono::Duration::hours(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        r#"{{"id": "test-lobby", "tier": "interrupt", "targets": {{"channels": ["lobby"]}},
  "schedule": [{{"from": "{from}", "until": "{until}"}}],
  "items": [{{"id": "one", "text": {{"zh": "{text} 一", "en": "{text} one"}}, "seconds": 1}},
            {{"id": "two", "text": {{"zh": "{text} 二", "en": "{text} two"}}, "seconds": 1}}]}}"#
    )
}

/// Serves `app` on a free loopback port (a provider's stand-in); its base URL.
pub async fn serve_standin(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// What a provider's stand-in has to push: the account's callback URL (once set), the reports
/// not yet acknowledged, pushes made and pushes acknowledged.
#[derive(Default)]
pub struct Pushes {
    pub callback: Option<String>,
    pub unpushed: Vec<Value>,
    pub pushes: usize,
    pub acked: usize,
}

/// A stand-in's state that holds its [`Pushes`].
pub trait HasPushes {
    fn pushes(&mut self) -> &mut Pushes;
}

/// A provider's report pusher: every 100 ms, the reports not yet acknowledged are pushed to
/// the callback URL as one body (`wrap` of them: the array itself, or an object around it),
/// again and again, until the answer passes `acked`.
pub fn push_reports<B: HasPushes + Send + 'static>(
    book: Arc<Mutex<B>>,
    wrap: fn(Vec<Value>) -> Value,
    acked: fn(&Value) -> bool,
) {
    tokio::spawn(async move {
        let client = marquee::http_client().build().unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (url, batch) = {
                let mut b = book.lock().unwrap();
                let p = b.pushes();
                match &p.callback {
                    Some(u) if !p.unpushed.is_empty() => (u.clone(), p.unpushed.clone()),
                    _ => continue,
                }
            };
            let n = batch.len();
            let ok = match client.post(&url).json(&wrap(batch)).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| acked(&v)),
                Err(_) => false,
            };
            let mut b = book.lock().unwrap();
            let p = b.pushes();
            p.pushes += 1;
            if ok {
                p.acked += 1;
                p.unpushed.drain(..n);
            }
        }
    });
}
