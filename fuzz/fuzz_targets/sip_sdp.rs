//! Any bytes through the SIP parser, the user agent (as a datagram from a
//! caller) and, when the body is text, the SDP parser and negotiation.
//! Run with `cargo fuzz run sip_sdp` in the project folder.

#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use izwi::sip::message::{self, Identity};
use izwi::codec::Codec;
use izwi::sip::sdp;
use izwi::sip::ua::{Transport, UaConfig, UserAgent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = message::parse(data) {
        if let Ok(text) = std::str::from_utf8(p.body())
            && let Ok(offer) = sdp::parse(text)
            && let Ok(n) = sdp::negotiate(&offer, &[Codec::Pcmu, Codec::Pcma])
        {
            let answer = sdp::answer(&n, "127.0.0.1".parse().unwrap(), 20_000, 1, 1);
            assert!(sdp::parse(&answer).is_ok(), "our own answer must parse");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sdp::parse(text);
    }
    let mut ua = UserAgent::new(UaConfig {
        identity: Identity {
            user_agent: "fuzz".into(),
            contact: "sip:izwi@127.0.0.1:5060".into(),
        },
        via_host: "127.0.0.1:5060".into(),
        max_calls: 4,
        max_calls_per_source: 4,
    });
    let from: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let now = Instant::now();
    ua.handle_message(data, from, Transport::Udp, now);
    ua.handle_message(data, from, Transport::Tcp, now);
    ua.handle_timeout(now + std::time::Duration::from_secs(40));
    while ua.poll_output().is_some() {}
});
