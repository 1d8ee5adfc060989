//! Watching the playlists directory: every change pokes the scheduler's reload channel, saying
//! whether a file is still being written (the scheduler then waits for quiet, up to its
//! debounce, so a half-written file is never read).

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::Reload;
use crate::config::Config;

/// Watches the playlists directory; every change pokes `reload` with whether a file is still
/// being written (the scheduler waits for quiet accordingly).
pub fn watch_playlists(
    cfg: &Config,
    reload: mpsc::Sender<Reload>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = cfg.schedule.playlists_dir.clone();
    let mut writes = Writes::default();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(e) = ev
            && let Some(hint) = writes.note(&e)
        {
            let _ = reload.try_send(hint);
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch playlist files; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot watch the playlists directory; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}

/// The files in the playlists directory that were created or written to and not yet closed.
/// A file closed after writing, renamed into place or removed is complete; a file only ever
/// written (a platform that reports no close, a writer that keeps it open) keeps the full
/// debounce.
#[derive(Default)]
struct Writes {
    open: std::collections::HashSet<PathBuf>,
}

impl Writes {
    /// Takes one watch event; says what it asks of the scheduler (nothing for reads and opens).
    fn note(&mut self, e: &notify::Event) -> Option<Reload> {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &e.paths {
                    self.open.remove(p);
                }
            }
            EventKind::Access(_) => return None,
            EventKind::Create(CreateKind::Folder) => {}
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                self.open.extend(e.paths.iter().cloned());
            }
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                for p in &e.paths {
                    self.open.remove(p);
                }
            }
            _ => {}
        }
        Some(if self.open.is_empty() {
            Reload::Complete
        } else {
            Reload::Writing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode,
    };

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    }

    #[test]
    fn a_file_is_complete_when_closed_renamed_or_removed() {
        let mut w = Writes::default();
        let create = EventKind::Create(CreateKind::File);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        // In place: created, written, closed.
        assert_eq!(w.note(&ev(create, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(w.note(&ev(write, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(
            w.note(&ev(
                EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any)),
                &["/p/a.json"]
            )),
            None
        );
        assert_eq!(w.note(&ev(close, &["/p/a.json"])), Some(Reload::Complete));
        // Two writers: one closing leaves the other in progress.
        w.note(&ev(write, &["/p/a.json"]));
        w.note(&ev(write, &["/p/b.json"]));
        assert_eq!(w.note(&ev(close, &["/p/a.json"])), Some(Reload::Writing));
        assert_eq!(w.note(&ev(close, &["/p/b.json"])), Some(Reload::Complete));
        // Atomic save: a temporary file written, then renamed over the playlist.
        w.note(&ev(create, &["/p/.a.json.tmp"]));
        assert_eq!(
            w.note(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/p/.a.json.tmp", "/p/a.json"]
            )),
            Some(Reload::Complete)
        );
        // Removed while written; a new directory is nothing to wait for.
        w.note(&ev(write, &["/p/c.json"]));
        assert_eq!(
            w.note(&ev(
                EventKind::Remove(notify::event::RemoveKind::File),
                &["/p/c.json"]
            )),
            Some(Reload::Complete)
        );
        assert_eq!(
            w.note(&ev(EventKind::Create(CreateKind::Folder), &["/p/sub"])),
            Some(Reload::Complete)
        );
    }
}
