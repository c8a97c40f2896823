//! Recovery at open and damage: torn tails at every byte, torn segment heads, proven corruption.

use std::fs::{self, File};
use std::path::Path;

use super::record::{Kind, Next, Record, RecordReader, SYNC_RECORD_LEN};
use super::testkit::{expected, options, read_all, relation, segments, write, Stream, Txn};
use super::{Journal, JournalError, JournalOptions};
use crate::lsn::Lsn;

const START: Lsn = Lsn(0x2_0000_0000);

fn records(path: &Path) -> Vec<Record> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut rr = RecordReader::new(file, 0, len);
    let mut out = Vec::new();
    while let Next::Record(r) = rr.next().unwrap() {
        out.push(r);
    }
    out
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5A;
    fs::write(path, bytes).unwrap();
}

/// `n` transactions, each flushed, in one segment.
fn flushed(dir: &Path, n: usize, stream: &mut Stream) -> Vec<Txn> {
    let mut j = Journal::open(dir, START, JournalOptions::default()).unwrap();
    let txns: Vec<_> = (0..n).map(|i| stream.txn(1 + i % 4)).collect();
    for t in &txns {
        write(&mut j, t);
        j.flush().unwrap();
    }
    txns
}

#[test]
fn a_crash_at_any_byte_of_the_last_transaction_recovers_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(START);
    let mut txns = flushed(dir.path(), 5, &mut stream);
    let path = segments(dir.path())[0].clone();
    let boundary = fs::metadata(&path).unwrap().len();
    let last = stream.txn_with(16400, 6, vec![relation(16400, "late")]);
    {
        let mut j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
        write(&mut j, &last);
        assert_eq!(j.flush().unwrap(), last.end_lsn);
    }
    let bytes = fs::read(&path).unwrap();
    let commit_end = (bytes.len() - SYNC_RECORD_LEN) as u64;
    let before = expected(&txns);
    txns.push(last.clone());
    let after = expected(&txns);
    for cut in boundary - SYNC_RECORD_LEN as u64..=bytes.len() as u64 {
        fs::write(&path, &bytes[..cut as usize]).unwrap();
        let j = Journal::open(dir.path(), START, JournalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete = cut >= commit_end;
        let want_durable = if complete {
            last.end_lsn
        } else {
            txns[4].end_lsn
        };
        assert_eq!(j.recovery().durable, want_durable, "cut at {cut}");
        let got = read_all(&j.handle(), START);
        assert_eq!(
            &got,
            if complete { &after } else { &before },
            "cut at {cut}"
        );
        let len = fs::metadata(&path).unwrap().len();
        assert!(
            len <= cut && (complete || len <= boundary),
            "cut at {cut} left {len} bytes"
        );
        assert_eq!(j.recovery().truncated_bytes, cut - len);
    }
    // After a cut the journal takes the resent transaction and reads back clean.
    fs::write(&path, &bytes[..(commit_end - 3) as usize]).unwrap();
    let mut j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    write(&mut j, &last);
    j.close().unwrap();
    let j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    assert_eq!(j.recovery().truncated_bytes, 0);
    assert_eq!(read_all(&j.handle(), START), after);
}

#[test]
fn a_crash_inside_a_roll_removes_the_unfinished_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(2048, 8);
    let mut stream = Stream::new(START);
    let txns: Vec<_> = (0..40).map(|i| stream.txn(i % 7)).collect();
    {
        let mut j = Journal::open(dir.path(), START, opts).unwrap();
        for t in &txns {
            write(&mut j, t);
        }
        j.close().unwrap();
    }
    let files = segments(dir.path());
    let last = files.last().unwrap().clone();
    let bytes = fs::read(&last).unwrap();
    let head_len = records(&last)
        .iter()
        .find(|r| r.kind == Kind::Message)
        .unwrap()
        .offset;
    let complete_from = records(&last)[0].lsn;
    let kept = txns
        .iter()
        .take_while(|t| t.end_lsn <= complete_from)
        .count();
    for cut in 0..=head_len {
        fs::write(&last, &bytes[..cut as usize]).unwrap();
        let j =
            Journal::open(dir.path(), START, opts).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(j.recovery().durable, complete_from, "cut at {cut}");
        assert_eq!(
            j.recovery().removed.len(),
            usize::from(cut < head_len),
            "cut at {cut}"
        );
        assert_eq!(
            read_all(&j.handle(), START),
            expected(&txns[..kept]),
            "cut at {cut}"
        );
        drop(j);
        if cut < head_len {
            assert!(!last.exists());
        }
    }
    // The primary resends; the segment is made again and everything reads back.
    let mut j = Journal::open(dir.path(), START, opts).unwrap();
    for t in &txns[kept..] {
        write(&mut j, t);
    }
    j.flush().unwrap();
    assert_eq!(segments(dir.path()), files);
    assert_eq!(read_all(&j.handle(), START), expected(&txns));
}

#[test]
fn damage_in_the_middle_of_a_segment_is_corrupt_with_segment_and_offset() {
    for (what, delta) in [("payload", 19u64), ("length", 3), ("crc", 5), ("kind", 8)] {
        let dir = tempfile::tempdir().unwrap();
        flushed(dir.path(), 40, &mut Stream::new(START));
        let path = segments(dir.path())[0].clone();
        let recs = records(&path);
        let victim = recs[recs.len() / 2..]
            .iter()
            .find(|r| r.kind == Kind::Message)
            .unwrap();
        flip(&path, victim.offset + delta);
        let err = Journal::open(dir.path(), START, JournalOptions::default())
            .err()
            .expect(what);
        match &err {
            JournalError::Corrupt {
                segment, offset, ..
            } => {
                assert_eq!((segment, *offset), (&path, victim.offset), "{what}");
            }
            other => panic!("{what}: expected Corrupt, got {other}"),
        }
        let text = err.to_string();
        for needle in [
            path.display().to_string(),
            format!("offset {}", victim.offset),
        ] {
            assert!(text.contains(&needle), "{what}: {text}");
        }
        assert!(
            text.contains("bootstrap --force") && text.contains("replay"),
            "{text}"
        );
    }
}

#[test]
fn damage_after_the_last_completed_fsync_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(START);
    let txns = flushed(dir.path(), 10, &mut stream);
    let path = segments(dir.path())[0].clone();
    let synced = fs::metadata(&path).unwrap().len();
    {
        // Two more transactions reach the file but no fsync covers them; the first one's page
        // is lost while the second one's survived.
        let mut j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
        write(&mut j, &stream.txn(3));
        write(&mut j, &stream.txn(3));
    }
    let victim = records(&path)
        .into_iter()
        .find(|r| r.offset > synced + 40)
        .unwrap();
    flip(&path, victim.offset + 20);
    let j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    assert_eq!(j.recovery().durable, txns[9].end_lsn);
    assert_eq!(fs::metadata(&path).unwrap().len(), synced);
    assert_eq!(read_all(&j.handle(), START), expected(&txns));
    drop(j);
    // A zero-filled tail (a file extended but never written) is cut off as well.
    let mut bytes = fs::read(&path).unwrap();
    bytes.resize(bytes.len() + 8192, 0);
    fs::write(&path, &bytes).unwrap();
    let j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    assert_eq!(j.recovery().truncated_bytes, 8192);
    assert_eq!(j.recovery().durable, txns[9].end_lsn);
}

#[test]
fn damage_in_a_closed_segment_stops_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(START);
    let mut j = Journal::open(dir.path(), START, options(4096, 8)).unwrap();
    for i in 0..60 {
        write(&mut j, &stream.txn(i % 6));
    }
    j.close().unwrap();
    let first = segments(dir.path())[0].clone();
    let recs = records(&first);
    let victim = &recs[recs.len() / 2];
    flip(&first, victim.offset + 18);
    let j = Journal::open(dir.path(), START, options(4096, 8)).unwrap();
    let mut reader = j.reader_from(START).unwrap();
    let err = loop {
        match reader.next_txn() {
            Ok(Some(txn)) => {
                if let Some(Err(e)) = txn.into_iter().find(Result::is_err) {
                    break e;
                }
            }
            Ok(None) => panic!("read past the damage"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, JournalError::Corrupt { segment, offset, .. } if *segment == first && *offset == victim.offset),
        "{err}"
    );
}
