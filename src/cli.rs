//! The offline subcommands: `check`, `preview`, `keygen`, `schema`. They read files only; the
//! API-client subcommands talk to a running daemon over HTTP.

pub mod campaign;

use std::path::Path;

use anyhow::Context;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::domain::playlist::{json_schema, parse_instant};
use crate::http::api::parse_length;
use crate::preview::{Preview, PreviewRequest};

/// `marquee check`: every problem in the config and the playlists, one per line. Returns the
/// number of problems.
pub fn check(config_path: &Path) -> usize {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return e.problems.len();
        }
    };
    let ctx = cfg.schedule.validation_context();
    let dir = &cfg.schedule.playlists_dir;
    let catalog = match Catalog::load(dir, &ctx, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{}: schedule.playlists_dir: cannot read {}: {e}",
                cfg.file,
                dir.display()
            );
            return 1;
        }
    };
    let mut errors: Vec<String> = catalog.errors().map(ToString::to_string).collect();
    errors.extend(
        crate::preview::oversize(&cfg, &catalog.playlists(), chrono::Utc::now())
            .iter()
            .map(|o| format!("{}: mqtt.max_payload: {o}", cfg.file)),
    );
    for e in &errors {
        eprintln!("{e}");
    }
    if errors.is_empty() {
        println!(
            "ok: {} and {} playlists in {} are valid",
            cfg.file,
            catalog.files.len(),
            dir.display()
        );
    }
    errors.len()
}

/// `marquee preview`.
pub fn preview(
    config_path: &Path,
    channel: Option<&str>,
    display: Option<&str>,
    at: &str,
    length: &str,
    json: bool,
) -> anyhow::Result<String> {
    let cfg = Config::load(config_path)?;
    let sched = &cfg.schedule;
    let channel = match (display, channel) {
        (Some(d), _) => sched.displays.get(d).cloned().with_context(|| {
            format!("unknown display {d:?}: declare it under [[schedule.displays]]")
        })?,
        (None, Some(c)) if sched.channels.iter().any(|x| x == c) => c.to_owned(),
        (None, Some(c)) => anyhow::bail!(
            "unknown channel {c:?} (configured: {})",
            sched.channels.join(", ")
        ),
        (None, None) => anyhow::bail!("give --channel or --display"),
    };
    let at = if at == "now" {
        chrono::Utc::now()
    } else {
        parse_instant(at, sched.timezone)
            .with_context(|| format!("--at {at:?}: use RFC 3339, e.g. 2021-05-15T09:00:00+08:00"))?
    };
    let length = parse_length(length).map_err(|m| anyhow::anyhow!("--for: {m}"))?;
    let catalog = Catalog::load(&sched.playlists_dir, &sched.validation_context(), None)
        .with_context(|| format!("cannot read {}", sched.playlists_dir.display()))?;
    for e in catalog.errors() {
        eprintln!("warning: skipped: {e}");
    }
    let too_big = crate::preview::oversize_of(
        &cfg,
        &catalog.playlists(),
        &channel,
        display,
        chrono::Utc::now(),
    );
    if let Some(o) = &too_big {
        eprintln!("warning: {o}");
    }
    let p = Preview::compute(
        &catalog.playlists(),
        PreviewRequest {
            channel,
            display: display.map(str::to_owned),
            at,
            length,
        },
        sched.timezone,
    );
    Ok(if json {
        let mut v = p.to_json();
        crate::preview::note_oversize(&mut v, too_big);
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        p.to_text()
    })
}

/// `marquee schema playlist`.
pub fn schema() -> String {
    json_schema()
}

/// Where the API is and how to authenticate, for the API-client subcommands.
pub struct ApiClient {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// Extra trusted CA certificates (PEM) for an `https://` daemon with its own CA.
    pub ca: Option<Vec<reqwest::Certificate>>,
}

impl ApiClient {
    /// `url` and `token` as given (flags or `MARQUEE_URL` / `MARQUEE_TOKEN`); without a token,
    /// the admin token the daemon generated in the data directory of `config`.
    /// `ca_file` (PEM) adds trusted CA certificates, for a daemon whose certificate is signed
    /// by an office's own CA.
    pub fn resolve(
        url: String,
        token: Option<String>,
        config: &Path,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<ApiClient> {
        let ca = match ca_file {
            Some(f) => {
                let pem =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{}: not PEM certificates", f.display()))?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "{}: no PEM certificate in it",
                    f.display()
                );
                Some(certs)
            }
            None => None,
        };
        let token = match token.filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_owned(),
            None => {
                let cfg = Config::load(config)?;
                let path = cfg.data_dir.join(crate::keys::ADMIN_TOKEN);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: set MARQUEE_TOKEN or --token (or run where {} is readable)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            token,
            ca,
        })
    }

    /// An HTTP client that trusts the system's roots and `--ca-file`.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = crate::http_client();
        for c in self.ca.iter().flatten() {
            b = b.add_root_certificate(c.clone());
        }
        Ok(b.build()?)
    }

    /// GET `path` as JSON; API errors become their message.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// GET `path` as text with an `Accept` header (CSV exports).
    pub async fn get_text(&self, path: &str, accept: &str) -> anyhow::Result<String> {
        let resp = self
            .http()?
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("Accept", accept)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        if !resp.status().is_success() {
            // An API error: its message, as every other command prints it.
            return Self::answer(resp).await.map(|_| String::new());
        }
        Ok(resp.text().await?)
    }

    /// Uploads a list file as it is (`POST /api/v1/uploads`): CSV or TXT in any encoding, or
    /// XLSX. Returns the answer (its `upload` id, columns, rows).
    pub async fn upload(
        &self,
        file: &Path,
        sheet: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut url = url::Url::parse(&format!("{}/api/v1/uploads", self.url))?;
        if let Some(s) = sheet {
            url.query_pairs_mut().append_pair("sheet", s);
        }
        let resp = self
            .http()?
            .post(url)
            .bearer_auth(&self.token)
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        Self::answer(resp)
            .await
            .with_context(|| format!("{} was not accepted", file.display()))
    }

    /// Any request with an optional JSON body; API errors become their message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self
            .http()?
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        Self::answer(resp).await
    }

    /// A JSON answer, or its API error as the message.
    async fn answer(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let field = body["error"]["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            anyhow::bail!("{status}: {message}{field}");
        }
        Ok(body)
    }
}

/// `marquee displays`: the fleet as a table.
pub async fn displays(api: &ApiClient) -> anyhow::Result<String> {
    let body = api.get("/api/v1/displays").await?;
    let mut rows = vec![[
        "DISPLAY".to_string(),
        "CHANNEL".into(),
        "STATE".into(),
        "TIMELINE (applied/current)".into(),
        "LAST ALERT ACK".into(),
    ]];
    for d in body["displays"].as_array().into_iter().flatten() {
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_owned();
        let state = format!(
            "{} since {}{}",
            match d["state"].as_str() {
                Some("online") => "online",
                Some("stale") => "STALE (silent)",
                Some("unknown") => "UNKNOWN (not heard since restart)",
                _ => "OFFLINE",
            },
            s("since"),
            if d["clock_skew"].as_bool() == Some(true) {
                format!(
                    ", CLOCK OFF by {} s",
                    d["clock_skew_ms"].as_i64().unwrap_or(0) / 1000
                )
            } else {
                String::new()
            }
        ) + if d["conflict"].as_bool() == Some(true) {
            ", CONFLICT (two agents use this id)"
        } else {
            ""
        };
        let applied = d["timeline_version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}"));
        let current = d["expected_timeline"]["version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}"));
        let mark = if d["up_to_date"].as_bool() == Some(true) {
            ""
        } else {
            "  (behind)"
        };
        let ack = match d["last_alert_ack"].as_str() {
            Some(a) => format!(
                "{a} ({} ms)",
                d["last_alert_latency_ms"].as_i64().unwrap_or(0)
            ),
            None => "-".into(),
        };
        rows.push([
            s("id"),
            s("channel"),
            state,
            format!("{applied}/{current}{mark}"),
            ack,
        ]);
    }
    Ok(table(&rows))
}

/// Rows as left-aligned columns (the first row is the header).
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let cols = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.as_ref()[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `marquee alert raise`: returns what to print.
pub async fn alert_raise(
    api: &ApiClient,
    text: &[(String, String)],
    channels: &[String],
    displays: &[String],
    severity: &str,
    expires_in: &str,
) -> anyhow::Result<String> {
    let scope = match (channels.is_empty(), displays.is_empty()) {
        (true, true) => serde_json::json!("all"),
        (false, true) => serde_json::json!({ "channels": channels }),
        (true, false) => serde_json::json!({ "displays": displays }),
        (false, false) => anyhow::bail!("give --channel or --display, not both"),
    };
    let text: std::collections::BTreeMap<&str, &str> =
        text.iter().map(|(l, t)| (l.as_str(), t.as_str())).collect();
    let v = api
        .call(
            reqwest::Method::POST,
            "/api/v1/alerts",
            Some(serde_json::json!({"text": text, "scope": scope, "severity": severity, "expires_in": expires_in})),
        )
        .await?;
    let topics: Vec<&str> = v["published"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["topic"].as_str())
        .collect();
    Ok(format!(
        "{}\nraised on {} until {}\n",
        v["id"].as_str().unwrap_or("?"),
        topics.join(", "),
        v["expires_at"].as_str().unwrap_or("?")
    ))
}

/// `marquee audit verify`: checks the hash chain in the daemon's database (offline). Returns the
/// message and whether the chain is intact.
pub fn audit_verify(config: &Path, data_dir: Option<&Path>) -> anyhow::Result<(String, bool)> {
    let cfg = Config::load(config)?;
    let db = data_dir.unwrap_or(&cfg.data_dir).join("marquee.db");
    if !db.exists() {
        anyhow::bail!(
            "{} does not exist (has the daemon run with this config?)",
            db.display()
        );
    }
    let store =
        crate::store::Store::open(&db).with_context(|| format!("cannot open {}", db.display()))?;
    let dir = data_dir.unwrap_or(&cfg.data_dir);
    Ok(match store.verify_audit()? {
        Ok(n) => match anchored(&store, dir, n)? {
            Ok(note) => (
                format!(
                    "ok: the audit log of {} is intact ({n} entries){note}\n",
                    db.display()
                ),
                true,
            ),
            Err(why) => (format!("TAMPERED: {}: {why}\n", db.display()), false),
        },
        Err(b) => (
            format!(
                "TAMPERED: {}: audit entry {}: {}\n",
                db.display(),
                b.seq,
                b.reason
            ),
            false,
        ),
    })
}

/// Checks the log of `n` entries against the signed anchor beside the database: `Ok` with a
/// note, or what is wrong (a deleted tail, a rewritten log, a forged anchor).
fn anchored(
    store: &crate::store::Store,
    dir: &Path,
    n: u64,
) -> anyhow::Result<Result<String, String>> {
    use crate::store::anchor::{Anchor, FILE};
    let Some(a) = Anchor::read(dir)? else {
        return Ok(Ok(format!(
            "; no {FILE} to compare with (only the chain was checked)"
        )));
    };
    let key = crate::wire::PublicKey::from_hex(
        &std::fs::read_to_string(dir.join(crate::keys::SIGNING_PUB)).with_context(|| {
            format!(
                "cannot read {}",
                dir.join(crate::keys::SIGNING_PUB).display()
            )
        })?,
    )?;
    if !a.verify(&key) {
        return Ok(Err(format!(
            "{FILE} is not signed by this daemon's key: the anchor was forged or replaced"
        )));
    }
    if a.seq > n {
        return Ok(Err(format!(
            "the log ends at entry {n} but the signed anchor says it reached entry {}: entries were deleted",
            a.seq
        )));
    }
    if a.seq > 0 && store.audit_hash(a.seq)?.as_deref() != Some(a.hash.as_str()) {
        return Ok(Err(format!(
            "entry {} is not the one the signed anchor names: the log was rewritten",
            a.seq
        )));
    }
    Ok(Ok(format!("; the signed anchor (entry {}) matches", a.seq)))
}

fn playlist_id(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: the file name is the playlist id", file.display()))
}

/// `marquee playlist push FILE`: uploads it (validated like a file on disk); prints the impact.
pub async fn playlist_push(api: &ApiClient, file: &Path) -> anyhow::Result<String> {
    let id = playlist_id(file)?;
    // Sent as saved: the daemon names an encoding problem and where it is.
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let resp = api
        .http()?
        .put(format!("{}/api/v1/playlists/{id}", api.url))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon at {}", api.url))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST && v["errors"].is_array() {
        let lines: Vec<String> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}:{}:{}: {}",
                    file.display(),
                    e["line"],
                    e["column"],
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        anyhow::bail!("rejected, nothing changed:\n{}", lines.join("\n"));
    }
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    let impact = v["impact"].as_array().cloned().unwrap_or_default();
    Ok(format!(
        "pushed {id} → {}\n{}",
        v["file"].as_str().unwrap_or("?"),
        crate::preview::impact_text(&impact, chrono::Duration::hours(48))
    ))
}

/// `marquee playlist pull ID`: the live version as written.
pub async fn playlist_pull(api: &ApiClient, id: &str) -> anyhow::Result<String> {
    let v = api.get(&format!("/api/v1/playlists/{id}")).await?;
    let src = v["source"].as_str().context("the daemon sent no source")?;
    Ok(if src.ends_with('\n') {
        src.to_owned()
    } else {
        format!("{src}\n")
    })
}

/// `marquee playlist diff FILE`: what replacing the live playlist with FILE would change, from
/// the files (no daemon needed).
pub fn playlist_diff(config: &Path, file: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    let sched = &cfg.schedule;
    let ctx = sched.validation_context();
    let id = playlist_id(file)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let label = file.display().to_string();
    let src =
        crate::domain::playlist::source_text(&label, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let new = crate::domain::Playlist::parse(&label, Some(&id), src, &ctx).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let catalog = Catalog::load(&sched.playlists_dir, &ctx, None)
        .with_context(|| format!("cannot read {}", sched.playlists_dir.display()))?;
    let impact = crate::preview::change_impact(
        sched,
        &catalog.playlists(),
        &id,
        Some(new),
        chrono::Utc::now(),
    );
    Ok(crate::preview::impact_text(&impact, sched.horizon))
}

/// `marquee display add ID --channel C --out DIR`: registers the display and writes its
/// credentials (`ID.report.key` and `ID.broker.password`, mode 0600) into `out`, for the agent's
/// config. They are shown once: the daemon keeps only the public key and a password hash.
pub async fn display_add(
    api: &ApiClient,
    id: &str,
    channel: &str,
    out: &Path,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let c = api
        .call(
            reqwest::Method::POST,
            "/api/v1/registry",
            Some(serde_json::json!({"id": id, "channel": channel})),
        )
        .await?;
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    let key = out.join(format!("{id}.report.key"));
    let password = out.join(format!("{id}.broker.password"));
    crate::keys::write_atomic(
        &key,
        format!("{}\n", field("report_key_secret")).as_bytes(),
        0o600,
    )?;
    crate::keys::write_atomic(&password, field("broker_password").as_bytes(), 0o600)?;
    Ok(format!(
        "registered {id} on channel {channel}\n\
         wrote {} and {} (mode 0600; copy them to the display, they are not shown again)\n\
         in the agent's config:\n\
         \x20 id = \"{id}\"\n\
         \x20 channel = \"{channel}\"\n\
         \x20 report_key_file = \"{}\"\n\
         \x20 [mqtt]\n\
         \x20 username = \"{id}\"\n\
         \x20 password_file = \"{}\"\n\
         with Mosquitto, regenerate its files: marquee broker mosquitto --out DIR\n",
        key.display(),
        password.display(),
        key.display(),
        password.display(),
    ))
}

/// `marquee display list`: the registry as a table.
pub async fn display_list(api: &ApiClient) -> anyhow::Result<String> {
    let body = api.get("/api/v1/registry").await?;
    let mut rows = vec![[
        "ID".to_owned(),
        "CHANNEL".to_owned(),
        "REPORT KEY".to_owned(),
        "ADDED".to_owned(),
        "BY".to_owned(),
    ]];
    for d in body["displays"].as_array().into_iter().flatten() {
        let f = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        rows.push([
            f("id"),
            f("channel"),
            f("report_key"),
            f("added_at"),
            f("added_by"),
        ]);
    }
    Ok(table(&rows))
}

/// `marquee display remove ID`.
pub async fn display_remove(api: &ApiClient, id: &str) -> anyhow::Result<String> {
    api.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/registry/{id}"),
        None,
    )
    .await?;
    Ok(format!(
        "removed {id}: its reports are dropped from now on; with Mosquitto, regenerate its files to close its account\n"
    ))
}

/// `marquee broker mosquitto --out DIR`: writes `passwd` (mode 0600) and `acl` for Mosquitto
/// from the registry, keeping the daemon's own line of an existing `DIR/passwd` (the operator
/// makes it with `mosquitto_passwd`), and says how to use them.
pub async fn broker_mosquitto(api: &ApiClient, out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let body = api.get("/api/v1/broker/mosquitto").await?;
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let daemon = text("daemon_user");
    let passwd = out.join("passwd");
    let acl = out.join("acl");
    let kept = std::fs::read_to_string(&passwd).ok().and_then(|old| {
        old.lines()
            .find(|l| l.split(':').next() == Some(daemon.as_str()))
            .map(|l| format!("{l}\n"))
    });
    let mut content = kept.clone().unwrap_or_default();
    content.push_str(&text("password_file"));
    // Files Mosquitto already reads keep their owner and mode (it drops to its own user, so a
    // file rewritten as root, 0600, would lock every client out at its next reload).
    for (path, body, mode) in [
        (&passwd, content.as_str(), 0o600),
        (&acl, text("acl_file").as_str(), 0o644),
    ] {
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(path).ok();
        let mode = before.as_ref().map_or(mode, |m| m.mode() & 0o777);
        crate::keys::write_atomic(path, body.as_bytes(), mode)?;
        if let Some(m) = before {
            std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("cannot give {} its owner back", path.display()))?;
        }
    }
    let mut said = format!(
        "wrote {} ({} displays) and {}\n",
        passwd.display(),
        text("password_file").lines().count(),
        acl.display()
    );
    if kept.is_none() {
        said.push_str(&format!(
            "the daemon's account is not in it yet: mosquitto_passwd {} {daemon} (it asks for the password)\n\
             then make both files readable by Mosquitto's user (e.g. chown mosquitto {} {}); later runs keep owner and mode\n",
            passwd.display(),
            passwd.display(),
            acl.display()
        ));
    }
    said.push_str(&format!(
        "in mosquitto.conf (then reload Mosquitto: kill -HUP its pid):\n\
         \x20 allow_anonymous false\n\
         \x20 use_username_as_clientid true\n\
         \x20 password_file {}\n\
         \x20 acl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    Ok(said)
}
