//! Checks made before bootstrap creates anything: every problem found is reported at once, each
//! with its fix, and nothing is left behind.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::ident::quote_ident;

/// Everything preflight learned that bootstrap needs later.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// The publication already exists (else bootstrap creates it FOR ALL TABLES).
    pub publication_exists: bool,
    /// The slot already exists and `--force` asked to replace it.
    pub drop_old_slot: bool,
    /// The standby holds objects that `--force` asked to drop.
    pub clean_standby: bool,
}

pub(super) struct Preflight<'a> {
    pub primary: &'a Client,
    pub standby: &'a Client,
    pub slot: &'a str,
    pub publication: &'a str,
    pub force: bool,
}

impl Preflight<'_> {
    /// Run every check; `Err` lists every problem, one per line, each with its fix.
    pub async fn run(&self) -> Result<Findings> {
        let mut problems: Vec<String> = Vec::new();
        let mut findings = Findings::default();
        let p = self.primary;

        let wal_level: String = p.query_one("SHOW wal_level", &[]).await?.get(0);
        if wal_level != "logical" {
            problems.push(format!(
                "the primary has wal_level = {wal_level}; run ALTER SYSTEM SET wal_level = logical \
                 on it and restart PostgreSQL"
            ));
        }
        let role = p
            .query_one(
                "SELECT rolsuper, rolreplication, current_user::text FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        let (superuser, replication, user): (bool, bool, String) =
            (role.get(0), role.get(1), role.get(2));
        if !superuser && !replication {
            problems.push(format!(
                "role {user} on the primary may not use replication; run ALTER ROLE {} REPLICATION \
                 (and allow it in pg_hba.conf: host replication {user} …)",
                quote_ident(&user)
            ));
        }

        let slot_row = p
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        let limits = p
            .query_one(
                "SELECT current_setting('max_replication_slots')::int - \
                        (SELECT count(*) FROM pg_replication_slots)::int, \
                        current_setting('max_wal_senders')::int - \
                        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int",
                &[],
            )
            .await?;
        let (free_slots, free_senders): (i32, i32) = (limits.get(0), limits.get(1));
        match slot_row {
            Some(row) if self.force => {
                let active: bool = row.get(0);
                if active {
                    problems.push(format!(
                        "replication slot {} is in use by a running follower; stop it first",
                        self.slot
                    ));
                }
                findings.drop_old_slot = true;
            }
            Some(_) => problems.push(format!(
                "replication slot {slot} already exists on the primary (from an earlier bootstrap?); \
                 pass --force to replace it, or drop it with SELECT pg_drop_replication_slot('{slot}')",
                slot = self.slot
            )),
            None if free_slots < 1 => problems.push(
                "the primary has no free replication slot; raise max_replication_slots and restart \
                 it, or drop an unused slot with pg_drop_replication_slot()"
                    .to_string(),
            ),
            None => {}
        }
        if free_senders < 2 {
            problems.push(format!(
                "the primary has {free_senders} free WAL sender(s), bootstrap and follow need 2; \
                 raise max_wal_senders and restart it"
            ));
        }

        findings.publication_exists = p
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.publication],
            )
            .await?
            .is_some();
        if !findings.publication_exists && !superuser {
            problems.push(format!(
                "publication {pub} does not exist and only a superuser may create one FOR ALL \
                 TABLES; create it as one (CREATE PUBLICATION {q} FOR ALL TABLES) or pass \
                 --publication with an existing one",
                pub = self.publication,
                q = quote_ident(self.publication)
            ));
        }

        for line in self.tables_without_identity().await? {
            problems.push(line);
        }
        let unreadable = p
            .query(
                &format!(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid IN ({}) \
                     AND NOT has_table_privilege(c.oid, 'SELECT') ORDER BY 1",
                    self.published_oids_sql()
                ),
                &[],
            )
            .await?;
        for row in unreadable {
            let t: String = row.get(0);
            problems.push(format!(
                "role {user} cannot read {t} on the primary; run GRANT SELECT ON {t} TO {}",
                quote_ident(&user)
            ));
        }

        self.check_standby(&mut problems, &mut findings).await?;

        if problems.is_empty() {
            Ok(findings)
        } else {
            let n = problems.len();
            anyhow::bail!(
                "preflight found {n} problem{}; nothing was changed:\n  - {}",
                if n == 1 { "" } else { "s" },
                problems.join("\n  - ")
            )
        }
    }

    /// SQL for the OIDs of the tables the publication covers (or would cover, FOR ALL TABLES).
    fn published_oids_sql(&self) -> String {
        format!(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {lit}) \
                    AND (n.nspname, c.relname) IN (SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {lit})) \
                OR (NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {lit}) \
                    AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'understudy') \
                    AND n.nspname NOT LIKE 'pg\\_%') \
                OR (NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {lit}) \
                    AND c.relkind = 'r' AND c.relispartition AND c.relpersistence = 'p' \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'understudy'))",
            lit = crate::ident::quote_literal(self.publication)
        )
    }

    /// Published tables whose UPDATEs and DELETEs the primary would refuse, or the standby could
    /// not find: no primary key and replica identity DEFAULT, or identity NOTHING.
    async fn tables_without_identity(&self) -> Result<Vec<String>> {
        let rows = self
            .primary
            .query(
                &format!(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.oid IN ({}) AND c.relkind = 'r' AND ( c.relreplident = 'n' OR \
                       (c.relreplident = 'd' AND NOT EXISTS \
                         (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                     ORDER BY 1",
                    self.published_oids_sql()
                ),
                &[],
            )
            .await
            .context("while looking for tables without replica identity")?;
        Ok(rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                format!(
                    "table {name} has no primary key and no replica identity, so its \
                     UPDATEs and DELETEs cannot be replicated; run ALTER TABLE {name} REPLICA \
                     IDENTITY FULL (or add a primary key) on the primary"
                )
            })
            .collect())
    }

    async fn check_standby(
        &self,
        problems: &mut Vec<String>,
        findings: &mut Findings,
    ) -> Result<()> {
        let s = self.standby;
        let role = s
            .query_one(
                "SELECT rolsuper OR has_parameter_privilege('session_replication_role', 'SET'), \
                        current_user::text \
                 FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        let (may_apply, user): (bool, String) = (role.get(0), role.get(1));
        if !may_apply {
            problems.push(format!(
                "role {user} on the standby may not set session_replication_role (needed so the \
                 standby's triggers do not fire twice); run GRANT SET ON PARAMETER \
                 session_replication_role TO {} as a superuser there, or use a superuser",
                quote_ident(&user)
            ));
        }
        let occupied: i64 = s
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_%'",
                &[],
            )
            .await?
            .get(0);
        if occupied > 0 {
            if self.force {
                findings.clean_standby = true;
            } else {
                let state = crate::state::read_source(s).await.ok().flatten();
                problems.push(match state {
                    Some(src) if src.state == crate::state::SourceState::Copying => format!(
                        "the standby holds a bootstrap that started at {} and did not finish (its \
                         snapshot is gone, so it cannot be resumed consistently); pass --force to \
                         drop it and copy again",
                        src.started_at
                    ),
                    Some(_) => "the standby is already bootstrapped; run `understudy follow`, or \
                                pass --force to drop it and copy again"
                        .to_string(),
                    None => format!(
                        "the standby database already holds {occupied} table(s); point --standby at \
                         an empty database, or pass --force to drop every schema in it first"
                    ),
                });
            }
        }
        // Roles are global objects that pg_dump does not copy: owners must exist on the standby.
        let owners = self
            .primary
            .query(
                "SELECT DISTINCT r.rolname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'understudy') \
                   AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
                &[],
            )
            .await?;
        for row in owners {
            let owner: String = row.get(0);
            let exists = s
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&owner])
                .await?
                .is_some();
            if !exists {
                problems.push(format!(
                    "role {owner} owns tables on the primary but does not exist on the standby; run \
                     CREATE ROLE {} on the standby",
                    quote_ident(&owner)
                ));
            }
        }
        Ok(())
    }
}
