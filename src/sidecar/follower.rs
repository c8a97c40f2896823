//! The sidecar's follower: `follow` in a task, started and stopped as the role demands.

use anyhow::{anyhow, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::follow::{self, FollowOptions, FollowProgress, FollowSummary, JournalFollow};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;

use super::config::{application_name, Config};

/// How long a stopping follower may take before it is aborted.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A running follower.
pub struct Follower {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<FollowSummary>>,
    progress: watch::Receiver<FollowProgress>,
}

impl Follower {
    /// Start following the peer into this node's database.
    pub fn start(cfg: &Config) -> Follower {
        let me = cfg.this_node();
        let mut options = FollowOptions::new(cfg.peer().database.clone(), me.database.clone());
        options.application_name = application_name(&me.name);
        options.journal = me.journal.as_ref().map(|dir| {
            let mut j = JournalFollow::new(dir.clone());
            j.ack = cfg.journal.ack;
            j.max_bytes = cfg.journal.max_bytes;
            j
        });
        let (stop, stop_rx) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(FollowProgress::default());
        let outputs = follow::outputs::Outputs {
            sinks: cfg.messages.sinks.clone(),
            http: cfg.messages.stream,
            http_token: cfg.http.token.clone(),
            rules_file: cfg.messages.rules.clone(),
        };
        let task = tokio::spawn(async move {
            if outputs.is_empty() && outputs.rules_file.is_none() {
                follow::follow(&options, stop_rx, Some(progress_tx)).await
            } else {
                // The standby's NMS hears every applied change as a mutation message.
                follow::outputs::follow_with_outputs_progress(
                    options,
                    outputs,
                    stop_rx,
                    progress_tx,
                )
                .await
            }
        });
        Follower {
            stop,
            task,
            progress,
        }
    }

    pub fn progress(&self) -> FollowProgress {
        *self.progress.borrow()
    }

    /// The follower stopped by itself (a definite failure): why.
    pub async fn ended(&mut self) -> Option<String> {
        if !self.task.is_finished() {
            return None;
        }
        Some(match (&mut self.task).await {
            Ok(Ok(_)) => "the follower stopped".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("the follower task failed: {e}"),
        })
    }

    /// Wait until everything committed before `target` is applied, or `timeout` passes.
    pub async fn applied_past(&mut self, target: Lsn, timeout: std::time::Duration) -> Result<Lsn> {
        let wait = async {
            loop {
                let applied = self.progress.borrow_and_update().applied;
                if applied >= target {
                    return Ok(applied);
                }
                if self.progress.changed().await.is_err() {
                    return Err(anyhow!(
                        "the follower stopped before applying up to {target}"
                    ));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!(
                "the standby did not apply the primary's final LSN {target} within {:.0} s \
                 (applied {})",
                timeout.as_secs_f64(),
                self.progress.borrow().applied
            )),
        }
    }

    /// Stop it and wait until it has let go of the standby (its apply lock). A follower stuck
    /// connecting to a primary that does not answer is aborted after a few seconds: dropping
    /// its connections ends its standby session, and with it the apply lock.
    pub async fn stop(mut self) -> FollowProgress {
        let _ = self.stop.send(true);
        let last = *self.progress.borrow();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(Err(e))) => tracing::debug!("follower stopped: {e:#}"),
            Ok(Err(e)) => tracing::warn!("follower task failed: {e}"),
            Ok(Ok(Ok(_))) => {}
            Err(_) => {
                tracing::warn!(
                    "the follower did not stop within {} s (a connection attempt hangs): aborting it",
                    STOP_GRACE.as_secs()
                );
                self.task.abort();
                let _ = (&mut self.task).await;
            }
        }
        last
    }
}

/// Apply what the journal holds beyond the standby's applied position (before a promotion).
/// A journal with no segment yet (nothing was journaled since it was emptied) holds nothing.
pub async fn apply_journal(dir: &std::path::Path, standby: &ConnInfo) -> Result<u64> {
    let has_segments = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(anyhow!("while reading the journal {}: {e}", dir.display())),
    };
    if !has_segments {
        return Ok(0);
    }
    let client = standby.connect("understudy sidecar").await?;
    let applied = crate::state::read_progress(&client)
        .await?
        .map(|p| p.applied_lsn)
        .unwrap_or(Lsn::ZERO);
    drop(client);
    let summary = crate::replay::replay(
        dir,
        applied,
        None,
        crate::replay::ReplayTarget::Standby(standby.clone()),
        std::sync::Arc::new(crate::translate::Rules::none()),
    )
    .await?;
    Ok(summary.transactions)
}
