//! The schema copy: `pg_dump --schema-only --snapshot` once, restored in two sections with
//! `pg_restore`: pre-data (types, tables, sequences) before the data, post-data (indexes,
//! constraints, triggers) after it, in parallel.
//!
//! pg_dump imports the slot's exported snapshot, so the schema is the one the data and the stream
//! start from. Publications, subscriptions and understudy's own schema are left out. pg_dump reads
//! sequence values at dump time rather than snapshot time; sequences are set separately.
//! See <https://www.postgresql.org/docs/15/app-pgdump.html>.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::pg::conninfo::{ConnInfo, SslMode};

/// The folder holding pg_dump and pg_restore: `$UNDERSTUDY_PG_BINDIR`, `pg_config --bindir`, or
/// the newest `/usr/lib/postgresql/*/bin`.
pub(super) fn tools_dir() -> Result<PathBuf> {
    let dir = crate::cluster::pg_bindir()?;
    for tool in ["pg_dump", "pg_restore"] {
        if !dir.join(tool).exists() {
            bail!(
                "{tool} not found in {}; install the PostgreSQL client programs or set \
                 UNDERSTUDY_PG_BINDIR",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// A libpq connection string for the PostgreSQL tools (no password: that goes in PGPASSWORD).
fn libpq_conninfo(info: &ConnInfo) -> String {
    let mut parts = vec![
        format!("host={}", libpq_quote(&info.host())),
        format!("port={}", info.port()),
        format!("user={}", libpq_quote(info.user())),
        format!("dbname={}", libpq_quote(info.dbname())),
        "application_name=understudy".to_string(),
    ];
    let mode = match info.sslmode() {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    parts.push(format!("sslmode={mode}"));
    if let Some(root) = info.sslrootcert() {
        parts.push(format!(
            "sslrootcert={}",
            libpq_quote(&root.display().to_string())
        ));
    }
    parts.join(" ")
}

fn libpq_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

async fn run_tool(bindir: &Path, tool: &str, info: &ConnInfo, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(bindir.join(tool));
    cmd.args(args)
        .arg("--dbname")
        .arg(libpq_conninfo(info))
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pw) = info.password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).into_owned());
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("while running {tool}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().next())
            .unwrap_or("no output");
        bail!(
            "{tool} failed against {} ({}): {}",
            info.redacted(),
            out.status,
            first.trim()
        );
    }
    Ok(())
}

/// Dump the primary's schema under `snapshot` into a custom-format archive at `archive`.
pub(super) async fn dump(
    bindir: &Path,
    primary: &ConnInfo,
    snapshot: &str,
    archive: &Path,
) -> Result<()> {
    let args = vec![
        "--schema-only".to_string(),
        "--format=custom".to_string(),
        format!("--snapshot={snapshot}"),
        "--no-publications".to_string(),
        "--no-subscriptions".to_string(),
        "--exclude-schema=understudy".to_string(),
        format!("--file={}", archive.display()),
    ];
    run_tool(bindir, "pg_dump", primary, &args)
        .await
        .context("while dumping the primary's schema")
}

/// Restore one section (`pre-data` or `post-data`) of the archive into the standby.
pub(super) async fn restore(
    bindir: &Path,
    standby: &ConnInfo,
    archive: &Path,
    section: &str,
    jobs: usize,
) -> Result<()> {
    let mut args = vec![
        format!("--section={section}"),
        "--exit-on-error".to_string(),
        "--no-publications".to_string(),
        "--no-subscriptions".to_string(),
    ];
    if jobs > 1 {
        args.push(format!("--jobs={jobs}"));
    } else {
        args.push("--single-transaction".to_string());
    }
    args.push(archive.display().to_string());
    run_tool(bindir, "pg_restore", standby, &args)
        .await
        .with_context(|| format!("while restoring the schema ({section}) on the standby"))
}
