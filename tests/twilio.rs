//! Twilio's voice webhook and Media Streams against an independent client of
//! the protocol (streamdouble, from PyPI), on 127.0.0.1 only.

mod common;

use std::path::Path;
use std::time::Duration;

use common::sip_peer::Izwi;
use common::twilio::{self, AUTH_TOKEN, PUBLIC_URL};

/// Writes 16 kHz engine audio as the 8 kHz mono WAV streamdouble sends.
fn write_caller(path: &Path, audio16: &[f32]) {
    let audio = izwi::codec::resample::resample(audio16, 16_000, 8_000).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).unwrap();
    for s in audio {
        wav.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    wav.finalize().unwrap();
}

#[test]
fn the_voice_webhook_checks_signatures_and_answers_with_twiml() {
    let izwi = Izwi::start(&twilio::env());
    // A correctly signed request: TwiML that parses as XML, with the stream URL.
    let (url, params) = twilio::connect(&izwi, "CA0001");
    assert_eq!(url, "wss://izwi.example.test/twilio/stream");
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} parameter in {params:?}"))
    };
    assert_eq!(param("callSid"), "CA0001");
    assert_eq!(param("caller"), "+263771234567");
    assert_eq!(param("called"), "+263242000000");
    assert!(!param("token").is_empty());

    let call = twilio::call_params("CA0002");
    let refs: Vec<(&str, &str)> = call.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let voice = format!("{PUBLIC_URL}/twilio/voice");
    let good = twilio::sign(AUTH_TOKEN, &voice, &refs);
    // Unsigned.
    let (status, _) = twilio::post_voice(&izwi, &call, None);
    assert_eq!(status, 403);
    // Tampered: a parameter changed after signing.
    let mut tampered = call.clone();
    tampered[3].1 = "+263779999999".into();
    let (status, _) = twilio::post_voice(&izwi, &tampered, Some(&good));
    assert_eq!(status, 403);
    // Signed with another account's token, or for another URL.
    let other = twilio::sign("not-the-token", &voice, &refs);
    assert_eq!(twilio::post_voice(&izwi, &call, Some(&other)).0, 403);
    let elsewhere = twilio::sign(AUTH_TOKEN, "https://attacker.test/twilio/voice", &refs);
    assert_eq!(twilio::post_voice(&izwi, &call, Some(&elsewhere)).0, 403);
    // And the right one again.
    assert_eq!(twilio::post_voice(&izwi, &call, Some(&good)).0, 200);

    let log = izwi.log();
    assert_eq!(log.matches("voice webhook refused").count(), 4, "{log}");
    // Refusals are logged without the payload: no caller numbers in the log.
    assert!(!log.contains("+26377"), "{log}");
    // A stream without our token (one that did not come from our TwiML) is refused.
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let tone: Vec<f32> = (0..16_000)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 0.3)
        .collect();
    write_caller(&wav, &tone);
    let url = twilio::local_stream_url(&izwi);
    let args = [
        "call",
        url.as_str(),
        "--audio",
        wav.to_str().unwrap(),
        "--json",
    ];
    let forged = [("token".to_string(), "1700000000.00ff".to_string())];
    let out = twilio::streamdouble(&izwi, &args, &forged);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    izwi.wait_log(
        "media stream without a valid token refused",
        Duration::from_secs(5),
    );
    // With the TwiML's own parameters the same stream is taken.
    let out = twilio::streamdouble(&izwi, &args, &params);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        izwi.log()
    );
}

/// A caller on a Twilio stream asks a question and hears a spoken answer from
/// the real engine (small models); Izwi marks each phrase and Twilio's echoes
/// come back.
#[test]
fn a_twilio_caller_asks_and_hears_a_spoken_answer() {
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("IZWI_HTTP_PUBLIC_URL", PUBLIC_URL),
    ]);
    let (_, params) = twilio::connect(&izwi, "CA1001");
    let dir = tempfile::tempdir().unwrap();
    let question = common::espeak("What time does the clinic open on Monday?");
    let ask_at = 4.0;
    let question_end = ask_at + common::duration(&question);
    let caller = common::compose(question_end + 8.0, &[(ask_at, &question)]);
    let wav = dir.path().join("caller.wav");
    write_caller(&wav, &caller);
    let stereo = dir.path().join("call.wav");
    let out = twilio::streamdouble(
        &izwi,
        &[
            "call",
            &twilio::local_stream_url(&izwi),
            "--audio",
            wav.to_str().unwrap(),
            "--record-stereo",
            stereo.to_str().unwrap(),
            "--json",
        ],
        &params,
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", izwi.log());
    let json: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(json["violations"], serde_json::json!([]), "{report}");
    assert!(json["marks_echoed"].as_u64().unwrap_or(0) >= 2, "{report}");

    // The agent's channel, placed at arrival times: the reply after the question.
    let mut reader = hound::WavReader::open(&stereo).unwrap();
    let rate = reader.spec().sample_rate;
    let agent: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .skip(1)
        .step_by(2)
        .collect();
    let from = ((question_end * rate as f64) as usize).min(agent.len());
    let reply = izwi::codec::resample::resample(&agent[from..], rate, 16_000).unwrap();
    let heard = common::engine().asr.transcribe(&reply, "en").unwrap();
    assert!(
        common::words(&heard).len() >= 4,
        "no spoken answer in what the caller heard: {heard:?}\n{}",
        izwi.log()
    );
    let line = izwi.wait_line("media stream ended", Duration::from_secs(5));
    assert!(line.contains("end=stream_stop"), "{line}");
    assert!(line.contains("turns=2"), "greeting and one answer: {line}");
}

/// The caller talks over the answer: Izwi sends `clear`; then keys pressed on
/// the phone arrive as digit events.
#[test]
fn barge_in_sends_clear_and_dtmf_arrives() {
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("IZWI_HTTP_PUBLIC_URL", PUBLIC_URL),
    ]);
    let (_, params) = twilio::connect(&izwi, "CA2001");
    let dir = tempfile::tempdir().unwrap();
    write_caller(
        &dir.path().join("question.wav"),
        &common::espeak("Can you tell me about the services your clinic offers?"),
    );
    write_caller(
        &dir.path().join("interrupt.wav"),
        &common::espeak("Sorry, wait, I need to ask something else please."),
    );
    let scenario = dir.path().join("barge-in.yaml");
    std::fs::write(
        &scenario,
        "name: the caller interrupts the answer, then presses keys\n\
         steps:\n\
         \x20 - wait_for: quiet\n\
         \x20 - say: question.wav\n\
         \x20 - wait: 3.0\n\
         \x20 - say: interrupt.wav\n\
         \x20 - expect: clear\n\
         \x20 - wait: 1.0\n\
         \x20 - dtmf: \"42\"\n\
         \x20 - wait: 1.0\n\
         \x20 - hangup\n",
    )
    .unwrap();
    let out = twilio::scenario(&izwi, &scenario, &params);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", izwi.log());
    let log = izwi.wait_log("media stream ended", Duration::from_secs(10));
    let line = izwi.wait_line("media stream ended", Duration::from_secs(10));
    assert!(line.contains("clears=1"), "{line}");
    assert!(line.contains("dtmf=2"), "{line}");
    assert!(log.contains("barge-in"), "{log}");
}
