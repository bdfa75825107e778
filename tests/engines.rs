//! Each engine on its real model, and Whisper and llama.cpp in one process
//! (they share one ggml by link order; a crate bump that breaks that fails here).

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use common::*;
use izwi::audio::{ENGINE_RATE, FRAME_SAMPLES};
use izwi::call::action::{self, Action, Refusal};
use izwi::codec::resample::resample;
use izwi::config::AgentProfile;
use izwi::engine::llm::local::{LocalModel, LocalSession};
use izwi::engine::{
    Abandoned, ChatMessage, EngineError, EnginePool, GenerationStats, LlmEvent, LlmSession,
    Speaker, ToolCall, ToolChoice, ToolSpec,
};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A session with the embedded model, as a call gets one.
fn session(system_prompt: &str, tools: Vec<ToolSpec>) -> Arc<dyn LlmSession> {
    block_on(engine().llms["local"].session(system_prompt.into(), tools)).unwrap()
}

/// A reply read to its end: its words, its actions, its figures.
fn reply(
    session: &Arc<dyn LlmSession>,
    history: &[ChatMessage],
) -> (String, Vec<ToolCall>, GenerationStats) {
    use futures_util::StreamExt;
    block_on(async {
        let mut events = session.reply(history.to_vec(), ToolChoice::Auto);
        let (mut words, mut calls) = (String::new(), Vec::new());
        while let Some(event) = events.next().await {
            match event.unwrap() {
                LlmEvent::Text(t) => words.push_str(&t),
                LlmEvent::ToolCall(c) => calls.push(c),
                LlmEvent::Malformed(m) => panic!("malformed action {m:?}"),
                LlmEvent::TurnEnds(_) => {}
                LlmEvent::Done(stats) => return (words, calls, stats),
            }
        }
        panic!("the reply ended without its figures")
    })
}

#[test]
fn whisper_told_to_stop_stops_and_the_next_transcription_works() {
    let engine = engine();
    let speech = espeak("My name is John and I need to see a doctor today.");
    let stop = Abandoned::default();
    stop.abandon();
    match engine.asr.transcribe_unless(&speech, "en", "", &stop) {
        Err(EngineError::Asr(_)) => {}
        other => panic!("a transcription told to stop gave {other:?}"),
    }
    let text = engine.asr.transcribe(&speech, "en").unwrap();
    assert!(words(&text).contains(&"doctor".to_string()), "{text:?}");
}

#[test]
fn whisper_and_llama_run_in_one_process_on_real_models() {
    let engine = engine();
    let speech = espeak("My name is John and I need to see a doctor today.");
    let text = engine.asr.transcribe(&speech, "en").unwrap();
    let heard = words(&text);
    let known = ["name", "john", "need", "see", "doctor", "today"];
    let hits = known
        .iter()
        .filter(|w| heard.contains(&w.to_string()))
        .count();
    assert!(hits >= 5, "only {hits} of {known:?} in {text:?}");

    let session = session("You are a helpful assistant. Answer briefly.", Vec::new());
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "What is the capital city of France?".into(),
    }];
    let (reply, _, stats) = reply(&session, &history);
    assert!(reply.contains("Paris"), "reply: {reply:?}");
    assert!(words(&reply).len() >= 3, "reply: {reply:?}");
    assert!(stats.tokens > 0);
    assert!(stats.first_token.is_some());
}

#[test]
fn system_prompt_and_earlier_turns_are_not_evaluated_again() {
    let prompt = "You are a phone assistant for a bakery. Answer in one sentence.";
    let a = session(prompt, Vec::new());
    let mut history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "Do you sell bread?".into(),
    }];
    let (words, _, first) = reply(&a, &history);
    // The system prompt's state was restored, not evaluated.
    assert!(first.reused_tokens >= 10, "{first:?}");
    assert!(first.reused_tokens < first.prompt_tokens);

    history.push(ChatMessage {
        speaker: Speaker::Assistant,
        text: words.trim().to_string(),
    });
    history.push(ChatMessage {
        speaker: Speaker::User,
        text: "When do you open?".into(),
    });
    let (_, _, second) = reply(&a, &history);
    assert!(
        second.reused_tokens > first.reused_tokens + 3,
        "the first exchange should be reused: {first:?} then {second:?}"
    );

    // A second call with the same prompt starts from the same saved state.
    let b = session(prompt, Vec::new());
    let (_, _, other) = reply(&b, &history[..1]);
    assert_eq!(other.reused_tokens, first.reused_tokens);
}

/// The agent of the model-path test: the prompt shows the bracket form by
/// example (a 135M model follows examples, not descriptions).
fn acting_agent() -> AgentProfile {
    let mut p = AgentProfile::new(
        "en",
        "You are the phone receptionist of Hope Clinic. Answer in one short sentence.\n\
         Examples:\n\
         Caller: When do you open?\n\
         You: [answer] We open at eight.\n\
         Caller: Bye, thanks.\n\
         You: [end_call] Goodbye!\n\
         Caller: Can I talk to the nurse?\n\
         You: [transfer:nurse] Of course.",
        "Hello.",
    );
    p.transfer
        .insert("front_desk".into(), "sip:desk@127.0.0.1:5070".into());
    p.transfer.insert("nurse".into(), "+263771000111".into());
    p.model_actions = vec!["end_call".into(), "transfer".into()];
    p
}

/// One reply: its words and the actions it asked for.
fn ask(profile: &AgentProfile, question: &str) -> (String, Vec<ToolCall>) {
    let s = session(&profile.system_prompt, action::tools(profile));
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: question.into(),
    }];
    let (words, calls, _) = reply(&s, &history);
    (words, calls)
}

#[test]
fn the_small_model_asks_for_end_call_and_transfer_and_only_allowed_targets_pass() {
    let p = acting_agent();
    let (words, calls) = ask(&p, "Thank you, that is all. Goodbye.");
    assert_eq!(calls.len(), 1, "{words:?} {calls:?}");
    assert_eq!(action::from_model(&p, &calls[0]), Ok(Action::EndCall));
    assert!(!words.contains('['), "the bracket is not spoken: {words:?}");

    let (words, calls) = ask(&p, "Please put me through to the nurse.");
    assert_eq!(calls.len(), 1, "{words:?} {calls:?}");
    assert_eq!(
        action::from_model(&p, &calls[0]),
        Ok(Action::Transfer {
            name: "nurse".into(),
            target: "+263771000111".into()
        })
    );
    // The grammar kept the model to the list; a forged request (as a remote
    // model could make) is refused before anything happens.
    let forged = ToolCall {
        name: "transfer".into(),
        arguments: serde_json::json!({"to": "+263779999999"}),
    };
    assert_eq!(action::from_model(&p, &forged), Err(Refusal::Target));

    // Ordinary questions get words and no action.
    for q in [
        "What time do you open on Monday?",
        "How much does a consultation cost?",
    ] {
        let (words, calls) = ask(&p, q);
        assert!(calls.is_empty(), "{q}: {words:?} {calls:?}");
        assert!(words.split_whitespace().count() >= 2, "{q}: {words:?}");
    }
    // The default agent offers its model no action at all.
    let plain = izwi::config::Config::default().agents["english"].clone();
    assert!(action::tools(&plain).is_empty());
}

/// The model's reading of the caller's last message: how likely it ends
/// there (None: the model gave none before its first word).
fn turn_ends(session: &Arc<dyn LlmSession>, history: &[ChatMessage]) -> Option<f32> {
    use futures_util::StreamExt;
    block_on(async {
        let mut events = session.reply(history.to_vec(), ToolChoice::Auto);
        while let Some(event) = events.next().await {
            match event.unwrap() {
                LlmEvent::TurnEnds(p) => return Some(p),
                LlmEvent::Text(_) | LlmEvent::Done(_) => return None,
                LlmEvent::ToolCall(_) | LlmEvent::Malformed(_) => {}
            }
        }
        None
    })
}

#[test]
fn the_model_reads_a_finished_question_as_the_end_of_the_turn_and_a_fragment_not() {
    let cfg = config();
    let (_, profile) = cfg.default_agent();
    let s = session(&profile.system_prompt, action::tools(profile));
    let user = |text: &str| ChatMessage {
        speaker: Speaker::User,
        text: text.into(),
    };
    // As Whisper writes a caller who finished, and one who paused mid-sentence.
    let finished = [
        "What time does the clinic open on Monday?",
        "Is there a pharmacy inside the clinic?",
    ];
    let paused = ["I would like to book an", "My son has had a fever since"];
    let mut history = Vec::new();
    for (done, cut) in finished.iter().zip(paused) {
        let mut asked = history.clone();
        asked.push(user(cut));
        let p_cut = turn_ends(&s, &asked).expect("a reading of the paused words");
        history.push(user(done));
        let p_done = turn_ends(&s, &history).expect("a reading of the question");
        println!("finished {p_done:.3}, paused {p_cut:.3}");
        assert!(p_done >= 0.5, "{done:?} read as unfinished: {p_done}");
        assert!(p_cut < 0.1, "{cut:?} read as finished: {p_cut}");
        // The next question comes after an answer, from the cache.
        history.push(ChatMessage {
            speaker: Speaker::Assistant,
            text: "We open at eight.".into(),
        });
    }
    // After a function's answer, no caller's words are read.
    history.push(ChatMessage {
        speaker: Speaker::ToolResult {
            id: "call_1".into(),
            name: "opening_hours".into(),
        },
        text: r#"{"opens":"8:00"}"#.into(),
    });
    assert_eq!(turn_ends(&s, &history), None);
}

/// A copy of the embedded model of its own, to drive its sessions directly.
fn own_llama() -> izwi::engine::llm::llama::LlamaLlm {
    engine();
    let store = izwi::models::ModelStore::from_config(&config().models).unwrap();
    izwi::engine::llm::llama::LlamaLlm::load(
        &store.require(izwi::models::Role::Llm).unwrap(),
        &config().engine,
    )
    .unwrap()
}

#[test]
fn llm_stops_when_the_listener_goes_away() {
    // The model itself (a second copy), to see how far it went: through a
    // session, the listener going away is the reply stream dropped, which
    // closes the channel its events go to.
    let llama = own_llama();
    let pool = EnginePool::new(2);
    let mut s = llama.session("You are a storyteller.", &[]).unwrap();
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "Tell me a long story about a lion.".into(),
    }];
    let mut pieces = 0;
    let stats = s
        .generate(&history, &ToolChoice::Auto, &pool, &mut |_| {
            pieces += 1;
            if pieces == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(pieces, 3);
    assert!(stats.tokens <= 4, "{stats:?}");
}

#[test]
fn the_conversation_evaluated_ahead_leaves_the_reply_only_the_callers_words() {
    let llama = own_llama();
    let pool = EnginePool::new(2);
    let say = |speaker: Speaker, text: &str| ChatMessage {
        speaker,
        text: text.into(),
    };
    let system = "You are the receptionist of a small clinic.";
    let mut history = vec![say(
        Speaker::Assistant,
        "Hello, you have reached the clinic.",
    )];
    let questions = [
        "What time do you open on Monday?",
        "Is there a pharmacy inside the clinic?",
    ];
    let mut ahead = llama.session(system, &[]).unwrap();
    for question in questions {
        let prepared = ahead.prepare(&history, &pool).unwrap();
        assert!(prepared > 0, "nothing evaluated ahead");
        assert_eq!(
            ahead.prepare(&history, &pool).unwrap(),
            0,
            "evaluated twice"
        );
        history.push(say(Speaker::User, question));
        let mut words = String::new();
        let mut collect = |e: LlmEvent| {
            if let LlmEvent::Text(t) = e {
                words.push_str(&t);
            }
            ControlFlow::Continue(())
        };
        let stats = ahead
            .generate(&history, &ToolChoice::Auto, &pool, &mut collect)
            .unwrap();
        // A session that evaluated nothing ahead reads the whole history.
        let mut cold = llama.session(system, &[]).unwrap();
        let cold_stats = cold
            .generate(&history, &ToolChoice::Auto, &pool, &mut |_| {
                ControlFlow::Break(())
            })
            .unwrap();
        let new = stats.prompt_tokens - stats.reused_tokens;
        let cold_new = cold_stats.prompt_tokens - cold_stats.reused_tokens;
        println!("{question:?}: {prepared} evaluated ahead, {new} left (cold: {cold_new})");
        assert_eq!(stats.prompt_tokens, cold_stats.prompt_tokens);
        assert!(
            new + prepared <= cold_new && new <= 20,
            "{new} tokens left after {prepared} ahead; {cold_new} cold"
        );
        assert!(!words.trim().is_empty(), "no reply");
        history.push(say(Speaker::Assistant, words.trim()));
    }
}

#[test]
fn silero_tells_speech_from_silence_and_noise() {
    let engine = engine();
    let speech = espeak("Good morning, I would like to book an appointment.");
    let run = |audio: &[f32]| {
        let mut vad = engine.vad.stream().unwrap();
        let mut probs = Vec::new();
        for frame in audio.chunks(FRAME_SAMPLES) {
            if let Some(p) = vad.push(frame).unwrap() {
                probs.push(p);
            }
        }
        probs
    };
    let p = run(&speech);
    let speechy = p.iter().filter(|&&x| x > 0.5).count();
    assert!(speechy * 2 > p.len(), "speech mostly below 0.5: {p:?}");

    let silence = vec![0.0; seconds(2.0)];
    assert!(run(&silence).iter().all(|&x| x < 0.1));

    let mut seed = 7u32;
    let noise: Vec<f32> = (0..seconds(2.0))
        .map(|_| {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let p = run(&noise);
    assert!(
        p.iter().filter(|&&x| x > 0.5).count() <= 1,
        "noise taken for speech: {p:?}"
    );
}

#[test]
fn piper_says_what_it_is_given() {
    let engine = engine();
    let text = "Please call back tomorrow morning.";
    let audio = engine.tts.synthesize(text, None).unwrap();
    let rate = engine.tts.sample_rate();
    assert_eq!(rate, 22_050);
    let secs = audio.len() as f64 / rate as f64;
    assert!((1.0..6.0).contains(&secs), "{secs} s for one sentence");
    let audio16 = resample(&audio, rate, ENGINE_RATE).unwrap();
    let heard = words(&engine.asr.transcribe(&audio16, "en").unwrap());
    for w in ["call", "back", "tomorrow", "morning"] {
        assert!(heard.contains(&w.to_string()), "`{w}` not in {heard:?}");
    }
    assert!(engine.tts.synthesize("  ", None).unwrap().is_empty());
}

#[test]
fn a_tagged_session_reuses_its_earlier_answers() {
    // The history keeps only the words; the answer is rendered with its tag
    // again, so the next turn does not evaluate it anew.
    let p = acting_agent();
    let s = session(&p.system_prompt, action::tools(&p));
    let mut history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "What time do you open on Monday?".into(),
    }];
    let (words, _, first) = reply(&s, &history);
    history.push(ChatMessage {
        speaker: Speaker::Assistant,
        text: words.trim().to_string(),
    });
    history.push(ChatMessage {
        speaker: Speaker::User,
        text: "And on Saturday?".into(),
    });
    let (_, _, second) = reply(&s, &history);
    assert!(
        second.reused_tokens >= first.prompt_tokens + 3,
        "the first answer was evaluated again: {first:?} then {second:?}"
    );
}

/// The agent's Piper voice with its randomness off (no noise in the
/// spectrum or the durations): the same words give the same audio every
/// run, which the end-of-turn checks need, as the model's verdict on
/// synthetic speech moves with small changes of timing.
fn steady_voice() -> (izwi::engine::tts::piper::PiperTts, tempfile::TempDir) {
    use izwi::models::{ModelStore, Role};
    engine(); // ONNX Runtime is started by the engine's load.
    let c = config();
    let store = ModelStore::from_config(&c.models).unwrap();
    let json = std::fs::read_to_string(store.require(Role::TtsConfig).unwrap()).unwrap();
    let mut voice: serde_json::Value = serde_json::from_str(&json).unwrap();
    voice["inference"]["noise_scale"] = 0.0.into();
    voice["inference"]["noise_w"] = 0.0.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.onnx.json");
    std::fs::write(&path, voice.to_string()).unwrap();
    let tts = izwi::engine::tts::piper::PiperTts::load(
        &store.require(Role::Tts).unwrap(),
        &path,
        2,
        c.engine.espeak.clone(),
    )
    .unwrap();
    (tts, dir)
}

/// `text` in the steady voice at 16 kHz, without its leading and trailing silence.
fn steady_speech(tts: &dyn izwi::engine::Tts, text: &str) -> Vec<f32> {
    let raw = tts.synthesize(text, None).unwrap();
    let audio = resample(&raw, tts.sample_rate(), ENGINE_RATE).unwrap();
    let frames: Vec<f32> = audio.chunks(320).map(izwi::audio::rms).collect();
    let peak = frames.iter().copied().fold(0.0, f32::max);
    let first = frames.iter().position(|&e| e > peak * 0.02).unwrap();
    let last = frames.iter().rposition(|&e| e > peak * 0.02).unwrap();
    audio[first * 320..((last + 1) * 320).min(audio.len())].to_vec()
}

/// A caller's turn as the detector gets it: half a second before the
/// speech (the pre-roll) and 200 ms of pause after it, when it is asked.
fn as_turn(speech: &[f32]) -> Vec<f32> {
    let mut turn = vec![0.0; seconds(0.5)];
    turn.extend_from_slice(speech);
    turn.extend(std::iter::repeat_n(0.0, seconds(0.2)));
    turn
}

/// `full` cut where the speech of `prefix` (said alone) ends: at the
/// quietest 10 ms of the 200 ms before that point, which is where its last
/// word ends or the next one's closure is (said alone, the last word is
/// drawn out, so the boundary in the sentence lies a little earlier).
fn cut_after(full: &[f32], prefix: &[f32]) -> Vec<f32> {
    let frames: Vec<f32> = full.chunks(160).map(izwi::audio::rms).collect();
    let end = prefix.len() / 160;
    let quietest = (end.saturating_sub(20)..=(end + 1).min(frames.len() - 1))
        .min_by(|&a, &b| frames[a].total_cmp(&frames[b]))
        .unwrap();
    full[..quietest * 160].to_vec()
}

/// Sentences on which Smart Turn v3.2 tells the finished question from the
/// same audio stopped mid-sentence. It does not on every one: on "What time
/// does the clinic open on Monday?" cut after "clinic" it says complete
/// (0.96), and it finds "I would like to book an appointment for next
/// Tuesday." incomplete (0.17); synthetic speech is not what it was trained on.
const FINISHED_AND_CUT: [(&str, &str); 4] = [
    (
        "When is the next available appointment?",
        "When is the next",
    ),
    ("Are you open on Saturdays?", "Are you open on"),
    (
        "My daughter has a fever and a bad cough.",
        "My daughter has a fever and a",
    ),
    (
        "My name is John and I need to see a doctor today.",
        "My name is John and I need to",
    ),
];

#[test]
fn smart_turn_tells_a_finished_sentence_from_one_cut_off() {
    let engine = engine();
    let (voice, _dir) = steady_voice();
    for (sentence, prefix) in FINISHED_AND_CUT {
        let full = steady_speech(&voice, sentence);
        let cut = cut_after(&full, &steady_speech(&voice, prefix));
        assert!(cut.len() < full.len() * 9 / 10, "{prefix:?}: no cut found");
        let finished = engine
            .turn
            .as_ref()
            .expect("the end-of-turn model is loaded")
            .complete(&as_turn(&full))
            .unwrap();
        let stopped = engine
            .turn
            .as_ref()
            .expect("the end-of-turn model is loaded")
            .complete(&as_turn(&cut))
            .unwrap();
        assert!(finished > 0.5, "{sentence:?}: {finished}");
        assert!(stopped < 0.5, "{prefix:?} cut from {sentence:?}: {stopped}");
        assert!(
            finished - stopped > 0.3,
            "{sentence:?}: {finished} against {stopped} cut"
        );
    }
}

#[test]
fn smart_turn_hears_a_trailing_filler_as_unfinished() {
    let engine = engine();
    let (voice, _dir) = steady_voice();
    for (_, prefix) in FINISHED_AND_CUT {
        let hesitant = steady_speech(&voice, &format!("{prefix}, um..."));
        let p = engine
            .turn
            .as_ref()
            .expect("the end-of-turn model is loaded")
            .complete(&as_turn(&hesitant))
            .unwrap();
        assert!(p < 0.5, "{prefix:?}, um...: {p}");
    }
}

#[test]
fn smart_turn_runs_on_the_engine_pool() {
    let engine = engine();
    let (voice, _dir) = steady_voice();
    let turn = as_turn(&steady_speech(&voice, FINISHED_AND_CUT[0].0));
    let direct = engine
        .turn
        .as_ref()
        .expect("the end-of-turn model is loaded")
        .complete(&turn)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pooled = runtime.block_on(engine.turn_complete(turn)).unwrap();
    assert!((pooled - direct).abs() < 1e-4, "{pooled} against {direct}");
    // Longer than the model's 8 s: only the end counts.
    let mut long = vec![0.0; seconds(12.0)];
    long.extend(as_turn(&steady_speech(&voice, FINISHED_AND_CUT[0].0)));
    let p = engine
        .turn
        .as_ref()
        .expect("the end-of-turn model is loaded")
        .complete(&long)
        .unwrap();
    assert!((p - direct).abs() < 1e-4, "{p} against {direct}");
}
