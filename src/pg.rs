//! Connections to PostgreSQL: ordinary SQL (tokio-postgres) and logical replication (our own).
//!
//! * [`conninfo`]: a DSN plus the libpq environment (PG* variables, pgpass) resolved into a
//!   [`ConnInfo`](conninfo::ConnInfo); `ConnInfo::connect` opens an ordinary SQL connection.
//! * [`tls`]: rustls settings per libpq `sslmode`.
//! * [`replication`]: the replication-protocol client (IDENTIFY_SYSTEM, slots, START_REPLICATION,
//!   XLogData, keepalives, status updates).
//! * [`PgError`]: every failure, sorted into transient (retry) and definite (tell the operator).
//!
//! Both kinds of connection open their socket and TLS through one path (`socket`), so `sslmode`,
//! host lists and `connect_timeout` mean the same for both, as they do in libpq
//! (<https://www.postgresql.org/docs/15/libpq-connect.html>).
//!
//! Invariant: no password reaches a log line or an error message; servers are named by
//! [`ConnInfo::redacted`](conninfo::ConnInfo::redacted).

pub mod conninfo;
mod error;
mod pgpass;
pub mod replication;
mod socket;
mod sql;
pub mod tls;

pub use error::PgError;
