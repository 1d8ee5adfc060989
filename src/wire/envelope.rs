//! The signed envelope. Every retained payload the daemon publishes looks like
//!
//! ```json
//! {"v":1,"key":"<key id>","sig":"<hex Ed25519 signature>","body":{"topic":"marquee/v1/channel/lobby/timeline","version":7,"issued_at":"…","expires_at":"…","payload":{"kind":"timeline","data":{…}}}}
//! ```
//!
//! The signature covers the exact bytes of `body` as they stand in the message (read back with
//! `serde_json`'s raw values, so no re-encoding happens before verification). The body binds the
//! full topic, a version that only grows, and an expiry: a payload cannot be replayed onto another
//! topic, rolled back to an older version, or shown after it expired. [`verify`] checks all of it.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::alert::{Alert, AlertClear};
use super::timeline::Timeline;

/// Why a payload was refused. Agents log these verbatim.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a v1 envelope (bad JSON, missing fields, unknown version).
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The signature does not match the body under the pinned key (forged or tampered).
    #[error("bad signature (signed by key {key_id}, expected {expected})")]
    BadSignature {
        /// Key id claimed by the envelope.
        key_id: String,
        /// Key id of the pinned public key.
        expected: String,
    },
    /// Signed for another topic: a replay.
    #[error("signed for topic {signed} but received on {received}")]
    WrongTopic {
        /// Topic inside the signed body.
        signed: String,
        /// Topic the message arrived on.
        received: String,
    },
    /// Not newer than what the receiver already holds: a rollback.
    #[error("version {version} is not newer than the version {held} already held")]
    Rollback {
        /// The payload's version.
        version: u64,
        /// The version held.
        held: u64,
    },
    /// Past its expiry.
    #[error("expired at {0}")]
    Expired(DateTime<Utc>),
    /// A key file or key string that is not a key.
    #[error("bad key: {0}")]
    BadKey(String),
}

/// What a signed body carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Signed {
    /// A channel or display timeline, in the encoding with an item table (`timeline2`; agents
    /// that know only the first encoding refuse it as an unknown kind). A cached payload of the
    /// first encoding (`timeline`) is still read.
    #[serde(rename = "timeline2", alias = "timeline")]
    Timeline(Timeline),
    /// An emergency alert for the topic's scope.
    Alert(Alert),
    /// An emergency alert published ahead of its start (`starts_at` set): shown from then.
    AlertAt(Alert),
    /// The end of an alert.
    AlertClear(AlertClear),
    /// The end of the timeline on this topic (a display timeline no longer targeted: the display
    /// follows its channel again). Only this clears a timeline on an agent: an empty payload,
    /// which anyone can publish, changes nothing.
    TimelineClear,
    /// The daemon's receipt for an agent's events.
    EventAck(super::agent::EventAck),
    /// An agent's status, signed with its display's report key (see `docs/protocol.md`).
    Status(super::agent::Status),
    /// An agent's event batch, signed with its display's report key.
    Events(super::agent::EventBatch),
}

/// The signed part of an envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBody {
    /// The full topic this payload may be received on.
    pub topic: String,
    /// Grows with every new payload on the topic, across daemon restarts.
    pub version: u64,
    /// When the daemon signed it.
    pub issued_at: DateTime<Utc>,
    /// After this instant receivers refuse it.
    pub expires_at: DateTime<Utc>,
    /// The content.
    pub payload: Signed,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u8,
    key: &'a str,
    sig: String,
    body: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    v: u8,
    key: String,
    sig: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// An Ed25519 public key with its short id (first 8 bytes of its SHA-256, hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl PublicKey {
    /// Reads the hex form written by `marquee keygen` (64 hex digits; surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<PublicKey, WireError> {
        let bytes: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| WireError::BadKey("a public key is 64 hex digits".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| WireError::BadKey(format!("not an Ed25519 public key: {e}")))?;
        Ok(PublicKey::new(key))
    }

    fn new(key: VerifyingKey) -> PublicKey {
        let id = hex::encode(&Sha256::digest(key.as_bytes())[..8]);
        PublicKey { key, id }
    }

    /// The hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The short id carried in envelopes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `sig` (64 bytes, hex) is this key's Ed25519 signature of `msg`.
    pub fn verify_detached(&self, msg: &[u8], sig: &str) -> bool {
        let Some(bytes) = hex::decode(sig.trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        self.key
            .verify_strict(msg, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// The daemon's signing key.
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "KeyPair({})", self.public.id())
    }
}

impl KeyPair {
    /// A key pair from a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> KeyPair {
        let signing = SigningKey::from_bytes(&seed);
        let public = PublicKey::new(signing.verifying_key());
        KeyPair { signing, public }
    }

    /// Reads the hex seed written by `marquee keygen`.
    pub fn from_hex(s: &str) -> Result<KeyPair, WireError> {
        let seed: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| WireError::BadKey("a secret key is 64 hex digits".into()))?;
        Ok(KeyPair::from_seed(seed))
    }

    /// The secret seed in hex (for writing the key file).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// An Ed25519 signature of `msg` (hex), for records kept outside envelopes (the audit
    /// anchor); see [`PublicKey::verify_detached`].
    pub fn sign_detached(&self, msg: &[u8]) -> String {
        hex::encode(self.signing.sign(msg).to_bytes())
    }
}

/// Signs `body` into envelope bytes ready to publish.
pub fn sign(keys: &KeyPair, body: &SignedBody) -> Vec<u8> {
    envelope(keys, body)
}

/// [`sign`] of a [`Signed::Timeline`] whose timeline is already serialised
/// (`serde_json::to_string(&timeline)`): the same bytes, with the timeline encoded once for
/// the envelope and the daemon's stored copy.
pub fn sign_timeline(
    keys: &KeyPair,
    topic: &str,
    version: u64,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    timeline_json: &RawValue,
) -> Vec<u8> {
    // The shape serde gives `SignedBody` with `Signed::Timeline` (tag `kind`, content `data`).
    #[derive(Serialize)]
    struct Payload<'a> {
        kind: &'static str,
        data: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        topic: &'a str,
        version: u64,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        payload: Payload<'a>,
    }
    let body = Body {
        topic,
        version,
        issued_at,
        expires_at,
        payload: Payload {
            kind: "timeline2",
            data: timeline_json,
        },
    };
    envelope(keys, &body)
}

/// The envelope of `body`: serialised once, with the key's id and its signature over exactly
/// those bytes.
fn envelope(keys: &KeyPair, body: &impl Serialize) -> Vec<u8> {
    // Serialised straight into a raw value (not parsed back to check it: serde_json wrote it).
    let raw = serde_json::value::to_raw_value(body).expect("a signed body always serialises");
    let sig = keys.signing.sign(raw.get().as_bytes());
    serde_json::to_vec(&EnvelopeOut {
        v: 1,
        key: keys.public.id(),
        sig: hex::encode(sig.to_bytes()),
        body: &raw,
    })
    .expect("an envelope always serialises")
}

/// Checks `bytes` received on `topic`: the signature under `key`, the topic binding, the version
/// against `held` (the newest version the receiver already applied for this topic), and the expiry
/// against `now`. Returns the body only if every check passes.
pub fn verify(
    key: &PublicKey,
    topic: &str,
    bytes: &[u8],
    held: Option<u64>,
    now: DateTime<Utc>,
) -> Result<SignedBody, WireError> {
    let env: EnvelopeIn<'_> =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if env.v != 1 {
        return Err(WireError::Malformed(format!(
            "envelope version {} (this agent speaks 1)",
            env.v
        )));
    }
    let sig_bytes: [u8; 64] = hex::decode(&env.sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::Malformed("sig is not 128 hex digits".into()))?;
    let bad_sig = || WireError::BadSignature {
        key_id: env.key.clone(),
        expected: key.id().to_owned(),
    };
    key.key
        .verify(
            env.body.get().as_bytes(),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| bad_sig())?;
    let body: SignedBody = serde_json::from_str(env.body.get())
        .map_err(|e| WireError::Malformed(format!("signed body: {e}")))?;
    if body.topic != topic {
        return Err(WireError::WrongTopic {
            signed: body.topic,
            received: topic.to_owned(),
        });
    }
    if let Some(held) = held
        && body.version <= held
    {
        return Err(WireError::Rollback {
            version: body.version,
            held,
        });
    }
    if now >= body.expires_at {
        return Err(WireError::Expired(body.expires_at));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::timeline::{Target, Timeline};
    use chrono::{Duration, TimeZone};

    fn keys(n: u8) -> KeyPair {
        KeyPair::from_seed([n; 32])
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2021, 5, 15, 1, 0, 0).unwrap()
    }

    fn body(topic: &str, version: u64) -> SignedBody {
        SignedBody {
            topic: topic.into(),
            version,
            issued_at: now(),
            expires_at: now() + Duration::hours(48),
            payload: Signed::Timeline(Timeline {
                target: Target::Channel("lobby".into()),
                timezone: "Asia/Shanghai".into(),
                from: now(),
                until: now() + Duration::hours(48),
                segments: vec![],
            }),
        }
    }

    const T: &str = "marquee/v1/channel/lobby/timeline";

    #[test]
    fn a_timeline_signed_from_its_json_is_the_same_envelope() {
        use crate::wire::timeline::{Item, Segment, Tier};
        let item = |id: &str, text: &str| Item {
            id: id.into(),
            playlist: "open-day".into(),
            seconds: 8,
            text: std::sync::Arc::new([("zh".to_owned(), text.to_owned())].into()),
        };
        let mut b = body(T, 7);
        let Signed::Timeline(tl) = &mut b.payload else {
            unreachable!()
        };
        tl.segments.push(Segment {
            from: now(),
            until: now() + Duration::hours(2),
            tier: Some(Tier::Interrupt),
            playlists: vec!["open-day".into()].into(),
            items: vec![
                item("a", "欢迎 \"开放日\""),
                item("b", "二"),
                item("a", "欢迎 \"开放日\""),
            ]
            .into(),
        });
        let json = serde_json::to_string(tl).unwrap();
        let raw = RawValue::from_string(json).unwrap();
        let k = keys(1);
        assert_eq!(
            sign_timeline(&k, T, 7, b.issued_at, b.expires_at, &raw),
            sign(&k, &b)
        );
        let read = verify(k.public(), T, &sign(&k, &b), None, now()).unwrap();
        assert_eq!(read, b);
    }

    #[test]
    fn signed_payload_verifies() {
        let k = keys(1);
        let bytes = sign(&k, &body(T, 3));
        let got = verify(k.public(), T, &bytes, Some(2), now()).unwrap();
        assert_eq!(got, body(T, 3));
        assert!(verify(k.public(), T, &bytes, None, now()).is_ok());
    }

    #[test]
    fn tampered_body_is_rejected() {
        let k = keys(1);
        let bytes = String::from_utf8(sign(&k, &body(T, 3))).unwrap();
        let tampered = bytes.replace("\"version\":3", "\"version\":4");
        assert_ne!(bytes, tampered);
        assert!(matches!(
            verify(k.public(), T, tampered.as_bytes(), None, now()),
            Err(WireError::BadSignature { .. })
        ));
    }

    #[test]
    fn other_key_is_rejected() {
        let bytes = sign(&keys(2), &body(T, 3));
        let err = verify(keys(1).public(), T, &bytes, None, now()).unwrap_err();
        assert!(matches!(err, WireError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn replay_on_other_topic_is_rejected() {
        let k = keys(1);
        let bytes = sign(&k, &body(T, 3));
        let err = verify(
            k.public(),
            "marquee/v1/channel/bus/timeline",
            &bytes,
            None,
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, WireError::WrongTopic { .. }));
    }

    #[test]
    fn older_or_same_version_is_rejected() {
        let k = keys(1);
        let bytes = sign(&k, &body(T, 3));
        for held in [3, 9] {
            assert_eq!(
                verify(k.public(), T, &bytes, Some(held), now()),
                Err(WireError::Rollback { version: 3, held })
            );
        }
    }

    #[test]
    fn expired_is_rejected() {
        let k = keys(1);
        let bytes = sign(&k, &body(T, 3));
        let later = now() + Duration::hours(48);
        assert!(matches!(
            verify(k.public(), T, &bytes, None, later),
            Err(WireError::Expired(_))
        ));
    }

    #[test]
    fn garbage_and_unsigned_are_malformed() {
        let k = keys(1);
        for bad in [&b"hello"[..], br#"{"v":1,"body":{}}"#, b""] {
            assert!(matches!(
                verify(k.public(), T, bad, None, now()),
                Err(WireError::Malformed(_))
            ));
        }
    }

    #[test]
    fn chinese_text_is_not_escaped() {
        let k = keys(1);
        let mut b = body(T, 1);
        let Signed::Timeline(tl) = &mut b.payload else {
            unreachable!()
        };
        tl.timezone = "深化政务公开".into();
        let s = String::from_utf8(sign(&k, &b)).unwrap();
        assert!(s.contains("深化政务公开"), "{s}");
        assert!(!s.contains("\\u"));
    }

    #[test]
    fn key_hex_round_trips() {
        let k = keys(7);
        let again = KeyPair::from_hex(&k.secret_hex()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(
            PublicKey::from_hex(&k.public().to_hex()).unwrap(),
            *k.public()
        );
        assert!(PublicKey::from_hex("abc").is_err());
    }
}
