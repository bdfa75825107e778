//! RTP packets through the parser, the source filter (a packet's source and
//! payload type come from the input too) and the jitter buffer, with pops in
//! between: whatever arrives, in whatever order, nothing panics, the buffer
//! stays within its bounds and every pop is a packet, a loss or nothing.
//! Run with `make fuzz FUZZ_TARGET=rtp_jitter`.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use izwi::config::RtpLatch;
use izwi::rtp::jitter::{JitterBuffer, Playout};
use izwi::rtp::packet;
use izwi::rtp::source::SourceFilter;
use libfuzzer_sys::fuzz_target;

const MAX_PACKETS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let latch = if mode & 1 == 0 { RtpLatch::Peer } else { RtpLatch::Sdp };
    let sdp: SocketAddr = "192.0.2.10:4000".parse().unwrap();
    let mut filter = SourceFilter::new(latch, sdp, "192.0.2.10".parse().unwrap());
    let mut jitter = JitterBuffer::new(usize::from(mode >> 5) + 1, MAX_PACKETS);
    let t0 = Instant::now();
    let mut ms = 0u64;
    // Records: [len, from, pops, bytes × len].
    while rest.len() >= 3 {
        let (len, from, pops) = (usize::from(rest[0]), rest[1], rest[2]);
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (bytes, tail) = rest.split_at(take);
        rest = tail;
        ms += u64::from(from & 0x0f) * 10;
        let now = t0 + Duration::from_millis(ms);
        let source = SocketAddr::from(([192, 0, 2, 8 + (from >> 6)], 4000 + u16::from((from >> 4) & 3)));
        if let Ok((header, payload)) = packet::parse(bytes) {
            let ours = header.payload_type == 0;
            if filter.accepts(source, ours, now) {
                jitter.push(&header, payload);
            }
            assert!(jitter.buffered() <= MAX_PACKETS);
        }
        for _ in 0..(pops & 7) {
            match jitter.pop() {
                Playout::Packet { payload, .. } => assert!(payload.len() <= 255),
                Playout::Lost | Playout::Empty => {}
            }
        }
        let d = filter.destination();
        assert!(d == sdp || d.ip().to_string().starts_with("192.0.2."));
    }
    let s = jitter.stats();
    assert!(s.late <= s.received);
});
