//! A sans-IO jitter buffer: packets go in as they arrive, one comes out per
//! packet interval when the call's reactor ticks. No clocks or sockets inside.
//!
//! Sequence numbers are unwrapped to 64-bit "extended" numbers relative to the
//! highest one seen, so ordering across the 65535 → 0 wrap is plain integer
//! ordering.

use std::collections::BTreeMap;

use super::packet::RtpHeader;

/// A sequence jump larger than this (either way) is taken as a new stream
/// rather than loss or reordering. Real reordering is a few packets; a jump of
/// hundreds means the sender restarted its sequence.
const MAX_JUMP: i64 = 300;

/// What to play for one packet interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next packet in sequence.
    Packet {
        /// RTP payload type, so the caller can tell audio from telephone-events.
        payload_type: u8,
        /// The payload, without RTP headers or padding.
        payload: Vec<u8>,
        /// RTP marker bit.
        marker: bool,
    },
    /// The next packet is missing but later ones are buffered: conceal it.
    Lost,
    /// Nothing to play: playout has not started or the buffer ran dry.
    Empty,
}

/// Counters for call statistics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets returned by `pop`.
    pub played: u64,
    /// Packets never played because they were missing at their turn.
    pub lost: u64,
    /// Packets dropped because they arrived after their turn.
    pub late: u64,
    /// Packets dropped because the same sequence number was already buffered.
    pub duplicate: u64,
    /// Packets dropped because the buffer was full.
    pub overflow: u64,
    /// Times the SSRC changed and the buffer restarted.
    pub ssrc_changes: u64,
    /// Times a large sequence jump restarted the buffer.
    pub resyncs: u64,
    /// Times a late packet made the buffer one packet deeper.
    pub depth_increases: u64,
}

#[derive(Debug)]
struct Buffered {
    payload_type: u8,
    marker: bool,
    payload: Vec<u8>,
    /// Holds a sequence number without audio (see [`JitterBuffer::skip`]).
    placeholder: bool,
}

/// Reorders RTP packets of one stream and paces them out.
#[derive(Debug)]
pub struct JitterBuffer {
    depth: usize,
    /// The depth grows up to this when packets come late.
    max_depth: usize,
    /// Intervals popped empty since playout ran dry, while it may yet be
    /// jitter (a packet a few intervals late) rather than a pause in sending.
    dry_for: Option<usize>,
    max_packets: usize,
    ssrc: Option<u32>,
    /// Highest extended sequence number seen in this stream; the reference for unwrapping.
    highest: i64,
    /// Extended sequence number of the next packet to play, once playout has begun.
    next: Option<i64>,
    /// Whether `pop` is playing (as opposed to filling up to `depth`).
    playing: bool,
    packets: BTreeMap<i64, Buffered>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer that starts (and, after an underrun, restarts) playout once
    /// `depth` packets are held, and never holds more than `max_packets`.
    /// `depth` is at least 1 and `max_packets` at least `depth`.
    pub fn new(depth: usize, max_packets: usize) -> Self {
        Self::adaptive(depth, depth, max_packets)
    }

    /// A buffer that starts at `depth` and adds one packet of depth each
    /// time playout runs dry for a packet that then comes within `max_depth`
    /// intervals (it was late: jitter), up to `max_depth`. A longer silence
    /// is the sender pausing (silence suppression, the end of a stream), not
    /// jitter, and changes nothing. So a clean line keeps a short delay and a
    /// jittery one gets the buffer it needs.
    pub fn adaptive(depth: usize, max_depth: usize, max_packets: usize) -> Self {
        let depth = depth.max(1);
        let max_depth = max_depth.max(depth);
        Self {
            depth,
            max_depth,
            dry_for: None,
            max_packets: max_packets.max(max_depth),
            ssrc: None,
            highest: 0,
            next: None,
            playing: false,
            packets: BTreeMap::new(),
            stats: JitterStats::default(),
        }
    }

    /// Adds a received packet.
    pub fn push(&mut self, header: &RtpHeader, payload: &[u8]) {
        self.insert(header, payload, false);
    }

    /// Takes note of a packet of the stream that carries no audio (an RFC 4733
    /// telephone-event shares the audio's sequence numbers): its number is not
    /// concealed as lost, and it takes no playout interval, whether the sender
    /// paused its audio for it or not.
    pub fn skip(&mut self, header: &RtpHeader) {
        self.insert(header, &[], true);
    }

    fn insert(&mut self, header: &RtpHeader, payload: &[u8], placeholder: bool) {
        self.stats.received += 1;
        let seq = match self.extend(header) {
            Some(seq) => seq,
            None => self.restart(header),
        };
        if self.next.is_some_and(|next| seq < next) {
            self.stats.late += 1;
            return;
        }
        if self.packets.contains_key(&seq) {
            self.stats.duplicate += 1;
            return;
        }
        // The packet playout ran dry waiting for, a few intervals late (a key
        // event's number is no audio: a sender sends them at its own pace).
        if let Some(waited) = self.dry_for.take()
            && !placeholder
            && self.next == Some(seq)
            && waited <= self.max_depth
            && self.depth < self.max_depth
        {
            self.depth += 1;
            self.stats.depth_increases += 1;
        }
        self.highest = self.highest.max(seq);
        self.packets.insert(
            seq,
            Buffered {
                payload_type: header.payload_type,
                marker: header.marker,
                payload: payload.to_vec(),
                placeholder,
            },
        );
        if self.packets.len() > self.max_packets
            && let Some((oldest, _)) = self.packets.pop_first()
        {
            self.stats.overflow += 1;
            // Skip past the dropped packet so it does not come back as `Lost`.
            if let Some(next) = &mut self.next {
                *next = (*next).max(oldest + 1);
            }
        }
    }

    /// What to play for this packet interval; call once per interval.
    pub fn pop(&mut self) -> Playout {
        if !self.playing {
            if self.packets.len() < self.depth {
                if let Some(n) = self.dry_for.as_mut() {
                    *n += 1;
                    if *n > self.max_depth {
                        self.dry_for = None;
                    }
                }
                return Playout::Empty;
            }
            self.playing = true;
            // Start at the oldest buffered packet; packets missing before it
            // (across an underrun) would only add delay if concealed now.
            if let Some((&first, _)) = self.packets.first_key_value() {
                if let Some(next) = self.next {
                    self.stats.lost += u64::try_from(first - next).unwrap_or(0);
                }
                self.next = Some(first);
            }
        }
        let mut skipped = false;
        let (next, entry) = loop {
            let Some(next) = self.next else {
                return Playout::Empty;
            };
            let Some(entry) = self.packets.first_entry() else {
                // Underrun: wait for `depth` packets again before resuming.
                // Run dry after key events, it is their pace, not jitter.
                self.playing = false;
                self.dry_for = (!skipped).then_some(1);
                return Playout::Empty;
            };
            if *entry.key() == next && entry.get().placeholder {
                entry.remove();
                self.next = Some(next + 1);
                skipped = true;
                continue;
            }
            break (next, entry);
        };
        self.next = Some(next + 1);
        if *entry.key() == next {
            self.stats.played += 1;
            let b = entry.remove();
            Playout::Packet {
                payload_type: b.payload_type,
                payload: b.payload,
                marker: b.marker,
            }
        } else {
            self.stats.lost += 1;
            Playout::Lost
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets held before playout starts or resumes.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// How many packets are held.
    pub fn buffered(&self) -> usize {
        self.packets.len()
    }

    /// The packet's extended sequence number, or `None` if it starts a new
    /// stream (first packet, new SSRC or a large jump).
    fn extend(&self, header: &RtpHeader) -> Option<i64> {
        self.ssrc.filter(|&ssrc| ssrc == header.ssrc)?;
        // Reinterpreting the wrapped difference as i16 unwraps it: -32768..=32767.
        let delta = i64::from(header.sequence.wrapping_sub(self.highest as u16) as i16);
        (delta.abs() <= MAX_JUMP).then_some(self.highest + delta)
    }

    /// Flushes everything and makes `header` the start of a new stream.
    fn restart(&mut self, header: &RtpHeader) -> i64 {
        match self.ssrc {
            Some(ssrc) if ssrc != header.ssrc => self.stats.ssrc_changes += 1,
            Some(_) => self.stats.resyncs += 1,
            None => {}
        }
        if !self.packets.is_empty() || self.next.is_some() {
            tracing::debug!(
                ssrc = header.ssrc,
                sequence = header.sequence,
                flushed = self.packets.len(),
                "RTP stream restarted"
            );
        }
        self.ssrc = Some(header.ssrc);
        self.packets.clear();
        self.next = None;
        self.playing = false;
        self.highest = i64::from(header.sequence);
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    fn header(sequence: u16) -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc: SSRC,
        }
    }

    fn push(jb: &mut JitterBuffer, sequence: u16) {
        // The payload records the sequence number so tests can check the order.
        jb.push(&header(sequence), &sequence.to_be_bytes());
    }

    /// Pops once, describing the result as Some(seq) for a packet, None for Lost,
    /// and panicking on Empty (use `pop_all` or match directly for that).
    fn pop_seq(jb: &mut JitterBuffer) -> Option<u16> {
        match jb.pop() {
            Playout::Packet { payload, .. } => Some(u16::from_be_bytes([payload[0], payload[1]])),
            Playout::Lost => None,
            Playout::Empty => panic!("unexpected Empty"),
        }
    }

    /// Pops until Empty.
    fn drain(jb: &mut JitterBuffer) -> Vec<Option<u16>> {
        let mut out = Vec::new();
        loop {
            match jb.pop() {
                Playout::Packet { payload, .. } => {
                    out.push(Some(u16::from_be_bytes([payload[0], payload[1]])))
                }
                Playout::Lost => out.push(None),
                Playout::Empty => return out,
            }
        }
    }

    #[test]
    fn waits_for_depth_then_plays_in_order() {
        let mut jb = JitterBuffer::new(3, 50);
        assert_eq!(jb.pop(), Playout::Empty);
        push(&mut jb, 100);
        push(&mut jb, 101);
        assert_eq!(jb.pop(), Playout::Empty);
        push(&mut jb, 102);
        assert_eq!(pop_seq(&mut jb), Some(100));
        // Steady state: one in, one out.
        for s in 103..110 {
            push(&mut jb, s);
            assert_eq!(pop_seq(&mut jb), Some(s - 2));
        }
        assert_eq!(jb.buffered(), 2);
        let st = jb.stats();
        assert_eq!((st.received, st.played, st.lost), (10, 8, 0));
    }

    #[test]
    fn a_late_packet_deepens_the_buffer_and_a_pause_does_not() {
        let mut jb = JitterBuffer::adaptive(1, 3, 64);
        // A clean line: one packet held, one played.
        for s in 1..=5 {
            push(&mut jb, s);
            assert_eq!(pop_seq(&mut jb), Some(s));
        }
        assert_eq!(jb.depth(), 1);
        // Packet 6 is one interval late: playout runs dry, then it comes.
        assert_eq!(jb.pop(), Playout::Empty);
        push(&mut jb, 6);
        assert_eq!(jb.depth(), 2, "one packet deeper");
        assert_eq!(jb.pop(), Playout::Empty, "waits for two");
        push(&mut jb, 7);
        assert_eq!(pop_seq(&mut jb), Some(6));
        // The sender pauses (silence suppression): many empty intervals, then
        // the stream goes on; that is no jitter.
        assert_eq!(pop_seq(&mut jb), Some(7));
        for _ in 0..50 {
            assert_eq!(jb.pop(), Playout::Empty);
        }
        push(&mut jb, 8);
        assert_eq!(jb.depth(), 2);
        // Late packets again and again: never deeper than the most allowed.
        for round in 0..5u16 {
            let s = 9 + 3 * round;
            push(&mut jb, s);
            push(&mut jb, s + 1);
            while jb.buffered() > 0 {
                jb.pop();
            }
            jb.pop();
            push(&mut jb, s + 2);
        }
        assert_eq!(jb.depth(), 3);
        assert_eq!(jb.stats().depth_increases, 2);
        // A fixed buffer never grows.
        let mut fixed = JitterBuffer::new(2, 64);
        push(&mut fixed, 1);
        push(&mut fixed, 2);
        fixed.pop();
        fixed.pop();
        fixed.pop();
        push(&mut fixed, 3);
        assert_eq!(fixed.depth(), 2);
    }

    #[test]
    fn key_events_do_not_deepen_the_buffer() {
        // A phone that stops its audio while it sends a key: event packets
        // share the numbers and come at their own pace.
        let mut jb = JitterBuffer::adaptive(1, 3, 64);
        push(&mut jb, 1);
        assert_eq!(pop_seq(&mut jb), Some(1));
        for s in 2..=4 {
            jb.skip(&header(s));
            assert_eq!(jb.pop(), Playout::Empty);
            assert_eq!(jb.pop(), Playout::Empty);
        }
        push(&mut jb, 5);
        assert_eq!(pop_seq(&mut jb), Some(5));
        assert_eq!(jb.depth(), 1);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn keeps_payload_type_and_marker() {
        let mut jb = JitterBuffer::new(1, 10);
        let h = RtpHeader {
            payload_type: 101,
            marker: true,
            ..header(5)
        };
        jb.push(&h, &[1, 2, 3, 4]);
        assert_eq!(
            jb.pop(),
            Playout::Packet {
                payload_type: 101,
                payload: vec![1, 2, 3, 4],
                marker: true
            }
        );
    }

    #[test]
    fn reorders_within_depth() {
        let mut jb = JitterBuffer::new(3, 50);
        for s in [12, 10, 11, 14, 13, 15] {
            push(&mut jb, s);
        }
        assert_eq!(drain(&mut jb), [10, 11, 12, 13, 14, 15].map(Some).to_vec());
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn earlier_packet_before_playout_moves_the_start_back() {
        let mut jb = JitterBuffer::new(2, 50);
        push(&mut jb, 20);
        push(&mut jb, 19);
        assert_eq!(pop_seq(&mut jb), Some(19));
        assert_eq!(pop_seq(&mut jb), Some(20));
    }

    #[test]
    fn late_packet_is_dropped() {
        let mut jb = JitterBuffer::new(2, 50);
        push(&mut jb, 1);
        push(&mut jb, 2);
        assert_eq!(pop_seq(&mut jb), Some(1));
        // Packet 3 is missing when its turn comes.
        push(&mut jb, 4);
        assert_eq!(pop_seq(&mut jb), Some(2));
        assert_eq!(pop_seq(&mut jb), None);
        push(&mut jb, 3);
        // An already played one, too.
        push(&mut jb, 1);
        assert_eq!(jb.stats().late, 2);
        assert_eq!(pop_seq(&mut jb), Some(4));
        assert_eq!(jb.pop(), Playout::Empty);
    }

    #[test]
    fn duplicate_is_dropped() {
        let mut jb = JitterBuffer::new(3, 50);
        for s in [1, 2, 2, 3, 3, 3] {
            push(&mut jb, s);
        }
        assert_eq!(jb.stats().duplicate, 3);
        assert_eq!(drain(&mut jb), [1, 2, 3].map(Some).to_vec());
    }

    #[test]
    fn missing_packet_is_lost() {
        let mut jb = JitterBuffer::new(2, 50);
        for s in [1, 2, 4, 7] {
            push(&mut jb, s);
        }
        assert_eq!(
            drain(&mut jb),
            [Some(1), Some(2), None, Some(4), None, None, Some(7)]
        );
        let st = jb.stats();
        assert_eq!((st.played, st.lost), (4, 3));
    }

    #[test]
    fn wraps_at_65535() {
        let mut jb = JitterBuffer::new(3, 50);
        for s in [65533, 65535, 65534, 1, 0, 2] {
            push(&mut jb, s);
        }
        assert_eq!(
            drain(&mut jb),
            [65533, 65534, 65535, 0, 1, 2].map(Some).to_vec()
        );
        // A packet from before the wrap is late, not far in the future.
        push(&mut jb, 65535);
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn ssrc_change_restarts() {
        let mut jb = JitterBuffer::new(2, 50);
        for s in 1..=4 {
            push(&mut jb, s);
        }
        assert_eq!(pop_seq(&mut jb), Some(1));
        let other = RtpHeader {
            ssrc: 0xABCD,
            ..header(40_000)
        };
        jb.push(&other, &40_000u16.to_be_bytes());
        assert_eq!(jb.stats().ssrc_changes, 1);
        assert_eq!(jb.buffered(), 1);
        // Re-buffering: one packet is below depth.
        assert_eq!(jb.pop(), Playout::Empty);
        jb.push(
            &RtpHeader {
                ssrc: 0xABCD,
                ..header(40_001)
            },
            &40_001u16.to_be_bytes(),
        );
        assert_eq!(drain(&mut jb), [Some(40_000), Some(40_001)]);
        // A straggler from the old stream is yet another change, not mixed in.
        push(&mut jb, 5);
        assert_eq!(jb.stats().ssrc_changes, 2);
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn huge_jump_resyncs() {
        let mut jb = JitterBuffer::new(2, 50);
        for s in 1..=3 {
            push(&mut jb, s);
        }
        assert_eq!(pop_seq(&mut jb), Some(1));
        push(&mut jb, 30_000);
        push(&mut jb, 30_001);
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(drain(&mut jb), [Some(30_000), Some(30_001)]);
        assert_eq!(jb.stats().lost, 0);
        // Backwards too.
        push(&mut jb, 10);
        assert_eq!(jb.stats().resyncs, 2);
        assert_eq!(jb.stats().late, 0);
        assert_eq!(jb.stats().ssrc_changes, 0);
    }

    #[test]
    fn moderate_gap_is_loss_not_resync() {
        let mut jb = JitterBuffer::new(1, 50);
        push(&mut jb, 1);
        push(&mut jb, 51);
        assert_eq!(jb.stats().resyncs, 0);
        let played = drain(&mut jb);
        assert_eq!(played.len(), 51);
        assert_eq!(played.first(), Some(&Some(1)));
        assert_eq!(played.last(), Some(&Some(51)));
        assert_eq!(jb.stats().lost, 49);
    }

    #[test]
    fn underrun_rebuffers() {
        let mut jb = JitterBuffer::new(3, 50);
        for s in 1..=3 {
            push(&mut jb, s);
        }
        assert_eq!(drain(&mut jb), [1, 2, 3].map(Some).to_vec());
        // Ran dry: even one new packet is not enough to resume.
        push(&mut jb, 4);
        assert_eq!(jb.pop(), Playout::Empty);
        push(&mut jb, 5);
        assert_eq!(jb.pop(), Playout::Empty);
        push(&mut jb, 6);
        assert_eq!(pop_seq(&mut jb), Some(4));
        // Still the same stream: an old packet is late.
        push(&mut jb, 2);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn loss_across_underrun_is_skipped() {
        let mut jb = JitterBuffer::new(2, 50);
        push(&mut jb, 1);
        push(&mut jb, 2);
        assert_eq!(drain(&mut jb), [Some(1), Some(2)]);
        // 3 never arrives; resume at 4 instead of concealing 3 first.
        push(&mut jb, 4);
        push(&mut jb, 5);
        assert_eq!(drain(&mut jb), [Some(4), Some(5)]);
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn bounded_under_flood() {
        let mut jb = JitterBuffer::new(3, 10);
        for s in 0..1000u32 {
            push(&mut jb, s as u16);
            assert!(jb.buffered() <= 10);
        }
        let st = jb.stats();
        assert_eq!(st.overflow, 990);
        assert_eq!(st.resyncs, 0);
        // The newest survive, and play without spurious losses.
        assert_eq!(drain(&mut jb), (990..1000).map(Some).collect::<Vec<_>>());
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn overflow_while_playing_skips_dropped_packets() {
        let mut jb = JitterBuffer::new(1, 4);
        push(&mut jb, 0);
        assert_eq!(pop_seq(&mut jb), Some(0));
        for s in 1..=8 {
            push(&mut jb, s);
        }
        assert_eq!(drain(&mut jb), (5..=8).map(Some).collect::<Vec<_>>());
        // A dropped packet coming back again is late.
        push(&mut jb, 3);
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn skipped_numbers_are_neither_lost_nor_played() {
        let mut jb = JitterBuffer::new(2, 64);
        push(&mut jb, 1);
        // Events 2-4 beside the audio (as baresip sends them), and in place of it (5-6).
        for seq in [2, 3, 4, 5, 6] {
            jb.skip(&header(seq));
        }
        push(&mut jb, 7);
        push(&mut jb, 8);
        assert_eq!(drain(&mut jb), vec![Some(1), Some(7), Some(8)]);
        assert_eq!(jb.stats().lost, 0);
    }
}
