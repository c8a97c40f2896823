//! Turns pgoutput protocol-version-1 messages into typed [`Message`]s, without I/O.
//!
//! What it owns: decoding one pgoutput message (the payload of one XLogData, or one `data` row of
//! `pg_logical_slot_peek_binary_changes`) with [`parse`], and the vocabulary the later stages
//! share: [`RelId`], [`Xid`], [`Relation`] with its SQL-quoted name, [`Tuple`], [`Datum`] and the
//! [`RelationCache`] a stream keeps. The wire layout is
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//!
//! Invariants:
//! * [`parse`] never panics, whatever the input: every read is bounds-checked, and a declared
//!   count or length is checked against the bytes that remain before anything is allocated (a
//!   message claiming 60 000 columns or four billion relations costs nothing). Every failure is a
//!   [`DecodeError`] naming the message kind, the byte offset and what was expected there.
//! * Decoding is strict: a message must be consumed exactly (trailing bytes are an error), and
//!   unknown flag bits, replica identities and column kinds are errors, because guessing would
//!   mean applying a change understudy does not understand.
//! * Values are zero-copy: [`Datum::Text`] and [`Datum::Binary`] are `Bytes::slice`s of the input.
//!
//! PostgreSQL behaviour relied on (PG 15):
//! * Integers are big-endian. Strings are NUL-terminated and converted to the replication
//!   connection's `client_encoding`, which understudy sets to UTF8, so non-UTF-8 is an error.
//!   Namespace `""` stands for `pg_catalog` ([`Relation::schema`]).
//! * Protocol version 1 has no xid inside Relation, Type, Insert and the other change messages, and
//!   no Stream* or two-phase messages: those appear only when `streaming` or `two_phase` is
//!   requested, which understudy never does, so their tags are [`DecodeError::Unsupported`].
//! * A Relation message comes before the first change to that relation in a session and again
//!   after its definition changes; change messages carry only the OID, hence [`RelationCache`].
//! * [`Datum::UnchangedToast`] (`'u'`) means "keep the current value", never NULL.
//! * An Update carries an old tuple only under REPLICA IDENTITY FULL ([`OldTuple::Full`]) or when
//!   the key changed ([`OldTuple::Key`]: key columns set, the others NULL); otherwise the key is
//!   read from the new tuple.
//! * Timestamps are microseconds since 2000-01-01 UTC ([`pg_time_to_unix_micros`]).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::lsn::Lsn;

#[cfg(test)]
mod encode;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod malformed;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod wire;

/// Decodes one pgoutput (protocol version 1) message.
///
/// `Datum` values in the result share `data`'s buffer. Never panics; see the module invariants.
pub fn parse(data: &Bytes) -> Result<Message, DecodeError> {
    wire::parse(data)
}

/// Microseconds between the PostgreSQL epoch (2000-01-01 UTC) and the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;

/// Converts a PostgreSQL timestamp (µs since 2000-01-01 UTC) to µs since the Unix epoch.
///
/// Saturates instead of overflowing, so PostgreSQL's `infinity` (`i64::MAX`) stays the maximum.
pub fn pg_time_to_unix_micros(t: i64) -> i64 {
    t.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// A relation (table) OID on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelId(pub u32);

impl fmt::Display for RelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A transaction id on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    LogicalMessage(LogicalMessage),
}

impl Message {
    /// The message kind as the PostgreSQL docs name it, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::LogicalMessage(_) => "Message",
        }
    }
}

/// `'B'`: a transaction starts; its changes follow, then a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_time: i64,
    pub xid: Xid,
}

/// `'C'`: the transaction ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL 15 (always 0); kept as sent.
    pub flags: u8,
    /// The LSN of the commit record (equals [`Begin::final_lsn`]).
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: where a restart resumes after this transaction.
    pub end_lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `'O'`: the transaction was replayed on the primary from a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// `'R'`: the shape of a relation, sent before its first change in a session and after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: RelId,
    /// The schema; `""` means `pg_catalog` (see [`Relation::schema`]).
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order tuples list them.
    pub columns: Vec<Column>,
}

impl Relation {
    /// The schema name, with PostgreSQL's `""` for `pg_catalog` spelled out.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        }
    }

    /// The SQL name, each part quoted: `"schema"."table"`.
    pub fn qualified_name(&self) -> String {
        crate::ident::qualified(self.schema(), &self.name)
    }

    /// The unquoted `schema.table`, for messages to people.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema(), self.name)
    }
}

/// `pg_class.relreplident`: which old values UPDATE and DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key, if any.
    Default,
    /// `'n'`: nothing; UPDATE and DELETE fail on the primary if published.
    Nothing,
    /// `'f'`: the whole old row.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

/// One published column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

/// `'Y'`: a non-built-in type a following Relation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// `'I'`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub rel: RelId,
    pub new: Tuple,
}

/// `'U'`: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub rel: RelId,
    /// Present only under REPLICA IDENTITY FULL or when the key changed.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// `'D'`: a deleted row, identified by its old key or whole old row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub rel: RelId,
    pub old: OldTuple,
}

/// The old values an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: the replica identity columns; every other column is [`Datum::Null`].
    Key(Tuple),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

/// `'T'`: relations truncated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub rels: Vec<RelId>,
}

/// `'M'`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// One row's values, in the column order of its [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: a TOASTed value that did not change: keep the current value (not NULL).
    UnchangedToast,
    /// `'t'`: the value in the type's text output form.
    Text(Bytes),
    /// `'b'`: the value in the type's binary send form.
    Binary(Bytes),
}

impl Datum {
    /// The value as text, if it is a text datum holding valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Datum::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// The relations a stream has described so far, by OID. Change messages carry only the OID.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<RelId, Relation>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a relation's current shape, returning the shape it replaces.
    pub fn insert(&mut self, relation: Relation) -> Option<Relation> {
        self.relations.insert(relation.id, relation)
    }

    pub fn get(&self, id: RelId) -> Option<&Relation> {
        self.relations.get(&id)
    }

    pub fn len(&self) -> usize {
        self.relations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

/// A pgoutput message could not be decoded. Definite: the same bytes will fail again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message: expected a 1-byte message tag")]
    Empty,
    #[error(
        "unknown pgoutput message tag 0x{tag:02X} at byte 0: understudy decodes pgoutput \
         protocol version 1 only"
    )]
    UnknownTag { tag: u8 },
    #[error(
        "pgoutput {message} message (tag '{tag}') uses a protocol feature understudy did not \
         request ({feature}); understudy starts replication with proto_version '1' and without \
         streaming or two_phase, so check the START_REPLICATION options"
    )]
    Unsupported {
        tag: char,
        message: &'static str,
        feature: &'static str,
    },
    #[error("pgoutput {message} message truncated at byte {offset}: expected {expected}")]
    Truncated {
        message: &'static str,
        offset: usize,
        expected: String,
    },
    #[error("pgoutput {message} message has invalid {field} at byte {offset}: {problem}")]
    Invalid {
        message: &'static str,
        offset: usize,
        field: &'static str,
        problem: String,
    },
    #[error(
        "pgoutput {message} message has {extra} unexpected bytes after its end at byte {offset}"
    )]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        extra: usize,
    },
}
