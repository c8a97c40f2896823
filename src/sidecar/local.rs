//! Two sidecars in this process beside two local clusters: the pair `understudy demo` and
//! `understudy bench` drive through switchovers and failovers.
//!
//! The clusters are the caller's ([`Cluster`]); node `a` is the first, `b` the second. Each
//! sidecar runs [`super::run`] in a task with its own shutdown switch, so it can be stopped and
//! started again; its journal lives in its cluster's directory and goes away with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::Config;
use super::http;
use super::report::SidecarStatus;
use crate::cluster::Cluster;

/// The node names, in cluster order.
pub const NAMES: [&str; 2] = ["a", "b"];

/// What the pair's configuration says beyond the defaults.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The NMS's database roles (must exist on both clusters).
    pub nms_roles: Vec<String>,
    /// Which node starts as primary when neither has state.
    pub initial_primary: usize,
    /// Automatic failover after this long without the primary (a local TCP witness answers).
    pub failover_timeout: Option<Duration>,
    pub probe_interval: Duration,
    /// Synchronous mode, falling back to asynchronous after this long without the standby.
    pub sync_fallback: Option<Duration>,
    /// Extra `[hooks]` lines (`promote = "..."`).
    pub hooks: String,
}

impl Default for LocalOptions {
    fn default() -> LocalOptions {
        LocalOptions {
            nms_roles: vec!["nms_app".to_string()],
            initial_primary: 0,
            failover_timeout: None,
            probe_interval: Duration::from_millis(250),
            sync_fallback: None,
            hooks: String::new(),
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

/// The TCP witness: a thread accepting (and closing) every connection until it is dropped.
struct Witness {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Witness {
    fn start() -> std::io::Result<Witness> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for _ in l.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        Ok(Witness {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread sits in accept(): one more connection lets it see the flag.
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Two clusters and their sidecars.
pub struct LocalPair {
    pub clusters: [Cluster; 2],
    pub configs: [Config; 2],
    running: [Option<Running>; 2],
    witness: Option<Witness>,
}

impl LocalPair {
    /// Configure sidecars for `clusters` (database `dbname` on each); none runs yet.
    pub fn new(clusters: [Cluster; 2], dbname: &str, options: &LocalOptions) -> Result<LocalPair> {
        let http: Vec<SocketAddr> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.local_addr()
            })
            .collect::<std::io::Result<_>>()?;
        let mut failover = format!(
            "probe_interval = \"{}ms\"\nconnect_timeout = \"1s\"\ndrain_timeout = \"2s\"\n",
            options.probe_interval.as_millis()
        );
        let mut witness = None;
        if let Some(t) = options.failover_timeout {
            let w = Witness::start()?;
            failover.push_str(&format!(
                "automatic = true\ntimeout = \"{}ms\"\nwitness = \"tcp:127.0.0.1:{}\"\n",
                t.as_millis(),
                w.port
            ));
            witness = Some(w);
        }
        let sync = match options.sync_fallback {
            None => String::new(),
            Some(after) => format!(
                "mode = \"sync\"\non_standby_loss = \"async\"\nfallback_after = \"{}ms\"\n",
                after.as_millis()
            ),
        };
        let roles: Vec<String> = options
            .nms_roles
            .iter()
            .map(|r| format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        let nodes: String = (0..2)
            .map(|j| {
                format!(
                    "[nodes.{}]\ndatabase = \"{}\"\nhttp = \"{}\"\njournal = \"{}\"\n",
                    NAMES[j],
                    clusters[j].dsn(dbname),
                    http[j],
                    journal_dir(&clusters[j]).display()
                )
            })
            .collect();
        // A throwaway pair on loopback: a token from the clock and the process is enough.
        let token = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let config = |i: usize| -> Result<Config> {
            let text = format!(
                "node = \"{}\"\ndivergence_dir = \"{}\"\n{nodes}\
                 [nms]\nroles = [{}]\ninitial_primary = \"{}\"\n\
                 [failover]\n{failover}\n[sync]\n{sync}\n[hooks]\n{}\n\
                 [http]\ntoken = \"{token}\"\n",
                NAMES[i],
                clusters[i].socket_dir().join("divergence").display(),
                roles.join(", "),
                NAMES[options.initial_primary],
                options.hooks
            );
            let path = clusters[i].socket_dir().join("understudy.toml");
            std::fs::write(&path, &text)
                .with_context(|| format!("while writing {}", path.display()))?;
            Config::parse(&text, &path)
        };
        let configs = [config(0)?, config(1)?];
        Ok(LocalPair {
            clusters,
            configs,
            running: [None, None],
            witness,
        })
    }

    /// Start node `i`'s sidecar (again); nothing happens while it is running.
    ///
    /// A second sidecar for the same node could not bind its HTTP address, and replacing the
    /// handle of the first would drop its shutdown switch, leaving it running unstoppable.
    pub fn start(&mut self, i: usize) {
        if self.running[i]
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
        {
            return;
        }
        let (stop, rx) = watch::channel(false);
        let cfg = self.configs[i].clone();
        let task = tokio::spawn(super::run(cfg, rx));
        self.running[i] = Some(Running { stop, task });
    }

    /// Stop node `i`'s sidecar and wait for it.
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self.running[i].take() {
            let _ = r.stop.send(true);
            r.task.await??;
        }
        Ok(())
    }

    /// Stop both sidecars (both, even when the first one had failed); the first failure.
    pub async fn stop_all(&mut self) -> Result<()> {
        let a = self.stop(0).await;
        let b = self.stop(1).await;
        a.and(b)
    }

    pub fn http(&self, i: usize) -> SocketAddr {
        self.configs[i].this_node().http
    }

    pub async fn status(&self, i: usize) -> Option<SidecarStatus> {
        http::get_status(self.http(i), Duration::from_secs(2))
            .await
            .ok()
    }

    /// Wait until node `primary` is primary and the other one follows it at the same epoch,
    /// having applied what the primary had written when the wait began.
    pub async fn settled(
        &self,
        primary: usize,
        timeout: Duration,
    ) -> Result<(SidecarStatus, SidecarStatus)> {
        let start = Instant::now();
        let target = {
            let c = self.configs[primary]
                .this_node()
                .database
                .connect("understudy")
                .await?;
            let t: String = c
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await?
                .get(0);
            t.parse::<crate::lsn::Lsn>()?
        };
        loop {
            if let (Some(p), Some(s)) = (self.status(primary).await, self.status(1 - primary).await)
            {
                if p.role == "primary"
                    && s.role == "standby"
                    && s.following
                    && p.epoch == s.epoch
                    && s.lsn.applied.is_some_and(|a| a >= target)
                {
                    return Ok((p, s));
                }
                if start.elapsed() > timeout {
                    bail!(
                        "node {} did not become primary with {} following within {timeout:?} \
                         ({}: {} at epoch {}, {}; {}: {} at epoch {}, {})",
                        NAMES[primary],
                        NAMES[1 - primary],
                        NAMES[primary],
                        p.role,
                        p.epoch,
                        p.last_error.as_deref().unwrap_or("no error"),
                        NAMES[1 - primary],
                        s.role,
                        s.epoch,
                        s.last_error.as_deref().unwrap_or("no error"),
                    );
                }
            } else if start.elapsed() > timeout {
                bail!("a sidecar did not answer within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A planned switchover, asked of the current primary's sidecar; the sidecar's reply.
    pub async fn switchover(&self, primary: usize) -> Result<serde_json::Value> {
        http::post_command(
            self.http(primary),
            "/v1/switchover",
            self.configs[primary].http.token.as_deref(),
            Duration::from_secs(120),
        )
        .await
    }

    /// Wait until node `i` is primary at an epoch above `above`; its status.
    pub async fn promoted(&self, i: usize, above: i64, timeout: Duration) -> Result<SidecarStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(i).await {
                if s.role == "primary" && s.epoch > above {
                    return Ok(s);
                }
            }
            if start.elapsed() > timeout {
                return Err(anyhow!(
                    "node {} did not take over within {timeout:?}",
                    NAMES[i]
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn divergence_dirs(&self) -> Vec<PathBuf> {
        self.configs
            .iter()
            .map(|c| c.divergence_dir.clone())
            .collect()
    }
}

fn journal_dir(c: &Cluster) -> PathBuf {
    c.socket_dir().join("journal")
}

impl Drop for LocalPair {
    fn drop(&mut self) {
        for r in self.running.iter_mut().flatten() {
            let _ = r.stop.send(true);
            r.task.abort();
        }
        self.witness = None;
    }
}
