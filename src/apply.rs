//! The dispatcher: source transactions become standby transactions, exactly once.
//!
//! Invariants:
//! * A source transaction is never split: its changes and the `understudy.progress` row that
//!   records its end LSN commit in one standby transaction (guarantee 2). Several small source
//!   transactions may share one standby transaction when more are already waiting.
//! * A transaction whose commit LSN is below the recorded `applied_lsn` was applied before (the
//!   primary may resend after a crash, or after we were killed before acknowledging): skipped.
//! * `applied()` only ever names a position whose standby commit has returned.
//! * Memory does not grow with transaction size: at most [`PIPELINE_DEPTH`] statements wait for
//!   their results at a time.
//!
//! [`Applier::connect`] applies over our own [`Session`]: row changes go as Bind/Execute with one
//! Sync per batch, so the standby ends a command and flushes its socket per batch, not per row.
//!
//! The apply session runs with `session_replication_role = replica`, as PostgreSQL's own apply
//! worker does, so the standby's triggers and foreign-key checks do not fire a second time (the
//! primary already ran them). Setting it needs a superuser or, on PostgreSQL 15, a role granted
//! `SET` on that parameter (`GRANT SET ON PARAMETER session_replication_role TO …`).

mod pipeline;
mod row;
mod statement;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::decode::{
    pg_time_to_unix_micros, Begin, Commit, Datum, Delete, Insert, Message, OldTuple, RelId,
    Relation, RelationCache, Truncate, Update, Xid,
};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::pg::session::Session;
use crate::pg::PgError;
use pipeline::{Expect, Failed, Param, Pipeline, Prepared};
use row::{describe_key, identity_values, param, text};
use statement::{SetColumns, Shape};

/// Statements sent ahead before waiting for their results (on a session: the most statements
/// under one Sync).
pub const PIPELINE_DEPTH: usize = 1000;
/// A standby transaction holding several source transactions commits after this many of them…
const MAX_TXNS_PER_BATCH: usize = 200;
/// …or this many row changes…
const MAX_ROWS_PER_BATCH: usize = 20_000;
/// …or this long after it began.
const MAX_BATCH_AGE: Duration = Duration::from_millis(200);

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The standby refused a statement or the connection failed.
    #[error("{context}: {cause}")]
    Standby { context: String, cause: PgError },
    /// The standby no longer matches the primary: a row to change is not there.
    #[error(
        "{op} on {table} matched no row for {key} on the standby: the standby has diverged from the \
         primary (was it written to directly?); run `understudy check` to see the differences and \
         `understudy bootstrap --force` to copy it again"
    )]
    Diverged {
        op: &'static str,
        table: String,
        key: String,
    },
    /// The stream is not what the applier can handle.
    #[error("{0}")]
    Stream(String),
}

impl ApplyError {
    /// Whether retrying from the last applied LSN may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Standby { cause, .. } => cause.is_transient(),
            ApplyError::Diverged { .. } | ApplyError::Stream(_) => false,
        }
    }

    fn standby(context: impl Into<String>, err: impl Into<PgError>) -> Self {
        ApplyError::Standby {
            context: context.into(),
            cause: err.into(),
        }
    }
}

/// What the dispatcher has done, for status and logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyStats {
    pub transactions: u64,
    pub skipped_transactions: u64,
    pub rows: u64,
    pub standby_commits: u64,
}

/// The dispatcher's apply session on the standby.
pub struct Applier {
    /// The connection to the standby, and the statements in flight on it.
    pipeline: Pipeline,
    relations: RelationCache,
    statements: HashMap<(RelId, Shape), Prepared>,
    begin: Prepared,
    commit: Prepared,
    progress: Prepared,
    idle_position: Prepared,
    applied: Lsn,
    /// The source transaction in progress: its Begin, and whether it is skipped.
    current: Option<(Begin, bool)>,
    /// A standby transaction is open.
    open: bool,
    batch_started: Instant,
    batch_txns: usize,
    batch_rows: usize,
    batch_end: Lsn,
    /// The last source transaction of the open standby transaction.
    batch_last: Option<(Commit, Xid)>,
    last_idle_write: Instant,
    stats: ApplyStats,
}

impl Applier {
    /// Open the apply session on the standby `info` (our batching session), resuming after
    /// `applied`. Take the apply lock on another connection: this one is the applier's alone.
    pub async fn connect(info: &ConnInfo, applied: Lsn) -> Result<Applier, ApplyError> {
        let session = Session::connect(info, "understudy apply")
            .await
            .map_err(|e| ApplyError::standby("while connecting to the standby", e))?;
        Applier::start(Pipeline::session(session, PIPELINE_DEPTH), applied).await
    }

    async fn start(mut pipeline: Pipeline, applied: Lsn) -> Result<Applier, ApplyError> {
        // synchronous_commit = local: a standby database that still lists a synchronous standby
        // (an old primary turned standby) must never make applying wait for a standby of its own.
        pipeline
            .simple(
                "SET session_replication_role = replica; SET synchronous_commit = local; \
                 SET datestyle = ISO; \
                 SET intervalstyle = postgres; SET timezone = UTC; SET extra_float_digits = 3; \
                 SET plan_cache_mode = force_generic_plan",
            )
            .await
            .map_err(|e| {
                ApplyError::standby(
                    "while setting up the apply session (session_replication_role = replica needs \
                     a superuser, or GRANT SET ON PARAMETER session_replication_role to the \
                     standby user)",
                    e,
                )
            })?;
        let mut prepare = async |sql: &'static str| {
            pipeline
                .prepare(sql)
                .await
                .map_err(|e| ApplyError::standby(format!("while preparing {sql}"), e))
        };
        let begin = prepare("BEGIN").await?;
        let commit = prepare("COMMIT").await?;
        let progress = prepare(
            "UPDATE understudy.progress SET applied_lsn = $1::text::pg_lsn, \
             last_commit_lsn = $2::text::pg_lsn, \
             last_commit_time = timestamptz 'epoch' + $3::text::bigint * interval '1 microsecond', \
             last_xid = $4::text::bigint, updated_at = now() WHERE id = 1",
        )
        .await?;
        let idle_position = prepare(
            "UPDATE understudy.progress SET applied_lsn = $1::text::pg_lsn, updated_at = now() \
             WHERE id = 1 AND applied_lsn < $1::text::pg_lsn",
        )
        .await?;
        Ok(Applier {
            pipeline,
            relations: RelationCache::default(),
            statements: HashMap::new(),
            begin,
            commit,
            progress,
            idle_position,
            applied,
            current: None,
            open: false,
            batch_started: Instant::now(),
            batch_txns: 0,
            batch_rows: 0,
            batch_end: applied,
            batch_last: None,
            last_idle_write: Instant::now() - Duration::from_secs(60),
            stats: ApplyStats::default(),
        })
    }

    /// Every primary transaction that committed before this LSN is durably applied.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// Whether a source transaction is in progress (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Handle one decoded message. `more_waiting` says whether further messages are already
    /// queued, in which case a commit may be held open to share the standby transaction. Returns
    /// the new applied LSN when a standby commit made progress durable.
    pub async fn handle(
        &mut self,
        msg: Message,
        more_waiting: bool,
    ) -> Result<Option<Lsn>, ApplyError> {
        match msg {
            Message::Begin(b) => {
                if self.current.is_some() {
                    return Err(ApplyError::Stream(
                        "the stream began a transaction inside another one; this is a bug in \
                         understudy or a corrupt stream"
                            .into(),
                    ));
                }
                let skip = b.final_lsn < self.applied;
                if skip {
                    tracing::debug!(xid = %b.xid, commit_lsn = %b.final_lsn, "skipping transaction applied before");
                } else if !self.open {
                    self.push(self.begin.clone(), Vec::new(), None).await?;
                    self.open = true;
                    self.batch_started = Instant::now();
                }
                self.current = Some((b, skip));
                Ok(None)
            }
            Message::Commit(c) => self.commit(c, more_waiting).await,
            Message::Relation(r) => {
                let id = r.id;
                let same = self.relations.get(id).is_some_and(|old| *old == r);
                if !same {
                    for (_, stale) in self.statements.extract_if(|(rel, _), _| *rel == id) {
                        self.pipeline.forget(stale);
                    }
                }
                self.relations.insert(r);
                Ok(None)
            }
            Message::Insert(i) => self.change_insert(i).await.map(|_| None),
            Message::Update(u) => self.change_update(u).await.map(|_| None),
            Message::Delete(d) => self.change_delete(d).await.map(|_| None),
            Message::Truncate(t) => self.truncate(t).await.map(|_| None),
            Message::Type(_) | Message::Origin(_) | Message::LogicalMessage(_) => Ok(None),
        }
    }

    /// Record an idle position from a keepalive: nothing is in flight, and every transaction
    /// before `lsn` has been received. Persisted (at most every 200 ms) so that the flush
    /// position we report never passes what the standby records.
    pub async fn idle(&mut self, lsn: Lsn, urgent: bool) -> Result<Option<Lsn>, ApplyError> {
        if self.current.is_some() {
            return Ok(None);
        }
        // Source transactions held open for company get none: commit them now.
        let committed = self.commit_batch().await?;
        if lsn <= self.applied
            || (!urgent && self.last_idle_write.elapsed() < Duration::from_millis(200))
        {
            return Ok(committed);
        }
        let params = vec![text(lsn.to_string())];
        let recorded = match self.pipeline.send(&self.idle_position, params, None).await {
            Ok(()) => self.pipeline.drain().await,
            Err(failed) => Err(failed),
        };
        if let Err(failed) = recorded {
            return Err(match failed {
                Failed::Db(e) => ApplyError::standby("while recording the idle position", e),
                Failed::NoRow(expect, params) => self.diverged(expect, &params),
            });
        }
        self.last_idle_write = Instant::now();
        self.applied = lsn;
        Ok(Some(lsn))
    }

    /// Commit whatever complete source transactions the open standby transaction holds.
    pub async fn finish(&mut self) -> Result<Option<Lsn>, ApplyError> {
        if self.current.is_some() {
            self.rollback().await;
            return Ok(None);
        }
        self.commit_batch().await
    }

    async fn commit(&mut self, c: Commit, more_waiting: bool) -> Result<Option<Lsn>, ApplyError> {
        let Some((begin, skip)) = self.current.take() else {
            return Err(ApplyError::Stream(
                "the stream committed a transaction that never began; this is a bug in understudy \
                 or a corrupt stream"
                    .into(),
            ));
        };
        if skip {
            self.stats.skipped_transactions += 1;
            return Ok(None);
        }
        self.batch_end = c.end_lsn;
        self.batch_last = Some((c, begin.xid));
        self.batch_txns += 1;
        self.stats.transactions += 1;
        let hold = more_waiting
            && self.batch_txns < MAX_TXNS_PER_BATCH
            && self.batch_rows < MAX_ROWS_PER_BATCH
            && self.batch_started.elapsed() < MAX_BATCH_AGE;
        if hold {
            return Ok(None);
        }
        self.commit_batch().await
    }

    async fn commit_batch(&mut self) -> Result<Option<Lsn>, ApplyError> {
        if !self.open {
            return Ok(None);
        }
        // One progress row per standby transaction, naming the last source transaction in it:
        // it commits atomically with every change of the batch.
        if let Some((c, xid)) = self.batch_last.take() {
            let params = vec![
                text(c.end_lsn.to_string()),
                text(c.commit_lsn.to_string()),
                text(pg_time_to_unix_micros(c.commit_time).to_string()),
                text(xid.0.to_string()),
            ];
            self.push(self.progress.clone(), params, None).await?;
        }
        // An UPDATE or DELETE that found no row must stop the COMMIT: see its count first.
        if self.pipeline.unchecked() {
            self.flush().await?;
        }
        self.push(self.commit.clone(), Vec::new(), None).await?;
        self.flush().await?;
        self.open = false;
        self.applied = self.batch_end;
        self.batch_txns = 0;
        self.batch_rows = 0;
        self.stats.standby_commits += 1;
        Ok(Some(self.applied))
    }

    async fn rollback(&mut self) {
        self.pipeline.clear().await;
        self.batch_last = None;
        if self.open {
            let _ = self.pipeline.simple("ROLLBACK").await;
        }
        self.open = false;
        self.current = None;
        self.batch_txns = 0;
        self.batch_rows = 0;
    }

    fn relation(&self, id: RelId) -> Result<&Relation, ApplyError> {
        self.relations.get(id).ok_or_else(|| {
            ApplyError::Stream(format!(
                "a row change names relation {id}, which the stream never described; this is a \
                 bug in understudy or a corrupt stream"
            ))
        })
    }

    /// Skip changes of a transaction applied before; fail on changes outside a transaction.
    fn skipping(&self) -> Result<bool, ApplyError> {
        match &self.current {
            Some((_, skip)) => Ok(*skip),
            None => Err(ApplyError::Stream(
                "a row change arrived outside a transaction; this is a bug in understudy or a \
                 corrupt stream"
                    .into(),
            )),
        }
    }

    /// understudy's own schema is per node (progress, roles, epochs): never copied across.
    fn own_schema(&self, rel: RelId) -> bool {
        self.relations
            .get(rel)
            .is_some_and(|r| r.schema() == crate::state::SCHEMA)
    }

    async fn change_insert(&mut self, i: Insert) -> Result<(), ApplyError> {
        if self.skipping()? || self.own_schema(i.rel) {
            return Ok(());
        }
        let params = i.new.0.iter().map(param).collect::<Result<Vec<_>, _>>()?;
        let stmt = self.statement(i.rel, Shape::Insert).await?;
        self.row(stmt, params, None).await
    }

    async fn change_update(&mut self, u: Update) -> Result<(), ApplyError> {
        if self.skipping()? || self.own_schema(u.rel) {
            return Ok(());
        }
        let rel = self.relation(u.rel)?;
        let full = statement::uses_full_identity(rel);
        let unchanged = u.new.0.iter().any(|d| matches!(d, Datum::UnchangedToast));
        // The key did not change when there is no old key: leave it out of SET.
        let key_kept = u.old.is_none() && !full;
        let writes = |i: usize| {
            let unchanged = matches!(u.new.0.get(i), Some(Datum::UnchangedToast) | None);
            let kept_key = key_kept && rel.columns.get(i).is_some_and(|c| c.is_key);
            !unchanged && !kept_key
        };
        let set = match (unchanged, key_kept) {
            (false, false) => SetColumns::All,
            (false, true) => SetColumns::NonKey,
            (true, _) => SetColumns::Only(
                (0..u.new.0.len())
                    .filter(|&i| writes(i))
                    .map(|i| i as u16)
                    .collect(),
            ),
        };
        let mut params = Vec::with_capacity(u.new.0.len() + 2);
        for (i, d) in u.new.0.iter().enumerate() {
            if writes(i) {
                params.push(param(d)?);
            }
        }
        if params.is_empty() {
            // Only the unchanged key and unchanged TOAST values: the row stays as it is.
            return Ok(());
        }
        let expect = Expect {
            op: "UPDATE",
            rel: u.rel,
            full,
            key_from: params.len(),
        };
        params.extend(identity_values(rel, full, u.old.as_ref(), &u.new)?);
        let stmt = self.statement(u.rel, Shape::Update { set, full }).await?;
        self.row(stmt, params, Some(expect)).await
    }

    async fn change_delete(&mut self, d: Delete) -> Result<(), ApplyError> {
        if self.skipping()? || self.own_schema(d.rel) {
            return Ok(());
        }
        let rel = self.relation(d.rel)?;
        let full = statement::uses_full_identity(rel);
        let old = match &d.old {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        };
        let identity = identity_values(rel, full, Some(&d.old), old)?;
        let expect = Expect {
            op: "DELETE",
            rel: d.rel,
            full,
            key_from: 0,
        };
        let stmt = self.statement(d.rel, Shape::Delete { full }).await?;
        self.row(stmt, identity, Some(expect)).await
    }

    async fn truncate(&mut self, t: Truncate) -> Result<(), ApplyError> {
        if self.skipping()? {
            return Ok(());
        }
        self.flush().await?;
        let mut names = Vec::with_capacity(t.rels.len());
        for id in &t.rels {
            if !self.own_schema(*id) {
                names.push(self.relation(*id)?.qualified_name());
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "TRUNCATE {}{}{}",
            names.join(", "),
            if t.restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            },
            if t.cascade { " CASCADE" } else { "" }
        );
        self.pipeline
            .simple(&sql)
            .await
            .map_err(|e| ApplyError::standby(format!("while applying {sql}"), e))?;
        self.batch_rows += 1;
        Ok(())
    }

    async fn statement(&mut self, rel: RelId, shape: Shape) -> Result<Prepared, ApplyError> {
        if let Some(s) = self.statements.get(&(rel, shape.clone())) {
            return Ok(s.clone());
        }
        let relation = self.relation(rel)?;
        let sql = statement::build(relation, &shape);
        let table = relation.display_name();
        // Settle what is in flight first, so a failure there is reported as itself.
        self.flush().await?;
        let prepared = self
            .pipeline
            .prepare(&sql)
            .await
            .map_err(|e| match e.code() {
                Some("42P01") | Some("42703") | Some("42804") => ApplyError::Stream(format!(
                    "the standby's table {table} does not match the primary's (the schema differs): {e}; apply the same \
                     schema change on the standby, then run follow again"
                )),
                _ => ApplyError::standby(format!("while preparing the statement for {table}"), e),
            })?;
        self.statements.insert((rel, shape), prepared.clone());
        Ok(prepared)
    }

    async fn row(
        &mut self,
        statement: Prepared,
        params: Vec<Param>,
        expect_one: Option<Expect>,
    ) -> Result<(), ApplyError> {
        self.batch_rows += 1;
        self.stats.rows += 1;
        self.push(statement, params, expect_one).await
    }

    async fn push(
        &mut self,
        statement: Prepared,
        params: Vec<Param>,
        expect_one: Option<Expect>,
    ) -> Result<(), ApplyError> {
        match self.pipeline.send(&statement, params, expect_one).await {
            Ok(()) => Ok(()),
            Err(failed) => Err(self.failed(failed).await),
        }
    }

    /// Wait for every statement in flight. On any failure the standby transaction is rolled back.
    async fn flush(&mut self) -> Result<(), ApplyError> {
        match self.pipeline.drain().await {
            Ok(()) => Ok(()),
            Err(failed) => Err(self.failed(failed).await),
        }
    }

    async fn failed(&mut self, failed: Failed) -> ApplyError {
        let error = match failed {
            Failed::Db(e) => ApplyError::standby("while applying a change", e),
            Failed::NoRow(expect, params) => self.diverged(expect, &params),
        };
        self.rollback().await;
        error
    }

    fn diverged(&self, expect: Expect, params: &[Param]) -> ApplyError {
        let (table, key) = match self.relations.get(expect.rel) {
            Some(rel) => (
                rel.display_name(),
                describe_key(
                    rel,
                    expect.full,
                    params.get(expect.key_from..).unwrap_or(&[]),
                ),
            ),
            None => (expect.rel.to_string(), String::new()),
        };
        ApplyError::Diverged {
            op: expect.op,
            table,
            key,
        }
    }
}
