//! `PgError`: every failure talking to PostgreSQL, sorted into transient and definite.
//!
//! Owns the one rule the rest of understudy relies on to decide between "retry from the last
//! durable LSN with backoff" and "stop and tell the operator": [`PgError::is_transient`]. As in
//! Materialize's PostgreSQL source, an error is transient unless it is proven definite. Proof comes
//! from the SQLSTATE the server sent (never from message text, which is localized), or from a
//! failure on our side that no retry can fix: a bad DSN, a TLS certificate that does not verify, a
//! server that has no TLS when the DSN demands it, a password that is missing.
//!
//! Invariant: the text of a `PgError` never holds a password. It names the server by
//! [`ConnInfo::redacted`](super::conninfo::ConnInfo::redacted) only.
//!
//! SQLSTATE codes: <https://www.postgresql.org/docs/15/errcodes-appendix.html>.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use super::conninfo::{ConnInfo, ConnInfoError, SslMode};

mod sqlstate;
use sqlstate::{advice, sqlstate_is_transient};

/// A failure talking to PostgreSQL: which server, what went wrong, and whether a retry can help.
#[derive(Debug)]
pub struct PgError {
    /// The redacted DSN of the server, when known.
    endpoint: Option<String>,
    /// Boxed: a `Result<_, PgError>` stays small on the happy path.
    kind: Box<Kind>,
}

#[derive(Debug)]
enum Kind {
    /// The server sent an ErrorResponse.
    Server(ServerError),
    /// No connection could be made to any of the DSN's hosts.
    Connect { tried: String, source: io::Error },
    /// The server did not answer within `connect_timeout`.
    Timeout { tried: String, after: Duration },
    /// An established connection broke.
    Io(io::Error),
    /// The server answered the SSLRequest with 'N', but the sslmode demands TLS.
    TlsUnavailable(SslMode),
    /// The TLS handshake failed (a certificate that does not verify, among others).
    Tls {
        source: rustls::Error,
        host: String,
        sslrootcert: Option<PathBuf>,
    },
    /// Local TLS setup failed: CA file missing or unreadable, bad server name.
    TlsSetup(String),
    /// Authentication failed on our side: no password, an unsupported method, a SCRAM mismatch.
    Auth(String),
    /// The connection string is wrong.
    Config(ConnInfoError),
    /// The server sent something the protocol does not allow here.
    Protocol(String),
    /// Any other tokio-postgres failure (neither a server error nor I/O).
    Client(tokio_postgres::Error),
}

/// The fields of an ErrorResponse that matter to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Read the fields of an ErrorResponse or NoticeResponse body.
    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> io::Result<ServerError> {
        let mut e = ServerError::default();
        let mut localized_severity = String::new();
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => e.severity = value,
                b'S' => localized_severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity;
        }
        Ok(e)
    }
}

impl PgError {
    pub(crate) fn server(e: ServerError) -> PgError {
        PgError::new(Kind::Server(e))
    }
    pub(crate) fn connect(tried: String, source: io::Error) -> PgError {
        PgError::new(Kind::Connect { tried, source })
    }
    pub(crate) fn timeout(tried: String, after: Duration) -> PgError {
        PgError::new(Kind::Timeout { tried, after })
    }
    pub(crate) fn io(e: io::Error) -> PgError {
        PgError::new(Kind::Io(e))
    }
    pub(crate) fn tls_unavailable(mode: SslMode) -> PgError {
        PgError::new(Kind::TlsUnavailable(mode))
    }
    /// A failed TLS handshake; `e` is what tokio-rustls returned.
    pub(crate) fn tls_handshake(e: io::Error, host: &str, sslrootcert: Option<PathBuf>) -> PgError {
        let kind = e.kind();
        match e
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(source)) => PgError::new(Kind::Tls {
                source: *source,
                host: host.to_string(),
                sslrootcert,
            }),
            Some(Err(other)) => PgError::io(io::Error::new(kind, other)),
            None => PgError::io(io::Error::from(kind)),
        }
    }
    pub(crate) fn tls_setup(message: String) -> PgError {
        PgError::new(Kind::TlsSetup(message))
    }
    pub(crate) fn auth(message: String) -> PgError {
        PgError::new(Kind::Auth(message))
    }
    pub(crate) fn protocol(message: impl Into<String>) -> PgError {
        PgError::new(Kind::Protocol(message.into()))
    }

    fn new(kind: Kind) -> PgError {
        PgError {
            endpoint: None,
            kind: Box::new(kind),
        }
    }

    /// Name the server this error came from (its redacted DSN), for the message.
    pub fn at(mut self, info: &ConnInfo) -> PgError {
        self.endpoint = Some(info.redacted());
        self
    }

    /// The SQLSTATE the server sent, if the server sent the error.
    pub fn code(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The server's primary message, if the server sent the error.
    pub fn server_message(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Server(e) => Some(&e.message),
            _ => None,
        }
    }

    /// The server's DETAIL, if any.
    pub fn detail(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Server(e) => e.detail.as_deref(),
            _ => None,
        }
    }

    /// The server's HINT, if any.
    pub fn hint(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Server(e) => e.hint.as_deref(),
            _ => None,
        }
    }

    /// The server this error is about (redacted DSN), when known.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// A tokio-postgres failure that is neither the server's nor I/O.
    pub(crate) fn is_client_failure(&self) -> bool {
        matches!(*self.kind, Kind::Client(_))
    }

    /// Whether retrying (with backoff, from the last durable LSN) can succeed without anyone
    /// changing anything. Transient unless proven definite.
    pub fn is_transient(&self) -> bool {
        match &*self.kind {
            Kind::Server(e) => sqlstate_is_transient(&e.code),
            Kind::Tls { source, .. } => !matches!(source, rustls::Error::InvalidCertificate(_)),
            Kind::TlsUnavailable(_) | Kind::TlsSetup(_) | Kind::Auth(_) | Kind::Config(_) => false,
            Kind::Connect { .. }
            | Kind::Timeout { .. }
            | Kind::Io(_)
            | Kind::Protocol(_)
            | Kind::Client(_) => true,
        }
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        io::ErrorKind::NotFound => "no such socket file".into(),
        _ => e.to_string(),
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.endpoint.as_deref();
        let prefix = |f: &mut fmt::Formatter<'_>| match at {
            Some(at) => write!(f, "{at}: "),
            None => Ok(()),
        };
        match &*self.kind {
            Kind::Connect { tried, source } => connect_failure(f, at, tried, &describe_io(source)),
            Kind::Timeout { tried, after } => {
                let what = format!("no answer within {}s (connect_timeout)", after.as_secs());
                connect_failure(f, at, tried, &what)
            }
            Kind::Server(e) => {
                prefix(f)?;
                write!(f, "{}: {} (SQLSTATE {})", e.severity, e.message, e.code)?;
                if let Some(detail) = &e.detail {
                    write!(f, "; detail: {detail}")?;
                }
                if let Some(hint) = &e.hint {
                    write!(f, "; hint: {hint}")?;
                }
                if let Some(advice) = advice(&e.code) {
                    write!(f, "; {advice}")?;
                }
                Ok(())
            }
            Kind::Io(e) => {
                prefix(f)?;
                write!(f, "connection lost: {}", describe_io(e))
            }
            Kind::TlsUnavailable(mode) => {
                prefix(f)?;
                write!(
                    f,
                    "the server does not accept TLS connections, but sslmode={mode} requires TLS; \
                     turn on ssl in the server's postgresql.conf, or use sslmode=prefer"
                )
            }
            Kind::Tls {
                source,
                host,
                sslrootcert,
            } => {
                prefix(f)?;
                write!(f, "TLS handshake failed: {source}")?;
                let root = sslrootcert
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(none)".into());
                if let rustls::Error::InvalidCertificate(cert) = source {
                    use rustls::CertificateError as C;
                    match cert {
                        C::NotValidForName | C::NotValidForNameContext { .. } => write!(
                            f,
                            "; the server's certificate does not name host {host}: connect with a \
                             host name the certificate lists, or use sslmode=verify-ca"
                        )?,
                        C::Expired
                        | C::ExpiredContext { .. }
                        | C::NotValidYet
                        | C::NotValidYetContext { .. } => write!(
                            f,
                            "; the server's certificate is outside its validity period: renew it, \
                             or check this machine's clock"
                        )?,
                        _ => write!(
                            f,
                            "; the server's certificate does not verify against the CA in \
                             sslrootcert={root}: point sslrootcert at the CA that issued it"
                        )?,
                    }
                }
                Ok(())
            }
            Kind::TlsSetup(m) | Kind::Auth(m) => {
                prefix(f)?;
                f.write_str(m)
            }
            Kind::Config(e) => write!(f, "{e}"),
            Kind::Protocol(m) => {
                prefix(f)?;
                write!(f, "protocol error: {m}")
            }
            Kind::Client(e) => {
                prefix(f)?;
                // tokio-postgres's Display names only the kind; the causes say what happened.
                write!(f, "{e}")?;
                let mut cause = std::error::Error::source(e);
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
        }
    }
}

/// "could not connect to <dsn> (at <addr>): <what>; <fix>". The address is added when the DSN
/// does not already show it (several hosts, or a name that resolved to this address).
fn connect_failure(
    f: &mut fmt::Formatter<'_>,
    at: Option<&str>,
    tried: &str,
    what: &str,
) -> fmt::Result {
    write!(f, "could not connect to {}", at.unwrap_or("the server"))?;
    let shown = match (at, tried.rsplit_once(':')) {
        (Some(at), Some((host, port))) => at.contains(&format!("host={host} port={port}")),
        _ => false,
    };
    if !tried.is_empty() && !shown {
        write!(f, " (at {tried})")?;
    }
    write!(
        f,
        ": {what}; check that PostgreSQL is running there and the address is right"
    )
}

impl std::error::Error for PgError {
    /// None: every kind's message already includes its cause, and error chains printed with
    /// `{:#}` must not say it twice.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

impl From<ConnInfoError> for PgError {
    fn from(e: ConnInfoError) -> PgError {
        PgError::new(Kind::Config(e))
    }
}

impl From<tokio_postgres::Error> for PgError {
    /// Keeps the server's SQLSTATE, message, detail and hint; I/O failures stay I/O (transient).
    fn from(e: tokio_postgres::Error) -> PgError {
        if let Some(db) = e.as_db_error() {
            return PgError::server(ServerError {
                severity: db.severity().to_string(),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            });
        }
        if e.is_closed() {
            return PgError::io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let io_kind = std::iter::successors(std::error::Error::source(&e), |s| s.source())
            .find_map(|s| s.downcast_ref::<io::Error>())
            .map(|io| (io.kind(), io.to_string()));
        match io_kind {
            Some((kind, text)) => PgError::io(io::Error::new(kind, text)),
            None => PgError::new(Kind::Client(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> PgError {
        PgError::server(ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "password authentication failed for user \"postgres\"".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn non_server_errors_are_classified_by_kind() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(PgError::connect("127.0.0.1:1".into(), refused).is_transient());
        assert!(PgError::timeout("x".into(), Duration::from_secs(2)).is_transient());
        assert!(PgError::io(io::ErrorKind::UnexpectedEof.into()).is_transient());
        assert!(PgError::protocol("odd").is_transient());
        assert!(!PgError::tls_unavailable(SslMode::Require).is_transient());
        assert!(!PgError::tls_setup("no CA".into()).is_transient());
        assert!(!PgError::auth("no password".into()).is_transient());
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = PgError::tls_handshake(bad_cert, "db", None);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::InternalError),
        );
        assert!(PgError::tls_handshake(alert, "db", None).is_transient());
        let plain = PgError::tls_handshake(io::ErrorKind::ConnectionReset.into(), "db", None);
        assert!(plain.is_transient());
        assert!(!server_error("28P01").is_transient());
        assert!(server_error("57P01").is_transient());
    }

    #[test]
    fn server_error_display_names_code_and_advice() {
        let e = server_error("28P01");
        assert_eq!(e.code(), Some("28P01"));
        let text = e.to_string();
        assert!(text.contains("SQLSTATE 28P01"), "{text}");
        assert!(text.contains("pg_hba.conf"), "{text}");
    }

    #[test]
    fn connect_error_names_address_and_fix() {
        let info = ConnInfo::parse_with(
            "host=127.0.0.1 port=5999 user=postgres dbname=nms password=hunter2",
            &|_| None,
            None,
        )
        .unwrap();
        let e = PgError::connect(
            "127.0.0.1:5999".into(),
            io::ErrorKind::ConnectionRefused.into(),
        )
        .at(&info);
        assert_eq!(
            e.to_string(),
            "could not connect to host=127.0.0.1 port=5999 user=postgres dbname=nms: connection \
             refused; check that PostgreSQL is running there and the address is right"
        );
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
