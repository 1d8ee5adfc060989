//! The embedded broker (rumqttd), for zero-setup single-box sites.
//!
//! rumqttd has no builder and no readiness signal, and its default router settings panic on the
//! first client, so every limit is set here, and readiness is found by connecting to the port.
//! With port 0 a free port is reserved first (bind, read, release): another process could take it
//! in between, which start-up then reports as a bind error.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, Server, ServerSettings};
use tokio::task::JoinHandle;

/// A running embedded broker. The listener stops when this is dropped; the router thread lives
/// until the process exits (rumqttd cannot stop it).
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the broker on `listen` with `users` (empty: anonymous clients allowed), waiting until it
/// accepts connections.
pub async fn start(
    listen: SocketAddr,
    users: &BTreeMap<String, String>,
    max_payload: usize,
) -> anyhow::Result<EmbeddedBroker> {
    let addr = if listen.port() == 0 {
        let probe = std::net::TcpListener::bind(listen)
            .with_context(|| format!("embedded MQTT broker cannot bind {listen}"))?;
        probe.local_addr()?
    } else {
        listen
    };
    let router = RouterConfig {
        max_connections: 20_000,
        max_outgoing_packet_count: 1_000,
        max_segment_size: 100 << 20,
        max_segment_count: 10,
        ..RouterConfig::default()
    };
    let settings = ServerSettings {
        name: "marquee-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_payload,
            max_inflight_count: 500,
            auth: (!users.is_empty()).then(|| {
                users
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>()
            }),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let router_tx = rumqttd::Router::new(0, router).spawn();
    let mut server = Server::new(settings, router_tx, V4);
    let (err_tx, mut err_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let Err(e) = server.start(LinkType::Remote).await {
            let _ = err_tx.send(e.to_string());
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(e) = err_rx.try_recv() {
            bail!("embedded MQTT broker cannot listen on {addr}: {e}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(EmbeddedBroker { addr, task });
        }
        if tokio::time::Instant::now() > deadline {
            task.abort();
            bail!("embedded MQTT broker did not accept connections on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
