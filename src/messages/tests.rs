//! The message reader over journals written here from pgoutput bytes laid out per the
//! PostgreSQL docs: numbering, batching, resuming after a cursor, relations across segments.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;

use super::{to_json, Batch, Cursor, MessageReader, Tail, TailMode};
use crate::journal::{Journal, JournalOptions};
use crate::lsn::Lsn;
use crate::translate::{Op, Rules};

const START: Lsn = Lsn(0x1_0000_0000);

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn begin(final_lsn: Lsn, xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(final_lsn.0);
    b.put_i64(1_000_000);
    b.put_u32(xid);
    b.freeze()
}

fn commit(commit_lsn: Lsn, end_lsn: Lsn) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(commit_lsn.0);
    b.put_u64(end_lsn.0);
    b.put_i64(1_000_000);
    b.freeze()
}

/// `public.<name>` (id int key, v text).
fn relation(id: u32, name: &str) -> Bytes {
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

fn insert(rel: u32, row: u64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(rel);
    b.put_u8(b'N');
    b.put_u16(2);
    for value in [row.to_string(), format!("row {row}")] {
        b.put_u8(b't');
        b.put_u32(value.len() as u32);
        b.put_slice(value.as_bytes());
    }
    b.freeze()
}

fn truncate(rels: &[u32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_u32(rels.len() as u32);
    b.put_u8(0);
    for r in rels {
        b.put_u32(*r);
    }
    b.freeze()
}

/// Writes transactions with realistic LSNs; returns (commit LSN, end LSN) of each.
struct Writer {
    journal: Journal,
    next: u64,
    xid: u32,
    row: u64,
}

impl Writer {
    fn new(dir: &std::path::Path, segment_bytes: u64) -> Writer {
        let opts = JournalOptions {
            segment_bytes,
            index_every: 16,
        };
        Writer {
            journal: Journal::open(dir, START, opts).unwrap(),
            next: START.0 + 0x100,
            xid: 700,
            row: 0,
        }
    }

    /// A transaction of `body` messages (`None`: an insert into relation 1 with the next row).
    fn txn(&mut self, body: Vec<Option<Bytes>>) -> (Lsn, Lsn) {
        let commit_lsn = Lsn(self.next + 0x40 * (body.len() as u64 + 1));
        let end_lsn = Lsn(commit_lsn.0 + 0x30);
        self.xid += 1;
        let mut lsn = self.next;
        self.journal
            .append(Lsn(lsn), &begin(commit_lsn, self.xid))
            .unwrap();
        for m in body {
            lsn += 0x40;
            let payload = m.unwrap_or_else(|| {
                self.row += 1;
                insert(1, self.row)
            });
            self.journal.append(Lsn(lsn), &payload).unwrap();
        }
        self.journal
            .append(commit_lsn, &commit(commit_lsn, end_lsn))
            .unwrap();
        self.next = end_lsn.0 + 0x18;
        (commit_lsn, end_lsn)
    }

    fn inserts(&mut self, n: usize, with_relation: bool) -> (Lsn, Lsn) {
        let mut body = Vec::new();
        if with_relation {
            body.push(Some(relation(1, "items")));
        }
        body.extend((0..n).map(|_| None));
        self.txn(body)
    }
}

fn drain(reader: &mut MessageReader, max: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = reader.next_batch(max).unwrap() {
        assert!(b.messages.len() <= max, "a batch of {}", b.messages.len());
        out.push(b);
    }
    out
}

fn ids(batches: &[Batch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.messages.iter().map(|m| m.id()))
        .collect()
}

fn rules() -> Arc<Rules> {
    Arc::new(Rules::none())
}

#[test]
fn cursors_print_parse_and_order() {
    let c: Cursor = "0/1A2B400:3".parse().unwrap();
    assert_eq!(c.commit_lsn, Lsn(0x1A2B400));
    assert_eq!(c.seq, 3);
    assert_eq!(c.to_string(), "0/1A2B400:3");
    assert!(c.covers(Lsn(0x1A2B400), 3));
    assert!(c.covers(Lsn(0x1A2B3FF), 900));
    assert!(!c.covers(Lsn(0x1A2B400), 4));
    assert!(Cursor::start(Lsn(5)) < "0/5:1".parse().unwrap());
    for bad in ["", "0/1", "0/1:", ":3", "0/1:-1", "x:1", "0/1:2:3"] {
        assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
    }
}

#[test]
fn numbers_messages_and_splits_large_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    let (c1, e1) = w.inserts(3, true);
    let (c2, e2) = w.inserts(2500, false);
    let (c3, e3) = w.txn(vec![
        Some(relation(2, "other")),
        Some(truncate(&[1, 2])),
        None,
    ]);
    let (c4, e4) = w.txn(vec![]);
    w.journal.flush().unwrap();
    let mut reader = MessageReader::open(&w.journal.handle(), START, rules()).unwrap();
    let batches = drain(&mut reader, 1000);
    let shape: Vec<(Lsn, usize, bool, Option<Lsn>, u32)> = batches
        .iter()
        .map(|b| {
            (
                b.commit_lsn,
                b.messages.len(),
                b.last_of_txn,
                b.end_lsn,
                b.through.seq,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (c1, 3, true, Some(e1), 3),
            (c2, 1000, false, None, 1000),
            (c2, 1000, false, None, 2000),
            (c2, 500, true, Some(e2), 2500),
            (c3, 3, true, Some(e3), 3),
            (c4, 0, true, Some(e4), 0),
        ]
    );
    let seqs: Vec<u32> = batches[1..4]
        .iter()
        .flat_map(|b| b.messages.iter().map(|m| m.seq))
        .collect();
    assert_eq!(seqs, (1..=2500).collect::<Vec<_>>());
    let t = &batches[4].messages;
    assert_eq!(
        t.iter()
            .map(|m| (m.seq, m.op, m.table.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, Op::Truncate, "public.items"),
            (2, Op::Truncate, "public.other"),
            (3, Op::Insert, "public.items"),
        ]
    );
    assert_eq!(t[2].kind, "public.items.inserted");
    assert!(batches
        .iter()
        .all(|b| b.is_applied(e4) && !b.is_applied(c1)));
}

#[test]
fn resumes_after_a_cursor_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    w.inserts(5, true);
    let (c2, _) = w.inserts(40, false);
    w.inserts(7, false);
    w.journal.flush().unwrap();
    let handle = w.journal.handle();
    let all = ids(&drain(
        &mut MessageReader::open(&handle, START, rules()).unwrap(),
        7,
    ));
    assert_eq!(all.len(), 52);
    for (i, id) in all.iter().enumerate() {
        let cursor: Cursor = id.parse().unwrap();
        let mut r = MessageReader::open_after(&handle, cursor, rules()).unwrap();
        assert_eq!(ids(&drain(&mut r, 13)), all[i + 1..], "after {id}");
    }
    // From an LSN: the transactions committing at or after it.
    let mut r = MessageReader::open(&handle, c2, rules()).unwrap();
    assert_eq!(ids(&drain(&mut r, 100)), all[5..]);
}

#[test]
fn relations_come_from_the_segment_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 4 * 1024);
    w.inserts(2, true);
    let mut later = Vec::new();
    for _ in 0..60 {
        later.push(w.inserts(5, false));
    }
    w.journal.flush().unwrap();
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        segments > 5,
        "{segments} files: segments should have rolled"
    );
    // Starting deep in a later segment: its relation came from the first transaction only.
    let (c, _) = later[50];
    let mut r = MessageReader::open(&w.journal.handle(), c, rules()).unwrap();
    let batches = drain(&mut r, 100);
    assert_eq!(batches.len(), 10);
    assert!(batches
        .iter()
        .all(|b| b.messages.iter().all(|m| m.table == "public.items")));
}

#[test]
fn none_at_the_durable_end_then_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    w.inserts(1, true);
    w.journal.flush().unwrap();
    let mut r = MessageReader::open(&w.journal.handle(), START, rules()).unwrap();
    assert_eq!(drain(&mut r, 10).len(), 1);
    assert!(r.next_batch(10).unwrap().is_none());
    w.inserts(2, false);
    assert!(r.next_batch(10).unwrap().is_none(), "not flushed yet");
    w.journal.flush().unwrap();
    assert_eq!(r.next_batch(10).unwrap().unwrap().messages.len(), 2);
}

#[test]
fn too_old_is_the_journal_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    w.inserts(1, true);
    w.journal.flush().unwrap();
    let Err(e) = MessageReader::open(&w.journal.handle(), Lsn(START.0 - 1), rules()) else {
        panic!("reading before the journal's start should fail");
    };
    assert_eq!(e.too_old(), Some((Lsn(START.0 - 1), START)));
    assert!(e.to_string().contains("bootstrap"), "{e}");
}

#[test]
fn json_has_the_id_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    let (c, _) = w.inserts(1, true);
    w.journal.flush().unwrap();
    let mut r = MessageReader::open(&w.journal.handle(), START, rules()).unwrap();
    let m = &r.next_batch(10).unwrap().unwrap().messages[0];
    let json = to_json(m);
    assert!(
        json.starts_with(&format!("{{\"id\":\"{c}:1\",\"commit_lsn\":\"{c}\"")),
        "{json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["new"]["v"], "row 1");
}

#[tokio::test]
async fn cancelled_requests_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    w.inserts(10, true);
    for _ in 0..200 {
        w.inserts(3, false);
    }
    w.journal.flush().unwrap();
    let handle = w.journal.handle();
    let all = ids(&drain(
        &mut MessageReader::open(&handle, START, rules()).unwrap(),
        4,
    ));
    let mut r = MessageReader::open(&handle, START, rules()).unwrap();
    let mut got = Vec::new();
    let mut cancelled = 0;
    for i in 0.. {
        // Every other call is polled once and dropped, as a `select!` that lost would.
        let answer = if i % 2 == 0 {
            match r.next_batch_async(4).now_or_never() {
                Some(a) => a,
                None => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            r.next_batch_async(4).await
        };
        match answer.unwrap() {
            Some(b) => got.extend(b.messages.iter().map(|m| m.id())),
            None => break,
        }
    }
    assert!(
        cancelled > 0,
        "no call was cancelled: the test proves nothing"
    );
    assert_eq!(got, all);
}

#[tokio::test]
async fn a_live_tail_waits_for_the_applied_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    let (c1, e1) = w.inserts(2, true);
    let (_, e2) = w.inserts(2, false);
    w.journal.flush().unwrap();
    let (applied_tx, applied) = tokio::sync::watch::channel(c1);
    let mode = TailMode::Live { applied };
    let mut tail = Tail::open(&w.journal.handle(), Cursor::start(START), rules(), mode)
        .await
        .unwrap();
    assert!(
        tail.ready(10).await.unwrap().is_none(),
        "nothing applied yet"
    );
    applied_tx.send_replace(e1);
    let b = tail.next(10).await.unwrap().unwrap();
    assert_eq!(b.commit_lsn, c1);
    let waiting = tokio::time::timeout(Duration::from_millis(100), tail.next(10)).await;
    assert!(waiting.is_err(), "the second transaction is not applied");
    applied_tx.send_replace(e2);
    assert_eq!(tail.next(10).await.unwrap().unwrap().messages.len(), 2);
    // At the durable end the tail waits for the writer.
    let (c3, e3) = w.inserts(1, false);
    applied_tx.send_replace(e3);
    let next = tokio::spawn(async move { tail.next(10).await.map(|b| b.map(|b| b.commit_lsn)) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!next.is_finished());
    w.journal.flush().unwrap();
    assert_eq!(next.await.unwrap().unwrap(), Some(c3));
}

#[tokio::test]
async fn a_replay_tail_stops_at_to_lsn_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 * 1024 * 1024);
    let (c1, _) = w.inserts(2, true);
    let (c2, _) = w.inserts(2, false);
    w.inserts(2, false);
    w.journal.flush().unwrap();
    let handle = w.journal.handle();
    let mode = TailMode::Replay { to: Some(c2) };
    let mut tail = Tail::open(&handle, Cursor::start(START), rules(), mode)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(b) = tail.next(10).await.unwrap() {
        seen.push(b.commit_lsn);
    }
    assert_eq!(seen, [c1, c2]);
    let mode = TailMode::Replay { to: None };
    let mut tail = Tail::open(&handle, Cursor::start(START), rules(), mode)
        .await
        .unwrap();
    let mut n = 0;
    while tail.next(10).await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
}
