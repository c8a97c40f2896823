//! The journal writer: a dedicated thread that owns the [`Journal`] (its API is blocking) and is
//! fed by the stream task through a bounded channel, whose capacity is the backpressure.
//!
//! Invariants:
//! * **Group commit.** Appends are not fsynced one by one: the writer flushes when the channel
//!   runs dry with a transaction completed since the last flush, when 1 MiB is pending, or
//!   [`GROUP_WAIT`] after the first unflushed Commit. A flush publishes the durable position
//!   ([`crate::journal::JournalHandle::subscribe`]), which is what `--ack journal` acknowledges
//!   and what the dispatcher tails.
//! * **Idle positions.** A keepalive's WAL end (sent while no transaction was open) is forwarded
//!   to the dispatcher only after a flush, so every transaction committing before it is durable
//!   and readable first.
//! * **Full.** The journal is full when its segments reach `max_bytes` while it holds
//!   transactions not yet consumed (`keep_from` < durable): the stream task then stops reading
//!   until retention brings it under 7/8 of the limit. When everything durable is consumed the limit is not enforced
//!   (retention cannot delete the segment being written, and pausing would then never end), so
//!   the journal can pass it by at most the segment being written.
//! * **Retention** runs when the stream task forwards a new `keep_from` (the applied position, or
//!   lower when sinks lag): consumed segments are deleted while the journal is over half of
//!   `max_bytes`; the other half keeps recent history for replay and late consumers.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use super::report::{self, JournalReport};
use super::{Ack, FollowProgress, JournalProgress};
use crate::journal::{Journal, JournalError, JournalHandle};
use crate::lsn::Lsn;

/// Flush once this much is pending, however busy the stream is.
const GROUP_BYTES: u64 = 1024 * 1024;
/// Flush this long after the first Commit appended since the last flush, however busy the stream.
const GROUP_WAIT: Duration = Duration::from_millis(5);
/// A journal-full episode ends (the next one warns again) after this long with room.
const EPISODE_END: Duration = Duration::from_secs(60);
/// The report file is rewritten at most this often (and at once when `full` changes).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What the stream task sends the writer.
#[derive(Debug)]
pub(super) enum Cmd {
    /// One pgoutput message as received, at XLogData's `wal_start`.
    Append { lsn: Lsn, payload: Bytes },
    /// A keepalive's WAL end while no transaction was open.
    Idle(IdleAt),
    /// Retention may delete what commits before this.
    Retain(Lsn),
}

/// An idle position for the dispatcher; `urgent` records it on the standby at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct IdleAt {
    pub lsn: Lsn,
    pub urgent: bool,
}

pub(super) struct WriterConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub keep_from: Lsn,
    pub ack: Ack,
}

/// The running writer, seen from the async side.
pub(super) struct Writer {
    pub tx: mpsc::Sender<Cmd>,
    pub idle: watch::Receiver<IdleAt>,
    pub full: watch::Receiver<bool>,
    /// The final durable position, or why the writer stopped.
    pub done: oneshot::Receiver<Result<Lsn, JournalError>>,
}

/// Start the writer thread on `journal`; it runs until every sender of `Writer::tx` is dropped.
pub(super) fn spawn(
    journal: Journal,
    config: WriterConfig,
    capacity: usize,
    progress: watch::Sender<FollowProgress>,
) -> std::io::Result<Writer> {
    let (tx, rx) = mpsc::channel(capacity);
    let (idle_tx, idle) = watch::channel(IdleAt::default());
    let (full_tx, full) = watch::channel(false);
    let (done_tx, done) = oneshot::channel();
    let handle = journal.handle();
    let mut state = State {
        durable: journal.durable(),
        keep_from: config.keep_from,
        journal,
        handle,
        config,
        commit_pending: None,
        flushed_size: 0,
        full: false,
        episode: Episode::None,
        roomy_since: None,
        full_tx,
        idle_tx,
        progress,
        last_report: None,
    };
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || {
            let result = state.run(rx);
            state.report(false);
            // Release the journal (and its lock) before anyone may reopen it.
            drop(state);
            let _ = done_tx.send(result);
        })?;
    Ok(Writer {
        tx,
        idle,
        full,
        done,
    })
}

struct State {
    journal: Journal,
    handle: JournalHandle,
    config: WriterConfig,
    durable: Lsn,
    keep_from: Lsn,
    /// When the first Commit since the last flush was appended.
    commit_pending: Option<Instant>,
    /// Segment bytes as of the last flush.
    flushed_size: u64,
    full: bool,
    episode: Episode,
    /// Since when the journal has had room, within an episode.
    roomy_since: Option<Instant>,
    full_tx: watch::Sender<bool>,
    idle_tx: watch::Sender<IdleAt>,
    progress: watch::Sender<FollowProgress>,
    last_report: Option<Instant>,
}

/// Whether the journal is full: `size` has reached `max` while transactions before `durable`
/// are not consumed yet (`keep_from`). Once full, it stays full until under 7/8 of `max` (or
/// everything is consumed), so a catch-up does not pause and resume at every flush. With
/// everything consumed it is never full: retention cannot shrink it further (it never deletes the
/// segment being written), so pausing would never end.
fn is_full(was_full: bool, size: u64, max: u64, keep_from: Lsn, durable: Lsn) -> bool {
    let resume_below = if was_full { max - max / 8 } else { max };
    keep_from < durable && size >= resume_below
}

/// Where a journal-full episode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Episode {
    None,
    Full,
    Draining,
}

impl State {
    fn run(&mut self, mut rx: mpsc::Receiver<Cmd>) -> Result<Lsn, JournalError> {
        self.observe();
        loop {
            let cmd = match rx.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Empty) => {
                    // The channel ran dry: make what completed durable before waiting.
                    if self.commit_pending.is_some() {
                        self.flush()?;
                    }
                    match rx.blocking_recv() {
                        Some(cmd) => cmd,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match cmd {
                Cmd::Append { lsn, payload } => self.append(lsn, &payload)?,
                Cmd::Idle(at) => {
                    self.flush()?;
                    self.idle_tx.send_replace(at);
                }
                Cmd::Retain(keep_from) => self.retain(keep_from)?,
            }
        }
        // The stream stopped: a transaction it was in the middle of is streamed again next time.
        self.journal.abandon_partial()?;
        self.flush()
    }

    fn append(&mut self, lsn: Lsn, payload: &Bytes) -> Result<(), JournalError> {
        self.journal.append(lsn, payload)?;
        if payload.first() == Some(&b'C') {
            self.commit_pending.get_or_insert_with(Instant::now);
        }
        let pending = self.journal.pending_bytes();
        let max = self.config.max_bytes;
        // Crossing the limit: flush now, so that the stream task learns at once.
        let crossing = !self.full && self.flushed_size < max && self.flushed_size + pending >= max;
        if crossing
            || pending >= GROUP_BYTES
            || self
                .commit_pending
                .is_some_and(|t| t.elapsed() >= GROUP_WAIT)
        {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<Lsn, JournalError> {
        self.durable = self.journal.flush()?;
        self.commit_pending = None;
        self.observe();
        Ok(self.durable)
    }

    fn retain(&mut self, keep_from: Lsn) -> Result<(), JournalError> {
        if keep_from <= self.keep_from {
            return Ok(());
        }
        self.keep_from = keep_from;
        let retained = self
            .journal
            .retain(keep_from, Some(self.config.max_bytes / 2), None)?;
        if !retained.removed.is_empty() {
            tracing::debug!(
                removed = retained.removed.len(),
                size_bytes = retained.size_bytes,
                oldest = %retained.oldest,
                "journal retention"
            );
        }
        self.observe();
        Ok(())
    }

    /// Re-evaluate size and fullness after a flush or retention; publish and report them.
    fn observe(&mut self) {
        let size = self.handle.size_bytes();
        self.flushed_size = size;
        let max = self.config.max_bytes;
        let full = is_full(self.full, size, max, self.keep_from, self.durable);
        let changed = full != self.full;
        if changed {
            self.full = full;
            self.full_tx.send_replace(full);
            self.log_fullness(size);
        }
        if !full && self.roomy_since.is_some_and(|t| t.elapsed() >= EPISODE_END) {
            self.episode = Episode::None;
        }
        let oldest = self.handle.oldest_lsn();
        let durable = self.durable;
        self.progress.send_modify(|p| {
            p.journal = Some(JournalProgress {
                durable,
                oldest,
                size_bytes: size,
                full,
            })
        });
        if changed
            || self
                .last_report
                .is_none_or(|t| t.elapsed() >= REPORT_INTERVAL)
        {
            self.report(true);
        }
    }

    /// One warning when the journal fills up, one note when reading first resumes; while the
    /// standby catches up the journal may fill and drain again many times (debug only). The
    /// episode ends once the journal has had room for [`EPISODE_END`].
    fn log_fullness(&mut self, size: u64) {
        let max = self.config.max_bytes;
        let dir = self.config.dir.display();
        match (self.full, self.episode) {
            (true, Episode::None) => {
                self.episode = Episode::Full;
                tracing::warn!(
                    journal = %dir,
                    size_bytes = size,
                    max_bytes = max,
                    "the journal is full ({size} of {max} bytes, --journal-max-bytes) with \
                     transactions the standby has not applied: stopped reading the primary's \
                     stream, so the slot stops advancing and the primary retains WAL as it would \
                     without a journal; reading resumes by itself once the standby applies and \
                     retention frees space"
                );
            }
            (false, Episode::Full) => {
                self.episode = Episode::Draining;
                self.roomy_since = Some(Instant::now());
                tracing::info!(
                    journal = %dir,
                    size_bytes = size,
                    "the journal has room again: reading the primary's stream again (it may \
                     fill up again until the standby has caught up with it)"
                );
            }
            (full, _) => {
                self.roomy_since = (!full).then(Instant::now);
                tracing::debug!(journal = %dir, size_bytes = size, full, "journal fullness");
            }
        }
    }

    fn report(&mut self, running: bool) {
        self.last_report = Some(Instant::now());
        let report = JournalReport {
            pid: std::process::id(),
            updated_unix_ms: report::unix_ms(SystemTime::now()),
            durable_lsn: self.durable,
            oldest_lsn: self.handle.oldest_lsn(),
            size_bytes: self.flushed_size,
            max_bytes: self.config.max_bytes,
            full: self.full,
            ack: match self.config.ack {
                Ack::Journal => "journal",
                Ack::Applied => "applied",
            }
            .to_string(),
            running,
        };
        if let Err(e) = report::write(&self.config.dir, &report) {
            tracing::debug!("could not write the journal report: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fullness_table() {
        let (a, b) = (Lsn(100), Lsn(200));
        // (was full, size, keep_from, durable) -> full, with max 800
        let table = [
            (false, 799, a, b, false),
            (false, 800, a, b, true),
            (false, 900, b, b, false), // everything consumed: never full
            (true, 900, b, b, false),
            (true, 750, a, b, true), // hysteresis: stays full above 7/8
            (true, 700, a, b, true),
            (true, 699, a, b, false),
            (false, 750, a, b, false),
        ];
        for (was, size, keep, durable, want) in table {
            assert_eq!(
                is_full(was, size, 800, keep, durable),
                want,
                "was_full {was}, size {size}, keep_from {keep}, durable {durable}"
            );
        }
    }
}
