//! The apply session's statements in flight.
//!
//! Each statement is queued on our own [`Session`] as Bind/Execute with no Sync, and the batch is
//! synced only when the dispatcher needs its results (before a prepare, a TRUNCATE or the
//! standby's COMMIT returns) or when `depth` statements are queued. The server ends one command
//! and flushes its socket per batch, not per row. At most `depth` statements wait for their
//! results, and an UPDATE or DELETE that changed no row is reported (with its values) before any
//! later failure.

use std::sync::Arc;

use crate::decode::RelId;
pub(super) use crate::pg::session::Param;
use crate::pg::session::Session;
use crate::pg::PgError;

/// An UPDATE or DELETE must change exactly one row; its identity values start at `key_from`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expect {
    pub op: &'static str,
    pub rel: RelId,
    pub full: bool,
    pub key_from: usize,
}

/// Why a statement in flight failed.
pub(super) enum Failed {
    Db(PgError),
    /// An UPDATE or DELETE changed no row; its parameters tell which.
    NoRow(Expect, Vec<Param>),
}

/// The name of a statement prepared on the apply session.
pub(super) type Prepared = Arc<str>;

pub(super) struct Pipeline {
    batch: Batch,
}

impl Pipeline {
    /// Statements batched on `session`, synced at least every `depth` statements.
    pub fn session(session: Session, depth: usize) -> Pipeline {
        Pipeline {
            batch: Batch {
                session,
                expects: Vec::new(),
                closing: Vec::new(),
                depth,
                prepared: 0,
            },
        }
    }

    /// Run `sql` (one or more statements) and wait. Call [`drain`](Pipeline::drain) first.
    pub async fn simple(&mut self, sql: &str) -> Result<(), PgError> {
        self.batch.session.simple_query(sql).await
    }

    /// Prepare `sql`, leaving its parameter types to the server. Call `drain` first.
    pub async fn prepare(&mut self, sql: &str) -> Result<Prepared, PgError> {
        let b = &mut self.batch;
        b.prepared += 1;
        let name: Arc<str> = Arc::from(format!("understudy_{}", b.prepared));
        b.session.prepare(&name, sql).await?;
        Ok(name)
    }

    /// The statement will not be used again: deallocate it on the server with the next Sync (a
    /// Close queued now would count in the open batch's positions).
    pub fn forget(&mut self, statement: Prepared) {
        self.batch.closing.push(statement);
    }

    /// Queue a statement; sync first when `depth` are queued.
    pub async fn send(
        &mut self,
        statement: &Prepared,
        params: Vec<Param>,
        expect: Option<Expect>,
    ) -> Result<(), Failed> {
        self.batch.send(statement, params, expect).await
    }

    /// Wait for every statement in flight; the first failure wins.
    pub async fn drain(&mut self) -> Result<(), Failed> {
        self.batch.drain().await
    }

    /// Whether a statement in flight must still be checked for changing exactly one row.
    pub fn unchecked(&self) -> bool {
        !self.batch.expects.is_empty()
    }

    /// Forget everything in flight (after a failure or before a rollback).
    pub async fn clear(&mut self) {
        // The server must still answer what was sent; its answers no longer matter.
        drop(self.batch.drain().await);
    }
}

/// The open batch on a session.
struct Batch {
    session: Session,
    /// The statements of the open batch that must change exactly one row: their position in
    /// the batch, what they expect, and their values for the error message.
    expects: Vec<(usize, Expect, Vec<Param>)>,
    /// Prepared statements to close with the next Sync.
    closing: Vec<Arc<str>>,
    depth: usize,
    /// Statements prepared so far, for unique names.
    prepared: u64,
}

impl Batch {
    async fn send(
        &mut self,
        name: &str,
        params: Vec<Param>,
        expect: Option<Expect>,
    ) -> Result<(), Failed> {
        let position = self.session.queued();
        self.session
            .queue_execute(name, &params)
            .await
            .map_err(Failed::Db)?;
        if let Some(expect) = expect {
            self.expects.push((position, expect, params));
        }
        if self.session.queued() >= self.depth {
            self.drain().await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), Failed> {
        if self.session.queued() == 0 && self.closing.is_empty() {
            return Ok(());
        }
        for name in self.closing.drain(..) {
            if let Err(e) = self.session.queue_close(&name) {
                self.expects.clear();
                return Err(Failed::Db(e));
            }
        }
        let (counts, error) = match self.session.sync().await {
            Ok(counts) => (counts, None),
            Err(e) => (e.completed, Some(e.error)),
        };
        // In statement order: a change that found no row before the failure is the first
        // thing that went wrong.
        for (position, expect, params) in self.expects.drain(..) {
            if counts.get(position) == Some(&0) {
                return Err(Failed::NoRow(expect, params));
            }
        }
        match error {
            Some(e) => Err(Failed::Db(e)),
            None => Ok(()),
        }
    }
}
