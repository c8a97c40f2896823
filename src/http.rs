//! The HTTP listener: the message stream (`stream` sink) as Server-Sent Events.
//!
//! `GET /v1/messages?from_lsn=LSN&kind=GLOB&entity=NAME` streams the mutation messages of the
//! transactions the standby has applied, straight from the journal, as
//!
//! ```text
//! id: 0/1A2B400:3
//! event: mutation
//! data: {"id":"0/1A2B400:3","commit_lsn":"0/1A2B400",…}
//! ```
//!
//! * Start: the `Last-Event-ID` header (a reconnecting client resumes just after the last event it
//!   had), else `from_lsn` (every transaction committing at or after it), else the standby's
//!   applied position (only what is applied from now on). A start older than the journal keeps is
//!   `410 Gone` with the oldest LSN available and the advice to bootstrap again (a consumer that
//!   fell that far behind must reload its state); a bad parameter is `400`.
//! * `kind` (a glob, `*` and `?`) and `entity` (exact) may be repeated: a message is sent when
//!   its kind matches one of the kinds (if any are given) and its entity is one of the entities
//!   (if any are given). Ids stay those of the unfiltered stream.
//! * Live: after the journal's end the stream waits for transactions to become durable and
//!   applied; a comment line keeps idle connections open every 15 s. If the journal drops what a
//!   slow consumer still needed, or reading fails, an `event: error` with a JSON reason ends the
//!   stream.
//! * Security: binds to 127.0.0.1 unless told otherwise ([`parse_listen`]); with a token, every
//!   request needs `Authorization: Bearer TOKEN` (`401` otherwise), since messages carry NMS
//!   data.
//!
//! Each connection has its own journal reader thread and a bounded queue of 64 events, so a slow
//! consumer holds up only itself.
//! SSE: <https://html.spec.whatwg.org/multipage/server-sent-events.html>.

mod stream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::journal::JournalHandle;
use crate::lsn::Lsn;
use crate::translate::Rules;

/// The port when `--http` names none.
pub const DEFAULT_PORT: u16 = 8433;

/// What the listener serves from.
#[derive(Clone)]
pub struct HttpContext {
    pub journal: JournalHandle,
    /// The standby's applied position: only transactions before it are streamed.
    pub applied: watch::Receiver<Lsn>,
    pub rules: Arc<Rules>,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Ends open streams when it turns true.
    pub shutdown: watch::Receiver<bool>,
}

/// `PORT`, `HOST:PORT` or `[V6]:PORT`; a bare port binds to 127.0.0.1.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| {
        format!(
            "'{text}' is not a listen address: expected PORT (on 127.0.0.1), IP:PORT or \
             [IPv6]:PORT, such as 127.0.0.1:{DEFAULT_PORT}"
        )
    })
}

/// The routes, for a caller that serves more than the stream.
pub fn router(ctx: HttpContext) -> Router {
    Router::new()
        .route("/v1/messages", get(stream::messages))
        .with_state(Arc::new(ctx))
}

/// Binds `addr` and serves until `shutdown` turns true (open streams end then too).
pub async fn serve(
    addr: SocketAddr,
    token: Option<String>,
    journal: JournalHandle,
    applied: watch::Receiver<Lsn>,
    rules: Arc<Rules>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("while binding the HTTP listener to {addr} (is the port in use? pick another with --http)")
    })?;
    let ctx = HttpContext {
        journal,
        applied,
        rules,
        token,
        shutdown,
    };
    serve_on(listener, ctx).await
}

/// Serves on a bound listener until `ctx.shutdown` turns true.
pub async fn serve_on(listener: TcpListener, ctx: HttpContext) -> Result<()> {
    let addr = listener.local_addr().ok();
    if !addr.is_some_and(|a| a.ip().is_loopback()) && ctx.token.is_none() {
        tracing::warn!(
            ?addr,
            "the HTTP listener is reachable from other hosts without a token: messages carry \
             NMS data, so set --http-token"
        );
    }
    tracing::info!(?addr, "HTTP listener serving /v1/messages");
    let mut shutdown = ctx.shutdown.clone();
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { crate::notify::stopped(&mut shutdown).await })
        .await
        .context("while serving HTTP")
}

/// Checks the bearer token: the error response when it is missing or wrong.
fn denied(ctx: &HttpContext, headers: &HeaderMap) -> Option<Response> {
    let token = ctx.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        json!({"error": "this listener needs Authorization: Bearer <token> (the --http-token)"}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"understudy\""),
    );
    Some(response)
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error response.
fn problem(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("8433").unwrap(),
            "127.0.0.1:8433".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_listen("localhost:80")
            .unwrap_err()
            .contains("expected PORT"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
