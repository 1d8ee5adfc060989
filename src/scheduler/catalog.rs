//! The playlist catalog: the playlists directory as last loaded. A file that fails validation keeps
//! its previous good version live (and its errors are reported); a new broken file is simply not
//! live; a deleted file is gone. This is the only place that reads playlist files.
//!
//! A reload parses only the files whose bytes changed (by SHA-256), and reads only those whose
//! inode, size, modification or change time differ from when they were last read (or that had
//! changed less than [`SETTLED`] before: a change within the file system's timestamp
//! granularity could otherwise go unseen). [`Catalog::changed`] tells which files a reload
//! changed, and the scheduler resolves only the targets those can affect.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::domain::{Playlist, PlaylistError, ValidationContext};

/// One playlist file's state.
#[derive(Debug, Clone)]
pub struct FileState {
    /// The live version: the newest that validated, with its source text.
    pub good: Option<(Playlist, String)>,
    /// Problems of the file as it is now on disk (empty when it validated).
    pub errors: Vec<PlaylistError>,
    /// SHA-256 of the bytes this state was read from; `None` when the file could not be read
    /// (it is read and parsed again next time).
    pub digest: Option<[u8; 32]>,
    /// The file's metadata when it was read, if it had not changed for [`SETTLED`] then: while
    /// the file still has it, it is not read again.
    pub stamp: Option<Stamp>,
}

/// What identifies a file's content without reading it: device, inode, size, modification
/// and change times (the change time moves on every write, rename or `touch`).
pub type Stamp = (u64, u64, u64, i64, i64, i64, i64);

/// How long a file must have been left alone before its [`Stamp`] is trusted: longer than any
/// file system's timestamp granularity (ext4 and XFS use the kernel's clock tick).
pub const SETTLED: Duration = Duration::from_secs(2);

/// The stamp of a file with metadata `m`, if it can be trusted at `now` (see [`SETTLED`]).
fn settled_stamp(m: &std::fs::Metadata, now: SystemTime) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(
            m.ctime().max(0) as u64,
            m.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    let settled = now.duration_since(changed).is_ok_and(|age| age >= SETTLED);
    settled.then(|| {
        (
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    })
}

/// All playlist files.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// By file path.
    pub files: BTreeMap<PathBuf, Arc<FileState>>,
}

impl Catalog {
    /// Loads `dir`, keeping from `previous` the good version of every file that no longer
    /// validates. A file whose stamp or bytes are those `previous` read keeps its state (not
    /// parsed again).
    pub fn load(
        dir: &Path,
        ctx: &ValidationContext,
        previous: Option<&Catalog>,
        trust: Trust,
    ) -> Result<Catalog, std::io::Error> {
        // Before the scan: a file's age is measured against when it was looked at, at most.
        let now = SystemTime::now();
        // Each file looked at once (`stat`, relative to the directory; a symbolic link is
        // followed), for what it is and for its stamp.
        let mut entries: Vec<(std::ffi::OsString, PathBuf, std::fs::Metadata)> =
            std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .filter(|e| is_playlist_name(&e.file_name()))
                .filter_map(|e| {
                    let path = e.path();
                    let meta = match e.metadata() {
                        Ok(m) if m.is_symlink() => std::fs::metadata(&path).ok()?,
                        Ok(m) => m,
                        Err(_) => return None,
                    };
                    meta.is_file().then(|| (e.file_name(), path, meta))
                })
                .collect();
        // One directory: by file name is the paths' order.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // The same file: the same path (a stored seed from another playlists_dir is not it).
        // Both sides are in one directory's name order, so they are walked together: one
        // comparison of bytes per file instead of a map lookup (`Path` compares component by
        // component, which a thousand lookups per reload made a tenth of its time).
        let mut before = previous.map(|c| c.files.iter().peekable());
        let files = entries
            .into_iter()
            .map(|(_, path, meta)| {
                let key = path.as_os_str().as_bytes();
                let prev = before.as_mut().and_then(|it| {
                    while it
                        .peek()
                        .is_some_and(|(p, _)| p.as_os_str().as_bytes() < key)
                    {
                        it.next();
                    }
                    it.next_if(|(p, _)| p.as_os_str().as_bytes() == key)
                        .map(|(_, s)| s)
                });
                let stamp = match trust {
                    Trust::Stamps => settled_stamp(&meta, now),
                    Trust::Nothing => None,
                };
                let state = read_file(&path, stamp, ctx, prev);
                (path, state)
            })
            .collect();
        Ok(Catalog { files })
    }

    /// The files whose content differs between `before` and `self`: added, removed, or read
    /// with other bytes (or unreadable on one side only). Both maps are walked together in
    /// order; a file read again shares its state with `before` when unchanged.
    pub fn changed(&self, before: &Catalog) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let (mut a, mut b) = (self.files.iter().peekable(), before.files.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some((pa, sa)), Some((pb, sb))) if pa.as_os_str() == pb.as_os_str() => {
                    if !Arc::ptr_eq(sa, sb) && sa.digest != sb.digest {
                        out.insert((*pa).clone());
                    }
                    a.next();
                    b.next();
                }
                (Some((pa, _)), Some((pb, _))) if pa < pb => {
                    out.insert((*pa).clone());
                    a.next();
                }
                (_, Some((pb, _))) => {
                    out.insert((*pb).clone());
                    b.next();
                }
                (Some((pa, _)), None) => {
                    out.insert((*pa).clone());
                    a.next();
                }
                (None, None) => return out,
            }
        }
    }

    /// A catalog of known-good sources (as stored by the daemon), re-validated against `ctx`;
    /// sources that no longer validate (the configuration changed) are left out.
    pub fn from_sources(sources: &[(String, String)], ctx: &ValidationContext) -> Catalog {
        let files = sources
            .iter()
            .filter_map(|(path, src)| {
                let path = PathBuf::from(path);
                let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
                let p =
                    Playlist::parse(&path.display().to_string(), stem.as_deref(), src, ctx).ok()?;
                let state = FileState {
                    good: Some((p, src.clone())),
                    errors: Vec::new(),
                    // As if read from a file holding exactly the source: an unchanged file is
                    // not parsed again at start.
                    digest: Some(Sha256::digest(src.as_bytes()).into()),
                    stamp: None,
                };
                Some((path, Arc::new(state)))
            })
            .collect();
        Catalog { files }
    }

    /// The good sources, by path (what [`Catalog::from_sources`] takes back).
    pub fn good_sources(&self) -> Vec<(String, String)> {
        self.files
            .iter()
            .filter_map(|(path, s)| {
                s.good
                    .as_ref()
                    .map(|(_, src)| (path.display().to_string(), src.clone()))
            })
            .collect()
    }

    /// The live playlists, in file order, borrowed.
    pub fn live(&self) -> impl Iterator<Item = &Playlist> + Clone {
        self.files
            .values()
            .filter_map(|s| s.good.as_ref().map(|(p, _)| p))
    }

    /// The live playlists.
    pub fn playlists(&self) -> Vec<Playlist> {
        self.files
            .values()
            .filter_map(|s| s.good.as_ref().map(|(p, _)| p.clone()))
            .collect()
    }

    /// Every current problem.
    pub fn errors(&self) -> impl Iterator<Item = &PlaylistError> {
        self.files.values().flat_map(|s| s.errors.iter())
    }

    /// A live playlist by id, with its file and source.
    pub fn get(&self, id: &str) -> Option<(&Path, &Playlist, &str, &[PlaylistError])> {
        self.files.iter().find_map(|(path, s)| {
            s.good
                .as_ref()
                .filter(|(p, _)| p.id == id)
                .map(|(p, src)| (path.as_path(), p, src.as_str(), s.errors.as_slice()))
        })
    }
}

/// Which files a load may take as unchanged without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Those whose settled stamp is the one they were read with.
    Stamps,
    /// None: every file is read (SIGHUP; a network file system may serve old attributes).
    Nothing,
}

/// `path`'s state: `before`'s when its stamp or bytes are the same, else read and parsed.
fn read_file(
    path: &Path,
    stamp: Option<Stamp>,
    ctx: &ValidationContext,
    before: Option<&Arc<FileState>>,
) -> Arc<FileState> {
    if let Some(b) = before
        && stamp.is_some()
        && b.stamp == stamp
    {
        return b.clone();
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            match before.filter(|b| b.digest == Some(digest)) {
                Some(same) if same.stamp == stamp => same.clone(),
                Some(same) => Arc::new(FileState {
                    stamp,
                    ..FileState::clone(same)
                }),
                None => Arc::new(read_state(path, &bytes, digest, stamp, ctx, before)),
            }
        }
        Err(e) => Arc::new(FileState {
            good: before.and_then(|s| s.good.clone()),
            errors: vec![PlaylistError {
                file: path.display().to_string(),
                line: 1,
                column: 1,
                message: format!("cannot read: {e}"),
                pointer: None,
            }],
            digest: None,
            stamp: None,
        }),
    }
}

/// The state of a file read as `bytes`: parsed and validated; when it fails, the good version
/// of `before` stays live.
fn read_state(
    path: &Path,
    bytes: &[u8],
    digest: [u8; 32],
    stamp: Option<Stamp>,
    ctx: &ValidationContext,
    before: Option<&Arc<FileState>>,
) -> FileState {
    let label = path.display().to_string();
    let stem = path.file_stem().and_then(|s| s.to_str());
    let parsed = crate::domain::playlist::source_text(&label, bytes)
        .map_err(|e| vec![e])
        .and_then(|src| Playlist::parse(&label, stem, src, ctx).map(|p| (p, src.to_owned())));
    match parsed {
        Ok(good) => FileState {
            good: Some(good),
            errors: Vec::new(),
            digest: Some(digest),
            stamp,
        },
        Err(errors) => FileState {
            good: before.and_then(|s| s.good.clone()),
            errors,
            digest: Some(digest),
            stamp,
        },
    }
}

/// `*.json`, not hidden (editors' temp and swap files are skipped).
fn is_playlist_name(name: &OsStr) -> bool {
    let name = name.to_str().unwrap_or("");
    name.ends_with(".json") && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ValidationContext {
        ValidationContext {
            channels: vec!["lobby".into()],
            displays: Default::default(),
            timezone: chrono_tz::UTC,
        }
    }

    fn source(id: &str, text: &str) -> String {
        format!(
            r#"{{"id": "{id}", "targets": {{"channels": ["lobby"]}},
                "schedule": [{{"start": "08:00", "end": "18:00"}}],
                "items": [{{"id": "a", "text": {{"en": "{text}"}}}}]}}"#
        )
    }

    #[test]
    fn a_stamp_is_trusted_only_once_the_file_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, source("a", "one")).unwrap();
        let now = SystemTime::now();
        let meta = |f: &Path| std::fs::metadata(f).unwrap();
        // Just written: a second write within the same clock tick could keep every field.
        assert_eq!(settled_stamp(&meta(&file), now), None);
        let later = settled_stamp(&meta(&file), now + SETTLED + Duration::from_millis(50)).unwrap();
        let len = source("a", "one").len() as u64;
        assert_eq!(later.2, len);
        // Rewritten: another inode (an atomic save) or other times; never the same stamp.
        let tmp = dir.path().join(".a.json.tmp");
        std::fs::write(&tmp, source("a", "two")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let after = settled_stamp(&meta(&file), now + SETTLED * 2).unwrap();
        assert_ne!(after, later);
    }

    #[test]
    fn a_reload_parses_only_what_changed_and_says_what_did() {
        let dir = tempfile::tempdir().unwrap();
        let file = |id: &str| dir.path().join(format!("{id}.json"));
        for id in ["a", "b", "c"] {
            std::fs::write(file(id), source(id, "one")).unwrap();
        }
        let first = Catalog::load(dir.path(), &ctx(), None, Trust::Stamps).unwrap();
        assert_eq!(first.changed(&Catalog::default()).len(), 3);
        // Nothing written: every state is the one read before (not parsed again).
        let again = Catalog::load(dir.path(), &ctx(), Some(&first), Trust::Stamps).unwrap();
        assert!(again.changed(&first).is_empty());
        assert!(
            again
                .files
                .iter()
                .all(|(p, s)| Arc::ptr_eq(s, &first.files[p]))
        );
        // The same bytes written again are no change; other bytes, a removal, a new file are.
        std::fs::write(file("a"), source("a", "one")).unwrap();
        std::fs::write(file("b"), source("b", "two")).unwrap();
        std::fs::remove_file(file("c")).unwrap();
        std::fs::write(file("d"), source("d", "one")).unwrap();
        let next = Catalog::load(dir.path(), &ctx(), Some(&again), Trust::Stamps).unwrap();
        let changed: Vec<PathBuf> = next.changed(&again).into_iter().collect();
        assert_eq!(changed, vec![file("b"), file("c"), file("d")]);
        assert!(Arc::ptr_eq(
            &next.files[&file("a")],
            &again.files[&file("a")]
        ));
        // A broken save changes the file's state (its errors) and keeps its good version live.
        std::fs::write(file("b"), "{").unwrap();
        let broken = Catalog::load(dir.path(), &ctx(), Some(&next), Trust::Stamps).unwrap();
        assert_eq!(broken.changed(&next).len(), 1);
        let b = &broken.files[&file("b")];
        assert!(!b.errors.is_empty());
        assert_eq!(b.good.as_ref().unwrap().1, source("b", "two"));
        // Seeded from stored sources: a file holding exactly that source is not parsed again.
        let seed = Catalog::from_sources(&next.good_sources(), &ctx());
        let start = Catalog::load(dir.path(), &ctx(), Some(&seed), Trust::Stamps).unwrap();
        let changed: Vec<PathBuf> = start.changed(&seed).into_iter().collect();
        assert_eq!(changed, vec![file("b")], "only the broken one differs");
        // A seed stored for another playlists directory is not these files' past: a broken
        // file here does not take the other directory's version.
        let other = tempfile::tempdir().unwrap();
        let elsewhere: Vec<(String, String)> = next
            .good_sources()
            .into_iter()
            .map(|(p, src)| {
                let name = PathBuf::from(&p).file_name().unwrap().to_owned();
                (other.path().join(name).display().to_string(), src)
            })
            .collect();
        let foreign = Catalog::from_sources(&elsewhere, &ctx());
        let here = Catalog::load(dir.path(), &ctx(), Some(&foreign), Trust::Stamps).unwrap();
        assert!(here.files[&file("b")].good.is_none());
        // SIGHUP trusts no stamp: every file is read (the same bytes keep their state).
        let all = Catalog::load(dir.path(), &ctx(), Some(&broken), Trust::Nothing).unwrap();
        assert!(all.changed(&broken).is_empty());
    }
}
