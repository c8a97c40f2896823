//! `ConnInfo`: where a PostgreSQL server is and how to log in, read the way libpq reads it.
//!
//! Owns turning what a psql user already has (a DSN, `PG*` environment variables, a pgpass
//! file) into one resolved, immutable description of a server. Both the ordinary SQL connection
//! (tokio-postgres) and our replication connection are opened from it.
//!
//! Rules, as in libpq (<https://www.postgresql.org/docs/15/libpq-connect.html>):
//! * The DSN is key=value pairs (`host=db1 port=5432 user=nms`, values optionally 'quoted' with
//!   `\` escapes) or a `postgres://` / `postgresql://` URI. It is parsed by
//!   `tokio_postgres::Config`, except the keys tokio-postgres does not know, which we take out
//!   first: `sslmode` (tokio-postgres lacks verify-ca and verify-full), `sslrootcert`, `passfile`.
//! * What the DSN leaves unset comes from PGHOST, PGHOSTADDR, PGPORT, PGUSER, PGPASSWORD,
//!   PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGAPPNAME, PGCONNECT_TIMEOUT, PGOPTIONS, then from the
//!   defaults: host = the Unix socket directory `/var/run/postgresql`, port 5432, user = the OS
//!   user, dbname = user, sslmode = prefer, sslrootcert = `~/.postgresql/root.crt`.
//! * With no password (or an empty one), the pgpass file gives it (see [`super::pgpass`]).
//! * `sslmode=allow` is read as `prefer` (both accept TLS or not; prefer tries TLS first).
//!
//! Invariant: the password never leaves this type except to authenticate. [`ConnInfo::redacted`]
//! and `Debug` leave it out; errors and logs name a server by `redacted()` only.
//!
//! Not supported: pg_service.conf (`service=`), client certificates (`sslcert`, `sslkey`),
//! `sslrootcert=system`; tokio-postgres rejects those keys as unknown options. With a URI, a host
//! without a port gets 5432 from tokio-postgres, so PGPORT is not consulted there.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host as PgHost;

use super::pgpass;

mod dsn;

/// The Unix socket directory libpq uses when no host is given (Debian's build).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`: whether to use TLS, and what to verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verifying the certificate; else plaintext.
    #[default]
    Prefer,
    /// TLS, without verifying the certificate (unless a root CA file exists: then as verify-ca,
    /// which is libpq's backwards-compatible behaviour).
    Require,
    /// TLS; the certificate must chain to `sslrootcert`. The host name is not checked.
    VerifyCa,
    /// TLS; the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnInfoError(format!(
                    "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The connection string could not be understood. The text never holds the DSN itself (it may
/// carry a password), only what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string: {0}")]
pub struct ConnInfoError(String);

/// One host to try: a TCP host name or address (optionally with a fixed `hostaddr`), or a Unix
/// socket directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Tcp {
        host: String,
        hostaddr: Option<IpAddr>,
        port: u16,
    },
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

/// A resolved description of one PostgreSQL server (or a libpq-style list of candidates).
#[derive(Clone)]
pub struct ConnInfo {
    targets: Vec<Target>,
    user: String,
    dbname: String,
    password: Option<Vec<u8>>,
    /// The pgpass file consulted, when the password did not come from the DSN or environment.
    passfile: Option<PathBuf>,
    application_name: Option<String>,
    options: Option<String>,
    sslmode: SslMode,
    sslrootcert: Option<PathBuf>,
    connect_timeout: Option<Duration>,
}

impl ConnInfo {
    /// Parse a DSN, filling gaps from the process environment and the user's home directory.
    pub fn parse(dsn: &str) -> Result<ConnInfo, ConnInfoError> {
        let env = |key: &str| std::env::var(key).ok();
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| os_user().map(|u| u.1));
        ConnInfo::parse_with(dsn, &env, home.as_deref())
    }

    /// Parse a DSN with an explicit environment (`env("PGHOST")`…) and home directory (for
    /// `~/.pgpass` and `~/.postgresql/root.crt`), so tests need not touch the process environment.
    pub fn parse_with(
        dsn: &str,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let env = |key: &str| env(key).filter(|v| !v.is_empty());
        let (rest, extracted) = dsn::extract_libpq_only_keys(dsn.trim())?;
        let take = |key: &str| {
            extracted
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // tokio-postgres's Display is only "invalid connection string"; the cause says what.
            let cause = std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string());
            ConnInfoError(format!(
                "{cause}; expected libpq key=value pairs (host=db1 port=5432 user=nms dbname=nms) \
                 or a postgres:// URI"
            ))
        })?;

        let sslmode = match take("sslmode").or_else(|| env("PGSSLMODE")) {
            Some(mode) => mode.parse()?,
            None => SslMode::Prefer,
        };
        let sslrootcert = take("sslrootcert")
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".postgresql").join("root.crt")));

        let targets = targets(&config, &env)?;
        let user = match config.get_user() {
            Some(user) => user.to_string(),
            None => env("PGUSER")
                .or_else(|| os_user().map(|u| u.0))
                .ok_or_else(|| {
                    ConnInfoError("no user given and the OS user name is unknown; set user=".into())
                })?,
        };
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let application_name = config
            .get_application_name()
            .map(str::to_string)
            .or_else(|| env("PGAPPNAME"));
        let options = config
            .get_options()
            .map(str::to_string)
            .or_else(|| env("PGOPTIONS"));
        let connect_timeout = match config.get_connect_timeout() {
            Some(t) => Some(*t),
            None => match env("PGCONNECT_TIMEOUT") {
                Some(t) => {
                    let secs: i64 = t.trim().parse().map_err(|_| {
                        ConnInfoError(format!("PGCONNECT_TIMEOUT '{t}' is not a number"))
                    })?;
                    // libpq: zero or less waits forever; one second is raised to two.
                    (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
                }
                None => None,
            },
        };

        let mut info = ConnInfo {
            targets,
            user,
            dbname,
            password: config
                .get_password()
                .map(<[u8]>::to_vec)
                .or_else(|| env("PGPASSWORD").map(String::into_bytes))
                .filter(|p| !p.is_empty()),
            passfile: None,
            application_name,
            options,
            sslmode,
            sslrootcert,
            connect_timeout,
        };
        if info.password.is_none() {
            info.passfile = take("passfile")
                .or_else(|| env("PGPASSFILE"))
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".pgpass")));
            info.password = info.password_from_file();
        }
        Ok(info)
    }

    fn password_from_file(&self) -> Option<Vec<u8>> {
        let file = self.passfile.as_deref()?;
        let (host, port) = match self.targets.first()? {
            Target::Tcp {
                host,
                hostaddr,
                port,
            } => match host.is_empty() {
                true => (hostaddr.map(|a| a.to_string()).unwrap_or_default(), *port),
                false => (host.clone(), *port),
            },
            // libpq matches the default socket directory as "localhost", any other by its path.
            Target::Unix { dir, port } if dir == Path::new(DEFAULT_SOCKET_DIR) => {
                ("localhost".to_string(), *port)
            }
            Target::Unix { dir, port } => (dir.display().to_string(), *port),
        };
        pgpass::read_password(file, &host, port, &self.dbname, &self.user).map(String::into_bytes)
    }

    /// A copy for another database on the same server (the pgpass file, if it gave the password,
    /// is consulted again for the new name).
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        let mut info = self.clone();
        info.dbname = dbname.to_string();
        if info.passfile.is_some() {
            info.password = info.password_from_file();
        }
        info
    }

    /// The first host: a host name, an IP address, or a Unix socket directory.
    pub fn host(&self) -> String {
        match &self.targets[0] {
            Target::Tcp { host, hostaddr, .. } if host.is_empty() => {
                hostaddr.map(|a| a.to_string()).unwrap_or_default()
            }
            Target::Tcp { host, .. } => host.clone(),
            Target::Unix { dir, .. } => dir.display().to_string(),
        }
    }

    /// The first host's port.
    pub fn port(&self) -> u16 {
        match &self.targets[0] {
            Target::Tcp { port, .. } | Target::Unix { port, .. } => *port,
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    pub(crate) fn password(&self) -> Option<&[u8]> {
        self.password.as_deref()
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// The CA file for verify-ca/verify-full: `sslrootcert`, else `~/.postgresql/root.crt`.
    pub fn sslrootcert(&self) -> Option<&Path> {
        self.sslrootcert.as_deref()
    }

    /// The DSN's (or PGAPPNAME's) application_name, which wins over the one a caller passes.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// Command-line options for the server (`options=` or PGOPTIONS).
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    pub(crate) fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// `host=… port=… user=… dbname=…` (plus hostaddr and a non-default sslmode): enough to tell
    /// which server, never the password.
    pub fn redacted(&self) -> String {
        let mut hosts = Vec::new();
        let mut addrs = Vec::new();
        let mut ports = Vec::new();
        for t in &self.targets {
            match t {
                Target::Tcp {
                    host,
                    hostaddr,
                    port,
                } => {
                    hosts.push(host.clone());
                    addrs.push(hostaddr.map(|a| a.to_string()).unwrap_or_default());
                    ports.push(port.to_string());
                }
                Target::Unix { dir, port } => {
                    hosts.push(dir.display().to_string());
                    addrs.push(String::new());
                    ports.push(port.to_string());
                }
            }
        }
        let mut out = String::new();
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push_str(&format!("host={} ", hosts.join(",")));
        }
        if addrs.iter().any(|a| !a.is_empty()) {
            out.push_str(&format!("hostaddr={} ", addrs.join(",")));
        }
        ports.dedup();
        out.push_str(&format!(
            "port={} user={} dbname={}",
            ports.join(","),
            self.user,
            self.dbname
        ));
        if self.sslmode != SslMode::Prefer {
            out.push_str(&format!(" sslmode={}", self.sslmode));
        }
        out
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("dsn", &self.redacted())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("application_name", &self.application_name)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

/// The hosts to try, with their ports: DSN first, then PGHOST/PGHOSTADDR/PGPORT, then defaults.
fn targets(
    config: &tokio_postgres::Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Target>, ConnInfoError> {
    let mut hosts: Vec<PgHost> = config.get_hosts().to_vec();
    let mut addrs: Vec<IpAddr> = config.get_hostaddrs().to_vec();
    if hosts.is_empty() && addrs.is_empty() {
        if let Some(h) = env("PGHOST") {
            hosts = h.split(',').map(host_from_str).collect();
        }
        if let Some(a) = env("PGHOSTADDR") {
            addrs = a
                .split(',')
                .map(|a| {
                    a.trim().parse().map_err(|_| {
                        ConnInfoError(format!("PGHOSTADDR '{a}' is not an IP address"))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
    }
    if hosts.is_empty() && addrs.is_empty() {
        hosts.push(PgHost::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)));
    }
    let count = hosts.len().max(addrs.len());
    if !hosts.is_empty() && !addrs.is_empty() && addrs.len() != hosts.len() {
        return Err(ConnInfoError(format!(
            "{} hosts but {} hostaddrs; give one hostaddr per host",
            hosts.len(),
            addrs.len()
        )));
    }
    let mut ports: Vec<u16> = config.get_ports().to_vec();
    if ports.is_empty() {
        if let Some(p) = env("PGPORT") {
            ports = p
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse()
                        .map_err(|_| ConnInfoError(format!("PGPORT '{p}' is not a port number")))
                })
                .collect::<Result<_, _>>()?;
        }
    }
    if ports.is_empty() {
        ports.push(DEFAULT_PORT);
    }
    if ports.len() != 1 && ports.len() != count {
        return Err(ConnInfoError(format!(
            "{count} hosts but {} ports; give one port, or one per host",
            ports.len()
        )));
    }
    Ok((0..count)
        .map(|i| {
            let port = ports[if ports.len() == 1 { 0 } else { i }];
            let hostaddr = addrs.get(i).copied();
            match hosts.get(i) {
                Some(PgHost::Unix(dir)) => Target::Unix {
                    dir: dir.clone(),
                    port,
                },
                Some(PgHost::Tcp(host)) => Target::Tcp {
                    host: host.clone(),
                    hostaddr,
                    port,
                },
                None => Target::Tcp {
                    host: String::new(),
                    hostaddr,
                    port,
                },
            }
        })
        .collect())
}

fn host_from_str(h: &str) -> PgHost {
    if h.starts_with('/') {
        PgHost::Unix(PathBuf::from(h))
    } else {
        PgHost::Tcp(h.to_string())
    }
}

/// The effective OS user's name and home directory, as libpq finds them (getpwuid).
pub(crate) fn os_user() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; zeroed is a valid (empty) value that getpwuid_r overwrites.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives every use of the strings below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both fields point at NUL-terminated strings inside buf.
    let (name, dir) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(dir.to_string_lossy().into_owned()),
    ))
}

#[cfg(test)]
mod tests;
