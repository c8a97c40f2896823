//! The dispatcher's outputs beside the standby database: sinks (webhook, exec, NOTIFY) and the
//! HTTP message stream, all read from the journal that `follow --journal` writes.
//!
//! They start once the journal is open and restart on the new handle when follow reopens it.
//! Only transactions the standby has applied are delivered (the applied LSN comes from follow's
//! progress), and journal retention keeps everything a sink has not yet delivered (the sinks'
//! minimum cursor is fed back to follow as `keep_from`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;

use super::{follow, FollowOptions, FollowProgress, FollowSummary};
use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::notify::{SinkConfig, SinkContext, Sinks};
use crate::pg::conninfo::ConnInfo;
use crate::translate::Rules;

/// What follow publishes besides applying.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub sinks: Vec<SinkConfig>,
    pub http: Option<SocketAddr>,
    pub http_token: Option<String>,
    pub rules_file: Option<std::path::PathBuf>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty() && self.http.is_none()
    }
}

/// Load the translation rules and check them against the primary's tables and columns.
pub async fn load_rules(file: Option<&std::path::Path>, primary: &ConnInfo) -> Result<Rules> {
    let Some(file) = file else {
        return Ok(Rules::none());
    };
    let rules = Rules::load(file)?;
    let client = primary
        .connect("understudy rules")
        .await
        .context("while connecting to the primary to check the rules")?;
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, a.attname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') ORDER BY a.attnum",
            &[],
        )
        .await
        .context("while reading the primary's tables to check the rules")?;
    let mut catalog: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        catalog.entry(row.get(0)).or_default().push(row.get(1));
    }
    rules.validate_against(&catalog)?;
    Ok(rules)
}

/// Run follow with its outputs until it ends; the outputs stop with it.
pub async fn follow_with_outputs(
    options: FollowOptions,
    outputs: Outputs,
    shutdown: watch::Receiver<bool>,
) -> Result<FollowSummary> {
    let (progress, _) = watch::channel(FollowProgress::default());
    follow_with_outputs_progress(options, outputs, shutdown, progress).await
}

/// [`follow_with_outputs`], also publishing follow's progress on `progress`.
pub async fn follow_with_outputs_progress(
    mut options: FollowOptions,
    outputs: Outputs,
    shutdown: watch::Receiver<bool>,
    progress: watch::Sender<FollowProgress>,
) -> Result<FollowSummary> {
    let rules = Arc::new(load_rules(outputs.rules_file.as_deref(), &options.primary).await?);
    if outputs.is_empty() {
        return follow(&options, shutdown, Some(progress)).await;
    }
    let Some(journal) = options.journal.as_mut() else {
        bail!("--sink and --http read the journal: add --journal DIR");
    };
    let journal_dir = journal.dir.clone();
    let (handle_tx, handle_rx) = watch::channel::<Option<JournalHandle>>(None);
    journal.handle = Some(Arc::new(handle_tx));
    let (keep_tx, keep_rx) = watch::channel(Lsn::ZERO);
    journal.keep_from = Some(keep_rx);

    let mut progress_rx = progress.subscribe();
    let (applied_tx, applied_rx) = watch::channel(Lsn::ZERO);
    let relay = tokio::spawn(async move {
        while progress_rx.changed().await.is_ok() {
            let applied = progress_rx.borrow_and_update().applied;
            applied_tx.send_if_modified(|a| {
                let moved = applied > *a;
                if moved {
                    *a = applied;
                }
                moved
            });
        }
    });
    let (outputs_stop_tx, outputs_stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(supervise(
        outputs,
        handle_rx,
        applied_rx,
        rules,
        journal_dir,
        options.standby.clone(),
        keep_tx,
        outputs_stop_rx,
    ));

    let result = follow(&options, shutdown, Some(progress)).await;
    outputs_stop_tx.send_replace(true);
    relay.abort();
    let outputs_result = supervisor
        .await
        .map_err(|e| anyhow!("the sinks' supervisor failed: {e}"))?;
    let summary = result?;
    outputs_result?;
    Ok(summary)
}

/// Start the sinks and the stream on each journal handle follow publishes; stop them when the
/// handle goes away or `stop` turns true.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    outputs: Outputs,
    mut handles: watch::Receiver<Option<JournalHandle>>,
    applied: watch::Receiver<Lsn>,
    rules: Arc<Rules>,
    journal_dir: std::path::PathBuf,
    standby: ConnInfo,
    keep_tx: watch::Sender<Lsn>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        let handle = loop {
            if *stop.borrow() {
                return Ok(());
            }
            if let Some(h) = handles.borrow_and_update().clone() {
                break h;
            }
            tokio::select! {
                changed = handles.changed() => if changed.is_err() { return Ok(()) },
                _ = stop.changed() => {}
            }
        };
        let (round_tx, round_rx) = watch::channel(false);
        let sinks = if outputs.sinks.is_empty() {
            None
        } else {
            let ctx = SinkContext {
                journal: handle.clone(),
                journal_dir: journal_dir.clone(),
                applied: applied.clone(),
                rules: rules.clone(),
                standby: Some(standby.clone()),
            };
            Some(Sinks::start(&outputs.sinks, ctx, round_rx.clone()).await?)
        };
        let http = outputs.http.map(|addr| {
            let (journal, applied, rules, token) = (
                handle.clone(),
                applied.clone(),
                rules.clone(),
                outputs.http_token.clone(),
            );
            let stop = round_rx.clone();
            tokio::spawn(async move {
                crate::http::serve(addr, token, journal, applied, rules, stop).await
            })
        });
        if let Some(addr) = outputs.http {
            tracing::info!("message stream on http://{addr}/v1/messages");
        }
        // Feed the sinks' minimum cursor back to journal retention until this round ends.
        let keep_from = sinks.as_ref().map(|s| s.keep_from());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if let Some(Some(lsn)) = keep_from.as_ref().map(|k| k.get()) {
                keep_tx.send_replace(lsn);
            }
            tokio::select! {
                _ = tick.tick() => {}
                changed = handles.changed() => {
                    if changed.is_err() || handles.borrow().is_none() { break; }
                }
                _ = stop.changed() => if *stop.borrow() { break },
            }
            if *stop.borrow() {
                break;
            }
        }
        round_tx.send_replace(true);
        if let Some(s) = sinks {
            if let Err(e) = s.join().await {
                tracing::warn!("sinks stopped: {e:#}");
            }
        }
        if let Some(h) = http {
            match h.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(anyhow!("the HTTP listener failed: {e}")),
                Ok(Ok(())) => {}
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}
