//! A spoken question gets a spoken answer, and barge-in, on the real models and
//! the simulated audio clock (so every assertion about time is deterministic).

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use izwi::audio::ENGINE_RATE;
use izwi::call::Agent;
use izwi::call::conversation::TurnOutcome;
use izwi::codec::wav;
use izwi::engine::Speaker;
use izwi::talk::{Clock, TalkOutcome, talk};

const QUESTION: &str = "What time does the clinic open on Monday?";
/// After the greeting (about three seconds).
const ASK_AT: f64 = 4.0;

async fn converse(caller: &[f32]) -> TalkOutcome {
    let engine = engine();
    let cfg = config();
    let (name, profile) = cfg.default_agent();
    let agent = Arc::new(Agent::prepare(&engine, name, profile).await.unwrap());
    talk(engine, agent, &cfg.turn, caller, Clock::Simulated)
        .await
        .unwrap()
}

fn at_ms(v: Option<f64>) -> f64 {
    v.expect("time recorded") / 1000.0
}

#[test]
fn izwi_talk_answers_a_spoken_question_with_speech() {
    let dir = tempfile::tempdir().unwrap();
    let question = espeak(QUESTION);
    let caller = compose(ASK_AT + duration(&question) + 8.0, &[(ASK_AT, &question)]);
    let input = dir.path().join("caller.wav");
    let output = dir.path().join("agent.wav");
    wav::write_mono(&input, &caller, ENGINE_RATE).unwrap();

    let records = dir.path().join("records.db");
    let out = Command::new(izwi_bin())
        .env("IZWI_MODELS_PROFILE", config().models.profile)
        .env("IZWI_RECORDS_PATH", &records)
        .env("IZWI_LOG_FORMAT", "json")
        .env("IZWI_LOG_LEVEL", "debug")
        .args(["talk", "--fast", "--json", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "izwi talk failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("end→audio"), "no report table: {stdout}");

    let turn: serde_json::Value = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|t| t["greeting"] == false)
        .expect("a turn record for the question");
    assert_eq!(turn["outcome"], "answered", "{turn}");
    assert!(turn["words_heard"].as_u64().unwrap() >= 5, "{turn}");
    let first_audio = turn["first_audio_at_ms"].as_f64().unwrap() / 1000.0;
    let speech_end = turn["speech_end_at_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        first_audio > speech_end && first_audio < speech_end + 1.5,
        "{turn}"
    );

    let (agent, rate) = wav::read_mono(&output).unwrap();
    assert_eq!(rate, ENGINE_RATE);
    assert!(
        agent.len() >= caller.len(),
        "agent side shorter than the caller's"
    );
    // Silent while the caller asks: the greeting ended before the question.
    assert_eq!(peak_rms(&agent, ASK_AT, speech_end), 0.0);
    let reply = &agent[seconds(first_audio)..];
    let heard = engine().asr.transcribe(reply, "en").unwrap();
    let w = words(&heard);
    assert!(
        w.len() >= 4,
        "the reply is not several words of speech: {heard:?}"
    );
    assert_ne!(words(QUESTION), w, "the agent repeated the question");

    // The call's record: one row and its turns, with plausible timings.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("call ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no call id printed: {stdout}"))
        .to_string();
    let show = Command::new(izwi_bin())
        .env("IZWI_RECORDS_PATH", &records)
        .args(["calls", "show", &id, "--json"])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let call = &record["call"];
    assert_eq!(call["transport"], "talk", "{record}");
    assert_eq!(call["outcome"], "completed", "{record}");
    assert_eq!(call["agent"], "english", "{record}");
    assert_eq!(call["turns"], 2, "greeting and the answer: {record}");
    assert_eq!(call["barge_ins"], 0, "{record}");
    assert!(call["duration_ms"].as_i64().unwrap() > 0, "{record}");
    let answer = record["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["greeting"] == false)
        .unwrap_or_else(|| panic!("no answered turn: {record}"));
    assert_eq!(answer["outcome"], "answered", "{record}");
    let ms = |k: &str| {
        answer[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {record}"))
    };
    assert!(
        ms("response_ms") > 0.0 && ms("response_ms") < 3000.0,
        "{record}"
    );
    for k in [
        "asr_ms",
        "llm_first_token_ms",
        "tts_first_audio_ms",
        "llm_tokens_per_s",
    ] {
        assert!(ms(k) > 0.0, "{k}: {record}");
    }
    assert!(answer["words_heard"].as_u64().unwrap() >= 5, "{record}");
    assert!(answer["words_spoken"].as_u64().unwrap() >= 4, "{record}");
    let list = Command::new(izwi_bin())
        .env("IZWI_RECORDS_PATH", &records)
        .args(["calls", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));

    // Logs are JSON lines; per-turn lines carry the call and turn ids.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "turn" {
            assert_eq!(v["fields"]["call"], id.as_str(), "{line}");
            assert!(v["fields"]["turn"].is_u64(), "{line}");
        }
    }
    assert!(
        stderr.contains("\"message\":\"turn\""),
        "no turn log lines: {stderr}"
    );
    // Nothing the caller said, nor the agent's words, is kept: not in any log
    // line, not in the database (its file and write-ahead log).
    let mut db = std::fs::read(&records).unwrap();
    let mut wal = records.clone().into_os_string();
    wal.push("-wal");
    db.extend(std::fs::read(&wal).unwrap_or_default());
    let kept = format!("{stdout}\n{stderr}\n{}", String::from_utf8_lossy(&db)).to_lowercase();
    let said: Vec<String> = words(QUESTION)
        .into_iter()
        .chain(w.iter().cloned())
        .filter(|word| word.len() >= 6)
        // Izwi's own vocabulary (field names, labels) may happen to be in a reply.
        .filter(|word| {
            ![
                "answered",
                "completed",
                "english",
                "greeting",
                "records",
                "caller",
                "failed",
                "interrupted",
                "outcome",
                "models",
                "agent",
                "heard",
                "spoken",
            ]
            .contains(&word.as_str())
        })
        .collect();
    assert!(said.len() >= 2, "{said:?}");
    for word in &said {
        assert!(
            !kept.contains(word.as_str()),
            "`{word}` was kept in the logs or the database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_agent_within_250ms_and_keeps_only_what_was_heard() {
    let question = espeak(QUESTION);
    let total = ASK_AT + duration(&question) + 10.0;
    let first = converse(&compose(total, &[(ASK_AT, &question)])).await;
    let reply = first.turns.iter().find(|t| !t.greeting).expect("a reply");
    let reply_at = at_ms(reply.first_audio_at_ms);
    let reply_len = duration(&first.agent_audio[seconds(reply_at)..])
        - first
            .agent_audio
            .iter()
            .rev()
            .take_while(|s| **s == 0.0)
            .count() as f64
            / ENGINE_RATE as f64;
    assert!(
        reply_len > 2.0,
        "the reply ({reply_len:.1} s) is too short to interrupt"
    );

    // The same call again, but the caller cuts in 0.5 s into the reply:
    // within its first phrase (four words), whatever the load.
    let cut = espeak("Wait, I have another question about my appointment.");
    let speech_onset = reply_at + 0.5;
    let place = speech_onset - onset(&cut);
    let caller = compose(
        place + duration(&cut) + 10.0,
        &[(ASK_AT, &question), (place, &cut)],
    );
    let second = converse(&caller).await;
    let turn = second.turns.iter().find(|t| !t.greeting).unwrap();
    assert_eq!(
        at_ms(turn.first_audio_at_ms),
        reply_at,
        "same call, same timing"
    );
    assert!(turn.barged_in, "{turn:?}");
    assert_eq!(turn.outcome, TurnOutcome::Interrupted);

    let agent = &second.agent_audio;
    assert!(
        peak_rms(agent, speech_onset - 0.3, speech_onset) > 0.01,
        "agent was not speaking"
    );
    // The last agent sound after the caller's onset, while the caller speaks
    // (the answer to the interruption may follow the caller's last word).
    let from = seconds(speech_onset);
    let until = seconds(place + speech_end(&cut));
    let last_sound = (from..until)
        .rev()
        .find(|&i| agent[i] != 0.0)
        .unwrap_or(from);
    let stop_after = (last_sound - from) as f64 / ENGINE_RATE as f64;
    println!(
        "agent audio stopped {:.0} ms after the caller's onset",
        stop_after * 1000.0
    );
    assert!(
        stop_after <= 0.25,
        "agent kept talking {stop_after:.3} s over the caller"
    );

    // The history keeps only what the caller heard of the interrupted reply.
    assert!(turn.words_spoken < turn.words_generated, "{turn:?}");
    let said = second
        .history
        .iter()
        .filter(|m| m.speaker == Speaker::Assistant)
        .nth(1)
        .expect("the interrupted reply is in the history");
    assert_eq!(said.text.split_whitespace().count(), turn.words_spoken);
    // And the interruption is itself heard and answered.
    let next = second
        .turns
        .iter()
        .find(|t| t.index == 2)
        .expect("a turn for the interruption");
    assert!(next.words_heard >= 3, "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_or_a_cough_does_not_interrupt() {
    let question = espeak(QUESTION);
    let total = ASK_AT + duration(&question) + 10.0;
    let first = converse(&compose(total, &[(ASK_AT, &question)])).await;
    let reply_at = at_ms(
        first
            .turns
            .iter()
            .find(|t| !t.greeting)
            .unwrap()
            .first_audio_at_ms,
    );

    // A click, then a cough-length (250 ms) burst of decaying noise.
    let mut seed = 99u32;
    let mut burst = vec![0.0f32; seconds(0.45)];
    burst[0] = 0.9;
    burst[1] = -0.7;
    let start = seconds(0.2);
    let len = seconds(0.25);
    for i in 0..len {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        let white = (seed >> 8) as f32 / (1 << 24) as f32 - 0.5;
        burst[start + i] = white * 0.6 * (1.0 - i as f32 / len as f32);
    }
    let at = reply_at + 0.6;
    let second = converse(&compose(total, &[(ASK_AT, &question), (at, &burst)])).await;
    let turn = second.turns.iter().find(|t| !t.greeting).unwrap();
    assert!(!turn.barged_in, "{turn:?}");
    assert_eq!(turn.outcome, TurnOutcome::Answered);
    assert_eq!(turn.words_spoken, turn.words_generated);
    let after = at + duration(&burst);
    assert!(
        peak_rms(&second.agent_audio, after, after + 0.5) > 0.01,
        "agent went quiet after the noise"
    );
}

/// `izwi talk --say`: the caller's words are spoken with the agent's voice;
/// a goodbye makes the model ask for `end_call`, which is checked and
/// carried out (the talk ends as the agent hung up), and recorded.
#[test]
fn izwi_talk_says_the_caller_s_words_and_the_model_ends_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.db");
    let config_file = dir.path().join("izwi.toml");
    std::fs::write(
        &config_file,
        r#"[agents.desk]
language = "en"
system_prompt = "You are the phone receptionist of Hope Clinic. Answer in one short sentence. Examples: Caller: When do you open? You: [answer] We open at eight. Caller: Bye, thanks. You: [end_call] Goodbye!"
greeting = "Hope Clinic, hello."
model_actions = ["end_call"]
"#,
    )
    .unwrap();
    let out = Command::new(izwi_bin())
        .env("IZWI_MODELS_PROFILE", config().models.profile)
        .env("IZWI_RECORDS_PATH", &records)
        .arg("--config")
        .arg(&config_file)
        .args([
            "talk",
            "--agent",
            "desk",
            "--fast",
            "--say",
            "Thanks, goodbye.",
            "--out",
        ])
        .arg(dir.path().join("agent.wav"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ended: agent:end_call"), "{stdout}");
    let action = stdout
        .lines()
        .find(|l| l.contains("end_call"))
        .unwrap_or_else(|| panic!("no action row: {stdout}"));
    assert!(
        action.contains("model") && action.contains("done"),
        "{action}"
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("call ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no call id printed: {stdout}"));
    let show = Command::new(izwi_bin())
        .env("IZWI_RECORDS_PATH", &records)
        .args(["calls", "show", id, "--json"])
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(record["call"]["hangup_side"], "agent", "{record}");
    assert_eq!(record["call"]["hangup_cause"], "agent:end_call", "{record}");
    assert_eq!(record["actions"][0]["source"], "model", "{record}");
    // The goodbye the agent said is in what it wrote.
    let (agent, _) = wav::read_mono(&dir.path().join("agent.wav")).unwrap();
    let heard = engine()
        .asr
        .transcribe(&agent, "en")
        .unwrap()
        .to_lowercase();
    assert!(heard.contains("goodbye"), "{heard}");
}
