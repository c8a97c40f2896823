//! One follow attempt: connect, check that streaming may resume without a gap, then run the
//! source loop and the dispatcher until the stop condition, a shutdown or a failure.

use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{mpsc, watch};

use super::{standby_start, Failure, FollowOptions, FollowProgress, FollowSummary};
use crate::apply::{Applier, ApplyError, ApplyStats};
use crate::decode::{self, Message};
use crate::lsn::Lsn;
use crate::pg::replication::{ReplicationConnection, ReplicationMessage};
use crate::pg::PgError;
use crate::state;
use crate::state::APPLY_LOCK;

/// Messages queued between the source and the dispatcher; the bound is the backpressure, and
/// with it the memory a huge transaction can take.
pub(super) const CHANNEL_CAPACITY: usize = 4096;
/// Status updates go out at least this often (well under any sane `wal_sender_timeout / 2`).
pub(super) const STATUS_INTERVAL: Duration = Duration::from_secs(1);

enum Item {
    Msg(Message),
    /// The primary's WAL end from a keepalive, sent while no transaction was open.
    Idle(Lsn, bool),
}

pub(super) fn pg(context: &str, e: PgError) -> Failure {
    let transient = e.is_transient();
    let e = anyhow::Error::new(e).context(context.to_string());
    if transient {
        Failure::Transient(e)
    } else {
        Failure::Definite(e)
    }
}

pub(super) fn apply_failure(e: ApplyError) -> Failure {
    if e.is_transient() {
        Failure::Transient(e.into())
    } else {
        Failure::Definite(e.into())
    }
}

pub(super) async fn run(
    options: &FollowOptions,
    target: Option<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
    progress: &watch::Sender<FollowProgress>,
) -> Result<FollowSummary, Failure> {
    let standby = options
        .standby
        .connect("understudy apply")
        .await
        .map_err(|e| pg("while connecting to the standby", e))?;
    let (source, applied) = standby_start(&standby, &options.standby).await?;
    take_apply_lock(&standby, options).await?;
    progress.send_modify(|p| p.applied = applied);
    let done = FollowSummary {
        applied,
        transactions: 0,
        rows: 0,
    };
    if target.is_some_and(|t| applied >= t) {
        return Ok(done);
    }

    check_slot(
        options,
        &source.slot_name,
        applied,
        "the standby's applied position",
    )
    .await?;
    let repl = open_stream(options, &source, applied, true).await?;
    tracing::info!(slot = %source.slot_name, start = %applied, "streaming from the primary");

    // `standby` keeps the apply lock until this attempt ends; the applier has its own session.
    let applier = Applier::connect(&options.standby, applied)
        .await
        .map_err(apply_failure)?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (applied_tx, mut applied_rx) = watch::channel(applied);
    let dispatcher = tokio::spawn(dispatch(applier, rx, applied_tx, progress.clone()));
    let sequences = tokio::spawn(super::sequences::periodic(
        options.primary.clone(),
        options.standby.clone(),
        options.sequence_interval,
    ));

    let mut loop_state = Loop {
        repl,
        tx: Some(tx),
        received: applied,
        applied,
        in_txn: false,
        target,
    };
    let outcome = loop_state.run(shutdown, &mut applied_rx, progress).await;
    sequences.abort();

    // Drain: stop queueing, let the dispatcher finish what it holds, acknowledge the result.
    loop_state.tx = None;
    let dispatched = dispatcher.await;
    let (applied, stats) = match dispatched {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(apply_failure(e)),
        Err(e) => {
            return Err(Failure::Transient(anyhow!(
                "the dispatcher task failed: {e}"
            )))
        }
    };
    loop_state.applied = applied;
    outcome?;
    loop_state.status(false).await?;
    loop_state.repl.stop_streaming().await.ok();
    Ok(FollowSummary {
        applied,
        transactions: stats.transactions,
        rows: stats.rows,
    })
}

/// Take the advisory lock that makes this session the one applier of the standby database.
pub(super) async fn take_apply_lock(
    standby: &tokio_postgres::Client,
    options: &FollowOptions,
) -> Result<(), Failure> {
    let locked: bool = standby
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&APPLY_LOCK.0, &APPLY_LOCK.1],
        )
        .await
        .map_err(|e| pg("while taking the apply lock on the standby", e.into()))?
        .get(0);
    if !locked {
        return Err(Failure::Transient(anyhow!(
            "another understudy follow is applying to {}; waiting for it to stop",
            options.standby.redacted()
        )));
    }
    Ok(())
}

/// Connect for replication, check that the primary is the one the standby was copied from, and
/// start streaming from `start`. `messages` asks pgoutput for logical decoding messages too.
pub(super) async fn open_stream(
    options: &FollowOptions,
    source: &state::Source,
    start: Lsn,
    messages: bool,
) -> Result<ReplicationConnection, Failure> {
    let mut repl = ReplicationConnection::connect(&options.primary, &options.application_name)
        .await
        .map_err(|e| pg("while opening the replication connection to the primary", e))?;
    let system = repl
        .identify_system()
        .await
        .map_err(|e| pg("while identifying the primary", e))?;
    if system.system_id != source.primary_system_id {
        return Err(Failure::definite(anyhow!(
            "{} is not the primary this standby was copied from (system identifier {} there, {} \
             recorded at bootstrap): point --primary at the right server, or run `understudy \
             bootstrap --force` to copy from this one",
            options.primary.redacted(),
            system.system_id,
            source.primary_system_id
        )));
    }
    // pgoutput reads publication_names as a list of identifiers: quote the one name, so upper
    // case or a comma in it survives.
    let publication = format!("\"{}\"", source.publication.replace('"', "\"\""));
    let mut plugin_options = vec![
        ("proto_version", "1"),
        ("publication_names", publication.as_str()),
    ];
    if messages {
        plugin_options.push(("messages", "true"));
    }
    repl.start_logical(&source.slot_name, start, &plugin_options)
        .await
        .map_err(|e| pg("while starting replication", e))?;
    Ok(repl)
}

/// Refuse to stream over a gap: the slot must exist, keep the WAL we need, and not have moved
/// past `resume` (what is durable on our side, described by `resume_is`).
pub(super) async fn check_slot(
    options: &FollowOptions,
    slot: &str,
    resume: Lsn,
    resume_is: &str,
) -> Result<(), Failure> {
    if let Some(confirmed) = slot_confirmed(options, slot, resume).await? {
        if confirmed > resume {
            return Err(Failure::definite(anyhow!(
                "replication slot {slot} has confirmed {confirmed}, past {resume_is} {resume}: \
                 the changes in between can no longer be streamed (was the standby restored from \
                 an older backup, or the slot advanced by hand?); run `understudy bootstrap \
                 --force`"
            )));
        }
    }
    Ok(())
}

/// The slot's `confirmed_flush_lsn`, after checking that the slot exists and has lost no WAL
/// (`needed` names the position we need, for the error).
pub(super) async fn slot_confirmed(
    options: &FollowOptions,
    slot: &str,
    needed: Lsn,
) -> Result<Option<Lsn>, Failure> {
    let primary = options
        .primary
        .connect("understudy")
        .await
        .map_err(|e| pg("while connecting to the primary", e))?;
    let row = primary
        .query_opt(
            "SELECT confirmed_flush_lsn::text, coalesce(wal_status, '') FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg("while reading the replication slot", e.into()))?;
    let Some(row) = row else {
        return Err(Failure::definite(anyhow!(
            "replication slot {slot} does not exist on {}: it was dropped, so the changes since \
             {needed} are gone; run `understudy bootstrap --force` to copy the database again",
            options.primary.redacted()
        )));
    };
    let confirmed: Option<String> = row.get(0);
    let wal_status: String = row.get(1);
    if wal_status == "lost" {
        return Err(Failure::definite(anyhow!(
            "replication slot {slot} on {} has lost WAL the standby still needs (wal_status = \
             lost, max_slot_wal_keep_size exceeded); run `understudy bootstrap --force` to copy the \
             database again",
            options.primary.redacted()
        )));
    }
    confirmed
        .map(|c| {
            c.parse()
                .map_err(|e| Failure::definite(anyhow!("slot {slot}: {e}")))
        })
        .transpose()
}

async fn dispatch(
    mut applier: Applier,
    mut rx: mpsc::Receiver<Item>,
    applied_tx: watch::Sender<Lsn>,
    progress: watch::Sender<FollowProgress>,
) -> Result<(Lsn, ApplyStats), ApplyError> {
    let publish = |applier: &Applier, lsn: Lsn| {
        applied_tx.send_replace(lsn);
        let stats = applier.stats();
        progress.send_modify(|p| {
            p.applied = lsn;
            p.transactions = stats.transactions;
            p.rows = stats.rows;
        });
    };
    while let Some(item) = rx.recv().await {
        if let Item::Msg(m) = &item {
            tracing::trace!(kind = m.kind(), "dispatching");
        }
        let advanced = match item {
            Item::Msg(m) => applier.handle(m, !rx.is_empty()).await?,
            Item::Idle(lsn, urgent) => applier.idle(lsn, urgent).await?,
        };
        if let Some(lsn) = advanced {
            publish(&applier, lsn);
        }
    }
    if let Some(lsn) = applier.finish().await? {
        publish(&applier, lsn);
    }
    Ok((applier.applied(), applier.stats()))
}

struct Loop {
    repl: ReplicationConnection,
    tx: Option<mpsc::Sender<Item>>,
    received: Lsn,
    applied: Lsn,
    in_txn: bool,
    target: Option<Lsn>,
}

impl Loop {
    fn reached(&self) -> bool {
        self.target.is_some_and(|t| self.applied >= t)
    }

    /// Priority: shutdown, then acknowledging applied progress, then the stream, then the timer.
    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        applied_rx: &mut watch::Receiver<Lsn>,
        progress: &watch::Sender<FollowProgress>,
    ) -> Result<(), Failure> {
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        if self.target.is_some() {
            self.status(true).await?;
        }
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
                changed = applied_rx.changed() => {
                    if changed.is_err() {
                        // The dispatcher stopped: its result says why.
                        return Ok(());
                    }
                    self.applied = *applied_rx.borrow_and_update();
                    self.status(false).await?;
                    if self.reached() {
                        return Ok(());
                    }
                }
                msg = self.repl.recv() => {
                    let msg = msg.map_err(|e| pg("while reading the replication stream", e))?;
                    tracing::trace!(?msg, "received");
                    match msg {
                        None => return Err(Failure::Transient(anyhow!("the primary ended the replication stream"))),
                        Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                            self.received = self.received.max(wal_end);
                            let message = decode::parse(&data).map_err(|e| Failure::definite(anyhow!(
                                "could not decode the replication stream: {e}; this is a bug in understudy or a \
                                 protocol it does not know"
                            )))?;
                            match &message {
                                Message::Begin(_) => self.in_txn = true,
                                Message::Commit(_) => self.in_txn = false,
                                _ => {}
                            }
                            self.queue(Item::Msg(message), &mut ticker).await?;
                        }
                        Some(ReplicationMessage::Keepalive { wal_end, reply_requested, .. }) => {
                            self.received = self.received.max(wal_end);
                            if !self.in_txn {
                                self.queue(Item::Idle(wal_end, self.target.is_some()), &mut ticker).await?;
                            }
                            if reply_requested {
                                self.status(false).await?;
                            }
                        }
                    }
                    progress.send_modify(|p| p.received = self.received);
                }
                _ = ticker.tick() => {
                    let solicit = self.target.is_some() && !self.reached() && !self.in_txn;
                    self.status(solicit).await?;
                }
            }
        }
    }

    /// Queue an item for the dispatcher; while the queue is full, keep the primary answered.
    async fn queue(
        &mut self,
        item: Item,
        ticker: &mut tokio::time::Interval,
    ) -> Result<(), Failure> {
        let Some(tx) = self.tx.clone() else {
            return Ok(());
        };
        let mut item = Some(item);
        loop {
            tokio::select! {
                permit = tx.reserve() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(item) = item.take() {
                                permit.send(item);
                            }
                            return Ok(());
                        }
                        // The dispatcher stopped; its result says why.
                        Err(_) => return Ok(()),
                    }
                }
                _ = ticker.tick() => self.status(false).await?,
            }
        }
    }

    async fn status(&mut self, reply_requested: bool) -> Result<(), Failure> {
        let applied = self.applied;
        self.repl
            .send_status(
                self.received.max(applied),
                applied,
                applied,
                reply_requested,
            )
            .await
            .map_err(|e| pg("while sending a status update to the primary", e))
    }
}
