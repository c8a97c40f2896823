//! Readers: whole transactions from an LSN on, one message at a time, following the writer.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{Kind, Next, Record, RecordReader};
use super::segment::{Context, Shared, MAGIC};
use super::{Journal, JournalError, JournalHandle, JournalMessage};
use crate::decode::{self, Begin, Commit, Message};
use crate::lsn::Lsn;

impl Journal {
    /// A reader of the transactions committing at or after `lsn`; see [`JournalHandle::reader_from`].
    pub fn reader_from(&self, lsn: Lsn) -> Result<JournalReader, JournalError> {
        self.handle().reader_from(lsn)
    }
}

impl JournalHandle {
    /// A reader of the transactions committing at or after `lsn`, in commit order. It starts
    /// from the segment holding `lsn` and, within it, from the nearest sparse-index entry.
    /// [`JournalError::TooOld`] when retention has dropped transactions at or after `lsn`.
    pub fn reader_from(&self, lsn: Lsn) -> Result<JournalReader, JournalError> {
        let mut reader = JournalReader {
            shared: Arc::clone(&self.shared),
            from: lsn,
            position: lsn,
            cur: None,
            next_seq: 0,
            context: Context::default(),
            in_txn: false,
            carried: std::collections::VecDeque::new(),
            skipping: false,
        };
        let (seg, start, context_at) = {
            let st = self.shared.lock();
            let oldest = st.oldest();
            if lsn < oldest {
                return Err(JournalError::TooOld {
                    requested: lsn,
                    oldest,
                });
            }
            reader.next_seq = st.next_seq;
            let pick = st
                .segments
                .iter()
                .rposition(|s| s.first_commit <= lsn)
                .unwrap_or(0);
            let Some(s) = st.segments.get(pick) else {
                return Ok(reader);
            };
            let (start, context_at) = match &s.index {
                Some(ix) => {
                    let limit = s.readable_len;
                    let n = ix
                        .entries
                        .partition_point(|&(c, off)| c <= lsn && off <= limit);
                    let start = n.checked_sub(1).map(|i| ix.entries[i].1);
                    let context_at: Vec<u64> = match start {
                        Some(start) => ix.context.iter().copied().filter(|&o| o < start).collect(),
                        None => Vec::new(),
                    };
                    (start, context_at)
                }
                None => (None, Vec::new()),
            };
            ((s.seq, s.path.clone(), s.readable_len), start, context_at)
        };
        reader.enter(seg, start, &context_at)?;
        Ok(reader)
    }
}

/// The segment a reader is in.
struct Cursor {
    seq: u64,
    path: PathBuf,
    rr: RecordReader,
}

/// Reads whole transactions in commit order. At the durable end [`JournalReader::next_txn`]
/// returns `None` ("nothing more yet"); call it again after the writer flushes more.
pub struct JournalReader {
    shared: Arc<Shared>,
    from: Lsn,
    /// End LSN of the last transaction read whole (at first, the start LSN).
    position: Lsn,
    cur: Option<Cursor>,
    /// The segment to read when `cur` ends (or first, when there is none yet).
    next_seq: u64,
    context: Context,
    in_txn: bool,
    /// Relation and Type messages of transactions skipped on the way to `from`: handed out
    /// inside the next transaction returned, right after its Begin, so a consumer that seeded
    /// itself from `context()` still learns them.
    carried: std::collections::VecDeque<JournalMessage>,
    skipping: bool,
}

impl JournalReader {
    /// The Relation and Type messages in force at the reader's position (types first). Feed them
    /// to a decoder before the first transaction; later ones arrive inside the transactions.
    pub fn context(&self) -> impl Iterator<Item = &JournalMessage> {
        self.context.messages()
    }

    /// The end LSN of the last transaction read whole: where a consumer's cursor stands.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The next complete transaction, or `None` when the reader has caught up with the durable
    /// end. A transaction left unread is skipped.
    pub fn next_txn(&mut self) -> Result<Option<JournalTxn<'_>>, JournalError> {
        if self.in_txn {
            self.finish_txn()?;
        }
        loop {
            let Some(r) = self.next_record(false)? else {
                return Ok(None);
            };
            let begin = match decode::parse(&r.payload) {
                Ok(Message::Begin(b)) => b,
                _ => return Err(self.corrupt(r.offset, "expected a transaction's Begin")),
            };
            self.in_txn = true;
            if begin.final_lsn < self.from {
                self.skipping = true;
                let finished = self.finish_txn();
                self.skipping = false;
                finished?;
                continue;
            }
            return Ok(Some(JournalTxn {
                first: Some(JournalMessage::new(r.lsn, r.payload)),
                reader: self,
                begin,
                commit: None,
            }));
        }
    }

    /// Reads the open transaction's remaining messages, keeping the relation context.
    fn finish_txn(&mut self) -> Result<(), JournalError> {
        while self.in_txn {
            self.txn_message(None)?;
        }
        Ok(())
    }

    /// The next message of the open transaction; at its Commit the transaction ends.
    fn txn_message(
        &mut self,
        expect_commit: Option<Lsn>,
    ) -> Result<(JournalMessage, Option<Commit>), JournalError> {
        let r = self
            .next_record(true)?
            .ok_or_else(|| self.corrupt(0, "a transaction has no Commit"))?;
        let m = JournalMessage::new(r.lsn, r.payload);
        let mut commit = None;
        match m.payload.first() {
            Some(b'C') => {
                let Ok(Message::Commit(c)) = m.decode() else {
                    return Err(self.corrupt(r.offset, "undecodable Commit"));
                };
                if expect_commit.is_some_and(|l| l != c.commit_lsn) {
                    return Err(self.corrupt(r.offset, "Commit does not match Begin"));
                }
                self.in_txn = false;
                self.position = c.end_lsn;
                commit = Some(c);
            }
            Some(b'B') => return Err(self.corrupt(r.offset, "a Begin inside a transaction")),
            _ => {
                if let Err(e) = self.context.observe(&m) {
                    return Err(self.corrupt(r.offset, &format!("bad Relation/Type: {e}")));
                }
                if self.skipping && matches!(m.payload.first(), Some(b'R') | Some(b'Y')) {
                    self.carried.push_back(m.clone());
                }
            }
        }
        Ok((m, commit))
    }

    /// The next Message record, skipping Sync markers and moving on to the next segment at the
    /// end of a closed one (never inside a transaction). `None` at the durable end.
    fn next_record(&mut self, within_txn: bool) -> Result<Option<Record>, JournalError> {
        loop {
            let Some(cur) = self.cur.as_mut() else {
                if within_txn || !self.advance()? {
                    return Ok(None);
                }
                continue;
            };
            let at = cur.rr.offset();
            let next = cur
                .rr
                .next()
                .map_err(|e| JournalError::io("read", &cur.path, e))?;
            match next {
                Next::Record(r) if r.kind == Kind::Message => return Ok(Some(r)),
                Next::Record(r) if r.kind == Kind::Sync => {}
                Next::Record(r) => {
                    return Err(
                        self.corrupt(r.offset, "a segment head record in the middle of a segment")
                    )
                }
                Next::Bad(reason) => return Err(self.corrupt(at, reason)),
                Next::End => {
                    let (limit, closed) = {
                        let mut st = self.shared.lock();
                        match st.by_seq(cur.seq) {
                            Some(info) => (info.readable_len, info.closed),
                            // Deleted by retention, so it was closed: its file is whole.
                            None => (u64::MAX, true),
                        }
                    };
                    let limit = if limit == u64::MAX {
                        cur.rr
                            .file_len()
                            .map_err(|e| JournalError::io("stat", &cur.path, e))?
                    } else {
                        limit
                    };
                    if limit > cur.rr.limit() {
                        cur.rr.set_limit(limit);
                        continue;
                    }
                    if within_txn {
                        return Err(self.corrupt(
                            at,
                            "a transaction has no Commit before the end of the segment",
                        ));
                    }
                    if !closed {
                        return Ok(None);
                    }
                    self.next_seq = cur.seq + 1;
                    self.cur = None;
                }
            }
        }
    }

    /// Opens segment `next_seq` if it exists; `TooOld` if retention already deleted it.
    fn advance(&mut self) -> Result<bool, JournalError> {
        let (seg, oldest) = {
            let st = self.shared.lock();
            let seg = st.segments.iter().find(|s| s.seq == self.next_seq);
            let seg = seg.map(|s| (s.seq, s.path.clone(), s.readable_len));
            if seg.is_none() && st.segments.first().is_some_and(|s| s.seq > self.next_seq) {
                return Err(JournalError::TooOld {
                    requested: self.position,
                    oldest: st.oldest(),
                });
            }
            (seg, st.oldest())
        };
        let Some(seg) = seg else { return Ok(false) };
        match self.enter(seg, None, &[]) {
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(JournalError::TooOld {
                    requested: self.position,
                    oldest,
                })
            }
            other => other.map(|()| true),
        }
    }

    /// Starts reading a segment: its head (header and context), the context records before
    /// `start`, then `start` (or the end of the head).
    fn enter(
        &mut self,
        (seq, path, limit): (u64, PathBuf, u64),
        start: Option<u64>,
        context_at: &[u64],
    ) -> Result<(), JournalError> {
        let file = File::open(&path).map_err(|e| JournalError::io("open", &path, e))?;
        self.cur = Some(Cursor {
            seq,
            path,
            rr: RecordReader::new(file, 0, limit),
        });
        let header = self.read_at(None)?;
        if header.kind != Kind::Segment || header.payload != MAGIC {
            return Err(self.corrupt(0, "the segment header is not understudy's"));
        }
        let head_end = loop {
            let r = self.read_at(None)?;
            match r.kind {
                Kind::Context => self.observe(&r)?,
                Kind::Sync => break r.end(),
                _ => {
                    return Err(
                        self.corrupt(r.offset, "the segment head does not end in a sync marker")
                    )
                }
            }
        };
        for &offset in context_at {
            let r = self.read_at(Some(offset))?;
            self.observe(&r)?;
        }
        if let Some(cur) = self.cur.as_mut() {
            cur.rr.seek(start.unwrap_or(head_end));
        }
        Ok(())
    }

    fn observe(&mut self, r: &Record) -> Result<(), JournalError> {
        let m = JournalMessage::new(r.lsn, r.payload.clone());
        self.context
            .observe(&m)
            .map_err(|e| self.corrupt(r.offset, &format!("bad Relation/Type: {e}")))
    }

    /// One record of the current segment (at `offset`, or next), which must be valid.
    fn read_at(&mut self, offset: Option<u64>) -> Result<Record, JournalError> {
        let Some(cur) = self.cur.as_mut() else {
            unreachable!("entered a segment")
        };
        if let Some(offset) = offset {
            cur.rr.seek(offset);
        }
        let at = cur.rr.offset();
        match cur
            .rr
            .next()
            .map_err(|e| JournalError::io("read", &cur.path, e))?
        {
            Next::Record(r) => Ok(r),
            Next::End => Err(self.corrupt(at, "the segment ends inside its head")),
            Next::Bad(reason) => Err(self.corrupt(at, reason)),
        }
    }

    fn corrupt(&self, offset: u64, reason: &str) -> JournalError {
        JournalError::Corrupt {
            segment: self
                .cur
                .as_ref()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            offset,
            reason: reason.to_string(),
        }
    }

    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.rr.buffer_capacity())
    }

    #[cfg(test)]
    pub(super) fn offset(&self) -> u64 {
        self.cur.as_ref().map_or(0, |c| c.rr.offset())
    }
}

/// One complete transaction: its Begin up front, its messages (Begin first, Commit last) one at a
/// time, so a transaction of any size is never held whole.
pub struct JournalTxn<'r> {
    reader: &'r mut JournalReader,
    begin: Begin,
    first: Option<JournalMessage>,
    commit: Option<Commit>,
}

impl JournalTxn<'_> {
    pub fn begin(&self) -> &Begin {
        &self.begin
    }

    /// The commit LSN (Begin's `final_lsn`).
    pub fn commit_lsn(&self) -> Lsn {
        self.begin.final_lsn
    }

    /// The Commit, once its message has been read.
    pub fn commit(&self) -> Option<&Commit> {
        self.commit.as_ref()
    }

    /// The next message, `None` after the Commit.
    pub fn next_message(&mut self) -> Result<Option<JournalMessage>, JournalError> {
        if let Some(m) = self.first.take() {
            return Ok(Some(m));
        }
        if let Some(m) = self.reader.carried.pop_front() {
            return Ok(Some(m));
        }
        if self.commit.is_some() {
            return Ok(None);
        }
        let (m, commit) = self.reader.txn_message(Some(self.begin.final_lsn))?;
        self.commit = commit;
        Ok(Some(m))
    }
}

#[cfg(test)]
impl JournalTxn<'_> {
    pub(super) fn reader_buffer_capacity(&self) -> usize {
        self.reader.buffer_capacity()
    }

    /// Relation/Type messages carried over from skipped transactions, still to be handed out.
    pub(super) fn carried_len(&self) -> usize {
        self.reader.carried.len()
    }
}

impl Iterator for JournalTxn<'_> {
    type Item = Result<JournalMessage, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_message().transpose()
    }
}
