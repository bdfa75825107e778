//! RFC 4733 telephone-event payloads, with timestamps from the input, through
//! the parser and the receiver: each key is reported at most once per event,
//! only DTMF keys come out, and what Izwi sends parses back as the same key.
//! Run with `make fuzz FUZZ_TARGET=dtmf`.

#![no_main]

use izwi::rtp::dtmf::{self, DtmfReceiver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rx = DtmfReceiver::new();
    // Records: [timestamp (1 byte), len, payload × len].
    let mut rest = data;
    let mut keys = 0usize;
    let mut events = 0usize;
    while rest.len() >= 2 {
        let (ts, len) = (u32::from(rest[0]), usize::from(rest[1] & 7));
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (payload, tail) = rest.split_at(take);
        rest = tail;
        events += 1;
        if let Ok(e) = dtmf::parse(payload) {
            let enc = dtmf::encode(&e);
            assert_eq!(dtmf::parse(&enc).unwrap(), e, "encode ∘ parse");
        }
        if let Some(k) = rx.push(ts * 160, payload) {
            keys += 1;
            assert!(dtmf::code(k).is_some(), "{k:?} is not a key");
        }
    }
    assert!(keys <= events);
    for key in ['0', '5', '9', '*', '#', 'A', 'D'] {
        for (e, _) in dtmf::tone_packets(key, 160, 8000, 20) {
            assert_eq!(dtmf::digit(e.code), Some(key));
        }
    }
});
