//! Twilio's voice webhook (answers with TwiML that connects the call to a
//! media stream) and the stream's WebSocket upgrade.

use std::sync::Arc;

use axum::extract::{OriginalUri, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::media_stream::{self, StreamLimits};
use super::{AppState, StreamSlot};
use crate::provider::twilio::{self, Twilio};

/// Largest WebSocket message read at all; frames over `MAX_FRAME` are refused
/// with a reason, larger ones break the connection.
const MAX_MESSAGE: usize = 1 << 20;
const MAX_FRAME: usize = 64 * 1024;
const MAX_FRAMES_PER_SEC: u32 = 250;

/// `POST /twilio/voice`: a call came in; tell Twilio to stream it to us.
pub async fn voice(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let params = twilio::parse_form(&body);
    let base = public_base(&state, &headers);
    if state.twilio.validate_signature {
        let url = format!(
            "{base}{}",
            uri.path_and_query().map_or(uri.path(), |p| p.as_str())
        );
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok());
        let valid = !state.twilio.auth_token.is_empty()
            && signature.is_some_and(|s| {
                twilio::signature_matches(&state.twilio.auth_token, &url, &params, s)
            });
        if !valid {
            tracing::warn!(
                signed = signature.is_some(),
                "voice webhook refused: missing or wrong X-Twilio-Signature"
            );
            crate::metrics::metrics().webhook("twilio", "forbidden");
            return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
        }
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let call_sid = get("CallSid");
    if state
        .active_streams
        .load(std::sync::atomic::Ordering::SeqCst)
        >= state.twilio.max_streams
    {
        tracing::warn!(call = %call_sid, "at capacity: call rejected as busy");
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
    let token = twilio::stream_token(&state.stream_secret, now);
    tracing::info!(call = %call_sid, "voice webhook: connecting the call to a media stream");
    crate::metrics::metrics().webhook("twilio", "accepted");
    twiml(twilio::connect_stream(
        &stream_url,
        &[
            ("callSid", call_sid),
            ("caller", get("From")),
            ("called", get("To")),
            ("token", &token),
        ],
    ))
}

/// `GET /twilio/stream`: the media stream's WebSocket.
pub async fn stream(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    let Some(slot) = StreamSlot::take(&state, state.twilio.max_streams) else {
        tracing::warn!("at capacity: media stream refused");
        return (StatusCode::SERVICE_UNAVAILABLE, "at capacity\n").into_response();
    };
    let limits = StreamLimits {
        max_frame: MAX_FRAME,
        max_frames_per_sec: MAX_FRAMES_PER_SEC,
        // With signatures checked, only streams our own TwiML started are taken.
        token: state.twilio.validate_signature.then(|| {
            (
                state.stream_secret.clone(),
                state.twilio.stream_token_max_age_secs,
            )
        }),
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            media_stream::run(
                socket,
                Arc::new(Twilio),
                state.ctx.clone(),
                limits,
                state.shutdown.clone(),
            )
            .await;
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
