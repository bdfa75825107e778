//! The reactor of one call carried by a cloud provider's media stream (a
//! WebSocket): one `select!` over the socket, a 20 ms clock and shutdown. The
//! provider's frames are parsed by its [`MediaStreamProvider`]; caller audio
//! (µ-law, 8 kHz) is decoded and resampled into the same [`CallAgent`] that
//! answers SIP calls, and the agent's audio goes back paced, one 20 ms frame
//! per tick, with a mark after each phrase and a clear on barge-in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::audio::{ENGINE_RATE, FRAME, FRAME_SAMPLES, SILENCE};
use crate::call::conversation::TurnRecord;
use crate::call::session::{CallAgent, CallContext, CallTracker, Ending};
use crate::codec::g711::Law;
use crate::codec::resample::StreamResampler;
use crate::metrics::metrics;
use crate::provider::twilio::check_stream_token;
use crate::provider::{MediaStreamProvider, ProtocolError, StreamEvent, StreamStart};
use crate::records::{CallStart, Outcome, Side, Transport, now_ms};

/// The provider's audio rate: G.711 µ-law, 8 kHz.
const WIRE_RATE: u32 = 8_000;
const WIRE_FRAME: usize = WIRE_RATE as usize / 50;
/// Ticks after the agent's last frame during which the resampler's tail is
/// still sent, so a phrase does not lose its last milliseconds.
const TAIL_TICKS: u8 = 3;
/// How long a stream Izwi closes waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Limits on what a stream may send.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Largest text frame taken (a Twilio media frame is about 300 bytes).
    pub max_frame: usize,
    /// Frames in any one second beyond which the stream is a flood (Twilio sends 50).
    pub max_frames_per_sec: u32,
    /// When set, `start` must carry a `token` parameter valid for this secret
    /// and age (seconds): proof that the stream follows our own TwiML.
    pub token: Option<(String, u64)>,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The provider said `stop`.
    Stop,
    /// The socket closed (or failed) without `stop`.
    Closed,
    /// Izwi closed it over bad input; the label says which kind.
    Protocol(&'static str),
    Unauthorized,
    Shutdown,
    /// The call's agent could not be started.
    AgentFailed,
}

/// What one stream did: logged at its end (and, later, recorded).
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub stream_id: String,
    pub call_id: String,
    pub end: Option<StreamEnd>,
    pub frames_in: u64,
    pub media_in: u64,
    pub media_out: u64,
    pub marks_sent: u64,
    pub marks_heard: u64,
    pub clears: u64,
    pub digits: u64,
    pub turns: Vec<TurnRecord>,
}

/// A stream after its `start`.
struct Live {
    stream_id: String,
    agent: CallAgent,
    tracker: CallTracker,
    up: StreamResampler,
    down: StreamResampler,
    caller_pcm: VecDeque<f32>,
    agent_pcm: VecDeque<f32>,
    /// Audio time of the next caller frame, and of the next agent frame.
    caller_at: Duration,
    ticks: u32,
    barge_ins: u64,
    tail: u8,
}

pub async fn run(
    mut socket: WebSocket,
    provider: Arc<dyn MediaStreamProvider>,
    ctx: Arc<CallContext>,
    limits: StreamLimits,
    mut shutdown: watch::Receiver<bool>,
) -> StreamSummary {
    let mut summary = StreamSummary::default();
    let mut live: Option<Live> = None;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut window = (Instant::now(), 0u32);
    // Scratch buffers of the 20 ms path, reused.
    let mut wire = Vec::with_capacity(WIRE_FRAME * 4);
    let mut pcm = Vec::with_capacity(FRAME_SAMPLES * 4);
    let mut bytes = Vec::with_capacity(WIRE_FRAME);
    let end = loop {
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        break close(&mut socket, 1003, "binary frames are not part of the protocol", "binary").await;
                    }
                    Some(Ok(Message::Close(_))) | None => break StreamEnd::Closed,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        // An over-long message or a broken connection: nothing more can be read.
                        tracing::info!(stream = %summary.stream_id, error = %e, "media stream failed");
                        break StreamEnd::Closed;
                    }
                };
                summary.frames_in += 1;
                let now = Instant::now();
                if now - window.0 >= Duration::from_secs(1) {
                    window = (now, 0);
                }
                window.1 += 1;
                if window.1 > limits.max_frames_per_sec {
                    break close(&mut socket, 1008, "too many frames", "flood").await;
                }
                if text.len() > limits.max_frame {
                    break close(&mut socket, 1009, "frame too large", "too_large").await;
                }
                let event = match provider.parse(text.as_str()) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let reason = e.to_string();
                        break close(&mut socket, close_code(&e), &reason, e.kind()).await;
                    }
                };
                match (event, live.as_mut()) {
                    (StreamEvent::Connected, None) => {}
                    (StreamEvent::Start(start), None) => {
                        if let Err(e) = provider.accepts(&start) {
                            let reason = e.to_string();
                            break close(&mut socket, close_code(&e), &reason, e.kind()).await;
                        }
                        if !authorized(&start, &limits) {
                            tracing::warn!(stream = %start.stream_id, "media stream without a valid token refused");
                            close(&mut socket, 1008, "stream not authorized", "unauthorized").await;
                            break StreamEnd::Unauthorized;
                        }
                        summary.stream_id = start.stream_id.clone();
                        summary.call_id = start.call_id.clone();
                        match begin(&ctx, start).await {
                            Some(l) => {
                                tracing::info!(stream = %summary.stream_id, call = %summary.call_id, provider = provider.name(), "media stream started");
                                live = Some(l);
                                tick.reset();
                            }
                            None => {
                                close(&mut socket, 1011, "cannot answer the call", "agent").await;
                                break StreamEnd::AgentFailed;
                            }
                        }
                    }
                    (StreamEvent::Media { payload, .. }, Some(l)) => {
                        summary.media_in += 1;
                        wire.clear();
                        Law::Mu.decode(&payload, &mut wire);
                        pcm.clear();
                        if l.up.push(&wire, &mut pcm).is_err() {
                            pcm.clear();
                        }
                        l.caller_pcm.extend(pcm.iter().copied());
                        while l.caller_pcm.len() >= FRAME_SAMPLES {
                            let mut frame = SILENCE;
                            for (f, s) in frame.iter_mut().zip(l.caller_pcm.drain(..FRAME_SAMPLES)) {
                                *f = s;
                            }
                            l.agent.push(&frame, l.caller_at);
                            l.caller_at += FRAME;
                        }
                    }
                    (StreamEvent::Dtmf { digit }, Some(l)) => {
                        summary.digits += 1;
                        tracing::info!(stream = %summary.stream_id, "DTMF digit received");
                        // Media streams carry no DTMF back: the echo agent's keys go nowhere.
                        let _ = l.agent.digit(digit, l.caller_at);
                    }
                    (StreamEvent::Mark { name }, Some(l)) => {
                        if let Some(seq) = name.strip_prefix('p').and_then(|n| n.parse().ok()) {
                            summary.marks_heard += 1;
                            l.agent.heard_through(seq);
                        }
                    }
                    (StreamEvent::Stop, _) => break StreamEnd::Stop,
                    (StreamEvent::Start(_), Some(_)) => {
                        break close(&mut socket, 1008, "a second start", "sequence").await;
                    }
                    (StreamEvent::Connected, Some(_)) => {
                        break close(&mut socket, 1008, "connected after start", "sequence").await;
                    }
                    (_, None) => {
                        break close(&mut socket, 1008, "media, dtmf or mark before start", "sequence").await;
                    }
                }
            }
            _ = tick.tick(), if live.is_some() => {
                let Some(l) = live.as_mut() else { continue };
                let at = FRAME * l.ticks;
                l.ticks += 1;
                let out = l.agent.next(at).await;
                for seq in l.agent.take_phrase_ends() {
                    summary.marks_sent += 1;
                    if socket.send(Message::Text(provider.mark(&l.stream_id, &format!("p{seq}")).into())).await.is_err() {
                        break;
                    }
                }
                let barge_ins = l.agent.barge_ins();
                if barge_ins > l.barge_ins {
                    l.barge_ins = barge_ins;
                    l.agent_pcm.clear();
                    l.tail = 0;
                    summary.clears += 1;
                    let _ = socket.send(Message::Text(provider.clear(&l.stream_id).into())).await;
                }
                l.tail = if out.is_some() { TAIL_TICKS } else { l.tail.saturating_sub(1) };
                pcm.clear();
                // Silence goes through the resampler too, keeping its state continuous.
                if l.down.push(&out.unwrap_or(SILENCE), &mut pcm).is_err() {
                    pcm.clear();
                }
                if l.tail == 0 {
                    l.agent_pcm.clear();
                    continue;
                }
                l.agent_pcm.extend(pcm.iter().copied());
                while l.agent_pcm.len() >= WIRE_FRAME {
                    wire.clear();
                    wire.extend(l.agent_pcm.drain(..WIRE_FRAME));
                    bytes.clear();
                    Law::Mu.encode(&wire, &mut bytes);
                    summary.media_out += 1;
                    if socket.send(Message::Text(provider.media(&l.stream_id, &bytes).into())).await.is_err() {
                        break;
                    }
                }
            }
            _ = shutdown.changed() => {
                close(&mut socket, 1001, "server shutting down", "shutdown").await;
                break StreamEnd::Shutdown;
            }
        }
    };
    if let Some(mut l) = live {
        summary.turns = l.agent.close();
        l.tracker.finish(ending(&end, &summary), &summary.turns);
    }
    tracing::info!(
        stream = %summary.stream_id,
        call = %summary.call_id,
        end = ?end,
        frames_in = summary.frames_in,
        media_in = summary.media_in,
        media_out = summary.media_out,
        marks_sent = summary.marks_sent,
        marks_heard = summary.marks_heard,
        clears = summary.clears,
        dtmf = summary.digits,
        turns = summary.turns.len(),
        "media stream ended"
    );
    summary.end = Some(end);
    summary
}

/// How a stream call ended, for its record.
fn ending(end: &StreamEnd, summary: &StreamSummary) -> Ending {
    let (outcome, cause, side) = match end {
        StreamEnd::Stop => (Outcome::Completed, "stream_stop".to_string(), Side::Caller),
        StreamEnd::Closed => (
            Outcome::Completed,
            "socket_closed".to_string(),
            Side::Provider,
        ),
        StreamEnd::Shutdown => (Outcome::Completed, "shutdown".to_string(), Side::Izwi),
        StreamEnd::Protocol(kind) => (Outcome::Failed, format!("protocol:{kind}"), Side::Izwi),
        StreamEnd::Unauthorized => (Outcome::Failed, "unauthorized".to_string(), Side::Izwi),
        StreamEnd::AgentFailed => (Outcome::Failed, "agent_failed".to_string(), Side::Izwi),
    };
    Ending {
        errors: u32::from(outcome == Outcome::Failed),
        outcome,
        cause,
        side,
        dtmf: summary.digits as u32,
    }
}

/// The call's agent and resamplers, once the stream has started.
async fn begin(ctx: &CallContext, start: StreamStart) -> Option<Live> {
    let id = if start.call_id.is_empty() {
        start.stream_id.clone()
    } else {
        start.call_id.clone()
    };
    // Twilio is the only stream provider so far; the next adds its transport.
    let mut tracker = CallTracker::start(
        &ctx.recorder,
        CallStart {
            id,
            transport: Transport::Twilio,
            started_at_ms: now_ms(),
            called: start.custom.get("called").cloned(),
            caller: start.custom.get("caller").cloned(),
            agent: Some(ctx.agent_name()),
            codec: Some("PCMU".into()),
        },
    );
    tracker.answered(now_ms());
    let agent = CallAgent::start(
        ctx.echo,
        ctx.engine.clone(),
        ctx.agent.clone(),
        &ctx.turn,
        &start.stream_id,
    )
    .await;
    let mut agent = match agent {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(stream = %start.stream_id, error = %e, "cannot start the call's agent");
            return None;
        }
    };
    agent.confirm_playback();
    Some(Live {
        stream_id: start.stream_id,
        agent,
        tracker,
        up: StreamResampler::new(WIRE_RATE, ENGINE_RATE).ok()?,
        down: StreamResampler::new(ENGINE_RATE, WIRE_RATE).ok()?,
        caller_pcm: VecDeque::with_capacity(FRAME_SAMPLES * 2),
        agent_pcm: VecDeque::with_capacity(WIRE_FRAME * 4),
        caller_at: Duration::ZERO,
        ticks: 0,
        barge_ins: 0,
        tail: 0,
    })
}

fn authorized(start: &StreamStart, limits: &StreamLimits) -> bool {
    let Some((secret, max_age)) = &limits.token else {
        return true;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    start
        .custom
        .get("token")
        .is_some_and(|t| check_stream_token(secret, t, now, *max_age))
}

/// WebSocket close codes (RFC 6455 §7.4.1) for protocol errors.
fn close_code(e: &ProtocolError) -> u16 {
    match e.kind() {
        "too_large" => 1009,
        "json" | "base64" => 1007,
        _ => 1008,
    }
}

/// Closes the stream with a reason; the label is what the log (and counters) carry.
async fn close(socket: &mut WebSocket, code: u16, reason: &str, label: &'static str) -> StreamEnd {
    tracing::info!(code, reason, kind = label, "closing media stream");
    if label != "shutdown" {
        metrics().stream_rejected(label);
    }
    // Close reasons are limited to 123 bytes.
    let mut reason = reason.to_string();
    while reason.len() > 120 {
        reason.pop();
    }
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    if sent.is_ok() {
        linger(socket).await;
    }
    StreamEnd::Protocol(label)
}

/// Reads (and drops) what the peer still sends until its close frame, for at
/// most [`CLOSE_LINGER`]. Dropping the socket straight after our close frame
/// would close TCP with the peer's frames unread, which makes the kernel send
/// a reset, and the reset discards our close frame, reason and all, before
/// the peer reads it (a flooding peer never learned why it was cut off).
async fn linger(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
