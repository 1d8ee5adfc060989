//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why an agent report can be dropped (labels of `marquee_agent_reports_dropped_total`, shown
/// from zero).
pub const REPORT_DROP_REASONS: [&str; 6] = [
    "foreign_id",
    "unregistered",
    "unsigned",
    "bad_signature",
    "replayed",
    "mismatch",
];

/// The daemon's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone, Default)]
pub struct Metrics {
    /// New timeline versions published.
    pub timelines_published: Counter,
    /// Retained payloads put back after another client overwrote them.
    pub retained_restored: Counter,
    /// Timelines not published because they exceed `mqtt.max_payload`.
    pub timelines_oversize: Gauge,
    /// Playlist reloads.
    pub reloads: Counter,
    /// Live playlists.
    pub playlists_live: Gauge,
    /// Playlist files with errors.
    pub playlist_errors: Gauge,
    /// 1 when connected to the broker.
    pub mqtt_connected: Gauge,
    /// 1 while the data disk's reserve is in use (the disk filled; bulk writes refused).
    pub disk_reserve_in_use: Gauge,
    /// 1 while bulk writes are refused for a (nearly) full data disk.
    pub disk_bulk_refused: Gauge,
    /// Broker (re)connections.
    pub mqtt_connects: Counter,
    /// Agent events stored (redeliveries not counted).
    pub events_ingested: Counter,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// HTTP connections closed at accept because `server.max_connections` were open.
    pub http_refused: Counter,
    /// Times two agent processes were seen taking turns reporting for one display.
    pub display_conflicts: Counter,
    /// Agent reports dropped, by reason (see [`REPORT_DROP_REASONS`]).
    pub reports_dropped: Family<Vec<(String, String)>, Counter>,
    /// SMS submits by gateway and answer.
    pub sms_submits: Family<Vec<(String, String)>, Counter>,
    /// 1 while a gateway is out of rotation for an account error, by gateway.
    pub sms_gateway_out: Family<Vec<(String, String)>, Gauge>,
    /// 1 while a gateway takes one request of one message at a time after a failure.
    pub sms_gateway_half_open: Family<Vec<(String, String)>, Gauge>,
    /// SMS claims (transactions taking queued messages for a gateway) and the messages they
    /// took, by gateway.
    pub sms_claims: Family<Vec<(String, String)>, Counter>,
    pub sms_claimed: Family<Vec<(String, String)>, Counter>,
    /// 1 once a failed disk sync of the SMS claims' log stopped the claims (until a restart);
    /// set when scraped, from the store.
    pub sms_claims_stopped: Gauge,
    /// SMS delivery reports stored.
    pub sms_reports: Counter,
    /// Unix time of each CAP feed's last successful read, by feed URL.
    pub cap_feed_last_success: Family<Vec<(String, String)>, Gauge>,
    /// CAP feed failures by feed URL and kind (unreachable, status, not_cap, too_large).
    pub cap_feed_errors: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// The submit counters of one gateway, by answer: accepted, transient, permanent, lost
    /// (looked up once, so counting a submit allocates nothing).
    pub fn sms_submit_counters(&self, gateway: &str) -> [Counter; 8] {
        [
            "accepted",
            "transient",
            "permanent",
            "lost",
            "deferred",
            "opted_out",
            "config",
            "account",
        ]
        .map(|result| {
            self.sms_submits
                .get_or_create(&vec![
                    ("gateway".to_owned(), gateway.to_owned()),
                    ("result".to_owned(), result.to_owned()),
                ])
                .clone()
        })
    }

    /// The counters of `gateway`'s claims that took messages, and of the messages they took.
    pub fn sms_claim_counters(&self, gateway: &str) -> (Counter, Counter) {
        let label = vec![("gateway".to_owned(), gateway.to_owned())];
        (
            self.sms_claims.get_or_create(&label).clone(),
            self.sms_claimed.get_or_create(&label).clone(),
        )
    }

    /// The gauge saying whether `gateway` is out of rotation (an account error).
    pub fn sms_gateway_out_of_rotation(&self, gateway: &str) -> Gauge {
        self.sms_gateway_out
            .get_or_create(&vec![("gateway".to_owned(), gateway.to_owned())])
            .clone()
    }

    /// The gauge saying whether `gateway` takes one request of one message at a time after a
    /// failure (half-open).
    pub fn sms_gateway_half_open(&self, gateway: &str) -> Gauge {
        self.sms_gateway_half_open
            .get_or_create(&vec![("gateway".to_owned(), gateway.to_owned())])
            .clone()
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("marquee");
        self.register_scheduler(&mut r);
        self.register_fleet(&mut r);
        self.register_sms(&mut r);
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }

    /// Playlists, timelines, the disk and the broker connection.
    fn register_scheduler(&self, r: &mut Registry) {
        r.register(
            "timelines_published",
            "New timeline versions published",
            self.timelines_published.clone(),
        );
        r.register(
            "retained_restored",
            "Retained payloads restored after being overwritten by another client",
            self.retained_restored.clone(),
        );
        r.register(
            "playlist_reloads",
            "Playlist directory reloads",
            self.reloads.clone(),
        );
        r.register(
            "playlists_live",
            "Live playlists",
            self.playlists_live.clone(),
        );
        r.register(
            "playlist_files_with_errors",
            "Playlist files that currently fail validation",
            self.playlist_errors.clone(),
        );
        r.register(
            "disk_reserve_in_use",
            "1 while the data disk is full and its reserve is kept for alerts and the audit (bulk writes refused)",
            self.disk_reserve_in_use.clone(),
        );
        r.register(
            "disk_bulk_refused",
            "1 while bulk writes (reports, imports, uploads, SMS, playlist saves) are refused because the data disk has less free space than its reserve",
            self.disk_bulk_refused.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the MQTT broker",
            self.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_connects",
            "Connections made to the MQTT broker",
            self.mqtt_connects.clone(),
        );
        r.register(
            "timelines_oversize",
            "Timelines not published because they exceed mqtt.max_payload",
            self.timelines_oversize.clone(),
        );
    }

    /// The displays' reports and the HTTP server.
    fn register_fleet(&self, r: &mut Registry) {
        r.register(
            "agent_events_ingested",
            "Agent events stored (acks, proof of play); redeliveries not counted",
            self.events_ingested.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open now",
            self.http_connections.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections closed at accept (server.max_connections reached)",
            self.http_refused.clone(),
        );
        r.register(
            "display_conflicts",
            "Times two agent processes were seen taking turns reporting for one display",
            self.display_conflicts.clone(),
        );
        for reason in REPORT_DROP_REASONS {
            let _ = self
                .reports_dropped
                .get_or_create(&vec![("reason".into(), reason.into())]);
        }
        r.register(
            "agent_reports_dropped",
            "Agent reports dropped (not stored), by reason",
            self.reports_dropped.clone(),
        );
    }

    /// SMS gateways and reports, and the CAP feeds.
    fn register_sms(&self, r: &mut Registry) {
        r.register(
            "sms_submits",
            "SMS submits by gateway and answer (accepted, transient, permanent, lost, deferred, opted_out, config, account)",
            self.sms_submits.clone(),
        );
        r.register(
            "sms_gateway_out_of_rotation",
            "1 while the gateway is out of rotation because its account cannot send (balance, credentials, quota)",
            self.sms_gateway_out.clone(),
        );
        r.register(
            "sms_gateway_half_open",
            "1 while the gateway takes one request of one message at a time after a failure (half-open), until one is answered for its message",
            self.sms_gateway_half_open.clone(),
        );
        r.register(
            "sms_claims_stopped",
            "1 once a failed disk sync of the SMS claims' write-ahead log stopped the claims: nothing more is sent until the daemon is restarted (look at the disk first)",
            self.sms_claims_stopped.clone(),
        );
        r.register(
            "sms_claims",
            "SMS claims that took messages for a gateway (one transaction each; one disk sync covers every claim committed before it)",
            self.sms_claims.clone(),
        );
        r.register(
            "sms_claimed_messages",
            "SMS messages taken by claims for a gateway",
            self.sms_claimed.clone(),
        );
        r.register(
            "sms_reports",
            "SMS delivery reports stored",
            self.sms_reports.clone(),
        );
        r.register(
            "cap_feed_last_success",
            "Unix time of the last successful read of each CAP feed",
            self.cap_feed_last_success.clone(),
        );
        r.register(
            "cap_feed_errors",
            "CAP feed failures by feed and kind (unreachable, status, not_cap, too_large)",
            self.cap_feed_errors.clone(),
        );
    }
}
