//! Automatic failover between two real sidecars: the primary's PostgreSQL is stopped
//! (immediate) at random moments under an NMS write load, ten times, back and forth. The
//! standby promotes itself after the timeout (the witness answers); the old primary comes back,
//! is written to by a stray NMS session (split brain attempted), fences itself, saves what
//! diverged and rejoins. Asynchronous: every acknowledged transaction is on the new primary or
//! in the old primary's divergence file, never both. Synchronous: every acknowledged transaction
//! is on the new primary.
//!
//! `UNDERSTUDY_FAILOVER_SEED` replays the kill timings.
mod common;
mod sidecar;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sidecar::{diverged_seqs, ledger, Extra, Sidecars, Writer, NAMES};
use understudy::cluster::StopMode;
use understudy::pg::conninfo::ConnInfo;

const FAILOVERS: usize = 10;

/// The tests of this file run one at a time: failure detection is timing-based, and pairs under
/// load side by side on a small machine would make probes time out.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TIMEOUT_SECS: f64 = 2.0;

/// A TCP witness that accepts every connection.
fn witness() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

/// A stray NMS session on the restarted old primary: it writes until it is refused (or `for_`
/// passes) and returns the seqs whose COMMIT returned.
async fn stray_writes(port: u16, first: i64, for_: Duration) -> Vec<i64> {
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=nms_app dbname=nms connect_timeout=1"
    ))
    .unwrap();
    let start = Instant::now();
    let mut acked = Vec::new();
    let mut seq = first;
    while start.elapsed() < for_ {
        let Ok(c) = info.connect("stray nms").await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        loop {
            match c
                .execute(
                    "INSERT INTO nms.ledger (seq, node) VALUES ($1, 'stray')",
                    &[&seq],
                )
                .await
            {
                Ok(_) => {
                    acked.push(seq);
                    seq += 1;
                }
                Err(_) => return acked,
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    acked
}

async fn failovers(sync: bool) {
    let seed: u64 = std::env::var("UNDERSTUDY_FAILOVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("UNDERSTUDY_FAILOVER_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let extra = Extra {
        failover: format!(
            "automatic = true\ntimeout = \"{TIMEOUT_SECS}s\"\nwitness = \"tcp:127.0.0.1:{}\"\n",
            witness()
        ),
        sync: if sync {
            "mode = \"sync\"\non_standby_loss = \"async\"\nfallback_after = \"1s\"\n".into()
        } else {
            String::new()
        },
        ..Extra::default()
    };
    let mut sc = Sidecars::prepare(extra).await;
    sc.start(0);
    sc.start(1);
    sc.settled(0, Duration::from_secs(120)).await;

    let writer = Writer::start([sc.port(0), sc.port(1)], Duration::from_millis(3), 1);
    let mut primary = 0usize;
    let mut takeovers = Vec::new();
    let mut promotions = Vec::new();
    let mut stray_acked = BTreeSet::new();
    for round in 0..FAILOVERS {
        let standby = 1 - primary;
        if sync {
            wait_sync(&sc, primary).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let epoch_before = sc.status(standby).await.map(|s| s.epoch).unwrap_or(0);
        let killed = Instant::now();
        sc.cluster(primary).stop(StopMode::Immediate).unwrap();
        let promoted = loop {
            if let Some(s) = sc.status(standby).await {
                if s.role == "primary" && s.epoch > epoch_before {
                    break s;
                }
            }
            if killed.elapsed() > Duration::from_secs(60) {
                panic!(
                    "round {round}: {} did not take over within 60 s\n{}",
                    NAMES[standby],
                    sidecar::tail(&sc.log(standby), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        takeovers.push(killed.elapsed().as_secs_f64());
        promotions.push(promoted.last_promotion.as_ref().unwrap().seconds);
        assert_eq!(promoted.last_promotion.as_ref().unwrap().kind, "failover");

        // The old primary comes back; a stray NMS session writes to it until fenced.
        sc.cluster(primary).restart().unwrap();
        let first = 1_000_000_000 + (round as i64) * 1_000_000;
        stray_acked.extend(stray_writes(sc.port(primary), first, Duration::from_secs(3)).await);
        sc.settled(standby, Duration::from_secs(120)).await;
        check(&sc, standby, &writer, &stray_acked, sync).await;
        primary = standby;
    }
    let acked = writer.stop().await;
    sc.settled(primary, Duration::from_secs(60)).await;
    let total = acked.commits.len();
    check_acked(&sc, primary, &acked, &stray_acked, sync).await;
    common::assert_same_rows(&sc.pair).await;

    takeovers.sort_by(f64::total_cmp);
    promotions.sort_by(f64::total_cmp);
    let diverged = diverged_seqs(&sc.divergence_dir(), None);
    println!(
        "{} failover ({FAILOVERS} immediate stops, timeout {TIMEOUT_SECS} s, probe 250 ms): \
         kill to writable new primary p50 {:.2} s, max {:.2} s; promotion itself p50 {:.3} s, \
         max {:.3} s; {} acknowledged inserts; {} stray inserts on restarted old primaries, \
         {} ledger inserts in divergence files",
        if sync { "synchronous" } else { "asynchronous" },
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
        promotions[promotions.len() / 2],
        promotions[promotions.len() - 1],
        total,
        stray_acked.len(),
        diverged.len()
    );
}

async fn check(sc: &Sidecars, primary: usize, writer: &Writer, stray: &BTreeSet<i64>, sync: bool) {
    check_acked(sc, primary, &writer.acknowledged(), stray, sync).await;
}

/// Every acknowledged seq is on the primary or in a divergence file, never both; in
/// synchronous mode every seq acknowledged by a node in its turn as primary is on the primary.
async fn check_acked(
    sc: &Sidecars,
    primary: usize,
    acked: &understudy::sidecar::ledger::Acked,
    stray: &BTreeSet<i64>,
    sync: bool,
) {
    let have: BTreeSet<i64> = ledger(&sc.dsn(primary)).await.into_iter().collect();
    let diverged: BTreeSet<i64> = diverged_seqs(&sc.divergence_dir(), None)
        .into_iter()
        .collect();
    for (node, seqs) in &acked.by_node {
        // A seq whose COMMIT on the old primary never answered was written again on the new
        // one: it may be in the old one's divergence file too. One it acknowledged may not.
        let own: BTreeSet<i64> = diverged_seqs(&sc.divergence_dir(), Some(NAMES[*node]))
            .into_iter()
            .collect();
        for seq in seqs {
            let (on, saved) = (have.contains(seq), diverged.contains(seq));
            assert!(
                on || saved,
                "seq {seq} was acknowledged by {} but is neither on the primary nor in a \
                 divergence file",
                NAMES[*node]
            );
            assert!(
                !(on && own.contains(seq)),
                "seq {seq}, acknowledged by {}, is on the primary and in its divergence file",
                NAMES[*node]
            );
            if sync {
                assert!(
                    on,
                    "synchronous mode lost seq {seq} acknowledged by {}",
                    NAMES[*node]
                );
            }
        }
    }
    for seq in stray {
        assert!(
            !have.contains(seq),
            "split brain: stray seq {seq}, written to the fenced old primary, is on the primary"
        );
        assert!(
            diverged.contains(seq),
            "stray seq {seq} acknowledged by the old primary is not in its divergence file"
        );
    }
}

async fn wait_sync(sc: &Sidecars, primary: usize) {
    let start = Instant::now();
    loop {
        if let Some(s) = sc.status(primary).await {
            if s.sync.state == "sync" {
                let c = ConnInfo::parse(&sc.dsn(primary))
                    .unwrap()
                    .connect("t")
                    .await
                    .unwrap();
                let state: Option<String> = c
                    .query_opt(
                        "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                        &[&format!("understudy_{}", NAMES[1 - primary])],
                    )
                    .await
                    .unwrap()
                    .map(|r| r.get(0));
                if state.as_deref() == Some("sync") {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never became a synchronous standby\n{}",
            NAMES[1 - primary],
            sidecar::tail(&sc.log(primary), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both modes in one test, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failovers_each_async_and_sync_lose_nothing_silently() {
    let _serial = SERIAL.lock().await;
    failovers(false).await;
    failovers(true).await;
}

/// A primary cut off from both its standby and the witness stops taking NMS writes (it is
/// probably the side about to be replaced) and takes them again when its standby comes back
/// without having taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_primary_refuses_writes_until_its_standby_returns() {
    let _serial = SERIAL.lock().await;
    let witness = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = witness.local_addr().unwrap().port();
    let accepting = tokio::spawn(async move {
        loop {
            let _ = witness.accept().await;
        }
    });
    let extra = Extra {
        failover: format!(
            "automatic = true\ntimeout = \"{TIMEOUT_SECS}s\"\nwitness = \"tcp:127.0.0.1:{port}\"\n"
        ),
        ..Extra::default()
    };
    let mut sc = Sidecars::prepare(extra).await;
    sc.start(0);
    sc.start(1);
    sc.settled(0, Duration::from_secs(120)).await;
    let app = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user=nms_app dbname=nms",
        sc.port(0)
    ))
    .unwrap()
    .connect("nms")
    .await
    .unwrap();
    app.execute("INSERT INTO nms.ledger (seq, node) VALUES (1, 'a')", &[])
        .await
        .unwrap();

    // b's machine goes away (sidecar and database), and so does the witness.
    sc.kill(1);
    sc.cluster(1).stop(StopMode::Immediate).unwrap();
    accepting.abort();
    let _ = accepting.await;
    let start = Instant::now();
    let mut seq = 2i64;
    let refused_after = loop {
        let r = app
            .execute(
                "INSERT INTO nms.ledger (seq, node) VALUES ($1, 'a')",
                &[&seq],
            )
            .await;
        match r {
            Ok(_) => seq += 1,
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                    "{e:?}"
                );
                break start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the isolated primary kept taking writes\n{}",
            sidecar::tail(&sc.log(0), 20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = sc.status(0).await.unwrap();
    assert_eq!((status.role.as_str(), status.epoch), ("primary", 0));
    assert!(
        status.alarms.iter().any(|a| a.starts_with("isolated")),
        "{:?}",
        status.alarms
    );

    // b comes back as it was (it never took over): a takes writes again, b follows.
    sc.cluster(1).restart().unwrap();
    sc.start(1);
    sc.settled(0, Duration::from_secs(60)).await;
    let start = Instant::now();
    loop {
        if app
            .execute(
                "INSERT INTO nms.ledger (seq, node) VALUES ($1, 'a')",
                &[&seq],
            )
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "writes did not resume\n{}",
            sidecar::tail(&sc.log(0), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "isolated primary refused NMS writes {:.2} s after losing standby and witness (timeout \
         {TIMEOUT_SECS} s); writes resumed once the standby was back",
        refused_after.as_secs_f64()
    );
}
