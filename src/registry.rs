//! The display registry: which displays may report, the key each signs its reports with, and
//! each display's broker account. Registering issues a display its own credentials (returned once,
//! never stored in the clear); the daemon keeps only the public key and a password hash.
//!
//! Reports (status, event batches) are accepted only from registered displays and only when
//! signed with that display's key, so no other client (another display's account, or anyone on a
//! broker without topic rules, such as the embedded one) can report for it. The registry also
//! gives the two-person rule its reach. For Mosquitto, [`mosquitto_passwd`] and [`mosquitto_acl`]
//! write the broker's password and ACL files from it (`marquee broker mosquitto`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use chrono::Utc;
use sha2::{Digest, Sha512};

use crate::store::registry::{Registered, added_at};
use crate::store::{Store, StoreError};
use crate::wire::{KeyPair, PublicKey};

/// One registered display as the intake needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its channel.
    pub channel: String,
    /// The key its reports must be signed with.
    pub report_key: PublicKey,
}

/// What a new display is given, once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Credentials {
    /// Display id; also its broker user name.
    pub display: String,
    /// Its channel.
    pub channel: String,
    /// The secret its agent signs reports with (64 hex digits; the agent's `report_key_file`).
    pub report_key_secret: String,
    /// The matching public key, as registered.
    pub report_key: String,
    /// Its broker password (the agent's `[mqtt] password_file`).
    pub broker_password: String,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Not a usable display id.
    #[error(
        "display id {0:?} must be 1-64 letters, digits, '_' or '-' (no '.', which clustered brokers refuse or rewrite)"
    )]
    BadId(String),
    /// The channel is not configured.
    #[error("unknown channel {0:?}: declare it under [schedule] channels")]
    UnknownChannel(String),
    /// The config declares the display under another channel.
    #[error("display {id:?} is declared under [[schedule.displays]] with channel {declared:?}")]
    ChannelMismatch {
        /// Display.
        id: String,
        /// Its declared channel.
        declared: String,
    },
    /// Already registered.
    #[error("display {0:?} is already registered (remove it first to issue new credentials)")]
    Exists(String),
    /// The id is a daemon's broker user name (this node's or another node's on the store).
    #[error(
        "display id {0:?} is a daemon's broker user name ([mqtt] username of this or another node): a display with it would share that daemon's broker account"
    )]
    Reserved(String),
    /// Not registered.
    #[error("display {0:?} is not registered")]
    Unknown(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness.
    #[error("no randomness for new credentials: {0}")]
    Random(String),
}

/// What a registration is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The configured channels.
    pub channels: &'a [String],
    /// Displays declared in the config, with their channel.
    pub declared: &'a BTreeMap<String, String>,
    /// The daemons' broker user names: this node's and the other nodes' on a shared store
    /// (each refused as a display id).
    pub daemon_users: &'a [String],
}

/// The registry, read by the intake on every report and changed by the API.
#[derive(Debug, Default)]
pub struct Registry {
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl Registry {
    /// Loads the registry from the store (a row whose key does not parse is skipped and logged).
    pub fn load(store: &Store) -> Result<Arc<Registry>, StoreError> {
        Ok(Arc::new(Registry {
            entries: RwLock::new(Self::read_store(store)?),
        }))
    }

    /// Reads the registry again from the store (another node changed it: its generation in
    /// `store::handoff` moved).
    pub fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let entries = Self::read_store(store)?;
        *self.write() = entries;
        Ok(())
    }

    fn read_store(store: &Store) -> Result<BTreeMap<String, Entry>, StoreError> {
        let mut entries = BTreeMap::new();
        for r in store.registry()? {
            match PublicKey::from_hex(&r.report_key) {
                Ok(report_key) => {
                    entries.insert(
                        r.id,
                        Entry {
                            channel: r.channel,
                            report_key,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(display = %r.id, error = %e, "registered report key unreadable; its reports are dropped")
                }
            }
        }
        Ok(entries)
    }

    /// The entry of `display`, if registered.
    pub fn get(&self, display: &str) -> Option<Entry> {
        self.read().get(display).cloned()
    }

    /// How many displays are registered.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every display the daemon knows of without asking the bus: the registered ones and those
    /// declared in the configuration, with their channel. (Reach for the two-person rule.)
    pub fn known(&self, declared: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut all = declared.clone();
        for (id, e) in self.read().iter() {
            all.insert(id.clone(), e.channel.clone());
        }
        all
    }

    /// Registers `id` on `channel`, checked against `site`: new credentials, stored as a public
    /// key and a password hash.
    pub fn add(
        &self,
        store: &Store,
        id: &str,
        channel: &str,
        site: &Site<'_>,
        by: &str,
    ) -> Result<Credentials, RegistryError> {
        let Site {
            channels,
            declared,
            daemon_users,
        } = *site;
        if !valid_display_id(id) {
            return Err(RegistryError::BadId(id.to_owned()));
        }
        if daemon_users.iter().any(|u| u == id) {
            return Err(RegistryError::Reserved(id.to_owned()));
        }
        if !channels.iter().any(|c| c == channel) {
            return Err(RegistryError::UnknownChannel(channel.to_owned()));
        }
        if let Some(d) = declared.get(id).filter(|d| *d != channel) {
            return Err(RegistryError::ChannelMismatch {
                id: id.to_owned(),
                declared: d.clone(),
            });
        }
        let keys = KeyPair::from_seed(random()?);
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<24>()?);
        let row = Registered {
            id: id.to_owned(),
            channel: channel.to_owned(),
            report_key: keys.public().to_hex(),
            password_hash: mosquitto_hash(&password, &random()?),
            added_at: added_at(Utc::now()),
            added_by: by.to_owned(),
        };
        if !store.register_display(&row)? {
            return Err(RegistryError::Exists(id.to_owned()));
        }
        self.write().insert(
            id.to_owned(),
            Entry {
                channel: channel.to_owned(),
                report_key: keys.public().clone(),
            },
        );
        Ok(Credentials {
            display: id.to_owned(),
            channel: channel.to_owned(),
            report_key_secret: keys.secret_hex(),
            report_key: keys.public().to_hex(),
            broker_password: password,
        })
    }

    /// Removes `id`: its reports are dropped from now on (its broker account goes with the next
    /// `marquee broker mosquitto`).
    pub fn remove(&self, store: &Store, id: &str) -> Result<(), RegistryError> {
        if !store.unregister_display(id)? {
            return Err(RegistryError::Unknown(id.to_owned()));
        }
        self.write().remove(id);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A display id that every broker keeps as it is: 1-64 of `A-Z a-z 0-9 _ -`. (`.` is refused:
/// NATS and RabbitMQ map MQTT `/` to `.`, so a dotted id would split into two topic levels.)
pub fn valid_display_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn random<const N: usize>() -> Result<[u8; N], RegistryError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| RegistryError::Random(e.to_string()))?;
    Ok(b)
}

/// A Mosquitto password-file hash of `password`: `$6$<base64 salt>$<base64 SHA-512(password ‖
/// salt)>`, the salted SHA-512 form every Mosquitto since 1.4 reads (`mosquitto_passwd -H sha512`
/// writes it with a 12-byte salt). Used only for the passwords issued here, which are 24 random
/// bytes: nobody can guess them, so a slow hash would add nothing. (The daemon's own password,
/// which a person chooses, is never hashed here: see [`mosquitto_passwd`].)
pub fn mosquitto_hash(password: &str, salt: &[u8; 12]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut h = Sha512::new();
    h.update(password.as_bytes());
    h.update(salt);
    format!("$6${}${}", b64.encode(salt), b64.encode(h.finalize()))
}

/// The display lines of a Mosquitto `password_file`, one per registered display. The daemon's
/// own account is not among them: the operator adds it with `mosquitto_passwd` (PBKDF2), and
/// `marquee broker mosquitto` keeps that line when it writes the file again.
pub fn mosquitto_passwd(displays: &[Registered]) -> String {
    displays
        .iter()
        .map(|d| format!("{}:{}\n", d.id, d.password_hash))
        .collect()
}

/// A Mosquitto `acl_file`: each daemon's account (every node's, on a shared store) reads and
/// writes everything under the prefix; a
/// display (user name = display id, `%u`) reads its channel's and its own timeline, alerts, the
/// daemon's status and its own receipts, and writes only its own status and events. Anything else
/// a display publishes is dropped by the broker.
pub fn mosquitto_acl(prefix: &str, daemon_users: &[String]) -> String {
    let daemons: String = daemon_users
        .iter()
        .map(|u| format!("user {u}\ntopic readwrite {prefix}/v1/#\n"))
        .collect();
    format!(
        "# Generated by `marquee broker mosquitto`; regenerate after `marquee display add/remove`.\n\
         {daemons}\
         \n\
         pattern read {prefix}/v1/channel/+/timeline\n\
         pattern read {prefix}/v1/display/%u/timeline\n\
         pattern read {prefix}/v1/alert/+\n\
         pattern read {prefix}/v1/alert/+/held\n\
         pattern read {prefix}/v1/daemon/status\n\
         pattern read {prefix}/v1/agent/%u/ack\n\
         pattern write {prefix}/v1/agent/%u/status\n\
         pattern write {prefix}/v1/agent/%u/events\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_mosquitto_passwd() {
        // Written by Mosquitto 2.0.11's `mosquitto_passwd -c -b -H sha512 pw u secret`.
        let line = "$6$55CJ4faustlYgYQg$9QDIjoYN5PWy8Ne3luIVW5mJLDgmQZdx9A79yufTsp53xJvbz058i/nQi8HHG4VL7EIwhg/h/H9SFYTeJ+Nzkw==";
        let salt = base64::engine::general_purpose::STANDARD
            .decode("55CJ4faustlYgYQg")
            .unwrap();
        assert_eq!(mosquitto_hash("secret", &salt.try_into().unwrap()), line);
    }

    #[test]
    fn ids_that_brokers_would_split_are_refused() {
        assert!(valid_display_id("lobby-east_1"));
        for bad in [
            "",
            "lobby.east",
            "a/b",
            "a+b",
            "a#",
            &"x".repeat(65),
            "中文",
        ] {
            assert!(!valid_display_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn add_issues_credentials_that_match_what_is_stored() {
        let store = Store::memory().unwrap();
        let reg = Registry::load(&store).unwrap();
        let channels = vec!["lobby".to_owned()];
        let declared = BTreeMap::from([("d1".to_owned(), "subway".to_owned())]);
        let daemons = ["marquee".to_owned(), "hall-b".to_owned()];
        let site = Site {
            channels: &channels,
            declared: &declared,
            daemon_users: &daemons,
        };
        let c = reg.add(&store, "d2", "lobby", &site, "admin").unwrap();
        let keys = KeyPair::from_hex(&c.report_key_secret).unwrap();
        assert_eq!(reg.get("d2").unwrap().report_key, *keys.public());
        let row = &store.registry().unwrap()[0];
        let salt = base64::engine::general_purpose::STANDARD
            .decode(row.password_hash.split('$').nth(2).unwrap())
            .unwrap();
        assert_eq!(
            row.password_hash,
            mosquitto_hash(&c.broker_password, &salt.try_into().unwrap())
        );
        assert!(matches!(
            reg.add(&store, "d2", "lobby", &site, "admin"),
            Err(RegistryError::Exists(_))
        ));
        assert!(matches!(
            reg.add(&store, "d1", "lobby", &site, "admin"),
            Err(RegistryError::ChannelMismatch { .. })
        ));
        assert!(matches!(
            reg.add(&store, "d3", "nope", &site, "admin"),
            Err(RegistryError::UnknownChannel(_))
        ));
        for daemon in &daemons {
            assert!(matches!(
                reg.add(&store, daemon, "lobby", &site, "admin"),
                Err(RegistryError::Reserved(_))
            ));
        }
        assert_eq!(reg.known(&declared).len(), 2);
        reg.remove(&store, "d2").unwrap();
        assert!(reg.get("d2").is_none());
    }
}
