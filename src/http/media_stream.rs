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
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::{AppState, StreamSlot};
use crate::audio::{ENGINE_RATE, FRAME, FRAME_SAMPLES, SILENCE};
use crate::call::conversation::TurnRecord;
use crate::call::session::{CallAgent, CallContext, CallTracker, Ending};
use crate::codec::g711::Law;
use crate::codec::resample::StreamResampler;
use crate::limits::SharedLogGate;
use crate::metrics::metrics;
use crate::provider::twilio::check_stream_token;
use crate::provider::{MediaStreamProvider, ProtocolError, StreamEvent, StreamStart};
use crate::records::{self, CallStart, Outcome, Side, Transport, now_ms};

/// The provider's audio rate: G.711 µ-law, 8 kHz.
const WIRE_RATE: u32 = 8_000;
const WIRE_FRAME: usize = WIRE_RATE as usize / 50;
/// Ticks after the agent's last frame during which the resampler's tail is
/// still sent, so a phrase does not lose its last milliseconds.
const TAIL_TICKS: u8 = 3;
/// How long a stream Izwi closes waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long what is still queued for the provider may take to go out once the
/// stream has ended.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);
/// Frames waiting to be written to the provider: three seconds of audio (a
/// stall of the call's loop followed by a burst fits). A client that lets it
/// fill has stopped reading, and its stream is closed.
const OUT_QUEUE: usize = 150;
/// Stream tokens remembered as used, at most (each is good for minutes only).
const MAX_USED_TOKENS: usize = 100_000;
/// Lines about refused streams, about closes, and about the ends of sockets
/// that never started a call, per window (the rest are counted).
static REFUSED_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));
static CLOSE_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));
static UNSTARTED_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));

/// Limits on what a stream may send, and how long it may take.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Largest text frame taken (a Twilio media frame is about 300 bytes).
    pub max_frame: usize,
    /// Frames in any one second beyond which the stream is a flood (Twilio sends 50).
    pub max_frames_per_sec: u32,
    /// Bytes in any one second beyond which the stream is a flood.
    pub max_bytes_per_sec: usize,
    /// When set, `start` must carry a `token` parameter valid for this secret,
    /// age (seconds) and call, and not used before: proof that the stream
    /// follows our own TwiML for that call.
    pub token: Option<(String, u64)>,
    /// A valid `start` must come this soon after the socket opens.
    pub start_timeout: Duration,
    /// A started stream must send media at least this often.
    pub media_timeout: Duration,
    pub ping: Duration,
    /// Each frame to the provider must be written within this.
    pub send_timeout: Duration,
    /// Concurrent streams (calls); a slot is taken only by a valid `start`.
    pub max_streams: usize,
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
    /// No valid token, or one used before or for another call.
    Unauthorized,
    /// No `start` in time.
    StartTimeout,
    /// Started, then no media for too long.
    MediaTimeout,
    /// The client stopped reading: a frame could not be written in time.
    SlowConsumer,
    /// Every stream slot was taken.
    Busy,
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
    /// Holds one of the `max_streams` places while the call lasts.
    _slot: StreamSlot,
    up: StreamResampler,
    down: StreamResampler,
    caller_pcm: VecDeque<f32>,
    agent_pcm: VecDeque<f32>,
    /// Audio time of the next caller frame, and of the next agent frame.
    caller_at: Duration,
    ticks: u32,
    barge_ins: u64,
    tail: u8,
    dtmf_log: crate::limits::LogGate,
}

impl Live {
    fn dtmf_log_pass(&mut self) -> Option<u64> {
        self.dtmf_log.pass(std::time::Instant::now())
    }
}

/// Frames to the provider go through a bounded queue to a writer task, so
/// that a client that stops reading never blocks the call's loop: the queue
/// fills (or a write times out) and the stream is closed.
struct Outbox {
    tx: mpsc::Sender<Message>,
}

impl Outbox {
    /// `false` when the client is not keeping up (the queue is full or the writer gone).
    fn send(&self, text: String) -> bool {
        self.tx.try_send(Message::Text(text.into())).is_ok()
    }
}

/// How the writer task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterEnd {
    /// Its queue closed, or it wrote a close frame.
    Done,
    Failed,
    TimedOut,
}

async fn write_out(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    timeout: Duration,
) -> WriterEnd {
    while let Some(m) = rx.recv().await {
        let close = matches!(m, Message::Close(_));
        match tokio::time::timeout(timeout, sink.send(m)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return WriterEnd::Failed,
            Err(_) => return WriterEnd::TimedOut,
        }
        if close {
            break;
        }
    }
    WriterEnd::Done
}

pub async fn run(
    socket: WebSocket,
    provider: Arc<dyn MediaStreamProvider>,
    state: Arc<AppState>,
    limits: StreamLimits,
    mut shutdown: watch::Receiver<bool>,
) -> StreamSummary {
    let ctx = state.ctx.clone();
    let (sink, mut incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let mut writer = tokio::spawn(write_out(sink, out_rx, limits.send_timeout));
    let out = Outbox { tx: out_tx };
    let mut summary = StreamSummary::default();
    let mut live: Option<Live> = None;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ping = tokio::time::interval_at(Instant::now() + limits.ping, limits.ping);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let opened = Instant::now();
    let mut last_media = opened;
    let mut window = (Instant::now(), 0u32, 0usize);
    // Scratch buffers of the 20 ms path, reused.
    let mut wire = Vec::with_capacity(WIRE_FRAME * 4);
    let mut pcm = Vec::with_capacity(FRAME_SAMPLES * 4);
    let mut bytes = Vec::with_capacity(WIRE_FRAME);
    let end = loop {
        let deadline = if live.is_some() {
            last_media + limits.media_timeout
        } else {
            opened + limits.start_timeout
        };
        tokio::select! {
            msg = incoming.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        break close(&out, &mut incoming, 1003, "binary frames are not part of the protocol", "binary").await;
                    }
                    Some(Ok(Message::Close(_))) | None => break StreamEnd::Closed,
                    Some(Ok(other)) => {
                        // Pings and pongs count against the stream's rates too.
                        let len = match &other {
                            Message::Ping(p) | Message::Pong(p) => p.len(),
                            _ => 0,
                        };
                        if over(&mut window, len, &limits) {
                            break close(&out, &mut incoming, 1008, "too many frames", "flood").await;
                        }
                        continue;
                    }
                    Some(Err(e)) => match read_error(e) {
                        ReadError::Utf8 => {
                            break close(&out, &mut incoming, 1007, "text frame is not UTF-8", "utf8").await;
                        }
                        ReadError::TooLarge => {
                            break close(&out, &mut incoming, 1009, "message too large", "too_large").await;
                        }
                        ReadError::Broken => {
                            // A broken connection: nothing more can be read.
                            if let Some(held) = CLOSE_LOG.pass() {
                                tracing::info!(stream = %summary.stream_id, held, "media stream failed");
                            }
                            break StreamEnd::Closed;
                        }
                    },
                };
                summary.frames_in += 1;
                let now = Instant::now();
                if over(&mut window, text.len(), &limits) {
                    let (reason, kind) = if window.1 > limits.max_frames_per_sec {
                        ("too many frames", "flood")
                    } else {
                        ("too many bytes", "byte_flood")
                    };
                    break close(&out, &mut incoming, 1008, reason, kind).await;
                }
                if text.len() > limits.max_frame {
                    break close(&out, &mut incoming, 1009, "frame too large", "too_large").await;
                }
                let event = match provider.parse(text.as_str()) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let reason = e.to_string();
                        break close(&out, &mut incoming, close_code(&e), &reason, e.kind()).await;
                    }
                };
                match (event, live.as_mut()) {
                    (StreamEvent::Connected, None) => {}
                    (StreamEvent::Start(start), None) => {
                        if let Err(e) = provider.accepts(&start) {
                            let reason = e.to_string();
                            break close(&out, &mut incoming, close_code(&e), &reason, e.kind()).await;
                        }
                        if let Err(why) = authorize(&start, &limits, &state) {
                            if let Some(held) = REFUSED_LOG.pass() {
                                tracing::warn!(stream = %records::cap(&start.stream_id, 64), reason = why, held, "media stream without a valid token refused");
                            }
                            close(&out, &mut incoming, 1008, "stream not authorized", why).await;
                            break StreamEnd::Unauthorized;
                        }
                        // The slot is taken only now, by a stream proven to follow our TwiML.
                        let Some(slot) = StreamSlot::take(&state, limits.max_streams) else {
                            if let Some(held) = REFUSED_LOG.pass() {
                                tracing::warn!(held, "at capacity: media stream refused");
                            }
                            // A real call (its token is good) that found no room: recorded.
                            record_busy(&ctx, &start);
                            close(&out, &mut incoming, 1013, "at capacity", "busy").await;
                            break StreamEnd::Busy;
                        };
                        summary.stream_id = records::cap(&start.stream_id, records::MAX_REMOTE_ID).to_string();
                        summary.call_id = records::cap(&start.call_id, records::MAX_REMOTE_ID).to_string();
                        match begin(&ctx, start, slot).await {
                            Some(l) => {
                                tracing::info!(call = %l.tracker.id(), stream = %summary.stream_id, call_sid = %summary.call_id, provider = provider.name(), "media stream started");
                                live = Some(l);
                                last_media = Instant::now();
                                tick.reset();
                            }
                            None => {
                                close(&out, &mut incoming, 1011, "cannot answer the call", "agent").await;
                                break StreamEnd::AgentFailed;
                            }
                        }
                    }
                    (StreamEvent::Media { payload, .. }, Some(l)) => {
                        summary.media_in += 1;
                        last_media = now;
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
                        if let Some(held) = l.dtmf_log_pass() {
                            tracing::info!(call = %l.tracker.id(), held, "DTMF digit received");
                        }
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
                        break close(&out, &mut incoming, 1008, "a second start", "sequence").await;
                    }
                    (StreamEvent::Connected, Some(_)) => {
                        break close(&out, &mut incoming, 1008, "connected after start", "sequence").await;
                    }
                    (_, None) => {
                        break close(&out, &mut incoming, 1008, "media, dtmf or mark before start", "sequence").await;
                    }
                }
            }
            _ = tick.tick(), if live.is_some() => {
                let Some(l) = live.as_mut() else { continue };
                let at = FRAME * l.ticks;
                l.ticks += 1;
                let frame = l.agent.next(at).await;
                let mut kept_up = true;
                for seq in l.agent.take_phrase_ends() {
                    summary.marks_sent += 1;
                    kept_up &= out.send(provider.mark(&l.stream_id, &format!("p{seq}")));
                }
                let barge_ins = l.agent.barge_ins();
                if barge_ins > l.barge_ins {
                    l.barge_ins = barge_ins;
                    l.agent_pcm.clear();
                    l.tail = 0;
                    summary.clears += 1;
                    kept_up &= out.send(provider.clear(&l.stream_id));
                }
                l.tail = if frame.is_some() { TAIL_TICKS } else { l.tail.saturating_sub(1) };
                pcm.clear();
                // Silence goes through the resampler too, keeping its state continuous.
                if l.down.push(&frame.unwrap_or(SILENCE), &mut pcm).is_err() {
                    pcm.clear();
                }
                if l.tail == 0 {
                    l.agent_pcm.clear();
                } else {
                    l.agent_pcm.extend(pcm.iter().copied());
                    while l.agent_pcm.len() >= WIRE_FRAME {
                        wire.clear();
                        wire.extend(l.agent_pcm.drain(..WIRE_FRAME));
                        bytes.clear();
                        Law::Mu.encode(&wire, &mut bytes);
                        summary.media_out += 1;
                        kept_up &= out.send(provider.media(&l.stream_id, &bytes));
                    }
                }
                if !kept_up {
                    break slow_consumer("outbound queue full");
                }
            }
            _ = ping.tick() => {
                if out.tx.try_send(Message::Ping(Default::default())).is_err() {
                    break slow_consumer("outbound queue full");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if live.is_some() {
                    close(&out, &mut incoming, 1008, "no media", "media_timeout").await;
                    break StreamEnd::MediaTimeout;
                }
                close(&out, &mut incoming, 1008, "no start in time", "start_timeout").await;
                break StreamEnd::StartTimeout;
            }
            w = &mut writer => {
                break match w {
                    Ok(WriterEnd::TimedOut) => slow_consumer("send timed out"),
                    _ => StreamEnd::Closed,
                };
            }
            _ = shutdown.changed() => {
                close(&out, &mut incoming, 1001, "server shutting down", "shutdown").await;
                break StreamEnd::Shutdown;
            }
        }
    };
    // What is queued (a close frame, say) goes out, but a client that has
    // stopped reading is not waited for.
    drop(out);
    if !writer.is_finished() {
        let _ = tokio::time::timeout(CLOSE_FLUSH, &mut writer).await;
    }
    writer.abort();
    if let Some(mut l) = live {
        summary.turns = l.agent.close();
        l.tracker.finish(ending(&end, &summary), &summary.turns);
    }
    // A socket that never started a call is one line among many in a flood.
    let log = summary.stream_id.is_empty().then(|| UNSTARTED_LOG.pass());
    if let Some(held) = log.unwrap_or(Some(0)) {
        tracing::info!(
            stream = %summary.stream_id,
            call_sid = %summary.call_id,
            end = ?end,
            frames_in = summary.frames_in,
            media_in = summary.media_in,
            media_out = summary.media_out,
            marks_sent = summary.marks_sent,
            marks_heard = summary.marks_heard,
            clears = summary.clears,
            dtmf = summary.digits,
            turns = summary.turns.len(),
            held,
            "media stream ended"
        );
    }
    summary.end = Some(end);
    summary
}

/// Counts a frame of `len` bytes in the one-second window; whether the
/// stream is now over its frame or byte rate.
fn over(window: &mut (Instant, u32, usize), len: usize, limits: &StreamLimits) -> bool {
    let now = Instant::now();
    if now - window.0 >= Duration::from_secs(1) {
        *window = (now, 0, 0);
    }
    window.1 += 1;
    window.2 += len;
    window.1 > limits.max_frames_per_sec || window.2 > limits.max_bytes_per_sec
}

/// A call whose stream found every slot taken: recorded as failed, `busy`.
fn record_busy(ctx: &CallContext, start: &StreamStart) {
    let tracker = CallTracker::start(&ctx.recorder, call_start(ctx, start));
    tracker.finish(
        Ending {
            outcome: Outcome::Failed,
            cause: "busy".into(),
            side: Side::Izwi,
            dtmf: 0,
            errors: 1,
        },
        &[],
    );
}

/// The client stopped reading what Izwi sends.
fn slow_consumer(why: &'static str) -> StreamEnd {
    metrics().stream_rejected("slow_consumer");
    if let Some(held) = REFUSED_LOG.pass() {
        tracing::info!(
            reason = why,
            held,
            "media stream closed: the client is not reading"
        );
    }
    StreamEnd::SlowConsumer
}

/// Why a WebSocket read failed.
enum ReadError {
    /// A text frame that is not UTF-8.
    Utf8,
    /// A message over the size the socket takes.
    TooLarge,
    Broken,
}

fn read_error(e: axum::Error) -> ReadError {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Utf8(_)) => ReadError::Utf8,
        Some(tungstenite::Error::Capacity(_)) => ReadError::TooLarge,
        _ => ReadError::Broken,
    }
}

/// How a stream call ended, for its record.
fn ending(end: &StreamEnd, summary: &StreamSummary) -> Ending {
    let (outcome, cause, side) = match end {
        StreamEnd::Stop => (Outcome::Completed, "stream_stop".to_string(), Side::Caller),
        // Twilio always says `stop` when a call ends: a socket gone without it is a failure.
        StreamEnd::Closed => (Outcome::Failed, "socket_closed".to_string(), Side::Provider),
        StreamEnd::Shutdown => (Outcome::Completed, "shutdown".to_string(), Side::Izwi),
        StreamEnd::Protocol(kind) => (Outcome::Failed, format!("protocol:{kind}"), Side::Izwi),
        StreamEnd::MediaTimeout => (Outcome::Failed, "media_timeout".to_string(), Side::Provider),
        StreamEnd::SlowConsumer => (Outcome::Failed, "slow_consumer".to_string(), Side::Provider),
        StreamEnd::AgentFailed => (Outcome::Failed, "agent_failed".to_string(), Side::Izwi),
        // Ends before a call began: no record is made for them.
        StreamEnd::Unauthorized | StreamEnd::StartTimeout | StreamEnd::Busy => {
            (Outcome::Failed, "refused".to_string(), Side::Izwi)
        }
    };
    Ending {
        errors: u32::from(outcome == Outcome::Failed),
        outcome,
        cause,
        side,
        dtmf: summary.digits as u32,
    }
}

/// The record's start of the call a stream carries.
fn call_start(ctx: &CallContext, start: &StreamStart) -> CallStart {
    // The call our TwiML (and its token) named, else what Twilio says.
    let remote = [
        start.custom.get("callSid"),
        Some(&start.call_id),
        Some(&start.stream_id),
    ]
    .into_iter()
    .flatten()
    .find(|id| !id.is_empty())
    .map_or("", String::as_str);
    CallStart {
        id: records::new_call_id(),
        remote_id: Some(records::cap(remote, records::MAX_REMOTE_ID).to_string()),
        transport: Transport::Twilio,
        started_at_ms: now_ms(),
        called: start.custom.get("called").cloned(),
        caller: start.custom.get("caller").cloned(),
        agent: Some(ctx.agent_name()),
        codec: Some("PCMU".into()),
    }
}

/// The call's agent and resamplers, once the stream has started.
async fn begin(ctx: &CallContext, start: StreamStart, slot: StreamSlot) -> Option<Live> {
    // Twilio is the only stream provider so far; the next adds its transport.
    let mut tracker = CallTracker::start(&ctx.recorder, call_start(ctx, &start));
    tracker.answered(now_ms());
    let agent = CallAgent::start(
        ctx.echo,
        ctx.engine.clone(),
        ctx.agent.clone(),
        &ctx.turn,
        tracker.id(),
    )
    .await;
    let mut agent = match agent {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(call = %tracker.id(), error = %e, "cannot start the call's agent");
            return None;
        }
    };
    agent.confirm_playback();
    Some(Live {
        stream_id: start.stream_id,
        agent,
        tracker,
        _slot: slot,
        dtmf_log: crate::limits::LogGate::new(5, Duration::from_secs(10)),
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

/// Whether the stream's token is valid for its call and unused; the token is
/// marked used. `Err` names why not.
fn authorize(
    start: &StreamStart,
    limits: &StreamLimits,
    state: &AppState,
) -> Result<(), &'static str> {
    let Some((secret, max_age)) = &limits.token else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(token) = start.custom.get("token") else {
        return Err("unauthorized");
    };
    // The call the token was issued for travels beside it, as the `callSid`
    // parameter of our TwiML (Twilio's own `start.callSid` is the same call).
    let call = start.custom.get("callSid").map_or("", String::as_str);
    if !check_stream_token(secret, token, call, now, *max_age) {
        return Err("unauthorized");
    }
    let mut used = state
        .used_tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if used.len() >= MAX_USED_TOKENS / 2 {
        used.retain(|_, until| *until >= now);
    }
    // Hex of either case is the same token.
    let token = token.to_ascii_lowercase();
    if used.contains_key(&token) {
        return Err("token_reused");
    }
    if used.len() >= MAX_USED_TOKENS {
        return Err("token_table_full");
    }
    used.insert(token, now.saturating_add(*max_age).saturating_add(60));
    Ok(())
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
async fn close(
    out: &Outbox,
    incoming: &mut SplitStream<WebSocket>,
    code: u16,
    reason: &str,
    label: &'static str,
) -> StreamEnd {
    if let Some(held) = CLOSE_LOG.pass() {
        tracing::info!(code, reason, kind = label, held, "closing media stream");
    }
    if label != "shutdown" {
        metrics().stream_rejected(label);
    }
    // Close reasons are limited to 123 bytes.
    let mut reason = reason.to_string();
    while reason.len() > 120 {
        reason.pop();
    }
    let sent = out
        .tx
        .try_send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .is_ok();
    if sent {
        linger(incoming).await;
    }
    StreamEnd::Protocol(label)
}

/// Reads (and drops) what the peer still sends until its close frame, for at
/// most [`CLOSE_LINGER`]. Dropping the socket straight after our close frame
/// would close TCP with the peer's frames unread, which makes the kernel send
/// a reset, and the reset discards our close frame, reason and all, before
/// the peer reads it (a flooding peer never learned why it was cut off).
async fn linger(incoming: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = incoming.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
