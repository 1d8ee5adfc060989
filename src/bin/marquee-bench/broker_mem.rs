//! `broker-memory`: what an idle connection costs the broker. N simulated agents connect and
//! subscribe to exactly the filters a real agent subscribes to (its channel's and its own
//! timeline, the alert and held-alert scopes `all`, its channel and its own id, its receipt
//! topic and the daemon's status), then stay idle. The figure is the broker's RSS growth per
//! connection (for the embedded broker, the daemon's RSS, which carries it), read once the RSS
//! has settled; then every agent disconnects and the RSS is read again (what was returned).
//! Baseline, same run: Mosquitto with the same fleet (the broker's own RSS).
//!
//! A connection counts once the daemon's retained status reached it: the daemon's status is the
//! last filter it subscribes to, and SUBACKs come in order, so all its subscriptions are in place.

use std::time::{Duration, Instant};

use marquee::mqtt::{self, MqttEvent};
use marquee::wire::Topic;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DEADLINE, Scratch, bench_client, broker_for, daemon, machine, rss_kb, setup_site};

const PREFIX: &str = "marquee";
/// Channels the simulated displays are spread over.
const CHANNELS: usize = 20;

/// The filters a real agent with this id and channel subscribes to (see `agent::Topics`).
fn agent_filters(id: &str, channel: &str) -> Vec<String> {
    let mut f = vec![
        Topic::ChannelTimeline(channel.into()).render(PREFIX),
        Topic::DisplayTimeline(id.into()).render(PREFIX),
    ];
    for s in ["all", channel, id] {
        f.push(Topic::Alert(s.into()).render(PREFIX));
        f.push(Topic::AlertHeld(s.into()).render(PREFIX));
    }
    f.push(Topic::AgentAck(id.into()).render(PREFIX));
    // Last: its retained payload arriving means every SUBACK before it came back.
    f.push(Topic::DaemonStatus.render(PREFIX));
    f
}

/// Runs the embedded broker, then Mosquitto, with `agents` idle agents each.
pub async fn run(agents: usize) -> anyhow::Result<()> {
    println!(
        "# broker-memory: {agents} idle agents, each subscribed to a real agent's {} filters; {}",
        agent_filters("d", "c").len(),
        machine()
    );
    println!(
        "broker | RSS before MB | RSS with {agents} agents MB | kB per connection | RSS after they left MB | connected in s"
    );
    for embedded in [true, false] {
        one(agents, embedded).await?;
    }
    Ok(())
}

async fn one(agents: usize, embedded: bool) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let dir = &scratch.0;
    setup_site(dir)?;
    let broker = if embedded {
        super::Broker::Embedded
    } else {
        super::Broker::Mosquitto
    };
    let (mq, port, section) = broker_for(dir, broker)?;
    let d = daemon(dir, &section)?;
    let pid = match mq.first() {
        Some(m) => m.0.id(),
        None => d.proc.0.id(),
    };
    let before = settled_rss(pid).await;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<usize>(agents.max(1));
    let t = Instant::now();
    for i in 0..agents {
        idle_agent(i, port, &cancel, tx.clone());
        if i % 200 == 199 {
            // In waves, as a fleet coming up does.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(tx);
    let mut seen = vec![false; agents];
    let mut count = 0;
    while count < agents {
        match tokio::time::timeout(DEADLINE, rx.recv()).await {
            Ok(Some(i)) if !seen[i] => {
                seen[i] = true;
                count += 1;
            }
            Ok(Some(_)) => {}
            _ => anyhow::bail!("only {count} of {agents} agents subscribed within {DEADLINE:?}"),
        }
    }
    let connected_in = t.elapsed().as_secs_f64();
    let with = settled_rss(pid).await;
    cancel.cancel();
    let after = settled_rss(pid).await;
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "{} | {:.1} | {:.1} | {:.1} | {:.1} | {connected_in:.1}",
        if embedded {
            "embedded (rumqttd, in the daemon)"
        } else {
            "Mosquitto (baseline)"
        },
        mb(before),
        mb(with),
        with.saturating_sub(before) as f64 / agents as f64,
        mb(after),
    );
    Ok(())
}

/// Simulated idle agent `i`: subscribes, tells `tx` once the daemon's status reached it, then
/// only keeps its connection.
fn idle_agent(i: usize, port: u16, cancel: &CancellationToken, tx: mpsc::Sender<usize>) {
    let id = format!("screen-{i:05}");
    let channel = format!("line-{}", i % CHANNELS);
    let status = Topic::DaemonStatus.render(PREFIX);
    let (handle, mut events) = mqtt::connect(
        bench_client(id.clone(), port, agent_filters(&id, &channel)),
        cancel.child_token(),
    );
    tokio::spawn(async move {
        let _keep = handle;
        while let Some(ev) = events.recv().await {
            if let MqttEvent::Message { topic, .. } = ev
                && topic == status
            {
                let _ = tx.send(i).await;
            }
        }
    });
}

/// The process's RSS in kB once it stopped moving: two readings 500 ms apart within 1 %
/// (at most 20 s).
async fn settled_rss(pid: u32) -> u64 {
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = rss_kb(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kb(pid);
        if now.abs_diff(last) * 100 <= last.max(1) || Instant::now() > end {
            return now;
        }
        last = now;
    }
}
