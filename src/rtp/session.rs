//! The RTP session of one SIP call: a thin transport around the call core. A
//! single `select!` over the call's UDP socket, a 20 ms clock and control
//! messages from the SIP side. Caller packets are taken only from where the
//! signalling allows ([`SourceFilter`]), go through the jitter buffer and the
//! codec (concealing losses) and reach the core as audio at the codec's
//! rate; the core's audio goes back encoded, packetised by the negotiated
//! ptime and paced on the core's clock; keys go out as RFC 4733 events.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::dtmf::{self, DtmfReceiver};
use super::jitter::{JitterBuffer, Playout};
use super::packet::{self, Packetizer};
use super::source::SourceFilter;
use crate::audio::FRAME;
use crate::call::action::CallControl;
use crate::call::core::{CallCore, Tick};
use crate::call::ending::Ending;
use crate::codec::Codec;
use crate::codec::wire::WireCodec;
use crate::config::RtpLatch;
use crate::limits::LogGate;
use crate::metrics::metrics;

/// What the SDP offer/answer settled for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub codec: Codec,
    pub payload_type: u8,
    /// The telephone-event payload type at the codec's clock rate, if offered.
    pub telephone_event: Option<u8>,
    /// Packetisation, in ms, both ways.
    pub ptime: u32,
    /// Whether Izwi sends (not on hold).
    pub sends: bool,
    /// Where the SDP says to send.
    pub remote: SocketAddr,
}

pub enum Control {
    /// The caller acknowledged the answer: media may go out.
    Confirmed,
    /// A re-INVITE changed the session (hold, new address, new codec).
    Update(Params),
    /// The SIP side ended the call, and how.
    Ended(Ending),
    /// How the transfer the session asked for went (`true`: the caller's
    /// new call is up, and this one ends).
    Transferred(bool),
}

#[derive(Debug, Clone, Default)]
pub struct MediaStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub malformed: u64,
    /// Well-formed RTP from an address the signalling does not allow, dropped.
    pub foreign: u64,
    pub unknown_payload: u64,
    pub lost: u64,
    pub late: u64,
    pub digits: u64,
    /// Keys Izwi sent as telephone-events.
    pub digits_sent: u64,
    pub turns: usize,
    /// Most caller audio queued between the socket and the agent (jitter
    /// buffer, decoding and the core's backlog).
    pub max_in_to_agent: Duration,
}

pub struct Settings {
    pub jitter_packets: usize,
    pub rtp_timeout: Duration,
    pub max_duration: Duration,
    /// Which sources the call's RTP is taken from.
    pub latch: RtpLatch,
    /// The SIP peer's address (the caller or its proxy).
    pub peer_ip: IpAddr,
    /// Whether the answer was already acknowledged; until it is, nothing is
    /// sent (so an INVITE naming a third party's address never makes Izwi
    /// send that party anything).
    pub confirmed: bool,
    /// Asks the SIP side to transfer the call to a target (`false`: it cannot).
    pub transfer: Box<dyn Fn(String) -> bool + Send>,
}

/// How long Izwi holds each key it sends, and the pause after it (RFC 4733
/// senders commonly use 100–200 ms tones with ≥ 40 ms gaps).
const DIGIT_MS: u32 = 160;
const DIGIT_GAP_TICKS: u32 = 4;

/// Keys to send as RFC 4733 telephone-events, one packet per 20 ms tick; the
/// audio those ticks would have carried is dropped and its time skipped.
#[derive(Default)]
struct DigitSender {
    keys: VecDeque<char>,
    events: VecDeque<(dtmf::Event, bool)>,
    /// RTP timestamp of the key being sent: every packet of one key carries it.
    start: u32,
    gap: u32,
}

impl DigitSender {
    fn queue(&mut self, keys: &str) {
        // Bounded: a flood of keys must not grow without end.
        for k in keys.chars().filter(|&k| dtmf::code(k).is_some()) {
            if self.keys.len() < 32 {
                self.keys.push_back(k);
            }
        }
    }

    /// The event packet due this tick, if a key is being sent.
    fn next(&mut self, timestamp: u32, rate: u32) -> Option<(dtmf::Event, bool, u32)> {
        if self.events.is_empty() {
            if self.gap > 0 {
                self.gap -= 1;
                return None;
            }
            let key = self.keys.pop_front()?;
            self.events = dtmf::tone_packets(key, DIGIT_MS, rate, FRAME.as_millis() as u32).into();
            self.start = timestamp;
            self.gap = DIGIT_GAP_TICKS;
        }
        self.events
            .pop_front()
            .map(|(e, marker)| (e, marker, self.start))
    }
}

/// Runs the session until the SIP side ends the call or the media does;
/// returns how it ended. The core is ended (and the call recorded) by the
/// caller of this function.
pub async fn run(
    socket: UdpSocket,
    mut params: Params,
    core: &mut CallCore,
    mut control: mpsc::Receiver<Control>,
    settings: Settings,
) -> (Ending, MediaStats) {
    let mut stats = MediaStats::default();
    // One packet deep on a clean line; deeper, up to the setting, when late packets show jitter.
    let mut jitter = JitterBuffer::adaptive(1, settings.jitter_packets, 64);
    let mut dtmf_in = DtmfReceiver::default();
    let mut digits_out = DigitSender::default();
    let mut packetizer = Packetizer::new(rand::random(), params.payload_type);
    packetizer.start_talkspurt();
    let mut source = SourceFilter::new(settings.latch, params.remote, settings.peer_ip);
    let mut confirmed = settings.confirmed;
    let mut reported = Dropped::default();
    let mut dtmf_log = LogGate::new(5, Duration::from_secs(10));
    let mut codec = WireCodec::new(params.codec).ok();
    // Caller audio at the wire rate, decoded but not yet handed to the core:
    // packets may be 10–60 ms long while the clock takes 20 ms.
    let mut decoded: VecDeque<f32> = VecDeque::with_capacity(codec_frame(&codec) * 12);
    let mut rx_packet_samples = codec_frame(&codec);
    let mut agent_wire: VecDeque<f32> = VecDeque::with_capacity(codec_frame(&codec) * 6);
    let started = Instant::now();
    let mut last_rx = started;
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut buf = vec![0u8; 4096];
    let mut out = Tick::default();
    let mut scratch_f32 = Vec::with_capacity(codec_frame(&codec) * 2);
    let mut scratch_u8 = Vec::with_capacity(1500);
    let mut samples = Vec::with_capacity(codec_frame(&codec) * 3);
    let mut ticks: u32 = 0;
    let ending = loop {
        tokio::select! {
            recv = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = recv else { continue };
                // A datagram that fills the buffer was cut short: no RTP of ours is that big.
                let parsed = if n < buf.len() { packet::parse(&buf[..n]).ok() } else { None };
                let Some((header, payload)) = parsed else {
                    stats.malformed += 1;
                    continue;
                };
                let ours = header.payload_type == params.payload_type
                    || Some(header.payload_type) == params.telephone_event;
                let now = Instant::now();
                if !source.accepts(from, ours, now.into_std()) {
                    stats.foreign += 1;
                    continue;
                }
                stats.packets_in += 1;
                last_rx = now;
                if header.payload_type == params.payload_type {
                    if payload.len() > codec.as_ref().map_or(0, |c| c.max_payload()) {
                        stats.malformed += 1;
                        continue;
                    }
                    jitter.push(&header, payload);
                } else if Some(header.payload_type) == params.telephone_event {
                    // Events share the audio's sequence numbers: the jitter buffer
                    // must know them or count their slots as lost audio.
                    jitter.skip(&header);
                    if let Some(d) = dtmf_in.push(header.timestamp, payload) {
                        if let Some(held) = dtmf_log.pass(now.into_std()) {
                            tracing::info!(call = %core.id(), held, "DTMF digit received");
                        }
                        stats.digits += 1;
                        core.digit(d);
                    }
                } else {
                    stats.unknown_payload += 1;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now - last_rx > settings.rtp_timeout {
                    break Ending::RtpTimeout;
                }
                if now - started > settings.max_duration {
                    break Ending::MaxDuration;
                }
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(50) {
                    reported.report(&stats, &jitter);
                }
                // Nothing goes out before the ACK, nor to an address that has
                // not sent the session anything when it is not the SIP peer's.
                if !confirmed || !source.may_send() {
                    continue;
                }
                let Some(c) = codec.as_mut() else { break Ending::IzwiBye };
                let wire_frame = c.frame();
                while decoded.len() < wire_frame {
                    scratch_f32.clear();
                    match jitter.pop() {
                        Playout::Packet { payload, .. } => {
                            c.decode(&payload, &mut scratch_f32);
                            rx_packet_samples = scratch_f32.len().clamp(1, wire_frame * 6);
                        }
                        Playout::Lost => c.conceal(rx_packet_samples, &mut scratch_f32),
                        Playout::Empty => scratch_f32.resize(wire_frame - decoded.len(), 0.0),
                    }
                    decoded.extend(scratch_f32.iter().copied());
                }
                scratch_f32.clear();
                scratch_f32.extend(decoded.drain(..wire_frame));
                core.caller_audio(&scratch_f32);
                let queued = Duration::from_secs_f64(
                    (jitter.buffered() * rx_packet_samples + decoded.len()) as f64
                        / f64::from(c.rate()),
                ) + core.caller_backlog();
                stats.max_in_to_agent = stats.max_in_to_agent.max(queued + FRAME);
                core.tick(&mut out).await;
                match out.control.take() {
                    Some(CallControl::HangUp(e)) => break e,
                    Some(CallControl::Transfer { target }) if !(settings.transfer)(target.clone()) => {
                        core.transfer_result(false);
                    }
                    Some(CallControl::Transfer { .. }) | None => {}
                }
                digits_out.queue(&out.keys);
                agent_wire.extend(out.audio.iter().copied());
                if !params.sends {
                    agent_wire.clear();
                    continue;
                }
                let event = params
                    .telephone_event
                    .and_then(|pt| digits_out.next(packetizer.timestamp(), c.rate()).map(|e| (pt, e)));
                if let Some((pt, (event, marker, start))) = event {
                    let pkt = packetizer.event(pt, &dtmf::encode(&event), marker, start);
                    packetizer.skip(wire_frame as u32);
                    agent_wire.drain(..wire_frame.min(agent_wire.len()));
                    if socket.send_to(&pkt, source.destination()).await.is_ok() {
                        stats.packets_out += 1;
                        stats.digits_sent += u64::from(marker);
                    }
                    continue;
                }
                let packet_samples = c.rate() as usize * params.ptime as usize / 1000;
                while agent_wire.len() >= packet_samples.max(1) {
                    samples.clear();
                    samples.extend(agent_wire.drain(..packet_samples));
                    scratch_u8.clear();
                    c.encode(&samples, &mut scratch_u8);
                    let pkt = packetizer.packet(&scratch_u8, packet_samples as u32);
                    if socket.send_to(&pkt, source.destination()).await.is_ok() {
                        stats.packets_out += 1;
                    }
                }
            }
            msg = control.recv() => {
                match msg {
                    Some(Control::Confirmed) => {
                        if !confirmed {
                            confirmed = true;
                            last_rx = last_rx.max(Instant::now());
                        }
                    }
                    Some(Control::Update(n)) => {
                        if n.payload_type != params.payload_type {
                            packetizer = Packetizer::new(rand::random(), n.payload_type);
                            packetizer.start_talkspurt();
                        }
                        if n.codec != params.codec {
                            codec = WireCodec::new(n.codec).ok();
                            if let Some(c) = &codec {
                                core.rewire(c.rate());
                            }
                            core.codec(n.codec.encoding_name());
                            agent_wire.clear();
                            decoded.clear();
                            rx_packet_samples = codec_frame(&codec);
                        }
                        // The session may have moved: learn its source again.
                        source.moved(n.remote);
                        params = n;
                    }
                    Some(Control::Ended(e)) => break e,
                    Some(Control::Transferred(done)) => {
                        core.transfer_result(done);
                        if done {
                            break Ending::Transferred;
                        }
                    }
                    None => break Ending::IzwiBye,
                }
            }
        }
    };
    let js = jitter.stats();
    stats.lost = js.lost;
    stats.late = js.late;
    reported.report(&stats, &jitter);
    (ending, stats)
}

fn codec_frame(codec: &Option<WireCodec>) -> usize {
    codec.as_ref().map_or(160, WireCodec::frame)
}

/// The drop counters of a call as last added to the process's metrics: they
/// go in once a second, so an attack shows while it lasts.
#[derive(Default)]
struct Dropped {
    malformed: u64,
    foreign: u64,
    unknown_payload: u64,
    late: u64,
    lost: u64,
}

impl Dropped {
    fn report(&mut self, stats: &MediaStats, jitter: &JitterBuffer) {
        let js = jitter.stats();
        let now = Dropped {
            malformed: stats.malformed,
            foreign: stats.foreign,
            unknown_payload: stats.unknown_payload,
            late: js.late,
            lost: js.lost,
        };
        let m = metrics();
        m.rtp_dropped("malformed", now.malformed - self.malformed);
        m.rtp_dropped("foreign", now.foreign - self.foreign);
        m.rtp_dropped(
            "unknown_payload",
            now.unknown_payload - self.unknown_payload,
        );
        m.rtp_dropped("late", now.late.saturating_sub(self.late));
        m.rtp_dropped("lost", now.lost.saturating_sub(self.lost));
        *self = now;
    }
}

/// RTP ports handed out one per call, at random from the free ones (so a
/// stranger cannot guess the next call's port), and given back when the
/// call's guard drops.
#[derive(Clone)]
pub struct PortPool {
    free: Arc<std::sync::Mutex<Vec<u16>>>,
}

pub struct PortGuard {
    pub port: u16,
    pool: PortPool,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        if let Ok(mut f) = self.pool.free.lock() {
            f.push(self.port);
        }
    }
}

impl PortPool {
    /// Even ports of the range (RTP convention; the odd one above is RTCP's).
    pub fn new(min: u16, max: u16) -> PortPool {
        let free = (min..=max).filter(|p| p % 2 == 0).collect();
        PortPool {
            free: Arc::new(std::sync::Mutex::new(free)),
        }
    }

    pub fn take(&self) -> Option<PortGuard> {
        let mut free = self.free.lock().ok()?;
        if free.is_empty() {
            return None;
        }
        let i = rand::random_range(0..free.len());
        let port = free.swap_remove(i);
        Some(PortGuard {
            port,
            pool: self.clone(),
        })
    }

    pub fn available(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

/// Binds a free port of the pool on `ip`, skipping ports something else holds.
pub async fn bind_rtp(pool: &PortPool, ip: IpAddr) -> Option<(UdpSocket, PortGuard)> {
    for _ in 0..pool.available().max(1) {
        let guard = pool.take()?;
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, guard.port)).await {
            return Some((s, guard));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_come_back_and_are_not_handed_out_in_order() {
        let pool = PortPool::new(20_000, 20_005);
        assert_eq!(pool.available(), 3);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        let mut got = vec![a.port, b.port, c.port];
        got.sort();
        assert_eq!(got, vec![20_000, 20_002, 20_004]);
        assert!(pool.take().is_none());
        let port = b.port;
        drop(b);
        assert_eq!(pool.take().unwrap().port, port);
        drop(a);
        drop(c);
        assert_eq!(pool.available(), 3);
        // Over many draws from a wide range, the next port is not the one after the last.
        let pool = PortPool::new(20_000, 29_999);
        let mut sequential = 0;
        let mut last = pool.take().unwrap().port;
        for _ in 0..200 {
            let g = pool.take().unwrap();
            if g.port == last + 2 {
                sequential += 1;
            }
            last = g.port;
        }
        assert!(sequential < 5, "{sequential} of 200 ports came in order");
    }

    #[test]
    fn keys_go_out_one_at_a_time_with_gaps_and_a_flood_is_bounded() {
        let mut d = DigitSender::default();
        d.queue("1x#");
        let mut keys = Vec::new();
        let mut ts = 0u32;
        for _ in 0..100 {
            if let Some((e, true, start)) = d.next(ts, 8000) {
                keys.push((dtmf::digit(e.code).unwrap(), start));
            }
            ts += 160;
        }
        assert_eq!(keys.iter().map(|k| k.0).collect::<String>(), "1#");
        assert!(keys[1].1 > keys[0].1);
        let mut d = DigitSender::default();
        d.queue(&"5".repeat(1000));
        assert_eq!(d.keys.len(), 32);
    }
}
