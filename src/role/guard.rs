//! The read-only standby: the NMS's roles cannot change replicated data while this node is a
//! standby (or fenced), and can again the moment it is promoted, in the sessions they already
//! have open.
//!
//! How: [`make_read_only`] revokes INSERT, UPDATE, DELETE and TRUNCATE on the replicated tables
//! from the configured NMS roles and from PUBLIC (`CASCADE`, so grants those roles passed on go
//! too), after recording in `understudy.recorded_grant` exactly the privileges the revoke
//! removed (table- and column-level, with grantor and grant option), all in one transaction.
//! [`lift_read_only`] grants back precisely those, each by its original grantor, grants whose
//! grantor needs a grant option after the grant that gives it. Nothing else is touched:
//! understudy's own apply session (a superuser or the tables' owner) keeps writing.
//!
//! Why privileges and not `ALTER ROLE … SET default_transaction_read_only = on`: a privilege is
//! checked each time a statement runs, so a REVOKE or GRANT takes effect at its commit for every
//! session, including ones connected before it. A role's `default_transaction_read_only` is
//! copied into a session when it connects: an NMS session opened while the node was standby
//! would stay read-only after promotion until it reconnected, which is exactly the restart the
//! patent's takeover avoids. The price of privileges: the guard covers the tables it was given
//! (replicated tables, not sequences or functions), a superuser role cannot be made read-only
//! at all (refused), a role that owns a table can grant itself back (reported by [`crept_back`]),
//! and a role that writes through membership in another role must have that role listed too
//! (refused, with the role named). See
//! <https://www.postgresql.org/docs/15/ddl-priv.html> and
//! <https://www.postgresql.org/docs/15/sql-revoke.html> (revoking a table privilege revokes the
//! column privileges too).
//!
//! Invariant: while `understudy.recorded_grant` holds rows, the database is read-only for the
//! NMS roles it was made read-only for; after [`lift_read_only`] the grants on those tables are
//! what they were before [`make_read_only`].

use std::fmt;

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::ident::{qualified, quote_ident};

/// Serialises changes to the guard on one database (`pg_advisory_xact_lock`).
const GUARD_LOCK: (i32, i32) = (0x756e_6465, 2);

/// A table, by schema and name (unquoted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    /// `"schema"."name"`.
    pub fn quoted(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One write privilege as it stood before [`make_read_only`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordedGrant {
    pub table: TableName,
    /// `None` for a table-level privilege.
    pub column: Option<String>,
    /// `None` for PUBLIC.
    pub grantee: Option<String>,
    pub grantor: String,
    /// INSERT, UPDATE, DELETE or TRUNCATE.
    pub privilege: String,
    pub grantable: bool,
}

impl RecordedGrant {
    /// The GRANT that gives this privilege back (run as its grantor).
    fn grant_sql(&self) -> String {
        format!(
            "GRANT {}{} ON TABLE {} TO {}{}",
            self.privilege,
            self.column
                .as_deref()
                .map(|c| format!(" ({})", quote_ident(c)))
                .unwrap_or_default(),
            self.table.quoted(),
            self.grantee
                .as_deref()
                .map(quote_ident)
                .unwrap_or_else(|| "PUBLIC".to_string()),
            if self.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        )
    }
}

impl fmt::Display for RecordedGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.privilege, self.table)?;
        if let Some(c) = &self.column {
            write!(f, " ({c})")?;
        }
        write!(
            f,
            " to {} granted by {}",
            self.grantee.as_deref().unwrap_or("PUBLIC"),
            self.grantor
        )?;
        if self.grantable {
            f.write_str(" with grant option")?;
        }
        Ok(())
    }
}

/// What [`make_read_only`] did.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// How many tables are now guarded.
    pub tables: usize,
    /// The privileges this call revoked (and recorded).
    pub revoked: Vec<RecordedGrant>,
}

/// What [`lift_read_only`] did.
#[derive(Clone, Debug, Default)]
pub struct Lifted {
    pub restored: Vec<RecordedGrant>,
    /// Recorded grants that could not be given back, and why (table or role dropped since).
    pub skipped: Vec<String>,
}

/// The tables understudy replicates into this database: every ordinary and partitioned table
/// outside the system schemas and `understudy` (what a publication FOR ALL TABLES covers, plus
/// partitioned parents, through which the NMS may also write).
pub async fn replicated_tables(client: &impl GenericClient) -> Result<Vec<TableName>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'understudy') \
               AND schemaname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
            &[],
        )
        .await
        .context("while listing the replicated tables")?;
    Ok(rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

/// Make `tables` read-only for `roles` and PUBLIC, recording the grants this removes. One
/// transaction; idempotent (a second call finds nothing more to revoke).
pub async fn make_read_only(
    client: &mut Client,
    roles: &[String],
    tables: &[TableName],
) -> Result<ReadOnly> {
    super::node::install(client).await?;
    let tx = client
        .transaction()
        .await
        .context("while starting the read-only transaction")?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&GUARD_LOCK.0, &GUARD_LOCK.1],
    )
    .await?;
    check_roles(&tx, roles).await?;
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let before = write_grants(&tx, &names).await?;
    let grantees: Vec<String> = roles
        .iter()
        .map(|r| quote_ident(r))
        .chain(std::iter::once("PUBLIC".to_string()))
        .collect();
    for chunk in names.chunks(500) {
        tx.batch_execute(&format!(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {} FROM {} CASCADE",
            chunk.join(", "),
            grantees.join(", ")
        ))
        .await
        .context("while revoking the NMS roles' write privileges")?;
    }
    let after = write_grants(&tx, &names).await?;
    let revoked: Vec<RecordedGrant> = before.into_iter().filter(|g| !after.contains(g)).collect();
    for g in &revoked {
        tx.execute(
            "INSERT INTO understudy.recorded_grant \
                 (table_schema, table_name, column_name, grantee, grantor, privilege, grantable) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &g.table.schema,
                &g.table.name,
                &g.column.as_deref().unwrap_or(""),
                &g.grantee.as_deref().unwrap_or(""),
                &g.grantor,
                &g.privilege,
                &g.grantable,
            ],
        )
        .await
        .context("while recording a revoked grant")?;
    }
    let left = write_privileges(&tx, roles, &names).await?;
    if let Some(first) = left.first() {
        bail!(
            "after revoking, {first} (and {} more): the role writes through membership in a role \
             that is not in nms_roles; add that role to nms_roles or revoke the membership. \
             Nothing was changed",
            left.len() - 1
        );
    }
    tx.commit()
        .await
        .context("while committing the read-only standby")?;
    Ok(ReadOnly {
        tables: tables.len(),
        revoked,
    })
}

/// Give back exactly the grants [`make_read_only`] recorded, in one transaction.
pub async fn lift_read_only(client: &mut Client) -> Result<Lifted> {
    super::node::install(client).await?;
    let tx = client
        .transaction()
        .await
        .context("while starting the transaction that lifts read-only")?;
    let lifted = lift_in(&tx).await?;
    tx.commit()
        .await
        .context("while committing the restored grants")?;
    Ok(lifted)
}

/// [`lift_read_only`] inside the caller's transaction (promotion commits it with the epoch).
pub(crate) async fn lift_in(tx: &Transaction<'_>) -> Result<Lifted> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&GUARD_LOCK.0, &GUARD_LOCK.1],
    )
    .await?;
    let mut pending: Vec<RecordedGrant> = tx
        .query(
            "SELECT table_schema, table_name, column_name, grantee, grantor, privilege, grantable \
             FROM understudy.recorded_grant \
             ORDER BY table_schema, table_name, column_name, grantee, privilege",
            &[],
        )
        .await
        .context("while reading understudy.recorded_grant")?
        .iter()
        .map(grant_from_row)
        .collect();
    let mut lifted = Lifted::default();
    // A grant made by a holder of the grant option needs that option back first: pass over the
    // list until nothing more can be granted.
    loop {
        let mut progress = false;
        let mut waiting = Vec::new();
        for g in pending {
            match readiness(tx, &g).await? {
                Readiness::Gone(why) => {
                    lifted.skipped.push(format!("{g}: {why}"));
                    progress = true;
                }
                Readiness::Waiting => waiting.push(g),
                Readiness::Ready { as_owner } => {
                    let sql = if as_owner {
                        g.grant_sql()
                    } else {
                        format!(
                            "SET LOCAL ROLE {}; {}; RESET ROLE",
                            quote_ident(&g.grantor),
                            g.grant_sql()
                        )
                    };
                    tx.batch_execute(&sql)
                        .await
                        .with_context(|| format!("while restoring {g}"))?;
                    lifted.restored.push(g);
                    progress = true;
                }
            }
        }
        pending = waiting;
        if pending.is_empty() || !progress {
            break;
        }
    }
    for g in pending {
        lifted
            .skipped
            .push(format!("{g}: its grantor no longer holds the grant option"));
    }
    tx.execute("DELETE FROM understudy.recorded_grant", &[])
        .await
        .context("while clearing understudy.recorded_grant")?;
    Ok(lifted)
}

/// Every write privilege an NMS role in `roles` holds on a replicated table, directly, through
/// PUBLIC or through membership: "nms_app may INSERT, UPDATE on nms.alarm". Empty while the
/// guard holds; meant for `status` while this node is standby or fenced.
pub async fn crept_back(client: &impl GenericClient, roles: &[String]) -> Result<Vec<String>> {
    let names: Vec<String> = replicated_tables(client)
        .await?
        .iter()
        .map(TableName::quoted)
        .collect();
    write_privileges(client, roles, &names).await
}

enum Readiness {
    /// The table, column or a role is gone.
    Gone(&'static str),
    /// The grantor does not hold the grant option (yet).
    Waiting,
    /// Grant it now: as ourselves when the grantor is the owner (a superuser's GRANT is
    /// recorded as the owner's) or ourselves, else as the grantor.
    Ready { as_owner: bool },
}

async fn readiness(tx: &Transaction<'_>, g: &RecordedGrant) -> Result<Readiness> {
    let row = tx
        .query_one(
            "WITH t AS (SELECT to_regclass($1) AS oid), \
                  r AS (SELECT (SELECT oid FROM pg_roles WHERE rolname = $3) AS grantor) \
             SELECT t.oid IS NOT NULL, \
                    $2 = '' OR EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t.oid \
                                       AND attname = $2 AND attnum > 0 AND NOT attisdropped), \
                    $4 = '' OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $4), \
                    r.grantor IS NOT NULL, \
                    r.grantor = (SELECT relowner FROM pg_class WHERE oid = t.oid) \
                        OR $3 = current_user, \
                    CASE WHEN t.oid IS NULL OR r.grantor IS NULL THEN false \
                         WHEN $2 = '' THEN has_table_privilege(r.grantor, t.oid, $5 || ' WITH GRANT OPTION') \
                         ELSE has_column_privilege(r.grantor, t.oid, $2, $5 || ' WITH GRANT OPTION') END \
             FROM t, r",
            &[
                &g.table.quoted(),
                &g.column.as_deref().unwrap_or(""),
                &g.grantor,
                &g.grantee.as_deref().unwrap_or(""),
                &g.privilege,
            ],
        )
        .await
        .with_context(|| format!("while checking whether {g} can be restored"))?;
    let (table, column, grantee, grantor): (bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(if !table {
        Readiness::Gone("the table no longer exists")
    } else if !column {
        Readiness::Gone("the column no longer exists")
    } else if !grantee {
        Readiness::Gone("the grantee role no longer exists")
    } else if !grantor {
        Readiness::Gone("the grantor role no longer exists")
    } else if row.get::<_, Option<bool>>(4).unwrap_or(false) {
        Readiness::Ready { as_owner: true }
    } else if row.get::<_, bool>(5) {
        Readiness::Ready { as_owner: false }
    } else {
        Readiness::Waiting
    })
}

/// Refuse roles that do not exist or that privileges cannot restrict.
async fn check_roles(tx: &Transaction<'_>, roles: &[String]) -> Result<()> {
    for role in roles {
        let row = tx
            .query_opt("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[role])
            .await
            .context("while looking up the NMS roles")?;
        match row {
            None => bail!(
                "NMS role {role} does not exist on this database; create it (CREATE ROLE {}) or \
                 remove it from nms_roles",
                quote_ident(role)
            ),
            Some(r) if r.get::<_, bool>(0) => bail!(
                "NMS role {role} is a superuser, which no privilege can make read-only; give the \
                 NMS a role without SUPERUSER (ALTER ROLE {} NOSUPERUSER)",
                quote_ident(role)
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every write aclitem on `tables` (quoted names), table- and column-level, for any grantee.
async fn write_grants(
    client: &impl GenericClient,
    tables: &[String],
) -> Result<Vec<RecordedGrant>> {
    let rows = client
        .query(
            "WITH t AS (SELECT unnest($1::text[])::regclass::oid AS oid), \
                  items AS ( \
                 SELECT c.oid, ''::text AS col, a.* FROM t JOIN pg_class c ON c.oid = t.oid \
                   CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
                 UNION ALL \
                 SELECT c.oid, att.attname::text, a.* FROM t JOIN pg_class c ON c.oid = t.oid \
                   JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 \
                                        AND NOT att.attisdropped \
                   CROSS JOIN LATERAL aclexplode(att.attacl) a) \
             SELECT n.nspname::text, c.relname::text, i.col, \
                    CASE WHEN i.grantee = 0 THEN '' ELSE pg_get_userbyid(i.grantee)::text END, \
                    pg_get_userbyid(i.grantor)::text, i.privilege_type, i.is_grantable \
             FROM items i JOIN pg_class c ON c.oid = i.oid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE i.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')",
            &[&tables],
        )
        .await
        .context("while reading the write privileges on the replicated tables")?;
    Ok(rows.iter().map(grant_from_row).collect())
}

/// The effective write privileges of `roles` on `tables` (quoted names), one line per role and
/// table that has any.
async fn write_privileges(
    client: &impl GenericClient,
    roles: &[String],
    tables: &[String],
) -> Result<Vec<String>> {
    let rows = client
        .query(
            "WITH t AS (SELECT unnest($1::text[])::regclass::oid AS oid) \
             SELECT r.rolname::text, format('%I.%I', n.nspname, c.relname), \
                    array_to_string(ARRAY( \
                        SELECT p FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p \
                        WHERE CASE WHEN p IN ('INSERT', 'UPDATE') \
                                   THEN has_any_column_privilege(r.oid, c.oid, p) \
                                   ELSE has_table_privilege(r.oid, c.oid, p) END), ', ') AS privs \
             FROM pg_roles r CROSS JOIN t JOIN pg_class c ON c.oid = t.oid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.rolname = ANY($2::text[]) ORDER BY 1, 2",
            &[&tables, &roles],
        )
        .await
        .context("while checking the NMS roles' write privileges")?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let privs: String = r.get(2);
            (!privs.is_empty()).then(|| {
                format!(
                    "{} may {} on {}",
                    r.get::<_, String>(0),
                    privs,
                    r.get::<_, String>(1)
                )
            })
        })
        .collect())
}

/// A grant from a row of (schema, table, column or '', grantee or '' for PUBLIC, grantor,
/// privilege, grantable): the shape both `understudy.recorded_grant` and the live ACL queries
/// return.
fn grant_from_row(r: &tokio_postgres::Row) -> RecordedGrant {
    let column: String = r.get(2);
    let grantee: String = r.get(3);
    RecordedGrant {
        table: TableName {
            schema: r.get(0),
            name: r.get(1),
        },
        column: (!column.is_empty()).then_some(column),
        grantee: (!grantee.is_empty()).then_some(grantee),
        grantor: r.get(4),
        privilege: r.get(5),
        grantable: r.get(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(column: Option<&str>, grantee: Option<&str>, grantable: bool) -> RecordedGrant {
        RecordedGrant {
            table: TableName::new("Nms", "alarm"),
            column: column.map(str::to_string),
            grantee: grantee.map(str::to_string),
            grantor: "postgres".into(),
            privilege: "UPDATE".into(),
            grantable,
        }
    }

    #[test]
    fn grant_sql_restores_the_exact_privilege() {
        assert_eq!(
            grant(None, Some("nms_app"), false).grant_sql(),
            "GRANT UPDATE ON TABLE \"Nms\".\"alarm\" TO \"nms_app\""
        );
        assert_eq!(
            grant(Some("cleared at"), None, true).grant_sql(),
            "GRANT UPDATE (\"cleared at\") ON TABLE \"Nms\".\"alarm\" TO PUBLIC WITH GRANT OPTION"
        );
    }

    #[test]
    fn recorded_grants_read_plainly() {
        assert_eq!(
            grant(Some("severity"), None, true).to_string(),
            "UPDATE on Nms.alarm (severity) to PUBLIC granted by postgres with grant option"
        );
    }
}
