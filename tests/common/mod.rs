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
