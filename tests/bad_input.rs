//! Guarantee 8, bad input gets a clear error: each case runs the real binary against real
//! throwaway clusters and checks the exit code, that one line of the error names the cause and
//! its fix, that no password reaches the output, and that nothing was left behind (no slot, no
//! publication on the primary, an untouched standby).
//!
//! Every DSN handed to the binary carries a password (`password=secret-pw`): the clusters trust
//! TCP connections unless a case turns SCRAM on, so the password is never needed, but it must
//! never be printed either.
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Pair};
use understudy::cluster::{Cluster, ClusterOptions};
use understudy::lsn::Lsn;

/// The password every DSN carries (and the real one where a case turns SCRAM on).
const SECRET: &str = "secret-pw";
/// A wrong password.
const WRONG: &str = "wrong-pw";
/// How long a refusal may take before the test calls it a hang (or an endless retry).
const PROMPT: Duration = Duration::from_secs(30);

/// What one run of the binary did.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "understudy {:?}\nexit: {:?}{} after {:.1} s\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args,
            self.code,
            if self.timed_out {
                " (killed: timed out)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// The `error:` line and what follows it on stderr.
    fn error_report(&self) -> Vec<&str> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.iter().position(|l| l.starts_with("error:")) {
            Some(i) => lines[i..].to_vec(),
            None => Vec::new(),
        }
    }
}

/// Run the binary with `args`, killing it after `timeout`.
fn understudy(args: &[String], timeout: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .env_remove("UNDERSTUDY_PRIMARY")
        .env_remove("UNDERSTUDY_STANDBY")
        .env_remove("PGPASSWORD")
        .env("UNDERSTUDY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start understudy");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            pipe.read_to_end(&mut buf).ok();
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for understudy") {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            child.kill().ok();
            break child.wait().expect("wait for killed understudy");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        args: args.to_vec(),
        code: status.code(),
        timed_out,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed: started.elapsed(),
    };
    // Shown by `cargo test -- --nocapture`, and with the failure of the test that ran it.
    println!("{}", run.show());
    run
}

/// `dsn` with a password added.
fn with_password(dsn: &str, password: &str) -> String {
    format!("{dsn} password={password}")
}

/// `args` followed by --primary and --standby, both carrying [`SECRET`].
fn pair_args(pair: &Pair, args: &[&str]) -> Vec<String> {
    dsn_args(
        args,
        &with_password(&pair.primary_dsn(), SECRET),
        &with_password(&pair.standby_dsn(), SECRET),
    )
}

fn dsn_args(args: &[&str], primary: &str, standby: &str) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    v.extend([
        "--primary".into(),
        primary.into(),
        "--standby".into(),
        standby.into(),
    ]);
    v
}

/// No password anywhere in the output.
fn assert_no_password(run: &Run) {
    for pw in [SECRET, WRONG] {
        assert!(
            !run.stdout.contains(pw) && !run.stderr.contains(pw),
            "the password {pw:?} was printed\n{}",
            run.show()
        );
    }
}

/// A refusal: exit 1 within [`PROMPT`], no panic, exactly one `error:` line, after which only the
/// bullets of a list of problems may follow (no multi-line server text), no password; and one
/// line of the error names every word of `says` (the cause and its fix, together).
fn assert_refused(run: &Run, says: &[&str]) {
    assert!(!run.timed_out, "did not stop by itself\n{}", run.show());
    assert_eq!(run.code, Some(1), "exit code\n{}", run.show());
    assert!(
        !run.stderr.contains("panicked"),
        "understudy panicked\n{}",
        run.show()
    );
    assert_no_password(run);
    let report = run.error_report();
    assert!(!report.is_empty(), "no `error:` line\n{}", run.show());
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "more than one `error:` line\n{}",
        run.show()
    );
    for line in &report[1..] {
        assert!(
            line.starts_with("  - "),
            "the error runs on over several lines that are not a list of problems: {line:?}\n{}",
            run.show()
        );
    }
    for line in &report {
        assert!(
            line.matches("SQLSTATE").count() <= 1,
            "the same server error is printed twice: {line:?}\n{}",
            run.show()
        );
    }
    assert!(
        report
            .iter()
            .any(|line| says.iter().all(|w| line.contains(w))),
        "no single line of the error says all of {says:?}\n{}",
        run.show()
    );
}

/// The error says `what` (case-insensitively) exactly once: a cause repeated by the error's own
/// text and again by its source chain is noise, not information.
fn assert_said_once(run: &Run, what: &str) {
    let error = run.error_report().join("\n").to_lowercase();
    assert_eq!(
        error.matches(&what.to_lowercase()).count(),
        1,
        "the error does not say {what:?} exactly once\n{}",
        run.show()
    );
}

/// Replication slots and publications on the primary (over its Unix socket, so this works
/// whatever TCP authentication the primary asks for).
fn primary_leftovers(primary: &Cluster) -> (String, String) {
    let slots = primary
        .psql_socket(
            "nms",
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots",
        )
        .unwrap();
    let publications = primary
        .psql_socket("nms", "SELECT string_agg(pubname, ',') FROM pg_publication")
        .unwrap();
    (slots, publications)
}

fn assert_primary_untouched(primary: &Cluster, run: &Run) {
    let (slots, publications) = primary_leftovers(primary);
    assert_eq!(
        slots,
        "",
        "a replication slot was left on the primary\n{}",
        run.show()
    );
    assert_eq!(
        publications,
        "",
        "a publication was left on the primary\n{}",
        run.show()
    );
}

/// Every schema but the system ones and `public`, and every relation outside the system schemas.
fn user_objects(cluster: &Cluster) -> String {
    cluster
        .psql_socket(
            "nms",
            "SELECT string_agg(o, ', ' ORDER BY o) FROM ( \
               SELECT 'schema ' || nspname AS o FROM pg_namespace \
               WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public', 'pg_toast') \
                 AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%' \
               UNION ALL \
               SELECT format('relation %I.%I', n.nspname, c.relname) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_%') x",
        )
        .unwrap()
}

fn assert_standby_empty(standby: &Cluster, run: &Run) {
    assert_eq!(
        user_objects(standby),
        "",
        "something was left on the standby\n{}",
        run.show()
    );
}

/// A small replicated table on the primary.
const DEVICES: &str = "CREATE TABLE public.devices (id integer PRIMARY KEY, name text NOT NULL); \
                       INSERT INTO public.devices VALUES (1, 'router-a'), (2, 'router-b'), \
                       (3, 'switch-c')";

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn lsn(cluster: &Cluster, sql: &str) -> Lsn {
    cluster.psql_socket("nms", sql).unwrap().parse().unwrap()
}

// 1. A published table without a primary key or replica identity.
#[test]
fn bootstrap_refuses_a_table_without_replica_identity_and_creates_nothing() {
    let pair = Pair::start();
    pair.primary
        .psql_socket("nms", include_str!("fixtures/types_schema.sql"))
        .unwrap();
    pair.primary
        .psql_socket("nms", include_str!("fixtures/no_identity.sql"))
        .unwrap();

    let run = understudy(&pair_args(&pair, &["bootstrap"]), PROMPT);
    assert_refused(
        &run,
        &[
            "\"Types Test\".no_identity",
            "no primary key",
            "ALTER TABLE \"Types Test\".no_identity REPLICA IDENTITY FULL",
        ],
    );
    assert!(
        !run.stderr.contains("Types Test.no_identity"),
        "the table is named without quotes, which no SQL reads back\n{}",
        run.show()
    );
    // The tables that do have an identity (primary key, USING INDEX, FULL) are not named.
    for fine in ["by_index", "full_ident", "\"Order\"", "toasted"] {
        assert!(
            !run.stderr.contains(fine),
            "{fine} has a replica identity but was named\n{}",
            run.show()
        );
    }
    assert_primary_untouched(&pair.primary, &run);
    assert_standby_empty(&pair.standby, &run);
}

// 2. wal_level = replica on the primary.
#[test]
fn bootstrap_refuses_wal_level_replica_with_the_alter_system_fix() {
    let pair = Pair::start_with(&ClusterOptions {
        settings: vec![("wal_level".into(), "replica".into())],
        ..Default::default()
    });
    pair.primary.psql_socket("nms", DEVICES).unwrap();

    let run = understudy(&pair_args(&pair, &["bootstrap"]), PROMPT);
    assert_refused(
        &run,
        &[
            "wal_level = replica",
            "ALTER SYSTEM SET wal_level = logical",
            "restart",
        ],
    );
    assert_primary_untouched(&pair.primary, &run);
    assert_standby_empty(&pair.standby, &run);
}

// 3. A standby that already holds a user table; then --force.
#[test]
fn bootstrap_refuses_an_occupied_standby_until_forced() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.standby
        .psql_socket(
            "nms",
            "CREATE TABLE public.stray (id integer); INSERT INTO public.stray VALUES (7)",
        )
        .unwrap();

    let run = understudy(&pair_args(&pair, &["bootstrap"]), PROMPT);
    assert_refused(&run, &["standby", "1 table", "--force"]);
    assert_primary_untouched(&pair.primary, &run);
    assert_eq!(
        user_objects(&pair.standby),
        "relation public.stray",
        "the refused bootstrap changed the standby\n{}",
        run.show()
    );

    let forced = understudy(&pair_args(&pair, &["bootstrap", "--force"]), PROMPT);
    assert_eq!(forced.code, Some(0), "bootstrap --force\n{}", forced.show());
    assert_no_password(&forced);
    assert_eq!(
        pair.standby
            .psql_socket("nms", "SELECT to_regclass('public.stray') IS NULL")
            .unwrap(),
        "t",
        "--force did not drop the standby's old table\n{}",
        forced.show()
    );
    assert_eq!(
        pair.standby
            .psql_socket(
                "nms",
                "SELECT string_agg(name, ',' ORDER BY id) FROM public.devices"
            )
            .unwrap(),
        "router-a,router-b,switch-c"
    );
}

// 4. Bootstrap twice.
#[test]
fn second_bootstrap_is_refused_and_names_follow_and_force() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    let first = understudy(&pair_args(&pair, &["bootstrap"]), PROMPT);
    assert_eq!(first.code, Some(0), "first bootstrap\n{}", first.show());
    let state_before = pair
        .standby
        .psql_socket(
            "nms",
            "SELECT state || ' ' || consistent_point FROM understudy.source",
        )
        .unwrap();

    let second = understudy(&pair_args(&pair, &["bootstrap"]), PROMPT);
    assert_refused(&second, &["already bootstrapped", "follow", "--force"]);
    let (slots, publications) = primary_leftovers(&pair.primary);
    assert_eq!(
        (slots.as_str(), publications.as_str()),
        ("understudy", "understudy"),
        "the refused bootstrap changed the primary's slot or publication\n{}",
        second.show()
    );
    assert_eq!(
        pair.standby
            .psql_socket(
                "nms",
                "SELECT state || ' ' || consistent_point FROM understudy.source"
            )
            .unwrap(),
        state_before,
        "the refused bootstrap changed the standby's state\n{}",
        second.show()
    );
}

// 5. An unreachable primary.
#[test]
fn unreachable_primary_fails_fast_naming_the_port() {
    let standby = Cluster::start(&ClusterOptions::default()).unwrap();
    standby.create_database("nms").unwrap();
    let port = closed_port();
    let primary = format!("host=127.0.0.1 port={port} user=postgres dbname=nms password={SECRET}");

    let run = understudy(
        &dsn_args(
            &["bootstrap"],
            &primary,
            &with_password(&standby.dsn("nms"), SECRET),
        ),
        PROMPT,
    );
    assert_refused(
        &run,
        &[
            "primary",
            "could not connect",
            &format!("port={port}"),
            "check that PostgreSQL is running",
        ],
    );
    assert_said_once(&run, "connection refused");
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?} to give up on a closed port\n{}",
        run.elapsed,
        run.show()
    );
    assert_standby_empty(&standby, &run);
}

// 6a. A key=value DSN with a value that is not a port.
#[test]
fn malformed_key_value_dsn_is_named_without_its_password() {
    let run = understudy(
        &dsn_args(
            &["bootstrap"],
            &format!("host=127.0.0.1 port=notaport user=postgres password={SECRET}"),
            &format!("host=127.0.0.1 port=1 user=postgres password={SECRET}"),
        ),
        PROMPT,
    );
    assert_refused(&run, &["--primary", "invalid connection string", "port"]);
}

// 6b. A URI that does not parse.
#[test]
fn malformed_uri_dsn_is_named_without_its_password() {
    let run = understudy(
        &dsn_args(
            &["status"],
            &format!("postgres://postgres:{SECRET}@[bad"),
            &format!("host=127.0.0.1 port=1 user=postgres password={SECRET}"),
        ),
        PROMPT,
    );
    assert_refused(&run, &["--primary", "invalid connection string", "host"]);
}

// 6c. A password the primary refuses.
#[test]
fn wrong_password_is_refused_without_printing_either_password() {
    let pair = Pair::start_with(&ClusterOptions {
        password: Some(SECRET.into()),
        ..Default::default()
    });
    pair.primary.psql_socket("nms", DEVICES).unwrap();

    let run = understudy(
        &dsn_args(
            &["bootstrap"],
            &with_password(&pair.primary_dsn(), WRONG),
            &with_password(&pair.standby_dsn(), SECRET),
        ),
        PROMPT,
    );
    assert_refused(
        &run,
        &[
            "primary",
            "password authentication failed",
            "postgres",
            "check the user name and password",
        ],
    );
    assert_primary_untouched(&pair.primary, &run);
    assert_standby_empty(&pair.standby, &run);
}

// 7. A role without REPLICATION on the primary.
#[test]
fn role_without_replication_is_refused_with_the_alter_role_fix() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.primary
        .psql_socket(
            "nms",
            "CREATE ROLE nms_reader LOGIN; \
             GRANT USAGE ON SCHEMA public TO nms_reader; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO nms_reader",
        )
        .unwrap();
    let primary = with_password(
        &format!(
            "host=127.0.0.1 port={} user=nms_reader dbname=nms",
            pair.primary.port()
        ),
        SECRET,
    );

    let run = understudy(
        &dsn_args(
            &["bootstrap"],
            &primary,
            &with_password(&pair.standby_dsn(), SECRET),
        ),
        PROMPT,
    );
    assert_refused(
        &run,
        &["nms_reader", "replication", "ALTER ROLE", "REPLICATION"],
    );
    assert_primary_untouched(&pair.primary, &run);
    assert_standby_empty(&pair.standby, &run);
}

// 8. follow before bootstrap.
#[test]
fn follow_on_a_standby_never_bootstrapped_says_to_bootstrap() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();

    let run = understudy(&pair_args(&pair, &["follow"]), PROMPT);
    assert_refused(&run, &["never bootstrapped", "understudy bootstrap"]);
    assert_primary_untouched(&pair.primary, &run);
    assert_standby_empty(&pair.standby, &run);
}

// 9. follow after the slot was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_after_the_slot_was_dropped_stops_and_says_bootstrap_force() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.bootstrap().await;
    let p = pair.primary_client().await;
    wait_for("the bootstrap's slot to be released", PROMPT, || {
        let p = &p;
        async move {
            p.execute("SELECT pg_drop_replication_slot('understudy')", &[])
                .await
                .is_ok()
        }
    })
    .await;
    p.execute("INSERT INTO public.devices VALUES (4, 'lost-d')", &[])
        .await
        .unwrap();

    let args = pair_args(&pair, &["follow"]);
    let run = tokio::task::spawn_blocking(move || understudy(&args, PROMPT))
        .await
        .unwrap();
    assert_refused(
        &run,
        &["slot", "understudy", "dropped", "gone", "bootstrap --force"],
    );
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?} to give up\n{}",
        run.elapsed,
        run.show()
    );
    assert_eq!(
        pair.primary
            .psql_socket("nms", "SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0",
        "follow recreated a slot, hiding the gap\n{}",
        run.show()
    );
}

// 10. A malformed --stop-at-lsn.
#[test]
fn follow_with_a_malformed_stop_lsn_is_a_usage_error() {
    let run = understudy(
        &dsn_args(
            &["follow", "--stop-at-lsn", "nonsense"],
            &format!("host=127.0.0.1 port=1 password={SECRET}"),
            &format!("host=127.0.0.1 port=1 password={SECRET}"),
        ),
        PROMPT,
    );
    assert_eq!(run.code, Some(2), "usage errors exit 2\n{}", run.show());
    assert_no_password(&run);
    let first = run.error_report().first().copied().unwrap_or_default();
    for says in ["--stop-at-lsn", "nonsense", "hexadecimal", "/", "0/16B3748"] {
        assert!(
            first.contains(says),
            "the error line does not say {says:?}\n{}",
            run.show()
        );
    }
}

// 11. check after writing directly to the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_rows_written_directly_on_the_standby() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.bootstrap().await;
    pair.catch_up().await;
    pair.standby
        .psql_socket(
            "nms",
            "UPDATE public.devices SET name = 'edited-on-standby' WHERE id = 1; \
             DELETE FROM public.devices WHERE id = 2",
        )
        .unwrap();

    let args = pair_args(&pair, &["check"]);
    let run = tokio::task::spawn_blocking(move || understudy(&args, PROMPT))
        .await
        .unwrap();
    assert!(!run.timed_out, "check hung\n{}", run.show());
    assert_eq!(run.code, Some(1), "check must exit 1\n{}", run.show());
    assert_no_password(&run);
    for line in [
        "public.devices: 3 rows on the primary, 2 on the standby",
        "public.devices: only on the primary: (1,router-a)",
        "public.devices: only on the primary: (2,router-b)",
        "public.devices: only on the standby: (1,edited-on-standby)",
    ] {
        assert!(
            run.stdout.lines().any(|l| l.contains(line)),
            "check did not print {line:?}\n{}",
            run.show()
        );
    }
    assert!(
        !run.stdout.contains("switch-c"),
        "an identical row was listed as a difference\n{}",
        run.show()
    );
}

// 12. follow onto a standby whose table lost a column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_onto_a_table_that_lost_a_column_stops_naming_the_table() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.bootstrap().await;
    pair.standby
        .psql_socket("nms", "ALTER TABLE public.devices DROP COLUMN name")
        .unwrap();
    pair.primary
        .psql_socket("nms", "INSERT INTO public.devices VALUES (4, 'new-d')")
        .unwrap();
    let after_insert = lsn(&pair.primary, "SELECT pg_current_wal_lsn()");

    let args = pair_args(&pair, &["follow", "--until-caught-up"]);
    let run = tokio::task::spawn_blocking(move || understudy(&args, PROMPT))
        .await
        .unwrap();
    assert_refused(&run, &["public.devices", "schema differs", "standby"]);
    assert_said_once(
        &run,
        "column \"name\" of relation \"devices\" does not exist",
    );
    let applied = lsn(
        &pair.standby,
        "SELECT applied_lsn FROM understudy.progress WHERE id = 1",
    );
    assert!(
        applied < after_insert,
        "the standby recorded {applied} as applied, past the insert it could not apply (WAL at \
         {after_insert})\n{}",
        run.show()
    );
    let confirmed = lsn(
        &pair.primary,
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'understudy'",
    );
    assert!(
        confirmed < after_insert,
        "the slot was acknowledged to {confirmed}, past the insert the standby could not apply\n{}",
        run.show()
    );
}

// 13. status --json on a healthy pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_on_a_healthy_pair() {
    let pair = Pair::start();
    pair.primary.psql_socket("nms", DEVICES).unwrap();
    pair.bootstrap().await;
    pair.primary
        .psql_socket("nms", "INSERT INTO public.devices VALUES (4, 'router-d')")
        .unwrap();
    pair.catch_up().await;

    let args = pair_args(&pair, &["status", "--json"]);
    let run = tokio::task::spawn_blocking(move || understudy(&args, PROMPT))
        .await
        .unwrap();
    assert_eq!(run.code, Some(0), "status --json\n{}", run.show());
    assert_no_password(&run);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", run.show()));
    let applied: Lsn = json["applied_lsn"]
        .as_str()
        .unwrap_or_else(|| panic!("applied_lsn is not a string\n{}", run.show()))
        .parse()
        .unwrap();
    assert!(applied > Lsn::ZERO, "applied_lsn is 0/0\n{}", run.show());
    let lag = json["lag_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("lag_bytes is not a number\n{}", run.show()));
    let primary_wal: Lsn = json["primary_wal_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        lag,
        primary_wal.bytes_since(applied),
        "lag_bytes is not primary_wal_lsn - applied_lsn\n{}",
        run.show()
    );
    assert_eq!(
        json["slot"]["wal_status"].as_str(),
        Some("reserved"),
        "slot.wal_status\n{}",
        run.show()
    );
    assert_eq!(json["slot"]["exists"].as_bool(), Some(true));
    assert_eq!(json["bootstrap_state"].as_str(), Some("ready"));
}
