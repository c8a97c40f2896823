//! Crashes and restarts against real clusters: the follower SIGKILLed at random moments while the
//! NMS writes (exactly-once apply, ack discipline), the primary stopped like a power cut
//! mid-stream (transient failure, retry from the standby's position), and transactions that
//! interleave, roll back and roll back to a savepoint (prefix consistency, commit order).
mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;
use understudy::cluster::StopMode;
use understudy::follow::{self, FollowOptions, FollowProgress};
use understudy::lsn::Lsn;
use understudy::pg::conninfo::ConnInfo;

use common::{assert_same_rows, file_tail, load_nms, wait_for, wait_with_peak_rss, Pair};

/// Two NMS sessions calling `nms.workload_tick` in a loop (autocommit, one source transaction
/// per call); session 0 also raises an alarm storm every `storm_every`.
struct Workload {
    halt: watch::Sender<bool>,
    sessions: JoinSet<Session>,
}

/// How one workload session ended.
#[derive(Debug)]
struct Session {
    ticks: u64,
    storms: u64,
    error: Option<String>,
}

impl Workload {
    async fn start(primary: &ConnInfo, seed_base: i32, storm_every: Duration) -> Workload {
        let (halt, halt_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        for session in 0..2i32 {
            let client = primary.connect("crash test workload").await.unwrap();
            let halt_rx = halt_rx.clone();
            sessions.spawn(async move {
                let mut s = Session {
                    ticks: 0,
                    storms: 0,
                    error: None,
                };
                let mut last_storm = Instant::now();
                while !*halt_rx.borrow() {
                    let seed = seed_base
                        .wrapping_add((s.ticks as i32).wrapping_mul(2))
                        .wrapping_add(session);
                    if let Err(e) = client
                        .execute("SELECT nms.workload_tick($1::int)", &[&seed])
                        .await
                    {
                        s.error = Some(format!("workload_tick({seed}): {e}"));
                        break;
                    }
                    s.ticks += 1;
                    if session == 0 && last_storm.elapsed() >= storm_every {
                        if let Err(e) = client.execute("SELECT nms.alarm_storm(20, 8)", &[]).await {
                            s.error = Some(format!("alarm_storm: {e}"));
                            break;
                        }
                        s.storms += 1;
                        last_storm = Instant::now();
                    }
                }
                s
            });
        }
        Workload { halt, sessions }
    }

    /// Stop the sessions and return how each ended.
    async fn stop(mut self) -> Vec<Session> {
        self.halt.send_replace(true);
        let mut out = Vec::new();
        while let Some(s) = self.sessions.join_next().await {
            out.push(s.expect("workload session panicked"));
        }
        out
    }

    /// Stop the sessions, failing on any session error; returns (ticks, storms).
    async fn stop_clean(self) -> (u64, u64) {
        let sessions = self.stop().await;
        for s in &sessions {
            assert!(s.error.is_none(), "workload session failed: {s:?}");
        }
        (
            sessions.iter().map(|s| s.ticks).sum(),
            sessions.iter().map(|s| s.storms).sum(),
        )
    }
}

fn append(log: &Path, line: &str) {
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    writeln!(f, "{line}").unwrap();
}

fn log_handle(log: &Path) -> std::fs::File {
    OpenOptions::new().append(true).open(log).unwrap()
}

/// The flush position the primary holds for our slot must never pass what the standby records.
async fn assert_ack_not_ahead(pair: &Pair, when: &str, log: &Path) -> Lsn {
    // Confirmed first, applied second: applied only grows, so a correct follower always passes.
    let confirmed = pair.slot_confirmed_flush().await;
    let applied = pair.applied_lsn().await;
    if let Some(confirmed) = confirmed {
        assert!(
            confirmed <= applied,
            "{when}: the slot's confirmed_flush_lsn {confirmed} is past the standby's applied_lsn \
             {applied}: the primary may recycle WAL the standby never applied (guarantee 4); \
             follow log {}:\n{}",
            log.display(),
            file_tail(log, 40)
        );
    }
    applied
}

/// (count, distinct ids, ids in order) of nms.alarm_history.
async fn alarm_history(client: &tokio_postgres::Client) -> (i64, i64, Vec<i64>) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM nms.alarm_history",
            &[],
        )
        .await
        .unwrap();
    let ids = client
        .query("SELECT id FROM nms.alarm_history ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (row.get(0), row.get(1), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_at_random_moments_loses_and_duplicates_nothing() {
    const KILLS: u32 = 20;
    let seed: u64 = std::env::var("UNDERSTUDY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (reproduce with UNDERSTUDY_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let pair = Pair::start();
    let p = pair.primary_client().await;
    load_nms(&p).await;
    pair.bootstrap().await;
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-follow-{seed}.log"));
    std::fs::write(&log, "").unwrap();
    eprintln!("follow log: {}", log.display());

    let mut last = pair.applied_lsn().await;
    let bootstrapped = last;
    let workload = Workload::start(&pair.primary_info(), 0, Duration::from_millis(700)).await;
    let started = Instant::now();
    let mut advanced = 0;
    for round in 1..=KILLS {
        let run_ms = rng.gen_range(50..=1500u64);
        append(
            &log,
            &format!("===== round {round}: SIGKILL after {run_ms} ms ====="),
        );
        let mut child = pair
            .understudy_command(&["follow"])
            .env("UNDERSTUDY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log_handle(&log))
            .stderr(log_handle(&log))
            .spawn()
            .expect("spawn understudy follow");
        // The random moment is the point of this sleep: nothing to wait for.
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "round {round}: `understudy follow` exited by itself ({status}) before it was \
                 killed; log {}:\n{}",
                log.display(),
                file_tail(&log, 40)
            );
        }
        child.kill().expect("SIGKILL the follower");
        let status = child.wait().unwrap();
        append(
            &log,
            &format!("===== round {round}: killed ({status}) ====="),
        );

        let applied = assert_ack_not_ahead(&pair, &format!("after kill {round}"), &log).await;
        assert!(
            applied >= last,
            "round {round}: the standby's applied_lsn went back from {last} to {applied}"
        );
        if applied > last {
            advanced += 1;
        }
        eprintln!("round {round}: ran {run_ms} ms, standby applied up to {applied}");
        last = applied;
    }
    let (ticks, storms) = workload.stop_clean().await;
    eprintln!(
        "{KILLS} kills in {:.1} s while the workload wrote {ticks} ticks and {storms} storms; \
         applied position advanced in {advanced} of them",
        started.elapsed().as_secs_f64()
    );
    assert!(
        advanced >= 3,
        "the follower applied something in only {advanced} of {KILLS} runs: the kills did not \
         land while it was working, so this test proved nothing; log {}:\n{}",
        log.display(),
        file_tail(&log, 40)
    );
    assert!(last > bootstrapped, "nothing was applied during the kills");

    append(&log, "===== final follow --until-caught-up =====");
    let catch_up = Instant::now();
    let child = pair
        .understudy_command(&["follow", "--until-caught-up"])
        .env("NO_COLOR", "1")
        .stdout(log_handle(&log))
        .stderr(log_handle(&log))
        .spawn()
        .expect("spawn understudy follow --until-caught-up");
    let done = tokio::task::spawn_blocking(move || {
        wait_with_peak_rss(child, Duration::from_secs(120), "follow --until-caught-up")
    })
    .await
    .unwrap();
    assert_eq!(
        done.code,
        Some(0),
        "follow --until-caught-up failed ({done:?}); log {}:\n{}",
        log.display(),
        file_tail(&log, 40)
    );
    eprintln!(
        "final catch-up took {:.1} s",
        catch_up.elapsed().as_secs_f64()
    );

    assert_same_rows(&pair).await;
    let check = pair.understudy(&["check"]);
    assert!(
        check.status.success(),
        "check found differences: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_ack_not_ahead(&pair, "after the final catch-up", &log).await;
    let confirmed = pair.slot_confirmed_flush().await;
    assert!(
        confirmed.is_some_and(|c| c > bootstrapped),
        "the slot's confirmed_flush_lsn {confirmed:?} never moved past the bootstrap position \
         {bootstrapped}: the primary keeps all WAL for ever"
    );

    let (p_count, p_distinct, p_ids) = alarm_history(&p).await;
    let (s_count, s_distinct, s_ids) = alarm_history(&pair.standby_client().await).await;
    assert!(p_count > 0, "the workload wrote no alarm history");
    assert_eq!(
        s_count, s_distinct,
        "alarm_history rows duplicated on the standby"
    );
    assert_eq!(
        (s_count, s_distinct),
        (p_count, p_distinct),
        "alarm_history: {p_count} rows on the primary, {s_count} on the standby"
    );
    assert!(
        p_ids == s_ids,
        "alarm_history ids differ: only on primary {:?}, only on standby {:?}",
        p_ids
            .iter()
            .filter(|i| s_ids.binary_search(i).is_err())
            .take(5)
            .collect::<Vec<_>>(),
        s_ids
            .iter()
            .filter(|i| p_ids.binary_search(i).is_err())
            .take(5)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_restarted_mid_stream() {
    let mut pair = Pair::start();
    let p = pair.primary_client().await;
    load_nms(&p).await;
    p.batch_execute("CREATE TABLE public.restart_marker (id int PRIMARY KEY)")
        .await
        .unwrap();
    drop(p);
    pair.bootstrap().await;

    let mut options = FollowOptions::new(pair.primary_info(), pair.standby_info());
    options.max_retries = None;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(FollowProgress::default());
    let follower =
        tokio::spawn(async move { follow::follow(&options, stop_rx, Some(progress_tx)).await });

    let workload = Workload::start(&pair.primary_info(), 0, Duration::from_millis(500)).await;
    let writing = Instant::now();
    wait_for(
        "the follower to apply 3000 workload rows before the primary stops",
        Duration::from_secs(60),
        || {
            let n = progress_rx.borrow().rows;
            let long_enough = writing.elapsed() > Duration::from_millis(1500);
            async move { n >= 3000 && long_enough }
        },
    )
    .await;
    let before_stop = *progress_rx.borrow();
    tokio::task::block_in_place(|| pair.primary.stop(StopMode::Immediate))
        .expect("stop the primary (immediate)");
    let phase1 = workload.stop().await;
    let ticks1: u64 = phase1.iter().map(|s| s.ticks).sum();
    eprintln!(
        "primary stopped (immediate) after {ticks1} ticks; follower had applied {} transactions \
         up to {}; sessions ended with {:?}",
        before_stop.transactions,
        before_stop.applied,
        phase1
            .iter()
            .map(|s| s.error.as_deref())
            .collect::<Vec<_>>()
    );

    // The outage lasts about a second; the follower must still be retrying afterwards.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !follower.is_finished(),
        "the follower gave up while the primary was down: {:?}",
        follower.await
    );
    tokio::task::block_in_place(|| pair.primary.restart()).expect("restart the primary");
    // The applied position, not the transaction counter: the counter restarts with each attempt.
    let at_restart = follow::primary_wal_position(&pair.primary_info())
        .await
        .unwrap();

    let workload =
        Workload::start(&pair.primary_info(), 1_000_000, Duration::from_millis(500)).await;
    let writing = Instant::now();
    wait_for(
        "the follower to reconnect and apply what was written after the restart",
        Duration::from_secs(90),
        || {
            let applied = progress_rx.borrow().applied;
            let long_enough = writing.elapsed() > Duration::from_secs(3);
            async move { applied > at_restart && long_enough }
        },
    )
    .await;
    let (ticks2, storms2) = workload.stop_clean().await;
    pair.primary_client()
        .await
        .execute("INSERT INTO public.restart_marker VALUES (1)", &[])
        .await
        .unwrap();
    let standby = pair.standby_client().await;
    wait_for(
        "the follower to apply the marker written after the workload",
        Duration::from_secs(60),
        || {
            let standby = &standby;
            async move {
                standby
                    .query_one("SELECT count(*) FROM public.restart_marker", &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 1
            }
        },
    )
    .await;
    eprintln!("after the restart: {ticks2} ticks, {storms2} storms, applied by the same follower");
    assert!(storms2 > 0, "no alarm storm after the restart");

    stop_tx.send_replace(true);
    let summary = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower did not stop within 30 s of the shutdown signal")
        .expect("follower task")
        .expect("the follower failed");
    eprintln!(
        "follower stopped: {} transactions, {} rows, applied up to {}",
        summary.transactions, summary.rows, summary.applied
    );
    pair.catch_up().await;
    assert_same_rows(&pair).await;
    let check = pair.understudy(&["check"]);
    assert!(
        check.status.success(),
        "check found differences: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Run `sql` in one session, failing the test with the statement on error.
async fn run(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The `note` of row `id` in public.ledger, or None when the row is absent.
async fn note(client: &tokio_postgres::Client, id: i32) -> Option<String> {
    client
        .query_opt("SELECT note FROM public.ledger WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_transactions_apply_in_commit_order() {
    let pair = Pair::start();
    let setup = pair.primary_client().await;
    setup
        .batch_execute(
            "CREATE TABLE public.ledger (id int PRIMARY KEY, owner text NOT NULL, \
             val int NOT NULL, note text NOT NULL)",
        )
        .await
        .unwrap();
    pair.bootstrap().await;
    // Committed before the interleaving, streamed (not copied).
    setup
        .batch_execute(
            "INSERT INTO public.ledger SELECT g, 'seed', g, 'seed' FROM generate_series(1, 8) g",
        )
        .await
        .unwrap();

    let a = pair.primary_client().await;
    let b = pair.primary_client().await;
    let c = pair.primary_client().await;
    let d = pair.primary_client().await;
    let e = pair.primary_client().await;
    // Begin order A, B, C, D, E; each writes at once, so the xids follow the begin order too.
    run(&a, "BEGIN; INSERT INTO ledger VALUES (100, 'a', 1, 'a')").await;
    run(&b, "BEGIN; INSERT INTO ledger VALUES (200, 'b', 1, 'b')").await;
    run(&c, "BEGIN; INSERT INTO ledger VALUES (300, 'c', 3, 'c')").await;
    run(&d, "BEGIN; INSERT INTO ledger VALUES (400, 'd', 1, 'd')").await;
    run(&e, "BEGIN; INSERT INTO ledger VALUES (500, 'e', 1, 'e')").await;

    // Interleaved changes to different rows.
    run(&a, "INSERT INTO ledger VALUES (101, 'a', 1, 'a')").await;
    run(
        &b,
        "UPDATE ledger SET val = val + 10, note = 'b touched' WHERE id = 1",
    )
    .await;
    run(&d, "UPDATE ledger SET note = 'rolled back' WHERE id = 5").await;
    run(
        &c,
        "UPDATE ledger SET val = val + 20, note = 'c touched' WHERE id = 2",
    )
    .await;
    run(&e, "SAVEPOINT s1").await;
    run(&a, "UPDATE ledger SET val = val * 7 WHERE id = 100").await;
    run(
        &e,
        "INSERT INTO ledger VALUES (501, 'e', 1, 'savepoint rolled back')",
    )
    .await;
    run(&b, "INSERT INTO ledger VALUES (201, 'b', 1, 'b')").await;
    run(
        &e,
        "UPDATE ledger SET note = 'savepoint rolled back' WHERE id = 6",
    )
    .await;
    run(&c, "DELETE FROM ledger WHERE id = 3").await;
    run(&e, "DELETE FROM ledger WHERE id = 7").await;
    run(&d, "INSERT INTO ledger VALUES (401, 'd', 1, 'rolled back')").await;
    run(&a, "UPDATE ledger SET note = 'a touched' WHERE id = 4").await;
    run(&e, "ROLLBACK TO SAVEPOINT s1").await;
    run(&e, "INSERT INTO ledger VALUES (502, 'e', 1, 'e')").await;
    run(&d, "ROLLBACK").await;
    run(
        &e,
        "SAVEPOINT s2; INSERT INTO ledger VALUES (503, 'e', 1, 'e'); RELEASE SAVEPOINT s2",
    )
    .await;
    run(&e, "UPDATE ledger SET note = 'e touched' WHERE id = 8").await;

    // Commit in reverse begin order; each later transaction changes rows the earlier-committed
    // ones wrote, so applying in begin (or xid) order gives a different result or fails.
    run(&c, "COMMIT").await;
    run(
        &b,
        "UPDATE ledger SET val = val * 2, note = note || '+b' WHERE id = 300",
    )
    .await;
    run(&b, "COMMIT").await;
    run(
        &a,
        "UPDATE ledger SET val = val + 1, note = note || '+a' WHERE id = 300",
    )
    .await;
    run(&a, "UPDATE ledger SET note = 'a after b' WHERE id = 201").await;
    run(&a, "DELETE FROM ledger WHERE id = 200").await;
    run(&a, "COMMIT").await;
    run(&e, "UPDATE ledger SET note = note || '+e' WHERE id = 300").await;
    run(&e, "COMMIT").await;

    // The test's own expectations hold on the primary…
    let expect = |client: tokio_postgres::Client, side: &'static str| async move {
        let val300: i32 = client
            .query_one("SELECT val FROM ledger WHERE id = 300", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(val300, 3 * 2 + 1, "{side}: row 300 val (c, then b, then a)");
        assert_eq!(
            note(&client, 300).await.as_deref(),
            Some("c+b+a+e"),
            "{side}: row 300 note (commit order c, b, a, e)"
        );
        assert_eq!(
            note(&client, 201).await.as_deref(),
            Some("a after b"),
            "{side}"
        );
        assert_eq!(
            note(&client, 200).await,
            None,
            "{side}: row 200 deleted by a"
        );
        for id in [400, 401, 501] {
            assert_eq!(
                note(&client, id).await,
                None,
                "{side}: row {id} comes from a rolled-back part and must be absent"
            );
        }
        assert_eq!(
            note(&client, 5).await.as_deref(),
            Some("seed"),
            "{side}: row 5 was only changed by the rolled-back transaction"
        );
        assert_eq!(
            note(&client, 6).await.as_deref(),
            Some("seed"),
            "{side}: row 6 was only changed under the rolled-back savepoint"
        );
        assert_eq!(
            note(&client, 7).await.as_deref(),
            Some("seed"),
            "{side}: row 7 was only deleted under the rolled-back savepoint"
        );
        for id in [500, 502, 503] {
            assert!(note(&client, id).await.is_some(), "{side}: row {id} kept");
        }
        assert_eq!(
            note(&client, 8).await.as_deref(),
            Some("e touched"),
            "{side}"
        );
        assert_eq!(note(&client, 3).await, None, "{side}: row 3 deleted by c");
        let rows: i64 = client
            .query_one("SELECT count(*) FROM ledger", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 14, "{side}: rows in public.ledger");
    };
    expect(pair.primary_client().await, "primary").await;

    pair.catch_up().await;
    // …and on the standby.
    expect(pair.standby_client().await, "standby").await;
    assert_same_rows(&pair).await;
}

async fn bulk_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM public.bulk", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_inside_a_large_transaction_leaves_no_partial_rows() {
    const ROWS: i64 = 300_000;
    let pair = Pair::start();
    let p = pair.primary_client().await;
    p.batch_execute("CREATE TABLE public.bulk (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    pair.bootstrap().await;
    p.execute(
        "INSERT INTO public.bulk SELECT g, md5(g::text) FROM generate_series(1, $1::int) g",
        &[&(ROWS as i32)],
    )
    .await
    .unwrap();
    let before = pair.applied_lsn().await;
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crash-large-transaction.log");
    std::fs::write(&log, "").unwrap();

    let mut child = pair
        .understudy_command(&["follow"])
        .env("UNDERSTUDY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(log_handle(&log))
        .stderr(log_handle(&log))
        .spawn()
        .expect("spawn understudy follow");
    let s = pair.standby_client().await;
    // The apply session holds a write lock on public.bulk once it is inside the transaction.
    wait_for(
        "the follower to start writing the large transaction on the standby",
        Duration::from_secs(60),
        || {
            let s = &s;
            async move {
                s.query_one(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'public.bulk'::regclass \
                     AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                    > 0
            }
        },
    )
    .await;
    // Meanwhile the standby shows all of it or none of it (prefix consistency).
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_millis(1500) {
        let n = bulk_rows(&s).await;
        assert!(
            n == 0 || n == ROWS,
            "the standby showed {n} of the {ROWS} rows of one source transaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "follow exited by itself; log {}:\n{}",
        log.display(),
        file_tail(&log, 30)
    );
    child.kill().expect("SIGKILL the follower");
    child.wait().unwrap();

    let applied = assert_ack_not_ahead(&pair, "after the kill", &log).await;
    let n = bulk_rows(&s).await;
    assert!(
        n == 0 || n == ROWS,
        "after the kill the standby holds {n} of the {ROWS} rows of one source transaction"
    );
    eprintln!(
        "killed inside the transaction: standby held {n} rows, applied {before} -> {applied}"
    );
    assert!(
        n == 0,
        "the transaction was fully applied before the kill; make it larger so the kill lands \
         inside it"
    );
    assert_eq!(applied, before, "applied_lsn moved without the transaction");

    let child = pair
        .understudy_command(&["follow", "--until-caught-up"])
        .env("NO_COLOR", "1")
        .stdout(log_handle(&log))
        .stderr(log_handle(&log))
        .spawn()
        .expect("spawn understudy follow --until-caught-up");
    let done = tokio::task::spawn_blocking(move || {
        wait_with_peak_rss(child, Duration::from_secs(120), "follow --until-caught-up")
    })
    .await
    .unwrap();
    assert_eq!(
        done.code,
        Some(0),
        "follow --until-caught-up failed ({done:?}); log {}:\n{}",
        log.display(),
        file_tail(&log, 30)
    );
    assert_eq!(bulk_rows(&s).await, ROWS);
    assert_ack_not_ahead(&pair, "after the catch-up", &log).await;
    assert_same_rows(&pair).await;
}
