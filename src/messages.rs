//! NMS mutation messages read back from the journal: what every sink, the SSE stream and
//! `replay` emit.
//!
//! What it owns:
//! * [`MessageReader`]: the journal's transactions, decoded and translated into [`Mutation`]s
//!   (seq 1, 2, … within each transaction), handed out in [`Batch`]es of at most `max` messages,
//!   so a transaction of any size is never held whole.
//! * [`Cursor`]: a position in the message stream, `commit_lsn:seq`, which is also a message's id
//!   (webhook idempotency key, SSE event id), and the rule of what a consumer standing there has
//!   already had.
//! * [`Tail`]: the async view sinks and the stream use: batches of transactions the standby has
//!   applied, waiting for more to become durable and applied (or ending at the journal's end,
//!   for `replay`).
//! * [`to_json`]: the one JSON form of a message, `{"id":"commit_lsn:seq", …the Mutation…}`.
//!
//! Invariants:
//! * The same journal and rules give the same messages with the same ids, whoever reads them and
//!   from wherever: a reader that starts after cursor `C:S` yields exactly the messages after
//!   `C:S` that a reader from the journal's start would (the transaction holding `C:S` is
//!   translated whole and its first `S` messages dropped, so `seq` numbering never shifts).
//! * The relation cache is seeded from the journal's context at the starting position and
//!   updated by the Relation messages inside the transactions, so any retained LSN is a valid
//!   start.
//! * A transaction has been applied on the standby when its commit LSN is below the applied
//!   position ([`Batch::is_applied`]), the rule `apply` uses to skip what it applied before; an
//!   applied position is always a transaction's end LSN or an idle position, so this is the same
//!   as "its end LSN is at or before the applied position".
//!
//! The journal's I/O is blocking, and a [`crate::journal::JournalTxn`] borrows its reader, so
//! each `MessageReader` runs its journal reader on a thread of its own that answers one request
//! at a time and keeps its place inside a transaction between requests. Answers arrive on a
//! channel that outlives each call, so a call cancelled after asking leaves its answer to the
//! next call: [`MessageReader::next_batch_async`] and [`Tail::next`] are cancel-safe.

use std::fmt;
use std::str::FromStr;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;

use tokio::sync::mpsc;

use crate::decode::{DecodeError, Message, RelId, Relation, RelationCache};
use crate::journal::{JournalError, JournalHandle, JournalReader};
use crate::lsn::Lsn;
use crate::translate::{
    translate_change, translate_truncate, Mutation, Rules, TranslateError, TxnContext,
};

/// A position in the message stream: after message `seq` of the transaction committing at
/// `commit_lsn`. Text form `commit_lsn:seq` (`0/1A2B400:3`), a message's id.
///
/// `Cursor::start(lsn)` (`seq` 0) stands before every transaction committing at or after `lsn`.
/// Cursors order as (commit LSN, seq), the order messages are emitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    pub commit_lsn: Lsn,
    pub seq: u32,
}

impl Cursor {
    /// Before every message of the transactions committing at or after `lsn`.
    pub fn start(lsn: Lsn) -> Cursor {
        Cursor {
            commit_lsn: lsn,
            seq: 0,
        }
    }

    /// Just after `m`: the cursor of a consumer that has had `m`.
    pub fn of(m: &Mutation) -> Cursor {
        Cursor {
            commit_lsn: m.commit_lsn,
            seq: m.seq,
        }
    }

    /// Whether a consumer standing here has already had message `seq` of the transaction
    /// committing at `commit_lsn`.
    pub fn covers(&self, commit_lsn: Lsn, seq: u32) -> bool {
        (commit_lsn, seq) <= (self.commit_lsn, self.seq)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.seq)
    }
}

/// The text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a message id: expected commit_lsn:seq, such as 0/1A2B400:3")]
pub struct ParseCursorError(String);

impl FromStr for Cursor {
    type Err = ParseCursorError;

    fn from_str(s: &str) -> Result<Cursor, ParseCursorError> {
        let bad = || ParseCursorError(s.to_string());
        let (lsn, seq) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            commit_lsn: lsn.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The JSON form of a message that every sink, the stream and `replay` emit: the [`Mutation`]
/// with its id first, `{"id":"0/1A2B400:3","commit_lsn":"0/1A2B400",…}`.
pub fn to_json(m: &Mutation) -> String {
    // A Mutation serialises as a JSON object with string keys: this cannot fail.
    let body = serde_json::to_string(m).expect("a Mutation serialises to JSON");
    let fields = body.strip_prefix('{').unwrap_or(&body);
    // The id holds hex digits, '/' and ':' only: nothing to escape.
    format!("{{\"id\":\"{}\",{fields}", m.id())
}

/// Messages of one transaction, at most `max` of them; a large transaction comes in several.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// The transaction's end LSN, known once its Commit is read: `Some` on its last batch.
    pub end_lsn: Option<Lsn>,
    /// In seq order; may be empty (a transaction without row changes, or one whose messages a
    /// cursor had already delivered).
    pub messages: Vec<Mutation>,
    /// This batch ends the transaction.
    pub last_of_txn: bool,
    /// Where a consumer stands once it has handled this batch.
    pub through: Cursor,
}

impl Batch {
    /// Whether the standby has applied this batch's transaction, given its applied position.
    pub fn is_applied(&self, applied: Lsn) -> bool {
        self.commit_lsn < applied
    }
}

/// Reading messages failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the journaled message at {lsn} (transaction committing at {commit_lsn}) does not \
         decode; its record passed the CRC check, so this is a bug in understudy: report it \
         with the journal segment"
    )]
    Decode {
        lsn: Lsn,
        commit_lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error(
        "the change at {lsn} (transaction committing at {commit_lsn}) is for relation {rel}, \
         which no Relation message described before it; the journal is inconsistent: move it \
         aside and run `understudy bootstrap --force`"
    )]
    UnknownRelation {
        lsn: Lsn,
        commit_lsn: Lsn,
        rel: RelId,
    },
    #[error("while translating the change at {lsn} (transaction committing at {commit_lsn})")]
    Translate {
        lsn: Lsn,
        commit_lsn: Lsn,
        #[source]
        source: TranslateError,
    },
    #[error("this message reader stopped after an earlier error (reported then); open a new one")]
    ReaderStopped,
    #[error(
        "the journal writer stopped, so no more transactions become durable through this \
         handle; start the sinks again with the reopened journal"
    )]
    JournalClosed,
    #[error("the follower stopped publishing the standby's applied position")]
    AppliedClosed,
}

impl MessagesError {
    /// Whether trying again (with a new reader) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            MessagesError::Journal(e) => e.is_transient(),
            MessagesError::ReaderStopped
            | MessagesError::JournalClosed
            | MessagesError::AppliedClosed => true,
            MessagesError::Decode { .. }
            | MessagesError::UnknownRelation { .. }
            | MessagesError::Translate { .. } => false,
        }
    }

    /// The oldest LSN the journal holds, when this is the journal's "too old" error.
    pub fn too_old(&self) -> Option<(Lsn, Lsn)> {
        match self {
            MessagesError::Journal(JournalError::TooOld { requested, oldest }) => {
                Some((*requested, *oldest))
            }
            _ => None,
        }
    }
}

type Answer = Result<Option<Batch>, MessagesError>;

/// Translated messages from the journal, from a cursor on; see the module docs.
pub struct MessageReader {
    /// The batch size of each request; one request is outstanding at a time.
    requests: std_mpsc::Sender<usize>,
    /// Answers, in request order. A call cancelled after asking leaves its answer here for the
    /// next call.
    replies: mpsc::Receiver<Answer>,
    outstanding: bool,
}

impl MessageReader {
    /// A reader of the messages of the transactions committing at or after `from`.
    /// [`JournalError::TooOld`] when the journal no longer holds them all.
    pub fn open(
        journal: &JournalHandle,
        from: Lsn,
        rules: Arc<Rules>,
    ) -> Result<MessageReader, MessagesError> {
        MessageReader::open_after(journal, Cursor::start(from), rules)
    }

    /// A reader of the messages after `after` (a consumer's cursor, or the last event id it saw).
    /// Opening reads journal segments: call it off the async runtime's threads when that
    /// matters ([`Tail::open`] does).
    pub fn open_after(
        journal: &JournalHandle,
        after: Cursor,
        rules: Arc<Rules>,
    ) -> Result<MessageReader, MessagesError> {
        let start = Start::find(journal, after)?;
        let (tx, rx) = std_mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel(1);
        let worker = Worker {
            requests: rx,
            replies: reply_tx,
            relations: RelationCache::new(),
            rules,
            after,
        };
        let journal = journal.clone();
        thread::Builder::new()
            .name("understudy-messages".into())
            .spawn(move || worker.run(&journal, start))
            .map_err(|e| {
                MessagesError::Journal(JournalError::Io {
                    action: "start a reader thread for",
                    path: "the journal".into(),
                    source: e,
                })
            })?;
        Ok(MessageReader {
            requests: tx,
            replies: reply_rx,
            outstanding: false,
        })
    }

    /// The next batch of at most `max` messages (at least one is asked for), or `None` when the
    /// reader has caught up with the journal's durable end. Blocks on journal I/O: async code
    /// uses [`MessageReader::next_batch_async`].
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, MessagesError> {
        self.ask(max)?;
        // Unconstrained: called on a runtime thread, tokio's task budget would otherwise defer the
        // wake-up to a scheduler this thread is not returning to.
        let answer = block_on(tokio::task::unconstrained(self.replies.recv()));
        self.outstanding = false;
        answer.ok_or(MessagesError::ReaderStopped)?
    }

    /// [`MessageReader::next_batch`] for async callers: the I/O runs on the reader's thread.
    /// Cancel-safe: the batch asked for by a cancelled call is the next call's answer (then of
    /// the cancelled call's `max`).
    pub async fn next_batch_async(&mut self, max: usize) -> Result<Option<Batch>, MessagesError> {
        self.ask(max)?;
        let answer = self.replies.recv().await;
        self.outstanding = false;
        answer.ok_or(MessagesError::ReaderStopped)?
    }

    fn ask(&mut self, max: usize) -> Result<(), MessagesError> {
        if !self.outstanding {
            self.requests
                .send(max.max(1))
                .map_err(|_| MessagesError::ReaderStopped)?;
            self.outstanding = true;
        }
        Ok(())
    }
}

/// Where a reader starts: a journal reader just before the first transaction to read, and the
/// Relation messages in force there.
///
/// A journal reader's context at open holds the relations in force at the segment's head or
/// sparse-index entry it starts from; the transactions it then skips to reach the start LSN may
/// describe more, which it learns only as it reads past them. So a first reader is run up to the
/// first transaction at or after the start, its context taken, and a second reader opened at
/// that transaction's commit LSN. With no such transaction durable yet, the first reader's
/// context is the one at its durable end and it is used as it is, checking again later.
struct Start {
    reader: JournalReader,
    relations: RelationCache,
    /// A transaction at or after the start was found: the relations are final.
    found: bool,
}

impl Start {
    fn find(journal: &JournalHandle, after: Cursor) -> Result<Start, MessagesError> {
        let mut probe = journal.reader_from(after.commit_lsn)?;
        let first = probe.next_txn()?.map(|t| t.commit_lsn());
        let mut relations = RelationCache::new();
        for m in probe.context() {
            if let Ok(Message::Relation(r)) = m.decode() {
                relations.insert(r);
            }
        }
        Ok(match first {
            Some(commit_lsn) => Start {
                reader: journal.reader_from(commit_lsn)?,
                relations,
                found: true,
            },
            None => Start {
                reader: probe,
                relations,
                found: false,
            },
        })
    }
}

/// The reader thread has no one left to answer.
struct Gone;

/// The reader thread's state apart from the journal reader (which a transaction borrows).
struct Worker {
    requests: std_mpsc::Receiver<usize>,
    replies: mpsc::Sender<Answer>,
    relations: RelationCache,
    rules: Arc<Rules>,
    after: Cursor,
}

impl Worker {
    fn run(mut self, journal: &JournalHandle, mut start: Start) {
        let Ok(mut max) = self.requests.recv() else {
            return;
        };
        // Until a transaction at or after the start is durable, the start is found again at each
        // request, so that the relations of transactions skipped on the way are known.
        while !start.found {
            match start.reader.next_txn() {
                Ok(None) => match self.answer(Ok(None)) {
                    Ok(next) => max = next,
                    Err(Gone) => return,
                },
                Ok(Some(_)) => {}
                Err(e) => {
                    let _ = self.replies.blocking_send(Err(e.into()));
                    return;
                }
            }
            match Start::find(journal, self.after) {
                Ok(s) => start = s,
                Err(e) => {
                    let _ = self.replies.blocking_send(Err(e));
                    return;
                }
            }
        }
        self.relations = std::mem::take(&mut start.relations);
        if let Err(Some(e)) = self.serve(&mut start.reader, max) {
            // The caller hears of the error; later requests find the thread gone.
            let _ = self.replies.blocking_send(Err(e));
        }
    }

    /// Sends an answer, then waits for the next request (its batch size).
    fn answer(&self, answer: Answer) -> Result<usize, Gone> {
        self.replies.blocking_send(answer).map_err(|_| Gone)?;
        self.requests.recv().map_err(|_| Gone)
    }

    /// Answers requests until the caller goes away (`Err(None)`) or an error (`Err(Some)`).
    fn serve(
        &mut self,
        reader: &mut JournalReader,
        mut max: usize,
    ) -> Result<(), Option<MessagesError>> {
        let gone = |_: Gone| None;
        loop {
            let Some(mut txn) = reader.next_txn().map_err(|e| Some(e.into()))? else {
                max = self.answer(Ok(None)).map_err(gone)?;
                continue;
            };
            let ctx = TxnContext::from(txn.begin());
            let commit_lsn = ctx.commit_lsn;
            let mut seq = 0u32;
            let mut out: Vec<Mutation> = Vec::new();
            let mut end_lsn = None;
            while let Some(m) = txn.next_message().map_err(|e| Some(e.into()))? {
                let ms = self
                    .translate(&m, &ctx, &mut seq, &mut end_lsn)
                    .map_err(Some)?;
                out.extend(
                    ms.into_iter()
                        .filter(|mu| !self.after.covers(mu.commit_lsn, mu.seq)),
                );
                while out.len() >= max {
                    let rest = out.split_off(max);
                    let batch = partial(commit_lsn, std::mem::replace(&mut out, rest));
                    max = self.answer(Ok(Some(batch))).map_err(gone)?;
                }
            }
            // A Truncate may have added several messages at once: keep to the size asked for.
            while out.len() > max {
                let rest = out.split_off(max);
                let batch = partial(commit_lsn, std::mem::replace(&mut out, rest));
                max = self.answer(Ok(Some(batch))).map_err(gone)?;
            }
            let last = Batch {
                commit_lsn,
                end_lsn,
                messages: out,
                last_of_txn: true,
                through: Cursor { commit_lsn, seq },
            };
            max = self.answer(Ok(Some(last))).map_err(gone)?;
        }
    }

    /// The messages of one journaled pgoutput message (none for most kinds).
    fn translate(
        &mut self,
        m: &crate::journal::JournalMessage,
        ctx: &TxnContext,
        seq: &mut u32,
        end_lsn: &mut Option<Lsn>,
    ) -> Result<Vec<Mutation>, MessagesError> {
        let commit_lsn = ctx.commit_lsn;
        let lsn = m.lsn;
        let msg = m.decode().map_err(|source| MessagesError::Decode {
            lsn,
            commit_lsn,
            source,
        })?;
        let unknown = |rel| MessagesError::UnknownRelation {
            lsn,
            commit_lsn,
            rel,
        };
        let translate_err = |source: TranslateError| MessagesError::Translate {
            lsn,
            commit_lsn,
            source,
        };
        match &msg {
            Message::Relation(r) => {
                self.relations.insert(r.clone());
                Ok(Vec::new())
            }
            Message::Commit(c) => {
                *end_lsn = Some(c.end_lsn);
                Ok(Vec::new())
            }
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) => {
                let rel_id = match &msg {
                    Message::Insert(i) => i.rel,
                    Message::Update(u) => u.rel,
                    Message::Delete(d) => d.rel,
                    _ => unreachable!("matched a row change above"),
                };
                let rel = self.relations.get(rel_id).ok_or_else(|| unknown(rel_id))?;
                *seq = seq.saturating_add(1);
                let mutation = translate_change(rel, &msg, ctx, *seq, lsn, &self.rules)
                    .map_err(translate_err)?;
                Ok(mutation.into_iter().collect())
            }
            Message::Truncate(t) => {
                let rels: Vec<&Relation> = t
                    .rels
                    .iter()
                    .map(|&id| self.relations.get(id).ok_or_else(|| unknown(id)))
                    .collect::<Result<_, _>>()?;
                let first = seq.saturating_add(1);
                let ms = translate_truncate(&rels, t, ctx, first, lsn, &self.rules)
                    .map_err(translate_err)?;
                *seq = seq.saturating_add(t.rels.len() as u32);
                Ok(ms)
            }
            Message::Begin(_)
            | Message::Origin(_)
            | Message::Type(_)
            | Message::LogicalMessage(_) => Ok(Vec::new()),
        }
    }
}

/// Runs `f` to completion on this thread, parking it while `f` waits (for the reader thread).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// A full batch that does not end its transaction; `messages` is not empty.
fn partial(commit_lsn: Lsn, messages: Vec<Mutation>) -> Batch {
    let seq = messages.last().map_or(0, |m| m.seq);
    Batch {
        commit_lsn,
        end_lsn: None,
        messages,
        last_of_txn: false,
        through: Cursor { commit_lsn, seq },
    }
}

mod tail;
#[cfg(test)]
mod tests;

pub use tail::{Tail, TailMode};
