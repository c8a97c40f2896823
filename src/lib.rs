//! understudy keeps a standby network management system (NMS) hot at the database level.
//!
//! ```text
//! primary PG ──replication conn (pgoutput)──▶ source ─▶ decode ─▶ apply ─▶ standby PG
//!                                               ▲                    │
//!                                               └── ack: flush LSN ◀─┘
//! bootstrap: slot + exported snapshot ─▶ schema (pre-data) ─▶ parallel COPY ─▶ schema (post-data) ─▶ start LSN
//! ```
//!
//! * [`pg`] owns connections: ordinary SQL (tokio-postgres) and the replication protocol.
//! * [`decode`] turns pgoutput bytes into typed messages, without I/O.
//! * [`bootstrap`] makes the consistent initial copy.
//! * [`apply`] turns source transactions into standby transactions, exactly once.
//! * [`follow`] runs the stream: source, decode, apply, acknowledgements.
//! * [`state`] is understudy's own schema on the standby.
//! * [`status`] and [`check`] report lag and compare the two databases.
//! * [`cluster`] starts throwaway PostgreSQL clusters for the demo, the benchmark and the tests.
//! * [`bench`] measures understudy against pg_dump/pg_restore and native logical replication.

pub mod apply;
pub mod bench;
pub mod bootstrap;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod decode;
pub mod demo;
pub mod follow;
pub mod http;
pub mod ident;
pub mod journal;
pub mod lsn;
pub mod messages;
pub mod notify;
pub mod pg;
pub mod replay;
pub mod role;
pub mod sidecar;
pub mod state;
pub mod status;
pub mod translate;
