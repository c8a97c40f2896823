//! The `exec` sink: runs `sh -c COMMAND` when matching messages have arrived, at most once per
//! interval however many arrive, with them as JSON lines on its standard input.
//!
//! * Debounce: the first matching messages run the command at once; messages arriving during the
//!   next `interval` (counted from the start of that run) wait and go to the next run together.
//!   At most `batch` messages wait; past that the sink stops reading until the next run.
//! * A run succeeds when the command exits 0; then the cursor moves past its messages. A failure
//!   (non-zero exit, a signal, or the `timeout` passing, after which the command's whole process
//!   group is killed) is logged with the end of its stderr and run again, with the waiting
//!   messages and any new ones, after a backoff of at least `interval`. Shutdown kills a running
//!   command; its messages are delivered again after the restart.
//! * The environment carries `UNDERSTUDY_MESSAGES` (how many lines), `UNDERSTUDY_FIRST_ID` and
//!   `UNDERSTUDY_LAST_ID`. Standard output is logged at debug level.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{backoff, stopped, Progress, SinkOptions};
use crate::messages::{to_json, Cursor, Tail};

/// How much of the command's stdout and stderr is kept for the logs.
const OUTPUT_TAIL: usize = 2048;

pub(super) struct Exec<'a> {
    pub name: &'a str,
    pub command: &'a str,
    pub interval: Duration,
    pub options: &'a SinkOptions,
}

/// Messages waiting for the next run.
#[derive(Default)]
struct Pending {
    lines: Vec<String>,
    first_id: String,
    last_id: String,
    through: Option<Cursor>,
}

impl Exec<'_> {
    pub(super) async fn run(
        &self,
        mut tail: Tail,
        progress: &mut Progress,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut pending = Pending::default();
        let mut next_run = Instant::now();
        let mut failures = 0u32;
        let mut ended = false;
        let filter = &self.options.filter;
        loop {
            if ended && pending.lines.is_empty() {
                return Ok(());
            }
            let due = !pending.lines.is_empty();
            let room = self.options.batch.saturating_sub(pending.lines.len());
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return Ok(()),
                _ = tokio::time::sleep_until(next_run), if due => {
                    let started = Instant::now();
                    let outcome = tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => return Ok(()),
                        r = run_command(self.command, &pending, self.options.timeout) => r,
                    };
                    match outcome {
                        Ok(output) => {
                            tracing::debug!(sink = self.name, messages = pending.lines.len(),
                                "command ran in {:.3} s; output: {output}",
                                started.elapsed().as_secs_f64());
                            if failures > 0 {
                                tracing::info!(sink = self.name,
                                    "command succeeded after {} attempts", failures + 1);
                            }
                            failures = 0;
                            let through = pending.through.take();
                            pending = Pending::default();
                            if let Some(through) = through {
                                progress.advance(through, true).await?;
                            }
                            next_run = started + self.interval;
                        }
                        Err(reason) => {
                            failures += 1;
                            let wait = backoff(failures).max(self.interval);
                            tracing::warn!(sink = self.name, messages = pending.lines.len(),
                                first = %pending.first_id,
                                "command failed (attempt {failures}): {reason}; running it \
                                 again in {:.1} s", wait.as_secs_f64());
                            next_run = Instant::now() + wait;
                        }
                    }
                }
                batch = tail.next(room), if !ended && room > 0 => {
                    let Some(batch) = batch? else {
                        ended = true;
                        continue;
                    };
                    let before = pending.lines.len();
                    for m in batch.messages.iter().filter(|m| filter.matches(m)) {
                        if pending.lines.is_empty() {
                            pending.first_id = m.id();
                        }
                        pending.last_id = m.id();
                        pending.lines.push(to_json(m));
                    }
                    if pending.lines.is_empty() {
                        progress.advance(batch.through, false).await?;
                    } else {
                        pending.through = Some(batch.through);
                        if before == 0 && next_run < Instant::now() {
                            next_run = Instant::now();
                        }
                    }
                }
            }
        }
    }
}

/// Runs the command once with `pending` on stdin; `Ok` with the end of its stdout when it exits
/// 0, else why not.
async fn run_command(
    command: &str,
    pending: &Pending,
    timeout: Duration,
) -> Result<String, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("UNDERSTUDY_MESSAGES", pending.lines.len().to_string())
        .env("UNDERSTUDY_FIRST_ID", &pending.first_id)
        .env("UNDERSTUDY_LAST_ID", &pending.last_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start sh -c '{command}': {e}"))?;
    // Killed with the command's whole process group on timeout, and when shutdown drops this
    // future while the command runs.
    let mut group = GroupKill(child.id().and_then(|p| i32::try_from(p).ok()));
    let mut input = String::with_capacity(pending.lines.iter().map(|l| l.len() + 1).sum());
    for line in &pending.lines {
        input.push_str(line);
        input.push('\n');
    }
    let stdin = child.stdin.take();
    // A command that does not read its input must not block us: write on the side, ignore EPIPE.
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    });
    let stdout = tokio::spawn(read_tail(child.stdout.take()));
    let stderr = tokio::spawn(read_tail(child.stderr.take()));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => {
            group.0 = None;
            Ok(status)
        }
        Ok(Err(e)) => Err(format!("could not wait for the command: {e}")),
        Err(_) => {
            drop(std::mem::replace(&mut group, GroupKill(None)));
            let _ = child.wait().await;
            Err(format!(
                "it did not finish within {timeout:?} and was killed"
            ))
        }
    };
    writer.abort();
    // Output pipes close when the process group is gone; a daemonised grandchild may hold them.
    let grace = Duration::from_secs(1);
    let out = tokio::time::timeout(grace, stdout)
        .await
        .ok()
        .and_then(Result::ok);
    let err = tokio::time::timeout(grace, stderr)
        .await
        .ok()
        .and_then(Result::ok);
    let err = err.unwrap_or_default();
    let status = status?;
    if status.success() {
        return Ok(out.unwrap_or_default());
    }
    let how = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    };
    Err(if err.is_empty() {
        how
    } else {
        format!("{how}; stderr: {err}")
    })
}

/// Kills a process group (with SIGKILL) when dropped, unless disarmed (`None`).
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) on the process group the command leads; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a pipe, as trimmed text.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    let start = kept.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&kept[start..]).trim().to_string()
}
