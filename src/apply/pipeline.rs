//! The apply connection's statements in flight, on one of two connections:
//!
//! * a [`Session`] (`Applier::connect`): each statement is queued as Bind/Execute with no Sync,
//!   and the batch is synced only when the dispatcher needs its results (before a prepare, a
//!   TRUNCATE or the standby's COMMIT returns) or when `depth` statements are queued. The server
//!   ends one command and flushes its socket per batch, not per row.
//! * a tokio-postgres `Client` (`Applier::new`): every statement carries its own Sync. Requests
//!   are written in order as soon as they are made and kept in a FIFO; only when `depth` of them
//!   are in flight is the oldest result awaited. tokio-postgres writes a request when its future
//!   is first polled, so each future is polled once as soon as it is made.
//!
//! Either way at most `depth` statements wait for their results, and an UPDATE or DELETE that
//! changed no row is reported (with its values) before any later failure.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::decode::RelId;
pub(super) use crate::pg::session::Param;
use crate::pg::session::Session;
use crate::pg::PgError;

impl ToSql for Param {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

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

/// A statement prepared on the apply connection.
#[derive(Clone, Debug)]
pub(super) enum Prepared {
    Named(Arc<str>),
    Client(Statement),
}

pub(super) struct Pipeline {
    conn: Conn,
}

enum Conn {
    Session(Box<Batch>),
    Client(Window),
}

impl Pipeline {
    /// Statements batched on `session`, synced at least every `depth` statements.
    pub fn session(session: Session, depth: usize) -> Pipeline {
        Pipeline {
            conn: Conn::Session(Box::new(Batch {
                session,
                expects: Vec::new(),
                closing: Vec::new(),
                depth,
                prepared: 0,
            })),
        }
    }

    /// A window of at most `depth` statements in flight on `client`.
    pub fn client(client: Client, depth: usize) -> Pipeline {
        Pipeline {
            conn: Conn::Client(Window {
                client: Arc::new(client),
                window: VecDeque::with_capacity(depth),
                depth,
            }),
        }
    }

    /// Run `sql` (one or more statements) and wait. Call [`drain`](Pipeline::drain) first.
    pub async fn simple(&mut self, sql: &str) -> Result<(), PgError> {
        match &mut self.conn {
            Conn::Session(b) => b.session.simple_query(sql).await,
            Conn::Client(w) => w.client.batch_execute(sql).await.map_err(PgError::from),
        }
    }

    /// Prepare `sql`, leaving its parameter types to the server. Call `drain` first.
    pub async fn prepare(&mut self, sql: &str) -> Result<Prepared, PgError> {
        match &mut self.conn {
            Conn::Session(b) => {
                b.prepared += 1;
                let name: Arc<str> = Arc::from(format!("understudy_{}", b.prepared));
                b.session.prepare(&name, sql).await?;
                Ok(Prepared::Named(name))
            }
            Conn::Client(w) => Ok(Prepared::Client(w.client.prepare(sql).await?)),
        }
    }

    /// The statement will not be used again: deallocate it on the server.
    pub fn forget(&mut self, statement: Prepared) {
        match (&mut self.conn, statement) {
            // With the next Sync: a Close queued now would count in the open batch's positions.
            (Conn::Session(b), Prepared::Named(name)) => b.closing.push(name),
            // Dropping the last copy closes it.
            (_, statement) => drop(statement),
        }
    }

    /// Send a statement; wait for earlier results first when `depth` are in flight.
    pub async fn send(
        &mut self,
        statement: &Prepared,
        params: Vec<Param>,
        expect: Option<Expect>,
    ) -> Result<(), Failed> {
        match (&mut self.conn, statement) {
            (Conn::Session(b), Prepared::Named(name)) => b.send(name, params, expect).await,
            (Conn::Client(w), Prepared::Client(s)) => w.send(s.clone(), params, expect).await,
            _ => Err(Failed::Db(PgError::protocol(
                "a statement prepared on another connection; this is a bug in understudy",
            ))),
        }
    }

    /// Wait for every statement in flight; the first failure wins and the rest are dropped.
    pub async fn drain(&mut self) -> Result<(), Failed> {
        match &mut self.conn {
            Conn::Session(b) => b.drain().await,
            Conn::Client(w) => w.drain().await,
        }
    }

    /// Whether a statement in flight must still be checked for changing exactly one row.
    pub fn unchecked(&self) -> bool {
        match &self.conn {
            Conn::Session(b) => !b.expects.is_empty(),
            Conn::Client(w) => w.window.iter().any(|f| f.expect.is_some()),
        }
    }

    /// Forget everything in flight (after a failure or before a rollback).
    pub async fn clear(&mut self) {
        match &mut self.conn {
            // The server must still answer what was sent; its answers no longer matter.
            Conn::Session(b) => drop(b.drain().await),
            Conn::Client(w) => w.window.clear(),
        }
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

/// Statements in flight on a tokio-postgres client.
struct Window {
    client: Arc<Client>,
    window: VecDeque<InFlight>,
    depth: usize,
}

type Outcome = (Result<u64, tokio_postgres::Error>, Vec<Param>);

enum Slot {
    Waiting(Pin<Box<dyn Future<Output = Outcome> + Send>>),
    Done(Outcome),
}

struct InFlight {
    slot: Slot,
    expect: Option<Expect>,
}

impl Window {
    async fn send(
        &mut self,
        statement: Statement,
        params: Vec<Param>,
        expect: Option<Expect>,
    ) -> Result<(), Failed> {
        if self.window.len() >= self.depth {
            self.settle_one().await?;
        }
        let client = self.client.clone();
        let mut fut: Pin<Box<dyn Future<Output = Outcome> + Send>> = Box::pin(async move {
            let result = client.execute_raw(&statement, params.iter()).await;
            (result, params)
        });
        // The first poll writes the request; later polls (with a real waker) collect the answer.
        let mut cx = Context::from_waker(Waker::noop());
        let slot = match fut.as_mut().poll(&mut cx) {
            Poll::Ready(outcome) => Slot::Done(outcome),
            Poll::Pending => Slot::Waiting(fut),
        };
        self.window.push_back(InFlight { slot, expect });
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), Failed> {
        while !self.window.is_empty() {
            if let Err(e) = self.settle_one().await {
                self.window.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), Failed> {
        let Some(front) = self.window.pop_front() else {
            return Ok(());
        };
        let (result, params) = match front.slot {
            Slot::Done(outcome) => outcome,
            Slot::Waiting(fut) => fut.await,
        };
        match (result, front.expect) {
            (Err(e), _) => Err(Failed::Db(e.into())),
            (Ok(0), Some(expect)) => Err(Failed::NoRow(expect, params)),
            (Ok(_), _) => Ok(()),
        }
    }
}
