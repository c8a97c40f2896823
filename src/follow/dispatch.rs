//! The dispatcher of `follow --journal`: tails the journal and applies its transactions to the
//! standby through the [`Applier`] (exactly once: the applied LSN commits with the changes), and
//! records idle positions. It fails and retries on its own, with backoff: while the standby
//! database is down the stream task keeps filling the journal, and when it returns the
//! dispatcher catches up from the journal.
//!
//! A reader thread per attempt does the journal's blocking reads and the decoding, and feeds the
//! applier through a bounded channel. It starts at the segment holding the journal's oldest
//! position, not at the applied one, and passes on the Relation messages of the transactions it
//! skips: a reader that starts at an LSN between two sparse-index entries does not return the
//! Relation messages of the transactions it skips to get there, and a later transaction may need
//! one of them.
//!
//! Idle positions come from the writer once every transaction before them is durable; the reader
//! thread takes the latest one *before* reading to the durable end, then forwards it after the
//! transactions, so an idle position is never recorded ahead of a transaction it covers.

use std::sync::Arc;

use anyhow::anyhow;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use super::source::{apply_failure, pg, take_apply_lock, CHANNEL_CAPACITY};
use super::writer::IdleAt;
use super::{backoff, standby_start, Failure, FollowOptions, FollowProgress};
use crate::apply::{Applier, ApplyStats};
use crate::decode::Message;
use crate::journal::{JournalError, JournalHandle, JournalMessage, JournalReader};
use crate::lsn::Lsn;
use crate::state;

pub(super) struct DispatchCtx {
    pub options: Arc<FollowOptions>,
    pub journal: JournalHandle,
    pub idle: watch::Receiver<IdleAt>,
    pub applied: watch::Sender<Lsn>,
    pub progress: watch::Sender<FollowProgress>,
    pub stop: watch::Receiver<bool>,
}

/// What the reader thread hands the applier.
enum Item {
    Msg(Message),
    Idle(IdleAt),
    Failed(Failure),
}

/// Connect to the standby as its one applier: the source row, the applied position, the lock.
pub(super) async fn connect(
    options: &FollowOptions,
) -> Result<(Client, state::Source, Lsn), Failure> {
    let client = options
        .standby
        .connect("understudy apply")
        .await
        .map_err(|e| pg("while connecting to the standby", e))?;
    let (source, applied) = standby_start(&client, &options.standby).await?;
    take_apply_lock(&client, options).await?;
    Ok((client, source, applied))
}

/// Apply from the journal until stopped. `first` is a connection [`connect`] made.
pub(super) async fn run(
    mut ctx: DispatchCtx,
    mut first: Option<(Client, Lsn)>,
) -> Result<(Lsn, ApplyStats), Failure> {
    let mut failures = 0u32;
    let mut totals = ApplyStats::default();
    loop {
        if *ctx.stop.borrow() {
            return Ok((*ctx.applied.borrow(), totals));
        }
        let before = *ctx.applied.borrow();
        let mut stats = ApplyStats::default();
        let result = attempt(&mut ctx, first.take(), totals, &mut stats).await;
        totals.transactions += stats.transactions;
        totals.skipped_transactions += stats.skipped_transactions;
        totals.rows += stats.rows;
        totals.standby_commits += stats.standby_commits;
        let e = match result {
            Ok(()) => return Ok((*ctx.applied.borrow(), totals)),
            Err(Failure::Definite(e)) => return Err(Failure::Definite(e)),
            Err(Failure::Transient(e)) => e,
        };
        failures = if *ctx.applied.borrow() > before {
            1
        } else {
            failures + 1
        };
        if ctx.options.max_retries.is_some_and(|m| failures > m) {
            return Err(Failure::Definite(
                e.context(format!("gave up applying after {failures} attempts")),
            ));
        }
        let wait = backoff(failures);
        tracing::warn!(
            "{e:#}; the journal keeps receiving the stream; applying again in {:.1} s",
            wait.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.stop.changed() => {}
        }
    }
}

async fn attempt(
    ctx: &mut DispatchCtx,
    first: Option<(Client, Lsn)>,
    base: ApplyStats,
    stats: &mut ApplyStats,
) -> Result<(), Failure> {
    // The connection that holds the apply lock stays open for as long as this attempt applies.
    let (_lock, applied) = match first {
        Some(c) => c,
        None => {
            let (client, _, applied) = connect(&ctx.options).await?;
            (client, applied)
        }
    };
    let oldest = ctx.journal.oldest_lsn();
    if applied < oldest {
        return Err(Failure::definite(anyhow!(
            "the standby has applied up to {applied}, but the journal only holds transactions \
             from {oldest} on (was the standby restored from an older backup?): the changes in \
             between are gone; run `understudy bootstrap --force`"
        )));
    }
    let mut applier = Applier::connect(&ctx.options.standby, applied)
        .await
        .map_err(apply_failure)?;
    tracing::info!(from = %applied, "applying from the journal");
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let journal = ctx.journal.clone();
    let idle = ctx.idle.clone();
    let runtime = Handle::current();
    std::thread::Builder::new()
        .name("journal-reader".into())
        .spawn(move || read(journal, applied, tx, idle, runtime))
        .map_err(|e| Failure::Transient(anyhow!("could not start the journal reader: {e}")))?;

    let publish = |applier: &Applier, lsn: Lsn, stats: &mut ApplyStats| {
        ctx.applied.send_if_modified(|a| {
            let advanced = lsn > *a;
            *a = (*a).max(lsn);
            advanced
        });
        *stats = applier.stats();
        let (transactions, rows) = (
            base.transactions + stats.transactions,
            base.rows + stats.rows,
        );
        ctx.progress.send_modify(|p| {
            p.applied = p.applied.max(lsn);
            p.transactions = transactions;
            p.rows = rows;
        });
    };
    // Priority: stop, then the journal's transactions and idle positions in their order.
    loop {
        tokio::select! {
            biased;
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    if let Some(lsn) = applier.finish().await.map_err(apply_failure)? {
                        publish(&applier, lsn, stats);
                    }
                    *stats = applier.stats();
                    return Ok(());
                }
            }
            item = rx.recv() => {
                let advanced = match item {
                    Some(Item::Msg(m)) => {
                        let more_waiting = !rx.is_empty();
                        applier.handle(m, more_waiting).await
                    }
                    Some(Item::Idle(at)) => applier.idle(at.lsn, at.urgent).await,
                    Some(Item::Failed(f)) => return Err(f),
                    None => {
                        return Err(Failure::Transient(anyhow!("the journal reader stopped")))
                    }
                };
                *stats = applier.stats();
                if let Some(lsn) = advanced.map_err(apply_failure)? {
                    publish(&applier, lsn, stats);
                }
            }
        }
    }
}

fn journal_failure(e: JournalError) -> Failure {
    if e.is_transient() {
        Failure::Transient(e.into())
    } else {
        Failure::Definite(e.into())
    }
}

/// The reader thread: runs until the dispatcher drops its receiver.
fn read(
    journal: JournalHandle,
    applied: Lsn,
    tx: mpsc::Sender<Item>,
    idle: watch::Receiver<IdleAt>,
    runtime: Handle,
) {
    let mut r = Reader {
        journal,
        applied,
        tx,
        idle,
        runtime,
    };
    if let Err(f) = r.run() {
        let _ = r.tx.blocking_send(Item::Failed(f));
    }
}

/// The receiver is gone: stop quietly.
struct Closed;

struct Reader {
    journal: JournalHandle,
    applied: Lsn,
    tx: mpsc::Sender<Item>,
    idle: watch::Receiver<IdleAt>,
    runtime: Handle,
}

impl Reader {
    fn run(&mut self) -> Result<(), Failure> {
        match self.run_inner() {
            Ok(Ok(())) | Ok(Err(Closed)) => Ok(()),
            Err(f) => Err(f),
        }
    }

    fn run_inner(&mut self) -> Result<Result<(), Closed>, Failure> {
        let mut reader = self.open()?;
        if self.context(&reader).is_err() {
            return Ok(Err(Closed));
        }
        let mut durable = self.journal.subscribe();
        let mut forwarded = self.applied;
        let mut idle_open = true;
        loop {
            // The idle position first: every transaction before it is durable by now.
            let at = *self.idle.borrow_and_update();
            durable.borrow_and_update();
            loop {
                match self.next(&mut reader) {
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(Closed))) => return Ok(Err(Closed)),
                    Ok(None) => break,
                    Err(JournalError::TooOld { .. }) if reader.position() < self.applied => {
                        // Retention deleted a segment we were skipping through: start over.
                        reader = self.open()?;
                        if self.context(&reader).is_err() {
                            return Ok(Err(Closed));
                        }
                    }
                    Err(e) => return Err(journal_failure(e)),
                }
            }
            if at.lsn > forwarded {
                if self.tx.blocking_send(Item::Idle(at)).is_err() {
                    return Ok(Err(Closed));
                }
                forwarded = at.lsn;
            }
            let tx = &self.tx;
            let idle = &mut self.idle;
            let closed = self.runtime.block_on(async {
                tokio::select! {
                    _ = durable.changed() => false,
                    changed = idle.changed(), if idle_open => {
                        if changed.is_err() {
                            idle_open = false;
                        }
                        false
                    }
                    _ = tx.closed() => true,
                }
            });
            if closed {
                return Ok(Err(Closed));
            }
        }
    }

    /// A reader at the start of the segment holding the oldest position (see the module docs).
    fn open(&self) -> Result<JournalReader, Failure> {
        loop {
            let oldest = self.journal.oldest_lsn();
            if self.applied < oldest {
                return Err(journal_failure(JournalError::TooOld {
                    requested: self.applied,
                    oldest,
                }));
            }
            match self.journal.reader_from(oldest) {
                Ok(r) => return Ok(r),
                // Retention moved the oldest position meanwhile.
                Err(JournalError::TooOld { .. }) => continue,
                Err(e) => return Err(journal_failure(e)),
            }
        }
    }

    /// The Relation messages in force at the reader's start.
    fn context(&self, reader: &JournalReader) -> Result<(), Closed> {
        let relations: Vec<JournalMessage> = reader
            .context()
            .filter(|m| m.payload.first() == Some(&b'R'))
            .cloned()
            .collect();
        for m in relations {
            self.send(&m)?;
        }
        Ok(())
    }

    /// Read and hand on the next transaction; `None` at the durable end.
    fn next(&self, reader: &mut JournalReader) -> Result<Option<Result<(), Closed>>, JournalError> {
        let Some(mut txn) = reader.next_txn()? else {
            return Ok(None);
        };
        // Applied before: only its Relation messages matter (to later transactions).
        let skip = txn.commit_lsn() < self.applied;
        while let Some(m) = txn.next_message()? {
            if skip && m.payload.first() != Some(&b'R') {
                continue;
            }
            if self.send(&m).is_err() {
                return Ok(Some(Err(Closed)));
            }
        }
        Ok(Some(Ok(())))
    }

    fn send(&self, m: &JournalMessage) -> Result<(), Closed> {
        let item = match m.decode() {
            Ok(msg) => Item::Msg(msg),
            Err(e) => Item::Failed(Failure::definite(anyhow!(
                "the journal message at {} does not decode: {e}; the journal is damaged or was \
                 written by another version: move the journal directory aside and restart follow \
                 (it streams again from the standby's applied position if the slot still has it)",
                m.lsn
            ))),
        };
        self.tx.blocking_send(item).map_err(|_| Closed)
    }
}
