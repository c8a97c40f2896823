//! Shared by tests/sinks.rs and tests/replay.rs: a bootstrapped pair whose primary's changes are
//! journaled by reading the slot directly (as the follower does), and a real HTTP webhook
//! receiver on a loopback port that drops ids it has seen.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use understudy::journal::{Journal, JournalOptions};
use understudy::lsn::Lsn;
use understudy::messages::{to_json, MessageReader};
use understudy::pg::replication::{ReplicationConnection, ReplicationMessage};
use understudy::translate::Rules;

use crate::common::{load_nms, Pair};

/// A pair bootstrapped with the example NMS, and where streaming starts.
pub struct Setup {
    pub pair: Pair,
    pub slot: String,
    pub start: Lsn,
    pub rules: Arc<Rules>,
}

pub async fn setup() -> Setup {
    let pair = Pair::start();
    load_nms(&pair.primary_client().await).await;
    let summary = pair.bootstrap().await;
    let rules = Rules::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nms_rules.toml"))
        .expect("the example rules load");
    Setup {
        slot: summary.slot.clone(),
        start: summary.consistent_point,
        pair,
        rules: Arc::new(rules),
    }
}

/// A journal in `dir` starting at the bootstrap's consistent point, with small segments.
pub fn open_journal(dir: &Path, start: Lsn) -> Journal {
    open_journal_with(dir, start, 256 * 1024)
}

pub fn open_journal_with(dir: &Path, start: Lsn, segment_bytes: u64) -> Journal {
    let opts = JournalOptions {
        segment_bytes,
        index_every: 64,
    };
    Journal::open(dir, start, opts).expect("open the journal")
}

/// Runs `ticks` transactions of the example workload from `seed` on, then a marker transaction;
/// returns an LSN below the marker's commit and above every earlier commit.
pub async fn workload(setup: &Setup, seed: i32, ticks: i32) -> Lsn {
    let client = setup.pair.primary_client().await;
    for i in seed..seed + ticks {
        client
            .execute("SELECT nms.workload_tick($1)", &[&i])
            .await
            .unwrap();
    }
    marker(&client).await
}

/// A transaction touching one element; the insert position inside it (below its commit LSN).
pub async fn marker(client: &tokio_postgres::Client) -> Lsn {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "UPDATE nms.network_element SET last_seen = now() WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let lsn: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").await.unwrap();
    lsn.parse().unwrap()
}

/// Streams the slot from `from` into `journal` until a transaction committing at or after
/// `until` is journaled, then flushes; returns the durable position.
pub async fn journal_until(setup: &Setup, journal: &mut Journal, from: Lsn, until: Lsn) -> Lsn {
    let info = setup.pair.primary_info();
    let mut repl = ReplicationConnection::connect(&info, "test journal")
        .await
        .unwrap();
    let publication = understudy::bootstrap::DEFAULT_PUBLICATION;
    repl.start_logical(
        &setup.slot,
        from,
        &[("proto_version", "1"), ("publication_names", publication)],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, repl.recv())
            .await
            .unwrap_or_else(|_| panic!("no commit at or after {until} within 60 s"))
            .unwrap()
            .expect("the replication stream ended");
        match msg {
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                journal.append(wal_start, &data).unwrap();
                if data.first() == Some(&b'C') {
                    let commit_lsn = Lsn(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                    if commit_lsn >= until {
                        break;
                    }
                }
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested: true,
                ..
            } => repl.send_status(wal_end, from, from, false).await.unwrap(),
            ReplicationMessage::Keepalive { .. } => {}
        }
    }
    let durable = journal.flush().unwrap();
    repl.close().await;
    durable
}

/// Every message the journal holds from `from` on, as the sinks emit them (JSON values).
pub fn expected_messages(journal: &Journal, from: Lsn, rules: &Arc<Rules>) -> Vec<Value> {
    let mut reader = MessageReader::open(&journal.handle(), from, Arc::clone(rules)).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = reader.next_batch(1000).unwrap() {
        for m in &batch.messages {
            out.push(serde_json::from_str(&to_json(m)).unwrap());
        }
    }
    out
}

pub fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// What the webhook receiver has seen.
#[derive(Default)]
pub struct Received {
    /// First copy of each message, in arrival order.
    pub messages: Vec<Value>,
    seen: HashSet<String>,
    pub duplicates: usize,
    pub requests: usize,
    pub failed: usize,
    /// Idempotency-Key headers of the accepted requests.
    pub keys: Vec<String>,
    /// Fail every n-th request with 503 (0: never).
    pub fail_every: usize,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// A real HTTP/1.1 receiver on 127.0.0.1 that drops message ids it has seen.
pub struct Receiver {
    pub url: String,
    pub state: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(fail_every: usize, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Received {
            fail_every,
            delay,
            ..Received::default()
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(handle(conn, Arc::clone(&shared)));
            }
        });
        Receiver { url, state, task }
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().messages.len()
    }

    pub fn messages(&self) -> Vec<Value> {
        self.state.lock().unwrap().messages.clone()
    }
}

async fn handle(mut conn: TcpStream, state: Arc<Mutex<Received>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap();
    while buf.len() < head_end + length {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
    let key = header("idempotency-key");
    let delay = {
        let mut st = state.lock().unwrap();
        st.requests += 1;
        st.delay
    };
    tokio::time::sleep(delay).await;
    let fail = {
        let mut st = state.lock().unwrap();
        let fail = st.fail_every > 0 && st.requests.is_multiple_of(st.fail_every);
        if fail {
            st.failed += 1;
        } else {
            let batch: Vec<Value> = serde_json::from_slice(&buf[head_end..]).unwrap();
            let first = batch.first().unwrap()["id"].as_str().unwrap().to_string();
            let last = batch.last().unwrap()["id"].as_str().unwrap().to_string();
            assert_eq!(key, format!("{first}..{last}"), "Idempotency-Key");
            st.keys.push(key);
            for m in batch {
                let id = m["id"].as_str().unwrap().to_string();
                if st.seen.insert(id) {
                    st.messages.push(m);
                } else {
                    st.duplicates += 1;
                }
            }
        }
        fail
    };
    let answer: &[u8] = if fail {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    let _ = conn.write_all(answer).await;
    let _ = conn.shutdown().await;
}
