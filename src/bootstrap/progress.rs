//! Copy progress: bars on a terminal (overall bytes, rate, ETA, one line per worker), else a log
//! line every five seconds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::copy::CopyCounters;

pub(super) struct Display {
    task: tokio::task::JoinHandle<()>,
    bars: Option<(MultiProgress, ProgressBar, Vec<ProgressBar>)>,
}

impl Display {
    pub fn start(
        bars: bool,
        total_bytes: u64,
        parts: u64,
        counters: Arc<CopyCounters>,
        currents: Vec<Arc<Mutex<String>>>,
    ) -> Display {
        if bars {
            let multi = MultiProgress::new();
            let overall = multi.add(ProgressBar::new(total_bytes.max(1)));
            overall.set_style(
                ProgressStyle::with_template(
                    "copy {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            let workers: Vec<ProgressBar> = currents
                .iter()
                .map(|_| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {msg}").expect("valid template"),
                    );
                    bar
                })
                .collect();
            let (o, w) = (overall.clone(), workers.clone());
            let task = tokio::spawn(async move {
                loop {
                    let bytes = counters.bytes.load(Ordering::Relaxed);
                    if bytes > o.length().unwrap_or(0) {
                        o.set_length(bytes);
                    }
                    o.set_position(bytes);
                    o.set_message(format!(
                        "{} rows, {}/{} parts",
                        counters.rows.load(Ordering::Relaxed),
                        counters.parts_done.load(Ordering::Relaxed),
                        parts
                    ));
                    for (bar, current) in w.iter().zip(&currents) {
                        let name = current.lock().map(|c| c.clone()).unwrap_or_default();
                        bar.set_message(if name.is_empty() {
                            "idle".to_string()
                        } else {
                            name
                        });
                        bar.tick();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Display {
                task,
                bars: Some((multi, overall, workers)),
            }
        } else {
            let task = tokio::spawn(async move {
                let started = std::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let bytes = counters.bytes.load(Ordering::Relaxed);
                    let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                    let eta = (total_bytes.saturating_sub(bytes)) as f64 / rate.max(1.0);
                    tracing::info!(
                        "copied {:.1}/{:.1} MB ({:.1} MB/s, ETA {:.0} s), {} rows, {}/{} parts",
                        bytes as f64 / 1e6,
                        total_bytes as f64 / 1e6,
                        rate / 1e6,
                        eta,
                        counters.rows.load(Ordering::Relaxed),
                        counters.parts_done.load(Ordering::Relaxed),
                        parts
                    );
                }
            });
            Display { task, bars: None }
        }
    }

    pub fn finish(self) {
        self.task.abort();
        if let Some((multi, overall, workers)) = self.bars {
            for w in workers {
                w.finish_and_clear();
            }
            overall.finish();
            let _ = multi.clear();
        }
    }
}
