//! The stream task of `follow --journal`: owns the replication connection, hands every XLogData
//! payload to the journal writer, and acknowledges. It never waits for the standby database, so
//! the slot keeps advancing (with `--ack journal`) while the standby is down.
//!
//! Acknowledgement (guarantee 4): `flush` is the journal's durable position or the standby's
//! applied position, whichever is further, with [`Ack::Journal`]; the applied position alone with
//! [`Ack::Applied`]. `apply` is always the applied position and `write` what was received. Both
//! positions are published only once durable (an fsync of the journal, a commit on the standby),
//! and the stream starts at one of them, so `0/0` is never sent.
//!
//! While the journal is full the task stops reading (the walsender then blocks on its socket) but
//! keeps sending status updates every [`STATUS_INTERVAL`], so the walsender does not time out.
//!
//! Failures are retried here, with backoff, from the journal's durable position (or the applied
//! one, when further): the dispatcher is not disturbed. A definite failure ends the follow.

use std::sync::Arc;

use anyhow::anyhow;
use tokio::sync::{mpsc, watch};

use super::source::{check_slot, open_stream, pg, STATUS_INTERVAL};
use super::writer::{Cmd, IdleAt};
use super::{backoff, Ack, Failure, FollowOptions, FollowProgress};
use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::pg::replication::{ReplicationConnection, ReplicationMessage};
use crate::state;

pub(super) struct StreamCtx {
    pub options: Arc<FollowOptions>,
    pub source: state::Source,
    pub ack: Ack,
    pub target: Option<Lsn>,
    pub journal: JournalHandle,
    pub writer: mpsc::Sender<Cmd>,
    pub full: watch::Receiver<bool>,
    pub applied: watch::Receiver<Lsn>,
    /// Other consumers' cursors (sinks); retention keeps from the lower of this and applied.
    pub floor: Option<watch::Receiver<Lsn>>,
    pub stop: watch::Receiver<bool>,
    pub progress: watch::Sender<FollowProgress>,
}

/// The connection of a stream that ended as asked (stop, or target reached), still streaming:
/// the caller sends the last status update once the journal and the apply have finished.
pub(super) struct Ended {
    pub repl: ReplicationConnection,
    pub received: Lsn,
}

impl Ended {
    pub async fn last_status(&mut self, ack: Ack, durable: Lsn, applied: Lsn) {
        let flush = acknowledged(ack, durable, applied);
        let sent = self
            .repl
            .send_status(self.received.max(flush), flush, applied, false)
            .await;
        if let Err(e) = sent {
            tracing::warn!("could not send the last status update to the primary: {e}");
        }
        self.repl.stop_streaming().await.ok();
    }
}

/// The flush position to report.
fn acknowledged(ack: Ack, durable: Lsn, applied: Lsn) -> Lsn {
    match ack {
        Ack::Journal => durable.max(applied),
        Ack::Applied => applied,
    }
}

/// Stream until stopped or the target is applied, retrying transient failures.
pub(super) async fn run(mut ctx: StreamCtx) -> Result<Option<Ended>, Failure> {
    let mut failures = 0u32;
    loop {
        if *ctx.stop.borrow() {
            return Ok(None);
        }
        let mut streamed = false;
        let e = match attempt(&mut ctx, &mut streamed).await {
            Ok(ended) => return Ok(ended),
            Err(Failure::Definite(e)) => return Err(Failure::Definite(e)),
            Err(Failure::Transient(e)) => e,
        };
        if ctx.writer.is_closed() {
            // The writer stopped: the caller ends the follow with its error.
            return Err(Failure::Transient(e));
        }
        failures = if streamed { 1 } else { failures + 1 };
        if ctx.options.max_retries.is_some_and(|m| failures > m) {
            return Err(Failure::Definite(
                e.context(format!("gave up streaming after {failures} attempts")),
            ));
        }
        let wait = backoff(failures);
        tracing::warn!(
            "{e:#}; reconnecting to the primary in {:.1} s, from the journal's durable position",
            wait.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.stop.changed() => {}
        }
    }
}

async fn attempt(ctx: &mut StreamCtx, streamed: &mut bool) -> Result<Option<Ended>, Failure> {
    let applied = *ctx.applied.borrow();
    let start = ctx.journal.durable().max(applied);
    let slot = ctx.source.slot_name.clone();
    check_slot(
        &ctx.options,
        &slot,
        start,
        "what the journal and the standby hold, up to",
    )
    .await?;
    let repl = open_stream(&ctx.options, &ctx.source, start, false).await?;
    tracing::info!(slot = %slot, start = %start, "streaming from the primary into the journal");
    let mut s = Streamer {
        repl,
        received: start,
        in_txn: false,
        retained: Lsn::ZERO,
        floor: ctx.floor.as_ref().map(|f| *f.borrow()),
    };
    s.run(ctx, streamed).await?;
    Ok(Some(Ended {
        repl: s.repl,
        received: s.received,
    }))
}

struct Streamer {
    repl: ReplicationConnection,
    received: Lsn,
    in_txn: bool,
    /// The last `keep_from` the writer accepted.
    retained: Lsn,
    /// The sinks' floor, frozen at its last value if its sender goes away.
    floor: Option<Lsn>,
}

impl Streamer {
    /// Priority: stop, then applied progress (acknowledge, retention, target), then the
    /// journal's durable progress (acknowledge), then fullness, then the stream, then the timer.
    async fn run(&mut self, ctx: &mut StreamCtx, streamed: &mut bool) -> Result<(), Failure> {
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        let mut durable = ctx.journal.subscribe();
        let mut paused = *ctx.full.borrow_and_update();
        let mut applied_open = true;
        let mut full_open = true;
        if ctx.target.is_some() {
            self.status(ctx, true).await?;
        }
        loop {
            tokio::select! {
                biased;
                _ = ctx.stop.changed() => {
                    if *ctx.stop.borrow() {
                        return Ok(());
                    }
                }
                changed = ctx.applied.changed(), if applied_open => {
                    if changed.is_err() {
                        // The dispatcher stopped: the caller sees why and stops us.
                        applied_open = false;
                        continue;
                    }
                    self.retain(ctx);
                    self.status(ctx, false).await?;
                    if self.reached(ctx) {
                        return Ok(());
                    }
                }
                floor = floor_changed(&mut ctx.floor) => {
                    self.floor = floor.or(self.floor);
                    self.retain(ctx);
                }
                _ = durable.changed(), if ctx.ack == Ack::Journal => {
                    self.status(ctx, false).await?;
                }
                changed = ctx.full.changed(), if full_open => {
                    match changed {
                        Ok(()) => paused = *ctx.full.borrow_and_update(),
                        Err(_) => full_open = false,
                    }
                }
                msg = self.repl.recv(), if !paused => {
                    let msg = msg.map_err(|e| pg("while reading the replication stream", e))?;
                    *streamed = true;
                    self.received(ctx, msg, &mut ticker).await?;
                }
                _ = ticker.tick() => {
                    self.retain(ctx);
                    let solicit = ctx.target.is_some() && !self.reached(ctx) && !self.in_txn;
                    self.status(ctx, solicit).await?;
                }
            }
        }
    }

    async fn received(
        &mut self,
        ctx: &mut StreamCtx,
        msg: Option<ReplicationMessage>,
        ticker: &mut tokio::time::Interval,
    ) -> Result<(), Failure> {
        tracing::trace!(?msg, "received");
        match msg {
            None => {
                return Err(Failure::Transient(anyhow!(
                    "the primary ended the replication stream"
                )))
            }
            Some(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            }) => {
                self.received = self.received.max(wal_end);
                match data.first() {
                    Some(b'B') => self.in_txn = true,
                    Some(b'C') => self.in_txn = false,
                    _ => {}
                }
                let cmd = Cmd::Append {
                    lsn: wal_start,
                    payload: data,
                };
                self.send(ctx, cmd, ticker).await?;
            }
            Some(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            }) => {
                self.received = self.received.max(wal_end);
                if !self.in_txn {
                    let at = IdleAt {
                        lsn: wal_end,
                        urgent: ctx.target.is_some(),
                    };
                    self.send(ctx, Cmd::Idle(at), ticker).await?;
                }
                if reply_requested {
                    self.status(ctx, false).await?;
                }
            }
        }
        let received = self.received;
        ctx.progress.send_modify(|p| p.received = received);
        Ok(())
    }

    /// Hand `cmd` to the writer; while its channel is full, keep the primary answered.
    async fn send(
        &mut self,
        ctx: &mut StreamCtx,
        cmd: Cmd,
        ticker: &mut tokio::time::Interval,
    ) -> Result<(), Failure> {
        let writer = ctx.writer.clone();
        let mut cmd = Some(cmd);
        loop {
            tokio::select! {
                permit = writer.reserve() => {
                    let Ok(permit) = permit else {
                        return Err(Failure::Transient(anyhow!("the journal writer stopped")));
                    };
                    if let Some(cmd) = cmd.take() {
                        permit.send(cmd);
                    }
                    return Ok(());
                }
                _ = ticker.tick() => self.status(ctx, false).await?,
            }
        }
    }

    /// Forward a new `keep_from` to the writer's retention. A full channel means the writer is
    /// busy: the next call (at the latest the next tick) tries again.
    fn retain(&mut self, ctx: &mut StreamCtx) {
        let applied = *ctx.applied.borrow();
        let keep_from = self.floor.map_or(applied, |f| f.min(applied));
        if keep_from > self.retained && ctx.writer.try_send(Cmd::Retain(keep_from)).is_ok() {
            self.retained = keep_from;
        }
    }

    fn reached(&self, ctx: &StreamCtx) -> bool {
        ctx.target.is_some_and(|t| *ctx.applied.borrow() >= t)
    }

    async fn status(&mut self, ctx: &StreamCtx, reply_requested: bool) -> Result<(), Failure> {
        let applied = *ctx.applied.borrow();
        let flush = acknowledged(ctx.ack, ctx.journal.durable(), applied);
        self.repl
            .send_status(self.received.max(flush), flush, applied, reply_requested)
            .await
            .map_err(|e| pg("while sending a status update to the primary", e))
    }
}

/// The floor's next value; pending for ever when there is none or its sender is gone.
async fn floor_changed(floor: &mut Option<watch::Receiver<Lsn>>) -> Option<Lsn> {
    let Some(rx) = floor.as_mut() else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => {
            *floor = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_position_never_passes_what_is_durable() {
        let (j, a) = (Lsn(300), Lsn(200));
        assert_eq!(acknowledged(Ack::Journal, j, a), j);
        assert_eq!(
            acknowledged(Ack::Journal, a, j),
            j,
            "the standby ahead of the journal"
        );
        assert_eq!(acknowledged(Ack::Applied, j, a), a);
        assert_eq!(acknowledged(Ack::Applied, a, j), j);
    }
}
