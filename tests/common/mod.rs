//! Shared test scaffolding: a primary/standby pair of throwaway clusters, the understudy binary,
//! bounded waits and an independent row-for-row comparison.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use understudy::bootstrap::{self, BootstrapOptions};
use understudy::cluster::{Cluster, ClusterOptions};
use understudy::follow::{self, FollowOptions, StopAt};
use understudy::pg::conninfo::ConnInfo;

/// A primary and a standby cluster, each with database `nms`.
pub struct Pair {
    pub primary: Cluster,
    pub standby: Cluster,
}

impl Pair {
    pub fn start() -> Pair {
        Pair::start_with(&ClusterOptions::default())
    }

    pub fn start_with(primary_options: &ClusterOptions) -> Pair {
        init_logs();
        let primary = Cluster::start(primary_options).expect("start primary");
        let standby = Cluster::start(&ClusterOptions::default()).expect("start standby");
        primary.create_database("nms").unwrap();
        standby.create_database("nms").unwrap();
        Pair { primary, standby }
    }

    pub fn primary_dsn(&self) -> String {
        self.primary.dsn("nms")
    }

    pub fn standby_dsn(&self) -> String {
        self.standby.dsn("nms")
    }

    pub fn primary_info(&self) -> ConnInfo {
        ConnInfo::parse(&self.primary_dsn()).unwrap()
    }

    pub fn standby_info(&self) -> ConnInfo {
        ConnInfo::parse(&self.standby_dsn()).unwrap()
    }

    pub async fn primary_client(&self) -> tokio_postgres::Client {
        self.primary_info().connect("test").await.unwrap()
    }

    pub async fn standby_client(&self) -> tokio_postgres::Client {
        self.standby_info().connect("test").await.unwrap()
    }

    /// Run bootstrap in-process.
    pub async fn bootstrap(&self) -> bootstrap::BootstrapSummary {
        let mut options = BootstrapOptions::new(self.primary_info(), self.standby_info());
        options.jobs = 2;
        let (_tx, rx) = watch::channel(false);
        bootstrap::bootstrap(&options, rx).await.expect("bootstrap")
    }

    /// Follow in-process until everything committed so far is applied.
    pub async fn catch_up(&self) -> follow::FollowSummary {
        let mut options = FollowOptions::new(self.primary_info(), self.standby_info());
        options.stop_at = StopAt::CaughtUp;
        options.max_retries = Some(20);
        let (_tx, rx) = watch::channel(false);
        tokio::time::timeout(Duration::from_secs(60), follow::follow(&options, rx, None))
            .await
            .expect("follow --until-caught-up did not finish within 300 s")
            .expect("follow --until-caught-up")
    }

    /// Run the understudy binary with --primary/--standby after `args`.
    pub fn understudy(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
        cmd.args(args)
            .arg("--primary")
            .arg(self.primary_dsn())
            .arg("--standby")
            .arg(self.standby_dsn());
        cmd.output().expect("run understudy")
    }
}

/// Every replicated user table's rows as text, sorted, per table: an independent comparison
/// that does not share `understudy check`'s hashing.
pub async fn table_contents(client: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    client
        .batch_execute("SET datestyle = ISO; SET timezone = UTC; SET extra_float_digits = 3; SET intervalstyle = postgres")
        .await
        .unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'understudy') \
               AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let rows: Vec<String> = client
            .query(
                &format!("SELECT t::text FROM ONLY {t} t ORDER BY t::text COLLATE \"C\""),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.push((t, rows));
    }
    out
}

/// Assert the standby's tables equal the primary's, row for row.
pub async fn assert_same_rows(pair: &Pair) {
    let p = table_contents(&pair.primary_client().await).await;
    let s = table_contents(&pair.standby_client().await).await;
    let names = |v: &[(String, Vec<String>)]| v.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
    assert_eq!(names(&p), names(&s), "different table lists");
    let mut total = 0;
    for ((table, a), (_, b)) in p.iter().zip(&s) {
        total += a.len();
        if a != b {
            let only_p: Vec<&String> = a.iter().filter(|r| !b.contains(r)).take(3).collect();
            let only_s: Vec<&String> = b.iter().filter(|r| !a.contains(r)).take(3).collect();
            panic!(
                "{table}: {} rows on the primary, {} on the standby; only on primary {only_p:?}; only on standby {only_s:?}",
                a.len(),
                b.len()
            );
        }
    }
    assert!(total > 0, "nothing was compared");
}

/// Poll `f` until it returns true, failing with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The example NMS schema and workload, loaded on the primary.
pub async fn load_nms(client: &tokio_postgres::Client) {
    client
        .batch_execute(understudy::demo::NMS_SCHEMA)
        .await
        .unwrap();
    client
        .batch_execute(understudy::demo::NMS_WORKLOAD)
        .await
        .unwrap();
}

/// Logs to the test's output, filtered by UNDERSTUDY_LOG (default: warnings).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// Child processes, positions and peak memory (crash and big-transaction tests).

/// What a child process run to completion by [`wait_with_peak_rss`] left behind.
#[derive(Debug)]
pub struct Finished {
    /// The exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Peak resident set size of the child, KiB (`ru_maxrss` from `wait4`).
    pub peak_rss_kib: i64,
}

impl Pair {
    /// The understudy binary with `args`, then --primary/--standby; not started yet.
    pub fn understudy_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
        cmd.args(args)
            .arg("--primary")
            .arg(self.primary_dsn())
            .arg("--standby")
            .arg(self.standby_dsn());
        cmd
    }

    /// `understudy.progress.applied_lsn` on the standby.
    pub async fn applied_lsn(&self) -> understudy::lsn::Lsn {
        let text: String = self
            .standby_client()
            .await
            .query_one(
                "SELECT applied_lsn::text FROM understudy.progress WHERE id = 1",
                &[],
            )
            .await
            .expect("read understudy.progress on the standby")
            .get(0);
        text.parse().expect("applied_lsn parses")
    }

    /// The replication slot the standby was bootstrapped from, as recorded on the standby.
    pub async fn slot_name(&self) -> String {
        self.standby_client()
            .await
            .query_one("SELECT slot_name FROM understudy.source WHERE id = 1", &[])
            .await
            .expect("read understudy.source on the standby")
            .get(0)
    }

    /// The slot's `confirmed_flush_lsn` on the primary (`None` while it has none).
    pub async fn slot_confirmed_flush(&self) -> Option<understudy::lsn::Lsn> {
        let slot = self.slot_name().await;
        let text: Option<String> = self
            .primary_client()
            .await
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("the slot exists on the primary")
            .get(0);
        text.map(|t| t.parse().expect("confirmed_flush_lsn parses"))
    }
}

/// Wait for `child` (not yet waited for) with `wait4`, polling until `timeout`; on timeout the
/// child is killed and the call panics with `what`. Returns its exit status and peak RSS.
pub fn wait_with_peak_rss(child: std::process::Child, timeout: Duration, what: &str) -> Finished {
    let pid = child.id() as libc::pid_t;
    // Reaped by wait4 below; dropping a `Child` neither waits nor kills.
    drop(child);
    let start = Instant::now();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; status and usage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(
            r >= 0,
            "wait4({pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        if r == pid {
            let exited = libc::WIFEXITED(status);
            let signaled = libc::WIFSIGNALED(status);
            return Finished {
                code: exited.then(|| libc::WEXITSTATUS(status)),
                signal: signaled.then(|| libc::WTERMSIG(status)),
                peak_rss_kib: usage.ru_maxrss,
            };
        }
        if start.elapsed() > timeout {
            // SAFETY: pid is our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a log file, for failure messages.
pub fn file_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
