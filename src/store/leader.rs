//! The leader lease (PostgreSQL only): which node leads at which epoch (`leader`), and when
//! its lease ends by the database server's clock (`leader_expiry`, a row of its own so that
//! renewing never waits for the leader's writers). A node takes the lease only once it has
//! ended (each taking raises the epoch), renews it while it leads, and gives it back when it
//! stops. While a node leads, every write of its writer connections first checks that the
//! lease is still its own ([`Store::lead`]) and holds the `leader` row (`FOR SHARE`) until it
//! commits; taking the lease locks that row (`FOR UPDATE`), so no node takes over while the old
//! leader's write is under way, and a leader frozen past its lease writes nothing when it wakes.

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

/// Whether `node` is a name the lease takes: letters, digits, `.`, `_`, `-` (it is written
/// into the fence's SQL).
pub fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The check each write of a leading node's writers begins with (a `DO` block, so that it
/// rides in the same round trip as `BEGIN`).
fn fence_sql(node: &str, epoch: i64) -> String {
    debug_assert!(valid_node(node));
    format!(
        "DO $fence$ BEGIN
            PERFORM 1 FROM leader WHERE id = 1 AND node = '{node}' AND epoch = {epoch} FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'not the leader: node {node} epoch {epoch} was succeeded';
            END IF;
            PERFORM 1 FROM leader_expiry WHERE id = 1 AND expires_at > clock_timestamp();
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
    /// ended; answers the new epoch, or `None` while another node's lease runs (or while the
    /// old leader's write still holds the lease row: the lease connection's `lock_timeout`).
    pub fn try_lead(
        &self,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        if !valid_node(node) {
            return Err(StoreError::Config(format!(
                "node {node:?} is not a valid name"
            )));
        }
        let mut conn = self.lease_conn()?;
        conn.execute_batch(
            "INSERT INTO leader (id, node, epoch) VALUES (1, '', 0) ON CONFLICT DO NOTHING;
             INSERT INTO leader_expiry (id, expires_at) VALUES (1, '-infinity') ON CONFLICT DO NOTHING",
        )?;
        let tx = conn.transaction()?;
        // The lease row first: waits for the old leader's writes in flight (FOR SHARE).
        let epoch: i64 = match tx.query_row(
            "SELECT epoch FROM leader WHERE id = 1 FOR UPDATE",
            [],
            |r| r.get(0),
        ) {
            Ok(e) => e,
            Err(e) if e.is_lock_timeout() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let ended: bool = tx.query_row(
            "SELECT expires_at <= clock_timestamp() FROM leader_expiry WHERE id = 1 FOR UPDATE",
            [],
            |r| r.get(0),
        )?;
        if !ended {
            return Ok(None);
        }
        tx.execute(
            "UPDATE leader SET node = ?1, epoch = ?2 WHERE id = 1",
            params![node, epoch + 1],
        )?;
        tx.execute(
            "UPDATE leader_expiry SET expires_at = clock_timestamp() + make_interval(secs => ?1)
             WHERE id = 1",
            params![ttl.as_secs_f64()],
        )?;
        tx.commit()?;
        Ok(Some(epoch + 1))
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
            "UPDATE leader_expiry SET expires_at = clock_timestamp() + make_interval(secs => ?3)
             WHERE id = 1 AND expires_at > clock_timestamp()
               AND EXISTS (SELECT 1 FROM leader WHERE id = 1 AND node = ?1 AND epoch = ?2)",
            params![node, epoch, ttl.as_secs_f64()],
        )? == 1)
    }

    /// Ends the lease of `node` at `epoch` now (a clean stop), so a standby takes over at once.
    pub fn resign_lead(&self, node: &str, epoch: i64) -> Result<(), StoreError> {
        let conn = self.lease_conn()?;
        conn.execute(
            "UPDATE leader_expiry SET expires_at = clock_timestamp()
             WHERE id = 1 AND EXISTS (SELECT 1 FROM leader WHERE id = 1 AND node = ?1 AND epoch = ?2)",
            params![node, epoch],
        )?;
        Ok(())
    }

    /// Ends the lease now if `node` holds it, at whatever epoch (a standby stopped while it
    /// may just have taken it).
    pub fn resign_node(&self, node: &str) -> Result<(), StoreError> {
        let conn = self.lease_conn()?;
        conn.execute(
            "UPDATE leader_expiry SET expires_at = clock_timestamp()
             WHERE id = 1 AND expires_at > clock_timestamp()
               AND EXISTS (SELECT 1 FROM leader WHERE id = 1 AND node = ?1)",
            params![node],
        )?;
        Ok(())
    }

    /// Who holds (or last held) the lease.
    pub fn leader(&self) -> Result<Option<Holder>, StoreError> {
        let conn = self.lease_conn()?;
        Ok(conn
            .query_row(
                "SELECT node, epoch,
                        CAST(EXTRACT(EPOCH FROM e.expires_at - clock_timestamp()) AS DOUBLE PRECISION)
                 FROM leader, leader_expiry e WHERE leader.id = 1 AND e.id = 1 AND epoch > 0",
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
        if !valid_node(node) {
            return;
        }
        let fence = fence_sql(node, epoch);
        for c in [Some(&self.conn), self.sms.as_ref()].into_iter().flatten() {
            lock(c).set_fence(Some(fence.clone()));
        }
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
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
        // A single statement is fenced as a transaction is.
        let e = a.emergency_probe(chrono::Utc::now()).unwrap_err();
        assert!(e.to_string().contains("not the leader"), "{e}");
        assert_eq!(b.good_playlists().unwrap(), vec![("p".into(), "1".into())]);
        let holder = b.leader().unwrap().unwrap();
        assert_eq!((holder.node.as_str(), holder.epoch), ("b", e2));
        // A clean stop hands it over at once.
        b.resign_lead("b", e2).unwrap();
        assert!(a.try_lead("a", Duration::from_secs(30)).unwrap().is_some());
    }
}
