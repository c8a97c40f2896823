//! The `notify` sink: one `NOTIFY channel, payload` per message on the standby database, a batch
//! in one statement (so in one transaction: listeners get the whole batch, in order, or none).
//!
//! PostgreSQL limits a payload to less than 8000 bytes
//! (<https://www.postgresql.org/docs/15/sql-notify.html>); a message whose JSON is longer is
//! sent as a reference a listener can look up (in the stream, `replay` or the database):
//! `{"id":…,"kind":…,"entity":…,"table":…,"key":…,"truncated":true}`, without `key` if even that
//! is too long. `pg_notify` needs no privilege and works in read-only transactions, so the
//! standby's read-only guard does not stop it.

use anyhow::Context;
use serde_json::json;
use tokio_postgres::Client;

use crate::messages::to_json;
use crate::pg::conninfo::ConnInfo;
use crate::pg::PgError;
use crate::translate::Mutation;

/// The longest payload sent whole, in bytes: PostgreSQL's limit is 8000 minus a little.
pub const MAX_NOTIFY_PAYLOAD: usize = 7900;

const NOTIFY_SQL: &str =
    "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i";

/// The payload of `m`: its JSON, or a reference to it when that is over [`MAX_NOTIFY_PAYLOAD`].
pub fn notify_payload(m: &Mutation) -> String {
    let full = to_json(m);
    if full.len() <= MAX_NOTIFY_PAYLOAD {
        return full;
    }
    let reference = json!({
        "id": m.id(), "kind": m.kind, "entity": m.entity, "table": m.table,
        "key": m.key, "truncated": true,
    })
    .to_string();
    if reference.len() <= MAX_NOTIFY_PAYLOAD {
        return reference;
    }
    json!({ "id": m.id(), "kind": m.kind, "entity": m.entity, "table": m.table, "truncated": true })
        .to_string()
}

pub(super) struct Target {
    info: ConnInfo,
    channel: String,
    client: Option<Client>,
}

impl Target {
    pub(super) fn new(info: ConnInfo, channel: String) -> Target {
        Target {
            info,
            channel,
            client: None,
        }
    }
}

impl super::Deliver for Target {
    async fn deliver(&mut self, messages: &[Mutation]) -> anyhow::Result<()> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self
                .info
                .connect("understudy notify")
                .await
                .with_context(|| format!("while connecting to {}", self.info.redacted()))?,
        };
        let payloads: Vec<String> = messages.iter().map(notify_payload).collect();
        client
            .execute(NOTIFY_SQL, &[&self.channel, &payloads])
            .await
            .map_err(PgError::from)
            .with_context(|| {
                format!(
                    "while notifying channel {} on {}",
                    self.channel,
                    self.info.redacted()
                )
            })?;
        self.client = Some(client);
        Ok(())
    }
}
