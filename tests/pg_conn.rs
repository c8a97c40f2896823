//! Connecting to real PostgreSQL clusters: authentication methods, pgpass, TLS modes and
//! unreachable servers, each for the ordinary SQL connection and the replication connection.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use understudy::cluster::{Cluster, ClusterOptions, TlsFiles};
use understudy::pg::conninfo::ConnInfo;
use understudy::pg::replication::ReplicationConnection;
use understudy::pg::PgError;

const APP: &str = "pg_conn test";

/// Parse with no environment and a home directory that does not exist, so nothing on this
/// machine (PG* variables, ~/.pgpass, ~/.postgresql/root.crt) leaks into the test.
fn info(dsn: &str) -> ConnInfo {
    info_with(dsn, &|_| None)
}

fn info_with(dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> ConnInfo {
    ConnInfo::parse_with(dsn, env, Some(Path::new("/nonexistent-home"))).unwrap()
}

/// Whether the ordinary connection is encrypted, per the server.
async fn ordinary_ssl(info: &ConnInfo) -> Result<bool, PgError> {
    let client = info.connect(APP).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether the replication connection is encrypted, per the server (plain SQL on a walsender).
async fn replication_ssl(info: &ConnInfo) -> Result<bool, PgError> {
    let mut repl = ReplicationConnection::connect(info, APP).await?;
    repl.identify_system().await?;
    let rows = repl
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await?;
    assert_eq!(repl.is_tls(), rows[0][0].as_deref() == Some("t"));
    repl.close().await;
    Ok(rows[0][0].as_deref() == Some("t"))
}

/// Both connections succeed, and agree on encryption; returns whether they are encrypted.
async fn both_ok(info: &ConnInfo) -> bool {
    let ordinary = ordinary_ssl(info)
        .await
        .unwrap_or_else(|e| panic!("ordinary connection to {info:?}: {e}"));
    let replication = replication_ssl(info)
        .await
        .unwrap_or_else(|e| panic!("replication connection to {info:?}: {e}"));
    assert_eq!(ordinary, replication, "{info:?}");
    ordinary
}

/// Both connections fail; returns both errors.
async fn both_fail(info: &ConnInfo) -> [PgError; 2] {
    let ordinary = ordinary_ssl(info).await.expect_err("ordinary should fail");
    let replication = replication_ssl(info)
        .await
        .expect_err("replication should fail");
    [ordinary, replication]
}

#[tokio::test]
async fn trust_over_tcp_and_unix_socket() {
    let c = Cluster::start(&ClusterOptions::default()).unwrap();
    let tcp = info(&c.dsn("postgres"));

    let client = tcp.connect(APP).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), APP);
    // An application_name in the DSN wins over the caller's.
    let named = info(&format!("{} application_name=from_dsn", c.dsn("postgres")));
    let client = named.connect(APP).await.unwrap();
    let row = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "from_dsn");

    // The replication connection pins the text form of values.
    let mut repl = ReplicationConnection::connect(&tcp, APP).await.unwrap();
    assert!(repl.backend_pid().is_some());
    for (setting, expected) in [
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("client_encoding", "UTF8"),
        ("application_name", APP),
    ] {
        let rows = repl.simple_query(&format!("SHOW {setting}")).await.unwrap();
        assert_eq!(rows, vec![vec![Some(expected.to_string())]], "{setting}");
    }
    repl.close().await;

    // No TLS on this server: prefer falls back to plaintext, require refuses.
    assert!(!both_ok(&tcp).await, "prefer gives plaintext here");
    for e in both_fail(&info(&format!("{} sslmode=require", c.dsn("postgres")))).await {
        assert!(!e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(text.contains("does not accept TLS"), "{text}");
        assert!(text.contains("sslmode=require"), "{text}");
    }

    // A Unix socket directory as host: no TLS there, whatever the sslmode (as libpq), so not
    // even verify-full needs a CA file.
    for mode in ["require", "verify-full"] {
        let unix = info(&format!(
            "host={} port={} user=postgres dbname=postgres sslmode={mode}",
            c.socket_dir().display(),
            c.port()
        ));
        assert!(!both_ok(&unix).await, "{mode}");
    }
    let unix = info(&format!(
        "host={} port={} user=postgres dbname=postgres",
        c.socket_dir().display(),
        c.port()
    ));
    let client = unix.connect(APP).await.unwrap();
    let row = client
        .query_one("SELECT inet_client_addr() IS NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "should be a Unix-socket session");

    // Hosts are tried in order: a dead one first, then the live one.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let listed = info(&format!(
        "host=127.0.0.1,127.0.0.1 port={dead},{} user=postgres dbname=postgres",
        c.port()
    ));
    assert!(!both_ok(&listed).await);

    // An unknown database is definite, with its SQLSTATE.
    for e in both_fail(&info(&c.dsn("no_such_db"))).await {
        assert_eq!(e.code(), Some("3D000"), "{e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("dbname=no_such_db"), "{e}");
    }
}

#[tokio::test]
async fn scram_password_good_bad_and_missing() {
    let c = Cluster::start(&ClusterOptions {
        password: Some("s3cret-pw".into()),
        ..Default::default()
    })
    .unwrap();
    let good = info(&format!("{} password=s3cret-pw", c.dsn("postgres")));
    both_ok(&good).await;

    let bad = info(&format!("{} password=wrong-pw", c.dsn("postgres")));
    for e in both_fail(&bad).await {
        assert_eq!(e.code(), Some("28P01"), "{e}");
        assert!(!e.is_transient());
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("wrong-pw"), "{shown}");
        assert!(shown.contains("host=127.0.0.1"), "{shown}");
    }

    let missing = info(&c.dsn("postgres"));
    for e in both_fail(&missing).await {
        assert!(!e.is_transient(), "{e}");
        assert!(
            e.to_string().contains("no password was given")
                || e.to_string().contains("none was given"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn md5_and_cleartext_password() {
    let mut c = Cluster::start(&ClusterOptions {
        password: Some("md5-pw".into()),
        settings: vec![("password_encryption".into(), "md5".into())],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        c.psql_socket(
            "postgres",
            "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'postgres'"
        )
        .unwrap(),
        "t",
        "the password should be stored as an md5 hash"
    );
    // With an md5-hashed password and an md5 hba line, the server can only ask for md5.
    std::fs::write(
        c.data_dir().join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         host all all 127.0.0.1/32 md5\nhost replication all 127.0.0.1/32 md5\n",
    )
    .unwrap();
    c.psql_socket("postgres", "SELECT pg_reload_conf()")
        .unwrap();
    wait_for_hba_method(&c, "md5");

    both_ok(&info(&format!("{} password=md5-pw", c.dsn("postgres")))).await;
    for e in both_fail(&info(&format!("{} password=nope-pw", c.dsn("postgres")))).await {
        assert_eq!(e.code(), Some("28P01"), "{e}");
        assert!(!format!("{e} {e:?}").contains("nope-pw"));
    }

    // hba `password`: the server asks for the cleartext password (over this loopback socket).
    std::fs::write(
        c.data_dir().join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         host all all 127.0.0.1/32 password\nhost replication all 127.0.0.1/32 password\n",
    )
    .unwrap();
    c.psql_socket("postgres", "SELECT pg_reload_conf()")
        .unwrap();
    wait_for_hba_method(&c, "password");
    both_ok(&info(&format!("{} password=md5-pw", c.dsn("postgres")))).await;
    for e in both_fail(&info(&format!("{} password=nope-pw", c.dsn("postgres")))).await {
        assert_eq!(e.code(), Some("28P01"), "{e}");
    }
    c.stop(understudy::cluster::StopMode::Fast).unwrap();
}

/// Bounded poll until the server's loaded hba rules use `method` for host lines.
fn wait_for_hba_method(c: &Cluster, method: &str) {
    let sql = "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules \
               WHERE type = 'host'";
    for _ in 0..50 {
        if c.psql_socket("postgres", sql).unwrap() == method {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("pg_hba.conf did not switch to {method} within 5 s");
}

#[tokio::test]
async fn password_from_pgpass_file() {
    let c = Cluster::start(&ClusterOptions {
        password: Some("from-pgpass".into()),
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        format!(
            "# decoys first\n127.0.0.1:{p}:otherdb:postgres:wrong\n\
             127.0.0.1:{q}:*:postgres:wrong\n127.0.0.1:{p}:*:postgres:from-pgpass\n",
            p = c.port(),
            q = c.port() + 1
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_str = file.display().to_string();
    let env = move |k: &str| (k == "PGPASSFILE").then(|| file_str.clone());
    both_ok(&info_with(&c.dsn("postgres"), &env)).await;

    // ~/.pgpass is the default.
    std::fs::copy(&file, dir.path().join(".pgpass")).unwrap();
    let from_home = ConnInfo::parse_with(&c.dsn("postgres"), &|_| None, Some(dir.path())).unwrap();
    both_ok(&from_home).await;

    // A file others can read is ignored, as libpq ignores it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for e in both_fail(&info_with(&c.dsn("postgres"), &env)).await {
        assert!(!e.is_transient(), "{e}");
    }
}

/// A CA, a server certificate it signed for localhost and 127.0.0.1, and an unrelated CA.
struct TestPki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server: TlsFiles,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "the openssl command is needed to make test certificates (apt-get install openssl)",
        );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki() -> TestPki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for name in ["ca", "other_ca"] {
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        let subj = format!("/CN=understudy test {name}");
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(d, &args);
    }
    let mut args = vec!["req", "-new", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(d, &args);
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
    TestPki {
        ca: d.join("ca.crt"),
        other_ca: d.join("other_ca.crt"),
        server: TlsFiles {
            cert: d.join("server.crt"),
            key: d.join("server.key"),
        },
        _dir: dir,
    }
}

#[tokio::test]
async fn tls_modes_for_both_connections() {
    let pki = make_pki();
    let c = Cluster::start(&ClusterOptions {
        tls: Some(pki.server.clone()),
        ..Default::default()
    })
    .unwrap();
    let port = c.port();
    let ca = pki.ca.display().to_string();
    let other_ca = pki.other_ca.display().to_string();
    let dsn = |host: &str, extra: &str| {
        info(&format!(
            "host={host} port={port} user=postgres dbname=postgres {extra}"
        ))
    };

    // Verification that passes.
    for (host, extra) in [
        ("127.0.0.1", format!("sslmode=verify-full sslrootcert={ca}")),
        ("localhost", format!("sslmode=verify-full sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-ca sslrootcert={ca}")),
        // verify-ca does not check the name: a name the certificate lacks still passes.
        (
            "wrong.invalid hostaddr=127.0.0.1",
            format!("sslmode=verify-ca sslrootcert={ca}"),
        ),
        ("127.0.0.1", "sslmode=require".to_string()),
        ("127.0.0.1", "sslmode=prefer".to_string()),
        ("127.0.0.1", String::new()),
    ] {
        assert!(
            both_ok(&dsn(host, &extra)).await,
            "{host} {extra}: should be TLS"
        );
    }
    assert!(!both_ok(&dsn("127.0.0.1", "sslmode=disable")).await);

    // Verification that fails, definitely, saying why.
    let cases = [
        (
            "wrong.invalid hostaddr=127.0.0.1",
            format!("sslmode=verify-full sslrootcert={ca}"),
            "does not name host wrong.invalid".to_string(),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full sslrootcert={other_ca}"),
            format!("does not verify against the CA in sslrootcert={other_ca}"),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca sslrootcert={other_ca}"),
            format!("does not verify against the CA in sslrootcert={other_ca}"),
        ),
        // libpq's rule: require with a root CA file verifies the chain, as verify-ca.
        (
            "127.0.0.1",
            format!("sslmode=require sslrootcert={other_ca}"),
            format!("does not verify against the CA in sslrootcert={other_ca}"),
        ),
        (
            "127.0.0.1",
            "sslmode=verify-full".to_string(),
            "/nonexistent-home/.postgresql/root.crt cannot be read".to_string(),
        ),
    ];
    for (host, extra, expected) in cases {
        for e in both_fail(&dsn(host, &extra)).await {
            assert!(!e.is_transient(), "{host} {extra}: {e}");
            assert!(e.to_string().contains(&expected), "{host} {extra}: {e}");
        }
    }
}

#[tokio::test]
async fn unreachable_port_is_transient_and_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = info(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=nms"
    ));
    let expected = format!(
        "could not connect to host=127.0.0.1 port={port} user=postgres dbname=nms: connection \
         refused; check that PostgreSQL is running there and the address is right"
    );
    for e in both_fail(&unreachable).await {
        assert!(e.is_transient(), "{e}");
        assert_eq!(e.to_string(), expected);
    }

    // A server that accepts the TCP connection and never answers: connect_timeout applies.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let slow = info(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=nms connect_timeout=2"
    ));
    let started = std::time::Instant::now();
    for e in both_fail(&slow).await {
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("no answer within 2s"), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    hold.abort();
}
