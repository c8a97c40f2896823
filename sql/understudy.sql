-- understudy's own state on the standby database, in its own schema.
-- Created by `understudy bootstrap`; read and written by `follow`, `status` and `check`.
CREATE SCHEMA IF NOT EXISTS understudy;

-- Where the standby's data came from: one row.
CREATE TABLE IF NOT EXISTS understudy.source (
    id                    int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    primary_system_id     text        NOT NULL,
    primary_timeline      int         NOT NULL,
    primary_dbname        text        NOT NULL,
    slot_name             text        NOT NULL,
    publication           text        NOT NULL,
    consistent_point      pg_lsn      NOT NULL,
    -- 'copying' while bootstrap runs, 'ready' once the copy is complete and streaming may start.
    state                 text        NOT NULL CHECK (state IN ('copying', 'ready')),
    started_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz
);

-- How far the standby has applied the primary's stream: one row, written in the same
-- transaction as the changes it covers (exactly-once apply).
CREATE TABLE IF NOT EXISTS understudy.progress (
    id                    int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    -- Every primary transaction that committed before this LSN is applied.
    applied_lsn           pg_lsn      NOT NULL,
    -- The last applied source transaction, when there is one.
    last_commit_lsn       pg_lsn,
    last_commit_time      timestamptz,
    last_xid              bigint,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- What bootstrap copied, per table part.
CREATE TABLE IF NOT EXISTS understudy.bootstrap_table (
    relation              text        NOT NULL,
    part                  int         NOT NULL,
    rows                  bigint      NOT NULL,
    bytes                 bigint      NOT NULL,
    seconds               double precision NOT NULL,
    PRIMARY KEY (relation, part)
);
