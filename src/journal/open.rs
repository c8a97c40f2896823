//! Opening a journal: the lock, the recovery scan of the last segment, the shared state.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{Kind, Next, RecordReader};
use super::segment::{self, Context, SegmentInfo, Shared, State, MAGIC};
use super::writer::{Active, Txn, WRITE_BUFFER};
use super::{Journal, JournalError, JournalOptions};
use crate::lsn::Lsn;

/// What recovery at open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The end LSN of the last complete transaction kept (or the journal's start): restart
    /// streaming from here; the primary resends whatever was cut off.
    pub durable: Lsn,
    /// Bytes cut off the end of the last segment (a torn record, an incomplete transaction).
    pub truncated_bytes: u64,
    /// Segments removed because their creation never completed.
    pub removed: Vec<PathBuf>,
    /// Segment files kept.
    pub segments: usize,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and recovers it. `start` is where an empty
    /// journal begins: it will hold every transaction committing at or after it.
    pub fn open(
        dir: impl AsRef<Path>,
        start: Lsn,
        opts: JournalOptions,
    ) -> Result<Self, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| JournalError::io("create", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| JournalError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(TryLockError::Error(e)) => return Err(JournalError::io("lock", &lock_path, e)),
        }
        let mut found = segment::list(&dir)?;
        let mut recovery = Recovery::default();
        let mut last = None;
        while let Some((first_commit, path)) = found.pop() {
            let scan = segment::scan(&path, opts.index_every)?;
            let Some(complete_from) = scan.complete_from else {
                tracing::warn!(segment = %path.display(), "removing a journal segment whose creation never completed");
                fs::remove_file(&path).map_err(|e| JournalError::io("remove", &path, e))?;
                segment::sync_dir(&dir)?;
                recovery.removed.push(path);
                continue;
            };
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| JournalError::io("open", &path, e))?;
            if scan.clean_len < scan.file_len {
                recovery.truncated_bytes = scan.file_len - scan.clean_len;
                tracing::warn!(segment = %path.display(), bytes = recovery.truncated_bytes,
                    "cutting an incomplete transaction off the journal's end");
                file.set_len(scan.clean_len)
                    .map_err(|e| JournalError::io("truncate", &path, e))?;
            }
            // What survived may sit in the page cache only (a process crash): make it durable.
            file.sync_data()
                .map_err(|e| JournalError::io("fsync", &path, e))?;
            last = Some((first_commit, path, file, complete_from, scan));
            break;
        }
        let mut segments = Vec::new();
        for (seq, (first_commit, path)) in found.into_iter().enumerate() {
            segments.push(closed_segment(seq as u64, first_commit, path)?);
        }
        let mut journal = Journal {
            dir,
            opts,
            shared: Arc::new(Shared::new(
                State {
                    start,
                    segments: Vec::new(),
                    next_seq: 0,
                },
                start,
            )),
            _lock: lock,
            active: None,
            txn: Txn::Idle,
            context: Context::default(),
            last_end: start,
            durable: start,
            failed: false,
            recovery,
        };
        if let Some((first_commit, path, mut file, complete_from, scan)) = last {
            let seq = segments.len() as u64;
            file.seek(SeekFrom::Start(scan.clean_len))
                .map_err(|e| JournalError::io("seek", &path, e))?;
            segments.push(SegmentInfo {
                seq,
                first_commit,
                complete_from,
                path: path.clone(),
                readable_len: scan.clean_len,
                size: scan.clean_len,
                closed: false,
                closed_at: None,
                index: Some(scan.index),
            });
            journal.context = scan.context;
            journal.last_end = scan.last.map_or(complete_from, |(_, end)| end);
            journal.active = Some(Active {
                seq,
                first_commit,
                path,
                out: BufWriter::with_capacity(WRITE_BUFFER, file),
                len: scan.clean_len,
                clean_len: scan.clean_len,
                synced_len: scan.clean_len,
                since_index: scan.since_index,
                has_txn: scan.transactions > 0,
            });
        }
        journal.durable = journal.last_end;
        journal.recovery.durable = journal.last_end;
        journal.recovery.segments = segments.len();
        let next_seq = segments.len() as u64;
        *journal.shared.lock() = State {
            start,
            segments,
            next_seq,
        };
        journal.shared.durable.send_replace(journal.durable);
        Ok(journal)
    }

    /// What recovery at open found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }
}

/// A segment before the last: closed, found at open; only its header is read.
fn closed_segment(seq: u64, first_commit: Lsn, path: PathBuf) -> Result<SegmentInfo, JournalError> {
    let file = File::open(&path).map_err(|e| JournalError::io("open", &path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| JournalError::io("stat", &path, e))?;
    let mut rr = RecordReader::new(file, 0, meta.len());
    let complete_from = match rr.next().map_err(|e| JournalError::io("read", &path, e))? {
        Next::Record(r) if r.kind == Kind::Segment && r.payload == MAGIC => r.lsn,
        _ => {
            return Err(JournalError::Corrupt {
                segment: path,
                offset: 0,
                reason: "the segment header is damaged or not understudy's".into(),
            })
        }
    };
    Ok(SegmentInfo {
        seq,
        first_commit,
        complete_from,
        path,
        readable_len: meta.len(),
        size: meta.len(),
        closed: true,
        closed_at: meta.modified().ok(),
        index: None,
    })
}
