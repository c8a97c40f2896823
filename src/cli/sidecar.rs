//! The sidecar's commands: `run`, `switchover`, `rejoin`, and `promote --config`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use tokio::sync::watch;

use crate::role::rejoin::{self, RejoinOptions};
use crate::sidecar::config::{slot_for, Config};
use crate::sidecar::http;

/// Which configuration, and which node of it.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The sidecar's configuration (see examples/understudy.toml).
    #[arg(long, env = "UNDERSTUDY_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// This node's name, overriding `node` in the file.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<Config> {
        let cfg = Config::load(&self.config)?;
        match &self.node {
            Some(n) => cfg.with_node(n),
            None => Ok(cfg),
        }
    }
}

pub async fn run(args: ConfigArgs, stop: watch::Receiver<bool>) -> Result<i32> {
    let cfg = args.load()?;
    crate::sidecar::run(cfg, stop).await?;
    Ok(0)
}

/// Ask the sidecars for a planned switchover (this node's sidecar, else the peer's); when
/// neither runs, switch over directly on the databases.
pub async fn switchover(args: ConfigArgs, stop: watch::Receiver<bool>) -> Result<i32> {
    let cfg = args.load()?;
    let mut none_runs = true;
    for node in [cfg.this_node(), cfg.peer()] {
        if let Err(e) = http::get_status(node.http, Duration::from_secs(2)).await {
            none_runs &= e.downcast_ref::<http::NoSidecar>().is_some();
        } else {
            none_runs = false;
        }
    }
    let reply = if none_runs {
        eprintln!("no sidecar runs on either node: switching over directly on the databases");
        crate::sidecar::direct::switchover(&cfg, stop).await?
    } else {
        post_to_either(&cfg, "/v1/switchover").await?
    };
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(0)
}

/// Ask this node's sidecar to promote it.
pub async fn promote(args: ConfigArgs, force: bool) -> Result<i32> {
    let cfg = args.load()?;
    let path = format!("/v1/promote?force={force}");
    let reply = http::post_command(
        cfg.this_node().http,
        &path,
        cfg.http.token.as_deref(),
        Duration::from_secs(300),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(0)
}

async fn post_to_either(cfg: &Config, path: &str) -> Result<serde_json::Value> {
    let token = cfg.http.token.as_deref();
    let mut last = None;
    for node in [cfg.this_node(), cfg.peer()] {
        match http::post_command(node.http, path, token, Duration::from_secs(300)).await {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<http::HttpStatusError>().is_some() => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no sidecar answered")))
}

/// Rejoin this node (an old primary) to the new primary, directly on the databases. Stop this
/// node's sidecar first (it rejoins by itself when `failover.auto_rejoin` is on).
pub async fn rejoin(
    args: ConfigArgs,
    discard_unknown: bool,
    stop: watch::Receiver<bool>,
) -> Result<i32> {
    let cfg = args.load()?;
    let me = cfg.this_node();
    if http::get_status(me.http, Duration::from_secs(1))
        .await
        .is_ok()
    {
        return Err(anyhow!(
            "this node's sidecar is running on {}: it rejoins by itself (failover.auto_rejoin); \
             stop it first to rejoin by hand",
            me.http
        ));
    }
    let options = RejoinOptions {
        node_name: me.name.clone(),
        nms_roles: cfg.nms.roles.clone(),
        divergence_dir: cfg.divergence_dir.clone(),
        slot: slot_for(&me.name),
        journal: me.journal.clone(),
        drain_timeout: cfg.failover.drain_timeout,
        discard_unknown,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let report = rejoin::rejoin(&me.database, &cfg.peer().database, &options, stop)
        .await
        .context("rejoin failed")?;
    print!("{report}");
    Ok(if report.divergence.is_some() { 2 } else { 0 })
}
