//! The operator console (`/console`): a small page served by Izwi itself,
//! its data from `/console/api/…`, and a third transport, the browser's
//! microphone (`/console/talk`, [`browser`]).
//!
//! Sign-in takes the operator API's own credentials (an API key or a JWT)
//! once and answers with a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` behind a TLS proxy). Every `/console/api` route and the talk
//! socket need that session; a request that changes something also needs the
//! session's CSRF token in `X-CSRF-Token` and, when the browser names one, an
//! `Origin` that is this host. The page's assets are the only thing served
//! without a session: the sign-in form, no data. Every answer carries a
//! strict Content-Security-Policy (no inline script or style, nothing from
//! another origin). Nothing here reads or sends a transcript or audio of a
//! call: the records hold none.

pub mod browser;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::Principal;
use crate::metrics::metrics;

/// The cookie that carries a console session.
pub const COOKIE: &str = "izwi_console";
/// How long a session lasts.
const SESSION_LIFE: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at most; beyond, the oldest goes.
const MAX_SESSIONS: usize = 1024;
/// Sessions of one operator at most; beyond, that operator's oldest goes (so
/// that one credential cannot push everyone else out).
const MAX_SESSIONS_EACH: usize = 16;
/// Lines about refused sign-ins per window.
static REFUSED_LOG: crate::limits::SharedLogGate =
    crate::limits::SharedLogGate::new(10, Duration::from_secs(10));
/// Points of the latency view at most.
const MAX_POINTS: u32 = 20_000;
/// How long the model files' states are kept before they are checked again.
const MODEL_STATES_KEPT: Duration = Duration::from_secs(60);
/// The live view's updates, at most this often.
const LIVE_EVERY: Duration = Duration::from_millis(250);

/// Self only: scripts, styles, sockets, the audio worklet; no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; media-src 'self' blob:; worker-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const WORKLET_JS: &str = include_str!("assets/worklet.js");

struct Session {
    principal: Principal,
    csrf: String,
    expires: Instant,
}

/// Signed-in operators, by the hash of their cookie's value (a leaked
/// memory dump does not give a usable cookie).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn digest(id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

impl Sessions {
    /// A new session: its cookie value and CSRF token.
    fn open(&self, principal: Principal, now: Instant) -> (String, String) {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 16]>());
        // Never beyond the credential's own end (a JWT's `exp`).
        let life = principal.expires_at.map_or(SESSION_LIFE, |exp| {
            let left = exp.saturating_sub(crate::records::now_ms().max(0) as u64 / 1000);
            SESSION_LIFE.min(Duration::from_secs(left))
        });
        let mut all = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|_, s| s.expires > now);
        let oldest = |all: &HashMap<String, Session>, mine: bool| {
            all.iter()
                .filter(|(_, s)| !mine || s.principal.name == principal.name)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        };
        let own = all
            .values()
            .filter(|s| s.principal.name == principal.name)
            .count();
        for (full, mine) in [
            (own >= MAX_SESSIONS_EACH, true),
            (all.len() >= MAX_SESSIONS, false),
        ] {
            if full && let Some(k) = oldest(&all, mine) {
                all.remove(&k);
            }
        }
        all.insert(
            digest(&id),
            Session {
                principal,
                csrf: csrf.clone(),
                expires: now + life,
            },
        );
        (id, csrf)
    }

    /// The session's principal and CSRF token, while it lasts.
    pub fn get(&self, id: &str, now: Instant) -> Option<(Principal, String)> {
        let all = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(&digest(id))
            .filter(|s| s.expires > now)
            .map(|s| (s.principal.clone(), s.csrf.clone()))
    }

    fn close(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest(id));
    }
}

/// A signed-in operator, as the routes behind [`signed_in`] see them.
#[derive(Clone)]
pub struct Operator {
    pub principal: Principal,
    /// The session's cookie value.
    pub session: String,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the request's `Origin` (when the browser sends one) is this host.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().ok().and_then(|o| o.split_once("://"));
    match (origin, host) {
        (Some((scheme, rest)), Some(host)) => {
            matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

fn error(status: StatusCode, what: &str) -> Response {
    (status, Json(serde_json::json!({ "error": what }))).into_response()
}

/// The console's headers on every answer under `/console`.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("microphone=(self), camera=()"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// Routes behind a session: the operator goes on as an extension. A request
/// that changes something needs the session's CSRF token and this origin.
pub async fn signed_in(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = super::api::route_of(&req);
    let now = Instant::now();
    let found = cookie_value(req.headers())
        .and_then(|id| state.console.get(&id, now).map(|(p, csrf)| (id, p, csrf)));
    let response = match found {
        None => error(StatusCode::UNAUTHORIZED, "sign in first"),
        Some((id, principal, csrf)) => {
            let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
            let token_ok = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| constant_time_eq(t.as_bytes(), csrf.as_bytes()));
            if !same_origin(req.headers()) || (changes && !token_ok) {
                error(StatusCode::FORBIDDEN, "cross-site request refused")
            } else if let Err(e) = state.auth.check_rate(&principal, now) {
                error(
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                    e.label(),
                )
            } else {
                req.extensions_mut().insert(Operator {
                    principal,
                    session: id,
                });
                next.run(req).await
            }
        }
    };
    metrics().api_request(&route, response.status().as_u16());
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
pub async fn worklet_js() -> Response {
    asset("text/javascript; charset=utf-8", WORKLET_JS)
}

#[derive(Deserialize)]
pub struct SignIn {
    /// An API key, or a JWT (three dot-separated parts).
    credential: String,
}

/// `POST /console/api/session`: the operator API's credential for a session.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "send {\"credential\": \"…\"}");
    };
    let credential = body.credential.trim();
    let jwt = credential.split('.').count() == 3;
    let bearer = jwt.then(|| format!("Bearer {credential}"));
    let result = state.auth.authenticate(
        bearer.as_deref(),
        (!jwt).then_some(credential),
        Instant::now(),
    );
    let principal = match result {
        Ok(p) => p,
        Err(e) => {
            metrics().api_request("/console/api/session", e.status());
            if let Some(held) = REFUSED_LOG.pass() {
                tracing::info!(reason = e.label(), held, "console sign-in refused");
            }
            return error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                e.label(),
            );
        }
    };
    metrics().api_request("/console/api/session", 200);
    tracing::info!(operator = %principal.name, admin = principal.admin, "console sign-in");
    let (id, csrf) = state.console.open(principal.clone(), Instant::now());
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFE.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut r = Json(serde_json::json!({
        "name": principal.name, "admin": principal.admin, "csrf": csrf,
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /console/api/sign-out`: ends the session.
pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    state.console.close(&op.session);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "izwi_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// `GET /console/api/me`: who is signed in, and the CSRF token.
pub async fn me(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    let csrf = state
        .console
        .get(&op.session, Instant::now())
        .map(|(_, c)| c)
        .unwrap_or_default();
    Json(serde_json::json!({
        "name": op.principal.name, "admin": op.principal.admin, "csrf": csrf,
    }))
    .into_response()
}

/// `GET /console/api/live`: the calls in progress, as server-sent events:
/// the whole list at once and again on each change.
pub async fn live(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    let changes = state.ctx.live.watch();
    let shutdown = state.shutdown.clone();
    let events = futures_util::stream::unfold(
        (changes, shutdown, state, op.session, true),
        |(mut changes, mut shutdown, state, session, first)| async move {
            if !first {
                tokio::time::sleep(LIVE_EVERY).await;
                tokio::select! {
                    r = changes.changed() => r.ok()?,
                    // A call's duration moves on even when nothing else does.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return None,
                }
            }
            // Signed out or expired: the stream ends with the session.
            state.console.get(&session, Instant::now())?;
            changes.mark_unchanged();
            let body = serde_json::json!({
                "now_ms": crate::records::now_ms(),
                "calls": state.ctx.live.snapshot(),
            });
            let event = Event::default().event("calls").data(body.to_string());
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (changes, shutdown, state, session, false),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /console/api/calls/{id}/hangup` (admin).
pub async fn hang_up(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    if !op.principal.admin {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    if state.ctx.live.hang_up(&id) {
        tracing::info!(call = %crate::records::cap(&id, 64), operator = %op.principal.name, "hang-up asked from the console");
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "hanging_up": id })),
        )
            .into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no such call in progress")
    }
}

#[derive(Deserialize)]
pub struct Window {
    /// Unix milliseconds, inclusive.
    from: Option<i64>,
    /// Unix milliseconds, exclusive.
    to: Option<i64>,
}

/// `GET /console/api/latency?from=&to=`: each answered turn's response
/// latency with when its call started, its transport and agent (the page
/// draws percentiles over time and a histogram from them); the newest
/// points when there are too many.
pub async fn latency(State(state): State<Arc<AppState>>, Query(w): Query<Window>) -> Response {
    let Some(store) = &state.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "call records are off (records.enabled)",
        );
    };
    let to = w.to.unwrap_or_else(|| crate::records::now_ms() + 1);
    let from = w.from.unwrap_or(to.saturating_sub(24 * 3600 * 1000));
    match store.responses(from, to, MAX_POINTS).await {
        Ok(points) => Json(serde_json::json!({
            "from": from, "to": to, "points": points,
            "truncated": points.len() as u32 >= MAX_POINTS,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reading latencies failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /console/api/agents`: the dialplan, each agent's language, voice,
/// models and backends, the model files and their state, and readiness.
pub async fn agents(State(state): State<Arc<AppState>>) -> Response {
    let plan = state.ctx.agents.plan();
    let agents: Vec<serde_json::Value> = plan
        .agents
        .iter()
        .map(|(name, a)| {
            serde_json::json!({
                "name": name,
                "default": *name == plan.default_agent,
                "language": a.language,
                "voice": a.voice,
                "phonemes": a.phonemes,
                "llm": a.llm, "asr": a.asr, "tts": a.tts,
                "tools": a.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                "actions": a.model_actions,
                "keys": a.keys.len(),
                "transfer_targets": a.transfer.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    let rules: Vec<serde_json::Value> = plan
        .rules
        .iter()
        .map(|r| serde_json::json!({ "name": r.name, "agent": r.agent, "line": r.line }))
        .collect();
    let voices: Vec<String> = plan
        .agents
        .values()
        .filter_map(|a| a.voice.clone())
        .collect();
    let files = {
        // Checking a file may hash it (a file without its stamp, or a wrong
        // one, each time): one check at a time, its answer kept a while.
        let mut kept = state.model_states.lock().await;
        match kept.as_ref() {
            Some((at, files)) if at.elapsed() < MODEL_STATES_KEPT => files.clone(),
            _ => {
                let models = state.models.clone();
                let files = tokio::task::spawn_blocking(move || model_files(&models, &voices))
                    .await
                    .unwrap_or_default();
                *kept = Some((Instant::now(), files.clone()));
                files
            }
        }
    };
    Json(serde_json::json!({
        "default_agent": plan.default_agent,
        "dialplan": plan.source.as_ref().map(|p| p.display().to_string()),
        "rules": rules,
        "agents": agents,
        "models": files,
        "profile": state.models.profile,
        "ready": state.ready.load(std::sync::atomic::Ordering::SeqCst),
        "draining": state.draining.load(std::sync::atomic::Ordering::SeqCst),
        "echo": state.ctx.echo,
        "records": state.store.is_some(),
    }))
    .into_response()
}

fn model_files(models: &crate::config::ModelsConfig, voices: &[String]) -> Vec<serde_json::Value> {
    use crate::models::{ModelStore, store::Check};
    let Ok(store) = ModelStore::from_config(models) else {
        return Vec::new();
    };
    let Ok(entries) = store.entries_with_voices(voices.iter().map(String::as_str)) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .map(|e| {
            let state = match store.check(e) {
                Ok(Check::Verified) => "verified",
                Ok(Check::Missing) => "missing",
                Ok(Check::Mismatch(_)) => "mismatch",
                Err(_) => "unreadable",
            };
            serde_json::json!({
                "id": e.id, "role": e.role.as_str(), "file": e.file,
                "language": e.language, "size": e.size, "license": e.license,
                "state": state,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::Via;

    fn principal() -> Principal {
        Principal {
            name: "ops".into(),
            admin: false,
            via: Via::ApiKey,
            expires_at: None,
        }
    }

    #[test]
    fn a_session_lasts_its_life_and_ends_when_closed() {
        let s = Sessions::default();
        let now = Instant::now();
        let (id, csrf) = s.open(principal(), now);
        assert_eq!(id.len(), 64);
        let (p, token) = s.get(&id, now).unwrap();
        assert_eq!((p.name.as_str(), token.as_str()), ("ops", csrf.as_str()));
        assert!(s.get(&id, now + SESSION_LIFE).is_none());
        assert!(s.get(&"0".repeat(64), now).is_none());
        s.close(&id);
        assert!(s.get(&id, now).is_none());
    }

    #[test]
    fn sessions_are_bounded_the_oldest_going_first() {
        let s = Sessions::default();
        let now = Instant::now();
        let (first, _) = s.open(principal(), now);
        // One operator's sessions push out only that operator's oldest.
        for i in 1..=MAX_SESSIONS_EACH {
            s.open(principal(), now + Duration::from_millis(i as u64));
        }
        assert!(s.get(&first, now).is_none());
        assert_eq!(s.by_id.lock().unwrap().len(), MAX_SESSIONS_EACH);
        let someone = |i: usize| Principal {
            name: format!("op{i}"),
            ..principal()
        };
        let (early, _) = s.open(someone(0), now);
        for i in 1..=MAX_SESSIONS {
            s.open(someone(i), now + Duration::from_secs(i as u64));
        }
        assert!(s.get(&early, now).is_none());
        assert_eq!(s.by_id.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn a_session_ends_with_its_token() {
        let s = Sessions::default();
        let now = Instant::now();
        let soon = crate::records::now_ms() as u64 / 1000 + 60;
        let (id, _) = s.open(
            Principal {
                expires_at: Some(soon),
                via: Via::Jwt,
                ..principal()
            },
            now,
        );
        assert!(s.get(&id, now + Duration::from_secs(30)).is_some());
        assert!(s.get(&id, now + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others_and_must_look_like_one() {
        let mut h = HeaderMap::new();
        let id = "ab".repeat(32);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {COOKIE}={id}; b=2")).unwrap(),
        );
        assert_eq!(cookie_value(&h), Some(id));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("izwi_console=../x"),
        );
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn only_this_host_is_the_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        for (origin, same) in [
            ("http://127.0.0.1:8080", true),
            ("https://127.0.0.1:8080", true),
            ("http://evil.example", false),
            ("http://127.0.0.1:8081", false),
            ("null", false),
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_static(origin));
            assert_eq!(same_origin(&h), same, "{origin}");
        }
    }
}
