//! `GET /v1/messages`: one journal reader per connection, pumping events into a bounded queue
//! that the response body drains. See the parent module for the protocol.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::json;
use tokio::sync::mpsc;

use super::{denied, problem, HttpContext};
use crate::messages::{to_json, Cursor, MessagesError, Tail, TailMode};
use crate::notify::{stopped, Filter};

/// Messages read from the journal at a time.
const READ_BATCH: usize = 256;
/// Events queued per connection.
const QUEUE: usize = 64;

pub(super) async fn messages(
    State(ctx): State<Arc<HttpContext>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(response) = denied(&ctx, &headers) {
        return response;
    }
    let (start, filter) = match parse(&ctx, &headers, &params) {
        Ok(x) => x,
        Err(reason) => return problem(StatusCode::BAD_REQUEST, json!({ "error": reason })),
    };
    let oldest = ctx.journal.oldest_lsn();
    if start.commit_lsn < oldest {
        return gone(start, oldest);
    }
    let mode = TailMode::Live {
        applied: ctx.applied.clone(),
    };
    let tail = match Tail::open(&ctx.journal, start, Arc::clone(&ctx.rules), mode).await {
        Ok(t) => t,
        Err(e) => {
            if let Some((_, oldest)) = e.too_old() {
                return gone(start, oldest);
            }
            tracing::warn!("the message stream could not open the journal: {e:#}");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": format!("{:#}", anyhow::Error::new(e)) }),
            );
        }
    };
    tracing::debug!(%start, "a message stream starts");
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(pump(tail, filter, tx, ctx.shutdown.clone()));
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Where the stream starts and what it sends, from the request.
fn parse(
    ctx: &HttpContext,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<(Cursor, Filter), String> {
    let mut from = None;
    let mut filter = Filter::default();
    for (k, v) in params {
        match k.as_str() {
            "from_lsn" => {
                from = Some(Cursor::start(
                    v.parse().map_err(|e| format!("from_lsn: {e}"))?,
                ))
            }
            "kind" if !v.is_empty() => filter.kinds.push(v.clone()),
            "entity" if !v.is_empty() => filter.entities.push(v.clone()),
            "kind" | "entity" => return Err(format!("{k} is empty")),
            other => {
                return Err(format!(
                    "unknown parameter '{other}': expected from_lsn, kind, entity"
                ))
            }
        }
    }
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default();
        if !text.trim().is_empty() {
            let cursor = text
                .parse::<Cursor>()
                .map_err(|e| format!("Last-Event-ID: {e}"))?;
            return Ok((cursor, filter));
        }
    }
    let start = from.unwrap_or_else(|| {
        let applied = *ctx.applied.borrow();
        Cursor::start(applied.max(ctx.journal.oldest_lsn()))
    });
    Ok((start, filter))
}

fn gone(start: Cursor, oldest: crate::lsn::Lsn) -> Response {
    problem(
        StatusCode::GONE,
        json!({
            "error": format!(
                "{start} is older than the journal keeps (the oldest transaction available \
                 commits at {oldest}); resume from {oldest} or later, or reload the consumer's \
                 state from the standby database (bootstrap it again) and stream from the \
                 standby's applied LSN"
            ),
            "oldest_lsn": oldest.to_string(),
        }),
    )
}

/// Reads batches and queues their events until the client goes, shutdown, or an error (sent as
/// an `error` event).
async fn pump(
    mut tail: Tail,
    filter: Filter,
    tx: mpsc::Sender<Event>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return,
            _ = tx.closed() => return,
            b = tail.next(READ_BATCH) => b,
        };
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(error_event(&e)).await;
                return;
            }
        };
        for m in batch.messages.iter().filter(|m| filter.matches(m)) {
            let event = Event::default()
                .id(m.id())
                .event("mutation")
                .data(to_json(m));
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return,
                sent = tx.send(event) => if sent.is_err() { return },
            }
        }
    }
}

fn error_event(e: &MessagesError) -> Event {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    let mut body = json!({ "error": text });
    if let Some((_, oldest)) = e.too_old() {
        body["oldest_lsn"] = json!(oldest.to_string());
    }
    tracing::warn!("a message stream ended: {e}");
    Event::default().event("error").data(body.to_string())
}
