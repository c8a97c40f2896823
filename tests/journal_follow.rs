//! `follow --journal` against real clusters: the standby database stopped under write load (the
//! slot keeps advancing with `--ack journal`, stays behind the standby with `--ack applied`, the
//! journal fills up and stops reading), the follower SIGKILLed at random moments, and afterwards
//! everything applied exactly once.
mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;
use understudy::cluster::{ClusterOptions, StopMode};
use understudy::follow::{self, JournalReport};
use understudy::journal::{Journal, JournalOptions};
use understudy::lsn::Lsn;
use understudy::pg::conninfo::ConnInfo;

use common::{assert_same_rows, file_tail, load_nms, wait_for, wait_with_peak_rss, Pair};

/// NMS sessions calling `nms.workload_tick` in a loop, one source transaction per call; session 0
/// also raises an alarm storm every half second.
struct Workload {
    halt: watch::Sender<bool>,
    sessions: JoinSet<Result<u64, String>>,
}

impl Workload {
    async fn start(primary: &ConnInfo, seed_base: i32) -> Workload {
        let (halt, halt_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        for session in 0..2i32 {
            let client = primary.connect("journal test workload").await.unwrap();
            let halt_rx = halt_rx.clone();
            sessions.spawn(async move {
                let mut ticks = 0u64;
                let mut last_storm = Instant::now();
                while !*halt_rx.borrow() {
                    let seed = seed_base
                        .wrapping_add((ticks as i32).wrapping_mul(2))
                        .wrapping_add(session);
                    client
                        .execute("SELECT nms.workload_tick($1::int)", &[&seed])
                        .await
                        .map_err(|e| format!("workload_tick({seed}): {e}"))?;
                    ticks += 1;
                    if session == 0 && last_storm.elapsed() >= Duration::from_millis(500) {
                        client
                            .execute("SELECT nms.alarm_storm(20, 8)", &[])
                            .await
                            .map_err(|e| format!("alarm_storm: {e}"))?;
                        last_storm = Instant::now();
                    }
                }
                Ok(ticks)
            });
        }
        Workload { halt, sessions }
    }

    /// Stop the sessions, failing on any session error; returns the ticks written.
    async fn stop(mut self) -> u64 {
        self.halt.send_replace(true);
        let mut ticks = 0;
        while let Some(s) = self.sessions.join_next().await {
            ticks += s
                .expect("workload session panicked")
                .expect("workload session");
        }
        ticks
    }
}

fn log_file(name: &str) -> PathBuf {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&log, "").unwrap();
    eprintln!("follow log: {}", log.display());
    log
}

fn append(log: &Path, line: &str) {
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    writeln!(f, "{line}").unwrap();
}

/// `understudy follow ARGS` in the background, logging to `log`.
fn spawn_follow(pair: &Pair, args: &[&str], log: &Path) -> Child {
    let out = || OpenOptions::new().append(true).open(log).unwrap();
    let mut full_args = vec!["follow"];
    full_args.extend_from_slice(args);
    pair.understudy_command(&full_args)
        .env("UNDERSTUDY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawn understudy follow")
}

/// Stop a follower with Ctrl-C (SIGINT) and require a clean exit.
async fn interrupt(child: Child, log: &Path) {
    // SAFETY: the pid is our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let done = tokio::task::spawn_blocking(move || {
        wait_with_peak_rss(
            child,
            Duration::from_secs(60),
            "follow to stop after SIGINT",
        )
    })
    .await
    .unwrap();
    assert_eq!(
        done.code,
        Some(0),
        "follow did not stop cleanly on SIGINT ({done:?}); log {}:\n{}",
        log.display(),
        file_tail(log, 40)
    );
}

fn assert_running(child: &mut Child, when: &str, log: &Path) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "{when}: follow exited ({status}); log {}:\n{}",
            log.display(),
            file_tail(log, 40)
        );
    }
}

/// The slot's confirmed_flush_lsn, asking the primary only (the standby may be down).
async fn confirmed(pair: &Pair, slot: &str) -> Lsn {
    let text: Option<String> = pair
        .primary_client()
        .await
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    text.expect("the slot has a confirmed_flush_lsn")
        .parse()
        .unwrap()
}

/// The pid of the walsender streaming our slot, if one is.
async fn walsender_pid(pair: &Pair, slot: &str) -> Option<i32> {
    pair.primary_client()
        .await
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Bytes in the journal's segment files.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Wait until the standby has applied everything the primary committed so far.
async fn wait_applied_to_primary(pair: &Pair, log: &Path, timeout: Duration) -> Lsn {
    let target = follow::primary_wal_position(&pair.primary_info())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let applied = pair.applied_lsn().await;
        if applied >= target {
            return applied;
        }
        assert!(
            start.elapsed() < timeout,
            "the standby applied only up to {applied}, not {target}, within {timeout:?}; log {}:\n{}",
            log.display(),
            file_tail(log, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `follow --journal DIR --until-caught-up` (which also brings sequences forward) must exit 0.
async fn catch_up(pair: &Pair, dir: &str, log: &Path) {
    append(log, "===== follow --until-caught-up =====");
    let child = spawn_follow(pair, &["--journal", dir, "--until-caught-up"], log);
    let done = tokio::task::spawn_blocking(move || {
        wait_with_peak_rss(child, Duration::from_secs(120), "follow --until-caught-up")
    })
    .await
    .unwrap();
    assert_eq!(
        done.code,
        Some(0),
        "follow --journal --until-caught-up failed ({done:?}); log {}:\n{}",
        log.display(),
        file_tail(log, 40)
    );
}

/// Row-for-row equality, no duplicated history, and `understudy check` exits 0.
async fn assert_exactly_once(pair: &Pair) {
    assert_same_rows(pair).await;
    let history = |client: tokio_postgres::Client| async move {
        let r = client
            .query_one(
                "SELECT count(*), count(DISTINCT id) FROM nms.alarm_history",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    let (p_count, _) = history(pair.primary_client().await).await;
    let (s_count, s_distinct) = history(pair.standby_client().await).await;
    assert!(p_count > 0, "the workload wrote no alarm history");
    assert_eq!(s_count, s_distinct, "alarm_history rows duplicated");
    assert_eq!(s_count, p_count, "alarm_history row counts differ");
    let check = pair.understudy(&["check"]);
    assert!(
        check.status.success(),
        "check found differences: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A bootstrapped pair with the example NMS, and the slot's name.
async fn nms_pair(options: &ClusterOptions) -> (Pair, String) {
    // One bootstrap at a time in this process: bootstrap's scratch directory is named after the
    // process id, so concurrent ones overwrite each other's schema archive.
    static BOOTSTRAP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let pair = Pair::start_with(options);
    load_nms(&pair.primary_client().await).await;
    {
        let _one = BOOTSTRAP.lock().await;
        pair.bootstrap().await;
    }
    let slot = pair.slot_name().await;
    (pair, slot)
}

/// Wait until the follower streams and has applied something past `from`.
async fn wait_following(pair: &Pair, slot: &str, from: Lsn, log: &Path) {
    let start = Instant::now();
    while walsender_pid(pair, slot).await.is_none() || pair.applied_lsn().await <= from {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the follower did not start streaming and applying; log {}:\n{}",
            log.display(),
            file_tail(log, 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_down_slot_advances_from_the_journal_and_catches_up() {
    let (mut pair, slot) = nms_pair(&ClusterOptions::default()).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file("journal-standby-down.log");
    let bootstrapped = pair.applied_lsn().await;
    let mut child = spawn_follow(&pair, &["--journal", &dir, "--ack", "journal"], &log);
    let workload = Workload::start(&pair.primary_info(), 0).await;
    wait_following(&pair, &slot, bootstrapped, &log).await;
    let walsender = walsender_pid(&pair, &slot).await;

    tokio::task::block_in_place(|| pair.standby.stop(StopMode::Fast)).expect("stop the standby");
    let down = Instant::now();
    let c0 = confirmed(&pair, &slot).await;
    let j0 = journal_bytes(journal.path());
    let mut samples = vec![c0];
    for _ in 0..2 {
        let last = *samples.last().unwrap();
        wait_for(
            "the slot's confirmed_flush_lsn to advance while the standby is down",
            Duration::from_secs(30),
            || async { confirmed(&pair, &slot).await > last },
        )
        .await;
        samples.push(confirmed(&pair, &slot).await);
    }
    // Keep it down for several seconds under load.
    while down.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c_end = confirmed(&pair, &slot).await;
    let j_end = journal_bytes(journal.path());
    assert_running(&mut child, "while the standby was down", &log);
    eprintln!(
        "standby down {:.1} s: confirmed_flush_lsn {samples:?} .. {c_end}, journal {j0} -> {j_end} bytes",
        down.elapsed().as_secs_f64()
    );
    assert!(
        j_end > j0,
        "the journal did not grow ({j0} -> {j_end}) while the standby was down"
    );
    assert_eq!(
        walsender_pid(&pair, &slot).await,
        walsender,
        "the replication stream was restarted because the standby was down"
    );

    tokio::task::block_in_place(|| pair.standby.restart()).expect("restart the standby");
    let ticks = workload.stop().await;
    let applied = wait_applied_to_primary(&pair, &log, Duration::from_secs(120)).await;
    eprintln!("{ticks} workload ticks; the standby caught up to {applied}");
    assert!(applied > c_end, "nothing applied after the outage");
    assert_eq!(
        walsender_pid(&pair, &slot).await,
        walsender,
        "the replication stream was restarted while the standby caught up"
    );
    assert_running(&mut child, "after the catch-up", &log);
    interrupt(child, &log).await;
    catch_up(&pair, &dir, &log).await;
    assert_exactly_once(&pair).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("applying again"),
        "the dispatcher never retried while the standby was down?; log:\n{}",
        file_tail(&log, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_applied_keeps_the_slot_behind_the_standby() {
    let (mut pair, slot) = nms_pair(&ClusterOptions::default()).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file("journal-ack-applied.log");
    let bootstrapped = pair.applied_lsn().await;
    let mut child = spawn_follow(&pair, &["--journal", &dir, "--ack", "applied"], &log);
    let workload = Workload::start(&pair.primary_info(), 0).await;
    wait_following(&pair, &slot, bootstrapped, &log).await;

    tokio::task::block_in_place(|| pair.standby.stop(StopMode::Fast)).expect("stop the standby");
    let j0 = journal_bytes(journal.path());
    // Status updates in flight when the standby stopped have landed after a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c1 = confirmed(&pair, &slot).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c2 = confirmed(&pair, &slot).await;
    let wal = follow::primary_wal_position(&pair.primary_info())
        .await
        .unwrap();
    let j2 = journal_bytes(journal.path());
    assert_running(&mut child, "while the standby was down", &log);
    tokio::task::block_in_place(|| pair.standby.restart()).expect("restart the standby");
    // Read at once: the follower's next apply attempt is still in its backoff.
    let applied_at_restart = pair.applied_lsn().await;
    eprintln!(
        "standby down: confirmed {c1} then {c2}, standby applied {applied_at_restart}, primary \
         at {wal}, journal {j0} -> {j2} bytes"
    );
    assert!(
        j2 > j0,
        "the journal did not grow while the standby was down"
    );
    assert!(
        wal.bytes_since(c2) > 100_000,
        "the workload wrote too little while the standby was down to prove anything"
    );
    assert_eq!(
        c1, c2,
        "with --ack applied the slot advanced while the standby was down"
    );
    assert!(
        c2 <= applied_at_restart,
        "with --ack applied the slot's confirmed_flush_lsn {c2} passed the standby's applied \
         position {applied_at_restart}"
    );

    workload.stop().await;
    wait_applied_to_primary(&pair, &log, Duration::from_secs(120)).await;
    interrupt(child, &log).await;
    assert!(confirmed(&pair, &slot).await <= pair.applied_lsn().await);
    catch_up(&pair, &dir, &log).await;
    assert_exactly_once(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_with_journal_killed_at_random_moments() {
    const KILLS: u32 = 10;
    let seed: u64 = std::env::var("UNDERSTUDY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (reproduce with UNDERSTUDY_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (pair, slot) = nms_pair(&ClusterOptions::default()).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file(&format!("journal-kills-{seed}.log"));

    let mut last = pair.applied_lsn().await;
    let mut advanced = 0;
    let workload = Workload::start(&pair.primary_info(), 0).await;
    for round in 1..=KILLS {
        let run_ms = rng.gen_range(100..=2000u64);
        append(
            &log,
            &format!("===== round {round}: SIGKILL after {run_ms} ms ====="),
        );
        let mut child = spawn_follow(&pair, &["--journal", &dir], &log);
        // The random moment is the point of this sleep: nothing to wait for.
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        assert_running(&mut child, &format!("round {round}"), &log);
        child.kill().expect("SIGKILL the follower");
        child.wait().unwrap();

        // Ack discipline: the slot never passes what the journal or the standby made durable.
        // Every other round; in the others the next follower recovers the journal itself.
        let confirmed = confirmed(&pair, &slot).await;
        let applied = pair.applied_lsn().await;
        let durable = if round % 2 == 1 {
            let durable = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    Journal::open(&dir, applied, JournalOptions::default())
                        .expect("reopen the journal after the kill")
                        .recovery()
                        .durable
                }
            })
            .await
            .unwrap();
            assert!(
                confirmed <= durable.max(applied),
                "round {round}: the slot confirmed {confirmed}, past the journal's durable \
                 {durable} and the standby's applied {applied}; log:\n{}",
                file_tail(&log, 40)
            );
            Some(durable)
        } else {
            None
        };
        assert!(applied >= last, "round {round}: applied went back");
        if applied > last {
            advanced += 1;
        }
        eprintln!(
            "round {round}: {run_ms} ms, applied {applied}, journal durable {durable:?}, slot \
             {confirmed}"
        );
        last = applied;
    }
    workload.stop().await;
    assert!(
        advanced >= 3,
        "the follower applied something in only {advanced} of {KILLS} runs; log:\n{}",
        file_tail(&log, 40)
    );

    catch_up(&pair, &dir, &log).await;
    assert_exactly_once(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_journal_stops_reading_and_resumes_when_the_standby_returns() {
    const MAX: u64 = 256 * 1024;
    // A short wal_sender_timeout: the pause outlasts it, so status updates must keep going.
    let options = ClusterOptions {
        settings: vec![("wal_sender_timeout".into(), "4s".into())],
        ..ClusterOptions::default()
    };
    let (mut pair, slot) = nms_pair(&options).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file("journal-full.log");
    let bootstrapped = pair.applied_lsn().await;
    let mut child = spawn_follow(
        &pair,
        &["--journal", &dir, "--journal-max-bytes", &MAX.to_string()],
        &log,
    );
    let workload = Workload::start(&pair.primary_info(), 0).await;
    wait_following(&pair, &slot, bootstrapped, &log).await;
    let walsender = walsender_pid(&pair, &slot).await;

    tokio::task::block_in_place(|| pair.standby.stop(StopMode::Fast)).expect("stop the standby");
    wait_for(
        "the follower to report the journal full",
        Duration::from_secs(60),
        || async {
            JournalReport::read(journal.path())
                .ok()
                .flatten()
                .is_some_and(|r| r.full)
        },
    )
    .await;
    let status = pair.understudy(&["status", "--journal", &dir]);
    let status_out = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_out.contains("journal FULL"),
        "status --journal does not say the journal is full:\n{status_out}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("the journal is full"),
        "the log does not say the journal is full"
    );
    // What the writer had queued when it filled up lands within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c1 = confirmed(&pair, &slot).await;
    let j1 = journal_bytes(journal.path());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let c2 = confirmed(&pair, &slot).await;
    let j2 = journal_bytes(journal.path());
    let wal = follow::primary_wal_position(&pair.primary_info())
        .await
        .unwrap();
    eprintln!(
        "journal full: {j1} then {j2} bytes (max {MAX}), slot {c1} then {c2}, primary at {wal}"
    );
    assert_eq!(c1, c2, "the slot advanced while the journal was full");
    assert_eq!(j1, j2, "the journal grew while full");
    assert!(
        j2 < 2 * MAX,
        "the journal passed its limit by too much: {j2} bytes"
    );
    assert!(
        wal.bytes_since(c2) > 100_000,
        "the workload wrote too little while the journal was full to prove anything"
    );
    assert_running(&mut child, "while the journal was full", &log);
    assert_eq!(
        walsender_pid(&pair, &slot).await,
        walsender,
        "the walsender timed out or the stream restarted while reading was paused"
    );

    tokio::task::block_in_place(|| pair.standby.restart()).expect("restart the standby");
    workload.stop().await;
    wait_applied_to_primary(&pair, &log, Duration::from_secs(180)).await;
    wait_for(
        "the follower to report room in the journal again",
        Duration::from_secs(30),
        || async {
            JournalReport::read(journal.path())
                .ok()
                .flatten()
                .is_some_and(|r| !r.full)
        },
    )
    .await;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("the journal has room again"),
        "the log does not say reading resumed"
    );
    assert!(
        confirmed(&pair, &slot).await > c2,
        "the slot never moved on"
    );
    interrupt(child, &log).await;
    catch_up(&pair, &dir, &log).await;
    assert_exactly_once(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_restart_reconnects_the_stream_without_disturbing_the_apply() {
    let (mut pair, slot) = nms_pair(&ClusterOptions::default()).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file("journal-primary-restart.log");
    let bootstrapped = pair.applied_lsn().await;
    let mut child = spawn_follow(&pair, &["--journal", &dir], &log);
    let workload = Workload::start(&pair.primary_info(), 0).await;
    wait_following(&pair, &slot, bootstrapped, &log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| pair.primary.stop(StopMode::Immediate))
        .expect("stop the primary (immediate)");
    // The sessions fail with the primary gone; that is expected here.
    let mut stopped = workload;
    stopped.halt.send_replace(true);
    while stopped.sessions.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_running(&mut child, "while the primary was down", &log);
    tokio::task::block_in_place(|| pair.primary.restart()).expect("restart the primary");
    let workload = Workload::start(&pair.primary_info(), 1_000_000).await;
    wait_for(
        "the follower to stream again",
        Duration::from_secs(60),
        || async { walsender_pid(&pair, &slot).await.is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop().await;
    wait_applied_to_primary(&pair, &log, Duration::from_secs(120)).await;
    assert_running(&mut child, "after the primary restarted", &log);
    interrupt(child, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("reconnecting to the primary"),
        "the stream never reconnected?; log:\n{}",
        file_tail(&log, 40)
    );
    assert!(
        !text.contains("applying again"),
        "the apply was restarted because the primary went away; log:\n{}",
        file_tail(&log, 40)
    );
    catch_up(&pair, &dir, &log).await;
    assert_exactly_once(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_older_than_the_journal_is_refused_with_the_fix() {
    let (pair, slot) = nms_pair(&ClusterOptions::default()).await;
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap().to_string();
    let log = log_file("journal-gap.log");
    let bootstrapped = pair.applied_lsn().await;
    // A small journal, so retention soon drops what the standby applied.
    let child = spawn_follow(
        &pair,
        &["--journal", &dir, "--journal-max-bytes", "64K"],
        &log,
    );
    let workload = Workload::start(&pair.primary_info(), 0).await;
    wait_for(
        "retention to drop the journal's first segments",
        Duration::from_secs(60),
        || async {
            JournalReport::read(journal.path())
                .ok()
                .flatten()
                .is_some_and(|r| r.oldest_lsn > bootstrapped)
        },
    )
    .await;
    workload.stop().await;
    interrupt(child, &log).await;
    assert!(confirmed(&pair, &slot).await > bootstrapped);

    // As if the standby were restored from a backup taken at bootstrap.
    pair.standby_client()
        .await
        .execute(
            "UPDATE understudy.progress SET applied_lsn = $1::text::pg_lsn",
            &[&bootstrapped.to_string()],
        )
        .await
        .unwrap();
    let out = pair.understudy(&["follow", "--journal", &dir, "--until-caught-up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("follow said: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "follow did not refuse: {stderr}"
    );
    assert!(
        stderr.contains(&format!("the standby has applied up to {bootstrapped}"))
            && stderr.contains("the changes in between are gone")
            && stderr.contains("understudy bootstrap --force"),
        "the error does not name the cause and the fix:\n{stderr}"
    );
}

/// Writes `ticks` workload transactions on the primary from four sessions.
async fn backlog(primary: &ConnInfo, ticks: i32, seed_base: i32) {
    let mut sessions = JoinSet::new();
    for session in 0..4 {
        let client = primary.connect("journal cost backlog").await.unwrap();
        sessions.spawn(async move {
            for i in 0..ticks / 4 {
                let seed = seed_base + i * 4 + session;
                client
                    .execute("SELECT nms.workload_tick($1::int)", &[&seed])
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(s) = sessions.join_next().await {
        s.unwrap();
    }
}

/// Not a test: measures `follow --until-caught-up` over equal backlogs without a journal, with
/// `--journal --ack applied` and with `--journal --ack journal`, interleaved, and prints the
/// rates. Run by hand: `cargo test --test journal_follow -- --ignored --nocapture journal_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn journal_cost() {
    const TICKS: i32 = 20_000;
    let (pair, _slot) = nms_pair(&ClusterOptions::default()).await;
    let log = log_file("journal-cost.log");
    let modes: [(&str, &[&str]); 6] = [
        ("no journal", &[]),
        ("--journal --ack applied", &["--ack", "applied"]),
        ("--journal --ack journal", &["--ack", "journal"]),
        ("--journal --ack journal", &["--ack", "journal"]),
        ("--journal --ack applied", &["--ack", "applied"]),
        ("no journal", &[]),
    ];
    let mut results: Vec<(&str, f64, u64)> = Vec::new();
    for (round, (name, extra)) in modes.iter().enumerate() {
        let journal = tempfile::tempdir().unwrap();
        let dir = journal.path().to_str().unwrap().to_string();
        backlog(&pair.primary_info(), TICKS, round as i32 * TICKS).await;
        let mut args = vec!["follow", "--until-caught-up"];
        if !extra.is_empty() {
            args.extend(["--journal", dir.as_str()]);
            args.extend_from_slice(extra);
        }
        let started = Instant::now();
        let out = pair
            .understudy_command(&args)
            .env("UNDERSTUDY_LOG", "warn")
            .output()
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        append(
            &log,
            &format!("{name}: {stdout}{}", String::from_utf8_lossy(&out.stderr)),
        );
        assert!(out.status.success(), "{name} failed: {stdout}");
        // "follow stopped: N transactions, M rows applied; …"
        let txns: u64 = stdout
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        eprintln!(
            "{name:<26} {txns} txns in {seconds:.2} s: {:.0} txn/s, journal {} bytes",
            txns as f64 / seconds,
            journal_bytes(journal.path())
        );
        results.push((name, seconds, txns));
    }
    for name in [
        "no journal",
        "--journal --ack applied",
        "--journal --ack journal",
    ] {
        let (s, t) = results
            .iter()
            .filter(|r| r.0 == name)
            .fold((0.0, 0), |(s, t), r| (s + r.1, t + r.2));
        eprintln!("{name:<26} mean {:.0} txn/s", t as f64 / s);
    }
    assert_exactly_once(&pair).await;
}
