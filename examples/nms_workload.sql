-- understudy: example NMS workload, run on the primary against the schema of
-- sql/nms_example.sql (load that first; this file only (re)creates functions).
--
-- How the demo drives it
-- ----------------------
-- `understudy demo` opens one or more ordinary sessions to the primary and
-- calls, in a loop, one statement per transaction (autocommit):
--
--     SELECT nms.workload_tick($1);        -- $1 = a counter: 1, 2, 3, ...
--
-- and every so often
--
--     SELECT nms.alarm_storm(20, 8);       -- a site loses power
--
-- Each call is one short source transaction, i.e. one group of NMS mutation
-- messages downstream.  workload_tick(seed) picks an action and a network
-- element from md5 hashes of the seed (nms.prand), so a given seed always
-- chooses the same kind of activity; what it finds to act on (which alarm is
-- open, ...) depends on the current state.  It returns the number of rows it
-- inserted, updated or deleted; alarm_storm does the same.
--
-- Actions of workload_tick, roughly by share of calls:
--   20%  raise an alarm (or, if the same alarm is already open, bump its count
--        and maybe escalate it) + alarm_history row
--   10%  acknowledge the oldest unacknowledged open alarm + history
--   14%  clear an open alarm (cleared_at, severity 'cleared') + history
--    4%  escalate an open alarm one severity step + history
--   12%  status poll: status / last_seen change; going 'down' raises
--        'Node unreachable' and drops interfaces' oper status, coming back
--        clears the outage alarms (one larger transaction)
--    8%  configuration change: network_element.config (jsonb) + config_change
--        row with before/after and a diff
--    5%  rewrite or append to the TOASTed notes column of an element that has
--        large notes
--    7%  inventory poll of an element with large notes: other columns change,
--        notes does not (pgoutput sends it as "unchanged TOAST")
--    6%  purge a few alarms cleared over a minute ago, history rows first
--    4%  ifIndex renumbering: UPDATE interface SET if_index = ... (primary key
--        change) and re-point that interface's open alarms
--   10%  performance samples for now() only
-- and 35% of all calls also insert 1..3 performance samples for now().
-- An action that finds nothing to act on falls back to raising an alarm.
--
-- Concurrency: every call first locks the network element it works on
-- (SELECT ... FOR NO KEY UPDATE) and then only touches that element's rows
-- (interfaces, alarms and their history, samples, config changes).
-- alarm_storm locks all its elements in ascending id order first.  So any
-- number of sessions can call these concurrently without deadlocks or
-- unique-key collisions.  Use READ COMMITTED (the default): under
-- REPEATABLE READ / SERIALIZABLE the row locks can fail with serialization
-- errors.  Both functions return 0 and change nothing on an empty schema.

-- Lock and return one network element, chosen from p_key.  With p_big_notes,
-- prefer elements whose notes are large enough to be stored out of line.
CREATE OR REPLACE FUNCTION nms.workload_pick_element(p_key text, p_big_notes boolean)
RETURNS nms.network_element
LANGUAGE plpgsql AS $fn$
DECLARE
    v_ne     nms.network_element;
    v_max    bigint;
    v_target bigint;
    v_count  integer;
BEGIN
    -- Choose an id without locking, then lock exactly that one row: FOR
    -- UPDATE under OFFSET would also lock the rows skipped by the OFFSET.
    IF p_big_notes THEN
        SELECT count(*) INTO v_count FROM nms.network_element WHERE octet_length(notes) > 4000;
        IF v_count > 0 THEN
            SELECT id INTO v_target FROM nms.network_element
             WHERE octet_length(notes) > 4000
             ORDER BY id OFFSET nms.prand_int(p_key, v_count) LIMIT 1;
            IF FOUND THEN
                SELECT * INTO v_ne FROM nms.network_element WHERE id = v_target FOR NO KEY UPDATE;
                IF FOUND THEN
                    RETURN v_ne;
                END IF;
            END IF;
        END IF;
    END IF;

    SELECT max(id) INTO v_max FROM nms.network_element;
    IF v_max IS NULL THEN
        RETURN NULL;
    END IF;
    v_target := 1 + floor(nms.prand(p_key) * v_max)::bigint;
    SELECT * INTO v_ne FROM nms.network_element WHERE id >= v_target ORDER BY id LIMIT 1 FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO v_ne FROM nms.network_element WHERE id < v_target ORDER BY id DESC LIMIT 1 FOR NO KEY UPDATE;
    END IF;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_ne;
END
$fn$;

-- Insert 1..3 performance samples (counters continue from the last sample)
-- for interfaces of element p_ne_id at now().  Caller holds the element lock.
CREATE OR REPLACE FUNCTION nms.workload_perf(p_key text, p_ne_id bigint)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_rows integer;
BEGIN
    INSERT INTO nms.perf_sample (ne_id, if_index, sampled_at, in_octets, out_octets, cpu_pct, latency_ms)
    SELECT i.ne_id, i.if_index, now(),
           coalesce(last.in_octets, 0)
               + CASE WHEN i.oper_up THEN (coalesce(i.speed_mbps, 1000) * 125000 * 60
                                           * nms.prand(p_key || ':in:' || i.if_index) * 0.5)::bigint ELSE 0 END,
           coalesce(last.out_octets, 0)
               + CASE WHEN i.oper_up THEN (coalesce(i.speed_mbps, 1000) * 125000 * 60
                                           * nms.prand(p_key || ':out:' || i.if_index) * 0.5)::bigint ELSE 0 END,
           (3 + 80 * nms.prand(p_key || ':cpu'))::real,
           CASE WHEN i.oper_up THEN round((0.2 + 25 * nms.prand(p_key || ':lat:' || i.if_index))::numeric, 3)::double precision END
      FROM (SELECT * FROM nms.interface
             WHERE ne_id = p_ne_id
             ORDER BY nms.prand(p_key || ':pick:' || if_index), if_index
             LIMIT 1 + nms.prand_int(p_key || ':n', 3)) AS i
      LEFT JOIN LATERAL (SELECT p.in_octets, p.out_octets
                           FROM nms.perf_sample AS p
                          WHERE p.ne_id = i.ne_id AND p.if_index = i.if_index
                          ORDER BY p.sampled_at DESC
                          LIMIT 1) AS last ON true
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$fn$;

-- Clear every open alarm of element p_ne_id whose cause is in p_causes
-- (with history rows).  Caller holds the element lock.
CREATE OR REPLACE FUNCTION nms.workload_clear_causes(p_ne_id bigint, p_causes text[])
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_rows integer;
BEGIN
    WITH cleared AS (
        UPDATE nms.alarm
           SET severity = 'cleared', cleared_at = now()
         WHERE ne_id = p_ne_id AND cleared_at IS NULL AND probable_cause = ANY (p_causes)
        RETURNING id
    )
    INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
    SELECT id, 'cleared', 'cleared', now() FROM cleared ORDER BY id;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN 2 * v_rows;  -- each cleared alarm: one update, one history insert
END
$fn$;

CREATE OR REPLACE FUNCTION nms.workload_tick(p_seed integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    k          text := 'tick:' || p_seed;
    r          double precision := nms.prand('tick:' || p_seed || ':action');
    v_action   text;
    v_ne       nms.network_element;
    v_rows     integer := 0;
    n          integer;
    v_alarm    nms.alarm;
    v_cause    text;
    v_on_if    boolean;
    v_if       integer;
    v_sev      nms.severity;
    v_ids      bigint[];
    v_status   text;
    v_before   jsonb;
    v_after    jsonb;
    v_diff     text;
    v_who      text := (ARRAY['noc-alice', 'noc-bob', 'noc-chen', 'noc-dara', 'ops-bot'])[1 + nms.prand_int('tick:' || p_seed || ':who', 5)];
BEGIN
    v_action := CASE
        WHEN r < 0.20 THEN 'raise'
        WHEN r < 0.30 THEN 'ack'
        WHEN r < 0.44 THEN 'clear'
        WHEN r < 0.48 THEN 'escalate'
        WHEN r < 0.60 THEN 'status'
        WHEN r < 0.68 THEN 'config'
        WHEN r < 0.73 THEN 'notes'
        WHEN r < 0.80 THEN 'touch'
        WHEN r < 0.86 THEN 'purge'
        WHEN r < 0.90 THEN 'reindex'
        ELSE 'perf'
    END;

    v_ne := nms.workload_pick_element(k || ':ne', v_action IN ('notes', 'touch'));
    IF v_ne.id IS NULL THEN
        RETURN 0;   -- no network elements at all
    END IF;

    ---------------------------------------------------------------- perf
    IF v_action = 'perf' OR nms.prand(k || ':perf') < 0.35 THEN
        v_rows := v_rows + nms.workload_perf(k || ':perf', v_ne.id);
    END IF;

    ---------------------------------------------------------------- status
    IF v_action = 'status' THEN
        r := nms.prand(k || ':status');
        v_status := CASE v_ne.status
            WHEN 'up'       THEN CASE WHEN r < 0.15 THEN 'degraded' WHEN r < 0.25 THEN 'down' ELSE 'up' END
            WHEN 'degraded' THEN CASE WHEN r < 0.60 THEN 'up' WHEN r < 0.75 THEN 'down' ELSE 'degraded' END
            ELSE                 CASE WHEN r < 0.70 THEN 'up' ELSE 'down' END
        END;
        UPDATE nms.network_element
           SET status = v_status,
               last_seen = CASE WHEN v_status = 'down' THEN last_seen ELSE now() END
         WHERE id = v_ne.id;
        GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;

        IF v_status = 'down' AND v_ne.status <> 'down' THEN
            UPDATE nms.interface SET oper_up = false WHERE ne_id = v_ne.id AND oper_up;
            GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
            -- raised below (dedup against an already open one)
            v_action := 'raise';
            v_cause := 'Node unreachable';
            v_on_if := false;
            v_sev := 'critical';
        ELSIF v_status <> 'down' AND v_ne.status = 'down' THEN
            UPDATE nms.interface SET oper_up = admin_up WHERE ne_id = v_ne.id AND oper_up IS DISTINCT FROM admin_up;
            GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
            v_rows := v_rows + nms.workload_clear_causes(
                v_ne.id, ARRAY['Node unreachable', 'Link down', 'Loss of signal', 'Power supply failure']);
        END IF;
    END IF;

    ---------------------------------------------------------------- config
    IF v_action = 'config' THEN
        v_before := v_ne.config;
        v_after := CASE nms.prand_int(k || ':cfg', 5)
            WHEN 0 THEN v_before || jsonb_build_object('firmware',
                            coalesce(v_before ->> 'firmware', '1.0') || '.' || (1 + nms.prand_int(k || ':fw', 9)))
            WHEN 1 THEN v_before || jsonb_build_object('vlans',
                            coalesce(v_before -> 'vlans', '[]'::jsonb) || to_jsonb(200 + nms.prand_int(k || ':vlan', 3800)))
            WHEN 2 THEN v_before || jsonb_build_object('ntp',
                            jsonb_build_array('10.255.0.' || (1 + nms.prand_int(k || ':ntp', 8)), '10.255.1.1'))
            WHEN 3 THEN v_before || jsonb_build_object('syslog',
                            coalesce(v_before -> 'syslog', '{}'::jsonb)
                            || jsonb_build_object('level', (ARRAY['debug', 'info', 'notice', 'warning', 'err'])[1 + nms.prand_int(k || ':lvl', 5)]))
            ELSE v_before || jsonb_build_object('mtu',
                            CASE WHEN (v_before ->> 'mtu') = '9216' THEN 1500 ELSE 9216 END)
        END;
        SELECT E'--- running-config\n+++ candidate-config\n'
               || coalesce(string_agg(format(E'- %s: %s\n+ %s: %s', key, coalesce(b.value::text, '(absent)'),
                                             key, coalesce(a.value::text, '(absent)')), E'\n' ORDER BY key), '(no change)')
          INTO v_diff
          FROM jsonb_each(v_before) AS b FULL JOIN jsonb_each(v_after) AS a USING (key)
         WHERE b.value IS DISTINCT FROM a.value;
        UPDATE nms.network_element SET config = v_after WHERE id = v_ne.id;
        GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
        INSERT INTO nms.config_change (ne_id, changed_by, changed_at, diff, before, after)
        VALUES (v_ne.id, CASE WHEN v_who = 'ops-bot' THEN 'netops-ansible' ELSE v_who END, now(), v_diff, v_before, v_after);
        v_rows := v_rows + 1;
    END IF;

    ---------------------------------------------------------------- notes (TOASTed column itself)
    IF v_action = 'notes' THEN
        IF nms.prand(k || ':notes') < 0.5 OR octet_length(v_ne.notes) > 60000 THEN
            -- rewrite: a fresh 9..15 kB, stored out of line
            UPDATE nms.network_element
               SET notes = 'Site survey and maintenance log for ' || site || E' (rewritten).\n'
                           || nms.filler(k || ':notes', 9000 + nms.prand_int(k || ':len', 6000))
             WHERE id = v_ne.id;
        ELSE
            UPDATE nms.network_element
               SET notes = coalesce(notes, '') || E'\n' || to_char(now(), 'YYYY-MM-DD HH24:MI') || ' ' || v_who || ': '
                           || (ARRAY['replaced PSU B', 'cleaned optics on port 3', 'reseated line card 2',
                                     'escorted vendor engineer', 'updated rack elevation'])[1 + nms.prand_int(k || ':what', 5)]
             WHERE id = v_ne.id;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
    END IF;

    ---------------------------------------------------------------- touch (other columns, notes unchanged)
    IF v_action = 'touch' THEN
        UPDATE nms.network_element
           SET last_seen = now(),
               config = config || jsonb_build_object('inventory_polled_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                                     'uptime_s', nms.prand_int(k || ':uptime', 30000000))
         WHERE id = v_ne.id;
        GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
    END IF;

    ---------------------------------------------------------------- purge old cleared alarms
    IF v_action = 'purge' THEN
        SELECT array_agg(id ORDER BY id) INTO v_ids
          FROM (SELECT id FROM nms.alarm
                 WHERE ne_id = v_ne.id AND cleared_at < now() - interval '1 minute'
                 ORDER BY cleared_at, id
                 LIMIT 1 + nms.prand_int(k || ':purge', 5)) AS old;
        IF v_ids IS NULL THEN
            v_action := 'clear';
        ELSE
            DELETE FROM nms.alarm_history WHERE alarm_id = ANY (v_ids);
            GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
            DELETE FROM nms.alarm WHERE id = ANY (v_ids);
            GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
        END IF;
    END IF;

    ---------------------------------------------------------------- ifIndex renumbering (key change)
    IF v_action = 'reindex' THEN
        SELECT if_index INTO v_if FROM nms.interface
         WHERE ne_id = v_ne.id
         ORDER BY nms.prand(k || ':if:' || if_index), if_index
         LIMIT 1;
        IF NOT FOUND THEN
            v_action := 'raise';
        ELSE
            -- element lock held: nobody else can take max+1 meanwhile
            UPDATE nms.interface
               SET if_index = (SELECT max(if_index) + 1 FROM nms.interface WHERE ne_id = v_ne.id)
             WHERE ne_id = v_ne.id AND if_index = v_if
            RETURNING if_index INTO n;
            v_rows := v_rows + 1;
            UPDATE nms.alarm SET if_index = n
             WHERE ne_id = v_ne.id AND if_index = v_if AND cleared_at IS NULL;
            GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
        END IF;
    END IF;

    ---------------------------------------------------------------- acknowledge
    IF v_action = 'ack' THEN
        SELECT * INTO v_alarm FROM nms.alarm
         WHERE ne_id = v_ne.id AND cleared_at IS NULL AND acknowledged_at IS NULL
         ORDER BY raised_at, id LIMIT 1;
        IF NOT FOUND THEN
            v_action := 'raise';
        ELSE
            UPDATE nms.alarm SET acknowledged_at = now(), acknowledged_by = v_who WHERE id = v_alarm.id;
            INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
            VALUES (v_alarm.id, 'acknowledged', v_alarm.severity, now());
            v_rows := v_rows + 2;
        END IF;
    END IF;

    ---------------------------------------------------------------- clear
    IF v_action = 'clear' THEN
        SELECT * INTO v_alarm FROM nms.alarm
         WHERE ne_id = v_ne.id AND cleared_at IS NULL
         ORDER BY acknowledged_at IS NULL, raised_at, id LIMIT 1;
        IF NOT FOUND THEN
            v_action := 'raise';
        ELSE
            UPDATE nms.alarm SET severity = 'cleared', cleared_at = now() WHERE id = v_alarm.id;
            INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
            VALUES (v_alarm.id, 'cleared', 'cleared', now());
            v_rows := v_rows + 2;
        END IF;
    END IF;

    ---------------------------------------------------------------- escalate
    IF v_action = 'escalate' THEN
        SELECT * INTO v_alarm FROM nms.alarm
         WHERE ne_id = v_ne.id AND cleared_at IS NULL AND severity < 'critical'
         ORDER BY raised_at, id LIMIT 1;
        IF NOT FOUND THEN
            v_action := 'raise';
        ELSE
            v_sev := (enum_range(v_alarm.severity, NULL))[2];
            UPDATE nms.alarm SET severity = v_sev WHERE id = v_alarm.id;
            INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
            VALUES (v_alarm.id, 'severity_changed', v_sev, now());
            v_rows := v_rows + 2;
        END IF;
    END IF;

    ---------------------------------------------------------------- raise
    IF v_action = 'raise' THEN
        IF v_cause IS NULL THEN
            SELECT c.cause, c.on_if INTO v_cause, v_on_if
              FROM (VALUES (0,  'Link down',                      true),
                           (1,  'Loss of signal',                 true),
                           (2,  'Optical receive power low',      true),
                           (3,  'High CPU utilisation',           false),
                           (4,  'High memory utilisation',        false),
                           (5,  'Temperature threshold exceeded', false),
                           (6,  'Power supply failure',           false),
                           (7,  'Fan failure',                    false),
                           (8,  'BGP session down',               false),
                           (9,  'OSPF adjacency lost',            true),
                           (10, 'Configuration mismatch',         false)) AS c (no, cause, on_if)
             WHERE c.no = nms.prand_int(k || ':cause', 11);
            v_sev := (ARRAY['indeterminate', 'warning', 'minor', 'minor', 'major', 'major', 'critical'])
                         [1 + nms.prand_int(k || ':sev', 7)]::nms.severity;
        END IF;
        IF v_on_if THEN
            SELECT if_index INTO v_if FROM nms.interface
             WHERE ne_id = v_ne.id
             ORDER BY nms.prand(k || ':alarm-if:' || if_index), if_index
             LIMIT 1;
            IF NOT FOUND THEN
                v_if := NULL;
            END IF;
        ELSE
            v_if := NULL;
        END IF;

        -- deduplicate: the same problem already open on the same resource?
        SELECT * INTO v_alarm FROM nms.alarm
         WHERE ne_id = v_ne.id AND cleared_at IS NULL
           AND probable_cause = v_cause AND if_index IS NOT DISTINCT FROM v_if
         ORDER BY id LIMIT 1;
        IF FOUND THEN
            UPDATE nms.alarm
               SET details = details || jsonb_build_object(
                                 'count', coalesce((details ->> 'count')::integer, 1) + 1,
                                 'last_raised_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                   severity = greatest(severity, v_sev)
             WHERE id = v_alarm.id;
            v_rows := v_rows + 1;
            IF v_sev > v_alarm.severity THEN
                INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
                VALUES (v_alarm.id, 'severity_changed', v_sev, now());
                v_rows := v_rows + 1;
            END IF;
        ELSE
            INSERT INTO nms.alarm (ne_id, if_index, probable_cause, severity, raised_at, details)
            VALUES (v_ne.id, v_if, v_cause, v_sev, now(),
                    jsonb_build_object('source', CASE WHEN v_if IS NULL THEN 'syslog' ELSE 'snmp-trap' END,
                                       'initial_severity', v_sev,
                                       'count', 1,
                                       'additional_text', v_cause || ' on ' || v_ne.name
                                           || coalesce(' ifIndex ' || v_if, '')))
            RETURNING * INTO v_alarm;
            INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
            VALUES (v_alarm.id, 'raised', v_sev, now());
            v_rows := v_rows + 2;
        END IF;
    END IF;

    RETURN v_rows;
END
$fn$;

-- One large transaction: a site (chosen at random) loses power.  Up to
-- p_ne_count elements, that site's first and then neighbouring sites', go
-- 'down', their interfaces go oper-down, and each gets p_per_ne alarms:
-- 'Link down' on every interface, then further passes over the interfaces
-- with 'Loss of signal', 'Optical receive power low', 'Power supply failure'
-- (cycling, so any p_per_ne is honoured; storm(200, 5000) makes a
-- million-alarm transaction).  Every alarm gets a 'raised' history row.
-- Returns the number of rows changed.
CREATE OR REPLACE FUNCTION nms.alarm_storm(p_ne_count integer, p_per_ne integer)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_site text;
    v_ids  bigint[];
    v_rows integer := 0;
    n      integer;
    v_corr text := 'storm-' || txid_current();
BEGIN
    IF coalesce(p_ne_count, 0) <= 0 OR coalesce(p_per_ne, 0) <= 0 THEN
        RETURN 0;
    END IF;
    SELECT site INTO v_site FROM nms.network_element ORDER BY random() LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;

    SELECT array_agg(id ORDER BY id) INTO v_ids
      FROM (SELECT id FROM nms.network_element
             ORDER BY site = v_site DESC, site, id
             LIMIT p_ne_count) AS s;
    -- same lock order as every other caller: ascending id
    PERFORM 1 FROM nms.network_element WHERE id = ANY (v_ids) ORDER BY id FOR NO KEY UPDATE;

    UPDATE nms.network_element SET status = 'down' WHERE id = ANY (v_ids) AND status <> 'down';
    GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;
    UPDATE nms.interface SET oper_up = false WHERE ne_id = ANY (v_ids) AND oper_up;
    GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + n;

    -- MATERIALIZED: otherwise the planner inlines the CTE and re-runs the
    -- interface sub-select for every use in every generated row
    WITH ne AS MATERIALIZED (
        SELECT e.id, e.name,
               (SELECT array_agg(i.if_index ORDER BY i.if_index) FROM nms.interface AS i WHERE i.ne_id = e.id) AS ifs
          FROM nms.network_element AS e
         WHERE e.id = ANY (v_ids)
    ), raised AS (
        INSERT INTO nms.alarm (ne_id, if_index, probable_cause, severity, raised_at, details)
        SELECT ne.id,
               CASE WHEN ne.ifs IS NOT NULL THEN ne.ifs[1 + g % cardinality(ne.ifs)] END,
               CASE WHEN ne.ifs IS NULL THEN 'Power supply failure'
                    ELSE (ARRAY['Link down', 'Loss of signal', 'Optical receive power low', 'Power supply failure'])
                             [1 + (g / cardinality(ne.ifs)) % 4] END,
               CASE WHEN ne.ifs IS NULL OR g < cardinality(ne.ifs) THEN 'critical' ELSE 'major' END::nms.severity,
               now(),
               jsonb_build_object('source', 'snmp-trap', 'count', 1, 'correlation_id', v_corr,
                                  'additional_text', 'site ' || v_site || ' power loss: ' || ne.name)
          FROM ne
         CROSS JOIN generate_series(0, p_per_ne - 1) AS g
         ORDER BY ne.id, g
        RETURNING id, severity, raised_at
    )
    INSERT INTO nms.alarm_history (alarm_id, event, severity, at)
    SELECT id, 'raised', severity, raised_at FROM raised;
    GET DIAGNOSTICS n = ROW_COUNT; v_rows := v_rows + 2 * n;

    RETURN v_rows;
END
$fn$;
