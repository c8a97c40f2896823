//! `ReplicationConnection`: our client for PostgreSQL's logical streaming replication protocol.
//!
//! tokio-postgres cannot open a replication connection (no `replication=database` startup
//! parameter, no COPY BOTH), so this is a small client of our own on tokio and the
//! postgres-protocol codecs: startup and authentication in `startup`, queries and slot creation
//! in `commands`, the bytes of the replication messages in `framing` (pure, unit-tested), and
//! the streaming state machine and the socket here.
//!
//! PostgreSQL behaviour relied on (<https://www.postgresql.org/docs/15/protocol-replication.html>):
//! * `replication=database` gives a logical walsender bound to the DSN's database. It speaks only
//!   the simple query protocol; plain SQL works there too.
//! * `CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')` returns the snapshot name,
//!   valid while this connection stays idle: run nothing else on it until every copy has run
//!   `SET TRANSACTION SNAPSHOT`.
//! * `START_REPLICATION` answers CopyBothResponse, then CopyData carrying XLogData (`'w'`) and
//!   keepalives (`'k'`); we send standby status updates (`'r'`). When a keepalive asks for a
//!   reply, answer at once: the server disconnects after `wal_sender_timeout` of silence.
//! * The text form of values depends on the walsender's DateStyle, IntervalStyle, TimeZone and
//!   extra_float_digits, so startup pins them in `options` (after any `options` of the DSN).
//!
//! Invariants: [`ReplicationConnection::recv`] is cancel-safe (it reads into an internal buffer
//! and consumes whole messages only), so it can sit in a `tokio::select!`. A status update cut
//! short by cancellation stays queued and goes out with the next send. After an error the
//! connection is broken and every call fails; open a new one.

mod commands;
mod framing;
pub(super) mod startup;

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conninfo::ConnInfo;
use super::error::ServerError;
use super::socket::{self, Stream};
use super::PgError;
use crate::lsn::Lsn;
use commands::{quote_ident, quote_literal};
use framing::Frame;

/// The startup `options` that pin the text form of values in pgoutput's text mode.
pub const PINNED_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c timezone=UTC -c extra_float_digits=3";

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (a u64, as PostgreSQL prints it).
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of this connection.
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with the slot's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it for other sessions' `SET TRANSACTION SNAPSHOT` (returns its name).
    Export,
    /// Nothing.
    Nothing,
    /// Use it in the current transaction of this connection (must be inside BEGIN).
    Use,
}

/// What CREATE_REPLICATION_SLOT returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCreated {
    pub slot_name: String,
    /// Where streaming must start for a gap-free hand-off from the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, with [`SnapshotAction::Export`].
    pub snapshot_name: Option<String>,
}

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: for pgoutput, one logical replication message in `data`. `wal_start` is 0/0
    /// for messages without a WAL position of their own (such as Relation); take progress from
    /// Begin/Commit instead.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// The server's keepalive; `reply_requested` means "send a status update now".
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a query (after ReadyForQuery).
    Idle,
    /// In COPY BOTH.
    Streaming,
    /// The server ended the COPY (CopyDone or CommandComplete); ReadyForQuery has not come yet.
    Ended { copy_done: bool },
    /// An error left the connection unusable.
    Broken,
}

/// A replication connection (`replication=database`) to one server.
pub struct ReplicationConnection {
    stream: Stream,
    rbuf: BytesMut,
    /// Bytes not yet written: a send cut short by cancellation goes out with the next one.
    wbuf: BytesMut,
    info: ConnInfo,
    state: State,
    backend_pid: Option<i32>,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("server", &self.info.redacted())
            .field("state", &self.state)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.stream.is_tls())
            .finish()
    }
}

impl ReplicationConnection {
    /// Connect, with TLS per the DSN's sslmode, and authenticate (trust, password, md5,
    /// SCRAM-SHA-256). `application_name` is used unless the DSN or PGAPPNAME set one; it is the
    /// name `synchronous_standby_names` and `pg_stat_replication` see.
    pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<Self, PgError> {
        let stream = socket::open(info).await?;
        let mut conn = ReplicationConnection {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            info: info.clone(),
            state: State::Idle,
            backend_pid: None,
        };
        let app = info.application_name().unwrap_or(application_name);
        let startup = async { conn.startup(app).await.map_err(|e| e.at(info)) };
        socket::within_connect_timeout(info, startup).await?;
        Ok(conn)
    }

    /// The server process id of this walsender (as in `pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Whether the stream is TLS-encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// START_REPLICATION SLOT "slot" LOGICAL X/Y ("k" 'v', …), and wait until the server is
    /// streaming. A start below the slot's confirmed_flush_lsn (such as 0/0) starts there.
    pub async fn start_logical(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<(), PgError> {
        self.expect_state(State::Idle, "start_logical")?;
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start}",
            quote_ident(slot)
        );
        if !options.is_empty() {
            let options: Vec<String> = options
                .iter()
                .map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v)))
                .collect();
            sql.push_str(&format!(" ({})", options.join(", ")));
        }
        frontend::query(&sql, &mut self.wbuf).map_err(|e| self.fail(PgError::io(e)))?;
        self.flush().await?;
        let mut error = None;
        loop {
            match self.next_message().await? {
                Frame::CopyBothResponse => {
                    self.state = State::Streaming;
                    return Ok(());
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(body.fields())?);
                }
                Frame::Message(Message::ReadyForQuery(_)) => {
                    let e = error.unwrap_or_else(|| {
                        PgError::protocol("START_REPLICATION ended without streaming")
                    });
                    return Err(e.at(&self.info));
                }
                Frame::Message(Message::CommandComplete(_)) => {}
                Frame::Message(other) => return Err(self.unexpected(&other, "START_REPLICATION")),
            }
        }
    }

    /// The next replication message, or `None` when the server ended the stream.
    /// Cancel-safe: dropping the future loses no data.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        match self.state {
            State::Streaming => {}
            State::Ended { .. } => return Ok(None),
            _ => self.expect_state(State::Streaming, "recv")?,
        }
        match self.next_message().await? {
            Frame::Message(Message::CopyData(body)) => framing::parse_copy_data(body.into_bytes())
                .map(Some)
                .map_err(|e| self.fail(PgError::protocol(e.to_string()))),
            Frame::Message(Message::CopyDone) => {
                self.state = State::Ended { copy_done: true };
                Ok(None)
            }
            // A walsender that finishes at shutdown sends CommandComplete without CopyDone.
            Frame::Message(Message::CommandComplete(_)) => {
                self.state = State::Ended { copy_done: false };
                Ok(None)
            }
            Frame::Message(Message::ErrorResponse(body)) => {
                let e = self.server_error(body.fields())?;
                Err(self.fail(e))
            }
            Frame::Message(other) => Err(self.unexpected(&other, "streaming")),
            Frame::CopyBothResponse => {
                Err(self.fail(PgError::protocol("CopyBothResponse while streaming")))
            }
        }
    }

    /// Send a Standby Status Update: written, flushed (durably applied) and applied positions.
    /// Never report flush 0/0 (the server reads it as invalid).
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        self.expect_state(State::Streaming, "send_status")?;
        let now = framing::pg_time_micros(SystemTime::now());
        let payload = framing::standby_status(write, flush, apply, now, reply_requested);
        frontend::CopyData::new(&payload[..])
            .map_err(|e| self.fail(PgError::io(e)))?
            .write(&mut self.wbuf);
        self.flush().await
    }

    /// End the stream (CopyDone) and wait until the connection is ready for queries again
    /// (ReadyForQuery); messages still in flight are dropped. On failure the connection is
    /// broken. Calling it when not streaming is a no-op.
    pub async fn stop_streaming(&mut self) -> Result<(), PgError> {
        match self.state {
            State::Streaming | State::Ended { copy_done: true } => {
                frontend::copy_done(&mut self.wbuf);
                self.flush().await?;
            }
            State::Ended { copy_done: false } => {}
            State::Idle => return Ok(()),
            State::Broken => return self.expect_state(State::Streaming, "stop_streaming"),
        }
        let mut error = None;
        loop {
            match self.next_message().await? {
                Frame::Message(Message::ReadyForQuery(_)) => break,
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(body.fields())?);
                }
                Frame::Message(_) | Frame::CopyBothResponse => {}
            }
        }
        self.state = State::Idle;
        match error {
            Some(e) => Err(e.at(&self.info)),
            None => Ok(()),
        }
    }

    /// Say goodbye (Terminate) and close the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// The next whole backend message; NoticeResponse and ParameterStatus are handled here.
    /// Cancel-safe: `read_buf` only appends, and only whole messages are taken off the buffer.
    async fn next_message(&mut self) -> Result<Frame, PgError> {
        loop {
            let frame =
                framing::next_frame(&mut self.rbuf).map_err(|e| self.fail(PgError::io(e)))?;
            match frame {
                Some(Frame::Message(Message::NoticeResponse(body))) => {
                    let notice = ServerError::from_fields(body.fields())
                        .map_err(|e| self.fail(PgError::io(e)))?;
                    tracing::debug!(
                        server = %self.info.redacted(),
                        "{}: {} ({})", notice.severity, notice.message, notice.code
                    );
                }
                Some(Frame::Message(Message::ParameterStatus(_))) => {}
                Some(frame) => return Ok(frame),
                None => {
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(64 * 1024);
                    }
                    let n = self
                        .stream
                        .read_buf(&mut self.rbuf)
                        .await
                        .map_err(|e| self.fail(PgError::io(e)))?;
                    if n == 0 {
                        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                        return Err(self.fail(PgError::io(eof)));
                    }
                }
            }
        }
    }

    /// Write out everything queued. Cancel-safe: unwritten bytes stay queued.
    async fn flush(&mut self) -> Result<(), PgError> {
        while !self.wbuf.is_empty() {
            self.stream
                .write_buf(&mut self.wbuf)
                .await
                .map_err(|e| self.fail(PgError::io(e)))?;
        }
        self.stream
            .flush()
            .await
            .map_err(|e| self.fail(PgError::io(e)))
    }

    fn server_error(
        &mut self,
        fields: postgres_protocol::message::backend::ErrorFields<'_>,
    ) -> Result<PgError, PgError> {
        ServerError::from_fields(fields)
            .map(PgError::server)
            .map_err(|e| self.fail(PgError::io(e)))
    }

    /// Mark the connection broken and name the server in the error.
    fn fail(&mut self, e: PgError) -> PgError {
        self.state = State::Broken;
        e.at(&self.info)
    }

    fn unexpected(&mut self, message: &Message, during: &str) -> PgError {
        let tag = message_name(message);
        self.fail(PgError::protocol(format!(
            "unexpected {tag} during {during}"
        )))
    }

    fn expect_state(&self, wanted: State, call: &str) -> Result<(), PgError> {
        if self.state == wanted {
            return Ok(());
        }
        let now = match self.state {
            State::Idle => "idle",
            State::Streaming => "streaming (call stop_streaming first)",
            State::Ended { .. } => "at the end of a stream (call stop_streaming first)",
            State::Broken => "broken by an earlier error; open a new connection",
        };
        Err(
            PgError::protocol(format!("{call} called while the connection is {now}"))
                .at(&self.info),
        )
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::DataRow(_) => "DataRow",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        Message::NotificationResponse(_) => "NotificationResponse",
        _ => "message",
    }
}
