//! Group commit for SMS claims on SQLite: a claim commits without a disk sync of its own
//! (`synchronous = NORMAL` for its transaction; every other write of the SMS connection keeps
//! `FULL`), and a thread of its own syncs the write-ahead log (`fdatasync`) behind it; the
//! claim's requests leave only once the log is synced past its commit.
//!
//! Why: the sync took about 0.5 ms of each claim's 1.6 ms, during which the dispatcher could
//! claim nothing (SQLite has one writer, and a `FULL` commit holds the write lock through its
//! sync). Now the next claim's statements run while the last one's sync is under way, and one
//! sync covers every commit before it (the log is written in order).
//!
//! Why this is as durable as `synchronous = FULL` for what it guards: in WAL mode a commit is
//! its frames appended to the log, the last one marked as a commit (sqlite.org/wal.html,
//! "WAL file format"); `FULL` syncs the log after writing them, `NORMAL` leaves that to the
//! next checkpoint, and a power cut before it may lose the transaction but never corrupts the
//! database (sqlite.org/pragma.html#pragma_synchronous). Syncing the same file ourselves
//! after the commit is that same sync, done later and on another descriptor (`fdatasync`
//! flushes the file, whichever descriptor asks: man 2 fsync). Nothing is sent before it
//! returns, so a claim a power cut loses was never sent. The log is the file SQLite writes:
//! named after the database file it resolved (`sqlite3_db_filename`, a symbolic link's
//! target), and checked before each sync to be the file this thread opened (same device and
//! inode). Its directory is synced once when the file is first opened here, so that the log
//! itself survives (SQLite syncs it at its own first sync of a new log, which under `NORMAL`
//! may come later). Checkpoints need nothing more: one syncs the log before it copies frames
//! into the database and the database before the log may restart (sqlite.org/wal.html).
//!
//! A failed sync is for good: an `fdatasync` error is reported once, the kernel may have
//! dropped the pages it could not write, and a later sync on another descriptor can succeed
//! without them (man 2 fsync, "errors"; PostgreSQL stops on it for the same reason). So every
//! claim waiting fails (its messages are not sent but queued again: the dispatcher's
//! `unsent`), the thread ends, and nothing more is claimed ([`WalSync::broken`]) until the
//! daemon is restarted (after the disk is looked at); SQLite's own recovery then reads the log
//! as far as its checksums hold.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// Where the log stands: the last claim synced (tickets count claims from 1; 0 is
/// "nothing"), and whether a sync failed or the thread ended (for good: no later ticket will
/// be synced).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub synced: u64,
    pub broken: bool,
}

impl Synced {
    /// `Some(true)`: `ticket` is on disk (a sync past it succeeded, before any failure);
    /// `Some(false)`: it never will be; `None`: not yet.
    pub fn of(&self, ticket: u64) -> Option<bool> {
        if ticket <= self.synced {
            Some(true)
        } else if self.broken {
            Some(false)
        } else {
            None
        }
    }
}

struct State {
    /// The last ticket handed out (its claim committed).
    committed: u64,
    at: Synced,
    stop: bool,
}

/// The log of one SQLite database and the thread that syncs it.
pub struct WalSync {
    state: Mutex<State>,
    /// Wakes the thread (a new commit, stop) and the blocking waiters (a sync done).
    cv: Condvar,
    /// Where async waiters learn of syncs.
    tx: tokio::sync::watch::Sender<Synced>,
}

impl WalSync {
    /// Starts the thread that syncs `wal` (the database's `-wal` file) whenever a claim waits.
    pub fn start(wal: PathBuf) -> std::io::Result<Arc<WalSync>> {
        let w = Arc::new(WalSync {
            state: Mutex::new(State {
                committed: 0,
                at: Synced::default(),
                stop: false,
            }),
            cv: Condvar::new(),
            tx: tokio::sync::watch::channel(Synced::default()).0,
        });
        let me = w.clone();
        std::thread::Builder::new()
            .name("marquee-walsync".into())
            .spawn(move || me.run(&wal))?;
        Ok(w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A claim just committed (called with the SMS connection still held, so that tickets
    /// follow the commits' order): its ticket.
    pub fn committed(&self) -> u64 {
        let mut s = self.lock();
        s.committed += 1;
        let t = s.committed;
        drop(s);
        self.cv.notify_all();
        t
    }

    /// Where the log stands, for async waiters.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Synced> {
        self.tx.subscribe()
    }

    /// Blocks until `ticket` is on disk (`Ok`) or its sync failed (`Err`).
    pub fn wait(&self, ticket: u64) -> std::io::Result<()> {
        let mut s = self.lock();
        loop {
            match s.at.of(ticket) {
                Some(true) => return Ok(()),
                Some(false) => return Err(failed()),
                None if s.stop => return Err(std::io::Error::other("the store is closing")),
                None => s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Stops the thread (the store is dropped); waiters not yet served get an error.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// Whether a sync failed (or the thread ended): nothing is on disk on this thread's word
    /// any more.
    pub fn broken(&self) -> bool {
        self.lock().at.broken
    }

    fn run(&self, wal: &std::path::Path) {
        /// However the thread ends (a failed sync, stop, a panic), every waiter is answered:
        /// none is on disk on its word any more.
        struct Ended<'a>(&'a WalSync);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                let mut s = self.0.lock();
                s.at.broken = true;
                let at = s.at;
                drop(s);
                self.0.tx.send_replace(at);
                self.0.cv.notify_all();
            }
        }
        let _ended = Ended(self);
        let mut file: Option<std::fs::File> = None;
        loop {
            let target = {
                let mut s = self.lock();
                while !s.stop && s.committed == s.at.synced {
                    s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.stop {
                    return;
                }
                s.committed
            };
            if let Err(e) = sync(&mut file, wal) {
                tracing::error!(file = %wal.display(), error = %e, "cannot sync the SMS claims to disk: none of their messages is sent (they are queued again), and no more are claimed until the daemon is restarted; look at the disk");
                return;
            }
            let mut s = self.lock();
            s.at.synced = target;
            let at = s.at;
            drop(s);
            self.tx.send_replace(at);
            self.cv.notify_all();
        }
    }
}

/// What a claim whose sync failed answers.
pub fn failed() -> std::io::Error {
    std::io::Error::other("the write-ahead log could not be synced to disk")
}

/// What a claim answers once a sync has failed ([`WalSync::broken`]).
pub fn broken() -> std::io::Error {
    std::io::Error::other(
        "a sync of the write-ahead log to disk failed earlier: no SMS is claimed until the daemon is restarted (look at the disk first)",
    )
}

/// `fdatasync` of the log, opening it (and syncing its directory) first when needed; fails
/// when the log at `wal` is no longer the file opened (then what was synced is not SQLite's).
fn sync(file: &mut Option<std::fs::File>, wal: &std::path::Path) -> std::io::Result<()> {
    if let Some(f) = file {
        use std::os::unix::fs::MetadataExt;
        let (now, open) = (std::fs::metadata(wal)?, f.metadata()?);
        if (now.dev(), now.ino()) != (open.dev(), open.ino()) {
            return Err(std::io::Error::other(format!(
                "{} was replaced by another file",
                wal.display()
            )));
        }
    } else {
        let f = std::fs::File::open(wal)?;
        if let Some(dir) = wal.parent() {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)?.sync_all()?;
        }
        *file = Some(f);
    }
    file.as_ref().map_or(Ok(()), std::fs::File::sync_data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket is on disk once a sync past it is done; past the last sync, it never will be
    /// once a sync failed, else not yet.
    #[test]
    fn a_ticket_is_durable_after_its_sync_and_never_after_a_failed_one() {
        let ok = Synced {
            synced: 7,
            broken: false,
        };
        assert_eq!(ok.of(3), Some(true));
        assert_eq!(ok.of(7), Some(true));
        assert_eq!(ok.of(8), None);
        let broken = Synced {
            synced: 7,
            broken: true,
        };
        assert_eq!(broken.of(7), Some(true));
        assert_eq!(broken.of(8), Some(false));
        assert_eq!(broken.of(100), Some(false));
        assert_eq!(Synced::default().of(1), None);
    }

    /// The thread syncs what was committed, waiters are served in any order; a log replaced
    /// by another file (or missing) fails the tickets waiting and every later one, for good.
    #[test]
    fn claims_wait_for_the_thread_to_sync_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let w = WalSync::start(wal.clone()).unwrap();
        let (a, b) = (w.committed(), w.committed());
        assert_eq!((a, b), (1, 2));
        w.wait(b).unwrap();
        w.wait(a).unwrap();
        let mut rx = w.watch();
        assert!(rx.borrow_and_update().synced >= 2);
        assert!(!w.broken());
        // Another file at the log's name (renamed over it: the old one is still open here, so
        // its inode is not reused).
        let other = dir.path().join("other");
        std::fs::write(&other, b"frames").unwrap();
        std::fs::rename(&other, &wal).unwrap();
        let c = w.committed();
        assert!(w.wait(c).is_err());
        assert!(w.broken());
        assert_eq!(rx.borrow_and_update().of(c), Some(false));
        let d = w.committed();
        assert!(w.wait(d).is_err(), "a failure is for good");

        let gone = WalSync::start(dir.path().join("none-wal")).unwrap();
        let t = gone.committed();
        assert!(gone.wait(t).is_err());
        assert!(gone.broken());

        let stopped = WalSync::start(wal).unwrap();
        stopped.stop();
        let t = stopped.committed();
        assert!(stopped.wait(t).is_err());
    }
}
