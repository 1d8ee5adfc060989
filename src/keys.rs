//! Secrets on disk: the signing key pair and the generated admin token. Secret files are written
//! atomically with mode 0600 in a data directory of mode 0700; nothing secret is ever logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::wire::{KeyPair, PublicKey};

/// File name of the secret signing key (hex seed) inside the data directory.
pub const SIGNING_KEY: &str = "signing.key";
/// File name of the public key (hex) inside the data directory; agents pin it.
pub const SIGNING_PUB: &str = "signing.pub";
/// The next signing key, made by `marquee keygen --rotate`; the daemon switches to it at its
/// next start.
pub const SIGNING_NEXT_KEY: &str = "signing.next.key";
/// Its public half: agents accept it (`next_public_key_file`) before the switch.
pub const SIGNING_NEXT_PUB: &str = "signing.next.pub";
/// The key that was replaced by the last rotation (kept, not used).
pub const SIGNING_PREV_KEY: &str = "signing.prev.key";
/// File name of the generated admin API token.
pub const ADMIN_TOKEN: &str = "admin.token";

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(b)
}

/// Writes `content` to `path` atomically (temp file + rename) with the given mode.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A fresh, unpredictable name opened with O_EXCL: a file or symlink planted in a shared
    // directory cannot receive the content.
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(random_bytes::<8>()?)
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates the data directory (mode 0700) if missing.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o044 != 0 {
        anyhow::bail!(
            "{} is readable by group or others (mode {:o}): chmod 600 it (a key or token others can read is not secret)",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// What loading the signing key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// There was none: a new pair was made.
    Created,
    /// The existing key.
    Loaded,
    /// A rotation was prepared (`signing.next.key`): it is the key now, and this was the old
    /// public key (everything current is to be signed again with the new one).
    Rotated(Box<PublicKey>),
}

/// Loads the signing key from the data directory, creating a new pair on first start, or
/// switching to the next key a rotation prepared (the old secret is kept as `signing.prev.key`).
pub fn load_or_create_signing_key(data_dir: &Path) -> anyhow::Result<(KeyPair, KeyOrigin)> {
    let secret = data_dir.join(SIGNING_KEY);
    let next = data_dir.join(SIGNING_NEXT_KEY);
    if secret.exists() && next.exists() {
        let current = KeyPair::from_hex(&read_secret(&secret)?)
            .with_context(|| format!("{}: not a signing key", secret.display()))?;
        let new = KeyPair::from_hex(&read_secret(&next)?)
            .with_context(|| format!("{}: not a signing key", next.display()))?;
        // Idempotent across a crash at any point: when signing.key already is the next key,
        // the switch was made and the old key is signing.prev.key. The prepared files go only
        // when the daemon has signed everything again ([`finish_rotation`]).
        let old = if current.public() == new.public() {
            KeyPair::from_hex(&read_secret(&data_dir.join(SIGNING_PREV_KEY))?)
                .context("signing.prev.key: not a signing key")?
        } else {
            write_atomic(
                &data_dir.join(SIGNING_PREV_KEY),
                format!("{}\n", current.secret_hex()).as_bytes(),
                0o600,
            )?;
            write_key_pair(data_dir, &new)?;
            current
        };
        return Ok((new, KeyOrigin::Rotated(Box::new(old.public().clone()))));
    }
    if secret.exists() {
        let keys = KeyPair::from_hex(&read_secret(&secret)?)
            .with_context(|| format!("{}: not a signing key", secret.display()))?;
        // Keep the public file in step with the secret (it may have been deleted).
        let public = data_dir.join(SIGNING_PUB);
        if fs::read_to_string(&public)
            .map(|s| s.trim().to_owned())
            .ok()
            != Some(keys.public().to_hex())
        {
            write_atomic(
                &public,
                format!("{}\n", keys.public().to_hex()).as_bytes(),
                0o644,
            )?;
        }
        return Ok((keys, KeyOrigin::Loaded));
    }
    let keys = KeyPair::from_seed(random_bytes()?);
    write_key_pair(data_dir, &keys)?;
    Ok((keys, KeyOrigin::Created))
}

/// Ends a rotation once everything current is signed with the new key: the prepared files go.
pub fn finish_rotation(data_dir: &Path) -> anyhow::Result<()> {
    for f in [SIGNING_NEXT_KEY, SIGNING_NEXT_PUB] {
        match fs::remove_file(data_dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {f}")),
        }
    }
    Ok(())
}

/// `marquee keygen --rotate`: prepares the next key pair in the data directory
/// (`signing.next.key`, `signing.next.pub`). Agents are given the public half as
/// `next_public_key_file`; the daemon switches at its next start and signs everything current
/// again with it. Refuses when a rotation is already prepared, unless `force`.
pub fn prepare_rotation(dir: &Path, force: bool) -> anyhow::Result<(PathBuf, PublicKey)> {
    if !dir.join(SIGNING_KEY).exists() {
        bail!(
            "{} has no {SIGNING_KEY} to rotate (point --out at the daemon's data directory)",
            dir.display()
        );
    }
    let next = dir.join(SIGNING_NEXT_KEY);
    if next.exists() && !force {
        bail!(
            "{} exists: a rotation is already prepared (pass --force to prepare another; agents given the first next key would refuse)",
            next.display()
        );
    }
    let keys = KeyPair::from_seed(random_bytes()?);
    write_atomic(&next, format!("{}\n", keys.secret_hex()).as_bytes(), 0o600)?;
    let public = dir.join(SIGNING_NEXT_PUB);
    write_atomic(
        &public,
        format!("{}\n", keys.public().to_hex()).as_bytes(),
        0o644,
    )?;
    Ok((public, keys.public().clone()))
}

fn write_key_pair(dir: &Path, keys: &KeyPair) -> anyhow::Result<()> {
    write_atomic(
        &dir.join(SIGNING_KEY),
        format!("{}\n", keys.secret_hex()).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &dir.join(SIGNING_PUB),
        format!("{}\n", keys.public().to_hex()).as_bytes(),
        0o644,
    )
}

/// `marquee keygen`: writes a new pair into `dir`; refuses to overwrite unless `force`.
pub fn keygen(dir: &Path, force: bool) -> anyhow::Result<(PathBuf, PathBuf, PublicKey)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secret = dir.join(SIGNING_KEY);
    if secret.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it (agents pinned to the old public key will refuse new payloads)",
            secret.display()
        );
    }
    let keys = KeyPair::from_seed(random_bytes()?);
    write_key_pair(dir, &keys)?;
    Ok((secret, dir.join(SIGNING_PUB), keys.public().clone()))
}

/// Loads the admin token, creating one on first start. Returns it and whether it was created.
pub fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join(ADMIN_TOKEN);
    if path.exists() {
        let t = read_secret(&path)?.trim().to_owned();
        if t.len() < 16 {
            bail!("{}: token shorter than 16 characters", path.display());
        }
        return Ok((t, false));
    }
    let token = format!("mq_{}", hex::encode(random_bytes::<24>()?));
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_private_files_and_second_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ensure_data_dir(&data).unwrap();
        let (k1, origin) = load_or_create_signing_key(&data).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        let (k2, origin) = load_or_create_signing_key(&data).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(k1.public(), k2.public());
        let (t1, _) = load_or_create_admin_token(&data).unwrap();
        let (t2, again) = load_or_create_admin_token(&data).unwrap();
        assert_eq!((t1, again), (t2, false));
        for f in [SIGNING_KEY, ADMIN_TOKEN] {
            let mode = fs::metadata(data.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let pubhex = fs::read_to_string(data.join(SIGNING_PUB)).unwrap();
        assert_eq!(PublicKey::from_hex(&pubhex).unwrap(), *k1.public());
    }

    #[test]
    fn a_prepared_rotation_is_taken_at_the_next_load_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        assert!(
            prepare_rotation(data, false).is_err(),
            "nothing to rotate yet"
        );
        let (old, _) = load_or_create_signing_key(data).unwrap();
        let (_, next) = prepare_rotation(data, false).unwrap();
        assert!(prepare_rotation(data, false).is_err(), "already prepared");
        let (new, origin) = load_or_create_signing_key(data).unwrap();
        assert_eq!(origin, KeyOrigin::Rotated(Box::new(old.public().clone())));
        assert_eq!(*new.public(), next);
        let prev = fs::read_to_string(data.join(SIGNING_PREV_KEY)).unwrap();
        assert_eq!(KeyPair::from_hex(&prev).unwrap().public(), old.public());
        // A crash before the rotation finished: the next start finishes the same one.
        let (_, origin) = load_or_create_signing_key(data).unwrap();
        assert_eq!(origin, KeyOrigin::Rotated(Box::new(old.public().clone())));
        finish_rotation(data).unwrap();
        let (again, origin) = load_or_create_signing_key(data).unwrap();
        assert_eq!((origin, again.public()), (KeyOrigin::Loaded, &next));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_signing_key(dir.path()).unwrap();
        let key = dir.path().join(SIGNING_KEY);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let Err(e) = load_or_create_signing_key(dir.path()) else {
            panic!("a key others can read was accepted")
        };
        assert!(
            format!("{e:#}").contains("readable by group or others (mode 644): chmod 600"),
            "{e:#}"
        );
    }

    #[test]
    fn keygen_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), false).unwrap();
        assert!(keygen(dir.path(), false).is_err());
        keygen(dir.path(), true).unwrap();
    }
}
