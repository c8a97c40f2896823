//! The durable journal: the primary's pgoutput messages, as received, in commit order, in
//! append-only segment files, so that everything downstream (apply, translation to mutation
//! messages, sinks, `replay`) can be derived again from it.
//!
//! What it owns: the journal directory, the writer ([`Journal`]: append, group-commit flush,
//! recovery at open, retention) and the readers ([`JournalReader`], from any handle).
//!
//! # On disk
//!
//! The directory holds a `LOCK` file (one writer per directory, `flock`ed) and segment files
//! named by the first commit LSN they hold, as 16 hex digits: `0000000001A2B3C4.seg`. Every record
//! is framed as
//!
//! ```text
//! [u32 length][u32 crc32c][u8 kind][u64 lsn][payload]        little-endian
//!  length = 9 + payload length (the bytes after the CRC); the CRC32C covers those same bytes
//! ```
//!
//! and a segment is
//!
//! ```text
//! Segment  lsn = complete_from, payload "understudy journal segment v1"
//! Context* a Type or Relation message in force at the segment's start (types first), as received
//! Sync     ends the head (fsynced with the directory entry before anything else is written)
//! then transactions: Message(Begin) Message* Message(Commit), with Sync markers anywhere
//! ```
//!
//! `Message` records hold one pgoutput message each, `lsn` the WAL position it was sent at.
//! `complete_from` is the end LSN of the transaction before the segment (for the first segment,
//! the `start` given when the journal was created): the journal holds every transaction that
//! commits at or after the first segment's `complete_from` ([`Journal::oldest_lsn`]). A `Sync`
//! record is written by each flush before its fsync and holds the segment length an *earlier*
//! fsync had completed; it is what tells damage from a torn write (below).
//!
//! # Invariants
//!
//! * Transactions are written in commit order, each whole, record by record: memory does not
//!   grow with transaction size (guarantee 5). A Begin whose commit LSN is below the last
//!   journaled transaction's end is a resend and is skipped whole; a Begin while a transaction is
//!   open means the stream restarted, and the partial transaction is cut off first.
//! * A segment rolls only at a transaction boundary (when a Begin arrives and the segment has
//!   reached [`JournalOptions::segment_bytes`]), so no transaction spans two segments; the new
//!   segment re-emits the Relation and Type messages in force, so a reader can start in any
//!   segment. A segment still without a transaction (recovery cut its only one) is renamed after
//!   the first transaction it then receives, so names stay first commit LSNs.
//! * Only transactions are stored: a message outside Begin…Commit is
//!   [`JournalError::OutsideTransaction`]; a Commit must match its Begin.
//! * [`Journal::flush`] fsyncs and returns the durable position: the end LSN of the last complete
//!   transaction written. Readers never read past the durable byte position of the active
//!   segment, which is always a transaction boundary, so a reader yields only whole transactions
//!   (guarantee 4: the caller may acknowledge this LSN to the primary).
//! * Recovery at open scans the last segment. A damaged record there is *torn* unless a later
//!   valid `Sync` marker proves an fsync had covered it: a torn tail and any incomplete trailing
//!   transaction are cut off (the file is truncated) and [`Recovery::durable`] says where to
//!   resume streaming. Proven damage, or any damage a reader meets in a closed segment, is
//!   [`JournalError::Corrupt`] with the segment, the offset and what to do (guarantee 8). A
//!   segment whose head never became whole (a crash inside a roll) is removed.
//! * Retention deletes whole segments, oldest first, and only those whose every transaction ends
//!   at or before the caller's `keep_from`; size and age limits act only inside that bound.
//!
//! Limits: a damaged byte in the last fsync window of the last segment has no later proof, so it
//! is taken for a torn write and cut off even if it had been acknowledged; the caller should check
//! the slot's `confirmed_flush_lsn` against [`Recovery::durable`] before streaming. Segments older
//! than the last are indexed only when written by this process: a reader starting in one scans it
//! from its start.
//!
//! All I/O here is blocking: call it from a dedicated thread or `spawn_blocking`, and wait for new
//! data with [`JournalHandle::subscribe`]. PostgreSQL behaviour relied on: pgoutput sends a
//! Relation (and the Types it uses) inside the transaction that first uses it in a session and
//! again after it changes, and Commit's `commit_lsn` equals Begin's `final_lsn`
//! (<https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::decode::{self, DecodeError, Message};
use crate::lsn::Lsn;

mod open;
mod reader;
mod record;
mod segment;
mod writer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use open::Recovery;
pub use reader::{JournalReader, JournalTxn};
pub use writer::{Journal, Retained};

/// How the journal is laid out; the defaults suit a production follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// A segment rolls at the first transaction boundary after it reaches this size.
    pub segment_bytes: u64,
    /// One sparse-index entry (commit LSN → offset) per this many records.
    pub index_every: u32,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 * 1024 * 1024,
            index_every: 1024,
        }
    }
}

/// One pgoutput message as the primary sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalMessage {
    /// The WAL position it was sent at (XLogData's start).
    pub lsn: Lsn,
    /// The pgoutput message bytes, for [`crate::decode::parse`].
    pub payload: Bytes,
}

impl JournalMessage {
    pub fn new(lsn: Lsn, payload: Bytes) -> Self {
        JournalMessage { lsn, payload }
    }

    /// Decodes the message.
    pub fn decode(&self) -> Result<Message, DecodeError> {
        decode::parse(&self.payload)
    }
}

/// The journal failed. Each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "could not {action} {} (check that the journal's disk is mounted, writable and not \
         full, then restart; streaming resumes from the journal's durable position)",
        path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "journal segment {} is corrupt at byte offset {offset}: {reason}; move the journal \
         directory aside and run `understudy bootstrap --force`, or `understudy replay` up to \
         the LSN before it",
        segment.display()
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "LSN {requested} is older than the journal keeps (the oldest available is {oldest}); \
         replay from {oldest} or later, or bootstrap the standby again with \
         `understudy bootstrap --force`"
    )]
    TooOld { requested: Lsn, oldest: Lsn },
    #[error(
        "journal directory {} is in use by another process; stop the other understudy, or \
         give this one its own --journal directory",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error(
        "pgoutput message '{tag}' at {lsn} arrived outside a transaction; the journal stores \
         whole transactions only: start replication without the `messages` option"
    )]
    OutsideTransaction { tag: char, lsn: Lsn },
    #[error(
        "pgoutput Commit at {lsn} closes the transaction committing at {got}, but the open one \
         commits at {expected}; the stream is inconsistent: restart streaming from the journal's \
         durable position"
    )]
    CommitMismatch { lsn: Lsn, got: Lsn, expected: Lsn },
    #[error(
        "the pgoutput message at {lsn} cannot be journaled (restart streaming from the \
         journal's durable position; if it recurs, report it with the message bytes)"
    )]
    BadMessage {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error(
        "the journal writer stopped after an earlier I/O error; reopen the journal (restart \
         understudy) to recover from its durable position"
    )]
    Failed,
}

impl JournalError {
    /// Whether retrying (after reopening the journal) may succeed: I/O can; the rest cannot
    /// without an operator or a different stream.
    pub fn is_transient(&self) -> bool {
        matches!(self, JournalError::Io { .. } | JournalError::Failed)
    }

    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        JournalError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A cheap, cloneable view of a journal for readers and status, usable from any thread.
#[derive(Clone)]
pub struct JournalHandle {
    shared: Arc<segment::Shared>,
}

impl JournalHandle {
    /// The end LSN of the last transaction made durable by a flush.
    pub fn durable(&self) -> Lsn {
        *self.shared.durable.borrow()
    }

    /// Changes whenever the durable position advances; await it to tail the journal.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.shared.durable.subscribe()
    }

    /// The journal holds every transaction that commits at or after this LSN.
    pub fn oldest_lsn(&self) -> Lsn {
        self.shared.lock().oldest()
    }

    /// Bytes in the segment files, as of the last flush.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().segments.iter().map(|s| s.size).sum()
    }

    /// Whether the journal has reached `max_bytes`: the caller then stops acknowledging.
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.size_bytes() >= max_bytes
    }
}
