//! The command line: parses arguments, wires the library together, reports results.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::bootstrap::{self, BootstrapOptions};
use crate::follow::{self, Ack, FollowOptions, JournalFollow, StopAt};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;

mod messages;
mod sidecar;

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

/// Where and how `follow` journals the stream.
#[derive(Args, Debug, Clone)]
pub struct JournalArgs {
    /// Journal directory: the stream is made durable here before it is applied, so the primary's
    /// slot keeps advancing while the standby database is down, and the apply catches up from
    /// here when it returns.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// What the flush position acknowledged to the primary stands for: `journal` (fsynced in the
    /// journal; the default with --journal) or `applied` (committed on the standby; the only
    /// choice without a journal).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub ack: Option<AckArg>,
    /// Journal size limit, in bytes (K, M, G suffixes are powers of 1024): when it holds this
    /// much and the standby has not applied it, follow stops reading the stream (the primary then
    /// retains WAL) until retention frees space. Default 1G.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "journal")]
    pub journal_max_bytes: Option<u64>,
}

/// `--ack`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckArg {
    Journal,
    Applied,
}

impl JournalArgs {
    fn options(&self) -> Result<Option<JournalFollow>> {
        let Some(dir) = &self.journal else {
            anyhow::ensure!(
                self.ack != Some(AckArg::Journal),
                "--ack journal needs a journal: add --journal DIR, or use --ack applied"
            );
            return Ok(None);
        };
        let mut journal = JournalFollow::new(dir);
        journal.ack = match self.ack {
            None | Some(AckArg::Journal) => Ack::Journal,
            Some(AckArg::Applied) => Ack::Applied,
        };
        if let Some(max) = self.journal_max_bytes {
            anyhow::ensure!(
                max >= 64 * 1024,
                "--journal-max-bytes {max} is too small: give at least 64K"
            );
            journal.max_bytes = max;
        }
        Ok(Some(journal))
    }
}

/// `1073741824`, `512M`, `1GiB`: bytes, with K/M/G (or KiB/MiB/GiB, KB/MB/GB) as powers of 1024.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("'{text}' is not a size: give bytes, such as 1073741824, 512M or 1G");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
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
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        outputs: messages::OutputArgs,
    },
    /// Re-emit the journal's messages from an LSN: to stdout, to a restored standby, or to sinks.
    Replay {
        #[command(flatten)]
        args: messages::ReplayArgs,
    },
    /// Promote the standby: sequences above the old primary's, the reverse slot, a higher epoch,
    /// the NMS roles' write privileges back, the promote hook. Stop its follower first.
    Promote {
        #[command(flatten)]
        args: messages::PromoteArgs,
    },
    /// Run the sidecar beside this node's NMS: take the role the databases say (bootstrap a new
    /// standby, follow, fail over, fence, rejoin), serve /v1/status, /metrics and the controls.
    Run {
        #[command(flatten)]
        config: sidecar::ConfigArgs,
    },
    /// Planned switchover through the running sidecars: fence the primary's writers, let the
    /// standby apply the final LSN, promote it; the old primary follows it (no copy).
    Switchover {
        #[command(flatten)]
        config: sidecar::ConfigArgs,
    },
    /// Make this node, an old primary, the standby of the new primary: fence it, save what it
    /// committed after the promotion point (divergence file), follow or copy again. Exit 2 when
    /// something diverged.
    Rejoin {
        #[command(flatten)]
        config: sidecar::ConfigArgs,
        /// Copy again from the new primary even when what diverged cannot be determined.
        #[arg(long)]
        discard_unknown: bool,
    },
    /// Show the slot, the applied position and the lag.
    Status {
        #[command(flatten)]
        pair: Pair,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also show this follow journal's size, oldest and durable positions.
        #[arg(long, value_name = "DIR")]
        journal: Option<PathBuf>,
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
        /// Planned switchovers between two sidecars under an NMS write load (0 skips them).
        #[arg(long, default_value_t = 10)]
        switchovers: usize,
        /// Automatic failovers (primary stopped immediately) under the same load (0 skips them).
        #[arg(long, default_value_t = 10)]
        failovers: usize,
        /// Only the switchover and failover measurements.
        #[arg(long)]
        roles_only: bool,
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
    // Ctrl-C (SIGINT) or a service manager's SIGTERM: stop cleanly; a second one quits at once.
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("interrupted: stopping cleanly (interrupt again to quit at once)");
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
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
            journal,
            outputs,
        } => {
            let (p, s) = pair.parse()?;
            let mut options = FollowOptions::new(p, s);
            options.journal = journal.options()?;
            options.stop_at = match (stop_at_lsn, until_caught_up) {
                (Some(l), _) => StopAt::Lsn(l),
                (None, true) => StopAt::CaughtUp,
                (None, false) => StopAt::Never,
            };
            options.application_name = application_name;
            options.sequence_interval = Duration::from_secs(sequence_interval.max(1));
            let summary =
                follow::outputs::follow_with_outputs(options, outputs.outputs(), stop_rx).await?;
            println!(
                "follow stopped: {} transactions, {} rows applied; standby applied up to {}",
                summary.transactions, summary.rows, summary.applied
            );
            Ok(0)
        }
        Command::Status {
            pair,
            json,
            journal,
        } => {
            let (p, s) = pair.parse()?;
            let journal = journal
                .map(|dir| crate::status::read_journal(&dir))
                .transpose()?;
            let mut status = match crate::status::read(&p, &s).await {
                Ok(status) => status,
                Err(e) => {
                    // The journal matters most when a database is down: show it anyway.
                    if let Some(j) = journal {
                        if json {
                            println!("{}", serde_json::json!({ "journal": j }));
                        } else {
                            println!("{j}");
                        }
                    }
                    return Err(e);
                }
            };
            status.journal = journal;
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
            switchovers,
            failovers,
            roles_only,
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
                switchovers,
                failovers,
                roles_only,
            };
            let text = crate::bench::run(&options).await?;
            println!("{text}");
            if let Some(path) = report {
                std::fs::write(&path, &text)
                    .with_context(|| format!("while writing {}", path.display()))?;
            }
            Ok(0)
        }
        Command::Replay { args } => messages::replay(args, stop_rx).await,
        Command::Promote { args } => match args.config.clone() {
            Some(config) => {
                let config = sidecar::ConfigArgs {
                    config,
                    node: args.node.clone(),
                };
                sidecar::promote(config, args.force).await
            }
            None => messages::promote(args).await,
        },
        Command::Run { config } => sidecar::run(config, stop_rx).await,
        Command::Switchover { config } => sidecar::switchover(config, stop_rx).await,
        Command::Rejoin {
            config,
            discard_unknown,
        } => sidecar::rejoin(config, discard_unknown, stop_rx).await,
        Command::Demo { duration } => {
            crate::demo::run(Duration::from_secs(duration), stop_rx).await?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        for bad in ["", "M", "1.5G", "12X", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn ack_journal_needs_a_journal() {
        let args = |journal: Option<&str>, ack| JournalArgs {
            journal: journal.map(PathBuf::from),
            ack,
            journal_max_bytes: None,
        };
        assert!(args(None, Some(AckArg::Journal)).options().is_err());
        assert!(args(None, Some(AckArg::Applied))
            .options()
            .unwrap()
            .is_none());
        assert!(args(None, None).options().unwrap().is_none());
        let j = args(Some("/j"), None).options().unwrap().unwrap();
        assert_eq!(j.ack, Ack::Journal);
        assert_eq!(j.max_bytes, follow::DEFAULT_JOURNAL_MAX_BYTES);
        let j = args(Some("/j"), Some(AckArg::Applied))
            .options()
            .unwrap()
            .unwrap();
        assert_eq!(j.ack, Ack::Applied);
    }
}
