//! The writer: append record by record, group-commit flush, segment rolls, retention.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::mem;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::open::Recovery;
use super::record::{self, Kind, MAX_PAYLOAD};
use super::segment::{self, Context, PendingContext, SegmentInfo, Shared, SparseIndex};
use super::{JournalError, JournalHandle, JournalMessage, JournalOptions};
use crate::decode::{self, DecodeError, Message};
use crate::lsn::Lsn;

pub(super) const WRITE_BUFFER: usize = 256 * 1024;

/// What [`Journal::retain`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    pub removed: Vec<PathBuf>,
    pub size_bytes: u64,
    pub oldest: Lsn,
}

/// The segment being written.
pub(super) struct Active {
    pub(super) seq: u64,
    pub(super) first_commit: Lsn,
    pub(super) path: PathBuf,
    pub(super) out: BufWriter<File>,
    /// Bytes written, buffered ones included.
    pub(super) len: u64,
    /// End of the last complete transaction (or of the head).
    pub(super) clean_len: u64,
    /// Length covered by the last completed fsync.
    pub(super) synced_len: u64,
    pub(super) since_index: u32,
    pub(super) has_txn: bool,
}

impl Active {
    fn write(&mut self, kind: Kind, lsn: Lsn, payload: &[u8]) -> Result<(), JournalError> {
        self.out
            .write_all(&record::header(kind, lsn, payload))
            .and_then(|_| self.out.write_all(payload))
            .map_err(|e| JournalError::io("write", &self.path, e))?;
        self.len += (record::HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .map_err(|e| JournalError::io("fsync", &self.path, e))
    }
}

pub(super) enum Txn {
    Idle,
    Open {
        commit_lsn: Lsn,
        begin_at: u64,
        indexed: bool,
        /// Relation/Type messages seen: (offset, key, message), entered at Commit.
        context: PendingContext,
    },
    /// A resent transaction already journaled.
    Skipping,
}

/// The journal writer. One per directory (a lock file enforces it).
pub struct Journal {
    pub(super) dir: PathBuf,
    pub(super) opts: JournalOptions,
    pub(super) shared: Arc<Shared>,
    pub(super) _lock: File,
    pub(super) active: Option<Active>,
    pub(super) txn: Txn,
    /// Relation and Type messages in force after the last complete transaction.
    pub(super) context: Context,
    /// End LSN of the last complete transaction (or the journal's start).
    pub(super) last_end: Lsn,
    pub(super) durable: Lsn,
    pub(super) failed: bool,
    pub(super) recovery: Recovery,
}

impl Journal {
    /// A handle for readers and status, usable from other threads.
    pub fn handle(&self) -> JournalHandle {
        JournalHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Appends one pgoutput message received at `lsn`. Written through a fixed-size buffer:
    /// nothing is durable until [`Journal::flush`].
    pub fn append(&mut self, lsn: Lsn, payload: &Bytes) -> Result<(), JournalError> {
        if self.failed {
            return Err(JournalError::Failed);
        }
        let result = self.append_inner(lsn, payload);
        self.failed = matches!(result, Err(JournalError::Io { .. }));
        result
    }

    fn append_inner(&mut self, lsn: Lsn, payload: &Bytes) -> Result<(), JournalError> {
        let bad = |source| JournalError::BadMessage { lsn, source };
        let Some(&tag) = payload.first() else {
            return Err(bad(DecodeError::Empty));
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(bad(DecodeError::Invalid {
                message: "any",
                offset: 0,
                field: "length",
                problem: format!(
                    "{} bytes is more than a pgoutput message can be",
                    payload.len()
                ),
            }));
        }
        match (tag, &mut self.txn) {
            (b'B', _) => {
                let Message::Begin(begin) = decode::parse(payload).map_err(bad)? else {
                    unreachable!("tag B decodes to Begin");
                };
                if let Txn::Open { .. } = self.txn {
                    tracing::warn!(%lsn, "a new transaction began inside another: the stream restarted; dropping the partial one");
                    self.abandon_partial()?;
                }
                if begin.final_lsn < self.last_end {
                    tracing::debug!(commit_lsn = %begin.final_lsn, "skipping a resent transaction already journaled");
                    self.txn = Txn::Skipping;
                    return Ok(());
                }
                let index_every = self.opts.index_every;
                let a = self.segment_for(begin.final_lsn)?;
                a.since_index += 1;
                let indexed = a.since_index > index_every;
                if indexed {
                    a.since_index = 1;
                }
                let begin_at = a.len;
                a.write(Kind::Message, lsn, payload)?;
                self.txn = Txn::Open {
                    commit_lsn: begin.final_lsn,
                    begin_at,
                    indexed,
                    context: Vec::new(),
                };
            }
            (b'C', Txn::Skipping) => self.txn = Txn::Idle,
            (b'C', Txn::Open { commit_lsn, .. }) => {
                let Message::Commit(commit) = decode::parse(payload).map_err(bad)? else {
                    unreachable!("tag C decodes to Commit");
                };
                if commit.commit_lsn != *commit_lsn {
                    return Err(JournalError::CommitMismatch {
                        lsn,
                        got: commit.commit_lsn,
                        expected: *commit_lsn,
                    });
                }
                let Some(a) = self.active.as_mut() else {
                    unreachable!("an open transaction has a segment")
                };
                a.write(Kind::Message, lsn, payload)?;
                a.since_index += 1;
                a.clean_len = a.len;
                a.has_txn = true;
                self.last_end = commit.end_lsn;
                let Txn::Open {
                    begin_at,
                    indexed,
                    context,
                    ..
                } = mem::replace(&mut self.txn, Txn::Idle)
                else {
                    unreachable!("matched Open above");
                };
                if indexed || !context.is_empty() {
                    let mut st = self.shared.lock();
                    if let Some(index) = st
                        .by_seq(a.seq)
                        .map(|s| s.index.get_or_insert_with(SparseIndex::default))
                    {
                        if indexed {
                            index.entries.push((commit.commit_lsn, begin_at));
                        }
                        index
                            .context
                            .extend(context.iter().map(|(offset, _, _)| *offset));
                    }
                }
                for (_, key, message) in context {
                    self.context.insert(key, message);
                }
            }
            (_, Txn::Idle) => {
                return Err(JournalError::OutsideTransaction {
                    tag: tag as char,
                    lsn,
                })
            }
            (_, Txn::Skipping) => {}
            (_, Txn::Open { context, .. }) => {
                let Some(a) = self.active.as_mut() else {
                    unreachable!("an open transaction has a segment")
                };
                if let Some(key) = Context::key_of(payload).map_err(bad)? {
                    context.push((a.len, key, JournalMessage::new(lsn, payload.clone())));
                }
                a.write(Kind::Message, lsn, payload)?;
                a.since_index += 1;
            }
        }
        Ok(())
    }

    /// The segment the transaction committing at `commit_lsn` goes to: rolls when the active one
    /// is full, names an empty one after its first transaction.
    fn segment_for(&mut self, commit_lsn: Lsn) -> Result<&mut Active, JournalError> {
        let roll = self
            .active
            .as_ref()
            .is_none_or(|a| a.has_txn && a.len >= self.opts.segment_bytes);
        if roll {
            self.roll(commit_lsn)?;
        } else if let Some(a) = self
            .active
            .as_mut()
            .filter(|a| !a.has_txn && a.first_commit != commit_lsn)
        {
            let path = self.dir.join(segment::file_name(commit_lsn));
            fs::rename(&a.path, &path).map_err(|e| JournalError::io("rename", &a.path, e))?;
            segment::sync_dir(&self.dir)?;
            if let Some(info) = self.shared.lock().by_seq(a.seq) {
                info.first_commit = commit_lsn;
                info.path = path.clone();
            }
            a.first_commit = commit_lsn;
            a.path = path;
        }
        let Some(a) = self.active.as_mut() else {
            unreachable!("a segment was just made")
        };
        Ok(a)
    }

    /// Closes the active segment (fsynced) and starts one whose first commit is `first_commit`.
    fn roll(&mut self, first_commit: Lsn) -> Result<(), JournalError> {
        if let Some(mut a) = self.active.take() {
            a.sync()?;
            {
                let mut st = self.shared.lock();
                if let Some(info) = st.by_seq(a.seq) {
                    info.closed = true;
                    info.closed_at = Some(SystemTime::now());
                    info.readable_len = a.len;
                    info.size = a.len;
                }
            }
            self.publish_durable();
        }
        let (file, path, len) =
            segment::create(&self.dir, first_commit, self.last_end, &self.context)?;
        let mut st = self.shared.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.segments.push(SegmentInfo {
            seq,
            first_commit,
            complete_from: self.last_end,
            path: path.clone(),
            readable_len: len,
            size: len,
            closed: false,
            closed_at: None,
            index: Some(SparseIndex::default()),
        });
        self.active = Some(Active {
            seq,
            first_commit,
            path,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            len,
            clean_len: len,
            synced_len: len,
            since_index: 0,
            has_txn: false,
        });
        Ok(())
    }

    fn publish_durable(&mut self) {
        self.durable = self.last_end;
        self.shared.durable.send_if_modified(|d| {
            let advanced = *d < self.durable;
            *d = (*d).max(self.durable);
            advanced
        });
    }

    /// Makes everything appended so far durable (fsync) and returns the durable position: the
    /// end LSN of the last complete transaction. Cheap when nothing is pending.
    pub fn flush(&mut self) -> Result<Lsn, JournalError> {
        if self.failed {
            return Err(JournalError::Failed);
        }
        let last_end = self.last_end;
        let idle = !matches!(self.txn, Txn::Open { .. });
        let Some(a) = self.active.as_mut() else {
            return Ok(self.durable);
        };
        if a.len > a.synced_len {
            let marked = a.write(Kind::Sync, last_end, &record::sync_payload(a.synced_len));
            if idle {
                a.clean_len = a.len;
            }
            if let Err(e) = marked.and_then(|_| a.sync()) {
                self.failed = true;
                return Err(e);
            }
            a.synced_len = a.len;
        }
        if let Some(info) = self.shared.lock().by_seq(a.seq) {
            info.readable_len = a.clean_len;
            info.size = a.len;
        }
        self.publish_durable();
        Ok(self.durable)
    }

    /// Bytes appended since the last fsync: flush when this passes the batch size.
    pub fn pending_bytes(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.len - a.synced_len)
    }

    /// The position the last flush made durable.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Whether a transaction is being written (between its Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        matches!(self.txn, Txn::Open { .. })
    }

    /// Cuts off the transaction being written (the stream broke inside it); returns the bytes
    /// dropped. Appending a Begin does this by itself.
    pub fn abandon_partial(&mut self) -> Result<u64, JournalError> {
        if !matches!(mem::replace(&mut self.txn, Txn::Idle), Txn::Open { .. }) {
            return Ok(0);
        }
        let Some(a) = self.active.as_mut() else {
            return Ok(0);
        };
        let dropped = a.len - a.clean_len;
        let cut = a.clean_len;
        let truncated = a.out.flush().and_then(|_| {
            let f = a.out.get_ref();
            f.set_len(cut)?;
            f.sync_data()
        });
        let truncated = truncated.and_then(|_| a.out.seek(SeekFrom::Start(cut)).map(|_| ()));
        if let Err(e) = truncated {
            self.failed = true;
            return Err(JournalError::io("truncate", &a.path, e));
        }
        a.len = cut;
        a.synced_len = a.synced_len.min(cut);
        Ok(dropped)
    }

    /// Deletes old segments, oldest first: only segments whose every transaction ends at or
    /// before `keep_from` (the minimum of the applied position and every sink's cursor), and
    /// among those, when limits are given, only while the journal is over `max_bytes` or the
    /// segment was last written more than `max_age` ago (with no limit, all of them). The
    /// segment being written is never deleted.
    pub fn retain(
        &mut self,
        keep_from: Lsn,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> Result<Retained, JournalError> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        let (size_bytes, oldest) = {
            let mut st = self.shared.lock();
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            while let [first, next, ..] = st.segments.as_slice() {
                if next.complete_from > keep_from {
                    break;
                }
                let over_size = max_bytes.is_some_and(|m| total > m);
                let too_old = max_age.is_some_and(|age| {
                    first
                        .closed_at
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|d| d > age)
                });
                if (max_bytes.is_some() || max_age.is_some()) && !over_size && !too_old {
                    break;
                }
                total -= first.size;
                removed.push(st.segments.remove(0).path);
            }
            (total, st.oldest())
        };
        for path in &removed {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError::io("remove", path, e)),
            }
            tracing::info!(segment = %path.display(), "journal segment deleted by retention");
        }
        Ok(Retained {
            removed,
            size_bytes,
            oldest,
        })
    }

    /// Flushes and closes the journal, returning the durable position.
    pub fn close(mut self) -> Result<Lsn, JournalError> {
        self.flush()
    }

    pub fn oldest_lsn(&self) -> Lsn {
        self.handle().oldest_lsn()
    }

    pub fn size_bytes(&self) -> u64 {
        self.handle().size_bytes()
    }

    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.handle().is_full(max_bytes)
    }
}
