//! Unit tests of DSN parsing, environment defaults, pgpass lookup and redaction.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn parse(dsn: &str) -> ConnInfo {
    ConnInfo::parse_with(dsn, &|_| None, None).unwrap()
}

#[test]
fn keyword_value_form() {
    let info = parse(
        "host=db1.example port=5433 user=nms dbname='my db' password=pw \
         application_name=app sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem'",
    );
    assert_eq!(info.host(), "db1.example");
    assert_eq!(info.port(), 5433);
    assert_eq!(info.user(), "nms");
    assert_eq!(info.dbname(), "my db");
    assert_eq!(info.sslmode(), SslMode::VerifyFull);
    assert_eq!(info.sslrootcert(), Some(Path::new("/etc/ca dir/ca.pem")));
    assert_eq!(info.application_name(), Some("app"));
    let info = parse(r"user=u password='it\'s a \\ secret' host = h");
    assert_eq!(info.password(), Some(&b"it's a \\ secret"[..]));
    assert_eq!(info.host(), "h");
}

#[test]
fn uri_form() {
    let info = parse(
        "postgresql://nms:p%40ss%3Aw@db1:5433/inventory?sslmode=verify-ca\
         &sslrootcert=%2Ftmp%2Fca.pem&application_name=app&connect_timeout=7",
    );
    assert_eq!(info.user(), "nms");
    assert_eq!(info.password(), Some(&b"p@ss:w"[..]));
    assert_eq!(info.host(), "db1");
    assert_eq!(info.port(), 5433);
    assert_eq!(info.dbname(), "inventory");
    assert_eq!(info.sslmode(), SslMode::VerifyCa);
    assert_eq!(info.sslrootcert(), Some(Path::new("/tmp/ca.pem")));
    assert_eq!(info.application_name(), Some("app"));
    assert_eq!(info.connect_timeout(), Some(Duration::from_secs(7)));

    let info = parse("postgres:///nms?host=%2Fvar%2Frun%2Fpg&port=6000&sslmode=disable");
    assert_eq!(
        info.targets(),
        &[Target::Unix {
            dir: "/var/run/pg".into(),
            port: 6000
        }]
    );
    assert_eq!(info.sslmode(), SslMode::Disable);
    assert_eq!(info.host(), "/var/run/pg");
}

#[test]
fn several_hosts_and_hostaddr() {
    let info = parse("host=a,b port=1,2 user=u");
    assert_eq!(
        info.targets(),
        &[
            Target::Tcp {
                host: "a".into(),
                hostaddr: None,
                port: 1
            },
            Target::Tcp {
                host: "b".into(),
                hostaddr: None,
                port: 2
            },
        ]
    );
    assert_eq!(info.redacted(), "host=a,b port=1,2 user=u dbname=u");
    let info = parse("host=db.example hostaddr=127.0.0.1 user=u");
    assert_eq!(
        info.targets(),
        &[Target::Tcp {
            host: "db.example".into(),
            hostaddr: Some("127.0.0.1".parse().unwrap()),
            port: 5432
        }]
    );
    assert_eq!(
        info.redacted(),
        "host=db.example hostaddr=127.0.0.1 port=5432 user=u dbname=u"
    );
    let info = parse("hostaddr=10.0.0.9 user=u");
    assert_eq!(info.host(), "10.0.0.9");
}

#[test]
fn environment_fills_what_the_dsn_leaves_unset() {
    let env = env_of(&[
        ("PGHOST", "envhost"),
        ("PGPORT", "6543"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
        ("PGPASSWORD", "envpw"),
        ("PGSSLMODE", "require"),
        ("PGSSLROOTCERT", "/env/ca.pem"),
        ("PGAPPNAME", "envapp"),
        ("PGCONNECT_TIMEOUT", "9"),
        ("PGOPTIONS", "-c work_mem=8MB"),
    ]);
    let info = ConnInfo::parse_with("", &env, None).unwrap();
    assert_eq!(info.host(), "envhost");
    assert_eq!(info.port(), 6543);
    assert_eq!(info.user(), "envuser");
    assert_eq!(info.dbname(), "envdb");
    assert_eq!(info.password(), Some(&b"envpw"[..]));
    assert_eq!(info.sslmode(), SslMode::Require);
    assert_eq!(info.sslrootcert(), Some(Path::new("/env/ca.pem")));
    assert_eq!(info.application_name(), Some("envapp"));
    assert_eq!(info.connect_timeout(), Some(Duration::from_secs(9)));
    assert_eq!(info.options(), Some("-c work_mem=8MB"));

    // The DSN wins over the environment, key by key.
    let info = ConnInfo::parse_with(
        "host=dsnhost user=dsnuser password=dsnpw sslmode=disable",
        &env,
        None,
    )
    .unwrap();
    assert_eq!(info.host(), "dsnhost");
    assert_eq!(info.port(), 6543);
    assert_eq!(info.user(), "dsnuser");
    assert_eq!(info.dbname(), "envdb");
    assert_eq!(info.password(), Some(&b"dsnpw"[..]));
    assert_eq!(info.sslmode(), SslMode::Disable);

    let env = env_of(&[("PGHOST", "/tmp/sockets"), ("PGCONNECT_TIMEOUT", "1")]);
    let info = ConnInfo::parse_with("", &env, None).unwrap();
    assert!(matches!(info.targets()[0], Target::Unix { .. }));
    assert_eq!(
        info.connect_timeout(),
        Some(Duration::from_secs(2)),
        "libpq minimum"
    );
}

#[test]
fn defaults_without_dsn_or_environment() {
    let home = Path::new("/home/someone");
    let info = ConnInfo::parse_with("", &|_| None, Some(home)).unwrap();
    assert_eq!(
        info.targets(),
        &[Target::Unix {
            dir: DEFAULT_SOCKET_DIR.into(),
            port: 5432
        }]
    );
    let os_user = os_user().expect("this process has a passwd entry").0;
    assert_eq!(info.user(), os_user);
    assert_eq!(info.dbname(), os_user, "dbname defaults to the user name");
    assert_eq!(info.sslmode(), SslMode::Prefer);
    assert_eq!(
        info.sslrootcert(),
        Some(Path::new("/home/someone/.postgresql/root.crt"))
    );
    assert_eq!(info.password(), None);
    assert_eq!(info.connect_timeout(), None);
    assert_eq!(parse("sslmode=allow user=u").sslmode(), SslMode::Prefer);
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn password_comes_from_pgpass_when_none_is_given() {
    let home = tempfile::tempdir().unwrap();
    write_private(
        &home.path().join(".pgpass"),
        "db1:5432:nms:alice:from-home\nlocalhost:5432:*:alice:via-socket\n\
         db1:5432:other:alice:other-db\n",
    );
    let other = home.path().join("other-pgpass");
    write_private(&other, "*:*:*:*:from-env-file\n");
    let third = home.path().join("third-pgpass");
    write_private(&third, "*:*:*:*:from-dsn-file\n");
    let no_env = |_: &str| None;
    let parse_in = |dsn: &str, env: &dyn Fn(&str) -> Option<String>| {
        ConnInfo::parse_with(dsn, env, Some(home.path())).unwrap()
    };

    let info = parse_in("host=db1 user=alice dbname=nms", &no_env);
    assert_eq!(info.password(), Some(&b"from-home"[..]));
    // Another database on the same server: the file is consulted again.
    assert_eq!(info.with_dbname("other").password(), Some(&b"other-db"[..]));
    assert_eq!(info.with_dbname("other").dbname(), "other");
    // The default socket directory is "localhost" to pgpass.
    let info = parse_in("user=alice dbname=x", &no_env);
    assert_eq!(info.password(), Some(&b"via-socket"[..]));
    // An explicit password wins; an empty one does not count.
    let info = parse_in("host=db1 user=alice dbname=nms password=given", &no_env);
    assert_eq!(info.password(), Some(&b"given"[..]));
    let info = parse_in("host=db1 user=alice dbname=nms password=''", &no_env);
    assert_eq!(info.password(), Some(&b"from-home"[..]));
    // PGPASSFILE replaces ~/.pgpass, and passfile= in the DSN replaces PGPASSFILE.
    let other_str = other.display().to_string();
    let env = env_of(&[("PGPASSFILE", other_str.as_str())]);
    let info = parse_in("host=db1 user=alice dbname=nms", &env);
    assert_eq!(info.password(), Some(&b"from-env-file"[..]));
    let dsn = format!(
        "host=db1 user=alice dbname=nms passfile={}",
        third.display()
    );
    assert_eq!(parse_in(&dsn, &env).password(), Some(&b"from-dsn-file"[..]));
    // A file others can read is ignored.
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        parse_in("host=db1 user=alice dbname=nms", &env).password(),
        None
    );
    // No match: no password.
    assert_eq!(parse_in("host=db9 user=zed", &no_env).password(), None);
}

#[test]
fn password_never_shows() {
    let dsns = [
        "host=h user=u password=hunter2",
        "postgresql://u:hunter2@h/db",
        "postgresql://u:hunter2@h/db?sslmode=require",
    ];
    for dsn in dsns {
        let info = parse(dsn);
        assert_eq!(info.password(), Some(&b"hunter2"[..]), "{dsn}");
        for shown in [info.redacted(), format!("{info:?}"), format!("{info:#?}")] {
            assert!(!shown.contains("hunter2"), "{dsn} -> {shown}");
        }
        assert!(format!("{info:?}").contains("<redacted>"));
    }
    let env = env_of(&[("PGPASSWORD", "hunter2")]);
    let info = ConnInfo::parse_with("host=h", &env, None).unwrap();
    assert!(!format!("{info:?} {}", info.redacted()).contains("hunter2"));
    // A DSN that does not parse is not echoed back.
    for bad in [
        "host=h password=hunter2 port=notaport",
        "password=hunter2 sslmode=sometimes",
        "password='hunter2",
        "postgresql://u:hunter2@h/db?port=x",
        "password=hunter2 nonsense",
    ] {
        let err = ConnInfo::parse_with(bad, &|_| None, None).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{bad} -> {err}");
    }
}

#[test]
fn bad_dsns_say_what_is_wrong() {
    let err = |dsn: &str| {
        ConnInfo::parse_with(dsn, &|_| None, None)
            .unwrap_err()
            .to_string()
    };
    assert!(err("host=h sslmode=sometimes").contains("sslmode 'sometimes'"));
    assert!(err("host=h nonsense").contains("missing \"=\" after \"nonsense\""));
    assert!(err("host=h frobnicate=1").contains("frobnicate"));
    assert!(err("host=a,b,c port=1,2").contains("3 hosts but 2 ports"));
    let env = env_of(&[("PGPORT", "many")]);
    let e = ConnInfo::parse_with("host=h", &env, None).unwrap_err();
    assert!(e.to_string().contains("PGPORT 'many'"), "{e}");
}

#[test]
fn redacted_shows_sslmode_only_when_not_default() {
    assert_eq!(
        parse("host=h port=1 user=u dbname=d").redacted(),
        "host=h port=1 user=u dbname=d"
    );
    assert_eq!(
        parse("host=h port=1 user=u dbname=d sslmode=verify-full").redacted(),
        "host=h port=1 user=u dbname=d sslmode=verify-full"
    );
}
