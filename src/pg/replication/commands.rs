//! Commands on an idle replication connection: the simple query protocol, IDENTIFY_SYSTEM and
//! CREATE_REPLICATION_SLOT (<https://www.postgresql.org/docs/15/protocol-replication.html>).
//! A walsender accepts only the simple query protocol; a Parse message is refused with 08P01.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;

use super::framing::Frame;
use super::{ReplicationConnection, SlotCreated, SnapshotAction, State, SystemIdentity};
use crate::pg::PgError;

impl ReplicationConnection {
    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().filter(|r| r.len() >= 4).ok_or_else(|| {
            PgError::protocol("IDENTIFY_SYSTEM returned no row of 4 columns").at(&self.info)
        })?;
        let field = |i: usize| row[i].clone().unwrap_or_default();
        let bad = |what: &str| {
            PgError::protocol(format!("IDENTIFY_SYSTEM returned a bad {what}")).at(&self.info)
        };
        Ok(SystemIdentity {
            system_id: field(0),
            timeline: field(1).parse().map_err(|_| bad("timeline"))?,
            xlogpos: field(2).parse().map_err(|_| bad("xlogpos"))?,
            dbname: row[3].clone(),
        })
    }

    /// Run `sql` with the simple query protocol; the rows of the last statement that returned
    /// rows, as text (`None` for NULL). COPY is refused.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        self.expect_state(State::Idle, "simple_query")?;
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.fail(PgError::io(e)))?;
        self.flush().await?;
        let mut current: Option<Vec<Vec<Option<String>>>> = None;
        let mut last = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Frame::Message(Message::RowDescription(_)) => current = Some(Vec::new()),
                Frame::Message(Message::DataRow(row)) => {
                    let row = text_row(&row).map_err(|e| self.fail(e))?;
                    current.get_or_insert_with(Vec::new).push(row);
                }
                Frame::Message(Message::CommandComplete(_)) => {
                    if let Some(rows) = current.take() {
                        last = rows;
                    }
                }
                Frame::Message(Message::EmptyQueryResponse) => {}
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(body.fields())?);
                }
                Frame::Message(Message::CopyInResponse(_)) => {
                    frontend::copy_fail("COPY FROM STDIN is not supported here", &mut self.wbuf)
                        .map_err(|e| self.fail(PgError::io(e)))?;
                    self.flush().await?;
                }
                Frame::Message(Message::CopyOutResponse(_)) | Frame::CopyBothResponse => {
                    frontend::copy_done(&mut self.wbuf);
                    self.flush().await?;
                    error.get_or_insert_with(|| {
                        PgError::protocol("simple_query does not run COPY or START_REPLICATION")
                    });
                }
                Frame::Message(Message::CopyData(_) | Message::CopyDone) => {}
                Frame::Message(Message::ReadyForQuery(_)) => break,
                Frame::Message(other) => return Err(self.unexpected(&other, "a query")),
            }
        }
        match error {
            Some(e) => Err(e.at(&self.info)),
            None => Ok(last),
        }
    }

    /// CREATE_REPLICATION_SLOT "slot" [TEMPORARY] LOGICAL pgoutput (SNAPSHOT '…').
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        snapshot: SnapshotAction,
        temporary: bool,
    ) -> Result<SlotCreated, PgError> {
        let action = match snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Nothing => "nothing",
            SnapshotAction::Use => "use",
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput (SNAPSHOT '{action}')",
            quote_ident(slot),
            if temporary { " TEMPORARY" } else { "" },
        );
        let rows = self.simple_query(&sql).await?;
        let row = rows.first().filter(|r| r.len() >= 3).ok_or_else(|| {
            PgError::protocol("CREATE_REPLICATION_SLOT returned no row").at(&self.info)
        })?;
        let consistent_point = row[1].as_deref().unwrap_or_default().parse().map_err(|_| {
            PgError::protocol("CREATE_REPLICATION_SLOT returned a bad consistent_point")
                .at(&self.info)
        })?;
        Ok(SlotCreated {
            slot_name: row[0].clone().unwrap_or_default(),
            consistent_point,
            snapshot_name: row[2].clone(),
        })
    }
}

fn text_row(row: &DataRowBody) -> Result<Vec<Option<String>>, PgError> {
    let buf = row.buffer();
    let mut out = Vec::new();
    let mut ranges = row.ranges();
    while let Some(range) = ranges.next().map_err(PgError::io)? {
        out.push(match range {
            None => None,
            Some(r) => {
                let bytes = buf.get(r).ok_or_else(|| PgError::protocol("bad DataRow"))?;
                Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| PgError::protocol("a value is not UTF-8"))?,
                )
            }
        });
    }
    Ok(out)
}

/// `"name"`, with `"` doubled: for slot names and option names in replication commands.
pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'value'`, with `'` doubled.
pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("slot"), "\"slot\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("nms_pub,other"), "'nms_pub,other'");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
