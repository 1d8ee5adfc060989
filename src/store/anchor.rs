//! The audit log's anchor: its head (sequence number and hash) signed with the daemon's key and
//! kept in `data_dir/audit.anchor`, outside the database. The hash chain alone shows an edited or
//! reordered entry but not a deleted tail, and whoever can write the database can rewrite the
//! whole chain; the signed anchor says how far the log reached and what its last entry was, so
//! `marquee audit verify` finds both. It guarantees what the key guarantees: someone who holds
//! the signing key can forge an anchor too.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::wire::{KeyPair, PublicKey};

/// The file name under the data directory.
pub const FILE: &str = "audit.anchor";

/// A signed head of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The last entry's sequence number.
    pub seq: u64,
    /// The last entry's hash.
    pub hash: String,
    /// Key id of the signer.
    pub key: String,
    /// Ed25519 over `marquee-audit-anchor\n{seq}\n{hash}` (hex).
    pub sig: String,
}

fn message(seq: u64, hash: &str) -> Vec<u8> {
    format!("marquee-audit-anchor\n{seq}\n{hash}").into_bytes()
}

impl Anchor {
    /// Signs the head `seq`, `hash`.
    pub fn sign(keys: &KeyPair, seq: u64, hash: &str) -> Anchor {
        Anchor {
            seq,
            hash: hash.to_owned(),
            key: keys.public().id().to_owned(),
            sig: keys.sign_detached(&message(seq, hash)),
        }
    }

    /// Whether `key` signed it.
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify_detached(&message(self.seq, &self.hash), &self.sig)
    }

    /// Writes it (atomically) into `data_dir`, unless the anchor there is already further on
    /// (two entries appended at once may finish writing their anchors out of order).
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        if Anchor::read(data_dir)
            .ok()
            .flatten()
            .is_some_and(|held| held.seq > self.seq)
        {
            return Ok(());
        }
        crate::keys::write_atomic(
            &data_dir.join(FILE),
            format!("{}\n", serde_json::to_string(self)?).as_bytes(),
            0o644,
        )
    }

    /// Reads the anchor of `data_dir`, if there is one.
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<Anchor>> {
        match std::fs::read_to_string(data_dir.join(FILE)) {
            Ok(s) => Ok(Some(serde_json::from_str(&s)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
