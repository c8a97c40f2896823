//! Connections to PostgreSQL: ordinary SQL (tokio-postgres), batched apply and logical replication
//! (our own): the replication client and the apply session share startup and authentication.
//!
//! * [`conninfo`]: a DSN plus the libpq environment (PG* variables, pgpass) resolved into a
//!   [`ConnInfo`](conninfo::ConnInfo); `ConnInfo::connect` opens an ordinary SQL connection.
//! * [`tls`]: rustls settings per libpq `sslmode`.
//! * [`replication`]: the replication-protocol client (IDENTIFY_SYSTEM, slots, START_REPLICATION,
//!   XLogData, keepalives, status updates).
//! * [`session`]: prepared statements in batches over the extended query protocol, one Sync per
//!   batch (the apply path).
//! * [`PgError`]: every failure, sorted into transient (retry) and definite (tell the operator).
//!
//! Every kind of connection opens its socket and TLS through one path (`socket`), so `sslmode`,
//! host lists and `connect_timeout` mean the same for all, as they do in libpq
//! (<https://www.postgresql.org/docs/15/libpq-connect.html>).
//!
//! Invariant: no password reaches a log line or an error message; servers are named by
//! [`ConnInfo::redacted`](conninfo::ConnInfo::redacted).

pub mod conninfo;
mod error;
mod pgpass;
pub mod replication;
pub mod session;
mod socket;
mod sql;
pub mod tls;

pub use error::PgError;
