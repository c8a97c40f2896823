//! Property tests: random transaction sizes, segment sizes, index spacing, flush points and
//! start positions; and the write throughput measurement (ignored; run it by hand).

use proptest::prelude::*;

use super::testkit::{expected, options, read_all, relation, write, Stream};
use super::Journal;
use crate::lsn::Lsn;

const START: Lsn = Lsn(0x3_0000_0000);

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_sizes_read_back_exactly_from_any_start(
        sizes in proptest::collection::vec(0usize..120, 1..40),
        segment_bytes in 256u64..16 * 1024,
        index_every in 1u32..24,
        flush_every in 1usize..6,
        ends_torn in any::<bool>(),
        pick in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(segment_bytes, index_every);
        let mut stream = Stream::new(START);
        let txns: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let extra = if i % 9 == 0 { vec![relation(16384 + i as u32, "t")] } else { vec![] };
                stream.txn_with(16384, rows, extra)
            })
            .collect();
        {
            let mut j = Journal::open(dir.path(), START, opts).unwrap();
            for (i, t) in txns.iter().enumerate() {
                write(&mut j, t);
                if i % flush_every == 0 {
                    prop_assert_eq!(j.flush().unwrap(), t.end_lsn);
                }
            }
            if ends_torn {
                // A transaction that never got its Commit.
                let partial = stream.txn(5);
                for m in &partial.messages[..4] {
                    j.append(m.lsn, &m.payload).unwrap();
                }
            }
        }
        let j = Journal::open(dir.path(), START, opts).unwrap();
        prop_assert_eq!(j.recovery().durable, txns.last().unwrap().end_lsn);
        let all = expected(&txns);
        prop_assert_eq!(&read_all(&j.handle(), START), &all);
        let k = pick.index(txns.len());
        prop_assert_eq!(&read_all(&j.handle(), txns[k].commit_lsn), &all[k..].to_vec());
        prop_assert_eq!(&read_all(&j.handle(), Lsn(txns[k].end_lsn.0 + 1)), &all[k + 1..].to_vec());
    }
}

/// Write throughput with an fsync per 1 MiB batch. A measurement, not a test: run with
/// `cargo test --lib journal::proptests::write_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn write_throughput() {
    const ROWS_PER_TXN: usize = 10;
    const TXNS: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), START, super::JournalOptions::default()).unwrap();
    let mut stream = Stream::new(START);
    let txns: Vec<_> = (0..TXNS).map(|_| stream.txn(ROWS_PER_TXN)).collect();
    let records: usize = txns.iter().map(|t| t.messages.len()).sum();
    let bytes: usize = txns
        .iter()
        .flat_map(|t| &t.messages)
        .map(|m| m.payload.len() + 17)
        .sum();
    let (mut fsyncs, started) = (0, std::time::Instant::now());
    for t in &txns {
        write(&mut j, t);
        if j.pending_bytes() >= 1 << 20 {
            j.flush().unwrap();
            fsyncs += 1;
        }
    }
    j.flush().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "journal write: {records} records ({:.1} MiB) in {secs:.2} s with {} fsyncs: \
         {:.0} records/s, {:.1} MiB/s",
        bytes as f64 / 1048576.0,
        fsyncs + 1,
        records as f64 / secs,
        bytes as f64 / 1048576.0 / secs
    );
}
