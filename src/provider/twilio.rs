//! Twilio Media Streams, bidirectional (`<Connect><Stream>`), plus the webhook
//! pieces around them: request signatures, TwiML, and a token binding a
//! stream to TwiML we handed out.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha1::Sha1;
use sha2::Sha256;

use super::{
    MAX_FRAME_BYTES, MAX_MEDIA_BYTES, MediaStreamProvider, ProtocolError, StreamEvent, StreamStart,
    quoted_prefix,
};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Twilio pads its base64, but padding carries no information; refusing a
/// frame over it would drop audio for nothing.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How far a stream token's timestamp may lie ahead of our clock, to absorb
/// skew between replicas without accepting tokens minted for the far future.
const TOKEN_FUTURE_SKEW_SECS: u64 = 30;

/// Twilio Media Streams. Stateless: the stream id comes from the start event
/// and is passed back in by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Twilio;

impl MediaStreamProvider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    /// Fields we do not use (`sequenceNumber`, `chunk`, `tracks`, the
    /// top-level `streamSid`, ...) are ignored, so Twilio adding or reshaping
    /// them cannot drop calls; fields we do use are checked strictly.
    ///
    /// Media on the `outbound` track is refused with kind `format`: a
    /// bidirectional stream only carries inbound audio, so outbound audio means
    /// a misconfigured `track` that would feed our own speech back to us as if
    /// the caller said it. A missing `track` is taken as caller audio.
    fn parse(&self, text: &str) -> Result<StreamEvent, ProtocolError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(ProtocolError::TooLarge {
                what: "frame",
                size: text.len(),
                limit: MAX_FRAME_BYTES,
            });
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
        let Value::Object(frame) = value else {
            return Err(ProtocolError::NotObject);
        };
        let event = str_field(&frame, "event", "event")?;
        match event {
            "connected" => Ok(StreamEvent::Connected),
            "start" => parse_start(&frame).map(StreamEvent::Start),
            "media" => parse_media(&frame),
            "dtmf" => parse_dtmf(&frame),
            "mark" => {
                let mark = obj_field(&frame, "mark", "mark")?;
                let name = str_field(mark, "name", "mark.name")?;
                Ok(StreamEvent::Mark {
                    name: name.to_owned(),
                })
            }
            "stop" => Ok(StreamEvent::Stop),
            other => Err(ProtocolError::UnknownEvent(quoted_prefix(other, 32))),
        }
    }

    /// Only µ-law at 8 kHz mono: that is what `<Connect><Stream>` delivers and
    /// what our G.711 path expects, so anything else means we would decode
    /// noise.
    fn accepts(&self, start: &StreamStart) -> Result<(), ProtocolError> {
        if !start.encoding.eq_ignore_ascii_case("audio/x-mulaw") {
            return Err(ProtocolError::Format(format!(
                "encoding {}, need \"audio/x-mulaw\"",
                quoted_prefix(&start.encoding, 32)
            )));
        }
        if start.sample_rate != 8000 {
            return Err(ProtocolError::Format(format!(
                "sample rate {} Hz, need 8000 Hz",
                start.sample_rate
            )));
        }
        if start.channels != 1 {
            return Err(ProtocolError::Format(format!(
                "{} channels, need 1",
                start.channels
            )));
        }
        Ok(())
    }

    fn media(&self, stream_id: &str, mulaw: &[u8]) -> String {
        json!({
            "event": "media",
            "streamSid": stream_id,
            "media": { "payload": STANDARD.encode(mulaw) },
        })
        .to_string()
    }

    fn mark(&self, stream_id: &str, name: &str) -> String {
        json!({
            "event": "mark",
            "streamSid": stream_id,
            "mark": { "name": name },
        })
        .to_string()
    }

    fn clear(&self, stream_id: &str) -> String {
        json!({ "event": "clear", "streamSid": stream_id }).to_string()
    }
}

fn parse_start(frame: &Map<String, Value>) -> Result<StreamStart, ProtocolError> {
    let start = obj_field(frame, "start", "start")?;
    let custom = match start.get("customParameters") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(params)) => params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ProtocolError::InvalidField {
                    field: "start.customParameters",
                    expected: "an object of strings",
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ProtocolError::InvalidField {
                field: "start.customParameters",
                expected: "an object of strings",
            });
        }
    };
    let format = obj_field(start, "mediaFormat", "start.mediaFormat")?;
    Ok(StreamStart {
        stream_id: nonempty_str_field(start, "streamSid", "start.streamSid")?.to_owned(),
        call_id: nonempty_str_field(start, "callSid", "start.callSid")?.to_owned(),
        account_id: nonempty_str_field(start, "accountSid", "start.accountSid")?.to_owned(),
        custom,
        encoding: str_field(format, "encoding", "start.mediaFormat.encoding")?.to_owned(),
        sample_rate: u32_field(format, "sampleRate", "start.mediaFormat.sampleRate")?,
        channels: u32_field(format, "channels", "start.mediaFormat.channels")?,
    })
}

fn parse_media(frame: &Map<String, Value>) -> Result<StreamEvent, ProtocolError> {
    let media = obj_field(frame, "media", "media")?;
    match media.get("track") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "outbound" || t == "outbound_track" => {
            return Err(ProtocolError::Format(
                "media on the outbound track; only caller audio is taken".into(),
            ));
        }
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ProtocolError::InvalidField {
                field: "media.track",
                expected: "a string",
            });
        }
    }
    let timestamp_ms = match media.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(v) => Some(lenient_u64(v, "media.timestamp")?),
    };
    let encoded = str_field(media, "payload", "media.payload")?;
    // Sized from the text before decoding so an oversized payload is never
    // allocated; exact for well-formed base64.
    let unpadded = encoded.trim_end_matches('=').len();
    let size = unpadded / 4 * 3 + (unpadded % 4).saturating_sub(1);
    if size > MAX_MEDIA_BYTES {
        return Err(ProtocolError::TooLarge {
            what: "media.payload",
            size,
            limit: MAX_MEDIA_BYTES,
        });
    }
    let payload = LENIENT_B64
        .decode(encoded)
        .map_err(|_| ProtocolError::Base64("media.payload"))?;
    Ok(StreamEvent::Media {
        payload,
        timestamp_ms,
    })
}

/// Lowercase `a`-`d` is folded to uppercase: it names the same key, and a
/// strict refusal would only lose a keypress.
fn parse_dtmf(frame: &Map<String, Value>) -> Result<StreamEvent, ProtocolError> {
    const EXPECTED: &str = "one of 0-9 * # A-D";
    let dtmf = obj_field(frame, "dtmf", "dtmf")?;
    let digit = str_field(dtmf, "digit", "dtmf.digit")?;
    let mut chars = digit.chars();
    match (chars.next(), chars.next()) {
        (Some(c @ ('0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d')), None) => {
            Ok(StreamEvent::Dtmf {
                digit: c.to_ascii_uppercase(),
            })
        }
        _ => Err(ProtocolError::InvalidField {
            field: "dtmf.digit",
            expected: EXPECTED,
        }),
    }
}

fn obj_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a Map<String, Value>, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ProtocolError::MissingField(path)),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(ProtocolError::InvalidField {
            field: path,
            expected: "an object",
        }),
    }
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a str, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ProtocolError::MissingField(path)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ProtocolError::InvalidField {
            field: path,
            expected: "a string",
        }),
    }
}

/// Ids are what we route and log by; an empty one is as good as missing.
fn nonempty_str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a str, ProtocolError> {
    match str_field(obj, key, path)? {
        "" => Err(ProtocolError::MissingField(path)),
        s => Ok(s),
    }
}

/// Twilio documents numbers as strings but has sent both over the years;
/// either spelling of a non-negative integer is taken.
fn lenient_u64(v: &Value, path: &'static str) -> Result<u64, ProtocolError> {
    let invalid = ProtocolError::InvalidField {
        field: path,
        expected: "a non-negative integer",
    };
    match v {
        Value::Number(n) => n.as_u64().ok_or(invalid),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| invalid)
        }
        _ => Err(invalid),
    }
}

fn u32_field(
    obj: &Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<u32, ProtocolError> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => return Err(ProtocolError::MissingField(path)),
        Some(v) => v,
    };
    u32::try_from(lenient_u64(v, path)?).map_err(|_| ProtocolError::InvalidField {
        field: path,
        expected: "an integer below 2^32",
    })
}

// ---------------------------------------------------------------------------
// Webhook signatures
// ---------------------------------------------------------------------------

/// `X-Twilio-Signature` for a form POST, so tests and tools can produce what
/// Twilio would send. Parameters are sorted by name then value (byte order,
/// as Twilio's "Unix-style case-sensitive" sort), whatever order they came in.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    signing_mac(auth_token, url, &sorted(params))
        .map(|mac| STANDARD.encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `header_value` is Twilio's signature of this request.
///
/// Proxies and load balancers disagree about whether the default port is part
/// of the URL, and Twilio itself has signed both forms, so (as Twilio's own
/// helper libraries do) the URL is tried as given, then with its explicit
/// port removed, or, when it has none, with `:443` (https) / `:80` (http)
/// inserted. The MAC comparison is constant-time. An empty auth token never
/// matches, since anyone could compute a signature under it.
pub fn signature_matches(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header_value: &str,
) -> bool {
    if auth_token.is_empty() {
        return false;
    }
    let Ok(expected) = STANDARD.decode(header_value.trim()) else {
        return false;
    };
    let params = sorted(params);
    url_variants(url).iter().any(|candidate| {
        signing_mac(auth_token, candidate, &params)
            .is_some_and(|mac| mac.verify_slice(&expected).is_ok())
    })
}

fn sorted(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.sort_unstable();
    v
}

/// `None` only if HMAC refused the key, which it never does (any length is a
/// valid HMAC key); callers then fail closed instead of panicking.
fn signing_mac(auth_token: &str, url: &str, sorted_params: &[(&str, &str)]) -> Option<HmacSha1> {
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).ok()?;
    mac.update(url.as_bytes());
    for (k, v) in sorted_params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    Some(mac)
}

/// The URL as given plus its port-toggled twin (see [`signature_matches`]).
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let scheme = &url[..scheme_end];
    let auth_start = scheme_end + 3;
    let auth_end = url[auth_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| auth_start + i);
    let authority = &url[auth_start..auth_end];
    // Userinfo may itself contain ':'; the port is only ever in the host part.
    let host_start = auth_start + authority.rfind('@').map_or(0, |i| i + 1);
    let host = &url[host_start..auth_end];
    match host.rfind(':') {
        // A ':' inside an IPv6 literal's brackets is not a port separator.
        Some(i) if !host[i..].contains(']') => {
            let port = &host[i + 1..];
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                out.push(format!("{}{}", &url[..host_start + i], &url[auth_end..]));
            }
        }
        _ => {
            let default_port = if scheme.eq_ignore_ascii_case("https") {
                Some(443)
            } else if scheme.eq_ignore_ascii_case("http") {
                Some(80)
            } else {
                None
            };
            if let Some(p) = default_port {
                out.push(format!("{}:{p}{}", &url[..auth_end], &url[auth_end..]));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// TwiML
// ---------------------------------------------------------------------------

/// TwiML bridging the call to our WebSocket. Twilio drops query strings from
/// the stream URL, so per-call data (such as a [`stream_token`]) must travel
/// as `<Parameter>`s, which come back in [`StreamStart::custom`].
pub fn connect_stream(stream_url: &str, action: &str, params: &[(&str, &str)]) -> String {
    let mut xml =
        String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect action=""#);
    push_attr(&mut xml, action);
    xml.push_str(r#"">"#);
    xml.push_str(r#"<Stream url=""#);
    push_attr(&mut xml, stream_url);
    xml.push_str(r#"">"#);
    for (name, value) in params {
        xml.push_str(r#"<Parameter name=""#);
        push_attr(&mut xml, name);
        xml.push_str(r#"" value=""#);
        push_attr(&mut xml, value);
        xml.push_str(r#""/>"#);
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

/// TwiML that dials `target`: a number, or a SIP URI (`<Sip>`).
pub fn dial(target: &str) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial>"#);
    if target.starts_with("sip:") || target.starts_with("sips:") {
        xml.push_str("<Sip>");
        push_attr(&mut xml, target);
        xml.push_str("</Sip>");
    } else {
        push_attr(&mut xml, target);
    }
    xml.push_str("</Dial></Response>");
    xml
}

/// TwiML that ends the call.
pub fn hangup() -> String {
    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#.to_string()
}

/// Escapes for a double-quoted attribute. Tab/CR/LF become character
/// references because parsers would otherwise normalise them to spaces;
/// characters XML 1.0 cannot represent at all are dropped, since emitting
/// them would make Twilio reject the whole document and fail the call.
fn push_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------
// Stream tokens
// ---------------------------------------------------------------------------

/// A short-lived credential for opening the media stream of one call. The
/// stream WebSocket carries no Twilio signature, so we hand this out only
/// inside TwiML answering a signature-checked webhook, bound to that
/// webhook's CallSid: whoever presents it got our TwiML for that call.
pub fn stream_token(secret: &str, now_unix: u64, call_sid: &str) -> String {
    let ts = now_unix.to_string();
    token_mac(secret, &ts, call_sid)
        .map(|mac| format!("{ts}.{}", hex::encode(mac.finalize().into_bytes())))
        .unwrap_or_default()
}

/// Whether `token` came from [`stream_token`] with this secret for this
/// call, is at most `max_age_secs` old and at most 30 s in the future (clock
/// skew). Any malformed token is simply false; an empty secret never
/// validates. (That it is used once is the caller's to check.)
pub fn check_stream_token(
    secret: &str,
    token: &str,
    call_sid: &str,
    now_unix: u64,
    max_age_secs: u64,
) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Some((ts, mac_hex)) = token.split_once('.') else {
        return false;
    };
    // Digits only: `u64::from_str` would also take a leading '+', giving two
    // spellings of one timestamp.
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(issued) = ts.parse::<u64>() else {
        return false;
    };
    if issued > now_unix.saturating_add(TOKEN_FUTURE_SKEW_SECS)
        || now_unix.saturating_sub(issued) > max_age_secs
    {
        return false;
    }
    let Ok(tag) = hex::decode(mac_hex) else {
        return false;
    };
    token_mac(secret, ts, call_sid).is_some_and(|mac| mac.verify_slice(&tag).is_ok())
}

fn token_mac(secret: &str, ts: &str, call_sid: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(b"izwi-stream:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(call_sid.as_bytes());
    Some(mac)
}

// ---------------------------------------------------------------------------
// Form bodies
// ---------------------------------------------------------------------------

/// Decodes an `application/x-www-form-urlencoded` webhook body, keeping
/// order and repeated keys because the signature covers every pair. Invalid
/// `%` escapes are kept literally and invalid UTF-8 is replaced rather than
/// refused: the signature check, not the decoder, decides what is acceptable.
pub fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Twilio {
        Twilio
    }

    fn err_kind(text: &str) -> &'static str {
        match p().parse(text) {
            Ok(ev) => panic!("expected an error, got {ev:?}"),
            Err(e) => e.kind(),
        }
    }

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC123","streamSid":"MZ456","callSid":"CA789","tracks":["inbound"],"customParameters":{"token":"s3cret","k":"v"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ456"}"#;

    // ----- parsing -----

    #[test]
    fn parses_connected() {
        let ev = p()
            .parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#)
            .unwrap();
        assert_eq!(ev, StreamEvent::Connected);
    }

    #[test]
    fn parses_start() {
        let StreamEvent::Start(s) = p().parse(START).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(s.stream_id, "MZ456");
        assert_eq!(s.call_id, "CA789");
        assert_eq!(s.account_id, "AC123");
        assert_eq!(s.custom.get("token").map(String::as_str), Some("s3cret"));
        assert_eq!(s.custom.get("k").map(String::as_str), Some("v"));
        assert_eq!(s.custom.len(), 2);
        assert_eq!(s.encoding, "audio/x-mulaw");
        assert_eq!(s.sample_rate, 8000);
        assert_eq!(s.channels, 1);
        assert_eq!(p().accepts(&s), Ok(()));
    }

    #[test]
    fn start_numbers_may_be_strings_and_custom_may_be_absent() {
        let text = r#"{"event":"start","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":"8000","channels":"1"}}}"#;
        let StreamEvent::Start(s) = p().parse(text).unwrap() else {
            panic!("not a start");
        };
        assert_eq!(s.sample_rate, 8000);
        assert_eq!(s.channels, 1);
        assert!(s.custom.is_empty());
    }

    #[test]
    fn start_missing_stream_sid_is_named() {
        let text = START.replace(r#""streamSid":"MZ456","callSid""#, r#""callSid""#);
        assert_eq!(
            p().parse(&text),
            Err(ProtocolError::MissingField("start.streamSid"))
        );
        let empty = START.replace(
            r#""streamSid":"MZ456","callSid""#,
            r#""streamSid":"","callSid""#,
        );
        assert_eq!(
            p().parse(&empty),
            Err(ProtocolError::MissingField("start.streamSid"))
        );
    }

    #[test]
    fn start_structure_is_strict() {
        let no_format =
            r#"{"event":"start","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1"}}"#;
        assert_eq!(
            p().parse(no_format),
            Err(ProtocolError::MissingField("start.mediaFormat"))
        );
        let rate_float = START.replace(r#""sampleRate":8000"#, r#""sampleRate":8000.5"#);
        assert_eq!(err_kind(&rate_float), "invalid_field");
        let rate_neg = START.replace(r#""sampleRate":8000"#, r#""sampleRate":"-8000""#);
        assert_eq!(err_kind(&rate_neg), "invalid_field");
        let rate_huge = START.replace(r#""sampleRate":8000"#, r#""sampleRate":"4294967296""#);
        assert_eq!(err_kind(&rate_huge), "invalid_field");
        let start_str = r#"{"event":"start","start":"nope"}"#;
        assert_eq!(
            p().parse(start_str),
            Err(ProtocolError::InvalidField {
                field: "start",
                expected: "an object"
            })
        );
    }

    #[test]
    fn custom_parameter_values_never_reach_the_message() {
        let text = START.replace(r#""k":"v""#, r#""k":{"secret":"hunter2"}"#);
        let err = p().parse(&text).unwrap_err();
        assert_eq!(err.kind(), "invalid_field");
        let msg = err.to_string();
        assert!(msg.contains("start.customParameters"), "{msg}");
        assert!(!msg.contains("hunter2") && !msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn parses_media_and_decodes_payload() {
        // 0xff is µ-law silence, then a few distinctive bytes.
        let bytes = [0xffu8, 0x7f, 0x00, 0x80, 0x12];
        let text = format!(
            r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"1","timestamp":"5","payload":"{}"}},"streamSid":"MZ1"}}"#,
            STANDARD.encode(bytes)
        );
        assert_eq!(
            p().parse(&text).unwrap(),
            StreamEvent::Media {
                payload: bytes.to_vec(),
                timestamp_ms: Some(5)
            }
        );
    }

    #[test]
    fn media_timestamp_as_number_or_absent() {
        let num = r#"{"event":"media","media":{"timestamp":1234,"payload":"AAEC"}}"#;
        assert_eq!(
            p().parse(num).unwrap(),
            StreamEvent::Media {
                payload: vec![0, 1, 2],
                timestamp_ms: Some(1234)
            }
        );
        let none = r#"{"event":"media","media":{"payload":"AAE"}}"#;
        assert_eq!(
            p().parse(none).unwrap(),
            StreamEvent::Media {
                payload: vec![0, 1],
                timestamp_ms: None
            }
        );
        let bad = r#"{"event":"media","media":{"timestamp":"5ms","payload":"AAEC"}}"#;
        assert_eq!(
            p().parse(bad),
            Err(ProtocolError::InvalidField {
                field: "media.timestamp",
                expected: "a non-negative integer"
            })
        );
        let plus = r#"{"event":"media","media":{"timestamp":"+5","payload":"AAEC"}}"#;
        assert_eq!(err_kind(plus), "invalid_field");
    }

    #[test]
    fn media_errors() {
        let bad_b64 = r#"{"event":"media","media":{"payload":"@@@notbase64!"}}"#;
        let err = p().parse(bad_b64).unwrap_err();
        assert_eq!(err, ProtocolError::Base64("media.payload"));
        assert!(!err.to_string().contains("notbase64"));

        let missing = r#"{"event":"media","media":{"track":"inbound"}}"#;
        assert_eq!(
            p().parse(missing),
            Err(ProtocolError::MissingField("media.payload"))
        );
        let no_media = r#"{"event":"media","streamSid":"MZ1"}"#;
        assert_eq!(
            p().parse(no_media),
            Err(ProtocolError::MissingField("media"))
        );
        let outbound = r#"{"event":"media","media":{"track":"outbound","payload":"AAEC"}}"#;
        assert_eq!(err_kind(outbound), "format");
    }

    #[test]
    fn oversized_media_is_refused_at_the_limit() {
        let at_limit = STANDARD.encode(vec![0xffu8; MAX_MEDIA_BYTES]);
        let ok = format!(r#"{{"event":"media","media":{{"payload":"{at_limit}"}}}}"#);
        match p().parse(&ok).unwrap() {
            StreamEvent::Media { payload, .. } => assert_eq!(payload.len(), MAX_MEDIA_BYTES),
            other => panic!("{other:?}"),
        }
        let over = STANDARD.encode(vec![0xffu8; MAX_MEDIA_BYTES + 1]);
        let text = format!(r#"{{"event":"media","media":{{"payload":"{over}"}}}}"#);
        assert_eq!(
            p().parse(&text),
            Err(ProtocolError::TooLarge {
                what: "media.payload",
                size: MAX_MEDIA_BYTES + 1,
                limit: MAX_MEDIA_BYTES
            })
        );
        let huge_frame = " ".repeat(MAX_FRAME_BYTES + 1);
        assert_eq!(err_kind(&huge_frame), "too_large");
    }

    #[test]
    fn parses_dtmf() {
        let text = r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert_eq!(p().parse(text).unwrap(), StreamEvent::Dtmf { digit: '1' });
        for (d, want) in [("#", '#'), ("*", '*'), ("D", 'D'), ("a", 'A'), ("0", '0')] {
            let t = text.replace(r#""digit":"1""#, &format!(r#""digit":"{d}""#));
            assert_eq!(p().parse(&t).unwrap(), StreamEvent::Dtmf { digit: want });
        }
        for bad in ["X", "", "12", "E", "١"] {
            let t = text.replace(r#""digit":"1""#, &format!(r#""digit":"{bad}""#));
            assert_eq!(
                p().parse(&t),
                Err(ProtocolError::InvalidField {
                    field: "dtmf.digit",
                    expected: "one of 0-9 * # A-D"
                }),
                "{bad:?}"
            );
        }
        let numeric = text.replace(r#""digit":"1""#, r#""digit":1"#);
        assert_eq!(err_kind(&numeric), "invalid_field");
    }

    #[test]
    fn parses_mark_and_stop() {
        let mark =
            r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"p3"}}"#;
        assert_eq!(
            p().parse(mark).unwrap(),
            StreamEvent::Mark { name: "p3".into() }
        );
        let no_name = r#"{"event":"mark","mark":{}}"#;
        assert_eq!(
            p().parse(no_name),
            Err(ProtocolError::MissingField("mark.name"))
        );
        let stop = r#"{"event":"stop","sequenceNumber":"5","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#;
        assert_eq!(p().parse(stop).unwrap(), StreamEvent::Stop);
    }

    #[test]
    fn frame_level_errors() {
        assert_eq!(err_kind("{not json"), "json");
        assert_eq!(err_kind(""), "json");
        assert_eq!(p().parse("[1,2]"), Err(ProtocolError::NotObject));
        assert_eq!(p().parse(r#""media""#), Err(ProtocolError::NotObject));
        assert_eq!(
            p().parse(r#"{"streamSid":"MZ1"}"#),
            Err(ProtocolError::MissingField("event"))
        );
        assert_eq!(
            p().parse(r#"{"event":7}"#),
            Err(ProtocolError::InvalidField {
                field: "event",
                expected: "a string"
            })
        );
        assert_eq!(
            p().parse(r#"{"event":"transcription"}"#),
            Err(ProtocolError::UnknownEvent("\"transcription\"".into()))
        );
        let long = format!(r#"{{"event":"{}"}}"#, "y".repeat(500));
        let err = p().parse(&long).unwrap_err();
        assert_eq!(err.kind(), "unknown_event");
        assert!(err.to_string().len() < 60, "{err}");
    }

    #[test]
    fn accepts_refuses_other_formats() {
        let StreamEvent::Start(good) = p().parse(START).unwrap() else {
            panic!("not a start");
        };
        let alaw = StreamStart {
            encoding: "audio/x-alaw".into(),
            ..good.clone()
        };
        let err = p().accepts(&alaw).unwrap_err();
        assert_eq!(err.kind(), "format");
        assert!(err.to_string().contains("audio/x-alaw"), "{err}");
        let wide = StreamStart {
            sample_rate: 16000,
            ..good.clone()
        };
        let err = p().accepts(&wide).unwrap_err();
        assert_eq!(err.kind(), "format");
        assert!(err.to_string().contains("16000"), "{err}");
        let stereo = StreamStart {
            channels: 2,
            ..good.clone()
        };
        assert_eq!(p().accepts(&stereo).map_err(|e| e.kind()), Err("format"));
        assert_eq!(p().accepts(&good), Ok(()));
    }

    // ----- outgoing frames -----

    #[test]
    fn built_frames_round_trip_as_json() {
        let media: Value = serde_json::from_str(&p().media("MZ1", &[0xff, 0x00, 0x7f])).unwrap();
        assert_eq!(media["event"], "media");
        assert_eq!(media["streamSid"], "MZ1");
        let b64 = media["media"]["payload"].as_str().unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), vec![0xff, 0x00, 0x7f]);

        let name = r#"p"3\"#;
        let mark_text = p().mark("MZ1", name);
        assert!(mark_text.contains(r#"p\"3\\"#), "{mark_text}");
        let mark: Value = serde_json::from_str(&mark_text).unwrap();
        assert_eq!(mark["event"], "mark");
        assert_eq!(mark["streamSid"], "MZ1");
        assert_eq!(mark["mark"]["name"], name);

        let clear: Value = serde_json::from_str(&p().clear("MZ\"1")).unwrap();
        assert_eq!(clear["event"], "clear");
        assert_eq!(clear["streamSid"], "MZ\"1");
        assert_eq!(clear.as_object().unwrap().len(), 2);
    }

    #[test]
    fn our_mark_parses_back_as_their_mark() {
        // Twilio echoes the mark frame we send; the parser must take our own shape.
        let echoed = p().mark("MZ1", "turn-7");
        assert_eq!(
            p().parse(&echoed).unwrap(),
            StreamEvent::Mark {
                name: "turn-7".into()
            }
        );
    }

    // ----- signatures -----

    /// The worked example on twilio.com/docs/usage/security. The caller's
    /// number matters: the docs' signature is for `+14158675310`.
    fn doc_params() -> Vec<(String, String)> {
        params_with_caller("+14158675310")
    }

    fn params_with_caller(caller: &str) -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", caller),
            ("Digits", "1234"),
            ("From", caller),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOC_SIG: &str = "GvWf1cFY/Q7PnoempGyD5oXAezc=";

    #[test]
    fn signature_matches_twilio_documentation_vector() {
        assert_eq!(signature("12345", DOC_URL, &doc_params()), DOC_SIG);
        assert!(signature_matches("12345", DOC_URL, &doc_params(), DOC_SIG));
    }

    /// Same request with the caller `+12349013030` (an older revision of the
    /// docs page); value cross-checked with Python's `hmac`/`hashlib`.
    #[test]
    fn signature_second_vector() {
        let params = params_with_caller("+12349013030");
        let sig = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(signature("12345", DOC_URL, &params), sig);
        assert!(signature_matches("12345", DOC_URL, &params, sig));
        assert!(!signature_matches("12345", DOC_URL, &params, DOC_SIG));
    }

    #[test]
    fn signature_ignores_param_order() {
        let mut shuffled = doc_params();
        shuffled.reverse();
        assert_eq!(signature("12345", DOC_URL, &shuffled), DOC_SIG);
        assert!(signature_matches("12345", DOC_URL, &shuffled, DOC_SIG));
    }

    #[test]
    fn signature_mismatches() {
        let mut tampered = doc_params();
        tampered[2].1 = "1235".into();
        assert!(!signature_matches("12345", DOC_URL, &tampered, DOC_SIG));
        let mut extra = doc_params();
        extra.push(("Evil".into(), "1".into()));
        assert!(!signature_matches("12345", DOC_URL, &extra, DOC_SIG));
        assert!(!signature_matches("12346", DOC_URL, &doc_params(), DOC_SIG));
        assert!(!signature_matches(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &doc_params(),
            DOC_SIG
        ));
        assert!(!signature_matches(
            "",
            DOC_URL,
            &doc_params(),
            &signature("", DOC_URL, &doc_params())
        ));
        for garbage in ["", "not base64!!", "GvWf1cFY", "AAAA"] {
            assert!(!signature_matches("12345", DOC_URL, &doc_params(), garbage));
        }
        // Truncated MACs must not pass.
        let truncated = STANDARD.encode(&STANDARD.decode(DOC_SIG).unwrap()[..10]);
        assert!(!signature_matches(
            "12345",
            DOC_URL,
            &doc_params(),
            &truncated
        ));
    }

    #[test]
    fn signature_header_whitespace_is_tolerated() {
        assert!(signature_matches(
            "12345",
            DOC_URL,
            &doc_params(),
            &format!(" {DOC_SIG}\r\n")
        ));
    }

    #[test]
    fn signature_port_variants() {
        let params = doc_params();
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        // Twilio signed with the port; we reconstructed the URL without it.
        let sig = signature("12345", with_port, &params);
        assert_ne!(sig, DOC_SIG);
        assert!(signature_matches("12345", DOC_URL, &params, &sig));
        // And the reverse.
        assert!(signature_matches("12345", with_port, &params, DOC_SIG));
        // http defaults to 80, not 443.
        let http = "http://example.com/hook";
        let http80 = signature("12345", "http://example.com:80/hook", &params);
        assert!(signature_matches("12345", http, &params, &http80));
        let http443 = signature("12345", "http://example.com:443/hook", &params);
        assert!(!signature_matches("12345", http, &params, &http443));
        // A different host is never a port variant.
        let other = signature("12345", "https://evil.com/myapp.php?foo=1&bar=2", &params);
        assert!(!signature_matches("12345", DOC_URL, &params, &other));
    }

    #[test]
    fn url_variants_cover_odd_authorities() {
        assert_eq!(
            url_variants("https://h/p"),
            vec!["https://h/p".to_string(), "https://h:443/p".to_string()]
        );
        assert_eq!(
            url_variants("https://h"),
            vec!["https://h".to_string(), "https://h:443".to_string()]
        );
        assert_eq!(
            url_variants("https://h:8443/p?x=1:2"),
            vec![
                "https://h:8443/p?x=1:2".to_string(),
                "https://h/p?x=1:2".to_string()
            ]
        );
        assert_eq!(
            url_variants("https://[::1]/p"),
            vec![
                "https://[::1]/p".to_string(),
                "https://[::1]:443/p".to_string()
            ]
        );
        assert_eq!(
            url_variants("https://[::1]:9/p"),
            vec![
                "https://[::1]:9/p".to_string(),
                "https://[::1]/p".to_string()
            ]
        );
        assert_eq!(
            url_variants("https://u:pw@h/p"),
            vec![
                "https://u:pw@h/p".to_string(),
                "https://u:pw@h:443/p".to_string()
            ]
        );
        assert_eq!(url_variants("no scheme"), vec!["no scheme".to_string()]);
        assert_eq!(
            url_variants("https://h:x/p"),
            vec!["https://h:x/p".to_string()]
        );
        assert_eq!(url_variants("ftp://h/p"), vec!["ftp://h/p".to_string()]);
    }

    // ----- TwiML -----

    #[test]
    fn twiml_connect_stream() {
        let xml = connect_stream(
            "wss://izwi.example/stream?a=1&b=2",
            "https://izwi.example/twilio/stream-ended",
            &[("token", "t.0f"), ("x&\"<>'", "v&\"<>'\n\u{1}")],
        );
        assert!(xml.starts_with(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect action="https://izwi.example/twilio/stream-ended">"#
        ));
        assert!(
            xml.contains(r#"<Stream url="wss://izwi.example/stream?a=1&amp;b=2">"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<Parameter name="token" value="t.0f"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<Parameter name="x&amp;&quot;&lt;&gt;&apos;" value="v&amp;&quot;&lt;&gt;&apos;&#10;"/>"#),
            "{xml}"
        );
        assert!(xml.ends_with("</Stream></Connect></Response>"));
        assert_well_formed(&xml);
    }

    #[test]
    fn twiml_without_parameters() {
        let xml = connect_stream("wss://h/s", "https://h/a?x=1&y=2", &[]);
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect action="https://h/a?x=1&amp;y=2"><Stream url="wss://h/s"></Stream></Connect></Response>"#
        );
        assert_well_formed(&xml);
    }

    #[test]
    fn twiml_dial_and_hangup() {
        assert_eq!(
            dial("+263771000111"),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+263771000111</Dial></Response>"#
        );
        assert_eq!(
            dial("sip:desk@pbx.example;transport=tcp"),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Sip>sip:desk@pbx.example;transport=tcp</Sip></Dial></Response>"#
        );
        for xml in [dial("sip:a@b&c"), dial("+1<2>"), hangup()] {
            roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        }
    }

    /// A small checker: tags balance, attribute values contain no raw `<`,
    /// `"` or stray `&`, and nothing but whitespace sits outside tags.
    fn assert_well_formed(xml: &str) {
        let body = xml
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .expect("XML declaration");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let open = rest.find('<').expect("tag");
            assert!(rest[..open].trim().is_empty(), "text outside tags: {rest}");
            let close = find_tag_end(&rest[open..]) + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
            while !attrs.trim().is_empty() {
                let (_, after) = attrs.split_once("=\"").expect("attr=");
                let end = after.find('"').expect("closing quote");
                check_escaped(&after[..end]);
                attrs = &after[end + 1..];
            }
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    /// The `>` ending a tag, skipping any inside quoted attributes.
    fn find_tag_end(s: &str) -> usize {
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '>' if !quoted => return i,
                _ => {}
            }
        }
        panic!("unterminated tag: {s}");
    }

    fn check_escaped(value: &str) {
        assert!(!value.contains('<') && !value.contains('"'), "{value}");
        let mut rest = value;
        while let Some(i) = rest.find('&') {
            let semi = rest[i..].find(';').expect("entity end") + i;
            let entity = &rest[i + 1..semi];
            assert!(
                ["amp", "lt", "gt", "quot", "apos"].contains(&entity)
                    || entity
                        .strip_prefix('#')
                        .is_some_and(|n| n.parse::<u32>().is_ok()),
                "bad entity &{entity};"
            );
            rest = &rest[semi + 1..];
        }
        assert!(
            !value.chars().any(|c| c < ' '),
            "raw control char in {value:?}"
        );
    }

    // ----- stream tokens -----

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn stream_token_round_trip() {
        let t = stream_token("k", NOW, "CA1");
        assert!(t.starts_with("1700000000."), "{t}");
        assert_eq!(t.len(), "1700000000.".len() + 64);
        assert!(check_stream_token("k", &t, "CA1", NOW, 60));
        assert!(check_stream_token("k", &t, "CA1", NOW + 60, 60));
        // Known value pins the message format ("izwi-stream:{ts}").
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(b"izwi-stream:1700000000:CA1");
        assert_eq!(
            t,
            format!("1700000000.{}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn a_stream_token_is_good_only_for_its_call() {
        let t = stream_token("k", NOW, "CA1");
        assert!(check_stream_token("k", &t, "CA1", NOW, 60));
        assert!(!check_stream_token("k", &t, "CA2", NOW, 60));
        assert!(!check_stream_token("k", &t, "", NOW, 60));
    }

    #[test]
    fn stream_token_expiry_and_future() {
        let t = stream_token("k", NOW, "CA1");
        assert!(!check_stream_token("k", &t, "CA1", NOW + 61, 60));
        assert!(check_stream_token("k", &t, "CA1", NOW - 30, 60));
        assert!(!check_stream_token("k", &t, "CA1", NOW - 31, 60));
        let far = stream_token("k", u64::MAX, "CA1");
        assert!(!check_stream_token("k", &far, "CA1", NOW, u64::MAX));
        assert!(check_stream_token("k", &far, "CA1", u64::MAX, 0));
    }

    #[test]
    fn stream_token_tampering() {
        let t = stream_token("k", NOW, "CA1");
        assert!(!check_stream_token("other", &t, "CA1", NOW, 60));
        assert!(!check_stream_token(
            "",
            &stream_token("", NOW, "CA1"),
            "CA1",
            NOW,
            60
        ));
        let (ts, mac) = t.split_once('.').unwrap();
        // Same MAC on a fresher timestamp must fail, or tokens never expire.
        assert!(!check_stream_token(
            "k",
            &format!("{}.{mac}", NOW + 1),
            "CA1",
            NOW + 1,
            60
        ));
        let mut flipped = mac.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(!check_stream_token(
            "k",
            &format!("{ts}.{flipped}"),
            "CA1",
            NOW,
            60
        ));
        assert!(!check_stream_token(
            "k",
            &format!("{ts}.{}", &mac[..32]),
            "CA1",
            NOW,
            60
        ));
        assert!(!check_stream_token("k", &format!("+{t}"), "CA1", NOW, 60));
        assert!(!check_stream_token("k", &format!("0{t}"), "CA1", NOW, 60));
        assert!(!check_stream_token("k", &format!("{t}00"), "CA1", NOW, 60));
        // Uppercase hex of the right MAC is the same bytes; accepted.
        assert!(check_stream_token(
            "k",
            &format!("{ts}.{}", mac.to_uppercase()),
            "CA1",
            NOW,
            60
        ));
    }

    #[test]
    fn stream_token_garbage_never_panics_or_passes() {
        let huge = format!("{}.{}", "9".repeat(400), "ab".repeat(32));
        for garbage in [
            "",
            ".",
            "nodot",
            "abc.def",
            "1700000000",
            "1700000000.",
            ".deadbeef",
            "1700000000.zz",
            "1700000000.abc",
            "-1.00",
            "18446744073709551616.00",
            "1700000000.é",
            "١٧٠٠.00",
            &huge,
        ] {
            assert!(
                !check_stream_token("k", garbage, "CA1", NOW, u64::MAX),
                "{garbage:?}"
            );
            assert!(
                !check_stream_token("k", garbage, "CA1", u64::MAX, u64::MAX),
                "{garbage:?}"
            );
            assert!(
                !check_stream_token("k", garbage, "CA1", 0, 0),
                "{garbage:?}"
            );
        }
    }

    // ----- form bodies -----

    #[test]
    fn parse_form_decoding() {
        let form = parse_form(
            "From=%2B12349013030&Body=hello+world&Pct=100%25&Bad=%zz%4&Empty=&Flag&A=1&A=2&&=v&caf%C3%A9=%E2%9C%93",
        );
        let want: Vec<(String, String)> = [
            ("From", "+12349013030"),
            ("Body", "hello world"),
            ("Pct", "100%"),
            ("Bad", "%zz%4"),
            ("Empty", ""),
            ("Flag", ""),
            ("A", "1"),
            ("A", "2"),
            ("", "v"),
            ("café", "✓"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(form, want);
    }

    #[test]
    fn parse_form_edge_cases() {
        assert!(parse_form("").is_empty());
        assert!(parse_form("&&").is_empty());
        assert_eq!(parse_form("a=b=c"), vec![("a".into(), "b=c".into())]);
        assert_eq!(parse_form("%"), vec![("%".into(), String::new())]);
        assert_eq!(parse_form("x=%FF"), vec![("x".into(), "\u{fffd}".into())]);
        assert_eq!(parse_form("x=%2b%2B+"), vec![("x".into(), "++ ".into())]);
    }

    #[test]
    fn parsed_form_feeds_the_signature() {
        let body = "To=%2B18005551212&CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310";
        assert!(signature_matches(
            "12345",
            DOC_URL,
            &parse_form(body),
            DOC_SIG
        ));
    }
}
