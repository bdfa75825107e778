//! Cloud providers that bridge a phone call to us over a WebSocket media stream.
//!
//! Sans-IO on purpose: the socket loop owns the connection, this layer only
//! translates frames, so each provider can be tested from captured JSON and a
//! new one (Telnyx, Plivo, Vonage, Exotel) is one file implementing
//! [`MediaStreamProvider`] without touching the call machinery.

use std::collections::BTreeMap;

pub mod twilio;

/// Largest decoded media payload we take. A real frame is 20 ms (160 bytes);
/// the cap exists so a hostile or broken peer cannot make us buffer megabytes
/// per frame, while leaving room for providers that batch more audio.
pub const MAX_MEDIA_BYTES: usize = 64 * 1024;

/// Largest text frame a provider parser looks at: a maximal media payload in
/// base64 plus generous room for the JSON envelope. The WebSocket layer should
/// use it as its message limit so oversized frames are never even assembled.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// What a provider's stream tells us, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Connected,
    Start(StreamStart),
    /// Caller audio: G.711 µ-law bytes at 8 kHz, already base64-decoded.
    Media {
        payload: Vec<u8>,
        timestamp_ms: Option<u64>,
    },
    Dtmf {
        digit: char,
    },
    /// The provider played everything sent before the mark named so.
    Mark {
        name: String,
    },
    Stop,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamStart {
    pub stream_id: String,
    pub call_id: String,
    pub account_id: String,
    /// Values we put in the TwiML (or equivalent); may carry secrets such as a
    /// stream token, so never log them wholesale.
    pub custom: BTreeMap<String, String>,
    /// e.g. "audio/x-mulaw"
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

/// Why a frame was refused. Messages name fields, never their contents, so
/// they are safe to log: audio and custom parameters (which may hold tokens)
/// stay out of them.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("frame is not a JSON object")]
    NotObject,
    /// The name is truncated to 32 characters and debug-escaped.
    #[error("unknown event {0}")]
    UnknownEvent(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// Present but of the wrong type or outside the allowed values.
    #[error("field `{field}` must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{0}` is not valid base64")]
    Base64(&'static str),
    #[error("unsupported media: {0}")]
    Format(String),
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
}

impl ProtocolError {
    /// Stable label for metrics, so dashboards survive message rewording.
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Json(_) | ProtocolError::NotObject => "json",
            ProtocolError::UnknownEvent(_) => "unknown_event",
            ProtocolError::MissingField(_) => "missing_field",
            ProtocolError::InvalidField { .. } => "invalid_field",
            ProtocolError::Base64(_) => "base64",
            ProtocolError::Format(_) => "format",
            ProtocolError::TooLarge { .. } => "too_large",
        }
    }
}

/// One provider's wire dialect. Object-safe so the HTTP layer can pick an
/// implementation at runtime from configuration.
pub trait MediaStreamProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// One text frame from the provider. Errors are per frame: the caller
    /// decides whether a bad frame is skipped (and counted) or ends the call.
    fn parse(&self, text: &str) -> Result<StreamEvent, ProtocolError>;
    /// Checked separately from [`parse`](Self::parse) so a start we cannot
    /// take is still reported with its call id for logging.
    fn accepts(&self, start: &StreamStart) -> Result<(), ProtocolError>;
    /// Outgoing frames (JSON text).
    fn media(&self, stream_id: &str, mulaw: &[u8]) -> String;
    fn mark(&self, stream_id: &str, name: &str) -> String;
    fn clear(&self, stream_id: &str) -> String;
}

/// Provider-chosen strings end up in error messages and logs; bounding and
/// escaping them keeps a hostile peer from flooding or forging log lines.
pub(crate) fn quoted_prefix(s: &str, max_chars: usize) -> String {
    let mut cut: String = s.chars().take(max_chars).collect();
    if s.chars().nth(max_chars).is_some() {
        cut.push('…');
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_documented_labels() {
        let cases = [
            (ProtocolError::Json("x".into()), "json"),
            (ProtocolError::NotObject, "json"),
            (ProtocolError::UnknownEvent("\"x\"".into()), "unknown_event"),
            (ProtocolError::MissingField("event"), "missing_field"),
            (
                ProtocolError::InvalidField {
                    field: "event",
                    expected: "a string",
                },
                "invalid_field",
            ),
            (ProtocolError::Base64("media.payload"), "base64"),
            (ProtocolError::Format("x".into()), "format"),
            (
                ProtocolError::TooLarge {
                    what: "frame",
                    size: 2,
                    limit: 1,
                },
                "too_large",
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn quoted_prefix_truncates_and_escapes() {
        assert_eq!(quoted_prefix("abc", 32), "\"abc\"");
        let long = "x".repeat(40);
        let q = quoted_prefix(&long, 32);
        assert_eq!(q, format!("\"{}…\"", "x".repeat(32)));
        assert_eq!(quoted_prefix("a\nb", 32), "\"a\\nb\"");
        // Truncation counts characters, so multibyte input cannot split a char.
        assert_eq!(quoted_prefix("ééé", 2), "\"éé…\"");
    }

    #[test]
    fn trait_is_object_safe() {
        let p: Box<dyn MediaStreamProvider> = Box::new(twilio::Twilio);
        assert_eq!(p.name(), "twilio");
    }
}
