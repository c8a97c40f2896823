//! A planned switchover straight on the two databases, for when no sidecar runs: the same steps
//! as the sidecar's, with a short-lived follower to bring the standby to the final LSN.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;

use super::config::{application_name, slot_for, Config};
use crate::follow::{self, FollowOptions, JournalFollow, StopAt};
use crate::role::promote::{self, PromoteOptions};
use crate::role::rejoin::{self, RejoinOptions};
use crate::role::{node, switchover, Role};

/// Fence the primary's writers, apply its final LSN on the standby, promote the standby, and
/// make the old primary its standby (following the reverse slot). Returns a summary.
pub async fn switchover(
    cfg: &Config,
    shutdown: watch::Receiver<bool>,
) -> Result<serde_json::Value> {
    let mut roles = Vec::new();
    for n in &cfg.nodes {
        let c = n
            .database
            .connect("understudy switchover")
            .await
            .with_context(|| format!("while connecting to node {}'s database", n.name))?;
        let rec = node::read_state(&c)
            .await?
            .ok_or_else(|| anyhow!("node {}'s database has no understudy state", n.name))?;
        roles.push(rec);
    }
    let (p, s) = match (roles[0].role, roles[1].role) {
        (Role::Primary, Role::Standby) => (0, 1),
        (Role::Standby, Role::Primary) => (1, 0),
        (a, b) => bail!(
            "a switchover needs one primary and one standby; node {} is {} and node {} is {}",
            cfg.nodes[0].name,
            a.as_str(),
            cfg.nodes[1].name,
            b.as_str()
        ),
    };
    if roles[p].epoch != roles[s].epoch {
        bail!(
            "the standby {} is at epoch {}, the primary {} at {}: it does not follow this primary",
            cfg.nodes[s].name,
            roles[s].epoch,
            cfg.nodes[p].name,
            roles[p].epoch
        );
    }
    let (primary, standby) = (&cfg.nodes[p], &cfg.nodes[s]);

    let mut pc = primary.database.connect("understudy switchover").await?;
    let fenced = switchover::fence_writers(
        &mut pc,
        &primary.name,
        &cfg.nms.roles,
        cfg.failover.drain_timeout,
        switchover::SyncWaiters::Finish,
    )
    .await?;
    let mut options = FollowOptions::new(primary.database.clone(), standby.database.clone());
    options.stop_at = StopAt::Lsn(fenced.final_lsn);
    options.application_name = application_name(&standby.name);
    options.max_retries = Some(5);
    options.journal = standby.journal.as_ref().map(|dir| {
        let mut j = JournalFollow::new(dir.clone());
        j.ack = cfg.journal.ack;
        j.max_bytes = cfg.journal.max_bytes;
        j
    });
    let caught_up = tokio::time::timeout(
        Duration::from_secs(120),
        follow::follow(&options, shutdown, None),
    )
    .await
    .unwrap_or_else(|_| {
        Err(anyhow!(
            "the standby did not reach the final LSN within 120 s"
        ))
    });
    if let Err(e) = caught_up {
        switchover::unfence(&mut pc).await?;
        return Err(e.context(format!(
            "switchover abandoned before promoting {}; {} writes again",
            standby.name, primary.name
        )));
    }
    let promoted = promote::promote(
        &standby.database,
        Some(&primary.database),
        &PromoteOptions {
            nms_roles: cfg.nms.roles.clone(),
            sequence_margin: cfg.failover.sequence_margin,
            reverse_slot: slot_for(&primary.name),
            hook: cfg.hooks.promote.clone(),
            hook_timeout: cfg.hooks.timeout,
            old_primary_timeout: cfg.failover.connect_timeout,
            node_name: Some(standby.name.clone()),
            ..PromoteOptions::default()
        },
    )
    .await;
    let summary = match promoted {
        Ok(s) => s,
        Err(e) => {
            let c = standby.database.connect("understudy switchover").await?;
            if node::read_state(&c)
                .await?
                .is_some_and(|r| r.role == Role::Standby)
            {
                switchover::unfence(&mut pc).await?;
                return Err(e.context("switchover abandoned; the primary writes again"));
            }
            return Err(e.context("the promotion reported an error after it may have committed"));
        }
    };
    let window = fenced.at.elapsed();
    drop(pc);
    let (_keep, stop) = watch::channel(false);
    let rejoined = rejoin::rejoin(
        &primary.database,
        &standby.database,
        &RejoinOptions {
            node_name: primary.name.clone(),
            nms_roles: cfg.nms.roles.clone(),
            divergence_dir: cfg.divergence_dir.clone(),
            slot: slot_for(&primary.name),
            journal: primary.journal.clone(),
            drain_timeout: cfg.failover.drain_timeout,
            discard_unknown: false,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        },
        stop,
    )
    .await
    .with_context(|| {
        format!(
            "{} is the primary now, but {} could not rejoin it; run `understudy rejoin` there",
            standby.name, primary.name
        )
    })?;
    Ok(serde_json::json!({
        "primary": standby.name,
        "epoch": summary.epoch.0,
        "final_lsn": fenced.final_lsn.to_string(),
        "promotion_lsn": summary.promotion_lsn.to_string(),
        "no_writer_window_ms": window.as_secs_f64() * 1000.0,
        "terminated_transactions": fenced.terminated.len(),
        "old_primary": rejoined.to_string().trim_end(),
        "next": format!(
            "start the follower on {} (`understudy run`, or `understudy follow` from {})",
            primary.name, standby.name
        ),
    }))
}
