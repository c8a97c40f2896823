//! Cluster state: each database's own role and epoch, in schema `understudy` (`sql/roles.sql`).
//!
//! * `understudy.node`: one row, this database's node name, role and epoch.
//! * `understudy.epoch_history`: every epoch this database entered, with the promotion point
//!   (its own WAL position once the reverse slot existed, and how far it had applied the old
//!   primary's stream), which a rejoining old primary compares its WAL against.
//!
//! Invariants: the role and the epoch change in one transaction, with their history row; the
//! epoch never goes down. The row is read with `FOR UPDATE` before it changes, so two
//! concurrent promotions of one database serialise and the second sees the first's epoch.
//!
//! Reading never creates anything ([`read_state`] on a peer's database leaves it untouched);
//! the writers create the schema idempotently first.

use anyhow::{anyhow, Context, Result};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::{Epoch, Role};
use crate::lsn::Lsn;

/// The SQL that creates the role tables (idempotent).
pub const SCHEMA_SQL: &str = include_str!("../../sql/roles.sql");

/// The `understudy.node` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub epoch: Epoch,
    /// `updated_at` as text (ISO, UTC).
    pub updated_at: String,
}

/// Where a promotion happened, for `understudy.epoch_history`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromotionPoint {
    /// This database's WAL position once the reverse slot existed.
    pub promotion_lsn: Option<Lsn>,
    /// How far this database had applied the old primary's stream (an LSN of the old primary).
    pub source_applied_lsn: Option<Lsn>,
}

const SELECT_NODE: &str = "SELECT name, role, epoch, \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
     FROM understudy.node WHERE id = 1";

/// Create the role tables (and schema `understudy`) when missing.
pub async fn install(client: &impl GenericClient) -> Result<()> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("while creating understudy's role tables")
}

/// This database's node row, or `None` when understudy never recorded one here.
pub async fn read_state(client: &impl GenericClient) -> Result<Option<NodeRecord>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('understudy.node') IS NOT NULL", &[])
        .await
        .context("while looking for understudy.node")?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(SELECT_NODE, &[])
        .await
        .context("while reading understudy.node")?;
    row.map(|r| record(&r)).transpose()
}

/// This database's node row, created as `name` in `role` at epoch 0 when there is none.
pub async fn ensure_node(
    client: &impl GenericClient,
    name: &str,
    role: Role,
) -> Result<NodeRecord> {
    install(client).await?;
    client
        .execute(
            "INSERT INTO understudy.node (id, name, role, epoch) VALUES (1, $1, $2, 0) \
             ON CONFLICT (id) DO NOTHING",
            &[&name, &role.as_str()],
        )
        .await
        .context("while recording this node in understudy.node")?;
    read_state(client)
        .await?
        .ok_or_else(|| anyhow!("understudy.node has no row right after it was written"))
}

/// Take `role` at an epoch above both this database's and `above` (the highest seen on the
/// peer), with its history row, in one transaction. Returns the new row.
pub async fn bump_epoch(
    client: &mut Client,
    role: Role,
    above: Epoch,
    point: PromotionPoint,
) -> Result<NodeRecord> {
    install(client).await?;
    let tx = client.transaction().await?;
    let record = bump_epoch_in(&tx, role, above, point).await?;
    tx.commit()
        .await
        .context("while committing the new epoch")?;
    Ok(record)
}

/// [`bump_epoch`] inside the caller's transaction, so the caller's other changes (lifting
/// read-only) commit with it or not at all.
pub(crate) async fn bump_epoch_in(
    tx: &Transaction<'_>,
    role: Role,
    above: Epoch,
    point: PromotionPoint,
) -> Result<NodeRecord> {
    let current = locked(tx).await?;
    let epoch = current.epoch.max(above).next();
    change(tx, &current.name, role, epoch, point).await
}

/// Record `role` without a promotion (fencing, rejoining), taking `at_least` as the epoch when
/// it is higher than this database's (a rejoining node adopts its new primary's epoch).
pub async fn record_role(client: &mut Client, role: Role, at_least: Epoch) -> Result<NodeRecord> {
    install(client).await?;
    let tx = client.transaction().await?;
    let current = locked(&tx).await?;
    let epoch = current.epoch.max(at_least);
    let record = change(&tx, &current.name, role, epoch, PromotionPoint::default()).await?;
    tx.commit()
        .await
        .context("while committing the role change")?;
    Ok(record)
}

/// The node row, locked for the rest of the transaction.
async fn locked(tx: &Transaction<'_>) -> Result<NodeRecord> {
    let row = tx
        .query_opt(&format!("{SELECT_NODE} FOR UPDATE"), &[])
        .await
        .context("while locking understudy.node")?
        .ok_or_else(|| {
            anyhow!(
                "this database has no understudy.node row; record the node first \
                 (role::node::ensure_node)"
            )
        })?;
    record(&row)
}

async fn change(
    tx: &Transaction<'_>,
    name: &str,
    role: Role,
    epoch: Epoch,
    point: PromotionPoint,
) -> Result<NodeRecord> {
    tx.execute(
        "UPDATE understudy.node SET role = $1, epoch = $2, updated_at = now() WHERE id = 1",
        &[&role.as_str(), &epoch.0],
    )
    .await
    .context("while recording the role in understudy.node")?;
    let record = record(
        &tx.query_one(SELECT_NODE, &[])
            .await
            .context("while reading understudy.node back")?,
    )?;
    let lsn = |l: Option<Lsn>| l.map(|l| l.to_string());
    tx.execute(
        "INSERT INTO understudy.epoch_history (epoch, node, role, promotion_lsn, source_applied_lsn) \
         VALUES ($1, $2, $3, $4::text::pg_lsn, $5::text::pg_lsn) \
         ON CONFLICT (epoch) DO UPDATE SET node = EXCLUDED.node, role = EXCLUDED.role, \
             promotion_lsn = coalesce(EXCLUDED.promotion_lsn, understudy.epoch_history.promotion_lsn), \
             source_applied_lsn = coalesce(EXCLUDED.source_applied_lsn, \
                                           understudy.epoch_history.source_applied_lsn), \
             at = now()",
        &[
            &epoch.0,
            &name,
            &role.as_str(),
            &lsn(point.promotion_lsn),
            &lsn(point.source_applied_lsn),
        ],
    )
    .await
    .context("while recording the epoch in understudy.epoch_history")?;
    Ok(record)
}

fn record(row: &tokio_postgres::Row) -> Result<NodeRecord> {
    let role: String = row.get(1);
    Ok(NodeRecord {
        name: row.get(0),
        role: role.parse().context("while reading understudy.node.role")?,
        epoch: Epoch(row.get(2)),
        updated_at: row.get(3),
    })
}
