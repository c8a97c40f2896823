//! Switchover and failover on a throwaway pair: two clusters and two in-process sidecars
//! ([`LocalPair`]), with an NMS session inserting into `nms.ledger` as `nms_app` every few
//! milliseconds into whichever node accepts it, throughout.
//!
//! * Switchover: asked of the primary's sidecar; measured as the sidecar's own no-writer window
//!   (fence of the old primary to writes open on the new one) and as the longest pause between
//!   two acknowledged NMS commits around it.
//! * Failover: the primary's PostgreSQL stops at once (`pg_ctl stop -m immediate`) while its
//!   sidecar keeps running, as when the database dies; measured from the stop to the standby
//!   reporting itself primary at a higher epoch, and the promotion's own duration. The old
//!   primary comes back, fences itself, saves what diverged and rejoins before the next round.
//!
//! The numbers only count if nothing was lost: at the end every acknowledged `seq` must be on
//! the final primary or in a divergence file (asynchronous replication can leave the last
//! commits of a dead primary there, saved), or the bench fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cluster::{Cluster, ClusterOptions, StopMode};
use crate::pg::conninfo::ConnInfo;
use crate::sidecar::ledger::{self, Acked, Writer};
use crate::sidecar::local::{LocalOptions, LocalPair, NAMES};

/// Automatic failover after this long without the primary.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the NMS session inserts.
const WRITE_EVERY: Duration = Duration::from_millis(5);
/// Commits the NMS acknowledges between two rounds, so each round starts under load.
const COMMITS_BETWEEN_ROUNDS: usize = 100;
/// Bound on every wait for the pair (first start includes the standby's copy).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What one run measured.
pub struct Roles {
    /// The sidecar's no-writer window per switchover, ms.
    switchover_windows_ms: Vec<f64>,
    /// Longest pause between acknowledged commits per switchover, ms.
    switchover_pauses_ms: Vec<f64>,
    /// Immediate stop of the primary to the standby primary at a higher epoch, s.
    failover_takeovers_s: Vec<f64>,
    /// The promotion itself, as the new primary's sidecar reports it, s.
    failover_promotions_s: Vec<f64>,
    /// Longest pause between acknowledged commits per failover, s.
    failover_pauses_s: Vec<f64>,
    acknowledged: usize,
    /// Ledger inserts saved in divergence files, and how many of them the NMS saw acknowledged.
    diverged: usize,
    diverged_acknowledged: usize,
}

/// Run `switchovers` planned switchovers, then `failovers` automatic failovers, on a fresh pair.
pub async fn measure(switchovers: usize, failovers: usize) -> Result<Roles> {
    let mut pair = prepare().await?;
    pair.start(0);
    pair.start(1);
    let result = drive(&mut pair, switchovers, failovers).await;
    let stopped = pair.stop_all().await;
    tokio::task::block_in_place(|| drop(pair));
    let roles = result?;
    stopped.context("while stopping the sidecars")?;
    Ok(roles)
}

/// Two clusters with database `nms` and role `nms_app`; the example NMS and `nms.ledger` on
/// node a, written by `nms_app`.
async fn prepare() -> Result<LocalPair> {
    let clusters = tokio::task::spawn_blocking(|| {
        let mut v = Vec::new();
        for _ in 0..2 {
            let c = Cluster::start(&ClusterOptions::default())?;
            c.create_database("nms")?;
            v.push(c);
        }
        Ok::<_, anyhow::Error>(v)
    })
    .await??;
    for c in &clusters {
        ConnInfo::parse(&c.dsn("nms"))?
            .connect("understudy bench")
            .await?
            .batch_execute("CREATE ROLE nms_app LOGIN")
            .await
            .context("while creating role nms_app")?;
    }
    let a = ConnInfo::parse(&clusters[0].dsn("nms"))?
        .connect("understudy bench")
        .await?;
    a.batch_execute(crate::demo::NMS_SCHEMA).await?;
    a.batch_execute(crate::demo::NMS_WORKLOAD).await?;
    a.batch_execute(ledger::LEDGER_SQL)
        .await
        .context("while creating nms.ledger")?;
    let clusters: [Cluster; 2] = clusters
        .try_into()
        .map_err(|_| anyhow!("expected two clusters"))?;
    let options = LocalOptions {
        failover_timeout: Some(FAILOVER_TIMEOUT),
        ..LocalOptions::default()
    };
    LocalPair::new(clusters, "nms", &options)
}

async fn drive(pair: &mut LocalPair, switchovers: usize, failovers: usize) -> Result<Roles> {
    pair.settled(0, SETTLE_TIMEOUT)
        .await
        .context("while waiting for the pair's first start")?;
    let writer = Writer::start(
        [pair.clusters[0].port(), pair.clusters[1].port()],
        WRITE_EVERY,
        1,
    );
    let rounds = rounds(pair, &writer, switchovers, failovers).await;
    let acked = writer.stop().await;
    let (mut roles, primary) = rounds?;
    pair.settled(primary, SETTLE_TIMEOUT).await?;
    verify(pair, primary, &acked, &mut roles).await?;
    Ok(roles)
}

/// Every round; the final primary.
async fn rounds(
    pair: &mut LocalPair,
    writer: &Writer,
    switchovers: usize,
    failovers: usize,
) -> Result<(Roles, usize)> {
    let mut roles = Roles {
        switchover_windows_ms: Vec::new(),
        switchover_pauses_ms: Vec::new(),
        failover_takeovers_s: Vec::new(),
        failover_promotions_s: Vec::new(),
        failover_pauses_s: Vec::new(),
        acknowledged: 0,
        diverged: 0,
        diverged_acknowledged: 0,
    };
    let mut primary = 0usize;
    for round in 0..switchovers {
        writer.commits(COMMITS_BETWEEN_ROUNDS).await?;
        let standby = 1 - primary;
        let before = Instant::now();
        let reply = pair
            .switchover(primary)
            .await
            .with_context(|| format!("switchover {} failed", round + 1))?;
        let window = reply["no_writer_window_ms"]
            .as_f64()
            .ok_or_else(|| anyhow!("the switchover reply has no no_writer_window_ms: {reply}"))?;
        pair.settled(standby, SETTLE_TIMEOUT).await?;
        roles.switchover_windows_ms.push(window);
        roles
            .switchover_pauses_ms
            .push(writer.longest_pause_since(before).await?.as_secs_f64() * 1000.0);
        primary = standby;
    }
    for round in 0..failovers {
        writer.commits(COMMITS_BETWEEN_ROUNDS).await?;
        let standby = 1 - primary;
        let above = pair
            .status(standby)
            .await
            .ok_or_else(|| anyhow!("{}'s sidecar does not answer", NAMES[standby]))?
            .epoch;
        let killed = Instant::now();
        tokio::task::block_in_place(|| pair.clusters[primary].stop(StopMode::Immediate))
            .context("while stopping the primary's cluster")?;
        let promoted = pair
            .promoted(standby, above, Duration::from_secs(60))
            .await
            .with_context(|| format!("failover {} failed", round + 1))?;
        roles
            .failover_takeovers_s
            .push(killed.elapsed().as_secs_f64());
        let promotion = promoted
            .last_promotion
            .as_ref()
            .filter(|p| p.kind == "failover")
            .ok_or_else(|| {
                anyhow!(
                    "{} took over without a failover promotion in its status",
                    NAMES[standby]
                )
            })?;
        roles.failover_promotions_s.push(promotion.seconds);
        tokio::task::block_in_place(|| pair.clusters[primary].restart())
            .context("while restarting the old primary's cluster")?;
        pair.settled(standby, SETTLE_TIMEOUT).await?;
        roles
            .failover_pauses_s
            .push(writer.longest_pause_since(killed).await?.as_secs_f64());
        primary = standby;
    }
    Ok((roles, primary))
}

/// Every acknowledged `seq` is on `primary` or in a divergence file; counts the diverged ones.
async fn verify(pair: &LocalPair, primary: usize, acked: &Acked, roles: &mut Roles) -> Result<()> {
    let c = pair.configs[primary]
        .this_node()
        .database
        .connect("understudy bench")
        .await?;
    let have: BTreeSet<i64> = c
        .query("SELECT seq FROM nms.ledger", &[])
        .await
        .context("while reading nms.ledger on the final primary")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut diverged = BTreeSet::new();
    for dir in pair.divergence_dirs() {
        diverged.extend(ledger::diverged_seqs(&dir, None)?);
    }
    let missing: Vec<i64> = acked
        .commits
        .iter()
        .map(|&(_, seq)| seq)
        .filter(|s| !have.contains(s) && !diverged.contains(s))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} acknowledged NMS inserts are neither on the final primary {} nor in a \
             divergence file (first: seq {:?}): the measurements above are of a pair that loses \
             data",
            missing.len(),
            acked.commits.len(),
            NAMES[primary],
            &missing[..missing.len().min(10)]
        );
    }
    roles.acknowledged = acked.commits.len();
    roles.diverged = diverged.len();
    roles.diverged_acknowledged = acked
        .commits
        .iter()
        .filter(|&&(_, seq)| !have.contains(&seq))
        .count();
    Ok(())
}

impl Roles {
    /// The report section.
    pub fn to_markdown(&self) -> String {
        let (switchovers, failovers) = (
            self.switchover_windows_ms.len(),
            self.failover_takeovers_s.len(),
        );
        let mut out = format!(
            "## Switchover and failover\n\n{switchovers} planned switchovers back and forth, then \
             {failovers} automatic failovers (the primary's PostgreSQL stopped with `-m \
             immediate`), on two throwaway clusters with two in-process sidecars (probe every \
             250 ms, failover timeout {} s, a TCP witness that answers), while an NMS session \
             inserted as `nms_app` every {} ms into whichever node accepted it.\n\n",
            FAILOVER_TIMEOUT.as_secs(),
            WRITE_EVERY.as_millis()
        );
        out.push_str("| measure | p50 | max | note |\n|---|---:|---:|---|\n");
        let mut row = |what: &str, v: &[f64], digits: usize, note: &str| {
            let (p50, max) = match spread(v) {
                Some((p50, max)) => (format!("{p50:.digits$}"), format!("{max:.digits$}")),
                None => ("–".to_string(), "–".to_string()),
            };
            out.push_str(&format!("| {what} | {p50} | {max} | {note} |\n"));
        };
        row(
            "switchover: no-writer window (ms)",
            &self.switchover_windows_ms,
            1,
            "the sidecar's: old primary fenced → writes open on the new one",
        );
        row(
            "switchover: longest pause seen by the NMS (ms)",
            &self.switchover_pauses_ms,
            1,
            "between two acknowledged commits, from the request until the pair settled",
        );
        row(
            "failover: kill → writable (s)",
            &self.failover_takeovers_s,
            2,
            &format!(
                "immediate stop → the standby primary at a higher epoch; timeout {} s",
                FAILOVER_TIMEOUT.as_secs()
            ),
        );
        row(
            "failover: promotion (s)",
            &self.failover_promotions_s,
            3,
            "the promotion itself (journal applied, sequences, epoch, grants)",
        );
        row(
            "failover: longest pause seen by the NMS (s)",
            &self.failover_pauses_s,
            2,
            "between two acknowledged commits, from the kill until the pair settled",
        );
        out.push_str(&format!(
            "\n{switchovers} switchovers, {failovers} failovers, {} acknowledged NMS inserts: every \
             one on the final primary or saved in a divergence file; {} ledger inserts in \
             divergence files ({} of them had been acknowledged to the NMS by an old primary).\n",
            self.acknowledged,
            self.diverged,
            self.diverged_acknowledged
        ));
        out.push_str(&format!(
            "\nFor comparison, the documented defaults of other tools (their defaults, not \
             measured here): Patroni starts a failover once the leader key expires, `ttl` 30 s \
             (with `loop_wait` 10 s), so about 30 s; repmgr's repmgrd fails over after \
             `reconnect_attempts` 6 × `reconnect_interval` 10 s, about 60 s; Zabbix 6 native HA \
             takes over after the failover delay, 60 s by default and 10 s at the least. \
             understudy's `[failover] timeout` is 10 s by default; this run used {} s, and the \
             kill → writable row shows what detection and promotion add to it.\n",
            FAILOVER_TIMEOUT.as_secs()
        ));
        out
    }
}

/// Median and maximum.
fn spread(v: &[f64]) -> Option<(f64, f64)> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.last()?))
}
