//! Any text as a Twilio Media Streams frame: the parser never panics, refuses
//! what it cannot take with an error that names no content, and a start's
//! token check is just true or false.
//! Run with `make fuzz FUZZ_TARGET=twilio_frames`.

#![no_main]

use izwi::provider::twilio::{Twilio, check_stream_token};
use izwi::provider::{MAX_MEDIA_BYTES, MediaStreamProvider, StreamEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Twilio.parse(text) {
        Ok(StreamEvent::Media { payload, .. }) => assert!(payload.len() <= MAX_MEDIA_BYTES),
        Ok(StreamEvent::Start(start)) => {
            let _ = Twilio.accepts(&start);
            if let (Some(token), Some(call)) = (start.custom.get("token"), start.custom.get("callSid")) {
                let _ = check_stream_token("secret", token, call, 1_700_000_000, 300);
            }
        }
        Ok(_) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() < 256, "{message}");
            let _ = e.kind();
        }
    }
    if let Some((token, call)) = text.split_once('\n') {
        let _ = check_stream_token("secret", token, call, u64::MAX, u64::MAX);
    }
});
