//! Planned switchover, the old primary's side: fence its NMS writers and name its final LSN.
//!
//! 1. One transaction on the primary: the NMS roles' write privileges on the replicated tables
//!    revoked and recorded ([`guard::make_read_only`]), and the node recorded `fenced` at its
//!    epoch. From its commit on, no new write statement of the NMS succeeds.
//! 2. Transactions and statements of the NMS that were already under way may still commit (a
//!    statement's privileges are checked when it starts): wait up to the drain timeout until no
//!    NMS session has a transaction open or a statement running, then terminate the rest (their
//!    clients were never told they committed, so nothing acknowledged is lost). Prepared
//!    transactions of the NMS cannot be terminated: fencing fails while any is left.
//! 3. The final LSN: the primary's WAL insert position once no NMS transaction is open. Every
//!    transaction the primary acknowledged committed before it.
//! 4. A marker: one published transaction after the final LSN (the node row's `updated_at`), so
//!    the standby's applied position passes the final LSN even when nothing else is written.
//!
//! The standby then applies up to the final LSN and is promoted; the old primary rejoins it as
//! standby ([`super::rejoin`]). If the switchover fails before the promotion, [`unfence`] gives
//! the primary its writers back.
//!
//! Every transaction here commits with `synchronous_commit = local`: fencing must not wait for a
//! synchronous standby that is about to stop.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

use super::{guard, node, Epoch, Role};
use crate::lsn::Lsn;

/// What fencing the primary did.
#[derive(Clone, Debug)]
pub struct Fenced {
    /// Every transaction the primary acknowledged committed before this LSN.
    pub final_lsn: Lsn,
    /// When the write privileges were gone (the start of the no-writer window).
    pub at: Instant,
    /// Write privileges revoked now (0 when the node was already fenced).
    pub revoked: usize,
    /// NMS backends whose open write transaction did not end within the drain timeout.
    pub terminated: Vec<i32>,
}

/// What happens to NMS commits waiting for a synchronous standby while fencing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncWaiters {
    /// The standby still streams (a switchover): they complete, and are before the final LSN.
    Finish,
    /// The standby was promoted away: nobody will confirm them, so they are terminated at once
    /// and their clients never see them commit.
    Terminate,
}

/// Fence the NMS's writers on the primary `client` and return its final LSN (see the module
/// documentation for the steps).
pub async fn fence_writers(
    client: &mut Client,
    node_name: &str,
    nms_roles: &[String],
    drain_timeout: Duration,
    sync_waiters: SyncWaiters,
) -> Result<Fenced> {
    client
        .batch_execute("SET synchronous_commit = local")
        .await
        .context("while preparing to fence the primary")?;
    node::ensure_node(&*client, node_name, Role::Primary).await?;
    let tables = guard::replicated_tables(&*client).await?;
    let read_only = guard::make_read_only(client, nms_roles, &tables)
        .await
        .context("while fencing the primary's NMS writers")?;
    node::record_role(client, Role::Fenced, Epoch(0)).await?;
    let at = Instant::now();
    let terminated = drain_writers(client, nms_roles, drain_timeout, sync_waiters).await?;
    let final_lsn = insert_lsn(client).await?;
    client
        .execute(
            "UPDATE understudy.node SET updated_at = now() WHERE id = 1",
            &[],
        )
        .await
        .context("while writing the switchover marker on the primary")?;
    Ok(Fenced {
        final_lsn,
        at,
        revoked: read_only.revoked.len(),
        terminated,
    })
}

/// Undo [`fence_writers`] after a switchover that did not promote the standby: the recorded
/// grants back, and the node primary again at its epoch.
pub async fn unfence(client: &mut Client) -> Result<()> {
    client
        .batch_execute("SET synchronous_commit = local")
        .await
        .context("while preparing to unfence the primary")?;
    let lifted = guard::lift_read_only(client).await?;
    for w in &lifted.skipped {
        tracing::warn!("grant not restored: {w}");
    }
    node::record_role(client, Role::Primary, Epoch(0)).await?;
    Ok(())
}

/// Wait until no session of the NMS roles has a transaction open or a statement running,
/// terminating those still busy after `timeout` (and, with [`SyncWaiters::Terminate`], those
/// waiting for a synchronous standby at once). Returns the terminated pids. Fails when prepared
/// transactions of the NMS remain: they cannot be terminated.
pub async fn drain_writers(
    client: &Client,
    nms_roles: &[String],
    timeout: Duration,
    sync_waiters: SyncWaiters,
) -> Result<Vec<i32>> {
    let deadline = Instant::now() + timeout;
    let mut terminated = Vec::new();
    loop {
        let busy = busy_sessions(client, nms_roles).await?;
        let prepared = prepared_transactions(client, nms_roles).await?;
        if busy.is_empty() && prepared.is_empty() {
            return Ok(terminated);
        }
        let late = Instant::now() >= deadline;
        if late && busy.is_empty() {
            bail!(
                "prepared transactions of the NMS are still open after {:.1} s ({}): they cannot \
                 be terminated; COMMIT PREPARED or ROLLBACK PREPARED them, then try again",
                timeout.as_secs_f64(),
                prepared.join(", ")
            );
        }
        for (pid, waits_for_sync) in &busy {
            let now = late || (*waits_for_sync && sync_waiters == SyncWaiters::Terminate);
            if now && !terminated.contains(pid) {
                tracing::warn!(
                    pid,
                    "an NMS session was still in a transaction after its writes were fenced: \
                     terminating it (its client never saw that transaction commit)"
                );
                client
                    .execute("SELECT pg_terminate_backend($1)", &[pid])
                    .await
                    .context("while terminating an open NMS transaction")?;
                terminated.push(*pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Client backends of the NMS roles (or roles that are their members; superusers, which count
/// as members of every role and which no revoke restrains, are left alone) with a transaction
/// open or a statement running, and whether each waits for a synchronous standby.
async fn busy_sessions(client: &Client, nms_roles: &[String]) -> Result<Vec<(i32, bool)>> {
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.wait_event = 'SyncRep', false) FROM pg_stat_activity a \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
               AND a.datname = current_database() \
               AND (a.state IS DISTINCT FROM 'idle' OR a.backend_xid IS NOT NULL) \
               AND NOT EXISTS (SELECT 1 FROM pg_roles s WHERE s.oid = a.usesysid AND s.rolsuper) \
               AND EXISTS (SELECT 1 FROM unnest($1::text[]) r \
                           WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \
                             AND pg_has_role(a.usesysid, r, 'MEMBER'))",
            &[&nms_roles],
        )
        .await
        .context("while looking for open NMS transactions")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Prepared transactions owned by the NMS roles (or their members) in this database.
async fn prepared_transactions(client: &Client, nms_roles: &[String]) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT p.gid FROM pg_prepared_xacts p \
             WHERE p.database = current_database() \
               AND NOT EXISTS (SELECT 1 FROM pg_roles s WHERE s.rolname = p.owner AND s.rolsuper) \
               AND EXISTS (SELECT 1 FROM unnest($1::text[]) r \
                           WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \
                             AND pg_has_role(p.owner, r, 'MEMBER'))",
            &[&nms_roles],
        )
        .await
        .context("while looking for prepared NMS transactions")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The server's WAL insert position: past every commit record written so far, acknowledged or
/// not (with `synchronous_commit = off` a commit can be acknowledged before it is written).
pub async fn insert_lsn(client: &Client) -> Result<Lsn> {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .context("while reading the WAL insert position")?
        .get(0);
    Ok(text.parse()?)
}

/// The server's current WAL write position.
pub async fn current_lsn(client: &Client) -> Result<Lsn> {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("while reading the WAL position")?
        .get(0);
    Ok(text.parse()?)
}
