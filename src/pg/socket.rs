//! The byte stream to a server: host choice, TCP or Unix socket, SSLRequest, TLS.
//!
//! Both the ordinary SQL connection and the replication connection start here, so `sslmode`
//! means the same for both. Protocol: <https://www.postgresql.org/docs/15/protocol-flow.html>
//! ("SSL Session Encryption").
//!
//! * Hosts are tried in DSN order; only failing to reach a host moves on to the next one (as
//!   libpq does, a TLS or authentication failure does not). `connect_timeout` bounds each host.
//! * Over TCP, unless `sslmode=disable`, we send SSLRequest and read exactly one byte: `S` starts
//!   the TLS handshake on the bare socket (nothing is buffered before it), `N` continues in
//!   plaintext for `prefer` and is an error for `require`/`verify-*`.
//! * Unix sockets never use TLS, whatever the sslmode: the server does not offer it there and
//!   libpq does not ask.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::conninfo::{ConnInfo, SslMode, Target};
use super::tls;
use super::PgError;

/// A connected socket, encrypted or not.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the stream is TLS-encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

/// Open a stream to the first reachable host of `info`, with TLS per its sslmode.
/// Errors carry `info.redacted()`.
pub(crate) async fn open(info: &ConnInfo) -> Result<Stream, PgError> {
    // Only TCP uses TLS: a list of Unix sockets needs no CA file, even for verify-full.
    let tcp = info
        .targets()
        .iter()
        .any(|t| matches!(t, Target::Tcp { .. }));
    let tls_config = match tcp {
        true => tls::client_config(info.sslmode(), info.sslrootcert())
            .map_err(|e| PgError::tls_setup(e.to_string()).at(info))?,
        false => None,
    };
    let mut last_error = None;
    for target in info.targets() {
        match open_target(info, target, tls_config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Unreachable(e)) => {
                tracing::debug!(server = %info.redacted(), "{e}");
                last_error = Some(e);
            }
            Err(Attempt::Failed(e)) => return Err(e.at(info)),
        }
    }
    Err(last_error
        .unwrap_or_else(|| PgError::protocol("the connection string names no host"))
        .at(info))
}

/// Run the rest of connection setup (authentication) within `connect_timeout`, as libpq bounds
/// the whole connection attempt.
pub(crate) async fn within_connect_timeout<T>(
    info: &ConnInfo,
    setup: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    match info.connect_timeout() {
        Some(t) => tokio::time::timeout(t, setup).await.unwrap_or_else(|_| {
            let tried = format!("{}:{}", info.host(), info.port());
            Err(PgError::timeout(tried, t).at(info))
        }),
        None => setup.await,
    }
}

enum Attempt {
    /// Could not reach this host: try the next one.
    Unreachable(PgError),
    /// Reached it, and it failed: stop.
    Failed(PgError),
}

async fn open_target(
    info: &ConnInfo,
    target: &Target,
    tls_config: Option<Arc<rustls::ClientConfig>>,
) -> Result<Stream, Attempt> {
    let timeout = info.connect_timeout();
    match target {
        Target::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let tried = path.display().to_string();
            let socket = with_timeout(timeout, &tried, UnixStream::connect(&path)).await?;
            Ok(Stream::Unix(socket))
        }
        Target::Tcp {
            host,
            hostaddr,
            port,
        } => {
            let addrs: Vec<SocketAddr> = match hostaddr {
                Some(ip) => vec![SocketAddr::new(*ip, *port)],
                None => tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| {
                        Attempt::Unreachable(PgError::connect(format!("{host}:{port}"), e))
                    })?
                    .collect(),
            };
            let mut last = None;
            for addr in addrs {
                let tried = addr.to_string();
                match with_timeout(timeout, &tried, TcpStream::connect(addr)).await {
                    Ok(socket) => {
                        socket.set_nodelay(true).ok();
                        // The name to verify: the host as written, else the address.
                        let name = if host.is_empty() {
                            addr.ip().to_string()
                        } else {
                            host.clone()
                        };
                        let sslmode = info.sslmode();
                        let negotiate = negotiate_tls(socket, sslmode, tls_config, &name, info);
                        return match timeout {
                            Some(t) => tokio::time::timeout(t, negotiate)
                                .await
                                .unwrap_or_else(|_| Err(PgError::timeout(tried, t))),
                            None => negotiate.await,
                        }
                        .map_err(Attempt::Failed);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                Attempt::Unreachable(PgError::connect(
                    format!("{host}:{port}"),
                    io::Error::new(io::ErrorKind::NotFound, "the host name has no address"),
                ))
            }))
        }
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    tried: &str,
    connect: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, Attempt> {
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, connect).await {
            Ok(r) => r,
            Err(_) => return Err(Attempt::Unreachable(PgError::timeout(tried.into(), t))),
        },
        None => connect.await,
    };
    result.map_err(|e| Attempt::Unreachable(PgError::connect(tried.into(), e)))
}

/// SSLRequest, then the TLS handshake when the server agrees.
async fn negotiate_tls(
    mut socket: TcpStream,
    sslmode: SslMode,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    host: &str,
    info: &ConnInfo,
) -> Result<Stream, PgError> {
    let Some(config) = tls_config else {
        return Ok(Stream::Tcp(socket));
    };
    let mut request = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    socket.write_all(&request).await.map_err(PgError::io)?;
    let answer = socket.read_u8().await.map_err(PgError::io)?;
    match answer {
        b'S' => {}
        b'N' if sslmode == SslMode::Prefer => return Ok(Stream::Tcp(socket)),
        b'N' => return Err(PgError::tls_unavailable(sslmode)),
        other => {
            return Err(PgError::protocol(format!(
                "the server answered SSLRequest with byte {other:#04x}, not 'S' or 'N'"
            )))
        }
    }
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        PgError::tls_setup(format!(
            "'{host}' is neither a DNS name nor an IP address, so TLS cannot verify it"
        ))
    })?;
    let tls = TlsConnector::from(config)
        .connect(name, socket)
        .await
        .map_err(|e| PgError::tls_handshake(e, host, info.sslrootcert().map(Into::into)))?;
    Ok(Stream::Tls(Box::new(tls)))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
