//! `marquee audit verify`: checks the audit log's hash chain and its signed anchor, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::ConfigArg;
use crate::config::Config;

/// Arguments of `marquee audit`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

/// The actions of `marquee audit`.
#[derive(Subcommand)]
pub enum Action {
    /// Check the hash chain of the audit log in the daemon's database (offline); exit 1 if broken.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Data directory (overrides server.data_dir).
        #[arg(long, env = "MARQUEE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Runs `marquee audit verify`: 0 when the chain is intact, 1 when it is not.
pub fn run(a: Args) -> ExitCode {
    let Action::Verify { config, data_dir } = a.action;
    match audit_verify(&config.path, data_dir.as_deref()) {
        Ok((msg, true)) => super::print_out(&msg),
        Ok((msg, false)) => {
            eprint!("{msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("marquee audit verify: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `marquee audit verify`: checks the hash chain in the daemon's database (offline). Returns the
/// message and whether the chain is intact.
pub fn audit_verify(config: &Path, data_dir: Option<&Path>) -> anyhow::Result<(String, bool)> {
    let cfg = Config::load(config)?;
    // The engine is the config's; the data directory only holds the anchor and the keys.
    let (store, name) = match &cfg.store {
        crate::config::StoreConfig::Postgres { url, .. } => (
            crate::store::Store::connect_configured(&cfg.store)
                .with_context(|| format!("cannot open the PostgreSQL store {url}"))?,
            url.clone(),
        ),
        crate::config::StoreConfig::Sqlite => {
            let db = data_dir.unwrap_or(&cfg.data_dir).join("marquee.db");
            if !db.exists() {
                anyhow::bail!(
                    "{} does not exist (has the daemon run with this config?)",
                    db.display()
                );
            }
            let store = crate::store::Store::open(&db)
                .with_context(|| format!("cannot open {}", db.display()))?;
            (store, db.display().to_string())
        }
    };
    let dir = data_dir.unwrap_or(&cfg.data_dir);
    Ok(match store.verify_audit()? {
        Ok(n) => match anchored(&store, dir, n)? {
            Ok(note) => (
                format!(
                    "ok: the audit log of {} is intact ({n} entries){note}\n",
                    name
                ),
                true,
            ),
            Err(why) => (format!("TAMPERED: {}: {why}\n", name), false),
        },
        Err(b) => (
            format!("TAMPERED: {}: audit entry {}: {}\n", name, b.seq, b.reason),
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
