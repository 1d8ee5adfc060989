//! The broker tier (docs/brokers.md), on the shipped configs of `config/brokers/`: screens on
//! site brokers bridged to the daemon's core Mosquitto (the agent's broker is killed half-way),
//! and screens on another node of a three-node NATS cluster. Each test runs the real daemon and
//! a real agent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::harness::*;

const DAEMON_PW: &str = "it-daemon-secret-4711";
const BRIDGE_PW: &str = "it-bridge-secret-4712";
const AGENT_PW: &str = "it-agent-secret-4713";
const WATCH_PW: &str = "it-watch-secret-4714";

/// A shipped broker config.
fn shipped(name: &str) -> String {
    std::fs::read_to_string(repo().join("config/brokers").join(name)).unwrap()
}

/// `text` with its line `from` replaced by `to`. The line must be there, so the test keeps
/// following the shipped file.
fn set(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.lines().any(|l| l == from),
        "the shipped config has no line {from:?}"
    );
    let mut out = String::new();
    for l in text.lines() {
        out.push_str(if l == from { to } else { l });
        out.push('\n');
    }
    out
}

/// Waits until the daemon shows `display` online on one of `ports` (its status came through
/// the tier), for at most `deadline`; returns that port.
async fn online_on(
    d: &Daemon,
    token: &str,
    display: &str,
    ports: &[u16],
    deadline: std::time::Duration,
) -> u16 {
    let path = format!("/api/v1/displays/{display}");
    let start = std::time::Instant::now();
    loop {
        let (_, v) = d.get(&path, Some(token)).await;
        if v["online"] == true
            && let Some(p) = ports
                .iter()
                .find(|p| v["broker"] == format!("127.0.0.1:{p}").as_str())
        {
            return *p;
        }
        assert!(
            start.elapsed() < deadline,
            "{display} not online on any of {ports:?}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Edits the lobby playlist to show `text`.
fn edit(site: &Site, text: &str) {
    std::fs::write(site.playlist("test-lobby"), interrupt(text)).unwrap();
}

/// Waits until the agent plays `text`.
async fn plays(agent: &mut AgentProc, text: &str) {
    agent
        .frame(&format!("{text:?} on screen"), |v| {
            text_of(v).starts_with(text)
        })
        .await;
}

/// Raises an alert on the lobby channel, waits until the agent shows it and the daemon has its
/// acknowledgement (an event that went up through the tier), then clears it.
async fn alert_reaches(d: &Daemon, token: &str, agent: &mut AgentProc, text: &str) {
    let body = json!({"text": {"zh": text, "en": text}, "scope": {"channels": ["lobby"]},
                      "severity": "extreme", "expires_in": "10m"});
    let (s, raised) = d
        .send(Method::POST, "/api/v1/alerts", Some(token), Some(body))
        .await;
    assert_eq!(s, 201, "{raised}");
    let id = raised["id"].as_str().unwrap().to_owned();
    agent
        .frame(&format!("the alert {text:?}"), |v| {
            v["kind"] == "alert" && text_of(v).contains(text)
        })
        .await;
    let start = std::time::Instant::now();
    loop {
        let (_, v) = d.get(&format!("/api/v1/alerts/{id}"), Some(token)).await;
        if v["acks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "no ack of {text:?}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, v) = d
        .send(
            Method::DELETE,
            &format!("/api/v1/alerts/{id}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The agent config at `cfg` pointed at `urls` instead of its one broker.
fn use_brokers(cfg: &Path, one: u16, urls: &[String]) {
    let text = std::fs::read_to_string(cfg).unwrap().replace(
        &format!("url = \"mqtt://127.0.0.1:{one}\""),
        &format!("urls = {urls:?}"),
    );
    std::fs::write(cfg, text).unwrap();
}

/// Shipped Mosquitto config `name` with its listener on `port` and its files in this test's
/// places: `(shipped line, path)` for `password_file`, `acl_file` and `persistence_location`.
fn mosquitto_conf(name: &str, port: u16, files: [(&str, &Path); 3]) -> String {
    let mut c = set(
        &shipped(name),
        "listener 1883",
        &format!("listener {port} 127.0.0.1"),
    );
    for (line, path) in files {
        let key = line.split(' ').next().unwrap();
        let slash = if key == "persistence_location" {
            "/"
        } else {
            ""
        };
        c = set(&c, line, &format!("{key} {}{slash}", path.display()));
    }
    c + run_as()
}

/// The core's ACL as `mosquitto-core.conf` documents it, with the bridge account of each of
/// `sites` (`bridge-{site}`), and a read-only account for the test.
fn documented_core_acl(sites: &[&str]) -> String {
    let text = shipped("mosquitto-core.conf");
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("# and core.acl"))
        .skip(1)
        .take_while(|l| l.starts_with("#   "))
        .map(|l| &l[4..])
        .collect();
    let start = block
        .iter()
        .position(|l| *l == "user bridge-site-1a")
        .expect("the documented ACL has a bridge account");
    let end = start
        + 1
        + block[start + 1..]
            .iter()
            .position(|l| l.starts_with("user "))
            .unwrap_or(block.len() - start - 1);
    let bridge = block[start..end].join("\n");
    let mut acl = block[..start].join("\n") + "\n";
    for site in sites {
        acl += &bridge.replace("bridge-site-1a", &format!("bridge-{site}"));
        acl.push('\n');
    }
    acl += &block[end..].join("\n");
    acl + "\nuser it-watch\ntopic read marquee/v1/#\n"
}

/// The shipped core config for this test: port, accounts (the daemon's, one per site's bridge,
/// and `it-watch`) with the documented ACL, and a data directory in `dir`.
fn core_conf(dir: &Path, port: u16, sites: &[&str]) -> String {
    let (pw, acl) = (dir.join("core.passwd"), dir.join("core.acl"));
    mosquitto_account(&pw, "marquee-daemon", DAEMON_PW);
    for site in sites {
        mosquitto_account(&pw, &format!("bridge-{site}"), BRIDGE_PW);
    }
    mosquitto_account(&pw, "it-watch", WATCH_PW);
    std::fs::write(&acl, documented_core_acl(sites)).unwrap();
    let data = dir.join("core-data");
    std::fs::create_dir_all(&data).unwrap();
    mosquitto_conf(
        "mosquitto-core.conf",
        port,
        [
            ("password_file /etc/mosquitto/marquee/core.passwd", &pw),
            ("acl_file /etc/mosquitto/marquee/core.acl", &acl),
            ("persistence_location /var/lib/mosquitto/", &data),
        ],
    )
}

/// The shipped site config for site broker `name`: its port, the display accounts in `accounts`
/// (written by `marquee broker mosquitto`), and its bridge to the core on `core`.
fn site_conf(dir: &Path, name: &str, port: u16, accounts: &Path, core: u16) -> String {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut c = mosquitto_conf(
        "mosquitto-site.conf",
        port,
        [
            (
                "password_file /etc/mosquitto/marquee/passwd",
                &accounts.join("passwd"),
            ),
            ("acl_file /etc/mosquitto/marquee/acl", &accounts.join("acl")),
            ("persistence_location /var/lib/mosquitto/", &data),
        ],
    );
    c = set(
        &c,
        "address core.example.net:1883",
        &format!("address 127.0.0.1:{core}"),
    );
    c = set(
        &c,
        "remote_username bridge-site-1a",
        &format!("remote_username bridge-{name}"),
    );
    c = set(
        &c,
        "remote_clientid bridge-site-1a",
        &format!("remote_clientid bridge-{name}"),
    );
    set(
        &c,
        "#remote_password",
        &format!("remote_password {BRIDGE_PW}"),
    )
}

/// A site and its daemon on the broker at `port`, with the daemon's account.
async fn daemon_on(port: u16) -> (Site, Daemon) {
    let site = Site::new(
        &format!(
            "embedded = false\nurl = \"mqtt://127.0.0.1:{port}\"\nusername = \"marquee-daemon\"\npassword_env = \"IT_MQ_PW\""
        ),
        "",
    );
    let d = Daemon::start_with_env(&site, &[("IT_MQ_PW", DAEMON_PW)]).await;
    (site, d)
}

/// Started as root, Mosquitto drops to its own user and cannot read our 0600 files.
fn run_as() -> &'static str {
    if is_root() { "user root\n" } else { "" }
}

#[tokio::test]
async fn screens_on_bridged_site_brokers_get_timelines_and_alerts_and_survive_losing_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let core_port = free_port();
    let _core =
        Mosquitto::start_config(core_port, &core_conf(dir.path(), core_port, &["a", "b"])).await;
    let (site, d) = daemon_on(core_port).await;
    let token = site.admin_token();
    let (p1, p2) = (free_port(), free_port());
    let cfg = agent_config(&d, &site, "lobby-site-1", "lobby", p1);
    use_brokers(
        &cfg,
        p1,
        &[
            format!("mqtt://127.0.0.1:{p1}"),
            format!("mqtt://127.0.0.1:{p2}"),
        ],
    );
    // The display accounts, as the operator writes them for every site broker.
    let accounts = dir.path().join("accounts");
    let said = d.cli(
        &token,
        &[
            "broker",
            "mosquitto",
            "--out",
            &accounts.display().to_string(),
        ],
    );
    assert!(said.contains("acl_file"), "{said}");
    let mut brokers = vec![
        Mosquitto::start_config(p1, &site_conf(dir.path(), "a", p1, &accounts, core_port)).await,
        Mosquitto::start_config(p2, &site_conf(dir.path(), "b", p2, &accounts, core_port)).await,
    ];

    // Published on the core before the screen starts: it gets the timeline retained, from
    // its site broker's copy.
    let mut watch = Sub::connect_as(
        core_port,
        "marquee/v1/channel/lobby/timeline",
        Some(("it-watch", WATCH_PW)),
    )
    .await;
    edit(&site, "via the bridge");
    watch
        .wait("the edit on the core", |m| {
            String::from_utf8_lossy(&m.payload).contains("via the bridge")
        })
        .await;
    let mut agent = AgentProc::start(&cfg, &[]);
    plays(&mut agent, "via the bridge").await;
    // The agent picks one of its two at random.
    let on = online_on(&d, &token, "lobby-site-1", &[p1, p2], DEADLINE).await;
    alert_reaches(&d, &token, &mut agent, "bridged alert one").await;

    // Its site broker dies: the agent moves to the site's other broker, and keeps getting both.
    let other = if on == p1 { p2 } else { p1 };
    drop(brokers.remove(usize::from(on != p1)));
    online_on(&d, &token, "lobby-site-1", &[other], DEADLINE).await;
    edit(&site, "after losing a broker");
    plays(&mut agent, "after losing a broker").await;
    alert_reaches(&d, &token, &mut agent, "bridged alert two").await;
}

/// A node of a NATS cluster started from the shipped config; killed when dropped.
struct NatsNode {
    child: Child,
    mqtt: u16,
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three NATS nodes on free loopback ports, clustered, with JetStream and MQTT, each from
/// `config/brokers/nats-node.conf` and its environment.
async fn nats_cluster(dir: &Path) -> Vec<NatsNode> {
    let conf = repo().join("config/brokers/nats-node.conf");
    // Nine distinct ports (a port just released can be handed out again).
    let mut free = std::collections::BTreeSet::new();
    while free.len() < 9 {
        free.insert(free_port());
    }
    let free: Vec<u16> = free.into_iter().collect();
    let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
    let mut nodes = Vec::new();
    for (i, (client, cluster, mqtt)) in ports.iter().enumerate() {
        let mut cmd = Command::new(nats_bin());
        cmd.arg("-c")
            .arg(&conf)
            .env("MQ_NODE", format!("it-{i}"))
            .env("MQ_STORE", dir.join(format!("js-{i}")))
            .env("MQ_LISTEN", format!("127.0.0.1:{client}"))
            .env("MQ_CLUSTER_LISTEN", format!("127.0.0.1:{cluster}"))
            .env("MQ_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))
            .env("MQ_DAEMON_PASSWORD", DAEMON_PW)
            .env("MQ_AGENT_PASSWORD", AGENT_PW)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (r, (_, route, _)) in ports.iter().enumerate() {
            cmd.env(
                format!("MQ_ROUTE_{}", r + 1),
                format!("nats-route://127.0.0.1:{route}"),
            );
        }
        let child = cmd
            .spawn()
            .expect("nats-server is not installed: run the README's test command (scripts/test)");
        nodes.push(NatsNode { child, mqtt: *mqtt });
    }
    for n in &mut nodes {
        let (port, child) = (n.mqtt, &mut n.child);
        eventually("a NATS node's MQTT listener", || {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("nats-server exited: {s}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .await;
    }
    nodes
}

fn nats_bin() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server")
}

#[tokio::test]
async fn screens_on_another_nats_node_get_timelines_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats_cluster(dir.path()).await;
    let (a, b) = (nodes[0].mqtt, nodes[1].mqtt);
    let (site, d) = daemon_on(a).await;
    let token = site.admin_token();
    // The screens' shared account (NATS has no per-display accounts; the daemon binds each
    // report to its display by signature).
    let cfg = agent_config(&d, &site, "lobby-nats-1", "lobby", b);
    let pw_file = dir.path().join("agent.password");
    std::fs::write(&pw_file, AGENT_PW).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut out = String::new();
    for l in text.lines() {
        if l.starts_with("username = ") {
            out.push_str("username = \"marquee-agent\"\n");
        } else if l.starts_with("password_file = ") {
            out.push_str(&format!(
                "password_file = {:?}\n",
                pw_file.display().to_string()
            ));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::fs::write(&cfg, out).unwrap();

    // The daemon on node A, the screen on node B: retained timelines and alerts cross over,
    // status and acknowledgements come back.
    edit(&site, "via another node");
    let mut agent = AgentProc::start(&cfg, &[]);
    plays(&mut agent, "via another node").await;
    online_on(&d, &token, "lobby-nats-1", &[b], DEADLINE).await;
    alert_reaches(&d, &token, &mut agent, "nats alert one").await;

    // Losing a node is not tested here: with NATS 2.9.10 it leaves screens deaf (docs/brokers.md).
}

/// The start-up probe that decides whether the nodes of a shared store split the agents' event
/// intake (`$share/…`): Mosquitto delivers through a shared subscription; NATS (MQTT 3.1.1)
/// does not, and the leader then takes every event alone (`docs/operations.md`).
#[tokio::test]
async fn the_shared_subscription_probe_says_which_broker_shares() {
    let opts = |port: u16, credentials: Option<(String, String)>| marquee::mqtt::ClientOptions {
        client_id: format!("it-probe-{port}"),
        brokers: vec![("127.0.0.1".into(), port)],
        credentials,
        keep_alive: Duration::from_secs(30),
        max_packet: 64 * 1024,
        subscriptions: Vec::new(),
        last_will: None,
        tls: None,
    };
    let within = Duration::from_secs(3);
    let mosquitto = Mosquitto::start().await;
    let on_mosquitto = opts(mosquitto.port, None);
    let shares = marquee::mqtt::probe_shared(&on_mosquitto, "it/v1/probe/a", within).await;
    assert!(shares, "Mosquitto delivers through $share");
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats_cluster(dir.path()).await;
    let daemon = Some(("marquee-daemon".to_owned(), DAEMON_PW.to_owned()));
    let on_nats = opts(nodes[0].mqtt, daemon);
    // The same account hears an ordinary subscription on that node (so `false` below is the
    // broker's answer, not a failed connection).
    let plain = marquee::mqtt::ClientOptions {
        subscriptions: vec!["it/v1/probe/b".into()],
        ..on_nats.clone()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let (handle, mut events) = marquee::mqtt::connect(plain, cancel.clone());
    let heard = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.recv().await {
            match ev {
                marquee::mqtt::MqttEvent::Connected => {
                    handle
                        .publish("it/v1/probe/b", b"x".to_vec(), false)
                        .unwrap();
                }
                marquee::mqtt::MqttEvent::Message { topic, .. } if topic == "it/v1/probe/b" => {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    cancel.cancel();
    assert_eq!(heard, Ok(true), "the daemon's account on NATS");
    let shares = marquee::mqtt::probe_shared(&on_nats, "it/v1/probe/a", within).await;
    assert!(!shares, "NATS 2 takes $share/… for an ordinary topic");
}
