//! The leader lease (PostgreSQL only): one row holding which node leads, its epoch and when its
//! lease ends, by the database server's clock. A node takes the lease only once it has ended
//! (each taking raises the epoch), renews it while it leads, and gives it back when it stops.
//! While a node leads, every transaction of its writer connections first checks that the lease
//! is still its own ([`Store::lead`]), holding the row so that no other node can take it before
//! that transaction ends: a leader frozen past its lease writes nothing when it wakes up.

use super::db::Connection;
use super::{Store, StoreError, lock};
use crate::store::db::{OptionalExtension, params};

/// Who holds the lease, as the database sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// The node's name (`[store] node`).
    pub node: String,
    /// Its epoch: raised each time the lease changes hands.
    pub epoch: i64,
    /// Seconds until its lease ends (negative: ended that long ago).
    pub remaining_s: f64,
}

/// The check each transaction of a leading node's writers begins with (a `DO` block, so that it
/// rides in the same round trip as `BEGIN`).
fn fence_sql(node: &str, epoch: i64) -> String {
    let node = node.replace('\'', "''");
    format!(
        "DO $fence$ BEGIN
            PERFORM 1 FROM leader WHERE id = 1 AND node = '{node}' AND epoch = {epoch}
                AND expires_at > now() FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'not the leader: the lease of node {node} epoch {epoch} has ended';
            END IF;
        END $fence$"
    )
}

impl Store {
    fn lease_conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        match &self.lease {
            Some(c) => Ok(lock(c)),
            None => Err(StoreError::Config(
                "the leader lease needs the PostgreSQL store".into(),
            )),
        }
    }

    /// Takes the lease for `node` for `ttl` when nobody holds it or its holder's lease has
    /// ended; answers the new epoch, or `None` while another node's lease runs.
    pub fn try_lead(
        &self,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let conn = self.lease_conn()?;
        Ok(conn
            .query_row(
                "INSERT INTO leader (id, node, epoch, expires_at)
                 VALUES (1, ?1, 1, now() + make_interval(secs => ?2))
                 ON CONFLICT (id) DO UPDATE SET node = excluded.node, epoch = leader.epoch + 1,
                     expires_at = excluded.expires_at
                 WHERE leader.expires_at <= now()
                 RETURNING epoch",
                params![node, ttl.as_secs_f64()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Extends the lease of `node` at `epoch` to `ttl` from now; `false` when it is no longer
    /// that node's (it ended, or another node took it).
    pub fn renew_lead(
        &self,
        node: &str,
        epoch: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let conn = self.lease_conn()?;
        Ok(conn.execute(
            "UPDATE leader SET expires_at = now() + make_interval(secs => ?3)
             WHERE id = 1 AND node = ?1 AND epoch = ?2 AND expires_at > now()",
            params![node, epoch, ttl.as_secs_f64()],
        )? == 1)
    }

    /// Ends the lease of `node` at `epoch` now (a clean stop), so a standby takes over at once.
    pub fn resign_lead(&self, node: &str, epoch: i64) -> Result<(), StoreError> {
        let conn = self.lease_conn()?;
        conn.execute(
            "UPDATE leader SET expires_at = now() WHERE id = 1 AND node = ?1 AND epoch = ?2",
            params![node, epoch],
        )?;
        Ok(())
    }

    /// Who holds (or last held) the lease.
    pub fn leader(&self) -> Result<Option<Holder>, StoreError> {
        let conn = self.lease_conn()?;
        Ok(conn
            .query_row(
                "SELECT node, epoch, CAST(EXTRACT(EPOCH FROM expires_at - now()) AS DOUBLE PRECISION)
                 FROM leader WHERE id = 1",
                [],
                |r| {
                    Ok(Holder {
                        node: r.get(0)?,
                        epoch: r.get(1)?,
                        remaining_s: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// From now on every transaction of this store's writers checks that `node` still holds
    /// the lease at `epoch`, and fails ("not the leader") when it does not.
    pub fn lead(&self, node: &str, epoch: i64) {
        let fence = fence_sql(node, epoch);
        for c in [Some(&self.conn), self.sms.as_ref()].into_iter().flatten() {
            lock(c).set_fence(Some(fence.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On PostgreSQL (the suite's second pass): the lease changes hands only once it has ended,
    /// each time with a higher epoch, and a node that lost it can write nothing.
    #[test]
    fn the_lease_passes_only_when_it_ends_and_fences_the_old_leader() {
        let a = Store::memory().unwrap();
        if !a.is_postgres() {
            return;
        }
        let b = a.same_database().unwrap();
        let e1 = a.try_lead("a", Duration::from_secs(30)).unwrap().unwrap();
        a.lead("a", e1);
        assert_eq!(b.try_lead("b", Duration::from_secs(30)).unwrap(), None);
        assert!(a.renew_lead("a", e1, Duration::from_millis(200)).unwrap());
        a.set_good_playlists(&[("p".into(), "1".into())]).unwrap();
        // A's lease ends (as if it froze); B takes it with a higher epoch.
        let e2 = loop {
            if let Some(e) = b.try_lead("b", Duration::from_secs(30)).unwrap() {
                break e;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(e2 > e1);
        assert!(!a.renew_lead("a", e1, Duration::from_secs(30)).unwrap());
        let e = a
            .set_good_playlists(&[("p".into(), "2".into())])
            .unwrap_err();
        assert!(e.to_string().contains("not the leader"), "{e}");
        assert_eq!(b.good_playlists().unwrap(), vec![("p".into(), "1".into())]);
        let holder = b.leader().unwrap().unwrap();
        assert_eq!((holder.node.as_str(), holder.epoch), ("b", e2));
        // A clean stop hands it over at once.
        b.resign_lead("b", e2).unwrap();
        assert!(a.try_lead("a", Duration::from_secs(30)).unwrap().is_some());
    }
}
