//! The sidecar's HTTP API, server and client.
//!
//! | Route                      | Token | Answer                                                   |
//! |----------------------------|-------|----------------------------------------------------------|
//! | `GET /v1/status`           | no    | the [`SidecarStatus`] as JSON                            |
//! | `GET /metrics`             | no    | [`prometheus`] text, `text/plain; version=0.0.4`         |
//! | `POST /v1/switchover`      | yes   | the run loop's JSON answer                               |
//! | `POST /v1/promote?force=B` | yes   | the run loop's JSON answer (`force` defaults to `false`) |
//!
//! Commands change which node takes writes, so they need `Authorization: Bearer TOKEN` with the
//! `http.token` of the config: without a configured token they are refused with `403` (the
//! sidecar never accepts them unauthenticated, even on loopback), with a missing or wrong one
//! with `401`. A command goes to the run loop as a [`Request`] and the response waits for its
//! answer, however long a switchover takes: `200` with the answer, `409` with `{"error": …}` when
//! the run loop refuses or fails, `503` when the run loop is gone (shutting down). Every error
//! body is `{"error": "…"}`; an unknown path is `404`.
//!
//! The client half ([`get_status`], [`post_command`]) is what the CLI uses: one HTTP/1.1 request
//! with `Connection: close` over a plain `TcpStream`, so the CLI needs no HTTP client stack.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::report::{prometheus, SidecarStatus};

/// The content type of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the client waits for a connection at most, whatever the request's timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response the client reads.
const MAX_RESPONSE: u64 = 16 << 20;

/// What an operator asks the run loop to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A planned handover: the primary stops writes, the standby catches up and takes over.
    Switchover,
    /// Make this node primary; `force` overrides the run loop's safety checks.
    Promote { force: bool },
}

/// A command with the channel its answer goes back on.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    /// `Ok` is sent back as `200` with the value, `Err` as `409` with `{"error": text}`.
    pub reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

struct Ctx {
    status: watch::Receiver<SidecarStatus>,
    commands: mpsc::Sender<Request>,
    token: Option<String>,
}

/// Serve until `shutdown` turns true; a command still waiting for its answer then is answered
/// before the server returns (or gets `503` when the run loop drops it).
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<SidecarStatus>,
    commands: mpsc::Sender<Request>,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let addr = listener.local_addr().ok();
    if token.is_none() {
        tracing::info!(
            ?addr,
            "sidecar HTTP API serving status and metrics; switchover and promote are refused \
             until http.token is set in the config"
        );
    } else {
        tracing::info!(?addr, "sidecar HTTP API serving");
    }
    let ctx = Arc::new(Ctx {
        status,
        commands,
        token,
    });
    let app = Router::new()
        .route("/v1/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/v1/switchover", post(switchover))
        .route("/v1/promote", post(promote))
        .fallback(not_found)
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { crate::notify::stopped(&mut shutdown).await })
        .await
        .context("while serving the sidecar HTTP API")
}

async fn status_json(State(ctx): State<Arc<Ctx>>) -> Response {
    let body = serde_json::to_string(&*ctx.status.borrow());
    match body {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the status does not serialize: {e}"),
        ),
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let body = prometheus(&ctx.status.borrow());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn switchover(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Some(response) = denied(&ctx, &headers) {
        return response;
    }
    run(&ctx, Command::Switchover).await
}

async fn promote(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(response) = denied(&ctx, &headers) {
        return response;
    }
    let mut force = false;
    for (k, v) in &params {
        match (k.as_str(), v.as_str()) {
            ("force", "true") => force = true,
            ("force", "false") => force = false,
            ("force", other) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("force={other}: expected force=true or force=false"),
                )
            }
            (other, _) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter '{other}': expected force"),
                )
            }
        }
    }
    run(&ctx, Command::Promote { force }).await
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no such route: expected GET /v1/status, GET /metrics, POST /v1/switchover or \
         POST /v1/promote?force=true|false",
    )
}

/// Hands `command` to the run loop and answers with what it says.
async fn run(ctx: &Ctx, command: Command) -> Response {
    tracing::info!(?command, "command received over HTTP");
    let (reply, answer) = oneshot::channel();
    let gone = || {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar's run loop is not taking commands (it is shutting down); retry once \
             `understudy run` is up again",
        )
    };
    if ctx.commands.send(Request { command, reply }).await.is_err() {
        return gone();
    }
    match answer.await {
        Ok(Ok(value)) => {
            tracing::info!(?command, "command done");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                value.to_string(),
            )
                .into_response()
        }
        Ok(Err(reason)) => {
            tracing::warn!(?command, "command refused or failed: {reason}");
            problem(StatusCode::CONFLICT, &reason)
        }
        Err(_) => gone(),
    }
}

/// The response refusing a command, unless the request carries the configured token.
fn denied(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = ctx.token.as_deref() else {
        return Some(problem(
            StatusCode::FORBIDDEN,
            "commands are disabled on this sidecar: set http.token (or http.token_file) in the \
             config of both sidecars (the CLI reads it from the same config) and restart `understudy run`",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, credentials) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim())
        });
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "this command needs Authorization: Bearer TOKEN with the http.token of the sidecar's \
         config; check that the CLI's config has the same token",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"understudy\""),
    );
    Some(response)
}

/// Compares in time that depends on the lengths only, never on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let diff = (0..n).fold(u8::from(a.len() != b.len()), |acc, i| {
        acc | (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0))
    });
    diff == 0
}

/// `{"error": reason}` with `status`.
fn problem(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": reason }).to_string(),
    )
        .into_response()
}

/// A sidecar answered with a status other than 2xx. Callers can `downcast_ref` it out of the
/// `anyhow::Error` to tell a refusal (`409`) from a missing token (`401`, `403`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpStatusError {
    pub addr: SocketAddr,
    pub status: u16,
    /// The `error` of the JSON body, else the body's text.
    pub message: String,
}

impl fmt::Display for HttpStatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        write!(
            f,
            "the sidecar at {} answered {} {reason}: {}",
            self.addr, self.status, self.message
        )
    }
}

impl std::error::Error for HttpStatusError {}

/// Nothing listens at a sidecar's address (connection refused): no sidecar runs there.
#[derive(Debug)]
pub struct NoSidecar(pub SocketAddr);

impl fmt::Display for NoSidecar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no sidecar answers on {}: is `understudy run` running there? (connection refused; \
             check the node's `http` address in the config)",
            self.0
        )
    }
}

impl std::error::Error for NoSidecar {}

/// `GET /v1/status`; `timeout` bounds the whole exchange.
pub async fn get_status(addr: SocketAddr, timeout: Duration) -> Result<SidecarStatus> {
    let body = call(addr, "GET", "/v1/status", None, timeout).await?;
    serde_json::from_slice(&body).with_context(|| {
        format!("while reading the status from {addr}: is that a sidecar's HTTP address?")
    })
}

/// POSTs a command such as `/v1/switchover` or `/v1/promote?force=true` and returns the run
/// loop's answer. The answer comes when the command is done, so `timeout`, which bounds the
/// whole exchange, must leave room for a switchover (minutes, not seconds); connecting alone
/// gives up after [`CONNECT_TIMEOUT`].
pub async fn post_command(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let body = call(addr, "POST", path, token, timeout).await?;
    serde_json::from_slice(&body)
        .with_context(|| format!("while reading the answer to POST {path} from {addr}"))
}

/// One request within `timeout`: the body of a 2xx answer, else an [`HttpStatusError`].
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let connect_timeout = timeout.min(CONNECT_TIMEOUT);
    let reply = tokio::time::timeout(
        timeout,
        exchange(addr, method, path, token, connect_timeout),
    )
    .await
    .map_err(|_| {
        let outcome = if method == "POST" {
            "the command may still be under way there: see `understudy status` before retrying"
        } else {
            "is it overloaded or stuck? (see its log)"
        };
        anyhow!(
            "the sidecar at {addr} did not answer {method} {path} within {timeout:?}; {outcome}"
        )
    })??;
    if (200..300).contains(&reply.status) {
        let ct = reply.content_type.as_deref().unwrap_or("no content type");
        if !ct.starts_with("application/json") {
            return Err(anyhow!(
                "{addr} answered {method} {path} with {ct}, not JSON: is that a sidecar's HTTP \
                 address (its node's `http` in the config)?"
            ));
        }
        return Ok(reply.body);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&reply.body);
            let text = text.trim();
            if text.is_empty() {
                "(no explanation)".to_string()
            } else {
                text.chars().take(500).collect()
            }
        });
    Err(HttpStatusError {
        addr,
        status: reply.status,
        message,
    }
    .into())
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Connects (within `connect_timeout`), sends one request with `Connection: close` and reads
/// the response to the end.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    connect_timeout: Duration,
) -> Result<Reply> {
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(anyhow::Error::new(NoSidecar(addr)))
        }
        Ok(Err(e)) => {
            return Err(e).with_context(|| format!("while connecting to the sidecar at {addr}"))
        }
        Err(_) => {
            return Err(anyhow!(
                "no sidecar answers on {addr} within {connect_timeout:?}: is the address right, \
                 is `understudy run` running there, and does no firewall drop the connection?"
            ))
        }
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: understudy/{}\r\n\
         Accept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("while sending {method} {path} to {addr}"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("while reading the answer to {method} {path} from {addr}"))?;
    parse_response(&raw).with_context(|| {
        format!("while reading the answer to {method} {path} from {addr}: is that a sidecar's HTTP address?")
    })
}

/// Reads a whole HTTP/1.1 response: status line, headers, and a body delimited by
/// `Content-Length`, chunked transfer coding, or the end of the connection.
fn parse_response(raw: &[u8]) -> Result<Reply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("the response headers are not UTF-8")?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("'{status_line}' is not an HTTP status line"))?;
    let mut content_type = None;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().context("a bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = content_length {
        rest.get(..n)
            .context("the connection closed before the end of the body")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

/// Decodes a chunked body (chunk extensions and trailers are skipped).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line is cut off")?;
        let line = std::str::from_utf8(&rest[..eol]).context("a chunk size is not text")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .with_context(|| format!("'{size}' is not a chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .context("the connection closed inside a chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::full;
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const TOKEN: &str = "s3cret";

    struct Server {
        addr: SocketAddr,
        status: watch::Sender<SidecarStatus>,
        commands: Option<mpsc::Receiver<Request>>,
        shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<()>>,
    }

    async fn start(token: Option<&str>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (status, status_rx) = watch::channel(full());
        let (commands_tx, commands) = mpsc::channel(4);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            status_rx,
            commands_tx,
            token.map(str::to_string),
            shutdown_rx,
        ));
        Server {
            addr,
            status,
            commands: Some(commands),
            shutdown,
            task,
        }
    }

    impl Server {
        async fn stop(self) {
            self.shutdown.send(true).unwrap();
            tokio::time::timeout(5 * SECOND, self.task)
                .await
                .expect("the server stops within 5 s of the shutdown signal")
                .unwrap()
                .unwrap();
        }
    }

    fn status_of(e: &anyhow::Error) -> u16 {
        e.downcast_ref::<HttpStatusError>()
            .unwrap_or_else(|| panic!("not an HTTP status error: {e:#}"))
            .status
    }

    #[tokio::test]
    async fn status_round_trips_and_follows_updates() {
        let server = start(None).await;
        assert_eq!(get_status(server.addr, SECOND).await.unwrap(), full());
        server.status.send_modify(|s| {
            s.role = "primary".into();
            s.epoch = 4;
        });
        let seen = get_status(server.addr, SECOND).await.unwrap();
        assert_eq!((seen.role.as_str(), seen.epoch), ("primary", 4));
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let server = start(None).await;
        let reply = exchange(server.addr, "GET", "/metrics", None, SECOND)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type.as_deref(), Some(METRICS_CONTENT_TYPE));
        let body = String::from_utf8(reply.body).unwrap();
        assert_eq!(body, prometheus(&full()));
        assert!(body.contains("understudy_up{node=\"a\"} 1\n"), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_path_is_404_json() {
        let server = start(None).await;
        let e = get_status_at(server.addr, "/v1/nothing").await;
        assert_eq!(status_of(&e), 404);
        assert!(e.to_string().contains("no such route"), "{e}");
        server.stop().await;
    }

    async fn get_status_at(addr: SocketAddr, path: &str) -> anyhow::Error {
        call(addr, "GET", path, None, SECOND).await.unwrap_err()
    }

    #[tokio::test]
    async fn commands_without_a_configured_token_are_forbidden() {
        let mut server = start(None).await;
        for token in [None, Some(TOKEN)] {
            let e = post_command(server.addr, "/v1/switchover", token, SECOND)
                .await
                .unwrap_err();
            assert_eq!(status_of(&e), 403);
            assert!(e.to_string().contains("set http.token"), "{e}");
        }
        assert!(server.commands.as_mut().unwrap().try_recv().is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn missing_or_wrong_token_is_401() {
        let mut server = start(Some(TOKEN)).await;
        for token in [None, Some("s3cre"), Some("s3cret!"), Some("S3CRET")] {
            let e = post_command(server.addr, "/v1/promote?force=true", token, SECOND)
                .await
                .unwrap_err();
            assert_eq!(status_of(&e), 401, "{token:?}");
            assert!(e.to_string().contains("Bearer"), "{e}");
        }
        assert!(server.commands.as_mut().unwrap().try_recv().is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn commands_reach_the_run_loop_and_carry_its_answer() {
        let mut server = start(Some(TOKEN)).await;
        let mut commands = server.commands.take().unwrap();
        let run_loop = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(request) = commands.recv().await {
                seen.push(request.command);
                let answer = match request.command {
                    Command::Switchover => Ok(json!({"new_primary": "b", "epoch": 4})),
                    Command::Promote { .. } => {
                        Err("the peer is primary at a higher epoch; use force=true".to_string())
                    }
                };
                request.reply.send(answer).unwrap();
            }
            seen
        });

        let answer = post_command(server.addr, "/v1/switchover", Some(TOKEN), SECOND)
            .await
            .unwrap();
        assert_eq!(answer, json!({"new_primary": "b", "epoch": 4}));

        let e = post_command(server.addr, "/v1/promote?force=true", Some(TOKEN), SECOND)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 409);
        assert!(
            e.to_string().contains("409 Conflict: the peer is primary"),
            "{e}"
        );

        let e = post_command(server.addr, "/v1/promote", Some(TOKEN), SECOND)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 409);

        let e = post_command(server.addr, "/v1/promote?force=maybe", Some(TOKEN), SECOND)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 400);

        server.stop().await;
        assert_eq!(
            run_loop.await.unwrap(),
            [
                Command::Switchover,
                Command::Promote { force: true },
                Command::Promote { force: false },
            ]
        );
    }

    #[tokio::test]
    async fn commands_without_a_run_loop_are_503() {
        let mut server = start(Some(TOKEN)).await;
        drop(server.commands.take());
        let e = post_command(server.addr, "/v1/switchover", Some(TOKEN), SECOND)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), 503);
        server.stop().await;
    }

    #[tokio::test]
    async fn nothing_listening_names_the_cause() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = get_status(addr, SECOND).await.unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains(&format!("no sidecar answers on {addr}"))
                && text.contains("understudy run"),
            "{text}"
        );
        let e = post_command(addr, "/v1/switchover", Some(TOKEN), SECOND)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("no sidecar answers"), "{e:#}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        // Accepts connections (the kernel does, from the backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let short = Duration::from_millis(200);
        let e = post_command(addr, "/v1/switchover", Some(TOKEN), short)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("may still be under way"), "{e:#}");
        let e = get_status(addr, short).await.unwrap_err();
        assert!(
            e.to_string().contains("did not answer GET /v1/status"),
            "{e:#}"
        );
        drop(listener);
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(
            b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}",
        )
        .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.body, b"{\"error\":\"x\"}");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc0123456789");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
