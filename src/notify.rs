//! Sinks: the "reload into memory" of an unmodified NMS. Each sink reads the mutation messages
//! of applied transactions from the journal and hands them on: `webhook` (POST JSON batches),
//! `exec` (run a command, debounced) and `notify` (PostgreSQL `NOTIFY` on the standby). The SSE
//! stream is [`crate::http`].
//!
//! Invariants:
//! * A sink delivers only transactions the standby has applied ([`crate::messages::Tail`]), in
//!   commit order and seq order, at least once: its cursor (`<journal dir>/cursors/<name>`,
//!   replaced atomically, see [`CursorFile`]) moves only after a delivery succeeded, so a sink
//!   killed at any moment resumes after the last message it knows was delivered, and a receiver
//!   that drops ids it has seen (`commit_lsn:seq`, the `id` of every message and the webhook's
//!   `Idempotency-Key`) sees each message exactly once.
//! * A delivery that fails is retried with exponential backoff (250 ms doubling to 30 s), never
//!   skipped; the failures are logged. A sink never holds up the apply: it reads the journal on
//!   its own, and only journal retention waits for it ([`KeepFrom`]).
//! * Messages a sink's filter drops still move its cursor (stored at least every second), so a
//!   filtered sink does not pin the journal.
//! * A sink without a cursor starts where its `from` option says (by default at the standby's
//!   applied position) and stores that cursor before anything else, so retention counts it.
//!
//! Memory is bounded by each sink's batch size: a sink reads a batch, delivers it, then reads
//! the next.

mod cursor;
mod exec;
mod filter;
mod pgnotify;
mod spec;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::messages::{Cursor, MessagesError, Tail, TailMode};
use crate::pg::conninfo::ConnInfo;
use crate::translate::{Mutation, Rules};

pub use cursor::{CursorError, CursorFile, KeepFrom};
pub use filter::{glob_match, Filter};
pub use pgnotify::{notify_payload, MAX_NOTIFY_PAYLOAD};
pub use spec::{parse_duration, SinkConfig, SinkOptions, SinkSpecError, StartFrom};
pub use webhook::HttpUrl;

/// A filtered sink stores its cursor at least this often while messages pass it by.
const STORE_EVERY: Duration = Duration::from_secs(1);

/// What the sinks read from and deliver to.
#[derive(Clone)]
pub struct SinkContext {
    pub journal: JournalHandle,
    /// The journal's directory; cursors live in its `cursors/` subdirectory.
    pub journal_dir: PathBuf,
    /// The standby's applied position (end LSN of the last applied transaction).
    pub applied: watch::Receiver<Lsn>,
    pub rules: Arc<Rules>,
    /// The standby database, for `notify` sinks.
    pub standby: Option<ConnInfo>,
}

/// The running sinks.
pub struct Sinks {
    keep_from: KeepFrom,
    tasks: JoinSet<(String, Result<()>)>,
}

impl Sinks {
    /// Loads (or creates) every sink's cursor and starts the sinks; they run until `shutdown`
    /// turns true (or its sender is dropped). Fails at once on a configuration that cannot
    /// work: two sinks with one name, a `notify` sink without a standby, a cursor file that is
    /// damaged or older than the journal keeps.
    pub async fn start(
        configs: &[SinkConfig],
        ctx: SinkContext,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Sinks> {
        check_names(configs)?;
        if ctx.standby.is_none() {
            if let Some(c) = configs
                .iter()
                .find(|c| matches!(c, SinkConfig::Notify { .. }))
            {
                bail!("{c} needs the standby database: give --standby");
            }
        }
        let keep_from = KeepFrom::default();
        let mut tasks = JoinSet::new();
        for config in configs {
            let options = config.options();
            let file = CursorFile::new(&ctx.journal_dir, &options.name);
            let oldest = ctx.journal.oldest_lsn();
            let cursor = match load(&file).await? {
                Some(c) => c,
                None => {
                    let applied = *ctx.applied.borrow();
                    let start = match options.from {
                        StartFrom::Now => applied.max(oldest),
                        StartFrom::Oldest => oldest,
                        StartFrom::Lsn(l) if l < oldest => bail!(
                            "{config}: from={l} is older than the journal keeps (the oldest \
                             transaction available commits at {oldest}); start it from={oldest} \
                             or later"
                        ),
                        StartFrom::Lsn(l) => l,
                    };
                    let c = Cursor::start(start);
                    store(&file, c).await?;
                    tracing::info!(sink = %config, cursor = %c, "new sink: starting at {start}");
                    c
                }
            };
            keep_from.set(&options.name, cursor);
            let tail = Tail::open(
                &ctx.journal,
                cursor,
                Arc::clone(&ctx.rules),
                TailMode::Live {
                    applied: ctx.applied.clone(),
                },
            )
            .await
            .map_err(|e| too_old_cursor(e, config, &file, cursor))?;
            tracing::info!(sink = %config, cursor = %cursor, "sink starts after {cursor}");
            let progress = Progress::new(&options.name, cursor, Some((file, keep_from.clone())));
            let run = run_sink(
                config.clone(),
                tail,
                progress,
                ctx.standby.clone(),
                shutdown.clone(),
            );
            let name = config.to_string();
            tasks.spawn(async move { (name, run.await) });
        }
        Ok(Sinks { keep_from, tasks })
    }

    /// The sinks' stored cursors, for journal retention.
    pub fn keep_from(&self) -> KeepFrom {
        self.keep_from.clone()
    }

    /// Waits for every sink to stop; the first failure stops the others and is returned.
    pub async fn join(mut self) -> Result<()> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => return Err(e.context(format!("{name} stopped"))),
                Err(e) => bail!("a sink task failed: {e}"),
            }
        }
        Ok(())
    }
}

/// Runs `configs` until `shutdown`; see [`Sinks::start`].
pub async fn run_sinks(
    configs: &[SinkConfig],
    ctx: SinkContext,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    Sinks::start(configs, ctx, shutdown).await?.join().await
}

/// `replay --to sinks`: delivers the messages of the transactions committing from `from` up to
/// `to` (inclusive, or the journal's durable end) to every sink again, whether the standby has
/// applied them or not, without reading or moving the sinks' cursors. Ids are the same as the
/// first time, so receivers that drop seen ids drop the repeats.
pub async fn replay_to_sinks(
    configs: &[SinkConfig],
    journal: &JournalHandle,
    rules: Arc<Rules>,
    standby: Option<ConnInfo>,
    from: Lsn,
    to: Option<Lsn>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    check_names(configs)?;
    if configs
        .iter()
        .any(|c| matches!(c, SinkConfig::Notify { .. }))
        && standby.is_none()
    {
        bail!("a notify sink needs the standby database: give --standby");
    }
    let mut tasks = JoinSet::new();
    for config in configs {
        let start = Cursor::start(from);
        let tail = Tail::open(journal, start, Arc::clone(&rules), TailMode::Replay { to })
            .await
            .map_err(anyhow::Error::from)?;
        let progress = Progress::new(&config.options().name, start, None);
        let run = run_sink(
            config.clone(),
            tail,
            progress,
            standby.clone(),
            shutdown.clone(),
        );
        let name = config.to_string();
        tasks.spawn(async move { (name, run.await) });
    }
    Sinks {
        keep_from: KeepFrom::default(),
        tasks,
    }
    .join()
    .await
}

fn check_names(configs: &[SinkConfig]) -> Result<()> {
    for (i, c) in configs.iter().enumerate() {
        let name = &c.options().name;
        if configs[..i].iter().any(|o| o.options().name == *name) {
            bail!(
                "two sinks are named '{name}' (a name is the sink's cursor file): give one of \
                 them name=OTHER in its options"
            );
        }
    }
    Ok(())
}

fn too_old_cursor(
    e: MessagesError,
    config: &SinkConfig,
    file: &CursorFile,
    cursor: Cursor,
) -> anyhow::Error {
    match e.too_old() {
        Some((_, oldest)) => anyhow!(
            "{config}: its cursor {cursor} is older than the journal keeps (the oldest \
             transaction available commits at {oldest}), so the messages in between are gone; \
             delete {} to start the sink again from its `from` option (or bootstrap again)",
            file.path().display()
        ),
        None => anyhow::Error::new(e).context(format!("while opening the journal for {config}")),
    }
}

async fn load(file: &CursorFile) -> Result<Option<Cursor>> {
    let f = file.clone();
    Ok(tokio::task::spawn_blocking(move || f.load()).await??)
}

async fn store(file: &CursorFile, cursor: Cursor) -> Result<()> {
    let f = file.clone();
    Ok(tokio::task::spawn_blocking(move || f.store(cursor)).await??)
}

/// Where a sink stands, and storing it.
struct Progress {
    name: String,
    /// Delivered through here.
    at: Cursor,
    stored: Cursor,
    stored_at: Instant,
    /// `None` during replay: nothing is stored.
    file: Option<(CursorFile, KeepFrom)>,
}

impl Progress {
    fn new(name: &str, at: Cursor, file: Option<(CursorFile, KeepFrom)>) -> Progress {
        Progress {
            name: name.to_string(),
            at,
            stored: at,
            stored_at: Instant::now(),
            file,
        }
    }

    /// Everything through `to` has been handled; `delivered` says whether that included a
    /// delivery (then the cursor is stored at once, else at most every [`STORE_EVERY`]).
    async fn advance(&mut self, to: Cursor, delivered: bool) -> Result<()> {
        self.at = self.at.max(to);
        if delivered || self.stored_at.elapsed() >= STORE_EVERY {
            self.store().await?;
        }
        Ok(())
    }

    async fn store(&mut self) -> Result<()> {
        let Some((file, keep)) = &self.file else {
            return Ok(());
        };
        if self.at == self.stored {
            return Ok(());
        }
        store(file, self.at)
            .await
            .with_context(|| format!("while storing the cursor of sink {}", self.name))?;
        keep.set(&self.name, self.at);
        self.stored = self.at;
        self.stored_at = Instant::now();
        Ok(())
    }
}

async fn run_sink(
    config: SinkConfig,
    tail: Tail,
    mut progress: Progress,
    standby: Option<ConnInfo>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let name = config.to_string();
    let result = match &config {
        SinkConfig::Webhook { url, options } => {
            let target = webhook::Target::new(url.clone(), options.timeout);
            run_batched(target, &name, options, tail, &mut progress, shutdown).await
        }
        SinkConfig::Notify { channel, options } => {
            let Some(info) = standby else {
                bail!("{name} needs the standby database: give --standby");
            };
            let target = pgnotify::Target::new(info, channel.clone());
            run_batched(target, &name, options, tail, &mut progress, shutdown).await
        }
        SinkConfig::Exec {
            command,
            interval,
            options,
        } => {
            let exec = exec::Exec {
                name: &name,
                command,
                interval: *interval,
                options,
            };
            exec.run(tail, &mut progress, shutdown).await
        }
    };
    // Whatever stopped the sink, keep what it did deliver.
    let stored = progress.store().await;
    result.and(stored)
}

/// Something a batch of messages is delivered to.
trait Deliver {
    async fn deliver(&mut self, messages: &[Mutation]) -> Result<()>;
}

/// Reads batches, delivers each (retrying until it succeeds), moves the cursor; until shutdown or
/// the end of a replay.
async fn run_batched<T: Deliver>(
    mut target: T,
    name: &str,
    options: &SinkOptions,
    mut tail: Tail,
    progress: &mut Progress,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let max = options.batch;
    loop {
        let first = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return Ok(()),
            batch = tail.next(max) => batch?,
        };
        let Some(first) = first else {
            return Ok(());
        };
        let mut read = first.messages.len().max(1);
        let mut through = first.through;
        let mut messages: Vec<Mutation> = Vec::new();
        keep_matching(&mut messages, first.messages, &options.filter);
        // Whatever is ready too goes in the same delivery.
        while read < max {
            let Some(batch) = tail.ready(max - read).await? else {
                break;
            };
            read += batch.messages.len().max(1);
            through = batch.through;
            keep_matching(&mut messages, batch.messages, &options.filter);
        }
        if !messages.is_empty()
            && !deliver_until_done(&mut target, name, &messages, &mut shutdown).await
        {
            return Ok(());
        }
        progress.advance(through, !messages.is_empty()).await?;
    }
}

fn keep_matching(out: &mut Vec<Mutation>, messages: Vec<Mutation>, filter: &Filter) {
    if filter.is_all() {
        out.extend(messages);
    } else {
        out.extend(messages.into_iter().filter(|m| filter.matches(m)));
    }
}

/// Delivers `messages`, retrying with backoff; false when shutdown came first.
async fn deliver_until_done<T: Deliver>(
    target: &mut T,
    name: &str,
    messages: &[Mutation],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            _ = stopped(shutdown) => return false,
            r = target.deliver(messages) => r,
        };
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(sink = name, "delivered after {} attempts", failures + 1);
                }
                return true;
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures);
                tracing::warn!(
                    sink = name,
                    first = %messages.first().map(Mutation::id).unwrap_or_default(),
                    "delivery failed (attempt {failures}): {e:#}; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::select! {
                    biased;
                    _ = stopped(shutdown) => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// 250 ms, doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << failures.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(30_000))
}

/// Resolves once `shutdown` is true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let waits: Vec<u64> = (1..=10).map(|f| backoff(f).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
