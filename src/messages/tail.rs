//! [`Tail`]: batches of applied transactions for sinks and the stream, or of every transaction
//! up to an LSN for `replay`, waiting for the journal and the standby as needed.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Batch, Cursor, MessageReader, MessagesError};
use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::translate::Rules;

/// How a [`Tail`] treats the journal's end and the standby's progress.
#[derive(Clone)]
pub enum TailMode {
    /// Sinks and the stream: only transactions the standby has applied, waiting for more.
    Live { applied: watch::Receiver<Lsn> },
    /// `replay`: every transaction up to `to` (commit LSN, inclusive) or the journal's durable
    /// end, whatever the standby has applied, then the end.
    Replay { to: Option<Lsn> },
}

/// Batches from a cursor on, as sinks and the stream consume them; see the module docs.
pub struct Tail {
    reader: MessageReader,
    durable: watch::Receiver<Lsn>,
    mode: TailMode,
    /// Read but not handed out yet (its transaction is not applied yet).
    held: Option<Batch>,
    /// A request to the reader is out (its call may have been cancelled): the durable position
    /// it was asked at is the one marked seen.
    asking: bool,
    ended: bool,
}

impl Tail {
    /// Opens a reader after `after` on a blocking thread.
    pub async fn open(
        journal: &JournalHandle,
        after: Cursor,
        rules: Arc<Rules>,
        mode: TailMode,
    ) -> Result<Tail, MessagesError> {
        let durable = journal.subscribe();
        let journal = journal.clone();
        let reader =
            tokio::task::spawn_blocking(move || MessageReader::open_after(&journal, after, rules))
                .await
                .map_err(|_| MessagesError::ReaderStopped)??;
        Ok(Tail {
            reader,
            durable,
            mode,
            held: None,
            asking: false,
            ended: false,
        })
    }

    /// The next batch ready now (durable and, live, applied), or `None` if there is none yet.
    /// Cancel-safe.
    pub async fn ready(&mut self, max: usize) -> Result<Option<Batch>, MessagesError> {
        if self.ended {
            return Ok(None);
        }
        if self.held.is_none() {
            if !self.asking {
                self.durable.borrow_and_update();
                self.asking = true;
            }
            let answer = self.reader.next_batch_async(max).await;
            self.asking = false;
            self.held = answer?;
        }
        let Some(batch) = &self.held else {
            return Ok(None);
        };
        let ready = match &mut self.mode {
            TailMode::Live { applied } => batch.is_applied(*applied.borrow_and_update()),
            TailMode::Replay { to } => {
                if to.is_some_and(|to| batch.commit_lsn > to) {
                    self.ended = true;
                    self.held = None;
                    return Ok(None);
                }
                true
            }
        };
        Ok(if ready { self.held.take() } else { None })
    }

    /// The next batch, waiting until one is durable and (live) applied; `None` at the end of a
    /// replay (never when live). Cancel-safe.
    pub async fn next(&mut self, max: usize) -> Result<Option<Batch>, MessagesError> {
        loop {
            if let Some(batch) = self.ready(max).await? {
                return Ok(Some(batch));
            }
            if self.ended {
                return Ok(None);
            }
            match (&mut self.mode, self.held.is_some()) {
                (TailMode::Live { applied }, true) => applied
                    .changed()
                    .await
                    .map_err(|_| MessagesError::AppliedClosed)?,
                (TailMode::Live { .. }, false) => self
                    .durable
                    .changed()
                    .await
                    .map_err(|_| MessagesError::JournalClosed)?,
                (TailMode::Replay { .. }, _) => {
                    self.ended = true;
                    return Ok(None);
                }
            }
        }
    }
}
