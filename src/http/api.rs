//! Health, metrics and the operator API (`/v1/…`): call records read back,
//! behind bearer JWTs or API keys, rate-limited per principal, with CORS only
//! for configured origins.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::{AuthError, Principal};
use crate::limits::SharedLogGate;
use crate::metrics::{Metrics, metrics};
use crate::records::{CallQuery, Outcome};

/// Lines about refused API requests per window.
static REFUSED_LOG: SharedLogGate = SharedLogGate::new(10, std::time::Duration::from_secs(10));

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: models loaded and warmed, and the call records written.
/// `records` is `ok`, `off`, `degraded` (writes are failing: records wait in
/// memory and are written once the database takes them again) or
/// `unreachable`; anything but `ok` or `off` answers 503.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let warmed = state.ready.load(Ordering::SeqCst);
    let records = match &state.store {
        None => "off",
        Some(_) if state.ctx.recorder.degraded() => "degraded",
        Some(s) if s.ping().await => "ok",
        Some(_) => "unreachable",
    };
    let db = matches!(records, "ok" | "off");
    let body = Json(serde_json::json!({
        "models": warmed,
        "records": records,
        "records_pending": state.ctx.recorder.pending(),
    }));
    if warmed && db {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    // Records dropped are counted by the recorder; the counter catches up here.
    let dropped = state.ctx.recorder.dropped();
    let before = state.records_dropped_seen.swap(dropped, Ordering::SeqCst);
    metrics().records_dropped(dropped.saturating_sub(before));
    let errors = state.ctx.recorder.write_errors();
    let before = state.records_errors_seen.swap(errors, Ordering::SeqCst);
    metrics().records_write_errors(errors.saturating_sub(before));
    metrics().set_records_pending(state.ctx.recorder.pending());
    (
        [(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)],
        metrics().encode(),
    )
        .into_response()
}

/// `/metrics` only for the addresses in `http.metrics_allow` (when set).
pub async fn metrics_allowed(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.metrics_allow.is_empty() {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if peer.is_some_and(|ip| state.metrics_allow.iter().any(|c| c.contains(ip))) {
        next.run(req).await
    } else {
        StatusCode::FORBIDDEN.into_response()
    }
}

/// Checks the request's credentials; the principal goes on as an extension.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = route_of(&req);
    let (authorization, api_key) = {
        let headers = req.headers();
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (value("authorization"), value("x-api-key"))
    };
    let result = state.auth.authenticate(
        authorization.as_deref(),
        api_key.as_deref(),
        std::time::Instant::now(),
    );
    let response = match result {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => refuse(&e),
    };
    metrics().api_request(&route, response.status().as_u16());
    response
}

/// The route a request matched, as the request counter labels it.
pub fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string()
}

fn refuse(e: &AuthError) -> Response {
    if let Some(held) = REFUSED_LOG.pass() {
        tracing::info!(reason = e.label(), held, "API request refused");
    }
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut response = (status, Json(serde_json::json!({ "error": e.label() }))).into_response();
    match e {
        AuthError::RateLimited { retry_after_secs } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        AuthError::Forbidden => {}
        _ => {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"izwi\""),
            );
        }
    }
    response
}

/// CORS for the configured origins only: others get no CORS headers (so
/// browsers refuse them), and preflights from them get 403.
pub async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allowed = origin
        .as_deref()
        .filter(|o| state.api.cors_origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS && origin.is_some() {
        let Some(origin) = allowed else {
            return StatusCode::FORBIDDEN.into_response();
        };
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, x-api-key, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return r;
    }
    let mut r = next.run(req).await;
    if let Some(origin) = allowed {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    /// Unix milliseconds, inclusive.
    from: Option<i64>,
    /// Unix milliseconds, exclusive.
    to: Option<i64>,
    outcome: Option<String>,
    agent: Option<String>,
    /// The transport's id for the call (SIP Call-ID, Twilio CallSid).
    remote_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn bad_request(what: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": what })),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": "call records are off (records.enabled)" })),
    )
        .into_response()
}

/// `GET /v1/calls?from=&to=&outcome=&agent=&limit=&cursor=`, newest first.
pub async fn list_calls(
    State(state): State<Arc<AppState>>,
    Query(p): Query<ListParams>,
) -> Response {
    let Some(store) = &state.store else {
        return unavailable();
    };
    let outcome = match p.outcome.as_deref().map(Outcome::parse) {
        Some(None) => return bad_request("outcome must be open, completed, failed or interrupted"),
        Some(o) => o,
        None => None,
    };
    let q = CallQuery {
        from_ms: p.from,
        to_ms: p.to,
        outcome,
        agent: p.agent,
        remote_id: p.remote_id,
        limit: p.limit.unwrap_or(CallQuery::default().limit),
        cursor: p.cursor,
    };
    match store.list(&q).await {
        Ok(page) => Json(page).into_response(),
        Err(crate::records::RecordError::BadCursor) => {
            bad_request("cursor is not one this API gave")
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing calls failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /v1/calls/{id}`: the call with its turns, actions and tool calls.
pub async fn get_call(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(store) = &state.store else {
        return unavailable();
    };
    let found = match store.get(&id).await {
        Ok(Some((call, turns))) => match store.actions(&id).await {
            Ok(actions) => store
                .tool_calls(&id)
                .await
                .map(|tools| Some((call, turns, actions, tools))),
            Err(e) => Err(e),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match found {
        Ok(Some((call, turns, actions, tools))) => Json(serde_json::json!({
            "call": call, "turns": turns, "actions": actions, "tools": tools,
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such call" })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a call failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `POST /v1/admin/warmup` (admin): runs every engine stage once.
pub async fn warmup(
    State(state): State<Arc<AppState>>,
    axum::Extension(principal): axum::Extension<Principal>,
    _headers: HeaderMap,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return refuse(&e);
    }
    let (Some(engine), Some(agent)) = (&state.ctx.engine, state.ctx.agents.default_agent()) else {
        return Json(serde_json::json!({ "warmed": false, "reason": "no engine (echo agent)" }))
            .into_response();
    };
    match agent.warm(engine).await {
        Ok(took) => {
            // A draining node stays unready.
            if !state.draining.load(Ordering::SeqCst) {
                state.ready.store(true, Ordering::SeqCst);
                metrics().set_ready(true);
            }
            tracing::info!(by = %principal.name, ms = took.as_millis() as u64, "engine warmed");
            Json(serde_json::json!({ "warmed": true, "ms": took.as_millis() as u64 }))
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "warm-up failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({ "warmed": false })),
            )
                .into_response()
        }
    }
}
