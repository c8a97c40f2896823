//! `follow --journal DIR`: the stream goes to the durable journal first, the dispatcher applies
//! from the journal.
//!
//! ```text
//! primary ─▶ stream task ─(bounded channel)─▶ writer thread ─▶ journal ─▶ reader thread ─▶ dispatcher ─▶ standby
//!               ▲   flush = max(journal durable, applied) | applied        ▲ durable        │ applied
//!               └──────────────────────────────────────────────────────────┴────────────────┘
//! ```
//!
//! * The **stream task** (`stream`) reads the replication stream and hands every XLogData payload
//!   to the **writer thread** (`writer`), which appends it to the journal with group commit and
//!   forwards keepalive idle positions after a flush. The stream task acknowledges durable
//!   positions ([`Ack`]) and pauses reading while the journal is full.
//! * The **dispatcher** (`dispatch`) tails the journal from the standby's applied position and
//!   applies through the [`crate::apply::Applier`].
//! * The stream task and the dispatcher retry their own transient failures independently: the
//!   standby going down does not touch the replication stream, and the primary going away does
//!   not interrupt the apply of what the journal holds. Only a definite failure of either, or a
//!   journal writer failure (the journal must then be reopened), ends this run; the caller
//!   retries the transient ones.
//!
//! Start-up: the standby's applied position A is read (the standby must be reachable once, to
//! learn the slot), the journal is opened and recovered (durable end J), the journal must hold
//! A (else: a gap when the slot has moved past A, or a journal that does not belong to this
//! standby), and streaming starts at max(J, A) after checking the slot has not confirmed past it.

use std::sync::Arc;

use anyhow::anyhow;
use tokio::sync::watch;

use super::source::{slot_confirmed, CHANNEL_CAPACITY};
use super::stream::{self, StreamCtx};
use super::writer::{self, WriterConfig};
use super::{dispatch, Failure, FollowOptions, FollowProgress, FollowSummary, JournalFollow};
use crate::journal::{Journal, JournalError, JournalHandle, JournalOptions};
use crate::lsn::Lsn;

/// Takes the journal's handle back from [`JournalFollow::handle`] when dropped.
struct Unpublish(Arc<watch::Sender<Option<JournalHandle>>>);

impl Drop for Unpublish {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

/// Segment size for a journal limited to `max_bytes`: small enough that retention can free space
/// long before the limit (it deletes whole segments, never the one being written).
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(16 * 1024, JournalOptions::default().segment_bytes)
}

fn open_failure(e: JournalError) -> Failure {
    match e {
        JournalError::Locked { .. } => Failure::Transient(e.into()),
        e if e.is_transient() => Failure::Transient(e.into()),
        e => Failure::Definite(e.into()),
    }
}

pub(super) async fn run(
    options: &FollowOptions,
    jopts: &JournalFollow,
    target: Option<Lsn>,
    shutdown: &watch::Receiver<bool>,
    progress: &watch::Sender<FollowProgress>,
) -> Result<FollowSummary, Failure> {
    let (client, source, applied) = dispatch::connect(options).await?;
    progress.send_modify(|p| p.applied = applied);
    if target.is_some_and(|t| applied >= t) {
        return Ok(FollowSummary {
            applied,
            transactions: 0,
            rows: 0,
        });
    }

    let dir = jopts.dir.clone();
    let journal_options = JournalOptions {
        segment_bytes: segment_bytes(jopts.max_bytes),
        ..JournalOptions::default()
    };
    let journal = tokio::task::spawn_blocking(move || Journal::open(dir, applied, journal_options))
        .await
        .map_err(|e| Failure::Transient(anyhow!("the journal could not be opened: {e}")))?
        .map_err(open_failure)?;
    let recovery = journal.recovery().clone();
    let handle = journal.handle();
    let oldest = handle.oldest_lsn();
    if recovery.truncated_bytes > 0 || !recovery.removed.is_empty() {
        tracing::info!(
            durable = %recovery.durable,
            truncated_bytes = recovery.truncated_bytes,
            "recovered the journal: an incomplete end was cut off and is streamed again"
        );
    }
    tracing::info!(
        journal = %jopts.dir.display(),
        durable = %recovery.durable,
        oldest = %oldest,
        standby_applied = %applied,
        "journal open"
    );
    if applied < oldest {
        let confirmed = slot_confirmed(options, &source.slot_name, applied).await?;
        let dir = jopts.dir.display();
        return Err(match confirmed {
            Some(c) if c > applied => Failure::definite(anyhow!(
                "the standby has applied up to {applied}, but journal {dir} only holds \
                 transactions from {oldest} on and slot {} has confirmed {c}: the changes in \
                 between are gone; run `understudy bootstrap --force`",
                source.slot_name
            )),
            _ => Failure::definite(anyhow!(
                "journal {dir} holds transactions from {oldest} on, after the standby's applied \
                 position {applied} (was the standby restored from an older backup, or is this \
                 another standby's journal?): move the journal directory aside and run follow \
                 again; it streams again from {applied}, which the slot still holds"
            )),
        });
    }
    if recovery.durable < applied && oldest < recovery.durable {
        // Usually idle positions the standby recorded after the last transaction; but if follow
        // ran without this journal meanwhile, it lacks the transactions in between (for replay).
        tracing::debug!(
            journal_durable = %recovery.durable,
            standby_applied = %applied,
            "the standby is ahead of the journal"
        );
    }

    // Whatever way this run ends, readers in this process see the journal close.
    let _published = jopts.handle.as_ref().map(|tx| {
        tx.send_replace(Some(handle.clone()));
        Unpublish(Arc::clone(tx))
    });
    // One stop signal for every task: the caller's shutdown, or the end of this run.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forward = {
        let mut shutdown = shutdown.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
            stop_tx.send_replace(true);
        })
    };
    let options = Arc::new(options.clone());
    let writer = writer::spawn(
        journal,
        WriterConfig {
            dir: jopts.dir.clone(),
            max_bytes: jopts.max_bytes,
            keep_from: jopts
                .keep_from
                .as_ref()
                .map_or(applied, |floor| applied.min(*floor.borrow())),
            ack: jopts.ack,
        },
        CHANNEL_CAPACITY,
        progress.clone(),
    )
    .map_err(|e| Failure::Transient(anyhow!("could not start the journal writer: {e}")))?;
    let (applied_tx, applied_rx) = watch::channel(applied);
    let mut dispatcher = tokio::spawn(dispatch::run(
        dispatch::DispatchCtx {
            options: Arc::clone(&options),
            journal: handle.clone(),
            idle: writer.idle.clone(),
            applied: applied_tx,
            progress: progress.clone(),
            stop: stop_rx.clone(),
        },
        Some((client, applied)),
    ));
    let mut streamer = tokio::spawn(stream::run(StreamCtx {
        options: Arc::clone(&options),
        source,
        ack: jopts.ack,
        target,
        journal: handle.clone(),
        writer: writer.tx,
        full: writer.full,
        applied: applied_rx.clone(),
        floor: jopts.keep_from.clone(),
        stop: stop_rx.clone(),
        progress: progress.clone(),
    }));
    let sequences = tokio::spawn(super::sequences::periodic(
        options.primary.clone(),
        options.standby.clone(),
        options.sequence_interval,
    ));
    let mut writer_done = writer.done;

    // Whichever ends first ends the run; then the others are stopped and awaited, in the order
    // that lets the last status update name the final durable and applied positions.
    enum First {
        Stream,
        Dispatch,
        Writer,
    }
    let first = tokio::select! {
        biased;
        r = &mut streamer => (First::Stream, Some(r), None, None),
        r = &mut dispatcher => (First::Dispatch, None, Some(r), None),
        r = &mut writer_done => (First::Writer, None, None, Some(r)),
    };
    stop_tx.send_replace(true);
    sequences.abort();
    forward.abort();
    let (which, stream_r, dispatch_r, writer_r) = first;
    let stream_r = match stream_r {
        Some(r) => r,
        None => streamer.await,
    };
    // The stream task held the writer's only sender: the writer now drains, flushes and stops.
    let writer_r = match writer_r {
        Some(r) => r,
        None => writer_done.await,
    };
    let dispatch_r = match dispatch_r {
        Some(r) => r,
        None => dispatcher.await,
    };

    let stream_r = stream_r
        .map_err(|e| Failure::Transient(anyhow!("the stream task failed: {e}")))
        .and_then(|r| r);
    let writer_r = writer_r
        .map_err(|_| Failure::Transient(anyhow!("the journal writer thread died")))
        .and_then(|r| r.map_err(|e| Failure::Transient(e.into())));
    let dispatch_r = dispatch_r
        .map_err(|e| Failure::Transient(anyhow!("the dispatcher task failed: {e}")))
        .and_then(|r| r);
    let durable = match &writer_r {
        Ok(d) => *d,
        Err(_) => handle.durable(),
    };
    let (applied, stats) = match &dispatch_r {
        Ok((a, s)) => (*a, *s),
        Err(_) => (*applied_rx.borrow(), Default::default()),
    };
    let mut stream_r = stream_r;
    if let Ok(Some(ended)) = &mut stream_r {
        ended.last_status(jopts.ack, durable, applied).await;
    }
    // The first definite failure wins; a writer failure means reopening the journal.
    let failures = match which {
        First::Dispatch => [dispatch_r.err(), stream_r.err(), writer_r.err()],
        First::Writer => [writer_r.err(), dispatch_r.err(), stream_r.err()],
        First::Stream => [stream_r.err(), dispatch_r.err(), writer_r.err()],
    };
    let mut transient = None;
    for f in failures.into_iter().flatten() {
        match f {
            Failure::Definite(e) => return Err(Failure::Definite(e)),
            Failure::Transient(e) => {
                transient.get_or_insert(e);
            }
        }
    }
    if let Some(e) = transient {
        return Err(Failure::Transient(e));
    }
    Ok(FollowSummary {
        applied,
        transactions: stats.transactions,
        rows: stats.rows,
    })
}
