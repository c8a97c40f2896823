//! Record framing, without knowledge of transactions: encoding a record header, reading records
//! back through a bounded buffer, and looking for a sync marker past a damaged record.
//!
//! A record is `[u32 length][u32 crc32c][u8 kind][u64 lsn][payload]`, little-endian, where
//! `length` counts the bytes after the CRC field (`9 + payload.len()`) and the CRC32C covers the
//! same bytes (kind, lsn and payload).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

use crate::lsn::Lsn;

/// Bytes before the payload: length, CRC, kind, LSN.
pub(super) const HEADER_LEN: usize = 17;
/// The part of the header the length and CRC fields do not cover: length and CRC.
const FRAME_LEN: usize = 8;
/// A payload may be as large as a pgoutput message can be (PostgreSQL caps one at 1 GiB).
pub(super) const MAX_PAYLOAD: usize = 1 << 30;
/// The whole of a sync marker record: header plus its u64 payload.
pub(super) const SYNC_RECORD_LEN: usize = HEADER_LEN + 8;
/// How much a reader asks the file for at a time.
const READ_CHUNK: usize = 256 * 1024;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A pgoutput message as received; `lsn` is the WAL position it was sent at.
    Message = 1,
    /// The first record of every segment: payload [`super::segment::MAGIC`], `lsn` the position
    /// from which the segment on holds every transaction (the end LSN of the one before).
    Segment = 2,
    /// A Relation or Type message in force at the segment's start, re-emitted after its header.
    Context = 3,
    /// Written by every flush before its fsync: payload the byte length of the segment that an
    /// earlier fsync had made durable, so recovery can tell torn tails from damage.
    Sync = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Segment),
            3 => Some(Kind::Context),
            4 => Some(Kind::Sync),
            _ => None,
        }
    }
}

/// The header to write before `payload`.
pub(super) fn header(kind: Kind, lsn: Lsn, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let body_len = (payload.len() + HEADER_LEN - FRAME_LEN) as u32;
    h[0..4].copy_from_slice(&body_len.to_le_bytes());
    h[8] = kind as u8;
    h[9..17].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[8..17]), payload);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One record read back; `payload` shares the reader's buffer.
#[derive(Debug)]
pub(super) struct Record {
    /// Byte offset of the record in its segment.
    pub offset: u64,
    pub kind: Kind,
    pub lsn: Lsn,
    pub payload: Bytes,
}

impl Record {
    /// Offset just past this record.
    pub fn end(&self) -> u64 {
        self.offset + (HEADER_LEN + self.payload.len()) as u64
    }
}

/// The outcome of reading at the current offset.
#[derive(Debug)]
pub(super) enum Next {
    Record(Record),
    /// The limit is reached exactly, at a record boundary.
    End,
    /// The bytes at the current offset are not a whole, valid record.
    Bad(&'static str),
}

/// Reads records from a segment file up to a limit, never buffering a byte past it: the bytes
/// after the durable end may still be truncated and rewritten by the writer.
pub(super) struct RecordReader {
    file: File,
    /// File offset of `buf[0]`: the next record starts here.
    pos: u64,
    buf: BytesMut,
    limit: u64,
}

impl RecordReader {
    pub fn new(file: File, offset: u64, limit: u64) -> Self {
        RecordReader {
            file,
            pos: offset,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Where the next record starts.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The file's current length on disk.
    pub fn file_len(&self) -> io::Result<u64> {
        self.file.metadata().map(|m| m.len())
    }

    /// Raises (or lowers) how far the reader may read. Buffered bytes are all below the old limit.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
        let keep = limit.saturating_sub(self.pos).min(self.buf.len() as u64) as usize;
        self.buf.truncate(keep);
    }

    /// Continues at `offset`, dropping what is buffered.
    pub fn seek(&mut self, offset: u64) {
        self.pos = offset;
        self.buf.clear();
    }

    #[cfg(test)]
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Reads the record at the current offset and moves past it (only when it is valid).
    pub fn next(&mut self) -> io::Result<Next> {
        if self.pos >= self.limit {
            return Ok(Next::End);
        }
        if !self.fill(FRAME_LEN)? {
            return Ok(Next::Bad("the record header is cut short"));
        }
        let body_len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let body_len = body_len as usize;
        if !(HEADER_LEN - FRAME_LEN..=MAX_PAYLOAD + HEADER_LEN - FRAME_LEN).contains(&body_len) {
            return Ok(Next::Bad("the record length is impossible"));
        }
        let total = FRAME_LEN + body_len;
        if self.pos + total as u64 > self.limit {
            return Ok(Next::Bad("the record runs past the end of the segment"));
        }
        if !self.fill(total)? {
            return Ok(Next::Bad("the segment file ends inside the record"));
        }
        let crc = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if crc32c::crc32c(&self.buf[FRAME_LEN..total]) != crc {
            return Ok(Next::Bad("the record's CRC32C does not match its contents"));
        }
        let Some(kind) = Kind::from_byte(self.buf[8]) else {
            return Ok(Next::Bad("the record kind is unknown"));
        };
        let raw = self.buf.split_to(total).freeze();
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&raw[9..17]);
        let record = Record {
            offset: self.pos,
            kind,
            lsn: Lsn(u64::from_le_bytes(lsn)),
            payload: raw.slice(HEADER_LEN..),
        };
        self.pos += total as u64;
        Ok(Next::Record(record))
    }

    /// Makes at least `need` bytes available in `buf`; false if the limit or the file ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        while self.buf.len() < need {
            let have = self.buf.len();
            let at = self.pos + have as u64;
            let room = self.limit.saturating_sub(at);
            let want = ((need - have).max(READ_CHUNK) as u64).min(room) as usize;
            if want == 0 {
                return Ok(false);
            }
            self.buf.resize(have + want, 0);
            let n = read_full_at(&self.file, &mut self.buf[have..], at)?;
            self.buf.truncate(have + n);
            if n < want && self.buf.len() < need {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], mut at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The sync marker payload: the segment length an earlier fsync had made durable.
pub(super) fn sync_payload(synced_len: u64) -> [u8; 8] {
    synced_len.to_le_bytes()
}

/// Whether a valid sync marker after `from` proves that an fsync had completed over `damaged`,
/// i.e. the damaged byte was durable and its record is real corruption, not a torn write.
///
/// Only the fixed-size sync records are looked for, so the scan needs no trust in any length
/// field: a window slides over the bytes and each offset is checked against the exact frame
/// (length 17, kind Sync) and then its CRC.
pub(super) fn sync_proves_durable(
    file: &File,
    from: u64,
    file_len: u64,
    damaged: u64,
) -> io::Result<bool> {
    const WINDOW: usize = 1 << 20;
    let mut buf = vec![0u8; WINDOW];
    let mut at = from;
    while at + SYNC_RECORD_LEN as u64 <= file_len {
        let want = ((file_len - at) as usize).min(WINDOW);
        let n = read_full_at(file, &mut buf[..want], at)?;
        if n < SYNC_RECORD_LEN {
            return Ok(false);
        }
        for i in 0..=n - SYNC_RECORD_LEN {
            let r = &buf[i..i + SYNC_RECORD_LEN];
            if r[0..4] != ((SYNC_RECORD_LEN - FRAME_LEN) as u32).to_le_bytes()
                || r[8] != Kind::Sync as u8
            {
                continue;
            }
            let crc = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
            if crc32c::crc32c(&r[FRAME_LEN..]) != crc {
                continue;
            }
            let mut synced = [0u8; 8];
            synced.copy_from_slice(&r[HEADER_LEN..]);
            if u64::from_le_bytes(synced) > damaged {
                return Ok(true);
            }
        }
        if n < want {
            return Ok(false);
        }
        at += (n - SYNC_RECORD_LEN + 1) as u64;
    }
    Ok(false)
}
