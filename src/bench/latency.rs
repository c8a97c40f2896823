//! End-to-end latency: a steady stream of single-row transactions on the primary, followed
//! through a journal with the message stream served over HTTP, read by an SSE client; for each
//! message, the wall clock at delivery minus its `commit_time`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{mpsc, watch};

use super::sse;
use crate::follow::{self, FollowOptions, FollowProgress, JournalFollow};
use crate::pg::conninfo::ConnInfo;

/// Commits per second the writer aims at.
const RATE: u64 = 200;
/// How long the writer writes.
const DURATION: Duration = Duration::from_secs(5);

pub struct Latency {
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} / {:.1} / {:.1} ms over {} messages ({} txn/s for {} s, one row each; journal + SSE; commit_time has ms resolution)",
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.messages,
            RATE,
            DURATION.as_secs()
        )
    }
}

/// Follow `primary` into `standby` through a journal in `journal_dir` with the HTTP stream, write
/// on the primary at a steady rate, and measure commit → delivery for every message.
pub async fn measure(
    primary: &ConnInfo,
    standby: &ConnInfo,
    journal_dir: &Path,
) -> Result<Latency> {
    let s = standby.connect("understudy bench").await?;
    let from = crate::state::read_progress(&s)
        .await?
        .ok_or_else(|| anyhow!("the standby has no understudy progress"))?
        .applied_lsn;
    drop(s);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut options = FollowOptions::new(primary.clone(), standby.clone());
    options.journal = Some(JournalFollow::new(journal_dir));
    let outputs = follow::outputs::Outputs {
        http: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, _progress_rx) = watch::channel(FollowProgress::default());
    let follower = tokio::spawn(follow::outputs::follow_with_outputs_progress(
        options,
        outputs,
        stop_rx,
        progress_tx,
    ));

    let result = drive(primary, port, &from.to_string()).await;
    stop_tx.send_replace(true);
    let followed = follower
        .await
        .map_err(|e| anyhow!("the follower task failed: {e}"))?;
    let samples = result?;
    followed?;
    summarize(samples)
}

async fn drive(primary: &ConnInfo, port: u16, from: &str) -> Result<Vec<f64>> {
    // The reader: every mutation event, with its latency in ms.
    let endpoint = sse::Endpoint::parse(&format!("http://127.0.0.1:{port}"))?;
    let mut sub = sse::Subscription::new(
        endpoint,
        sse::messages_path(Some(from), None, None),
        None,
        None,
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<f64>>();
    let reader = tokio::spawn(async move {
        loop {
            let event = match sub.next().await {
                Ok(e) => e,
                Err(e) => {
                    tx.send(Err(anyhow!("the message stream failed: {e}"))).ok();
                    return;
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            if event.event != "mutation" {
                continue;
            }
            let sample = serde_json::from_str::<serde_json::Value>(&event.data)
                .context("while parsing a message")
                .and_then(|v| {
                    let t = v["commit_time"]
                        .as_str()
                        .ok_or_else(|| anyhow!("a message without commit_time: {}", event.data))?;
                    Ok(now - rfc3339_unix_ms(t)? as f64)
                });
            if tx.send(sample).is_err() {
                return;
            }
        }
    });

    let result = async {
        let p = primary.connect("understudy bench latency").await?;
        // Warm up: one marker, delivered, before measuring.
        p.execute("INSERT INTO bench.marker VALUES (1000000)", &[])
            .await?;
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .map_err(|_| anyhow!("no message arrived on the stream within 60 s"))?
            .ok_or_else(|| anyhow!("the message stream reader stopped"))??;

        let total = RATE * DURATION.as_secs();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples = Vec::with_capacity(total as usize);
        for i in 0..total {
            tick.tick().await;
            p.execute(
                "INSERT INTO bench.marker VALUES ($1)",
                &[&(1_000_001 + i as i32)],
            )
            .await
            .context("while writing the latency workload")?;
            while let Ok(sample) = rx.try_recv() {
                samples.push(sample?);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while (samples.len() as u64) < total {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(sample)) => samples.push(sample?),
                Ok(None) => bail!("the message stream reader stopped"),
                Err(_) => bail!(
                    "only {} of {total} messages arrived within 30 s of the last commit",
                    samples.len()
                ),
            }
        }
        Ok(samples)
    }
    .await;
    reader.abort();
    result
}

fn summarize(mut samples: Vec<f64>) -> Result<Latency> {
    if samples.is_empty() {
        bail!("no latency samples");
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        messages: samples.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: samples[samples.len() - 1],
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time such as
/// `2026-11-26T02:40:00.123Z` (fractions of any length; only `Z`).
fn rfc3339_unix_ms(t: &str) -> Result<i64> {
    let bad = || anyhow!("unexpected commit_time {t:?}");
    let rest = t.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = rest.split_once('T').ok_or_else(bad)?;
    let mut d = date
        .splitn(3, '-')
        .map(|x| x.parse::<i64>().map_err(|_| bad()));
    let (y, m, day) = (
        d.next().ok_or_else(bad)??,
        d.next().ok_or_else(bad)??,
        d.next().ok_or_else(bad)??,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms
        .splitn(3, ':')
        .map(|x| x.parse::<i64>().map_err(|_| bad()));
    let (hh, mm, ss) = (
        h.next().ok_or_else(bad)??,
        h.next().ok_or_else(bad)??,
        h.next().ok_or_else(bad)??,
    );
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().map_err(|_| bad())?
    };
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    Ok(secs * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commit_times() {
        assert_eq!(rfc3339_unix_ms("1970-01-01T00:00:00.000Z").unwrap(), 0);
        assert_eq!(
            rfc3339_unix_ms("2000-03-01T00:00:00Z").unwrap(),
            951_868_800_000
        );
        assert_eq!(
            rfc3339_unix_ms("2026-11-26T02:40:00.123Z").unwrap(),
            1_795_660_800_123
        );
        assert!(rfc3339_unix_ms("2026-11-26 02:40:00").is_err());
    }
}
