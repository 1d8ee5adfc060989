//! The display registry over HTTP (admin only): register a display (its credentials are in the
//! answer, once), remove one, list them, and the Mosquitto password and ACL files made from it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Admin, Viewer};
use super::error::ApiError;
use super::{AppState, audit};
use crate::registry::{Credentials, RegistryError, mosquitto_acl, mosquitto_passwd};

/// `POST /api/v1/registry` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDisplay {
    /// Display id (1-64 of `A-Z a-z 0-9 _ -`); also its broker user name.
    pub id: String,
    /// Its channel (one of `[schedule] channels`).
    pub channel: String,
}

fn refused(e: RegistryError) -> ApiError {
    match e {
        RegistryError::BadId(_) | RegistryError::Reserved(_) => {
            ApiError::bad_field("id", e.to_string())
        }
        RegistryError::UnknownChannel(_) | RegistryError::ChannelMismatch { .. } => {
            ApiError::bad_field("channel", e.to_string())
        }
        RegistryError::Exists(_) => ApiError {
            status: StatusCode::CONFLICT,
            code: "exists",
            message: e.to_string(),
            field: Some("id".into()),
        },
        RegistryError::Unknown(_) => ApiError::not_found(e.to_string()),
        RegistryError::Store(_) | RegistryError::Random(_) => ApiError::internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(refused)
}

/// `POST /api/v1/registry`: registers a display and issues its credentials (report key and
/// broker password), shown only in this answer.
#[utoipa::path(post, path = "/api/v1/registry", tag = "displays", security(("bearer" = [])), request_body = AddDisplay, responses((status = 201, description = "registered; the credentials are in this answer only", body = Credentials), (status = 400, description = "bad id or channel (field named)"), (status = 409, description = "already registered"), (status = 401, description = "no or unknown token"), (status = 403, description = "not an admin")))]
pub async fn add(
    super::auth::Auth(who): Admin,
    State(s): State<Arc<AppState>>,
    Json(req): Json<AddDisplay>,
) -> Result<(StatusCode, Json<Credentials>), ApiError> {
    let (store, registry, cfg) = (s.store.clone(), s.registry.clone(), s.cfg.clone());
    let by = who.name.clone();
    let (id, channel) = (req.id.clone(), req.channel.clone());
    let creds = blocking(move || {
        let daemons = daemon_accounts(&cfg, &store)?;
        registry.add(
            &store,
            &id,
            &channel,
            &crate::registry::Site {
                channels: &cfg.schedule.channels,
                declared: &cfg.schedule.displays,
                daemon_users: &daemons,
            },
            &by,
        )
    })
    .await?;
    audit(
        &s,
        &who.name,
        "display.register",
        &req.id,
        json!({"channel": req.channel, "report_key": creds.report_key}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(creds)))
}

/// `DELETE /api/v1/registry/{id}`: the display's reports are dropped from now on; its broker
/// account goes with the next generated password file.
#[utoipa::path(delete, path = "/api/v1/registry/{id}", tag = "displays", security(("bearer" = [])), params(("id" = String, Path, description = "display id")), responses((status = 204, description = "removed"), (status = 404, description = "not registered"), (status = 401, description = "no or unknown token"), (status = 403, description = "not an admin")))]
pub async fn remove(
    super::auth::Auth(who): Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (store, registry, key) = (s.store.clone(), s.registry.clone(), id.clone());
    blocking(move || registry.remove(&store, &key)).await?;
    audit(&s, &who.name, "display.unregister", &id, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/nodes/{name}`: forgets a node of a shared store taken out of service, so its
/// broker account leaves the files `marquee broker mosquitto` writes (each node records itself
/// at its start, so a node that runs again comes back). Not this node itself, nor the leader.
#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "displays", security(("bearer" = [])), params(("name" = String, Path, description = "node name ([store] node)")), responses((status = 204, description = "forgotten"), (status = 400, description = "this node itself, or the leader (field name)"), (status = 404, description = "no such node"), (status = 401, description = "no or unknown token"), (status = 403, description = "not an admin")))]
pub async fn forget_node(
    super::auth::Auth(who): Admin,
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.store.node() == Some(name.as_str()) {
        return Err(ApiError::bad_field(
            "name",
            format!("{name:?} is this node: forget it from another node, once it is stopped"),
        ));
    }
    // The leader is running: forgetting it would drop its account from the next files.
    if s.store.is_postgres() {
        let store = s.store.clone();
        let holder = blocking(move || Ok(store.leader()?)).await?;
        if holder.is_some_and(|h| h.node == name && h.remaining_s > 0.0) {
            return Err(ApiError::bad_field(
                "name",
                format!("{name:?} leads now: stop it (another node takes over), then forget it"),
            ));
        }
    }
    let (store, key) = (s.store.clone(), name.clone());
    if !blocking(move || Ok(store.forget_node(&key)?)).await? {
        return Err(ApiError::not_found(format!(
            "no node {name:?} on this store"
        )));
    }
    audit(&s, &who.name, "node.forget", &name, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/registry`: every registered display (id, channel, public report key, when and
/// by whom), without secrets.
#[utoipa::path(get, path = "/api/v1/registry", tag = "displays", security(("bearer" = [])), responses((status = 200, description = "the registered displays", body = RegistryList), (status = 401, description = "no or unknown token")))]
pub async fn list(
    _: Viewer,
    State(s): State<Arc<AppState>>,
) -> Result<Json<RegistryList>, ApiError> {
    let displays = s.store.call(|store| store.registry()).await?;
    Ok(Json(RegistryList { displays }))
}

/// `GET /api/v1/registry`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RegistryList {
    /// By id; no secrets (the broker password's hash is not shown).
    pub displays: Vec<crate::store::registry::Registered>,
}

/// The broker accounts of the daemons: this node's (`[mqtt] username`) and, on a shared store,
/// every other node's as it recorded at its start (`nodes`); each once, sorted.
fn daemon_accounts(
    cfg: &crate::config::Config,
    store: &crate::store::Store,
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut users = store.node_accounts()?;
    users.extend(cfg.mqtt.credentials.as_ref().map(|c| c.0.clone()));
    users.sort();
    users.dedup();
    Ok(users)
}

/// `GET /api/v1/broker/mosquitto`: for Mosquitto, the registered displays' `password_file` lines
/// and the `acl_file` (each display reads its own topics and writes only its own reports; the
/// daemons' accounts, `daemon_users`, have the rest: on a shared store every node's, as each
/// recorded at its start). The daemons' own password lines are the operator's
/// (`mosquitto_passwd`); `marquee broker mosquitto` keeps them. Needs `[mqtt] username`.
#[utoipa::path(get, path = "/api/v1/broker/mosquitto", tag = "displays", security(("bearer" = [])), responses((status = 200, description = "the daemon's broker account and the two files", body = BrokerFiles), (status = 400, description = "the daemon has no broker account (field mqtt.username)"), (status = 401, description = "no or unknown token"), (status = 403, description = "not an admin")))]
pub async fn mosquitto(
    _: Admin,
    State(s): State<Arc<AppState>>,
) -> Result<Json<BrokerFiles>, ApiError> {
    let Some(user) = s.cfg.mqtt.credentials.as_ref().map(|c| c.0.clone()) else {
        return Err(ApiError::bad_field(
            "mqtt.username",
            "the daemon has no broker account: set [mqtt] username and password_env or password_file in its config (the ACL gives that account the daemon's topics)",
        ));
    };
    let (store, cfg) = (s.store.clone(), s.cfg.clone());
    let (displays, daemons) =
        blocking(move || Ok((store.registry()?, daemon_accounts(&cfg, &store)?))).await?;
    // Every line of the two files is a name's: refuse a daemon account that would write lines
    // of its own or share a display's name (each node checks its own at start; another node's
    // row is checked here again).
    if let Some(bad) = daemons
        .iter()
        .find(|u| !crate::config::mqtt::valid_account(u) || displays.iter().any(|d| d.id == **u))
    {
        return Err(ApiError::bad_field(
            "mqtt.username",
            format!(
                "the daemon broker account {bad:?} (of this or another node) is a registered display's id or not a valid account name: no files written"
            ),
        ));
    }
    let passwd = mosquitto_passwd(&displays);
    Ok(Json(BrokerFiles {
        acl_file: mosquitto_acl(&s.cfg.mqtt.topic_prefix, &daemons),
        daemon_user: user,
        daemon_users: daemons,
        password_file: passwd,
    }))
}

/// Mosquitto's files for the registered displays (`GET /api/v1/broker/mosquitto`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BrokerFiles {
    /// This daemon's own broker account (`[mqtt] username`).
    pub daemon_user: String,
    /// Every daemon's broker account the ACL gives the daemon's topics: this one's and, on a
    /// shared store, every other node's (`[mqtt] username` as each recorded at its start).
    pub daemon_users: Vec<String>,
    /// `password_file` lines for the displays (salted SHA-512, `$6$`, which Mosquitto reads).
    pub password_file: String,
    /// `acl_file` text: each display its own topics, the daemon its account's.
    pub acl_file: String,
}
