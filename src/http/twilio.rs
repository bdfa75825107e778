//! Twilio's voice webhook (answers with TwiML that connects the call to a
//! media stream) and the stream's WebSocket upgrade.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{OriginalUri, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::media_stream::{self, StreamLimits};
use crate::limits::SharedLogGate;
use crate::provider::twilio::{self, Twilio};

/// Largest WebSocket message read at all (larger ones are refused with 1009
/// before they are held in memory); frames over `MAX_FRAME` are refused too.
const MAX_MESSAGE: usize = crate::provider::MAX_FRAME_BYTES;
const MAX_FRAME: usize = 64 * 1024;
const MAX_FRAMES_PER_SEC: u32 = 250;

/// Lines about refused webhooks per window.
static REFUSED_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));

/// `POST /twilio/voice`: a call came in; tell Twilio to stream it to us.
pub async fn voice(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let base = public_base(&state, &headers);
    let params = match verified(&state, &base, &uri, &headers, &body, "voice webhook") {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let call_sid = get("CallSid");
    // A node that is stopping takes no new calls (its streams go on).
    if state.draining.load(std::sync::atomic::Ordering::SeqCst)
        || state
            .active_streams
            .load(std::sync::atomic::Ordering::SeqCst)
            >= state.twilio.max_streams
    {
        if let Some(held) = REFUSED_LOG.pass() {
            tracing::warn!(call = %crate::records::cap(call_sid, 64), held, "at capacity: call rejected as busy");
        }
        crate::metrics::metrics().webhook("twilio", "busy");
        return twiml(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#
                .to_string(),
        );
    }
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    let stream_url = format!("{ws_base}{}", state.twilio.stream_path);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = twilio::stream_token(&state.stream_secret, now, call_sid);
    tracing::info!(call = %crate::records::cap(call_sid, 64), "voice webhook: connecting the call to a media stream");
    crate::metrics::metrics().webhook("twilio", "accepted");
    let action = format!("{base}{}", state.twilio.action_path);
    twiml(twilio::connect_stream(
        &stream_url,
        &action,
        &[
            ("callSid", call_sid),
            ("caller", get("From")),
            ("called", get("To")),
            ("token", &token),
        ],
    ))
}

/// A webhook's form parameters, once its X-Twilio-Signature is checked
/// (when signatures are checked); the refusal otherwise.
fn verified(
    state: &AppState,
    base: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &str,
    what: &str,
) -> Result<Vec<(String, String)>, Box<Response>> {
    let params = twilio::parse_form(body);
    if !state.twilio.validate_signature {
        return Ok(params);
    }
    let url = format!(
        "{base}{}",
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    let valid = !state.twilio.auth_token.is_empty()
        && signature
            .is_some_and(|s| twilio::signature_matches(&state.twilio.auth_token, &url, &params, s));
    if valid {
        return Ok(params);
    }
    if let Some(held) = REFUSED_LOG.pass() {
        tracing::warn!(
            held,
            signed = signature.is_some(),
            "{what} refused: missing or wrong X-Twilio-Signature"
        );
    }
    crate::metrics::metrics().webhook("twilio", "forbidden");
    Err(Box::new(
        (StatusCode::FORBIDDEN, "invalid signature\n").into_response(),
    ))
}

/// `POST /twilio/stream-ended`: the `<Connect action>` callback once a
/// stream ended. A call its agent transferred is dialled to the target; any
/// other is hung up (the agent or the caller ended it).
pub async fn stream_ended(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let base = public_base(&state, &headers);
    let params = match verified(
        &state,
        &base,
        &uri,
        &headers,
        &body,
        "stream-ended callback",
    ) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let call_sid = params
        .iter()
        .find(|(k, _)| k == "CallSid")
        .map_or("", |(_, v)| v.as_str());
    let target = state
        .transfers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(call_sid)
        .map(|(target, _)| target);
    crate::metrics::metrics().webhook("twilio", "stream_ended");
    match target {
        Some(target) => {
            tracing::info!(call = %crate::records::cap(call_sid, 64), "stream ended: dialling the transfer target");
            twiml(twilio::dial(&target))
        }
        None => twiml(twilio::hangup()),
    }
}

/// `GET /twilio/stream`: the media stream's WebSocket. No stream slot is
/// taken here: only a `start` with a valid token takes one (see
/// [`media_stream::run`]); until then the socket has `twilio.start_timeout_secs`.
pub async fn stream(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    let tw = &state.twilio;
    let limits = StreamLimits {
        max_frame: MAX_FRAME,
        max_frames_per_sec: MAX_FRAMES_PER_SEC,
        max_bytes_per_sec: tw.max_bytes_per_sec,
        // With signatures checked, only streams our own TwiML started are taken.
        token: tw
            .validate_signature
            .then(|| (state.stream_secret.clone(), tw.stream_token_max_age_secs)),
        start_timeout: Duration::from_secs(tw.start_timeout_secs),
        media_timeout: Duration::from_secs(tw.media_timeout_secs),
        ping: Duration::from_secs(tw.ping_secs),
        send_timeout: Duration::from_secs(tw.send_timeout_secs),
        max_streams: tw.max_streams,
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let shutdown = state.shutdown.clone();
            media_stream::run(socket, Arc::new(Twilio), state, limits, shutdown).await;
        })
}

/// The URL the provider used to reach us, without the path.
fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    if !state.http.public_url.is_empty() {
        return state.http.public_url.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn twiml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}
