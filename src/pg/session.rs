//! `Session`: an ordinary connection that runs prepared statements in batches over the extended
//! query protocol, one Sync per batch. The apply path's connection to the standby.
//!
//! tokio-postgres ends every statement with Sync, so the server finishes a command, sends
//! ReadyForQuery and flushes its socket once per row. A session sends Bind/Execute per statement
//! and Sync once per batch, so the server buffers its answers and does that bookkeeping once.
//!
//! PostgreSQL behaviour relied on
//! (<https://www.postgresql.org/docs/15/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>):
//! * Messages are processed in order and answered in order: BindComplete, then CommandComplete
//!   (whose tag carries the row count: `INSERT 0 1`, `UPDATE 1`) or an ErrorResponse. Until a
//!   Sync the server flushes its answers only when its output buffer fills.
//! * After an ErrorResponse the server discards every message up to the next Sync, then answers
//!   ReadyForQuery. So a batch has at most one error, and the statement that failed is the one
//!   after the last CommandComplete (an error in Bind, such as a bad integer literal, comes
//!   without BindComplete: counting CommandCompletes gives the position either way).
//! * Outside a transaction block Sync commits the implicit transaction; inside one (after BEGIN)
//!   it commits nothing, so a long transaction can be cut into several batches.
//! * A backend whose socket send buffer is full stops reading. A client that writes a large batch
//!   without reading would wait for it forever, so every write here also reads (and parses) the
//!   answers that have arrived, and memory stays bounded by the batch, not its bytes.
//! * Parameters go as text with type OID 0 (unspecified): the server infers each parameter's type
//!   from the statement at Parse and reads the value with that type's input function.
//!
//! Invariants: one batch at a time: `prepare` and `simple_query` refuse to run while statements
//! are queued (call [`Session::sync`] first). After an I/O or protocol failure, or when a call's
//! future was dropped before it finished, the session is broken and every call fails: open a new
//! one. An error the server reports inside a batch does not break it.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conninfo::ConnInfo;
use super::error::ServerError;
use super::replication::startup;
use super::socket::{self, Stream};
use super::PgError;

/// Queued bytes are written out once they pass this size.
const SEND_AT: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// A parameter value in PostgreSQL's text form, or NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Null,
    Text(Bytes),
}

/// A batch failed: the server refused statement number [`position`](SyncError::position)
/// (from 0, counting every statement queued since the previous Sync), or the connection failed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SyncError {
    /// The row counts of the statements that completed before the failure, in order.
    pub completed: Vec<u64>,
    pub error: PgError,
}

impl SyncError {
    /// The failing statement's place in the batch.
    pub fn position(&self) -> usize {
        self.completed.len()
    }
}

impl From<SyncError> for PgError {
    fn from(e: SyncError) -> PgError {
        e.error
    }
}

/// What the server has answered since the last Sync.
#[derive(Debug, Default)]
struct Answers {
    /// Row counts of the statements that completed, in order.
    counts: Vec<u64>,
    /// The first error.
    error: Option<PgError>,
    /// ReadyForQuery arrived: the batch is over.
    ready: bool,
}

/// An ordinary (non-replication) connection running statements in batches.
pub struct Session {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    info: ConnInfo,
    backend_pid: Option<i32>,
    /// Statements queued since the last Sync.
    queued: usize,
    answers: Answers,
    broken: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.info.redacted())
            .field("backend_pid", &self.backend_pid)
            .field("queued", &self.queued)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Session {
    /// Connect, with TLS per the DSN's sslmode, and authenticate (as the replication connection
    /// does). `application_name` is used unless the DSN or PGAPPNAME set one. The DSN's
    /// `options` are passed on as they are.
    pub async fn connect(info: &ConnInfo, application_name: &str) -> Result<Session, PgError> {
        let mut stream = socket::open(info).await?;
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let user = info.user().to_string();
        let mut params = vec![
            ("user", user.as_str()),
            ("database", info.dbname()),
            (
                "application_name",
                info.application_name().unwrap_or(application_name),
            ),
            ("client_encoding", "UTF8"),
        ];
        if let Some(options) = info.options() {
            params.push(("options", options));
        }
        let setup = async {
            startup::run(&mut stream, &mut rbuf, info, &params)
                .await
                .map_err(|e| e.at(info))
        };
        let backend_pid = socket::within_connect_timeout(info, setup).await?;
        Ok(Session {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(SEND_AT + 8 * 1024),
            info: info.clone(),
            backend_pid,
            queued: 0,
            answers: Answers::default(),
            broken: false,
        })
    }

    /// The server process id of this session.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Statements queued since the last Sync.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Run `sql` (one or more statements) with the simple query protocol; rows are discarded.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), PgError> {
        self.idle("simple_query")?;
        self.encode(|buf| frontend::query(sql, buf))?;
        self.finish().await.map(drop).map_err(PgError::from)
    }

    /// Prepare `sql` as statement `name`, its parameter types left to the server, and wait: an
    /// error such as an undefined column comes back here.
    pub async fn prepare(&mut self, name: &str, sql: &str) -> Result<(), PgError> {
        self.idle("prepare")?;
        self.encode(|buf| {
            frontend::parse(name, sql, std::iter::empty(), buf)?;
            frontend::sync(buf);
            Ok(())
        })?;
        self.finish().await.map(drop).map_err(PgError::from)
    }

    /// Queue statement `name` with `params` (Bind to the unnamed portal, then Execute), without
    /// a Sync. Its row count, or its error, comes from the next [`sync`](Session::sync).
    pub async fn queue_execute(&mut self, name: &str, params: &[Param]) -> Result<(), PgError> {
        self.usable()?;
        self.encode(|buf| {
            frontend::bind(
                "",
                name,
                std::iter::empty(),
                params,
                |p, buf: &mut BytesMut| match p {
                    Param::Null => Ok(IsNull::Yes),
                    Param::Text(b) => {
                        buf.put_slice(b);
                        Ok(IsNull::No)
                    }
                },
                std::iter::empty(),
                buf,
            )
            .map_err(|_| {
                let what = format!("{} parameters for statement {name:?}", params.len());
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
            })?;
            frontend::execute("", 0, buf)
        })?;
        self.queued += 1;
        if self.wbuf.len() >= SEND_AT {
            self.send().await?;
        }
        Ok(())
    }

    /// Queue the deallocation of prepared statement `name`; it goes out with the next Sync.
    /// Not counted as a statement. Skipped by the server if the batch fails before it.
    pub fn queue_close(&mut self, name: &str) -> Result<(), PgError> {
        self.usable()?;
        self.encode(|buf| frontend::close(b'S', name, buf))
    }

    /// Send Sync and read every answer up to ReadyForQuery: the row counts of the statements
    /// queued since the last Sync, in order, or the first error and where it happened.
    pub async fn sync(&mut self) -> Result<Vec<u64>, SyncError> {
        self.usable().map_err(|error| SyncError {
            completed: Vec::new(),
            error,
        })?;
        frontend::sync(&mut self.wbuf);
        self.finish().await
    }

    /// Say goodbye (Terminate) and close the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.stream.write_all_buf(&mut self.wbuf).await;
        let _ = self.stream.shutdown().await;
    }

    /// Write out what is queued (ending in Sync or Query) and read up to ReadyForQuery.
    async fn finish(&mut self) -> Result<Vec<u64>, SyncError> {
        let outcome = async {
            self.send().await?;
            while !self.answers.ready {
                self.fill().await?;
            }
            Ok(())
        }
        .await;
        self.queued = 0;
        let answers = std::mem::take(&mut self.answers);
        match (outcome, answers.error) {
            (Ok(()), None) => Ok(answers.counts),
            (Ok(()), Some(error)) => Err(SyncError {
                completed: answers.counts,
                error: error.at(&self.info),
            }),
            // The connection failed: an error the server sent first (a FATAL before it closed
            // the socket, say) explains more than the I/O error.
            (Err(io), server) => Err(SyncError {
                completed: answers.counts,
                error: server.unwrap_or(io).at(&self.info),
            }),
        }
    }

    /// Write out the write buffer, reading and taking in the server's answers meanwhile.
    async fn send(&mut self) -> Result<(), PgError> {
        self.broken = true;
        std::future::poll_fn(|cx| self.poll_send(cx))
            .await
            .map_err(|e| e.at(&self.info))?;
        self.broken = false;
        Ok(())
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PgError>> {
        loop {
            let mut blocked = false;
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                        return Poll::Ready(Err(PgError::io(e)));
                    }
                    Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PgError::io(e))),
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
            }
            if !blocked {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(r) => return Poll::Ready(r.map_err(PgError::io)),
                    Poll::Pending => {}
                }
            }
            // The socket takes no more: the server may be waiting for us to read its answers.
            match self.poll_fill(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Read once and take in every whole answer.
    async fn fill(&mut self) -> Result<(), PgError> {
        self.broken = true;
        std::future::poll_fn(|cx| self.poll_fill(cx))
            .await
            .map_err(|e| e.at(&self.info))?;
        self.broken = false;
        Ok(())
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PgError>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        // A fresh read future per poll: `read_buf` keeps no state, so dropping it loses nothing.
        let read = pin!(self.stream.read_buf(&mut self.rbuf));
        match read.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(PgError::io(e))),
            Poll::Ready(Ok(0)) => {
                let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                Poll::Ready(Err(PgError::io(eof)))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(self.take_answers()),
        }
    }

    /// Take every whole message off the read buffer into `answers`.
    fn take_answers(&mut self) -> Result<(), PgError> {
        while let Some(message) = Message::parse(&mut self.rbuf).map_err(PgError::io)? {
            let answers = &mut self.answers;
            match message {
                Message::CommandComplete(body) => {
                    let tag = body.tag().map_err(PgError::io)?;
                    answers.counts.push(rows_affected(tag));
                }
                Message::EmptyQueryResponse => answers.counts.push(0),
                Message::ErrorResponse(body) => {
                    let e = ServerError::from_fields(body.fields()).map_err(PgError::io)?;
                    answers.error.get_or_insert(PgError::server(e));
                }
                Message::ReadyForQuery(_) => answers.ready = true,
                Message::BindComplete
                | Message::ParseComplete
                | Message::CloseComplete
                | Message::DataRow(_)
                | Message::RowDescription(_)
                | Message::NoData
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => {}
                Message::NoticeResponse(body) => {
                    let notice = ServerError::from_fields(body.fields()).map_err(PgError::io)?;
                    tracing::debug!(
                        server = %self.info.redacted(),
                        "{}: {} ({})", notice.severity, notice.message, notice.code
                    );
                }
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(PgError::protocol(
                        "the server started a COPY, which an apply session does not run",
                    ))
                }
                _ => return Err(PgError::protocol("unexpected message in answer to a batch")),
            }
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), PgError> {
        if self.broken {
            return Err(PgError::protocol(
                "the session was broken by an earlier failure or an abandoned call; open a new one",
            )
            .at(&self.info));
        }
        Ok(())
    }

    /// Usable, with no batch open.
    fn idle(&self, call: &str) -> Result<(), PgError> {
        self.usable()?;
        if self.queued > 0 || !self.wbuf.is_empty() {
            return Err(PgError::protocol(format!(
                "{call} called with a batch of {} statements open; call sync first",
                self.queued
            ))
            .at(&self.info));
        }
        Ok(())
    }

    /// Append messages to the write buffer, all or nothing: a message that cannot be encoded (a
    /// NUL in a name or in SQL text, too many parameters) leaves no partial bytes behind.
    fn encode(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
    ) -> Result<(), PgError> {
        let mark = self.wbuf.len();
        write(&mut self.wbuf).map_err(|e| {
            self.wbuf.truncate(mark);
            PgError::protocol(format!("cannot encode the message: {e}")).at(&self.info)
        })
    }
}

/// The row count in a CommandComplete tag: the last number of `INSERT 0 n`, `UPDATE n`,
/// `DELETE n`, `SELECT n`, `MERGE n`, `COPY n`, `FETCH n`, `MOVE n`; 0 for any other command.
fn rows_affected(tag: &str) -> u64 {
    let mut words = tag.split(' ');
    let counted = matches!(
        words.next(),
        Some("INSERT" | "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "COPY" | "FETCH" | "MOVE")
    );
    match (counted, words.next_back()) {
        (true, Some(n)) => n.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::rows_affected;

    #[test]
    fn row_counts_come_from_the_last_word_of_counting_tags() {
        for (tag, rows) in [
            ("INSERT 0 1", 1),
            ("INSERT 0 0", 0),
            ("UPDATE 0", 0),
            ("UPDATE 17", 17),
            ("DELETE 1", 1),
            ("SELECT 3", 3),
            ("MERGE 2", 2),
            ("COPY 1000000", 1_000_000),
            ("BEGIN", 0),
            ("COMMIT", 0),
            ("ROLLBACK", 0),
            ("SET", 0),
            ("CREATE TABLE AS", 0),
            ("TRUNCATE TABLE", 0),
            ("", 0),
        ] {
            assert_eq!(rows_affected(tag), rows, "{tag:?}");
        }
    }
}
