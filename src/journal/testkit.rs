//! Test-only pgoutput payloads (laid out from the PostgreSQL docs, big-endian) and a stream
//! generator with realistic LSNs, plus helpers shared by the journal's tests.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};

use super::{Journal, JournalHandle, JournalMessage, JournalOptions};
use crate::lsn::Lsn;

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

pub fn begin(final_lsn: Lsn, xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(final_lsn.0);
    b.put_i64(1_000_000);
    b.put_u32(xid);
    b.freeze()
}

pub fn commit(commit_lsn: Lsn, end_lsn: Lsn) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(commit_lsn.0);
    b.put_u64(end_lsn.0);
    b.put_i64(1_000_000);
    b.freeze()
}

pub fn relation(id: u32, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(id);
    cstr(&mut b, "public");
    cstr(&mut b, name);
    b.put_u8(b'd');
    b.put_u16(2);
    for (key, col) in [(1u8, "id"), (0, "v")] {
        b.put_u8(key);
        cstr(&mut b, col);
        b.put_u32(25);
        b.put_i32(-1);
    }
    b.freeze()
}

pub fn type_msg(id: u32, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'Y');
    b.put_u32(id);
    cstr(&mut b, "public");
    cstr(&mut b, name);
    b.freeze()
}

pub fn insert(rel: u32, row: u64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(rel);
    b.put_u8(b'N');
    b.put_u16(2);
    for value in [
        row.to_string(),
        format!("value of row {row} in relation {rel}"),
    ] {
        b.put_u8(b't');
        b.put_u32(value.len() as u32);
        b.put_slice(value.as_bytes());
    }
    b.freeze()
}

/// One generated transaction: its messages as they will be appended.
#[derive(Debug, Clone)]
pub struct Txn {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub messages: Vec<JournalMessage>,
}

/// Generates transactions in commit order, 0x40 bytes of WAL per message.
pub struct Stream {
    next: u64,
    xid: u32,
    row: u64,
}

impl Stream {
    pub fn new(start: Lsn) -> Self {
        Stream {
            next: start.0 + 0x100,
            xid: 700,
            row: 0,
        }
    }

    /// A transaction of `rows` inserts into relation `rel`, preceded by `extra` messages (such as
    /// Relation or Type messages) inside the transaction.
    pub fn txn_with(&mut self, rel: u32, rows: usize, extra: Vec<Bytes>) -> Txn {
        let first = self.next;
        let commit_lsn = Lsn(first + 0x40 * (rows + extra.len() + 1) as u64);
        let end_lsn = Lsn(commit_lsn.0 + 0x30);
        self.xid += 1;
        let mut lsn = first;
        let mut messages = vec![JournalMessage::new(Lsn(lsn), begin(commit_lsn, self.xid))];
        for payload in extra.into_iter().chain((0..rows).map(|_| {
            self.row += 1;
            insert(rel, self.row)
        })) {
            lsn += 0x40;
            messages.push(JournalMessage::new(Lsn(lsn), payload));
        }
        messages.push(JournalMessage::new(commit_lsn, commit(commit_lsn, end_lsn)));
        self.next = end_lsn.0 + 0x18;
        Txn {
            commit_lsn,
            end_lsn,
            messages,
        }
    }

    pub fn txn(&mut self, rows: usize) -> Txn {
        self.txn_with(16384, rows, Vec::new())
    }
}

pub fn write(journal: &mut Journal, txn: &Txn) {
    for m in &txn.messages {
        journal.append(m.lsn, &m.payload).expect("append");
    }
}

pub fn options(segment_bytes: u64, index_every: u32) -> JournalOptions {
    JournalOptions {
        segment_bytes,
        index_every,
    }
}

/// Every transaction readable from `from`, as (commit LSN, messages).
pub fn read_all(handle: &JournalHandle, from: Lsn) -> Vec<(Lsn, Vec<JournalMessage>)> {
    let mut reader = handle.reader_from(from).expect("reader_from");
    let mut out = Vec::new();
    while let Some(mut txn) = reader.next_txn().expect("next_txn") {
        let commit_lsn = txn.commit_lsn();
        let begin = txn.next_message().expect("begin").expect("a Begin");
        // Relations carried over from transactions skipped on the way are not this one's.
        for _ in 0..txn.carried_len() {
            txn.next_message()
                .expect("carried")
                .expect("a carried message");
        }
        let mut messages = vec![begin];
        messages.extend(txn.by_ref().map(|m| m.expect("message")));
        assert_eq!(txn.commit().map(|c| c.commit_lsn), Some(commit_lsn));
        out.push((commit_lsn, messages));
    }
    out
}

pub fn expected(txns: &[Txn]) -> Vec<(Lsn, Vec<JournalMessage>)> {
    txns.iter()
        .map(|t| (t.commit_lsn, t.messages.clone()))
        .collect()
}

/// The segment files, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    super::segment::list(dir)
        .expect("list")
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}
