//! Command-line pieces for the mutation messages (sinks, stream, rules, replay) and for roles
//! (promote).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use tokio::sync::watch;

use crate::follow::outputs::{load_rules, Outputs};
use crate::lsn::Lsn;
use crate::notify::SinkConfig;
use crate::pg::conninfo::ConnInfo;
use crate::replay::{ReplayOptions, ReplayTarget};
use crate::role::promote::PromoteOptions;

/// What follow publishes: sinks and the message stream (both need --journal), and the rules.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// A sink, repeatable: `webhook:http://HOST:PORT/PATH`, `exec:[kinds=GLOB,interval=1s:]COMMAND`,
    /// `notify:CHANNEL` (options: name=, from=now|oldest|LSN, kinds=, entities=, batch=, timeout=).
    #[arg(long = "sink", value_name = "SPEC")]
    pub sinks: Vec<SinkConfig>,
    /// Serve the message stream (Server-Sent Events at /v1/messages) on PORT or HOST:PORT
    /// (a bare port binds 127.0.0.1).
    #[arg(long, value_name = "ADDR", value_parser = crate::http::parse_listen)]
    pub http: Option<SocketAddr>,
    /// Bearer token the HTTP listener requires.
    #[arg(long, env = "UNDERSTUDY_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Translation rules (TOML): table + operation (+ conditions) -> message kind.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

impl OutputArgs {
    pub fn outputs(&self) -> Outputs {
        Outputs {
            sinks: self.sinks.clone(),
            http: self.http,
            http_token: self.http_token.clone(),
            rules_file: self.rules.clone(),
        }
    }
}

/// Where `replay` sends the messages.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTo {
    /// JSON lines on standard output.
    Stdout,
    /// Apply again to a standby restored from a backup taken at --from-lsn.
    Standby,
    /// Deliver again to the --sink sinks.
    Sinks,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The journal follow wrote (stop that follower first).
    #[arg(long, value_name = "DIR")]
    pub journal: PathBuf,
    /// Transactions committing at or after this LSN.
    #[arg(long, value_name = "LSN")]
    pub from_lsn: Lsn,
    /// …and at or before this one (default: everything durable).
    #[arg(long, value_name = "LSN")]
    pub to_lsn: Option<Lsn>,
    #[arg(long, value_enum, default_value_t = ReplayTo::Stdout)]
    pub to: ReplayTo,
    /// The standby (for --to standby, and for notify sinks).
    #[arg(long, env = "UNDERSTUDY_STANDBY", value_name = "DSN")]
    pub standby: Option<String>,
    /// A sink for --to sinks, repeatable (same syntax as follow --sink).
    #[arg(long = "sink", value_name = "SPEC")]
    pub sinks: Vec<SinkConfig>,
    /// Translation rules (TOML).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// The primary, to check the rules against its tables (optional).
    #[arg(long, env = "UNDERSTUDY_PRIMARY", value_name = "DSN")]
    pub primary: Option<String>,
}

pub async fn replay(args: ReplayArgs, stop: watch::Receiver<bool>) -> Result<i32> {
    let standby = args.standby.as_deref().map(ConnInfo::parse).transpose()?;
    let target = match args.to {
        ReplayTo::Stdout => ReplayTarget::Stdout,
        ReplayTo::Standby => match standby {
            Some(s) => ReplayTarget::Standby(s),
            None => bail!("--to standby needs --standby DSN"),
        },
        ReplayTo::Sinks => {
            if args.sinks.is_empty() {
                bail!("--to sinks needs at least one --sink SPEC");
            }
            ReplayTarget::Sinks {
                sinks: args.sinks.clone(),
                standby,
            }
        }
    };
    let rules = match (&args.rules, &args.primary) {
        (Some(file), Some(primary)) => load_rules(Some(file), &ConnInfo::parse(primary)?).await?,
        (Some(file), None) => crate::translate::Rules::load(file)?,
        (None, _) => crate::translate::Rules::none(),
    };
    let options = ReplayOptions {
        journal_dir: args.journal,
        from_lsn: args.from_lsn,
        to_lsn: args.to_lsn,
        target,
        rules: Arc::new(rules),
    };
    let summary = crate::replay::run(&options, stop).await?;
    eprintln!(
        "replay done: {} transactions, {} messages{}",
        summary.transactions,
        summary.messages,
        summary
            .applied
            .map_or(String::new(), |l| format!("; standby applied up to {l}"))
    );
    Ok(0)
}

#[derive(Args, Debug, Clone)]
pub struct PromoteArgs {
    /// The standby to promote.
    #[arg(
        long,
        env = "UNDERSTUDY_STANDBY",
        value_name = "DSN",
        required_unless_present = "config"
    )]
    pub standby: Option<String>,
    /// Ask this node's running sidecar to promote it instead (the sidecar's configuration).
    #[arg(long, value_name = "FILE", conflicts_with = "standby")]
    pub config: Option<std::path::PathBuf>,
    /// With --config: this node's name, overriding `node` in the file.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub node: Option<String>,
    /// The old primary, when it still answers (its sequences are read; it is never written).
    #[arg(long, env = "UNDERSTUDY_PRIMARY", value_name = "DSN")]
    pub primary: Option<String>,
    /// The NMS's database roles, repeatable: their write privileges come back on promotion.
    #[arg(long = "nms-role", value_name = "ROLE")]
    pub nms_roles: Vec<String>,
    /// Sequence steps added when the old primary does not answer.
    #[arg(long, default_value_t = 1000)]
    pub sequence_margin: i64,
    /// The slot the old primary will follow from.
    #[arg(long, default_value = "understudy_reverse")]
    pub reverse_slot: String,
    /// Command run (sh -c) once this node is the primary; gets UNDERSTUDY_PROMOTION_LSN.
    #[arg(long, value_name = "COMMAND")]
    pub hook: Option<String>,
    /// Promote even a node fenced by a higher epoch (only when that peer is gone for good).
    #[arg(long)]
    pub force: bool,
    /// The stopped follower's journal: what it holds beyond the standby's applied position is
    /// applied first (with `--ack journal` the primary may have let go of it already).
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}

pub async fn promote(args: PromoteArgs) -> Result<i32> {
    let standby = ConnInfo::parse(args.standby.as_deref().unwrap_or_default())?;
    let primary = args.primary.as_deref().map(ConnInfo::parse).transpose()?;
    let options = PromoteOptions {
        nms_roles: args.nms_roles,
        sequence_margin: args.sequence_margin,
        reverse_slot: args.reverse_slot,
        hook: args.hook,
        force: args.force,
        old_primary_timeout: Duration::from_secs(5),
        ..PromoteOptions::default()
    };
    if let Some(dir) = &args.journal {
        let n = crate::sidecar::apply_journal(dir, &standby)
            .await
            .map_err(|e| e.context("while applying the journal before promoting"))?;
        println!("applied {n} journaled transaction(s) before promoting");
    }
    let summary = crate::role::promote::promote(&standby, primary.as_ref(), &options).await?;
    println!("{summary}");
    Ok(0)
}
