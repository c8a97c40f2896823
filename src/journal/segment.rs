//! Segment files: their names, the state writer and readers share, the relation context a
//! segment re-emits at its start, creating a segment, and the recovery scan of the last one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;

use super::record::{self, Kind, Next, Record, RecordReader};
use super::{JournalError, JournalMessage};
use crate::decode::{self, DecodeError, Message};
use crate::lsn::Lsn;

/// The payload of every segment's first record; a new format gets a new magic.
pub(super) const MAGIC: &[u8] = b"understudy journal segment v1";
const SUFFIX: &str = ".seg";

/// `0000000001A2B3C4.seg`: the first commit LSN the segment holds, 16 hex digits, so that names
/// sort as LSNs do.
pub(super) fn file_name(first_commit: Lsn) -> String {
    format!("{:016X}{SUFFIX}", first_commit.0)
}

fn parse_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

/// The segment files in `dir`, oldest first. Other files are left alone.
pub(super) fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io("list", dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("list", dir, e))?;
        if let Some(lsn) = entry.file_name().to_str().and_then(parse_file_name) {
            found.push((lsn, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("fsync the directory", dir, e))
}

/// Sparse index of one segment, in file order. Only complete transactions are entered.
#[derive(Debug, Default, Clone)]
pub(super) struct SparseIndex {
    /// (commit LSN, offset of its Begin record), one per `index_every` records.
    pub entries: Vec<(Lsn, u64)>,
    /// Offsets of the Relation and Type messages inside the segment's transactions, so a reader
    /// that seeks past them still learns the relations in force.
    pub context: Vec<u64>,
}

/// What writer and readers know about one segment.
#[derive(Debug)]
pub(super) struct SegmentInfo {
    /// Creation order in this process; readers move from `seq` to `seq + 1`.
    pub seq: u64,
    pub first_commit: Lsn,
    /// Every transaction committing at or after this LSN, up to the next segment, is here.
    pub complete_from: Lsn,
    pub path: PathBuf,
    /// Readers may read up to here: a transaction boundary made durable by an fsync.
    pub readable_len: u64,
    /// Bytes on disk as of the last flush.
    pub size: u64,
    /// No longer written to: readers go on to the next segment at its end.
    pub closed: bool,
    /// When its last byte was written (for retention by age); `None` while active.
    pub closed_at: Option<SystemTime>,
    /// `None` for segments not scanned since open: readers then scan from the start.
    pub index: Option<SparseIndex>,
}

/// The state shared by the writer and every reader.
#[derive(Debug)]
pub(super) struct State {
    /// When no segment exists: the position from which the journal is complete.
    pub start: Lsn,
    pub segments: Vec<SegmentInfo>,
    pub next_seq: u64,
}

impl State {
    /// The journal holds every transaction that commits at or after this LSN.
    pub fn oldest(&self) -> Lsn {
        self.segments
            .first()
            .map_or(self.start, |s| s.complete_from)
    }

    pub fn by_seq(&mut self, seq: u64) -> Option<&mut SegmentInfo> {
        self.segments.iter_mut().find(|s| s.seq == seq)
    }
}

pub(super) struct Shared {
    state: Mutex<State>,
    pub durable: watch::Sender<Lsn>,
}

impl Shared {
    pub fn new(state: State, durable: Lsn) -> Self {
        Shared {
            state: Mutex::new(state),
            durable: watch::Sender::new(durable),
        }
    }

    /// The lock is never held across I/O that can block for long, nor across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to read.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// (0 for Type, 1 for Relation, OID): the order types come before the relations using them.
pub(super) type ContextKey = (u8, u32);

/// Relation and Type messages of a transaction being read or written, with their offsets; they
/// enter the [`Context`] and the index at its Commit.
pub(super) type PendingContext = Vec<(u64, ContextKey, JournalMessage)>;

/// The Relation and Type messages in force at some point of the stream, by OID.
#[derive(Debug, Default, Clone)]
pub(super) struct Context {
    by_key: BTreeMap<ContextKey, JournalMessage>,
}

impl Context {
    /// The context key of a Relation or Type message, `None` for any other message.
    pub fn key_of(payload: &Bytes) -> Result<Option<ContextKey>, DecodeError> {
        match payload.first() {
            Some(b'R' | b'Y') => match decode::parse(payload)? {
                Message::Relation(r) => Ok(Some((1, r.id.0))),
                Message::Type(t) => Ok(Some((0, t.id))),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    pub fn insert(&mut self, key: ContextKey, message: JournalMessage) {
        self.by_key.insert(key, message);
    }

    /// Records `message` if it is a Relation or Type.
    pub fn observe(&mut self, message: &JournalMessage) -> Result<(), DecodeError> {
        if let Some(key) = Self::key_of(&message.payload)? {
            self.insert(key, message.clone());
        }
        Ok(())
    }

    pub fn messages(&self) -> impl Iterator<Item = &JournalMessage> {
        self.by_key.values()
    }
}

/// Creates a segment holding its header, `context` and a sync marker ending the head, fsynced with
/// its directory entry, so a segment whose head reads back whole was created completely.
pub(super) fn create(
    dir: &Path,
    first_commit: Lsn,
    complete_from: Lsn,
    context: &Context,
) -> Result<(File, PathBuf, u64), JournalError> {
    let path = dir.join(file_name(first_commit));
    let mut head = Vec::new();
    head.extend_from_slice(&record::header(Kind::Segment, complete_from, MAGIC));
    head.extend_from_slice(MAGIC);
    for m in context.messages() {
        head.extend_from_slice(&record::header(Kind::Context, m.lsn, &m.payload));
        head.extend_from_slice(&m.payload);
    }
    // Ends the head: a torn record before it means the roll never completed.
    let sync = record::sync_payload(0);
    head.extend_from_slice(&record::header(Kind::Sync, complete_from, &sync));
    head.extend_from_slice(&sync);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| JournalError::io("create", &path, e))?;
    file.write_all(&head)
        .and_then(|_| file.sync_data())
        .map_err(|e| JournalError::io("write", &path, e))?;
    sync_dir(dir)?;
    Ok((file, path, head.len() as u64))
}

/// What the recovery scan of a segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// `None` when the header or the re-emitted context is torn: the segment's creation never
    /// completed (a crash inside a roll), so it holds nothing.
    pub complete_from: Option<Lsn>,
    /// The relation context in force at `clean_len`.
    pub context: Context,
    /// End of the last complete transaction (or of the head when there is none), plus any sync
    /// markers after it: everything after is cut off.
    pub clean_len: u64,
    pub file_len: u64,
    pub transactions: u64,
    /// (commit LSN, end LSN) of the last complete transaction.
    pub last: Option<(Lsn, Lsn)>,
    pub index: SparseIndex,
    /// Records since the last index entry, at `clean_len`.
    pub since_index: u32,
}

/// Reads a whole segment, checking every record and the transaction structure. A damaged record
/// is [`JournalError::Corrupt`] when a later sync marker proves it had been fsynced; otherwise it
/// is a torn tail and the scan ends at the last complete transaction before it.
pub(super) fn scan(path: &Path, index_every: u32) -> Result<Scan, JournalError> {
    let file = File::open(path).map_err(|e| JournalError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| JournalError::io("stat", path, e))?
        .len();
    let check = file
        .try_clone()
        .map_err(|e| JournalError::io("open", path, e))?;
    let mut rr = RecordReader::new(file, 0, file_len);
    let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        reason,
    };
    let mut s = Scan {
        file_len,
        ..Scan::default()
    };
    let mut head_done = false;
    // The open transaction: (Begin offset, commit LSN, index entry?, context offsets, records).
    let mut open: Option<(u64, Lsn, bool, PendingContext)> = None;
    let mut since_index = 0u32;
    loop {
        let at = rr.offset();
        let r: Record = match rr.next().map_err(|e| JournalError::io("read", path, e))? {
            Next::Record(r) => r,
            Next::End => break,
            Next::Bad(reason) => {
                let durable = record::sync_proves_durable(&check, at + 1, file_len, at)
                    .map_err(|e| JournalError::io("read", path, e))?;
                if durable {
                    return Err(corrupt(at, reason.to_string()));
                }
                tracing::warn!(segment = %path.display(), offset = at, reason,
                    "journal segment ends in a torn record; cutting it off");
                break;
            }
        };
        match (r.kind, s.complete_from, head_done) {
            (Kind::Segment, None, false) if r.offset == 0 => {
                if r.payload != MAGIC {
                    return Err(corrupt(0, "the segment header is not understudy's".into()));
                }
                s.complete_from = Some(r.lsn);
                s.clean_len = r.end();
            }
            (Kind::Context, Some(_), false) => {
                let end = r.end();
                let m = JournalMessage::new(r.lsn, r.payload);
                s.context
                    .observe(&m)
                    .map_err(|e| corrupt(r.offset, format!("bad context record: {e}")))?;
                s.clean_len = end;
            }
            (Kind::Sync, Some(_), _) => {
                head_done = true;
                if open.is_none() {
                    s.clean_len = r.end();
                }
            }
            (Kind::Message, Some(_), _) => {
                head_done = true;
                since_index += 1;
                let tag = r.payload.first().copied();
                let end = r.end();
                let m = JournalMessage::new(r.lsn, r.payload);
                match (tag, &mut open) {
                    (Some(b'B'), None) => {
                        let Ok(Message::Begin(b)) = decode::parse(&m.payload) else {
                            return Err(corrupt(r.offset, "undecodable Begin".into()));
                        };
                        let indexed = since_index > index_every;
                        if indexed {
                            since_index = 1;
                        }
                        open = Some((r.offset, b.final_lsn, indexed, Vec::new()));
                    }
                    (Some(b'C'), Some((begin_at, commit_lsn, indexed, ctx))) => {
                        let Ok(Message::Commit(c)) = decode::parse(&m.payload) else {
                            return Err(corrupt(r.offset, "undecodable Commit".into()));
                        };
                        if c.commit_lsn != *commit_lsn {
                            return Err(corrupt(r.offset, "Commit does not match Begin".into()));
                        }
                        if *indexed {
                            s.index.entries.push((c.commit_lsn, *begin_at));
                        }
                        for (offset, key, m) in ctx.drain(..) {
                            s.index.context.push(offset);
                            s.context.insert(key, m);
                        }
                        s.transactions += 1;
                        s.last = Some((c.commit_lsn, c.end_lsn));
                        s.clean_len = end;
                        s.since_index = since_index;
                        open = None;
                    }
                    (Some(b'B' | b'C'), _) | (_, None) => {
                        return Err(corrupt(r.offset, "transaction structure broken".into()));
                    }
                    (_, Some((_, _, _, ctx))) => {
                        if let Some(key) = Context::key_of(&m.payload)
                            .map_err(|e| corrupt(r.offset, format!("bad Relation/Type: {e}")))?
                        {
                            ctx.push((r.offset, key, m));
                        }
                    }
                }
            }
            _ => return Err(corrupt(r.offset, "record out of place".into())),
        }
    }
    if !head_done {
        // The head never got its closing sync marker: the roll that made it did not complete.
        s.complete_from = None;
    }
    Ok(s)
}
