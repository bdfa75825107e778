//! The transport of one call carried by a cloud provider's media stream (a
//! WebSocket): one `select!` over the socket, a 20 ms clock and shutdown, thin
//! around the call core. The provider's frames are parsed by its
//! [`MediaStreamProvider`]; caller audio (µ-law, 8 kHz) is decoded and handed
//! to the same [`CallCore`] that answers SIP calls, on the core's one clock;
//! what the core gives back goes out paced, one 20 ms frame per tick, with a
//! mark after each phrase and a clear on barge-in.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::{AppState, StreamSlot};
use crate::audio::FRAME;
use crate::call::Agent;
use crate::call::action::CallControl;
use crate::call::core::{CallCore, CoreSetup, Tick};
use crate::call::ending::Ending;
use crate::call::session::{CallContext, CallTracker};
use crate::codec::g711::Law;
use crate::dialplan::CallInfo;
use crate::limits::SharedLogGate;
use crate::metrics::metrics;
use crate::provider::twilio::check_stream_token;
use crate::provider::{MediaStreamProvider, ProtocolError, StreamEvent, StreamStart};
use crate::records::{self, CallStart, Transport, now_ms};

/// The provider's audio rate: G.711 µ-law, 8 kHz.
const WIRE_RATE: u32 = 8_000;
const WIRE_FRAME: usize = WIRE_RATE as usize / 50;
/// How long a stream Izwi closes waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long what is still queued for the provider may take to go out once the
/// stream has ended.
pub(super) const CLOSE_FLUSH: Duration = Duration::from_millis(500);
/// Frames waiting to be written to the provider: three seconds of audio (a
/// stall of the call's loop followed by a burst fits). A client that lets it
/// fill has stopped reading, and its stream is closed.
pub(super) const OUT_QUEUE: usize = 150;
/// Stream tokens remembered as used, at most (each is good for minutes only).
const MAX_USED_TOKENS: usize = 100_000;
/// How long a transfer waits for Twilio's `<Connect action>` callback, and
/// how many may wait at once.
const TRANSFER_KEPT_SECS: u64 = 300;
const MAX_TRANSFERS_KEPT: usize = 10_000;
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

/// What one stream did: logged at its end (and, later, recorded).
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub stream_id: String,
    pub call_id: String,
    pub end: Option<Ending>,
    pub frames_in: u64,
    pub media_in: u64,
    pub media_out: u64,
    pub marks_sent: u64,
    pub marks_heard: u64,
    pub clears: u64,
    pub digits: u64,
    pub turns: usize,
}

/// A stream after its `start`.
struct Live {
    stream_id: String,
    /// The call as its webhook named it (our TwiML's `callSid`, which the
    /// stream token vouches for; else the stream's own): what the
    /// `<Connect action>` callback will name.
    call_sid: String,
    core: CallCore,
    /// Holds one of the `max_streams` places while the call lasts.
    _slot: StreamSlot,
    dtmf_log: crate::limits::LogGate,
}

/// Frames to the provider go through a bounded queue to a writer task, so
/// that a client that stops reading never blocks the call's loop: the queue
/// fills (or a write times out) and the stream is closed.
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Message>,
}

impl Outbox {
    /// `false` when the client is not keeping up (the queue is full or the writer gone).
    pub(super) fn send(&self, text: String) -> bool {
        self.tx.try_send(Message::Text(text.into())).is_ok()
    }
}

/// How the writer task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterEnd {
    /// Its queue closed, or it wrote a close frame.
    Done,
    Failed,
    TimedOut,
}

pub(super) async fn write_out(
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
    let outbox = Outbox { tx: out_tx };
    let mut summary = StreamSummary::default();
    let mut live: Option<Live> = None;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut ping = tokio::time::interval_at(Instant::now() + limits.ping, limits.ping);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let opened = Instant::now();
    let mut last_media = opened;
    let mut window = (Instant::now(), 0u32, 0usize);
    // Buffers of the 20 ms path, reused.
    let mut wire = Vec::with_capacity(WIRE_FRAME * 4);
    let mut bytes = Vec::with_capacity(WIRE_FRAME);
    let mut out = Tick::default();
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
                        break close(&outbox, &mut incoming, 1003, "binary frames are not part of the protocol", "binary").await;
                    }
                    Some(Ok(Message::Close(_))) | None => break Ending::SocketClosed,
                    Some(Ok(other)) => {
                        // Pings and pongs count against the stream's rates too.
                        let len = match &other {
                            Message::Ping(p) | Message::Pong(p) => p.len(),
                            _ => 0,
                        };
                        if over(&mut window, len, &limits) {
                            break close(&outbox, &mut incoming, 1008, "too many frames", "flood").await;
                        }
                        continue;
                    }
                    Some(Err(e)) => match read_error(e) {
                        ReadError::Utf8 => {
                            break close(&outbox, &mut incoming, 1007, "text frame is not UTF-8", "utf8").await;
                        }
                        ReadError::TooLarge => {
                            break close(&outbox, &mut incoming, 1009, "message too large", "too_large").await;
                        }
                        ReadError::Broken => {
                            // A broken connection: nothing more can be read.
                            if let Some(held) = CLOSE_LOG.pass() {
                                tracing::info!(stream = %summary.stream_id, held, "media stream failed");
                            }
                            break Ending::SocketClosed;
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
                    break close(&outbox, &mut incoming, 1008, reason, kind).await;
                }
                if text.len() > limits.max_frame {
                    break close(&outbox, &mut incoming, 1009, "frame too large", "too_large").await;
                }
                let event = match provider.parse(text.as_str()) {
                    Ok(ev) => ev,
                    Err(e) => {
                        let reason = e.to_string();
                        break close(&outbox, &mut incoming, close_code(&e), &reason, e.kind()).await;
                    }
                };
                match (event, live.as_mut()) {
                    (StreamEvent::Connected, None) => {}
                    (StreamEvent::Start(start), None) => {
                        if let Err(e) = provider.accepts(&start) {
                            let reason = e.to_string();
                            break close(&outbox, &mut incoming, close_code(&e), &reason, e.kind()).await;
                        }
                        if let Err(why) = authorize(&start, &limits, &state) {
                            if let Some(held) = REFUSED_LOG.pass() {
                                tracing::warn!(stream = %records::cap(&start.stream_id, 64), reason = why, held, "media stream without a valid token refused");
                            }
                            break close(&outbox, &mut incoming, 1008, "stream not authorized", why).await;
                        }
                        // The slot is taken only now, by a stream proven to follow our TwiML.
                        let Some(slot) = StreamSlot::take(&state, limits.max_streams) else {
                            if let Some(held) = REFUSED_LOG.pass() {
                                tracing::warn!(held, "at capacity: media stream refused");
                            }
                            // A real call (its token is good) that found no room: recorded.
                            record_busy(&ctx, &start);
                            close(&outbox, &mut incoming, 1013, "at capacity", "busy").await;
                            break Ending::Busy;
                        };
                        summary.stream_id = records::cap(&start.stream_id, records::MAX_REMOTE_ID).to_string();
                        summary.call_id = records::cap(&start.call_id, records::MAX_REMOTE_ID).to_string();
                        let (call, agent) = call_start(&ctx, &start);
                        let routed = (call.agent.clone().unwrap_or_default(), call.rule.clone().unwrap_or_else(|| "default".into()));
                        let setup = CoreSetup {
                            start: call,
                            agent,
                            wire_rate: WIRE_RATE,
                            confirms_playback: true,
                            continuous: false,
                        };
                        match CallCore::start(&ctx, setup).await {
                            Ok(core) => {
                                tracing::info!(call = %core.id(), stream = %summary.stream_id, call_sid = %summary.call_id, provider = provider.name(), agent = %routed.0, rule = %routed.1, "media stream started");
                                live = Some(Live {
                                    call_sid: records::cap(start.custom.get("callSid").unwrap_or(&start.call_id), records::MAX_REMOTE_ID).to_string(),
                                    stream_id: start.stream_id,
                                    core,
                                    _slot: slot,
                                    dtmf_log: crate::limits::LogGate::new(5, Duration::from_secs(10)),
                                });
                                last_media = Instant::now();
                                tick.reset();
                            }
                            Err(_) => {
                                close(&outbox, &mut incoming, 1011, "cannot answer the call", "agent").await;
                                break Ending::AgentFailed;
                            }
                        }
                    }
                    (StreamEvent::Media { payload, .. }, Some(l)) => {
                        summary.media_in += 1;
                        last_media = now;
                        wire.clear();
                        Law::Mu.decode(&payload, &mut wire);
                        l.core.caller_audio(&wire);
                    }
                    (StreamEvent::Dtmf { digit }, Some(l)) => {
                        summary.digits += 1;
                        if let Some(held) = l.dtmf_log.pass(std::time::Instant::now()) {
                            tracing::info!(call = %l.core.id(), held, "DTMF digit received");
                        }
                        // Media streams carry no DTMF back: keys the core gives are dropped.
                        l.core.digit(digit);
                    }
                    (StreamEvent::Mark { name }, Some(l)) => {
                        if let Some(seq) = name.strip_prefix('p').and_then(|n| n.parse().ok()) {
                            summary.marks_heard += 1;
                            l.core.heard_through(seq);
                        }
                    }
                    (StreamEvent::Stop, _) => break Ending::StreamStop,
                    (StreamEvent::Start(_), Some(_)) => {
                        break close(&outbox, &mut incoming, 1008, "a second start", "sequence").await;
                    }
                    (StreamEvent::Connected, Some(_)) => {
                        break close(&outbox, &mut incoming, 1008, "connected after start", "sequence").await;
                    }
                    (_, None) => {
                        break close(&outbox, &mut incoming, 1008, "media, dtmf or mark before start", "sequence").await;
                    }
                }
            }
            _ = tick.tick(), if live.is_some() => {
                let Some(l) = live.as_mut() else { continue };
                l.core.tick(&mut out).await;
                let mut kept_up = true;
                for seq in &out.marks {
                    summary.marks_sent += 1;
                    kept_up &= outbox.send(provider.mark(&l.stream_id, &format!("p{seq}")));
                }
                if out.clear {
                    summary.clears += 1;
                    kept_up &= outbox.send(provider.clear(&l.stream_id));
                }
                if !out.audio.is_empty() {
                    bytes.clear();
                    Law::Mu.encode(&out.audio, &mut bytes);
                    summary.media_out += 1;
                    kept_up &= outbox.send(provider.media(&l.stream_id, &bytes));
                }
                if !kept_up {
                    break slow_consumer("outbound queue full");
                }
                match out.control.take() {
                    Some(CallControl::HangUp(e)) => {
                        close(&outbox, &mut incoming, 1000, "the agent ended the call", "agent").await;
                        break e;
                    }
                    Some(CallControl::Transfer { target }) => {
                        // The stream ends; Twilio's `<Connect action>` callback dials the target.
                        let lapses = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                            + TRANSFER_KEPT_SECS;
                        let kept = {
                            let mut t = state.transfers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let now = lapses - TRANSFER_KEPT_SECS;
                            t.retain(|_, (_, until)| *until > now);
                            (t.len() < MAX_TRANSFERS_KEPT && !l.call_sid.is_empty())
                                .then(|| t.insert(l.call_sid.clone(), (target, lapses)))
                                .is_some()
                        };
                        l.core.transfer_result(kept);
                        if kept {
                            close(&outbox, &mut incoming, 1000, "transferred", "agent").await;
                            break Ending::Transferred;
                        }
                    }
                    None => {}
                }
            }
            _ = ping.tick() => {
                if outbox.tx.try_send(Message::Ping(Default::default())).is_err() {
                    break slow_consumer("outbound queue full");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if live.is_some() {
                    close(&outbox, &mut incoming, 1008, "no media", "media_timeout").await;
                    break Ending::MediaTimeout;
                }
                break close(&outbox, &mut incoming, 1008, "no start in time", "start_timeout").await;
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
    // What is queued (a close frame, say) goes out, but a client that has
    // stopped reading is not waited for.
    drop(outbox);
    if !writer.is_finished() {
        let _ = tokio::time::timeout(CLOSE_FLUSH, &mut writer).await;
    }
    writer.abort();
    if let Some(l) = live {
        summary.turns = l.core.end(end).len();
    }
    // A socket that never started a call is one line among many in a flood.
    let log = summary.stream_id.is_empty().then(|| UNSTARTED_LOG.pass());
    if let Some(held) = log.unwrap_or(Some(0)) {
        tracing::info!(
            stream = %summary.stream_id,
            call_sid = %summary.call_id,
            end = %end,
            frames_in = summary.frames_in,
            media_in = summary.media_in,
            media_out = summary.media_out,
            marks_sent = summary.marks_sent,
            marks_heard = summary.marks_heard,
            clears = summary.clears,
            dtmf = summary.digits,
            turns = summary.turns,
            held,
            "media stream ended"
        );
    }
    summary.end = Some(end);
    summary
}

/// Counts a frame of `len` bytes in the one-second window; whether the
/// stream is now over its frame or byte rate.
pub(super) fn over(window: &mut (Instant, u32, usize), len: usize, limits: &StreamLimits) -> bool {
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
    let tracker = CallTracker::start(&ctx.recorder, call_start(ctx, start).0);
    tracker.finish(Ending::Busy, 0, &[], Vec::new());
}

/// The client stopped reading what Izwi sends.
pub(super) fn slow_consumer(why: &'static str) -> Ending {
    metrics().stream_rejected("slow_consumer");
    if let Some(held) = REFUSED_LOG.pass() {
        tracing::info!(
            reason = why,
            held,
            "media stream closed: the client is not reading"
        );
    }
    Ending::SlowConsumer
}

/// Why a WebSocket read failed.
pub(super) enum ReadError {
    /// A text frame that is not UTF-8.
    Utf8,
    /// A message over the size the socket takes.
    TooLarge,
    Broken,
}

pub(super) fn read_error(e: axum::Error) -> ReadError {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Utf8(_)) => ReadError::Utf8,
        Some(tungstenite::Error::Capacity(_)) => ReadError::TooLarge,
        _ => ReadError::Broken,
    }
}

/// The record's start of the call a stream carries, and the agent the
/// dialplan routes it to (by our TwiML's `called` and `caller` parameters and
/// every other parameter of the stream).
fn call_start(ctx: &CallContext, start: &StreamStart) -> (CallStart, Option<Arc<Agent>>) {
    let params = start
        .custom
        .iter()
        .filter(|(k, _)| *k != "token")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let routed = ctx.agents.route(&CallInfo {
        to: start.custom.get("called").cloned(),
        from: start.custom.get("caller").cloned(),
        sip_user: None,
        headers: Vec::new(),
        params,
    });
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
    let call = CallStart {
        id: records::new_call_id(),
        remote_id: Some(records::cap(remote, records::MAX_REMOTE_ID).to_string()),
        transport: Transport::Twilio,
        started_at_ms: now_ms(),
        called: start.custom.get("called").cloned(),
        caller: start.custom.get("caller").cloned(),
        agent: Some(routed.name),
        rule: routed.rule,
        codec: Some("PCMU".into()),
    };
    (call, routed.agent)
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
pub(super) async fn close(
    out: &Outbox,
    incoming: &mut SplitStream<WebSocket>,
    code: u16,
    reason: &str,
    label: &'static str,
) -> Ending {
    if let Some(held) = CLOSE_LOG.pass() {
        tracing::info!(code, reason, kind = label, held, "closing media stream");
    }
    // Ends Izwi chose (shutting down, the agent's hang-up) are no rejection.
    if label != "shutdown" && label != "agent" {
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
    Ending::Protocol(label)
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
