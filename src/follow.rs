//! `understudy follow`: stream the primary's changes into the standby, for ever or up to an LSN.
//!
//! Without a journal (`source`), two tasks joined by a bounded channel (its capacity is the
//! backpressure):
//! * the **source** owns the replication connection: it reads XLogData and keepalives, decodes
//!   pgoutput, queues messages for the dispatcher, and sends status updates;
//! * the **dispatcher** ([`crate::apply::Applier`]) applies them to the standby and publishes the
//!   applied LSN on a watch channel.
//!
//! Acknowledgement discipline (guarantee 4): `flush` and `apply` in every status update are the
//! dispatcher's applied LSN, which is recorded in `understudy.progress` in the same standby
//! transaction as the changes. When idle, the keepalive's WAL end is first recorded on the
//! standby and then acknowledged, so the slot advances on a quiet primary and the acknowledged
//! position still never passes what the standby records. Keepalives that request a reply are
//! answered at once. `0/0` is never reported: the stream always starts from a recorded LSN.
//!
//! Failures: transient ones (connection lost, primary restarting, slot busy) are retried with
//! backoff from the standby's recorded LSN; definite ones stop with what to do.
//!
//! With a journal (`--journal DIR`, [`JournalFollow`]), the stream goes to the durable journal
//! first and the dispatcher applies from there, so the primary's slot can advance while the
//! standby database is down: see `journaled` for the tasks, their failure handling and the
//! acknowledgement rules ([`Ack`]).
//! See <https://www.postgresql.org/docs/15/protocol-replication.html>.

mod dispatch;
mod journaled;
pub mod outputs;
mod report;
mod sequences;
mod source;
mod stream;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;

use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::state::{self, SourceState};

pub use report::{JournalReport, REPORT_FILE};
pub use sequences::sync_sequences;

/// Default for [`JournalFollow::max_bytes`]: 1 GiB.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 1 << 30;

/// When `follow` stops by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// Never: follow until interrupted.
    Never,
    /// Once everything that committed before this LSN is applied and acknowledged.
    Lsn(Lsn),
    /// Once everything that committed before the primary's WAL position at start is applied.
    CaughtUp,
}

/// What `follow` needs.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    pub primary: ConnInfo,
    pub standby: ConnInfo,
    pub stop_at: StopAt,
    /// `application_name` on the primary (what `synchronous_standby_names` would list).
    pub application_name: String,
    /// How often sequences are brought forward on the standby.
    pub sequence_interval: Duration,
    /// Give up after this many consecutive transient failures (`None`: never).
    pub max_retries: Option<u32>,
    /// Stream through a durable journal (`None`: straight into the standby, acknowledging what
    /// it applied).
    pub journal: Option<JournalFollow>,
}

/// What the flush position acknowledged to the primary stands for (guarantee 4: never more than
/// is durable on our side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Durable in the journal or applied on the standby, whichever is further: the slot advances
    /// while the standby database is down.
    Journal,
    /// Applied and committed on the standby, as without a journal.
    Applied,
}

/// Following through a durable journal.
#[derive(Clone)]
pub struct JournalFollow {
    pub dir: PathBuf,
    pub ack: Ack,
    /// When the journal reaches this size with unapplied transactions in it, follow stops reading
    /// the stream (and so stops acknowledging more) until retention frees space.
    pub max_bytes: u64,
    /// Other consumers' cursors (the sinks': the minimum of them): retention keeps every
    /// transaction from the lower of this and the applied position. `None`: applied alone.
    pub keep_from: Option<watch::Receiver<Lsn>>,
    /// Gets the open journal's handle, for readers in the same process (sinks, the message
    /// stream); `None` while it is closed (before it opens, after follow stops, and between a
    /// journal failure and its reopening).
    pub handle: Option<Arc<watch::Sender<Option<JournalHandle>>>>,
}

impl JournalFollow {
    pub fn new(dir: impl Into<PathBuf>) -> JournalFollow {
        JournalFollow {
            dir: dir.into(),
            ack: Ack::Journal,
            max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            keep_from: None,
            handle: None,
        }
    }
}

impl std::fmt::Debug for JournalFollow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalFollow")
            .field("dir", &self.dir)
            .field("ack", &self.ack)
            .field("max_bytes", &self.max_bytes)
            .field("keep_from", &self.keep_from)
            .field("handle", &self.handle.is_some())
            .finish()
    }
}

impl FollowOptions {
    pub fn new(primary: ConnInfo, standby: ConnInfo) -> FollowOptions {
        FollowOptions {
            primary,
            standby,
            stop_at: StopAt::Never,
            application_name: "understudy".to_string(),
            sequence_interval: Duration::from_secs(10),
            max_retries: None,
            journal: None,
        }
    }
}

/// Live counters, shared with whoever watches (the demo, status output).
#[derive(Clone, Copy, Debug, Default)]
pub struct FollowProgress {
    pub applied: Lsn,
    pub received: Lsn,
    pub transactions: u64,
    pub rows: u64,
    /// The journal's state, when following through one.
    pub journal: Option<JournalProgress>,
}

/// The journal as the follower last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalProgress {
    /// Every transaction committing before this LSN is fsynced in the journal.
    pub durable: Lsn,
    /// The journal holds every transaction committing at or after this LSN.
    pub oldest: Lsn,
    pub size_bytes: u64,
    /// Reading from the primary is paused until retention frees space.
    pub full: bool,
}

/// How a follow run ended.
#[derive(Clone, Copy, Debug)]
pub struct FollowSummary {
    pub applied: Lsn,
    pub transactions: u64,
    pub rows: u64,
}

/// A failure, classified.
#[derive(Debug)]
pub(crate) enum Failure {
    Transient(anyhow::Error),
    Definite(anyhow::Error),
}

impl Failure {
    pub(crate) fn definite(e: impl Into<anyhow::Error>) -> Failure {
        Failure::Definite(e.into())
    }
}

/// Follow the primary until the stop condition holds or `shutdown` turns true.
pub async fn follow(
    options: &FollowOptions,
    mut shutdown: watch::Receiver<bool>,
    progress: Option<watch::Sender<FollowProgress>>,
) -> Result<FollowSummary> {
    let progress = progress.unwrap_or_else(|| watch::channel(FollowProgress::default()).0);
    let target = match options.stop_at {
        StopAt::Never => None,
        StopAt::Lsn(l) => Some(l),
        StopAt::CaughtUp => Some(primary_wal_position(&options.primary).await?),
    };
    if let Some(t) = target {
        tracing::info!(target_lsn = %t, "following until everything committed before {t} is applied");
    }
    let mut failures = 0u32;
    let mut totals = FollowSummary {
        applied: Lsn::ZERO,
        transactions: 0,
        rows: 0,
    };
    loop {
        let run = match &options.journal {
            None => source::run(options, target, &mut shutdown, &progress).await,
            Some(journal) => journaled::run(options, journal, target, &shutdown, &progress).await,
        };
        match run {
            Ok(summary) => {
                totals.applied = summary.applied;
                totals.transactions += summary.transactions;
                totals.rows += summary.rows;
                if target.is_some() {
                    sync_sequences(&options.primary, &options.standby)
                        .await
                        .context("while bringing sequences forward at the end")?;
                }
                return Ok(totals);
            }
            Err(Failure::Definite(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                failures += 1;
                if options.max_retries.is_some_and(|m| failures > m) {
                    return Err(e.context(format!("gave up after {failures} attempts")));
                }
                let wait = backoff(failures);
                let from = if options.journal.is_some() {
                    "the journal and the standby's applied position"
                } else {
                    "the standby's last applied position"
                };
                tracing::warn!(
                    "{:#}; retrying in {:.1} s from {from}",
                    e,
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    bail!("interrupted while waiting to reconnect");
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << failures.min(6));
    Duration::from_millis(ms.min(10_000))
}

/// The primary's current WAL write position.
pub async fn primary_wal_position(primary: &ConnInfo) -> Result<Lsn> {
    let client = primary
        .connect("understudy")
        .await
        .context("while connecting to the primary")?;
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("while reading the primary's WAL position")?;
    let text: String = row.get(0);
    Ok(text.parse()?)
}

/// Read the standby's recorded state, refusing when bootstrap has not completed.
pub(crate) async fn standby_start(
    client: &tokio_postgres::Client,
    standby: &ConnInfo,
) -> Result<(state::Source, Lsn), Failure> {
    let source = state::read_source(client)
        .await
        .map_err(Failure::Transient)?
        .ok_or_else(|| {
            Failure::definite(anyhow!(
                "{} was never bootstrapped (no understudy.source row): run `understudy bootstrap` first",
                standby.redacted()
            ))
        })?;
    if source.state != SourceState::Ready {
        return Err(Failure::definite(anyhow!(
            "the bootstrap of {} started at {} did not finish, so the standby is incomplete: run \
             `understudy bootstrap --force` to copy it again",
            standby.redacted(),
            source.started_at
        )));
    }
    let progress = state::read_progress(client)
        .await
        .map_err(Failure::Transient)?
        .ok_or_else(|| {
            Failure::definite(anyhow!(
                "understudy.progress on {} is empty: run `understudy bootstrap --force`",
                standby.redacted()
            ))
        })?;
    Ok((source, progress.applied_lsn))
}
