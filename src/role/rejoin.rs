//! Rejoin: an old primary that sees a peer at a higher epoch becomes that peer's standby, and
//! nothing it committed is silently lost (guarantee 7).
//!
//! 1. Fence: the NMS roles lose their write privileges here (recorded), the node is recorded
//!    `fenced`, open NMS write transactions end or are terminated, and this database stops
//!    asking for a synchronous standby.
//! 2. The promotion point: the peer's `understudy.epoch_history` row for its epoch says how far
//!    it had applied this node's stream (`source_applied_lsn`); its `understudy.source` names
//!    the slot on this node that it followed.
//! 3. What diverged: every transaction of this node that commits at or after that point, read
//!    from that slot without consuming it ([`divergence::find`]). When there is any, it is saved
//!    as mutation messages and as SQL ([`divergence::write`]) before anything else changes.
//! 4. Nothing diverged: this database equals the peer's at its promotion LSN, so it follows the
//!    peer's reverse slot from there (no copy). Something diverged: it is copied again from the
//!    peer (`bootstrap --force`), after the divergence file is safe.
//! 5. The node takes the peer's epoch as `standby`, the old slot here (which nobody will read
//!    again) is dropped, and the journal of the old stream is emptied.
//!
//! When the divergence cannot be determined (the slot is gone, or the peer never followed this
//! node), rejoin stops with the reason unless `discard_unknown` allows copying again regardless.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::Client;

use super::{divergence, guard, node, switchover, Epoch, Role};
use crate::bootstrap::{self, BootstrapOptions};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::state;

/// How a rejoin runs.
#[derive(Clone, Debug)]
pub struct RejoinOptions {
    /// This node's name (recorded when its database has no node row).
    pub node_name: String,
    pub nms_roles: Vec<String>,
    /// Where divergence files go.
    pub divergence_dir: PathBuf,
    /// The slot on the peer that this node follows (the peer's reverse slot).
    pub slot: String,
    /// This node's follow journal, emptied when the source changes.
    pub journal: Option<PathBuf>,
    /// How long open NMS write transactions may finish before they are terminated.
    pub drain_timeout: Duration,
    /// Copy again from the peer even when what diverged cannot be determined.
    pub discard_unknown: bool,
    /// Parallel copy workers when copying again.
    pub jobs: usize,
}

/// How the node came back.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejoined {
    /// Nothing diverged: it follows the peer's reverse slot from this LSN of the peer.
    Following { from: Lsn },
    /// It was copied again from the peer.
    CopiedAgain { rows: u64, seconds: f64 },
    /// It already was the peer's standby at the peer's epoch.
    AlreadyStandby,
}

/// What a rejoin did.
#[derive(Clone, Debug)]
pub struct RejoinReport {
    pub epoch: Epoch,
    pub outcome: Rejoined,
    /// The divergence file's directory, with its transaction and row counts.
    pub divergence: Option<(PathBuf, usize, usize)>,
    /// Why the divergence could not be determined, when it could not.
    pub unknown: Option<String>,
    pub dropped_slot: Option<String>,
}

impl std::fmt::Display for RejoinReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.divergence {
            Some((dir, txns, rows)) => writeln!(
                f,
                "DIVERGED: {txns} transaction(s), {rows} row change(s) committed here after the \
                 promotion point never reached the new primary; saved in {}",
                dir.display()
            )?,
            None if self.unknown.is_none() => writeln!(f, "nothing diverged")?,
            None => {}
        }
        if let Some(why) = &self.unknown {
            writeln!(f, "divergence unknown ({why}); copied again as asked")?;
        }
        match &self.outcome {
            Rejoined::Following { from } => writeln!(
                f,
                "rejoined as standby at epoch {}: following the new primary from {from}",
                self.epoch
            ),
            Rejoined::CopiedAgain { rows, seconds } => writeln!(
                f,
                "rejoined as standby at epoch {}: copied again from the new primary ({rows} rows \
                 in {seconds:.1} s)",
                self.epoch
            ),
            Rejoined::AlreadyStandby => {
                writeln!(f, "already the standby at epoch {}", self.epoch)
            }
        }
    }
}

/// Make this node (`this`, an old primary) the standby of `peer`, the primary at a higher epoch.
pub async fn rejoin(
    this: &ConnInfo,
    peer: &ConnInfo,
    options: &RejoinOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<RejoinReport> {
    let mut me = this
        .connect("understudy rejoin")
        .await
        .context("while connecting to this node's database")?;
    me.batch_execute("SET synchronous_commit = local").await?;
    let them = peer
        .connect("understudy rejoin")
        .await
        .context("while connecting to the new primary")?;
    let theirs = node::read_state(&them)
        .await?
        .filter(|n| n.role == Role::Primary)
        .ok_or_else(|| {
            anyhow!(
                "{} is not recorded as a primary; rejoin only follows a promoted peer",
                peer.redacted()
            )
        })?;
    let mine = node::read_state(&me).await?;
    if let Some(m) = &mine {
        if m.role == Role::Standby && m.epoch == theirs.epoch {
            return Ok(RejoinReport {
                epoch: m.epoch,
                outcome: Rejoined::AlreadyStandby,
                divergence: None,
                unknown: None,
                dropped_slot: None,
            });
        }
        if m.epoch >= theirs.epoch {
            bail!(
                "this node is at epoch {}, not below the peer's {}: it is not the old primary; \
                 nothing to rejoin",
                m.epoch,
                theirs.epoch
            );
        }
    }

    // 1. Fence (NMS commits waiting for a synchronous standby are terminated, never
    // acknowledged), then stop asking for a synchronous standby.
    switchover::fence_writers(
        &mut me,
        &options.node_name,
        &options.nms_roles,
        options.drain_timeout,
        switchover::SyncWaiters::Terminate,
    )
    .await?;
    clear_synchronous_standby(&me).await?;

    // 2 and 3. The promotion point, and what diverged after it.
    let point: Option<Option<String>> = them
        .query_opt(
            "SELECT source_applied_lsn::text FROM understudy.epoch_history WHERE epoch = $1",
            &[&theirs.epoch.0],
        )
        .await
        .context("while reading the new primary's promotion point")?
        .map(|r| r.get(0));
    let their_source = state::read_source(&them).await?;
    let my_system: String = me
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?
        .get(0);
    let mut unknown = None;
    let mut divergence_saved = None;
    let mut old_slot = None;
    let known = match (point.flatten(), &their_source) {
        (Some(after), Some(src)) if src.primary_system_id == my_system => {
            let after: Lsn = after.parse()?;
            old_slot = Some(src.slot_name.clone());
            match divergence::find(&me, &src.slot_name, &src.publication, after).await {
                Ok(d) => {
                    if !d.is_empty() {
                        let epoch = mine.as_ref().map_or(Epoch(0), |m| m.epoch);
                        let dir = divergence::write(
                            &options.divergence_dir,
                            &options.node_name,
                            epoch,
                            &d,
                        )?;
                        tracing::warn!(
                            "{} transaction(s) committed here after {after} never reached the new \
                             primary; saved in {}",
                            d.transactions.len(),
                            dir.display()
                        );
                        divergence_saved = Some((dir, d.transactions.len(), d.rows()));
                    }
                    true
                }
                Err(e) => {
                    unknown = Some(format!("{e:#}"));
                    false
                }
            }
        }
        (None, _) => {
            unknown = Some(format!(
                "the new primary recorded no promotion point for epoch {}",
                theirs.epoch
            ));
            false
        }
        _ => {
            unknown = Some(
                "the new primary was not following this node when it was promoted".to_string(),
            );
            false
        }
    };
    if !known && !options.discard_unknown {
        bail!(
            "cannot tell what this node committed after the new primary's promotion: {}. This \
             node stays fenced and keeps its data. Save what you need from it, then run \
             `understudy rejoin --discard-unknown` to copy it again from the new primary",
            unknown.unwrap_or_default()
        );
    }

    // 4. Follow from the reverse slot, or copy again.
    let reverse_at = reverse_slot_position(&them, &options.slot).await?;
    let promotion_lsn: Option<Lsn> = them
        .query_opt(
            "SELECT promotion_lsn::text FROM understudy.epoch_history WHERE epoch = $1",
            &[&theirs.epoch.0],
        )
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .map(|t| t.parse())
        .transpose()?;
    let outcome = match (
        known && divergence_saved.is_none(),
        reverse_at,
        promotion_lsn,
    ) {
        (true, Some(slot_at), Some(from)) if slot_at <= from => {
            follow_from(&mut me, &them, peer, &options.slot, from).await?;
            Rejoined::Following { from }
        }
        _ => {
            let mut b = BootstrapOptions::new(peer.clone(), this.clone());
            b.slot = options.slot.clone();
            b.publication = their_source
                .as_ref()
                .map_or(bootstrap::DEFAULT_PUBLICATION.to_string(), |s| {
                    s.publication.clone()
                });
            b.force = true;
            b.jobs = options.jobs.max(1);
            drop(me);
            let summary = bootstrap::bootstrap(&b, shutdown)
                .await
                .context("while copying this node again from the new primary")?;
            me = this.connect("understudy rejoin").await?;
            me.batch_execute("SET synchronous_commit = local").await?;
            node::ensure_node(&me, &options.node_name, Role::Standby).await?;
            Rejoined::CopiedAgain {
                rows: summary.rows,
                seconds: summary.seconds,
            }
        }
    };

    // 5. Standby at the peer's epoch, read-only, the old slot and journal gone.
    let tables = guard::replicated_tables(&me).await?;
    guard::make_read_only(&mut me, &options.nms_roles, &tables).await?;
    node::record_role(&mut me, Role::Standby, theirs.epoch).await?;
    let dropped_slot = match old_slot {
        Some(slot) => drop_slot(&me, &slot).await?.then_some(slot),
        None => None,
    };
    if let Some(dir) = &options.journal {
        empty_journal(dir)?;
    }
    Ok(RejoinReport {
        epoch: theirs.epoch,
        outcome,
        divergence: divergence_saved,
        unknown,
        dropped_slot,
    })
}

/// Record the peer as this database's source, applied up to `from` (its promotion LSN).
async fn follow_from(
    me: &mut Client,
    them: &Client,
    peer: &ConnInfo,
    slot: &str,
    from: Lsn,
) -> Result<()> {
    let row = them
        .query_one(
            "SELECT system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint()) \
             FROM pg_control_system()",
            &[],
        )
        .await
        .context("while identifying the new primary")?;
    let (system_id, timeline): (String, i32) = (row.get(0), row.get(1));
    let publication: String = them
        .query_opt(
            "SELECT pubname::text FROM pg_publication WHERE puballtables ORDER BY pubname = $1 DESC \
             LIMIT 1",
            &[&bootstrap::DEFAULT_PUBLICATION],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| anyhow!("the new primary has no publication FOR ALL TABLES"))?;
    state::install(&*me).await?;
    let tx = me.transaction().await?;
    tx.execute("DELETE FROM understudy.progress", &[]).await?;
    tx.execute("DELETE FROM understudy.source", &[]).await?;
    tx.execute(
        "INSERT INTO understudy.source (primary_system_id, primary_timeline, primary_dbname, \
         slot_name, publication, consistent_point, state, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn, 'ready', now())",
        &[
            &system_id,
            &timeline,
            &peer.dbname(),
            &slot,
            &publication,
            &from.to_string(),
        ],
    )
    .await
    .context("while recording the new primary as this node's source")?;
    tx.execute(
        "INSERT INTO understudy.progress (applied_lsn) VALUES ($1::text::pg_lsn)",
        &[&from.to_string()],
    )
    .await?;
    tx.commit()
        .await
        .context("while committing the new source")?;
    Ok(())
}

/// Where the peer's reverse slot stands, when it exists.
async fn reverse_slot_position(them: &Client, slot: &str) -> Result<Option<Lsn>> {
    let row = them
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context("while looking for the new primary's reverse slot")?;
    row.and_then(|r| r.get::<_, Option<String>>(0))
        .map(|t| t.parse().map_err(anyhow::Error::from))
        .transpose()
}

/// Drop a replication slot here when it exists (waiting briefly for a walsender to let go).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool> {
    for _ in 0..50 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        match row {
            None => return Ok(false),
            Some(r) => {
                if let Some(pid) = r.get::<_, Option<i32>>(0) {
                    client
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .with_context(|| format!("while dropping the old slot {slot}"))?;
                return Ok(true);
            }
        }
    }
    bail!("slot {slot} stayed in use; drop it with SELECT pg_drop_replication_slot('{slot}')")
}

/// This database no longer asks for a synchronous standby (it is one now).
pub async fn clear_synchronous_standby(client: &Client) -> Result<()> {
    let names = super::sync::synchronous_standby_names(client).await?;
    if !names.trim().is_empty() {
        super::sync::set_synchronous_standby(client, None)
            .await
            .context("while clearing synchronous_standby_names")?;
    }
    Ok(())
}

/// Remove the journal of a source this node no longer follows.
pub fn empty_journal(dir: &std::path::Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("while emptying the journal {}", dir.display())),
    }
}
