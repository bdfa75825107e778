//! Twilio's side of a call, as its documentation describes it: a signed voice
//! webhook, and the streamdouble simulator for the Media Stream. The signature
//! is computed here from the documented algorithm, not with Izwi's code.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::sip_peer::Izwi;

pub const AUTH_TOKEN: &str = "test-auth-token-0123456789";
/// The public address Izwi is told it has (signatures are computed on it).
pub const PUBLIC_URL: &str = "https://izwi.example.test";

/// Environment for an Izwi that serves Twilio with signatures checked.
pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IZWI_TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("IZWI_HTTP_PUBLIC_URL", PUBLIC_URL),
    ]
}

/// X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL + each POST parameter's
/// name and value, sorted by name)).
pub fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn call_params(call_sid: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", "ACtest".to_string()),
        ("CallSid", call_sid.to_string()),
        ("From", "+263771234567".to_string()),
        ("To", "+263242000000".to_string()),
        ("CallStatus", "ringing".to_string()),
        ("Direction", "inbound".to_string()),
    ]
}

/// POSTs the voice webhook; `signature` None sends none. Returns (status, body).
pub fn post_voice(
    izwi: &Izwi,
    params: &[(&str, String)],
    signature: Option<&str>,
) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/twilio/voice", izwi.http_port);
    let mut req = ureq::post(&url);
    if let Some(s) = signature {
        req = req.set("X-Twilio-Signature", s);
    }
    let form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match req.send_form(&form) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("webhook request failed: {e}\n{}", izwi.log()),
    }
}

/// A correctly signed webhook for a new call: the stream URL and parameters
/// of the TwiML Izwi answers with.
pub fn connect(izwi: &Izwi, call_sid: &str) -> (String, Vec<(String, String)>) {
    connect_with(izwi, &call_params(call_sid))
}

/// [`connect`] with the webhook's parameters given.
pub fn connect_with(izwi: &Izwi, params: &[(&str, String)]) -> (String, Vec<(String, String)>) {
    let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let signature = sign(AUTH_TOKEN, &format!("{PUBLIC_URL}/twilio/voice"), &refs);
    let (status, body) = post_voice(izwi, params, Some(&signature));
    assert_eq!(status, 200, "{body}\n{}", izwi.log());
    let doc = roxmltree::Document::parse(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let stream = doc
        .descendants()
        .find(|n| n.has_tag_name("Stream"))
        .unwrap_or_else(|| panic!("no <Stream> in {body}"));
    let url = stream.attribute("url").unwrap().to_string();
    let params = stream
        .children()
        .filter(|n| n.has_tag_name("Parameter"))
        .map(|n| {
            (
                n.attribute("name").unwrap().to_string(),
                n.attribute("value").unwrap().to_string(),
            )
        })
        .collect();
    (url, params)
}

/// The stream URL as Twilio would reach it, but on the test's own listener.
pub fn local_stream_url(izwi: &Izwi) -> String {
    format!("ws://127.0.0.1:{}/twilio/stream", izwi.http_port)
}

/// streamdouble with `args` and the TwiML's `params`; it must end by itself
/// (a code, not a signal).
pub fn streamdouble(
    izwi: &Izwi,
    args: &[&str],
    params: &[(String, String)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(pytools().join("streamdouble"));
    cmd.args(args);
    for (k, v) in params {
        cmd.args(["--param", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("streamdouble (make test-tools)");
    assert!(
        out.status.code().is_some(),
        "streamdouble was killed\n{}",
        izwi.log()
    );
    out
}

/// streamdouble plays the scenario file `scenario` against Izwi's stream.
pub fn scenario(izwi: &Izwi, scenario: &Path, params: &[(String, String)]) -> std::process::Output {
    streamdouble(
        izwi,
        &[
            "scenario",
            scenario.to_str().unwrap(),
            &local_stream_url(izwi),
            "--json",
        ],
        params,
    )
}

/// The Python clients' virtual environment, made by `make test-tools`.
pub fn pytools() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin");
    assert!(
        dir.join("streamdouble").exists(),
        "streamdouble is missing: run `make test-tools` (make test does)"
    );
    dir
}
