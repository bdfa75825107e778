//! Bytes of a SIP-over-TCP stream, cut into reads where the input says, through
//! the framer: every message it returns is a prefix of what was pushed, no
//! larger than the limit, and its bytes are never returned twice.
//! Run with `make fuzz FUZZ_TARGET=tcp_framing`.

#![no_main]

use izwi::sip::message::MAX_MESSAGE;
use izwi::sip::stream::Framer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut framer = Framer::default();
    let mut out = 0usize;
    for chunk in stream.chunks(step) {
        framer.push(chunk);
        loop {
            match framer.next_message() {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= MAX_MESSAGE);
                    assert!(!msg.is_empty());
                    out += msg.len();
                    assert!(out <= stream.len());
                }
                Ok(None) => break,
                // A stream out of frame is dropped, as the endpoint does.
                Err(_) => return,
            }
        }
    }
    let _ = framer.pending();
});
