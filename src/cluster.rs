//! Throwaway PostgreSQL clusters for `understudy demo` and the tests.
//!
//! A cluster lives in its own temporary directory, listens only on 127.0.0.1 on a free port and a
//! Unix socket inside that directory, and is stopped (immediate mode) and deleted when dropped.
//! The first cluster of a machine runs `initdb` once into a template directory; every later
//! cluster copies the template, which is about ten times faster than a fresh `initdb`.
//!
//! `initdb` and `postgres` refuse to run as root: when we are root, the cluster's files belong to
//! the `postgres` user and its programs run under that user's uid.
//!
//! The server binaries come from `$UNDERSTUDY_PG_BINDIR`, else `pg_config --bindir`, else the
//! newest `/usr/lib/postgresql/*/bin`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};

/// How a throwaway cluster is set up.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// When set, TCP connections authenticate with SCRAM-SHA-256 and this password for
    /// `postgres` (the Unix socket stays `trust`). Otherwise every connection is `trust`.
    pub password: Option<String>,
    /// Server certificate and key (PEM) to turn on TLS.
    pub tls: Option<TlsFiles>,
    /// Extra `postgresql.conf` settings, written after the defaults.
    pub settings: Vec<(String, String)>,
}

/// A server certificate and its private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to stop a cluster (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to finish their work; checkpoint.
    Fast,
    /// Like a power cut: no checkpoint, crash recovery at the next start.
    Immediate,
}

/// A running (or stopped) throwaway cluster. Dropping it stops it and removes its files.
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    bindir: PathBuf,
    owner: Option<(u32, u32)>,
    running: bool,
}

impl Cluster {
    /// Start a new cluster with `wal_level = logical` and room for replication slots.
    pub fn start(options: &ClusterOptions) -> Result<Cluster> {
        let bindir = pg_bindir()?;
        let owner = server_owner()?;
        let template = template_dir(&bindir, owner)?;

        static SEQ: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "understudy-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if root.exists() {
            std::fs::remove_dir_all(&root).ok();
        }
        std::fs::create_dir_all(&root)
            .with_context(|| format!("while creating {}", root.display()))?;
        let data = root.join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data))
            .context("while copying the template data directory")?;
        chown(&root, owner)?;

        let mut cluster = Cluster {
            root,
            data,
            port: 0,
            bindir,
            owner,
            running: false,
        };
        cluster.write_config(options)?;
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.start_server() {
                Ok(()) => break,
                Err(e) => last_error = Some(e),
            }
        }
        if !cluster.running {
            return Err(last_error.unwrap_or_else(|| anyhow!("server did not start")));
        }
        if let Some(password) = &options.password {
            cluster.psql_socket(
                "postgres",
                &format!(
                    "ALTER ROLE postgres PASSWORD '{}'",
                    password.replace('\'', "''")
                ),
            )?;
        }
        Ok(cluster)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// A libpq key=value DSN for `dbname` as the `postgres` superuser, over TCP.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Start the server again after [`Cluster::stop`].
    pub fn restart(&mut self) -> Result<()> {
        if !self.running {
            self.start_server()?;
        }
        Ok(())
    }

    /// Stop the server.
    pub fn stop(&mut self, mode: StopMode) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode])?;
        self.running = false;
        Ok(())
    }

    /// Run SQL through `psql` over the Unix socket (trust), returning unaligned tuples-only output.
    pub fn psql_socket(&self, dbname: &str, sql: &str) -> Result<String> {
        let out = run(self
            .command("psql")
            .arg("-X")
            .arg("-q")
            .arg("-A")
            .arg("-t")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("-d")
            .arg(dbname)
            .arg("-c")
            .arg(sql))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Create a database.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql_socket(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// The tail of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn write_config(&self, options: &ClusterOptions) -> Result<()> {
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\n\
             wal_level = logical\n\
             max_wal_senders = 20\n\
             max_replication_slots = 20\n\
             max_connections = 100\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = '64MB'\n\
             wal_sender_timeout = '30s'\n\
             log_min_messages = warning\n\
             log_line_prefix = '%m [%p] '\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.root.display()
        ));
        if let Some(tls) = &options.tls {
            std::fs::copy(&tls.cert, self.data.join("server.crt"))
                .context("while copying the TLS certificate")?;
            std::fs::copy(&tls.key, self.data.join("server.key"))
                .context("while copying the TLS key")?;
            std::fs::set_permissions(
                self.data.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        std::fs::write(self.data.join("postgresql.auto.conf"), conf)?;
        let method = if options.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = format!(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 {method}\nhost replication all 127.0.0.1/32 {method}\n"
        );
        std::fs::write(self.data.join("pg_hba.conf"), hba)?;
        chown(&self.root, self.owner)
    }

    fn write_port(&self) -> Result<()> {
        std::fs::write(
            self.data.join("port.conf"),
            format!("port = {}\n", self.port),
        )?;
        let conf = self.data.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf)?;
        if !text.contains("include_if_exists = 'port.conf'") {
            std::fs::write(&conf, format!("{text}\ninclude_if_exists = 'port.conf'\n"))?;
        }
        chown(&self.root, self.owner)
    }

    fn start_server(&mut self) -> Result<()> {
        let log = self.log_path();
        let result = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            log.to_str().unwrap_or("server.log"),
        ]);
        match result {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "PostgreSQL did not start on port {}; server log:\n{}",
                self.port,
                self.log_tail()
            ))),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        run(self.command("pg_ctl").arg("-D").arg(&self.data).args(args))
    }

    fn command(&self, program: &str) -> Command {
        command_as(&self.bindir.join(program), self.owner)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop(StopMode::Immediate);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The folder holding the PostgreSQL server binaries.
pub fn pg_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("UNDERSTUDY_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
        bail!(
            "UNDERSTUDY_PG_BINDIR={} holds no initdb; point it at the PostgreSQL server binaries",
            dir.display()
        );
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install them \
             (Debian: apt-get install postgresql) or set UNDERSTUDY_PG_BINDIR to their folder"
        )
    })
}

/// Who owns the cluster's files: `None` when we are not root, else the `postgres` user.
fn server_owner() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL in literal");
    // SAFETY: getpwnam gets a valid C string; the result is read at once, before any other call
    // that could overwrite its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, and PostgreSQL refuses to run as root, but there is no 'postgres' \
             user to run it as; create one (useradd --system postgres) or run as another user"
        );
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// Run `initdb` once into a shared template directory, and return it.
fn template_dir(bindir: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let version = run(Command::new(bindir.join("postgres")).arg("--version"))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .to_string();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let template = std::env::temp_dir().join(format!("understudy-template-{version}-{uid}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let staging = std::env::temp_dir().join(format!(
        "understudy-template-{version}-{uid}.{}",
        std::process::id()
    ));
    std::fs::remove_dir_all(&staging).ok();
    std::fs::create_dir_all(&staging)?;
    chown(&staging, owner)?;
    run(command_as(&bindir.join("initdb"), owner)
        .arg("-D")
        .arg(&staging)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync"))
    .context("while running initdb for the template cluster")?;
    // Another process may have won the race: then its template is as good as ours.
    if std::fs::rename(&staging, &template).is_err() {
        std::fs::remove_dir_all(&staging).ok();
    }
    if !template.join("PG_VERSION").exists() {
        bail!("template cluster {} is incomplete", template.display());
    }
    Ok(template)
}

fn command_as(program: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd.current_dir("/");
    cmd
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path))?;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("while looking for a free port")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("while running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}
