//! An in-memory NMS that loads itself from the standby database and then stays current from
//! understudy's message stream alone.
//!
//! ```text
//! understudy follow --journal DIR --rules examples/nms_rules.toml --http 127.0.0.1:8181 ...
//! cargo run --example nms_memory -- --standby 'host=... dbname=nms' --stream http://127.0.0.1:8181
//! ```
//!
//! At start it reads the model and `understudy.progress.applied_lsn` in one REPEATABLE READ
//! snapshot of the standby, then follows `GET /v1/messages?from_lsn=<applied_lsn>`, resuming
//! with `Last-Event-ID` whenever the stream drops, and prints a summary every second. A message
//! it cannot apply (a value it never had) makes it reload from the standby.

mod load;
mod model;
mod sse;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use understudy::pg::conninfo::ConnInfo;

use load::Side;
use model::{format_lsn, LiveModel};
use sse::{messages_path, Endpoint, SseError, Subscription};

/// In-memory NMS model fed by understudy's message stream.
#[derive(Parser, Debug)]
struct Args {
    /// The standby's database, loaded at start (libpq key=value or postgres:// URI).
    #[arg(long, env = "UNDERSTUDY_STANDBY", value_name = "DSN")]
    standby: String,
    /// The message stream: `understudy follow --http`'s address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8181")]
    stream: String,
    /// Bearer token for the stream (`understudy follow --http-token`).
    #[arg(long, env = "UNDERSTUDY_HTTP_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 1)]
    interval: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("nms_memory: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let endpoint = Endpoint::parse(&args.stream)?;
    let standby = ConnInfo::parse(&args.standby).context("--standby")?;
    let client = standby
        .connect("nms_memory")
        .await
        .context("while connecting to the standby")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.interval.max(1)));
    let mut reloads = 0u32;
    loop {
        if reloads > 0 {
            // not in a tight loop when the stream keeps refusing the standby's position
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        reloads += 1;
        let (model, lsn) = load::load(&client, Side::Standby).await?;
        println!(
            "loaded from the standby at {}: {}",
            format_lsn(lsn),
            model.summary()
        );
        let mut live = LiveModel::new(model, lsn);
        let mut sub = Subscription::new(
            endpoint.clone(),
            messages_path(Some(&live.stream_from_lsn()), None, None),
            args.token.clone(),
            None,
        );
        sub.log = true;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    println!("{}", live.model.summary());
                    return Ok(());
                }
                _ = ticker.tick() => {
                    let at = live.last.map_or_else(|| format!("{} (loaded)", live.stream_from_lsn()), |id| id.to_string());
                    println!("[{at}] {}", live.model.summary());
                }
                event = sub.next() => {
                    let event = match event {
                        Ok(e) => e,
                        // 410: the journal no longer holds our position: start over
                        Err(e @ SseError::Status { status: 410, .. }) => {
                            eprintln!("{e}; reloading from the standby");
                            break;
                        }
                        Err(e) => return Err(e).context("the message stream refused us"),
                    };
                    if event.event == "error" {
                        eprintln!("the stream reported: {}", event.data);
                        continue;
                    }
                    if event.event != "mutation" {
                        continue;
                    }
                    if let Err(e) = live.offer_event(event.id.as_deref(), &event.data) {
                        eprintln!("{e}");
                        break; // reload
                    }
                }
            }
        }
    }
}
