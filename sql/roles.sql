-- understudy's role state, on whichever database understudy manages (primary or standby).
-- Created idempotently by `role::node::install` (promote, make_read_only, bump_epoch call it).
--
-- Caution: a publication FOR ALL TABLES on this database publishes these tables too. A follower
-- must never apply changes to schema `understudy` that it receives from its peer: each
-- database's rows here describe that database alone.
CREATE SCHEMA IF NOT EXISTS understudy;

-- This database's node: one row. `role` and `epoch` change together, in one transaction.
CREATE TABLE IF NOT EXISTS understudy.node (
    id          int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('standby', 'primary', 'fenced')),
    -- Raised by every promotion; a node that sees a peer with a higher epoch fences itself.
    epoch       bigint      NOT NULL CHECK (epoch >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every epoch this database entered, and where: the promotion point that a rejoining old
-- primary compares its own WAL against (guarantee 7).
CREATE TABLE IF NOT EXISTS understudy.epoch_history (
    epoch               bigint      PRIMARY KEY CHECK (epoch >= 0),
    node                text        NOT NULL,
    role                text        NOT NULL CHECK (role IN ('standby', 'primary', 'fenced')),
    -- On a promotion: this database's WAL position once the reverse slot existed.
    promotion_lsn       pg_lsn,
    -- On a promotion: how far this database had applied the old primary's stream (an LSN of
    -- the old primary's WAL): everything the old primary committed later is not here.
    source_applied_lsn  pg_lsn,
    at                  timestamptz NOT NULL DEFAULT now()
);

-- Write privileges that `make_read_only` revoked, exactly as they were (table- or
-- column-level), so that `lift_read_only` can grant back precisely these.
CREATE TABLE IF NOT EXISTS understudy.recorded_grant (
    table_schema  text        NOT NULL,
    table_name    text        NOT NULL,
    -- '' for a table-level privilege, else the column it is on.
    column_name   text        NOT NULL DEFAULT '',
    -- '' means PUBLIC (role names are never empty).
    grantee       text        NOT NULL,
    grantor       text        NOT NULL,
    privilege     text        NOT NULL CHECK (privilege IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    grantable     boolean     NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_schema, table_name, column_name, grantee, grantor, privilege)
);
