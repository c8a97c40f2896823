//! `understudy replay`: the journal's messages again, from an LSN.
//!
//! Targets:
//! * **stdout**: every message of the transactions committing from `--from-lsn` on (up to
//!   `--to-lsn`, inclusive), one JSON object per line, exactly as the sinks and the stream emit
//!   them (same JSON, same `commit_lsn:seq` ids), whether the standby applied them or not.
//! * **standby**: the transactions' pgoutput messages applied again to a standby database through
//!   the dispatcher ([`crate::apply::Applier`]), exactly once as in `follow`: the standby must
//!   carry understudy's schema with `understudy.progress` (a standby restored from a backup taken
//!   at or after `--from-lsn`); transactions before its applied LSN are skipped, and a start after
//!   it is refused (the transactions in between would be missing).
//! * **sinks**: pushed again to the given sinks ([`crate::notify::replay_to_sinks`]), without
//!   touching their cursors.
//!
//! An LSN older than the journal keeps fails with the journal's `TooOld` error (the oldest LSN
//! available, bootstrap again). Replay opens the journal as its writer would (recovery included),
//! so it needs the journal's lock: stop the follower first (while it runs, the stream's
//! `from_lsn` gives the same messages).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{mpsc, watch};

use crate::apply::Applier;
use crate::decode::Message;
use crate::journal::{Journal, JournalHandle, JournalOptions};
use crate::lsn::Lsn;
use crate::messages::{to_json, MessageReader};
use crate::notify::{replay_to_sinks, SinkConfig};
use crate::pg::conninfo::ConnInfo;
use crate::state;
use crate::state::APPLY_LOCK;
use crate::translate::Rules;

/// Where replayed messages go.
#[derive(Clone)]
pub enum ReplayTarget {
    /// JSON lines on standard output.
    Stdout,
    /// Applied to this standby database.
    Standby(ConnInfo),
    /// Delivered to these sinks; `standby` serves `notify` sinks.
    Sinks {
        sinks: Vec<SinkConfig>,
        standby: Option<ConnInfo>,
    },
}

/// What a replay covers.
#[derive(Clone)]
pub struct ReplayOptions {
    pub journal_dir: PathBuf,
    /// Transactions committing at or after this LSN…
    pub from_lsn: Lsn,
    /// …and at or before this one (all that is durable when `None`).
    pub to_lsn: Option<Lsn>,
    pub target: ReplayTarget,
    pub rules: Arc<Rules>,
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Transactions replayed (stdout, standby: those the standby had not applied yet).
    pub transactions: u64,
    /// Messages written (stdout only).
    pub messages: u64,
    /// The standby's applied LSN at the end (standby only).
    pub applied: Option<Lsn>,
}

/// Runs a replay until done or `shutdown` turns true.
pub async fn run(
    options: &ReplayOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<ReplaySummary> {
    if let Some(to) = options.to_lsn {
        if to < options.from_lsn {
            bail!(
                "--to-lsn {to} is before --from-lsn {}: nothing to replay",
                options.from_lsn
            );
        }
    }
    let dir = options.journal_dir.clone();
    let journal = tokio::task::spawn_blocking(move || open_journal(&dir)).await??;
    let handle = journal.handle();
    let from = options.from_lsn;
    let to = options.to_lsn;
    let rules = Arc::clone(&options.rules);
    let summary = match &options.target {
        ReplayTarget::Stdout => {
            tokio::task::spawn_blocking(move || {
                let stdout = io::stdout();
                let mut out = io::BufWriter::new(stdout.lock());
                match write_messages(&handle, from, to, rules, &mut out) {
                    Err(e) if is_broken_pipe(&e) => Ok(ReplaySummary::default()),
                    other => other,
                }
            })
            .await?
        }
        ReplayTarget::Standby(info) => to_standby(&handle, from, to, info, shutdown).await,
        ReplayTarget::Sinks { sinks, standby } => {
            replay_to_sinks(sinks, &handle, rules, standby.clone(), from, to, shutdown).await?;
            Ok(ReplaySummary::default())
        }
    };
    drop(journal);
    summary
}

/// [`run`] with its parts as arguments, until done.
pub async fn replay(
    journal_dir: &Path,
    from_lsn: Lsn,
    to_lsn: Option<Lsn>,
    target: ReplayTarget,
    rules: Arc<Rules>,
) -> Result<ReplaySummary> {
    let (_keep, shutdown) = watch::channel(false);
    let options = ReplayOptions {
        journal_dir: journal_dir.to_path_buf(),
        from_lsn,
        to_lsn,
        target,
        rules,
    };
    run(&options, shutdown).await
}

/// Opens an existing journal (never creates one).
fn open_journal(dir: &Path) -> Result<Journal> {
    if !dir.is_dir() {
        bail!(
            "journal directory {} does not exist: give the --journal directory the follower \
             wrote",
            dir.display()
        );
    }
    let journal = Journal::open(dir, Lsn::ZERO, JournalOptions::default())?;
    if journal.size_bytes() == 0 {
        bail!(
            "{} holds no journal segments: give the --journal directory the follower wrote",
            dir.display()
        );
    }
    Ok(journal)
}

/// Writes the messages of the transactions committing in `from..=to` as JSON lines (blocking).
pub fn write_messages(
    journal: &JournalHandle,
    from: Lsn,
    to: Option<Lsn>,
    rules: Arc<Rules>,
    out: &mut impl Write,
) -> Result<ReplaySummary> {
    let mut reader = MessageReader::open(journal, from, rules)?;
    let mut summary = ReplaySummary::default();
    while let Some(batch) = reader.next_batch(1024)? {
        if to.is_some_and(|to| batch.commit_lsn > to) {
            break;
        }
        for m in &batch.messages {
            writeln!(out, "{}", to_json(m))?;
        }
        summary.messages += batch.messages.len() as u64;
        if batch.last_of_txn {
            summary.transactions += 1;
        }
    }
    out.flush()?;
    Ok(summary)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Applies the journal's transactions from `from` to a standby.
async fn to_standby(
    journal: &JournalHandle,
    from: Lsn,
    to: Option<Lsn>,
    info: &ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReplaySummary> {
    let client = info
        .connect("understudy replay")
        .await
        .with_context(|| format!("while connecting to the standby {}", info.redacted()))?;
    let progress = state::read_progress(&client).await?.ok_or_else(|| {
        anyhow!(
            "{} has no understudy.progress row: replay --to standby needs a standby restored from \
             a backup of a bootstrapped standby (or bootstrap it again)",
            info.redacted()
        )
    })?;
    let applied = progress.applied_lsn;
    if from > applied {
        bail!(
            "the standby {} has applied everything that committed before {applied}, but the \
             replay starts at {from}: the transactions in between would be missing; replay from \
             {applied} or earlier",
            info.redacted()
        );
    }
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&APPLY_LOCK.0, &APPLY_LOCK.1],
        )
        .await
        .context("while taking the apply lock on the standby")?
        .get(0);
    if !locked {
        bail!(
            "an understudy follow is applying to {}: stop it before replaying to this standby",
            info.redacted()
        );
    }
    // `client` keeps the apply lock while the applier works on its own session.
    let _lock = client;
    let mut applier = Applier::connect(info, applied).await?;
    let (tx, mut rx) = mpsc::channel::<Result<Message>>(4096);
    let reader = journal.reader_from(from)?;
    std::thread::Builder::new()
        .name("understudy-replay".into())
        .spawn(move || read_raw(reader, to, tx))
        .context("while starting the journal reader thread")?;
    let mut summary = ReplaySummary::default();
    loop {
        let msg = tokio::select! {
            biased;
            _ = crate::notify::stopped(&mut shutdown) => {
                applier.finish().await?;
                bail!("interrupted; the standby has applied everything before {}", applier.applied());
            }
            m = rx.recv() => m,
        };
        let Some(msg) = msg else { break };
        applier.handle(msg?, true).await?;
    }
    applier.finish().await?;
    let stats = applier.stats();
    summary.transactions = stats.transactions;
    summary.applied = Some(applier.applied());
    Ok(summary)
}

/// The reader thread of a replay to a standby: the context's Relation messages, then every
/// message of the transactions committing up to `to`.
fn read_raw(
    mut reader: crate::journal::JournalReader,
    to: Option<Lsn>,
    tx: mpsc::Sender<Result<Message>>,
) {
    let send = |m: Result<Message>| tx.blocking_send(m).is_ok();
    for m in reader.context() {
        if let Ok(msg @ Message::Relation(_)) = m.decode() {
            if !send(Ok(msg)) {
                return;
            }
        }
    }
    loop {
        let txn = match reader.next_txn() {
            Ok(Some(txn)) => txn,
            Ok(None) => return,
            Err(e) => {
                send(Err(e.into()));
                return;
            }
        };
        if to.is_some_and(|to| txn.commit_lsn() > to) {
            return;
        }
        for m in txn {
            let decoded = m
                .map_err(anyhow::Error::from)
                .and_then(|m| m.decode().map_err(anyhow::Error::from));
            let failed = decoded.is_err();
            if !send(decoded) || failed {
                return;
            }
        }
    }
}
