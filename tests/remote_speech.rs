//! Agents whose recogniser and voice are real OpenAI-compatible servers from
//! PyPI (faster-whisper-server on Whisper tiny.en, local-tts-studio on a
//! Piper voice): a question heard and answered through `izwi talk` and over
//! a SIP call from baresip, in both of the voice's formats, and the failure
//! policy when a server is down or refuses the key.
//!
//! The voice server speaks at 0.1 of its full loudness (the same Piper
//! voice as the embedded one, which is some 2.5 times quieter than piper-tts
//! at full scale), so that what the caller hears shows which one spoke.

mod common;

use std::path::Path;

use common::attack::{metric, metrics};
use common::sip_peer::*;
use common::speech_server::SpeechServer;
use common::*;
use izwi::audio::ENGINE_RATE;

/// The voice server's key, and the variable the configuration names for it.
const KEY: &str = "izwi-voice-key";
const KEY_VAR: &str = "VOICE_SERVER_KEY";
const VOLUME: f32 = 0.1;

/// Backends `whisper` and `voice`/`voice_wav` (the real servers), their
/// `*_down` twins where nothing listens (`*_down_local`: the embedded model
/// stands in), `voice_wrong_key`; and an agent on each.
fn config_file(dir: &Path, asr: &SpeechServer, tts: &SpeechServer) -> std::path::PathBuf {
    let closed = format!("http://127.0.0.1:{}/v1", free_tcp_port());
    let (asr_url, tts_url) = (asr.base_url(), tts.base_url());
    // The tests share 2 cores with other tests' servers and models.
    // Short answers from the embedded model where it stands in: a long one
    // would still be playing when the caller asks again, and be cut off.
    let mut text = format!(
        r#"
[engine]
llm_max_reply_tokens = 24

[asr.whisper]
base_url = "{asr_url}"
model = "whisper-1"
timeout_ms = 60000

[asr.whisper_down]
base_url = "{closed}"
model = "whisper-1"
connect_timeout_ms = 500

[asr.whisper_down_local]
base_url = "{closed}"
model = "whisper-1"
fallback = "local"

[tts.voice]
base_url = "{tts_url}"
model = "tts-1"
api_key_env = "{KEY_VAR}"
first_audio_timeout_ms = 60000
idle_timeout_ms = 30000

[tts.voice_wav]
base_url = "{tts_url}"
model = "tts-1"
api_key_env = "{KEY_VAR}"
response_format = "wav"
first_audio_timeout_ms = 60000
idle_timeout_ms = 30000

[tts.voice_wrong_key]
base_url = "{tts_url}"
model = "tts-1"
api_key = "not-the-key"

[tts.voice_down]
base_url = "{closed}"
model = "tts-1"
connect_timeout_ms = 500

[tts.voice_down_local]
base_url = "{closed}"
model = "tts-1"
fallback = "local"
"#
    );
    for (agent, asr, tts) in [
        ("embedded", "local", "local"),
        ("remote", "whisper", "voice"),
        ("remote_wav", "whisper", "voice_wav"),
        ("asr_down", "whisper_down", "local"),
        ("asr_down_local", "whisper_down_local", "local"),
        ("tts_down", "local", "voice_down"),
        ("tts_down_local", "local", "voice_down_local"),
        ("tts_wrong_key", "local", "voice_wrong_key"),
    ] {
        text.push_str(&format!(
            "\n[agents.{agent}]\nlanguage = \"en\"\nasr = \"{asr}\"\ntts = \"{tts}\"\n\
             asr_prompt = \"Clinic, appointment, opening hours.\"\n\
             system_prompt = \"You are a friendly clinic receptionist. Answer in one short sentence.\"\n\
             greeting = \"Hello, this is the clinic.\"\n"
        ));
    }
    let path = dir.join("izwi.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The caller: the greeting heard, then each question in turn, with room
/// for the answer after each.
fn caller(questions: &[&str]) -> (Vec<f32>, Vec<(f64, f64)>) {
    asking(3.0, questions, 7.0)
}

fn talk(config: &Path, agent: &str, audio: &[f32]) -> Talked {
    izwi_talk(
        config.parent().unwrap(),
        audio,
        &[
            "--config",
            config.to_str().unwrap(),
            "--agent",
            agent,
            "--fast",
        ],
        &[(KEY_VAR, KEY)],
    )
}

fn outcomes(t: &Talked) -> Vec<String> {
    t.turns
        .iter()
        .map(|t| t["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn izwi_talk_is_heard_and_answered_by_the_servers() {
    let _one = one_at_a_time();
    let asr = SpeechServer::asr();
    let tts = SpeechServer::tts(VOLUME, KEY);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &asr, &tts);
    let (audio, spans) = caller(&["What time does the clinic open in the morning?"]);
    let (_, end) = spans[0];

    let embedded = talk(&config, "embedded", &audio);
    let embedded_level = peak_rms(&embedded.agent, 0.0, 3.0);
    assert!(embedded_level > 0.02, "the embedded greeting is silent");

    for agent in ["remote", "remote_wav"] {
        let before = asr.transcriptions(200);
        let t = talk(&config, agent, &audio);
        assert_eq!(outcomes(&t), ["answered"], "{agent}: {}", t.stdout);
        let turn = &t.turns[0];
        // The server heard the question: its words, in the record's count.
        assert!(
            turn["words_heard"].as_u64().unwrap() >= 5,
            "{agent}: {turn}\n{}",
            asr.log()
        );
        assert!(
            asr.transcriptions(200) > before,
            "{agent}: the recognition server was not asked\n{}",
            asr.log()
        );
        // The greeting and the answer are the server's voice: the same
        // Piper voice, at its volume.
        let greeting = peak_rms(&t.agent, 0.0, 3.0);
        let answer_level = peak_rms(&t.agent, end, end + 7.0);
        for (what, level) in [("greeting", greeting), ("answer", answer_level)] {
            assert!(
                level > 0.05 * embedded_level && level < 0.45 * embedded_level,
                "{agent}: the {what} is not the server's voice: {level:.4} against the \
                 embedded voice's {embedded_level:.4}"
            );
        }
        assert!(heard(&t.agent, 0.0, 3.0).contains("clinic"), "{agent}");
        let answer = heard(&t.agent, end, end + 7.0);
        assert!(
            words(&answer).len() >= 3,
            "{agent}: the answer is not several words of speech: {answer:?}"
        );
    }
}

#[test]
fn a_server_down_or_refusing_gets_the_fallback_and_the_call_goes_on() {
    let _one = one_at_a_time();
    let asr = SpeechServer::asr();
    let tts = SpeechServer::tts(VOLUME, KEY);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &asr, &tts);
    // Room for the embedded model's answer (24 tokens), less than the
    // silence policy's 15 s.
    let (audio, spans) = asking(
        3.0,
        &["What time does the clinic open?", "And when does it close?"],
        10.0,
    );

    // The caller hears the fallback phrase each turn, and the call goes on.
    for agent in ["asr_down", "tts_down", "tts_wrong_key"] {
        let t = talk(&config, agent, &audio);
        assert_eq!(
            outcomes(&t),
            ["fallback", "fallback"],
            "{agent}: {}",
            t.stdout
        );
        for (_, end) in &spans {
            let said = heard(&t.agent, *end, end + 6.0);
            assert!(
                said.contains("sorry"),
                "{agent}: no fallback phrase: {said:?}"
            );
        }
        assert!(
            t.stdout.contains("ended: talk_end"),
            "{agent}: {}",
            t.stdout
        );
    }
    // The embedded model stands in: answered all the same.
    for agent in ["asr_down_local", "tts_down_local"] {
        let t = talk(&config, agent, &audio);
        assert_eq!(
            outcomes(&t),
            ["answered", "answered"],
            "{agent}: {}",
            t.stdout
        );
        let said = heard(&t.agent, spans[0].1, spans[0].1 + 6.0);
        assert!(
            !said.contains("sorry") && words(&said).len() >= 2,
            "{agent}: {said:?}"
        );
    }
}

/// Over SIP, from baresip: the servers hear and speak the call; a second
/// call, to an agent whose recogniser is down, hears the fallback phrase,
/// and the failure is counted by backend and kind.
#[test]
fn a_sip_call_is_heard_and_answered_by_the_servers() {
    let _one = one_at_a_time();
    let asr = SpeechServer::asr();
    let tts = SpeechServer::tts(VOLUME, KEY);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &asr, &tts);
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[rule]]\nname = \"down-line\"\nagent = \"asr_down\"\nto = \"200\"\n\n\
         [default]\nagent = \"remote\"\n",
    )
    .unwrap();
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", &common::config().models.profile),
        ("IZWI_CONFIG", config.to_str().unwrap()),
        ("IZWI_DIALPLAN_FILE", plan.to_str().unwrap()),
        (KEY_VAR, KEY),
    ]);

    let (mut q, spans) = caller(&["What time does the clinic open in the morning?"]);
    // Room for an answer that starts late on a busy machine.
    q.extend(vec![0.0; seconds(5.0)]);
    let before = asr.transcriptions(200);
    let received = baresip_asks(&izwi, "100", &q, 30);
    let (_, end) = spans[0];
    // The whole answer, however late it starts.
    let end_of_call = received.len() as f64 / ENGINE_RATE as f64;
    assert!(
        heard(&received, 0.0, 3.0).contains("clinic"),
        "no greeting from the voice server\n{}",
        izwi.log()
    );
    let answer = heard(&received, end, end_of_call);
    assert!(
        words(&answer).len() >= 3,
        "no answer heard: {answer:?}\n{}",
        izwi.log()
    );
    assert!(
        asr.transcriptions(200) > before,
        "the recognition server was not asked\n{}",
        asr.log()
    );

    let failures = || {
        metric(
            &metrics(&izwi),
            "izwi_engine_failures_total",
            &[("backend", "whisper_down"), ("kind", "connect")],
        )
    };
    let before = failures();
    let received = baresip_asks(&izwi, "200", &q, 30);
    let said = heard(&received, end, received.len() as f64 / ENGINE_RATE as f64);
    assert!(
        said.contains("sorry"),
        "no fallback phrase: {said:?}\n{}",
        izwi.log()
    );
    assert!(failures() - before >= 1.0, "{}", izwi.log());
}
