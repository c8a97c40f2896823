//! Writer and reader behaviour: round trips, segment rolls, the sparse index, tailing, retention.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::testkit::{
    self, expected, options, read_all, relation, segments, type_msg, write, Stream,
};
use super::{Journal, JournalError, JournalOptions};
use crate::decode::{Message, RelationCache};
use crate::lsn::Lsn;

const START: Lsn = Lsn(0x1_0000_0000);

#[test]
fn round_trip_many_transactions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(START);
    let mut txns = Vec::new();
    {
        let mut j = Journal::open(dir.path(), START, options(8 * 1024, 8)).unwrap();
        for i in 0..300 {
            let extra = if i % 50 == 0 {
                vec![relation(16384, &format!("t{i}"))]
            } else {
                vec![]
            };
            let t = stream.txn_with(16384, i % 23, extra);
            write(&mut j, &t);
            if i % 7 == 0 {
                assert_eq!(j.flush().unwrap(), t.end_lsn);
            }
            txns.push(t);
        }
        assert_eq!(j.close().unwrap(), txns.last().unwrap().end_lsn);
    }
    assert!(
        segments(dir.path()).len() > 3,
        "small segments should have rolled"
    );
    let j = Journal::open(dir.path(), START, options(8 * 1024, 8)).unwrap();
    assert_eq!(j.recovery().truncated_bytes, 0);
    assert_eq!(j.recovery().durable, txns.last().unwrap().end_lsn);
    assert_eq!(read_all(&j.handle(), START), expected(&txns));
    // The Begin and Commit a reader exposes are the ones written.
    let mut reader = j.reader_from(START).unwrap();
    let mut txn = reader.next_txn().unwrap().unwrap();
    assert_eq!(txn.begin().xid.0, 701);
    while txn.next_message().unwrap().is_some() {}
    assert_eq!(txn.commit().unwrap().end_lsn, txns[0].end_lsn);
    assert_eq!(reader.position(), txns[0].end_lsn);
}

#[test]
fn huge_transaction_is_written_and_read_record_by_record() {
    const ROWS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    let mut stream = Stream::new(START);
    let small = stream.txn(3);
    write(&mut j, &small);
    let big = stream.txn(ROWS);
    for (i, m) in big.messages.iter().enumerate() {
        j.append(m.lsn, &m.payload).unwrap();
        if i == ROWS / 2 {
            // Half the transaction has reached the file already: it is not held in memory.
            let on_disk = std::fs::metadata(&segments(dir.path())[0]).unwrap().len();
            assert!(
                on_disk > 3 * 1024 * 1024,
                "only {on_disk} bytes on disk mid-transaction"
            );
            assert!(j.in_transaction());
        }
    }
    assert_eq!(j.flush().unwrap(), big.end_lsn);

    let mut reader = j.reader_from(big.commit_lsn).unwrap();
    let mut txn = reader.next_txn().unwrap().unwrap();
    assert_eq!(txn.commit_lsn(), big.commit_lsn);
    let mut count = 0usize;
    let mut max_buffer = 0usize;
    while let Some(m) = txn.next_message().unwrap() {
        assert_eq!(m, big.messages[count], "message {count}");
        count += 1;
        if count.is_multiple_of(1000) {
            max_buffer = max_buffer.max(txn.reader_buffer_capacity());
        }
    }
    assert_eq!(count, ROWS + 2);
    assert!(
        max_buffer <= 1024 * 1024,
        "reader buffered {max_buffer} bytes"
    );
    assert!(reader.next_txn().unwrap().is_none());
}

#[test]
fn segments_roll_at_transaction_boundaries_and_start_with_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(4 * 1024, 1024)).unwrap();
    let mut stream = Stream::new(START);
    let mut txns = vec![stream.txn_with(
        16384,
        2,
        vec![type_msg(9001, "severity"), relation(16384, "alarms")],
    )];
    txns.push(stream.txn_with(16385, 2, vec![relation(16385, "elements")]));
    for i in 0..60 {
        txns.push(stream.txn(i % 40));
    }
    for t in &txns {
        write(&mut j, t);
    }
    j.flush().unwrap();
    let files = segments(dir.path());
    assert!(files.len() >= 3, "expected rolls, got {files:?}");
    let firsts: Vec<Lsn> = read_all(&j.handle(), START).iter().map(|t| t.0).collect();
    for (n, path) in files.iter().enumerate() {
        // Each segment is named by its first commit and holds whole transactions only.
        let scan = super::segment::scan(path, 1024).unwrap();
        assert_eq!(scan.clean_len, scan.file_len, "{path:?}");
        let name = path.file_name().unwrap().to_str().unwrap();
        let first = Lsn(u64::from_str_radix(&name[..16], 16).unwrap());
        assert!(firsts.contains(&first), "{name} is not a commit LSN");
        if n > 0 {
            let keys: Vec<_> = scan.context.messages().map(|m| m.payload[0]).collect();
            assert_eq!(keys, [b'Y', b'R', b'R'], "segment {n} head");
        }
    }
    // A reader starting in the second segment knows the relations defined in the first.
    let second_first = super::segment::list(dir.path()).unwrap()[1].0;
    let mut reader = j.reader_from(second_first).unwrap();
    let mut cache = RelationCache::new();
    for m in reader.context() {
        if let Message::Relation(r) = m.decode().unwrap() {
            cache.insert(r);
        }
    }
    assert_eq!(
        cache.get(crate::decode::RelId(16384)).unwrap().name,
        "alarms"
    );
    assert_eq!(
        cache.get(crate::decode::RelId(16385)).unwrap().name,
        "elements"
    );
    let txn = reader.next_txn().unwrap().unwrap();
    assert_eq!(txn.commit_lsn(), second_first);
}

#[test]
fn reader_from_the_middle_seeks_by_the_index_and_keeps_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(1 << 30, 4)).unwrap();
    let mut stream = Stream::new(START);
    let mut txns = vec![
        stream.txn(1),
        stream.txn_with(16390, 1, vec![relation(16390, "early")]),
    ];
    for i in 0..200 {
        txns.push(stream.txn(i % 5));
    }
    for t in &txns {
        write(&mut j, t);
    }
    j.flush().unwrap();
    let all = expected(&txns);
    for k in [0, 1, 2, 57, 150, 201] {
        assert_eq!(
            read_all(&j.handle(), txns[k].commit_lsn),
            all[k..],
            "from txn {k}"
        );
        // An LSN between two transactions starts at the next one.
        assert_eq!(
            read_all(&j.handle(), Lsn(txns[k].end_lsn.0 + 1)),
            all[k + 1..],
            "after txn {k}"
        );
    }
    let mut reader = j.reader_from(txns[150].commit_lsn).unwrap();
    let offset = reader.offset();
    assert!(
        offset > 4096,
        "the reader should have sought near its start, not to {offset}"
    );
    let names: Vec<String> = reader
        .context()
        .filter_map(|m| match m.decode().unwrap() {
            Message::Relation(r) => Some(r.name),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["early"]);
    assert_eq!(
        reader.next_txn().unwrap().unwrap().commit_lsn(),
        txns[150].commit_lsn
    );
    // Past the end: nothing yet, not an error.
    assert!(read_all(&j.handle(), Lsn(u64::MAX)).is_empty());
}

#[test]
fn retention_deletes_only_segments_ending_at_or_before_keep_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(2 * 1024, 8)).unwrap();
    let mut stream = Stream::new(START);
    let txns: Vec<_> = (0..120).map(|i| stream.txn(i % 9)).collect();
    for t in &txns {
        write(&mut j, t);
    }
    j.flush().unwrap();
    // The last end LSN of each segment file, before anything is deleted.
    let ends: HashMap<_, _> = segments(dir.path())
        .into_iter()
        .map(|p| {
            let end = super::segment::scan(&p, 8).unwrap().last.unwrap().1;
            (p, end)
        })
        .collect();
    let before = j.size_bytes();
    // Limits not reached: nothing goes, whatever keep_from allows.
    let kept = j
        .retain(
            txns[100].end_lsn,
            Some(u64::MAX),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(kept.removed.is_empty());
    for k in [0, 10, 40, 41, 99] {
        let keep_from = txns[k].end_lsn;
        let r = j.retain(keep_from, Some(0), None).unwrap();
        for p in &r.removed {
            assert!(
                ends[p] <= keep_from,
                "{p:?} ends at {} after keep_from {keep_from}",
                ends[p]
            );
        }
        assert!(j.oldest_lsn() <= keep_from);
        assert_eq!(read_all(&j.handle(), keep_from), expected(&txns[k + 1..]));
    }
    assert!(j.size_bytes() < before);
    // Everything deletable is gone, the active segment stays.
    j.retain(Lsn(u64::MAX), None, None).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    assert!(j.is_full(1) && !j.is_full(u64::MAX));
}

#[test]
fn too_old_names_the_oldest_lsn_and_says_to_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(1024, 8)).unwrap();
    assert!(matches!(
        j.reader_from(Lsn(START.0 - 1)),
        Err(JournalError::TooOld { requested, oldest }) if requested == Lsn(START.0 - 1) && oldest == START
    ));
    let mut stream = Stream::new(START);
    let txns: Vec<_> = (0..40).map(|_| stream.txn(10)).collect();
    for t in &txns {
        write(&mut j, t);
    }
    j.flush().unwrap();
    let r = j.retain(txns[20].end_lsn, None, None).unwrap();
    assert!(!r.removed.is_empty());
    let oldest = j.oldest_lsn();
    assert!(oldest > START && oldest <= txns[20].end_lsn);
    let err = j.reader_from(txns[0].commit_lsn).err().expect("too old");
    assert!(matches!(err, JournalError::TooOld { oldest: o, .. } if o == oldest));
    let text = err.to_string();
    assert!(
        text.contains(&oldest.to_string()) && text.contains("bootstrap"),
        "{text}"
    );
    assert!(j.reader_from(oldest).is_ok());
}

#[test]
fn tailing_reader_sees_transactions_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(2048, 4)).unwrap();
    let mut durable = j.handle().subscribe();
    let mut reader = j.reader_from(START).unwrap();
    assert!(reader.next_txn().unwrap().is_none(), "empty journal");
    let mut stream = Stream::new(START);
    for round in 0..30 {
        let t = stream.txn(round % 11);
        write(&mut j, &t);
        assert!(
            reader.next_txn().unwrap().is_none(),
            "not durable yet (round {round})"
        );
        assert_eq!(j.flush().unwrap(), t.end_lsn);
        assert!(durable.has_changed().unwrap());
        assert_eq!(*durable.borrow_and_update(), t.end_lsn);
        let mut txn = reader.next_txn().unwrap().expect("flushed transaction");
        assert_eq!(txn.commit_lsn(), t.commit_lsn);
        let got: Vec<_> = txn.by_ref().map(Result::unwrap).collect();
        assert_eq!(got, t.messages);
        assert!(reader.next_txn().unwrap().is_none());
    }
    assert!(
        segments(dir.path()).len() > 2,
        "the reader followed across rolls"
    );
}

#[test]
fn resends_are_skipped_and_a_broken_stream_drops_the_partial_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, options(1 << 20, 8)).unwrap();
    let mut stream = Stream::new(START);
    let (a, b, c) = (stream.txn(3), stream.txn(4), stream.txn(2));
    write(&mut j, &a);
    // The stream breaks inside b, and the primary resends from before a.
    for m in &b.messages[..3] {
        j.append(m.lsn, &m.payload).unwrap();
    }
    write(&mut j, &a);
    write(&mut j, &b);
    write(&mut j, &c);
    j.flush().unwrap();
    assert_eq!(
        read_all(&j.handle(), START),
        expected(&[a.clone(), b.clone(), c.clone()])
    );
    // Outside a transaction only a Begin is accepted; a Commit must match its Begin.
    let insert = testkit::insert(1, 1);
    assert!(matches!(
        j.append(Lsn(1), &insert),
        Err(JournalError::OutsideTransaction { tag: 'I', .. })
    ));
    let d = stream.txn(1);
    j.append(d.messages[0].lsn, &d.messages[0].payload).unwrap();
    let wrong = testkit::commit(Lsn(d.commit_lsn.0 + 8), d.end_lsn);
    assert!(matches!(
        j.append(d.commit_lsn, &wrong),
        Err(JournalError::CommitMismatch { .. })
    ));
    assert!(matches!(
        j.append(Lsn(1), &Bytes::new()),
        Err(JournalError::BadMessage { .. })
    ));
    assert_eq!(
        j.abandon_partial().unwrap(),
        17 + d.messages[0].payload.len() as u64
    );
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::open(dir.path(), START, JournalOptions::default()).unwrap();
    let err = Journal::open(dir.path(), START, JournalOptions::default())
        .err()
        .expect("locked");
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}
