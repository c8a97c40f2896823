//! Planned switchover between two real sidecars under a steady NMS write load, ten times, back
//! and forth: every acknowledged transaction is on the new primary exactly once, the old primary
//! follows the new one without a copy, and the window with no writable node is measured.
mod common;
mod sidecar;

use std::time::{Duration, Instant};

use sidecar::{ledger, Extra, Sidecars, Writer, NAMES, TOKEN};
use understudy::sidecar::http;

const SWITCHOVERS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_switchovers_under_load_lose_nothing_and_need_no_copy() {
    let mut sc = Sidecars::prepare(Extra::default()).await;
    sc.start(0);
    sc.start(1);
    sc.settled(0, Duration::from_secs(120)).await;
    // b was copied once, at its first start.
    assert!(
        sc.log(1).contains("copying the primary's database"),
        "{}",
        sc.log(1)
    );

    let writer = Writer::start([sc.port(0), sc.port(1)], Duration::from_millis(5), 1);
    let mut windows = Vec::new();
    let mut client_gaps = Vec::new();
    let mut primary = 0usize;
    for round in 0..SWITCHOVERS {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let standby = 1 - primary;
        let before = Instant::now();
        let reply = http::post_command(
            sc.http[primary],
            "/v1/switchover",
            Some(TOKEN),
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "switchover {round} failed: {e:#}\n--- {}:\n{}\n--- {}:\n{}",
                NAMES[primary],
                sidecar::tail(&sc.log(primary), 30),
                NAMES[standby],
                sidecar::tail(&sc.log(standby), 30)
            )
        });
        let window = reply["no_writer_window_ms"].as_f64().unwrap();
        windows.push(window);
        assert_eq!(reply["primary"], NAMES[standby], "{reply}");
        let (p, s) = sc.settled(standby, Duration::from_secs(60)).await;
        assert_eq!(p.epoch, (round + 1) as i64, "one epoch per switchover");
        assert_eq!(s.epoch, p.epoch);
        // The longest pause between two acknowledged commits around the switchover, as the NMS
        // saw it.
        let acked = writer.acknowledged();
        let gap = acked
            .commits
            .windows(2)
            .filter(|w| w[1].0 >= before)
            .map(|w| w[1].0.duration_since(w[0].0))
            .max()
            .unwrap_or_default();
        client_gaps.push(gap.as_secs_f64() * 1000.0);
        primary = standby;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writer.stop().await;
    sc.settled(primary, Duration::from_secs(60)).await;

    // Every acknowledged insert is on the final primary, exactly once (seq is its key), and the
    // standby has the same rows.
    let mut want: Vec<i64> = acked.by_node.values().flatten().copied().collect();
    let nodes_written = acked.by_node.len();
    want.sort_unstable();
    let have = ledger(&sc.dsn(primary)).await;
    let missing: Vec<&i64> = want
        .iter()
        .filter(|s| have.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert_eq!(have.len(), want.len(), "rows that were never acknowledged");
    assert_eq!(nodes_written, 2, "both nodes took writes in turn");
    let standby_rows = ledger(&sc.dsn(1 - primary)).await;
    assert_eq!(standby_rows, have, "the standby differs from the primary");
    common::assert_same_rows(&sc.pair).await;

    // No copy after the first start: each old primary followed the new one from its slot.
    for (i, name) in NAMES.iter().enumerate() {
        let log = sc.log(i);
        assert!(
            !log.contains("copied again"),
            "node {name} was copied again:\n{log}"
        );
        assert!(
            !log.contains("DIVERGED"),
            "a planned switchover diverged:\n{log}"
        );
    }
    assert_eq!(
        sc.log(0).matches("following the new primary from").count()
            + sc.log(1).matches("following the new primary from").count(),
        SWITCHOVERS
    );

    // A write privilege granted by hand on the standby shows up as an alarm in its status.
    let standby = 1 - primary;
    let c = understudy::pg::conninfo::ConnInfo::parse(&sc.dsn(standby))
        .unwrap()
        .connect("test")
        .await
        .unwrap();
    c.batch_execute("GRANT INSERT ON nms.ledger TO nms_app")
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let alarms = sc
            .status(standby)
            .await
            .map(|s| s.alarms)
            .unwrap_or_default();
        if alarms
            .iter()
            .any(|a| a.contains("crept back") && a.contains("nms.ledger"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no alarm for the privilege granted by hand: {alarms:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    windows.sort_by(f64::total_cmp);
    client_gaps.sort_by(f64::total_cmp);
    let p50 = |v: &[f64]| v[v.len() / 2];
    println!(
        "switchover no-writer window over {SWITCHOVERS}: p50 {:.1} ms, max {:.1} ms (fence to \
         writes open on the new primary); longest pause between acknowledged NMS commits: p50 \
         {:.1} ms, max {:.1} ms; {} acknowledged inserts",
        p50(&windows),
        windows[windows.len() - 1],
        p50(&client_gaps),
        client_gaps[client_gaps.len() - 1],
        want.len()
    );
}

/// The standby's sidecar delivers a mutation message for every change it applies to its NMS
/// (`[messages]`, here an exec sink appending JSON lines to a file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_sidecar_delivers_mutation_messages_to_its_nms() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b-messages.jsonl");
    let mut extra = Extra::default();
    extra.messages[1] = format!(
        "sinks = [\"exec:interval=100ms,from=oldest:cat >> '{}'\"]\n",
        file.display()
    );
    let mut sc = Sidecars::prepare(extra).await;
    sc.start(0);
    sc.start(1);
    sc.settled(0, Duration::from_secs(120)).await;
    let a = understudy::pg::conninfo::ConnInfo::parse(&sc.dsn(0))
        .unwrap()
        .connect("test")
        .await
        .unwrap();
    for seq in 1..=50i64 {
        a.execute(
            "INSERT INTO nms.ledger (seq, node) VALUES ($1, 'a')",
            &[&seq],
        )
        .await
        .unwrap();
    }
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut seqs: Vec<i64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["table"] == "nms.ledger" && m["op"] == "insert")
            .filter_map(|m| {
                let v = &m["new"]["seq"];
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        if seqs == (1..=50).collect::<Vec<i64>>() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the standby's NMS got {} of 50 ledger messages\n{}",
            seqs.len(),
            sidecar::tail(&sc.log(1), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
