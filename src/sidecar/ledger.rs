//! The NMS ledger: a table `nms.ledger` that an NMS session (role `nms_app`) inserts into every
//! few milliseconds, at whichever node of the pair accepts its writes, recording every insert
//! whose COMMIT returned. What the bench and the tests of switchover and failover measure
//! against: every acknowledged `seq` must end on the primary, or in a divergence file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;

use super::local::NAMES;
use crate::pg::conninfo::ConnInfo;

/// Creates `nms.ledger` and lets `nms_app` write the NMS schema (run on the first primary, before
/// the standby is copied).
pub const LEDGER_SQL: &str =
    "CREATE TABLE nms.ledger (seq bigint PRIMARY KEY, node text NOT NULL, \
                                  at timestamptz NOT NULL DEFAULT now());
     GRANT USAGE ON SCHEMA nms TO nms_app;
     GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA nms TO nms_app;
     GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA nms TO nms_app;";

/// What the NMS session saw: every `seq` whose COMMIT returned, and when.
#[derive(Clone, Debug, Default)]
pub struct Acked {
    /// `(when, seq)` in the order acknowledged.
    pub commits: Vec<(Instant, i64)>,
    /// The acknowledged `seq`s per node (0 = a, 1 = b).
    pub by_node: BTreeMap<usize, Vec<i64>>,
}

/// The NMS session: one autocommit INSERT as `nms_app` every `every`, to whichever node
/// accepts it (one session per node, reconnected when it breaks).
pub struct Writer {
    acked: Arc<Mutex<Acked>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Start writing to the nodes listening on `ports` (a, b), from `seq` `first`.
    pub fn start(ports: [u16; 2], every: Duration, first: i64) -> Writer {
        let acked = Arc::new(Mutex::new(Acked::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(write(ports, every, first, Arc::clone(&acked), stop_rx));
        Writer { acked, stop, task }
    }

    /// What was acknowledged so far.
    pub fn acknowledged(&self) -> Acked {
        self.acked.lock().expect("writer lock").clone()
    }

    pub fn count(&self) -> usize {
        self.acked.lock().expect("writer lock").commits.len()
    }

    /// Wait until `n` more commits are acknowledged.
    pub async fn commits(&self, n: usize) -> Result<()> {
        let target = self.count() + n;
        let start = Instant::now();
        while self.count() < target {
            if start.elapsed() > Duration::from_secs(30) || self.task.is_finished() {
                bail!("the NMS session acknowledged no commit for 30 s: neither node takes writes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The longest pause between two acknowledged commits after `since`, up to the first commit
    /// acknowledged from now on (waited for).
    pub async fn longest_pause_since(&self, since: Instant) -> Result<Duration> {
        self.commits(1).await?;
        let acked = self.acked.lock().expect("writer lock");
        Ok(acked
            .commits
            .windows(2)
            .filter(|w| w[1].0 >= since)
            .map(|w| w[1].0.duration_since(w[0].0))
            .max()
            .unwrap_or_default())
    }

    /// Stop writing; everything acknowledged.
    pub async fn stop(self) -> Acked {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        std::mem::take(&mut *self.acked.lock().expect("writer lock"))
    }
}

async fn write(
    ports: [u16; 2],
    every: Duration,
    first: i64,
    acked: Arc<Mutex<Acked>>,
    mut stop: watch::Receiver<bool>,
) {
    let infos = ports.map(|p| {
        ConnInfo::parse(&format!(
            "host=127.0.0.1 port={p} user=nms_app dbname=nms connect_timeout=1"
        ))
    });
    let mut clients: [Option<tokio_postgres::Client>; 2] = [None, None];
    let mut seq = first;
    let mut prefer = 0usize;
    while !*stop.borrow() {
        for k in 0..2 {
            let i = (prefer + k) % 2;
            let Ok(info) = &infos[i] else { continue };
            if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                clients[i] = tokio::time::timeout(Duration::from_secs(1), info.connect("nms"))
                    .await
                    .ok()
                    .and_then(|r| r.ok());
            }
            let Some(c) = &clients[i] else { continue };
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.execute(
                    "INSERT INTO nms.ledger (seq, node) VALUES ($1, $2)",
                    &[&seq, &NAMES[i]],
                ),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    let mut a = acked.lock().expect("writer lock");
                    a.commits.push((Instant::now(), seq));
                    a.by_node.entry(i).or_default().push(seq);
                    drop(a);
                    prefer = i;
                    seq += 1;
                    break;
                }
                Ok(Err(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    // An earlier attempt whose COMMIT never answered did commit: its outcome was
                    // unknown to the NMS, so it was never acknowledged. Move on.
                    seq += 1;
                    break;
                }
                Ok(Err(_)) => {}
                Err(_) => clients[i] = None,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// The `seq` of every `nms.ledger` insert saved under `dir` (one directory per divergence, each
/// with a `messages.jsonl`), only in node `node`'s divergence files when given.
pub fn diverged_seqs(dir: &Path, node: Option<&str>) -> Result<BTreeSet<i64>> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if node.is_some_and(|n| !name.starts_with(&format!("divergence-{n}-"))) {
            continue;
        }
        let file = e.path().join("messages.jsonl");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let m: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("while reading {}", file.display()))?;
            if m["table"] == "nms.ledger" && m["op"] == "insert" {
                let v = &m["new"]["seq"];
                let seq = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| anyhow!("no seq in {}: {line}", file.display()))?;
                out.insert(seq);
            }
        }
    }
    Ok(out)
}
