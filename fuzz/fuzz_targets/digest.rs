//! Any Authorization or WWW-Authenticate value through the digest parsers and
//! the access policy (with a challenge it issued, so the fuzzer can reach
//! the checks past the nonce): no panic, and no verdict lets a request in
//! without the password.
//! Run with `make fuzz FUZZ_TARGET=digest`.

#![no_main]

use std::time::Instant;

use izwi::sip::access::{AccessPolicy, AuthRequest, Credentials, Verdict};
use izwi::sip::digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = digest::parse_challenge(text);
    if let Ok(creds) = digest::parse_credentials(text) {
        let _ = creds.nonce_count();
        assert!(!digest::verify(&creds, "INVITE", "not-the-password-3f9a"));
    }
    let mut policy = AccessPolicy::new(
        Vec::new(),
        Some(Credentials {
            realm: "izwi".into(),
            username: "trunk".into(),
            password: "not-the-password-3f9a".into(),
        }),
    );
    let now = Instant::now();
    let req = |authorization| AuthRequest {
        source: "192.0.2.1".parse().unwrap(),
        method: "INVITE",
        request_uri: "sip:izwi@192.0.2.9",
        call_id: "fuzz",
        authorization,
    };
    // The fuzzer's text with the nonce Izwi just issued spliced in.
    let nonce = match policy.check(&req(None), now) {
        Verdict::Challenge { www, .. } => digest::parse_challenge(&www).unwrap().nonce,
        other => panic!("{other:?}"),
    };
    let spliced = text.replace("NONCE", &nonce);
    for header in [text, spliced.as_str()] {
        match policy.check(&req(Some(header)), now) {
            Verdict::Allowed => panic!("let in without the password: {header:?}"),
            Verdict::Challenge { .. } | Verdict::Blocked { .. } | Verdict::Forbidden => {}
        }
    }
});
