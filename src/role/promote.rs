//! Promotion: the standby becomes the primary, in the order of
//! [`machine::promotion_plan`](super::machine::promotion_plan).
//!
//! 1. Preflight, before anything changes: understudy's apply lock (`pg_try_advisory_lock`) on
//!    the standby, so no follower writes while we promote; a finished bootstrap;
//!    `wal_level = logical`; the right to create the slot (and the publication); this node not
//!    fenced, and not behind the old primary's epoch when that answers.
//! 2. Sequences above anything the old primary can have handed out (submodule `sequences`).
//! 3. The publication (`FOR ALL TABLES`, when missing) and then the logical slot for the
//!    future reverse stream, with an ordinary connection
//!    (`pg_create_logical_replication_slot(name, 'pgoutput')`). The publication comes first:
//!    pgoutput reads publications through the slot's historic snapshot. The slot exists before
//!    the NMS may write, so everything the new primary accepts is in its stream for the old
//!    primary to follow when it rejoins.
//! 4. The promotion LSN: `pg_current_wal_lsn()` once the slot exists.
//! 5. One transaction: role `primary` at a new epoch, with its history row (promotion LSN, and
//!    how far the old primary's stream was applied), and the recorded grants given back
//!    ([`guard`](super::guard)). Sessions the NMS already has open can write once it commits.
//! 6. The promote hook: `sh -c HOOK` with `UNDERSTUDY_PROMOTION_LSN` and `UNDERSTUDY_EPOCH` in
//!    its environment. Its failure is reported, not fatal: the database is already the primary.
//!
//! Assumes no follower runs: stop `follow` (and apply what it journaled) first. The apply lock
//! makes sure of it: a follower holding it makes promote refuse, changing nothing.
//!
//! Re-running a promotion that stopped half-way (or one that completed) is safe: every step is
//! idempotent, and a node already recorded as primary keeps its epoch.
//!
//! Promote does not touch the old primary (it only reads its sequences and epoch). If it still
//! accepts writes, fence it (a switchover does); it fences itself once it sees the new epoch.
//! The reverse slot retains WAL on the new primary until the old one follows it: watch
//! `max_slot_wal_keep_size`.
//!
//! Caution for the reverse stream: a publication FOR ALL TABLES publishes schema `understudy`
//! too (`node`, `epoch_history`, `recorded_grant`, `progress`, `source`). Each database's rows
//! there describe that database alone, so a follower must skip relations in schema
//! `understudy`; until it does, the reverse stream would write this node's role rows into the
//! old primary's.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

use super::machine::Refusal;
use super::node::{self, PromotionPoint};
use super::{guard, Epoch, Role};
use crate::ident::quote_ident;
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::state::APPLY_LOCK;
use crate::state::{self, SourceState};

mod sequences;
pub use sequences::{SequenceReport, SequenceSource};

/// How a promotion runs.
#[derive(Clone, Debug)]
pub struct PromoteOptions {
    /// The NMS's database roles (checked for a leftover `default_transaction_read_only`).
    pub nms_roles: Vec<String>,
    /// Steps added to each sequence when the old primary does not answer.
    pub sequence_margin: i64,
    /// The logical slot the old primary will follow from.
    pub reverse_slot: String,
    /// The publication the reverse stream uses (created FOR ALL TABLES when missing).
    pub publication: String,
    /// Run with `sh -c` once the node is the primary.
    pub hook: Option<String>,
    pub hook_timeout: Duration,
    /// How long to wait for the old primary to answer before using the data instead.
    pub old_primary_timeout: Duration,
    /// Promote even a fenced node (its peer has a higher epoch): only when that peer is gone.
    pub force: bool,
    /// This node's name, when its database has no `understudy.node` row yet (default: the
    /// standby's host:port/dbname).
    pub node_name: Option<String>,
}

impl Default for PromoteOptions {
    fn default() -> PromoteOptions {
        PromoteOptions {
            nms_roles: Vec::new(),
            sequence_margin: 1000,
            reverse_slot: "understudy_reverse".to_string(),
            publication: crate::bootstrap::DEFAULT_PUBLICATION.to_string(),
            hook: None,
            hook_timeout: Duration::from_secs(60),
            old_primary_timeout: Duration::from_secs(5),
            force: false,
            node_name: None,
        }
    }
}

/// The reverse slot.
#[derive(Clone, Debug)]
pub struct SlotReport {
    pub name: String,
    /// Created now (else it existed: a re-run).
    pub created: bool,
    /// Its consistent point, when created now.
    pub consistent_point: Option<Lsn>,
}

/// What the promote hook did.
#[derive(Clone, Debug)]
pub struct HookOutcome {
    pub command: String,
    pub ok: bool,
    /// Exit code, or why there is none (signal, timeout, could not start).
    pub status: String,
    /// The last lines of its stderr.
    pub stderr_tail: String,
}

/// What a promotion did.
#[derive(Clone, Debug)]
pub struct PromoteSummary {
    pub node: String,
    pub previous_epoch: Epoch,
    pub epoch: Epoch,
    /// The node was already recorded as primary: the remaining steps were re-run.
    pub already_primary: bool,
    /// This node's WAL position once the reverse slot existed.
    pub promotion_lsn: Lsn,
    /// How far the old primary's stream had been applied (an LSN of the old primary).
    pub source_applied_lsn: Option<Lsn>,
    pub slot: SlotReport,
    pub publication_created: bool,
    pub sequences: SequenceReport,
    pub grants_restored: usize,
    pub hook: Option<HookOutcome>,
    pub warnings: Vec<String>,
}

impl fmt::Display for PromoteSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.already_primary {
            writeln!(
                f,
                "node {} was already primary at epoch {}; promotion steps re-run",
                self.node, self.epoch
            )?;
        } else {
            writeln!(
                f,
                "promoted node {} to primary: epoch {} -> {}",
                self.node, self.previous_epoch, self.epoch
            )?;
        }
        writeln!(f, "promotion LSN {}", self.promotion_lsn)?;
        if let Some(l) = self.source_applied_lsn {
            writeln!(f, "old primary's stream applied up to {l}")?;
        }
        match (self.slot.created, self.slot.consistent_point) {
            (true, Some(at)) => writeln!(f, "reverse slot {} created at {at}", self.slot.name)?,
            _ => writeln!(f, "reverse slot {} already existed", self.slot.name)?,
        }
        if self.publication_created {
            writeln!(f, "publication created FOR ALL TABLES")?;
        }
        writeln!(f, "{}", self.sequences)?;
        writeln!(
            f,
            "write privileges restored: {} grants",
            self.grants_restored
        )?;
        if let Some(h) = &self.hook {
            if h.ok {
                writeln!(f, "promote hook: {}", h.status)?;
            } else {
                writeln!(f, "promote hook FAILED ({}): {}", h.status, h.stderr_tail)?;
            }
        }
        for w in self.warnings.iter().chain(&self.sequences.warnings) {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Promote the database at `standby` to primary; `old_primary` is read (sequences, epoch) when
/// it answers. See the module documentation for the steps and their order.
pub async fn promote(
    standby: &ConnInfo,
    old_primary: Option<&ConnInfo>,
    options: &PromoteOptions,
) -> Result<PromoteSummary> {
    let mut s = standby
        .connect("understudy promote")
        .await
        .context("while connecting to the standby")?;
    let locked: bool = s
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&APPLY_LOCK.0, &APPLY_LOCK.1],
        )
        .await
        .context("while taking the apply lock on the standby")?
        .get(0);
    if !locked {
        bail!(
            "a follower is applying to {} (it holds understudy's apply lock); stop `understudy \
             follow` or the sidecar there first, then promote. Nothing was changed",
            standby.redacted()
        );
    }
    let mut pre = preflight(&s, standby, options).await?;
    let old = connect_old_primary(old_primary, options.old_primary_timeout).await;
    let mut warnings = Vec::new();
    let mut peer_epoch = pre.node.epoch;
    // What the old primary says, when it answers; its failures never stop a failover.
    let on_primary = match &old {
        Ok(p) => {
            // A server that accepts connections but hangs on queries counts as not answering.
            let limit = options.old_primary_timeout;
            let state = tokio::time::timeout(limit, node::read_state(p))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {limit:?}")));
            match state {
                Ok(Some(theirs)) if theirs.epoch > pre.node.epoch => bail!(
                    "the old primary is at epoch {}, above this node's {}: this node is stale and \
                     must rejoin, not promote. Nothing was changed",
                    theirs.epoch,
                    pre.node.epoch
                ),
                Ok(theirs) => {
                    peer_epoch = theirs.as_ref().map_or(peer_epoch, |t| t.epoch);
                    if theirs.is_none_or(|t| t.role == Role::Primary) {
                        warnings.push(format!(
                            "the old primary still answers; fence its writers (a switchover \
                             does), or it writes until it sees epoch {}",
                            pre.node.epoch.max(peer_epoch).next()
                        ));
                    }
                }
                Err(e) => warnings.push(format!("could not read the old primary's epoch: {e:#}")),
            }
            match tokio::time::timeout(limit, sequences::read_primary(p)).await {
                Ok(r) => r.map_err(|e| format!("{e:#}")),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        }
        Err(why) => Err(why.clone()),
    };
    drop(old);

    // Every check passed: from here on, changes.
    pre.node = node::ensure_node(&s, &pre.node.name, Role::Standby).await?;
    let sequences = sequences::bring_forward(&s, on_primary, options.sequence_margin).await?;

    let publication_created = ensure_publication(&s, &options.publication).await?;
    // A slot of that name on a node that was not yet primary is a leftover from an older epoch
    // (its position is stale): start the reverse stream afresh.
    if pre.node.role != Role::Primary {
        drop_stale_slot(&s, &options.reverse_slot).await?;
    }
    let slot = ensure_slot(&s, &options.reverse_slot).await?;
    let promotion_lsn: Lsn = s
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, String>(0)
        .parse()?;

    let source_applied_lsn = state::read_progress(&s).await?.map(|p| p.applied_lsn);
    let tx = s
        .transaction()
        .await
        .context("while starting the promotion transaction")?;
    let already_primary = pre.node.role == Role::Primary;
    let record = if already_primary {
        pre.node.clone()
    } else {
        let point = PromotionPoint {
            promotion_lsn: Some(promotion_lsn),
            source_applied_lsn,
        };
        node::bump_epoch_in(&tx, Role::Primary, peer_epoch, point).await?
    };
    let lifted = guard::lift_in(&tx).await?;
    tx.commit()
        .await
        .context("while committing the promotion (epoch and write privileges)")?;
    warnings.extend(
        lifted
            .skipped
            .iter()
            .map(|w| format!("grant not restored: {w}")),
    );
    warnings.extend(read_only_roles(&s, &options.nms_roles).await?);
    s.execute(
        "SELECT pg_advisory_unlock($1, $2)",
        &[&APPLY_LOCK.0, &APPLY_LOCK.1],
    )
    .await
    .ok();

    let hook = match &options.hook {
        Some(cmd) => Some(run_hook(cmd, promotion_lsn, record.epoch, options.hook_timeout).await),
        None => None,
    };
    if let Some(h) = hook.as_ref().filter(|h| !h.ok) {
        tracing::warn!(
            "promote hook `{}` failed ({}): {}",
            h.command,
            h.status,
            h.stderr_tail
        );
    }
    Ok(PromoteSummary {
        node: record.name,
        previous_epoch: pre.node.epoch,
        epoch: record.epoch,
        already_primary,
        promotion_lsn,
        source_applied_lsn,
        slot,
        publication_created,
        sequences,
        grants_restored: lifted.restored.len(),
        hook,
        warnings,
    })
}

struct Preflight {
    /// This database's node row, or what it will be when there is none yet.
    node: node::NodeRecord,
}

/// Everything that would make the promotion fail half-way, checked before any change.
async fn preflight(s: &Client, standby: &ConnInfo, options: &PromoteOptions) -> Result<Preflight> {
    match state::read_source(s).await? {
        None => bail!(
            "{} was never bootstrapped by understudy; there is no standby to promote",
            standby.redacted()
        ),
        Some(src) if src.state == SourceState::Copying => bail!(
            "the bootstrap of {} did not finish: promoting would serve a partial copy; run \
             `understudy bootstrap` to completion first. Nothing was changed",
            standby.redacted()
        ),
        Some(_) => {}
    }
    let wal_level: String = s.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        bail!(
            "wal_level is {wal_level} on {}: the promoted node needs a logical slot for the \
             reverse stream; set wal_level = logical there and restart it. Nothing was changed",
            standby.redacted()
        );
    }
    let row = s
        .query_one(
            "SELECT rolsuper, rolreplication, \
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
                    (SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $2), \
                    (SELECT database::text FROM pg_replication_slots WHERE slot_name = $2) \
             FROM pg_roles WHERE rolname = current_user",
            &[&options.publication, &options.reverse_slot],
        )
        .await
        .context("while checking the standby's privileges and slots")?;
    let (superuser, replication, publication): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    let (plugin, database): (Option<String>, Option<String>) = (row.get(3), row.get(4));
    if !superuser && !replication {
        bail!(
            "{} may not create replication slots; connect as a role with REPLICATION (ALTER ROLE \
             {} REPLICATION) or a superuser. Nothing was changed",
            standby.user(),
            quote_ident(standby.user())
        );
    }
    if !publication && !superuser {
        bail!(
            "publication {} does not exist on {} and only a superuser may create one FOR ALL \
             TABLES; create it as one (CREATE PUBLICATION {} FOR ALL TABLES). Nothing was changed",
            options.publication,
            standby.redacted(),
            quote_ident(&options.publication)
        );
    }
    if plugin.is_some()
        && (plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(standby.dbname()))
    {
        bail!(
            "slot {} already exists on {} but is not a pgoutput slot of database {}; drop it \
             (SELECT pg_drop_replication_slot('{}')) or choose another reverse slot name",
            options.reverse_slot,
            standby.redacted(),
            standby.dbname(),
            options.reverse_slot.replace('\'', "''")
        );
    }
    let name = options
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}/{}", standby.host(), standby.port(), standby.dbname()));
    let node = node::read_state(s).await?.unwrap_or(node::NodeRecord {
        name,
        role: Role::Standby,
        epoch: Epoch(0),
        updated_at: String::new(),
    });
    if node.role == Role::Fenced && !options.force {
        bail!("{}. Nothing was changed", Refusal::Fenced);
    }
    Ok(Preflight { node })
}

/// The old primary's connection, or why there is none.
async fn connect_old_primary(
    old_primary: Option<&ConnInfo>,
    timeout: Duration,
) -> Result<Client, String> {
    let info = old_primary.ok_or_else(|| "not given".to_string())?;
    match tokio::time::timeout(timeout, info.connect("understudy promote")).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("unreachable: {e}")),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Create the publication FOR ALL TABLES when missing; true when created now.
async fn ensure_publication(s: &Client, name: &str) -> Result<bool> {
    let exists = s
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    s.batch_execute(&format!(
        "CREATE PUBLICATION {} FOR ALL TABLES",
        quote_ident(name)
    ))
    .await
    .with_context(|| format!("while creating publication {name} for the reverse stream"))?;
    Ok(true)
}

/// Create the reverse slot when missing (ordinary connection, pgoutput).
async fn drop_stale_slot(s: &Client, name: &str) -> Result<()> {
    let active: Option<Option<i32>> = s
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0));
    match active {
        None => Ok(()),
        Some(Some(pid)) => bail!(
            "slot {name} on this standby is in use by process {pid}; nothing should stream from \
             a standby: stop that consumer (or choose another reverse slot name) and promote again"
        ),
        Some(None) => {
            tracing::warn!("dropping the leftover slot {name} before creating the reverse slot");
            s.execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
                .with_context(|| format!("while dropping the leftover slot {name}"))?;
            Ok(())
        }
    }
}

async fn ensure_slot(s: &Client, name: &str) -> Result<SlotReport> {
    let exists = s
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?
        .is_some();
    if exists {
        return Ok(SlotReport {
            name: name.to_string(),
            created: false,
            consistent_point: None,
        });
    }
    let lsn: String = s
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .with_context(|| format!("while creating the reverse slot {name}"))?
        .get(0);
    Ok(SlotReport {
        name: name.to_string(),
        created: true,
        consistent_point: Some(lsn.parse()?),
    })
}

/// NMS roles that carry `default_transaction_read_only = on` (an older way of making a standby
/// read-only): their sessions stay read-only after promotion.
async fn read_only_roles(s: &Client, roles: &[String]) -> Result<Vec<String>> {
    let rows = s
        .query(
            "SELECT DISTINCT r.rolname::text FROM pg_db_role_setting d \
             JOIN pg_roles r ON r.oid = d.setrole \
             WHERE r.rolname = ANY($1::text[]) \
               AND d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
               AND EXISTS (SELECT 1 FROM unnest(d.setconfig) c \
                           WHERE lower(c) IN ('default_transaction_read_only=on', \
                                              'default_transaction_read_only=true', \
                                              'default_transaction_read_only=1'))",
            &[&roles],
        )
        .await
        .context("while checking the NMS roles' settings")?;
    Ok(rows
        .iter()
        .map(|r| {
            let role: String = r.get(0);
            format!(
                "role {role} has default_transaction_read_only on: its new sessions are \
                 read-only; ALTER ROLE {} RESET default_transaction_read_only",
                quote_ident(&role)
            )
        })
        .collect())
}

async fn run_hook(command: &str, lsn: Lsn, epoch: Epoch, timeout: Duration) -> HookOutcome {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("UNDERSTUDY_PROMOTION_LSN", lsn.to_string())
        .env("UNDERSTUDY_EPOCH", epoch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let outcome = |ok, status: String, stderr: &[u8]| HookOutcome {
        command: command.to_string(),
        ok,
        status,
        stderr_tail: tail(stderr),
    };
    let child = match child {
        Ok(c) => c,
        Err(e) => return outcome(false, format!("could not start sh: {e}"), b""),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => outcome(false, format!("killed after {timeout:?}"), b""),
        Ok(Err(e)) => outcome(false, format!("could not wait for it: {e}"), b""),
        Ok(Ok(out)) => match out.status.code() {
            Some(0) => outcome(true, "exit 0".into(), &out.stderr),
            Some(c) => outcome(false, format!("exit {c}"), &out.stderr),
            None => outcome(false, format!("ended by {}", out.status), &out.stderr),
        },
    }
}

/// The last few lines of a hook's stderr, for the report.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
