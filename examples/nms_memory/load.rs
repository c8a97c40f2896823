//! Reads an [`NmsModel`] from a database in one REPEATABLE READ snapshot (the only I/O of the
//! model, kept out of `model.rs` so that file stays free of database code).
#![allow(dead_code)]

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::model::{
    parse_lsn, AlarmRow, ElementRow, InterfaceRow, NmsModel, LOAD_ALARMS_SQL, LOAD_APPLIED_LSN_SQL,
    LOAD_ELEMENTS_SQL, LOAD_INTERFACES_SQL, LOAD_SESSION_SQL,
};

/// Which side the model is read from, and so which LSN comes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The standby: the LSN is `understudy.progress.applied_lsn`, where to stream from.
    Standby,
    /// The primary: the LSN is `pg_current_wal_lsn()` (for reference only).
    Primary,
}

/// The model as of one snapshot of `client`'s database, and the LSN of that snapshot.
pub async fn load(client: &Client, side: Side) -> Result<(NmsModel, u64)> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .context("while starting the load transaction")?;
    let loaded = read(client, side).await;
    let end = if loaded.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client
        .batch_execute(end)
        .await
        .context("while ending the load transaction")?;
    loaded
}

async fn read(client: &Client, side: Side) -> Result<(NmsModel, u64)> {
    client.batch_execute(LOAD_SESSION_SQL).await?;
    let lsn_sql = match side {
        Side::Standby => LOAD_APPLIED_LSN_SQL,
        Side::Primary => "SELECT pg_current_wal_lsn()::text",
    };
    let lsn: String = client
        .query_opt(lsn_sql, &[])
        .await
        .with_context(|| {
            format!(
                "while reading the {} position (is this database bootstrapped by understudy?)",
                if side == Side::Standby {
                    "standby's applied"
                } else {
                    "primary's WAL"
                }
            )
        })?
        .context("understudy.progress has no row: bootstrap the standby first")?
        .get(0);
    let lsn = parse_lsn(&lsn).with_context(|| format!("{lsn:?} is not an LSN"))?;
    let elements = client
        .query(LOAD_ELEMENTS_SQL, &[])
        .await
        .context("while reading nms.network_element")?
        .iter()
        .map(|r| ElementRow {
            id: r.get(0),
            name: r.get(1),
            status: r.get(2),
            site: r.get(3),
        })
        .collect::<Vec<_>>();
    let interfaces = client
        .query(LOAD_INTERFACES_SQL, &[])
        .await
        .context("while reading nms.interface")?
        .iter()
        .map(|r| InterfaceRow {
            ne_id: r.get(0),
            if_index: r.get(1),
            oper_up: r.get(2),
        })
        .collect::<Vec<_>>();
    let alarms = client
        .query(LOAD_ALARMS_SQL, &[])
        .await
        .context("while reading nms.alarm")?
        .iter()
        .map(|r| AlarmRow {
            id: r.get(0),
            ne_id: r.get(1),
            if_index: r.get(2),
            probable_cause: r.get(3),
            severity: r.get(4),
            acknowledged: r.get(5),
            raised_at: r.get(6),
        })
        .collect::<Vec<_>>();
    Ok((NmsModel::load(elements, interfaces, alarms), lsn))
}
