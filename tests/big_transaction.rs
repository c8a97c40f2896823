//! Bounded memory (guarantee 5): a million-row source transaction is streamed through the
//! follower, not buffered whole. The follower runs as a child process so its peak RSS can be
//! read from `wait4`; a 10,000-row run of the same shape is the baseline.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_same_rows, file_tail, wait_with_peak_rss, Pair};

/// Peak RSS the million-row run may reach, KiB.
const CEILING_KIB: i64 = 150 * 1024;
/// How many times the baseline's peak the million-row run may reach.
const MAX_RATIO: f64 = 3.0;

/// Run `understudy follow --until-caught-up` as a child; return its peak RSS (KiB) and duration.
async fn follow_peak_rss(pair: &Pair, log: &Path, what: &str) -> (i64, Duration) {
    std::fs::write(log, "").unwrap();
    let out = || std::fs::OpenOptions::new().append(true).open(log).unwrap();
    let started = Instant::now();
    let child = pair
        .understudy_command(&["follow", "--until-caught-up"])
        .env("NO_COLOR", "1")
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawn understudy follow --until-caught-up");
    let what = what.to_string();
    let done = tokio::task::spawn_blocking(move || {
        wait_with_peak_rss(child, Duration::from_secs(150), &what)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(
        done.code,
        Some(0),
        "follow --until-caught-up failed ({done:?}); log {}:\n{}",
        log.display(),
        file_tail(log, 30)
    );
    (done.peak_rss_kib, took)
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction_keeps_follower_memory_flat() {
    let pair = Pair::start();
    let p = pair.primary_client().await;
    p.batch_execute(
        "CREATE TABLE public.narrow_small (id int PRIMARY KEY, v int NOT NULL); \
         CREATE TABLE public.narrow (id int PRIMARY KEY, v int NOT NULL)",
    )
    .await
    .unwrap();
    pair.bootstrap().await;
    let s = pair.standby_client().await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));

    // Baseline: the same shape, a hundred times smaller.
    // (Two calls: statements of one simple-protocol batch share a transaction.)
    p.batch_execute("INSERT INTO public.narrow_small SELECT g, g FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    p.batch_execute("UPDATE public.narrow_small SET v = -v WHERE id % 5 = 0")
        .await
        .unwrap();
    let log = dir.join("big-transaction-baseline.log");
    let (baseline, baseline_took) = follow_peak_rss(&pair, &log, "the 10,000-row follow").await;
    assert_eq!(count(&s, "public.narrow_small").await, 10_000);

    // One transaction of a million inserts, then one of 200,000 updates.
    let written = Instant::now();
    p.batch_execute("INSERT INTO public.narrow SELECT g, g FROM generate_series(1, 1000000) g")
        .await
        .unwrap();
    p.batch_execute("UPDATE public.narrow SET v = -v WHERE id % 5 = 0")
        .await
        .unwrap();
    eprintln!(
        "wrote 1,000,000 inserts + 200,000 updates on the primary in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let log = dir.join("big-transaction-million.log");
    let (million, million_took) = follow_peak_rss(&pair, &log, "the 1,000,000-row follow").await;

    let mib = |kib: i64| kib as f64 / 1024.0;
    eprintln!(
        "follower peak RSS: {:.1} MiB for 10,000 inserts + 2,000 updates ({:.1} s), {:.1} MiB for \
         1,000,000 inserts + 200,000 updates ({:.1} s); ratio {:.2}",
        mib(baseline),
        baseline_took.as_secs_f64(),
        mib(million),
        million_took.as_secs_f64(),
        million as f64 / baseline as f64
    );
    assert_eq!(
        count(&s, "public.narrow").await,
        1_000_000,
        "the million-row transaction did not arrive whole"
    );
    assert!(
        million < CEILING_KIB,
        "the follower's peak RSS was {:.1} MiB for a million-row transaction (limit {:.0} MiB): \
         memory grows with transaction size (guarantee 5)",
        mib(million),
        mib(CEILING_KIB)
    );
    assert!(
        (million as f64) < MAX_RATIO * baseline as f64,
        "the follower's peak RSS was {:.1} MiB for a million-row transaction, {:.2}x the {:.1} MiB \
         of a 10,000-row one (limit {MAX_RATIO}x): memory is not flat in transaction size \
         (guarantee 5)",
        mib(million),
        million as f64 / baseline as f64,
        mib(baseline)
    );
    assert_same_rows(&pair).await;
}
