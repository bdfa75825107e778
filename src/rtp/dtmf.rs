//! RFC 4733 telephone-events: DTMF key presses carried in RTP.
//!
//! A key press is one event: every packet of it carries the RTP timestamp of its
//! start, with a growing duration; the last packet has the end bit and is sent
//! three times in case one is lost.

use thiserror::Error;

/// Length of a telephone-event payload.
const EVENT_LEN: usize = 4;
/// How many times the end packet is sent (RFC 4733 §2.5.1.4).
const END_REPEATS: usize = 3;
/// Volume sent with our events, in -dBm0 (a typical phone level).
const VOLUME: u8 = 10;
/// How many recent events the receiver remembers, so retransmissions of one
/// that arrive after the next has begun are still recognised.
const RECENT: usize = 4;

/// One telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event code: 0–15 are the DTMF keys (see [`digit`]).
    pub code: u8,
    /// Set on the final packet(s) of the event.
    pub end: bool,
    /// Power level in -dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Why a telephone-event payload was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DtmfError {
    /// Shorter than the 4-byte event.
    #[error("telephone-event payload too short: {0} bytes")]
    TooShort(usize),
}

/// Parses a telephone-event payload; bytes after the first event are ignored.
pub fn parse(payload: &[u8]) -> Result<Event, DtmfError> {
    let &[code, flags, d0, d1, ..] = payload else {
        return Err(DtmfError::TooShort(payload.len()));
    };
    Ok(Event {
        code,
        end: flags & 0x80 != 0,
        volume: flags & 0x3F,
        duration: u16::from_be_bytes([d0, d1]),
    })
}

/// Encodes an event as its 4-byte payload. The reserved bit is zero and the
/// volume is truncated to 6 bits.
pub fn encode(e: &Event) -> [u8; EVENT_LEN] {
    let [d0, d1] = e.duration.to_be_bytes();
    let end = if e.end { 0x80 } else { 0 };
    [e.code, end | (e.volume & 0x3F), d0, d1]
}

/// The key for a DTMF event code, or `None` for other events.
pub fn digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// The event code for a DTMF key (`0`–`9`, `*`, `#`, `A`–`D`, either case).
pub fn code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// Turns the telephone-event packets of one stream into key presses, each
/// reported exactly once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    /// RTP timestamps of the most recent events, newest at `recent_at - 1`.
    recent: [Option<u32>; RECENT],
    recent_at: usize,
    malformed: u64,
}

impl DtmfReceiver {
    /// A receiver that has seen no events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event packet's RTP timestamp and payload. Returns the
    /// key on the first packet seen of each event (reporting at the start keeps
    /// barge-in fast), and `None` for the rest of it, for non-DTMF events and for
    /// malformed payloads.
    pub fn push(&mut self, rtp_timestamp: u32, payload: &[u8]) -> Option<char> {
        let event = match parse(payload) {
            Ok(e) => e,
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(error = %e, "ignoring telephone-event");
                return None;
            }
        };
        // All packets of one event share its start timestamp.
        if self.recent.contains(&Some(rtp_timestamp)) {
            return None;
        }
        if let Some(slot) = self.recent.get_mut(self.recent_at) {
            *slot = Some(rtp_timestamp);
        }
        self.recent_at = (self.recent_at + 1) % RECENT;
        digit(event.code)
    }

    /// How many payloads were too short to parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// The events for sending one key press of `duration_ms`: one every
/// `packet_ms` with growing duration (all to be sent with the press's start
/// timestamp), the marker on the first, and the end event three times.
/// Durations are in units of `clock_rate` and capped at 65535. Returns nothing
/// for a character that is not a DTMF key.
pub fn tone_packets(
    digit: char,
    duration_ms: u32,
    clock_rate: u32,
    packet_ms: u32,
) -> Vec<(Event, bool)> {
    let Some(code) = code(digit) else {
        return Vec::new();
    };
    let units = |ms: u32| u64::from(ms) * u64::from(clock_rate) / 1000;
    let clamp = |d: u64| u16::try_from(d).unwrap_or(u16::MAX);
    let total = units(duration_ms);
    let step = units(packet_ms);
    let event = |duration: u64, end: bool| Event {
        code,
        end,
        volume: VOLUME,
        duration: clamp(duration),
    };

    let mut events = Vec::new();
    // A zero step would never reach the end; then only the end packets are sent.
    if step > 0 {
        let mut d = step;
        while d < total {
            events.push(event(d, false));
            d += step;
        }
    }
    events.extend(std::iter::repeat_n(event(total, true), END_REPEATS));
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, i == 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_encode_round_trip() {
        let e = Event {
            code: 11,
            end: true,
            volume: 10,
            duration: 1280,
        };
        let bytes = encode(&e);
        assert_eq!(bytes, [11, 0x8A, 0x05, 0x00]);
        assert_eq!(parse(&bytes), Ok(e));

        let e = Event {
            code: 3,
            end: false,
            volume: 63,
            duration: 65535,
        };
        assert_eq!(parse(&encode(&e)), Ok(e));
    }

    #[test]
    fn parse_ignores_reserved_bit_and_extra_bytes() {
        let e = parse(&[5, 0x40 | 7, 0, 160, 0xAA, 0xBB]).unwrap();
        assert_eq!(
            e,
            Event {
                code: 5,
                end: false,
                volume: 7,
                duration: 160
            }
        );
    }

    #[test]
    fn malformed_payload() {
        assert_eq!(parse(&[]), Err(DtmfError::TooShort(0)));
        assert_eq!(parse(&[1, 2, 3]), Err(DtmfError::TooShort(3)));
        let mut rx = DtmfReceiver::new();
        assert_eq!(rx.push(100, &[1, 2, 3]), None);
        assert_eq!(rx.push(100, &[]), None);
        assert_eq!(rx.malformed(), 2);
        // A malformed packet does not use up the event: a good one still reports.
        assert_eq!(rx.push(100, &[1, 0, 0, 160]), Some('1'));
    }

    #[test]
    fn every_digit() {
        let keys = "0123456789*#ABCD";
        for (i, key) in keys.chars().enumerate() {
            let c = u8::try_from(i).unwrap();
            assert_eq!(digit(c), Some(key));
            assert_eq!(code(key), Some(c));
            assert_eq!(code(key.to_ascii_lowercase()), Some(c));
        }
        assert_eq!(digit(16), None);
        assert_eq!(digit(255), None);
        assert_eq!(code('E'), None);
        assert_eq!(code(' '), None);
    }

    fn press(rx: &mut DtmfReceiver, key: char, timestamp: u32) -> Vec<char> {
        tone_packets(key, 100, 8000, 20)
            .iter()
            .filter_map(|(e, _)| rx.push(timestamp, &encode(e)))
            .collect()
    }

    #[test]
    fn tone_packets_shape() {
        let p = tone_packets('7', 100, 8000, 20);
        let durations: Vec<u16> = p.iter().map(|(e, _)| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = p.iter().map(|(e, _)| e.end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let markers: Vec<bool> = p.iter().map(|&(_, m)| m).collect();
        assert_eq!(markers, [true, false, false, false, false, false, false]);
        assert!(p.iter().all(|(e, _)| e.code == 7));

        // Shorter than a packet: only the end packets, the first marked.
        let p = tone_packets('#', 10, 8000, 20);
        assert_eq!(p.len(), 3);
        assert!(p[0].1 && p[0].0.end && p[0].0.duration == 80);

        // Long presses cap the duration rather than wrapping.
        let p = tone_packets('1', 10_000, 8000, 20);
        assert!(p.iter().all(|(e, _)| e.duration > 0));
        assert_eq!(p.last().map(|(e, _)| e.duration), Some(u16::MAX));

        assert!(tone_packets('x', 100, 8000, 20).is_empty());
        assert_eq!(tone_packets('5', 100, 8000, 0).len(), 3);
    }

    #[test]
    fn one_press_reported_once() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(press(&mut rx, '5', 16_000), ['5']);
    }

    #[test]
    fn same_digit_twice() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(press(&mut rx, '9', 16_000), ['9']);
        assert_eq!(press(&mut rx, '9', 24_000), ['9']);
        assert_eq!(press(&mut rx, '#', 32_000), ['#']);
    }

    #[test]
    fn late_end_retransmission_after_next_press() {
        let mut rx = DtmfReceiver::new();
        let end = encode(&Event {
            code: 2,
            end: true,
            volume: 10,
            duration: 800,
        });
        assert_eq!(rx.push(1000, &end), Some('2'));
        assert_eq!(rx.push(2000, &[3, 0, 0, 160]), Some('3'));
        // Reordered copy of the first press's end packet.
        assert_eq!(rx.push(1000, &end), None);
    }

    #[test]
    fn non_dtmf_event_reports_nothing() {
        let mut rx = DtmfReceiver::new();
        // Event 16 is hook flash.
        assert_eq!(rx.push(500, &[16, 0, 0, 160]), None);
        assert_eq!(rx.malformed(), 0);
    }
}
