//! A sliding window of statements in flight on the apply session.
//!
//! tokio-postgres writes a request when its future is first polled, and the server answers in
//! order. Each statement's future is therefore polled once as soon as it is made (so requests go
//! out strictly in order) and kept in a FIFO; only when the window is full is the oldest result
//! awaited. The standby always has work queued and we never stop to wait for a whole batch.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::decode::RelId;

/// A value sent to the standby in PostgreSQL's text form; the server parses it for the column.
#[derive(Clone, Debug)]
pub(super) enum Param {
    Null,
    Text(Bytes),
}

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

/// Why a statement in the window failed.
pub(super) enum Failed {
    Db(tokio_postgres::Error),
    /// An UPDATE or DELETE changed no row; its parameters tell which.
    NoRow(Expect, Vec<Param>),
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

pub(super) struct Pipeline {
    client: Arc<Client>,
    window: VecDeque<InFlight>,
    depth: usize,
}

impl Pipeline {
    pub fn new(client: Arc<Client>, depth: usize) -> Pipeline {
        Pipeline {
            client,
            window: VecDeque::with_capacity(depth),
            depth,
        }
    }

    /// Send a statement now; wait for the oldest result first when the window is full.
    pub async fn send(
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

    /// Wait for every statement in flight; the first failure wins and the rest are dropped.
    pub async fn drain(&mut self) -> Result<(), Failed> {
        while !self.window.is_empty() {
            if let Err(e) = self.settle_one().await {
                self.window.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Forget everything in flight (after a failure or before a rollback).
    pub fn clear(&mut self) {
        self.window.clear();
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
            (Err(e), _) => Err(Failed::Db(e)),
            (Ok(0), Some(expect)) => Err(Failed::NoRow(expect, params)),
            (Ok(_), _) => Ok(()),
        }
    }
}
