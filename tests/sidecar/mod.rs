//! Two `understudy run` sidecars as real processes beside a pair of throwaway clusters, an NMS
//! writer that always writes to whichever node accepts its writes, and helpers to read both
//! sidecars' status.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use understudy::pg::conninfo::ConnInfo;
use understudy::sidecar::http;
pub use understudy::sidecar::ledger::{self, Writer};
use understudy::sidecar::report::SidecarStatus;

use crate::common::{load_nms, Pair};

pub const TOKEN: &str = "test-token";

/// Extra config text per test (failover, sync sections).
#[derive(Clone, Default)]
pub struct Extra {
    pub failover: String,
    pub sync: String,
    /// Lines of the `[messages]` section, per node.
    pub messages: [String; 2],
}

pub struct Sidecars {
    pub pair: Pair,
    pub dir: tempfile::TempDir,
    pub http: [std::net::SocketAddr; 2],
    pub children: [Option<Child>; 2],
    pub extra: Extra,
}

pub const NAMES: [&str; 2] = ["a", "b"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sidecars {
    /// Clusters with the example NMS on `a` (the primary to be) and an empty `b`; nothing runs.
    pub async fn prepare(extra: Extra) -> Sidecars {
        let pair = Pair::start();
        let p = pair.primary_client().await;
        let s = pair.standby_client().await;
        for c in [&p, &s] {
            c.batch_execute("CREATE ROLE nms_app LOGIN").await.unwrap();
        }
        load_nms(&p).await;
        p.batch_execute(
            "CREATE TABLE nms.ledger (seq bigint PRIMARY KEY, node text NOT NULL, \
                                      at timestamptz NOT NULL DEFAULT now());
             GRANT USAGE ON SCHEMA nms TO nms_app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA nms TO nms_app;
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA nms TO nms_app;",
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let http = [
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        ];
        let me = Sidecars {
            pair,
            dir,
            http,
            children: [None, None],
            extra,
        };
        for i in 0..2 {
            std::fs::write(me.config_path(i), me.config_text(i)).unwrap();
        }
        me
    }

    pub fn dsn(&self, i: usize) -> String {
        if i == 0 {
            self.pair.primary_dsn()
        } else {
            self.pair.standby_dsn()
        }
    }

    pub fn cluster(&mut self, i: usize) -> &mut understudy::cluster::Cluster {
        if i == 0 {
            &mut self.pair.primary
        } else {
            &mut self.pair.standby
        }
    }

    pub fn port(&self, i: usize) -> u16 {
        if i == 0 {
            self.pair.primary.port()
        } else {
            self.pair.standby.port()
        }
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.toml", NAMES[i]))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", NAMES[i]))
    }

    pub fn divergence_dir(&self) -> PathBuf {
        self.dir.path().join("divergence")
    }

    fn config_text(&self, i: usize) -> String {
        let node = |j: usize| {
            format!(
                "[nodes.{}]\ndatabase = \"{}\"\nhttp = \"{}\"\njournal = \"{}/journal\"\n",
                NAMES[j],
                self.dsn(j),
                self.http[j],
                NAMES[j]
            )
        };
        format!(
            "node = \"{}\"\ndivergence_dir = \"divergence\"\n{}{}\
             [nms]\nroles = [\"nms_app\"]\n\
             [failover]\nprobe_interval = \"250ms\"\nconnect_timeout = \"1s\"\ndrain_timeout = \"2s\"\n{}\n\
             [sync]\n{}\n[http]\ntoken = \"{TOKEN}\"\n[messages]\n{}\n",
            NAMES[i],
            node(0),
            node(1),
            self.extra.failover,
            self.extra.sync,
            self.extra.messages[i]
        )
    }

    /// Start (or restart) node `i`'s sidecar.
    pub fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_understudy"))
            .arg("run")
            .arg("--config")
            .arg(self.config_path(i))
            .env("RUST_LOG", "understudy=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub async fn status(&self, i: usize) -> Option<SidecarStatus> {
        http::get_status(self.http[i], Duration::from_secs(2))
            .await
            .ok()
    }

    /// Wait until node `primary` is primary and the other follows it, both at one epoch, and
    /// the standby has applied what the primary had written when the wait started.
    pub async fn settled(
        &self,
        primary: usize,
        timeout: Duration,
    ) -> (SidecarStatus, SidecarStatus) {
        let standby = 1 - primary;
        let start = Instant::now();
        let target = current_lsn(&self.dsn(primary)).await;
        loop {
            let (p, s) = (self.status(primary).await, self.status(standby).await);
            if let (Some(p), Some(s)) = (&p, &s) {
                if p.role == "primary"
                    && s.role == "standby"
                    && s.following
                    && p.epoch == s.epoch
                    && s.lsn
                        .applied
                        .is_some_and(|a| target.is_some_and(|t| a >= t))
                {
                    return (p.clone(), s.clone());
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "node {} did not become primary with {} following within {timeout:?}:\n\
                     {}: {p:#?}\n{}: {s:#?}\n--- log {}:\n{}\n--- log {}:\n{}",
                    NAMES[primary],
                    NAMES[standby],
                    NAMES[primary],
                    NAMES[standby],
                    NAMES[primary],
                    tail(&self.log(primary), 40),
                    NAMES[standby],
                    tail(&self.log(standby), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for i in 0..2 {
            self.kill(i);
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn current_lsn(dsn: &str) -> Option<understudy::lsn::Lsn> {
    let c = ConnInfo::parse(dsn).ok()?.connect("test").await.ok()?;
    let t: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .ok()?
        .get(0);
    t.parse().ok()
}

/// Every `seq` in `nms.ledger` on the database at `dsn`.
pub async fn ledger(dsn: &str) -> Vec<i64> {
    let c = ConnInfo::parse(dsn).unwrap().connect("test").await.unwrap();
    c.query("SELECT seq FROM nms.ledger ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The `seq` of every ledger insert saved in the divergence files under `dir` (only node
/// `node`'s files when given).
pub fn diverged_seqs(dir: &Path, node: Option<&str>) -> Vec<i64> {
    ledger::diverged_seqs(dir, node)
        .unwrap()
        .into_iter()
        .collect()
}
