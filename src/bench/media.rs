//! One benchmark call's media: the caller's script played as PCMU RTP paced
//! every 20 ms, and every packet Izwi sends timestamped on arrival.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::caller::{LOUD_RMS, PACKET, Utterance};
use crate::codec::g711::Law;
use crate::rtp::packet::{Packetizer, parse};

const PTIME: Duration = Duration::from_millis(20);
/// The agent counts as done answering after this much quiet.
const QUIET: Duration = Duration::from_millis(600);
/// An interruption starts this long after the agent's answer began.
pub const BARGE_IN_AFTER: Duration = Duration::from_millis(600);
/// How long after the previous line an interruption waits for the agent's
/// answer to begin before it is spoken anyway.
const BARGE_IN_WAIT: Duration = Duration::from_millis(2_500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Question,
    /// Spoken while the agent answers the line before.
    BargeIn,
}

/// How a call's lines are spaced.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first question is due this long after the call is answered (once the greeting is over).
    pub greeting: Duration,
    /// Listening time after each question before the next is due.
    pub gap: Duration,
    /// A question waits for the agent to finish answering at most this long
    /// past its due time; at most `gap`.
    pub wait: Duration,
}

/// A line and when it is spoken, relative to the answer of the call.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub utterance: Arc<Utterance>,
    pub kind: Kind,
    /// Not before this.
    pub due: Duration,
    /// At this at the latest, whatever the agent is doing.
    pub latest: Duration,
}

/// A call's fixed script: every line has a window, so the call's length is
/// known before it is placed (sipp's `-d`).
#[derive(Debug, Clone)]
pub struct Script {
    pub items: Vec<Scheduled>,
    pub length: Duration,
}

impl Script {
    /// Lines in order; a question is spoken once the agent has answered the
    /// line before and gone quiet (or when it is due plus `timing.wait`), an
    /// interruption [`BARGE_IN_AFTER`] into the answer to the line before.
    pub fn build(lines: Vec<(Arc<Utterance>, Kind)>, timing: &Timing) -> Script {
        let mut items: Vec<Scheduled> = Vec::with_capacity(lines.len());
        let mut next_due = timing.greeting;
        let mut length = timing.greeting;
        for (utterance, kind) in lines {
            let len = Duration::from_secs_f64(utterance.duration_ms() / 1000.0);
            let (due, latest) = match (kind, items.last()) {
                (Kind::BargeIn, Some(prev)) => {
                    let prev_len = Duration::from_secs_f64(prev.utterance.duration_ms() / 1000.0);
                    (prev.due + prev_len, prev.latest + prev_len + BARGE_IN_WAIT)
                }
                _ => (next_due, next_due + timing.wait),
            };
            // Spaced from the line's usual start; its worst-case start
            // (`latest`) still ends before the next is due, as wait <= gap.
            next_due = latest.saturating_sub(timing.wait) + len + timing.gap;
            length = latest + len + timing.gap;
            items.push(Scheduled {
                utterance,
                kind,
                due,
                latest,
            });
        }
        Script { items, length }
    }
}

/// When a line was sent, in ms after the call's answer: the send times of its
/// first and last packet (both hold speech).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sent {
    pub onset: f64,
    pub end: f64,
}

/// One audio packet from Izwi: arrival in ms after the call's answer, and level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rx {
    pub at: f64,
    pub rms: f32,
}

/// What happened on the wire.
#[derive(Debug, Clone, Default)]
pub struct MediaLog {
    /// Per script item, in order; `None` if the call ended first.
    pub sent: Vec<Option<Sent>>,
    pub received: Vec<Rx>,
    /// Any RTP packet from Izwi (audio or event).
    pub first_rx: Option<f64>,
    pub packets_sent: usize,
    /// The latest a packet left after its due time, and how many left more
    /// than 5 ms late: the bench's own timing error (its receive times suffer
    /// the same scheduling delays).
    pub max_send_late_ms: f64,
    pub late_sends: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the receiver has heard, for the sender's decisions.
#[derive(Default)]
struct Heard {
    /// End of the last line sent.
    prev_end: Duration,
    /// The agent's first loud packet since.
    answer_began: Option<Duration>,
    last_loud: Option<Duration>,
}

/// Plays `script` to `izwi` from `socket`, the call answered at `t0`, and
/// keeps sending silence after it until `ended()` says the call is over (or
/// `grace` past the script). Sends are paced on the absolute clock from `t0`
/// by sleeping (a socket timeout would round up to the kernel's tick); a
/// second thread blocks on receiving, so arrivals are stamped as they wake it.
pub fn play(
    socket: &UdpSocket,
    izwi: SocketAddr,
    script: &Script,
    t0: Instant,
    grace: Duration,
    ended: impl FnMut() -> bool,
) -> std::io::Result<MediaLog> {
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let heard = Mutex::new(Heard::default());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| receive(socket, t0, &heard, &stop));
        let sent = send(socket, izwi, script, t0, grace, ended, &heard);
        stop.store(true, Ordering::Relaxed);
        let (received, first_rx) = receiver
            .join()
            .map_err(|_| std::io::Error::other("the RTP receiver panicked"))??;
        let mut log = sent?;
        log.received = received;
        log.first_rx = first_rx;
        Ok(log)
    })
}

fn send(
    socket: &UdpSocket,
    izwi: SocketAddr,
    script: &Script,
    t0: Instant,
    grace: Duration,
    mut ended: impl FnMut() -> bool,
    heard: &Mutex<Heard>,
) -> std::io::Result<MediaLog> {
    let mut log = MediaLog {
        sent: vec![None; script.items.len()],
        ..MediaLog::default()
    };
    let mut packetizer = Packetizer::new(rand::random(), 0);
    let silence = [0.0f32; PACKET];
    let mut payload = Vec::with_capacity(PACKET);
    let mut next_item = 0;
    // The line being sent: item index and next packet.
    let mut playing: Option<(usize, usize)> = None;
    let mut last_check = Instant::now();
    for tick in 0u32.. {
        let due = t0 + PTIME * tick;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        let at = now - t0;
        if at > script.length {
            if at > script.length + grace {
                break;
            }
            if now - last_check > Duration::from_millis(100) {
                last_check = now;
                if ended() {
                    break;
                }
            }
        }
        if playing.is_none() && next_item < script.items.len() {
            let item = &script.items[next_item];
            let h = heard.lock().unwrap_or_else(|e| e.into_inner());
            let quiet = h.last_loud.is_none_or(|l| at.saturating_sub(l) >= QUIET);
            let go = at >= item.latest
                || (at >= item.due
                    && match item.kind {
                        Kind::Question => h.answer_began.is_some() && quiet,
                        Kind::BargeIn => h.answer_began.is_some_and(|b| at >= b + BARGE_IN_AFTER),
                    });
            if go {
                playing = Some((next_item, 0));
                next_item += 1;
            }
        }
        let frame: &[f32] = match playing {
            Some((i, p)) => &script.items[i].utterance.audio[p * PACKET..(p + 1) * PACKET],
            None => &silence,
        };
        payload.clear();
        Law::Mu.encode(frame, &mut payload);
        socket.send_to(&packetizer.packet(&payload, PACKET as u32), izwi)?;
        let sent_at = t0.elapsed();
        log.packets_sent += 1;
        log.max_send_late_ms = log.max_send_late_ms.max(ms(now - due));
        log.late_sends += usize::from(now - due > Duration::from_millis(5));
        if let Some((i, p)) = playing {
            let s = log.sent[i].get_or_insert(Sent {
                onset: ms(sent_at),
                end: ms(sent_at),
            });
            s.end = ms(sent_at);
            if p + 1 == script.items[i].utterance.packets() {
                playing = None;
                let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                h.prev_end = sent_at;
                h.answer_began = None;
            } else {
                playing = Some((i, p + 1));
            }
        }
    }
    Ok(log)
}

/// Izwi's audio packets, stamped and measured, until `stop`.
fn receive(
    socket: &UdpSocket,
    t0: Instant,
    heard: &Mutex<Heard>,
    stop: &AtomicBool,
) -> std::io::Result<(Vec<Rx>, Option<f64>)> {
    let mut received = Vec::new();
    let mut first_rx = None;
    let mut decoded = Vec::with_capacity(PACKET);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let at = t0.elapsed();
                let Ok((header, body)) = parse(&buf[..n]) else {
                    continue;
                };
                first_rx.get_or_insert(ms(at));
                if header.payload_type != 0 {
                    continue;
                }
                decoded.clear();
                Law::Mu.decode(body, &mut decoded);
                let rms = crate::audio::rms(&decoded);
                received.push(Rx { at: ms(at), rms });
                if rms >= LOUD_RMS {
                    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                    h.last_loud = Some(at);
                    if at > h.prev_end && h.answer_began.is_none() {
                        h.answer_began = Some(at);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An ICMP "port unreachable" after Izwi has closed the call's port.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    Ok((received, first_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utterance(ms: usize) -> Arc<Utterance> {
        Arc::new(Utterance {
            text: "x".into(),
            voice: super::super::caller::Voice::Piper,
            pause_ms: None,
            audio: vec![0.1; ms * 8],
        })
    }

    #[test]
    fn the_script_length_is_known_in_advance() {
        let timing = Timing {
            greeting: Duration::from_secs(3),
            gap: Duration::from_secs(4),
            wait: Duration::from_secs(4),
        };
        let s = Script::build(
            vec![
                (utterance(2000), Kind::Question),
                (utterance(1000), Kind::BargeIn),
                (utterance(2000), Kind::Question),
            ],
            &timing,
        );
        let secs = |d: Duration| d.as_secs_f64();
        assert_eq!(secs(s.items[0].due), 3.0);
        assert_eq!(secs(s.items[0].latest), 7.0);
        // The interruption: after the question, at the latest 2.5 s after its latest end.
        assert_eq!(secs(s.items[1].due), 5.0);
        assert_eq!(secs(s.items[1].latest), 11.5);
        assert_eq!(secs(s.items[2].due), 12.5);
        assert_eq!(secs(s.items[2].latest), 16.5);
        assert_eq!(secs(s.length), 22.5);
        // A line never starts before the one before it can have ended.
        for w in s.items.windows(2) {
            let len = Duration::from_secs_f64(w[0].utterance.duration_ms() / 1000.0);
            assert!(w[1].latest >= w[0].latest + len);
        }
    }
}
