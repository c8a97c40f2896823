//! The command line: parses arguments, wires the library together, reports results.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::bootstrap::{self, BootstrapOptions};
use crate::follow::{self, FollowOptions, StopAt};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;

/// Keeps a standby network management system hot at the database level.
#[derive(Parser, Debug)]
#[command(name = "understudy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The two databases. DSNs are libpq key=value strings or postgres:// URIs; unset parts come
/// from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT and ~/.pgpass.
#[derive(Args, Debug, Clone)]
pub struct Pair {
    /// The primary's database (the NMS writes here).
    #[arg(long, env = "UNDERSTUDY_PRIMARY", value_name = "DSN")]
    pub primary: String,
    /// The standby's database (understudy writes here).
    #[arg(long, env = "UNDERSTUDY_STANDBY", value_name = "DSN")]
    pub standby: String,
}

impl Pair {
    fn parse(&self) -> Result<(ConnInfo, ConnInfo)> {
        let p = ConnInfo::parse(&self.primary).context("--primary")?;
        let s = ConnInfo::parse(&self.standby).context("--standby")?;
        Ok((p, s))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy the primary's database to the standby, consistently, and prepare streaming.
    Bootstrap {
        #[command(flatten)]
        pair: Pair,
        /// Parallel copy workers (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Replication slot to create on the primary.
        #[arg(long, default_value = bootstrap::DEFAULT_SLOT)]
        slot: String,
        /// Publication to use (created FOR ALL TABLES when missing).
        #[arg(long, default_value = bootstrap::DEFAULT_PUBLICATION)]
        publication: String,
        /// Drop what the standby database holds (every schema) and an old slot of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Stream the primary's changes into the standby.
    Follow {
        #[command(flatten)]
        pair: Pair,
        /// Exit 0 once everything that committed before this LSN is applied and acknowledged.
        #[arg(long, value_name = "LSN", conflicts_with = "until_caught_up")]
        stop_at_lsn: Option<Lsn>,
        /// Exit 0 once everything that committed before follow started is applied.
        #[arg(long)]
        until_caught_up: bool,
        /// application_name on the primary (for synchronous_standby_names).
        #[arg(long, default_value = "understudy")]
        application_name: String,
        /// Seconds between sequence updates on the standby.
        #[arg(long, default_value_t = 10)]
        sequence_interval: u64,
    },
    /// Show the slot, the applied position and the lag.
    Status {
        #[command(flatten)]
        pair: Pair,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare every replicated table and sequence (run while writes are quiet); exit 1 on any
    /// difference.
    Check {
        #[command(flatten)]
        pair: Pair,
    },
    /// Measure initial copy and catch-up against pg_dump/pg_restore and native logical
    /// replication, side by side on throwaway clusters; prints a Markdown report.
    Bench {
        /// Rows in the bulk table copied at bootstrap.
        #[arg(long, default_value_t = 2_000_000)]
        rows: i64,
        /// NMS transactions in the catch-up backlog.
        #[arg(long, default_value_t = 20_000)]
        transactions: i64,
        /// Parallel jobs for every copying tool (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Also write the report to this file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Run a local primary/standby pair on throwaway clusters with an example NMS workload.
    Demo {
        /// Seconds of workload.
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
}

/// Run a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping cleanly (press Ctrl-C again to quit at once)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    match cli.command {
        Command::Bootstrap {
            pair,
            jobs,
            slot,
            publication,
            force,
        } => {
            let (p, s) = pair.parse()?;
            let mut options = BootstrapOptions::new(p, s);
            if let Some(j) = jobs {
                anyhow::ensure!(j >= 1, "--jobs must be at least 1");
                options.jobs = j;
            }
            options.slot = slot;
            options.publication = publication;
            options.force = force;
            options.progress_bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let summary = bootstrap::bootstrap(&options, stop_rx).await?;
            println!("{summary}");
            Ok(0)
        }
        Command::Follow {
            pair,
            stop_at_lsn,
            until_caught_up,
            application_name,
            sequence_interval,
        } => {
            let (p, s) = pair.parse()?;
            let mut options = FollowOptions::new(p, s);
            options.stop_at = match (stop_at_lsn, until_caught_up) {
                (Some(l), _) => StopAt::Lsn(l),
                (None, true) => StopAt::CaughtUp,
                (None, false) => StopAt::Never,
            };
            options.application_name = application_name;
            options.sequence_interval = Duration::from_secs(sequence_interval.max(1));
            let summary = follow::follow(&options, stop_rx, None).await?;
            println!(
                "follow stopped: {} transactions, {} rows applied; standby applied up to {}",
                summary.transactions, summary.rows, summary.applied
            );
            Ok(0)
        }
        Command::Status { pair, json } => {
            let (p, s) = pair.parse()?;
            let status = crate::status::read(&p, &s).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{status}");
            }
            Ok(0)
        }
        Command::Check { pair } => {
            let (p, s) = pair.parse()?;
            let report = crate::check::check(&p, &s).await?;
            for d in &report.differences {
                println!("{d}");
            }
            if report.identical() {
                println!(
                    "check: identical ({} tables, {} rows, {} sequences)",
                    report.tables, report.rows, report.sequences
                );
                Ok(0)
            } else {
                println!(
                    "check: {} difference(s) in {} tables",
                    report.differences.len(),
                    report.tables
                );
                Ok(1)
            }
        }
        Command::Bench {
            rows,
            transactions,
            jobs,
            report,
        } => {
            anyhow::ensure!(
                rows >= 1 && transactions >= 1,
                "--rows and --transactions must be at least 1"
            );
            let options = crate::bench::BenchOptions {
                rows,
                transactions,
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
                    .max(1),
            };
            let text = crate::bench::run(&options).await?;
            println!("{text}");
            if let Some(path) = report {
                std::fs::write(&path, &text)
                    .with_context(|| format!("while writing {}", path.display()))?;
            }
            Ok(0)
        }
        Command::Demo { duration } => {
            crate::demo::run(Duration::from_secs(duration), stop_rx).await?;
            Ok(0)
        }
    }
}
