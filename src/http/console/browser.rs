//! The browser's microphone as a transport (`/console/talk?agent=NAME`): a
//! WebSocket from the console's page into the same call core as SIP and
//! Twilio, thin around it as theirs are.
//!
//! The page sends binary messages of 16-bit little-endian PCM at 16 kHz (any
//! length; 20 ms is 640 bytes) and text messages `{"event":"dtmf","digit":"5"}`
//! or `{"event":"hangup"}`. Izwi sends the agent's audio the same way, one
//! 20 ms frame a message, and text messages `{"event":"start","call":ID,
//! "agent":NAME}`, `{"event":"clear"}` (the caller barged in: drop what is
//! queued for playing) and `{"event":"end","reason":CAUSE}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::Operator;
use crate::audio::FRAME;
use crate::call::Agent;
use crate::call::action::CallControl;
use crate::call::core::{CallCore, CoreSetup, Tick};
use crate::call::ending::Ending;
use crate::http::media_stream::{
    CLOSE_FLUSH, OUT_QUEUE, Outbox, ReadError, StreamLimits, WriterEnd, close, over, read_error,
    slow_consumer, write_out,
};
use crate::http::{AppState, StreamSlot};
use crate::records::{self, CallStart, Transport, now_ms};

/// The page's audio rate.
pub const RATE: u32 = 16_000;
/// Largest message taken: a quarter of a second of audio.
const MAX_MESSAGE: usize = 8 * 1024;
/// Browser calls at once at most (they take call slots like any other; this
/// keeps the console from taking them all).
const MAX_BROWSER_CALLS: usize = 8;
/// Ticks between checks that the operator's session still holds.
const SESSION_CHECK_TICKS: u32 = 50;

fn limits(state: &AppState) -> StreamLimits {
    StreamLimits {
        max_frame: MAX_MESSAGE,
        // The page sends 50 a second; room for a burst after a stall.
        max_frames_per_sec: 200,
        // 32 000 bytes a second of audio, twice that for a burst.
        max_bytes_per_sec: 64_000,
        token: None,
        start_timeout: Duration::from_secs(10),
        media_timeout: Duration::from_secs(15),
        ping: Duration::from_secs(20),
        send_timeout: Duration::from_secs(5),
        max_streams: state.twilio.max_streams,
    }
}

#[derive(Deserialize)]
pub struct TalkParams {
    /// The agent to talk to (default: the dialplan's default agent).
    agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum PageEvent {
    Dtmf { digit: String },
    Hangup,
}

/// `GET /console/talk?agent=NAME`: upgrades to the call's socket.
pub async fn talk(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
    Query(q): Query<TalkParams>,
    ws: WebSocketUpgrade,
) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return super::error(StatusCode::SERVICE_UNAVAILABLE, "draining: no new calls");
    }
    let plan = state.ctx.agents.plan();
    let name = q.agent.unwrap_or(plan.default_agent);
    if !plan.agents.contains_key(&name) {
        return super::error(StatusCode::NOT_FOUND, "no such agent");
    }
    let browsers = state
        .ctx
        .live
        .snapshot()
        .iter()
        .filter(|c| c.transport == Transport::Browser)
        .count();
    if browsers >= MAX_BROWSER_CALLS {
        return super::error(StatusCode::SERVICE_UNAVAILABLE, "too many browser calls");
    }
    let agent = state.ctx.agents.agent(&name);
    let limits = limits(&state);
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            tracing::info!(operator = %op.principal.name, agent = %name, "browser call");
            run(socket, state, name, agent, limits, op.session).await;
        })
        .into_response()
}

fn event(value: serde_json::Value) -> String {
    value.to_string()
}

async fn run(
    socket: WebSocket,
    state: Arc<AppState>,
    name: String,
    agent: Option<Arc<Agent>>,
    limits: StreamLimits,
    session: String,
) {
    let (sink, mut incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let mut writer = tokio::spawn(write_out(sink, out_rx, limits.send_timeout));
    let outbox = Outbox { tx: out_tx };
    let Some(_slot) = StreamSlot::take(&state, limits.max_streams) else {
        close(&outbox, &mut incoming, 1013, "at capacity", "busy").await;
        return;
    };
    let setup = CoreSetup {
        start: CallStart {
            id: records::new_call_id(),
            remote_id: None,
            transport: Transport::Browser,
            started_at_ms: now_ms(),
            called: None,
            caller: None,
            agent: Some(name.clone()),
            rule: None,
            codec: Some("L16/16000".into()),
        },
        agent,
        wire_rate: RATE,
        confirms_playback: false,
        continuous: false,
    };
    let mut core = match CallCore::start(&state.ctx, setup).await {
        Ok(core) => core,
        Err(_) => {
            close(
                &outbox,
                &mut incoming,
                1011,
                "cannot answer the call",
                "agent",
            )
            .await;
            return;
        }
    };
    outbox.send(event(
        serde_json::json!({ "event": "start", "call": core.id(), "agent": name }),
    ));
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ping = tokio::time::interval_at(Instant::now() + limits.ping, limits.ping);
    let mut last_media = Instant::now();
    let mut window = (Instant::now(), 0u32, 0usize);
    let mut wire = Vec::with_capacity(MAX_MESSAGE / 2);
    let mut out = Tick::default();
    let mut ticks = 0u32;
    let end = loop {
        tokio::select! {
            msg = incoming.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    // The page went away.
                    None => break Ending::CallerBye,
                    Some(Err(e)) => match read_error(e) {
                        ReadError::TooLarge => break close(&outbox, &mut incoming, 1009, "message too large", "too_large").await,
                        ReadError::Utf8 => break close(&outbox, &mut incoming, 1007, "text is not UTF-8", "utf8").await,
                        ReadError::Broken => break Ending::SocketClosed,
                    },
                };
                let len = match &msg {
                    Message::Binary(b) => b.len(),
                    Message::Text(t) => t.len(),
                    Message::Ping(p) | Message::Pong(p) => p.len(),
                    // The page hung up.
                    Message::Close(_) => break Ending::CallerBye,
                };
                if over(&mut window, len, &limits) {
                    break close(&outbox, &mut incoming, 1008, "too much audio", "flood").await;
                }
                match msg {
                    Message::Binary(pcm) => {
                        if pcm.len() % 2 != 0 {
                            break close(&outbox, &mut incoming, 1007, "audio is 16-bit samples", "pcm").await;
                        }
                        last_media = Instant::now();
                        wire.clear();
                        wire.extend(pcm.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0));
                        core.caller_audio(&wire);
                    }
                    Message::Text(text) => match serde_json::from_str::<PageEvent>(&text) {
                        Ok(PageEvent::Hangup) => break Ending::CallerBye,
                        Ok(PageEvent::Dtmf { digit }) => {
                            match digit.chars().next().filter(|c| digit.len() == 1 && "0123456789*#".contains(*c)) {
                                Some(key) => core.digit(key),
                                None => break close(&outbox, &mut incoming, 1008, "a key is one of 0-9 * #", "dtmf").await,
                            }
                        }
                        Err(_) => break close(&outbox, &mut incoming, 1008, "unknown message", "json").await,
                    },
                    _ => {}
                }
            }
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(SESSION_CHECK_TICKS)
                    && state.console.get(&session, std::time::Instant::now()).is_none()
                {
                    close(&outbox, &mut incoming, 1008, "signed out", "signed_out").await;
                    break Ending::Operator;
                }
                core.tick(&mut out).await;
                let mut kept_up = true;
                if out.clear {
                    kept_up &= outbox.send(event(serde_json::json!({ "event": "clear" })));
                }
                if !out.audio.is_empty() {
                    let pcm: Vec<u8> = out.audio.iter()
                        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                        .collect();
                    kept_up &= outbox.tx.try_send(Message::Binary(pcm.into())).is_ok();
                }
                if !kept_up {
                    break slow_consumer("outbound queue full");
                }
                match out.control.take() {
                    Some(CallControl::HangUp(e)) => {
                        outbox.send(event(serde_json::json!({ "event": "end", "reason": e.cause() })));
                        close(&outbox, &mut incoming, 1000, "the call ended", "agent").await;
                        break e;
                    }
                    // A browser cannot be handed on: the agent goes on as its profile says.
                    Some(CallControl::Transfer { .. }) => core.transfer_result(false),
                    None => {}
                }
            }
            _ = ping.tick() => {
                if outbox.tx.try_send(Message::Ping(Default::default())).is_err() {
                    break slow_consumer("outbound queue full");
                }
            }
            _ = tokio::time::sleep_until(last_media + limits.media_timeout) => {
                close(&outbox, &mut incoming, 1008, "no audio", "media_timeout").await;
                break Ending::MediaTimeout;
            }
            w = &mut writer => {
                break match w {
                    Ok(WriterEnd::TimedOut) => slow_consumer("send timed out"),
                    _ => Ending::SocketClosed,
                };
            }
            _ = shutdown.changed() => {
                close(&outbox, &mut incoming, 1001, "server shutting down", "shutdown").await;
                break Ending::Shutdown;
            }
        }
    };
    drop(outbox);
    if !writer.is_finished() {
        let _ = tokio::time::timeout(CLOSE_FLUSH, &mut writer).await;
    }
    writer.abort();
    let id = core.id().to_string();
    let turns = core.end(end).len();
    tracing::info!(call = %id, end = %end, turns, "browser call ended");
}
