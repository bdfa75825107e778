//! Each engine on its real model, and Whisper and llama.cpp in one process
//! (they share one ggml by link order; a crate bump that breaks that fails here).

mod common;

use std::ops::ControlFlow;

use common::*;
use izwi::audio::{ENGINE_RATE, FRAME_SAMPLES};
use izwi::call::action::{self, Action, Refusal};
use izwi::codec::resample::resample;
use izwi::config::AgentProfile;
use izwi::engine::{ChatMessage, EnginePool, LlmEvent, Speaker, ToolCall};

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

    let mut session = engine
        .llm
        .session("You are a helpful assistant. Answer briefly.", &[])
        .unwrap();
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "What is the capital city of France?".into(),
    }];
    let mut reply = String::new();
    let pool = EnginePool::new(2);
    let stats = session
        .reply(&history, &pool, &mut |event| {
            if let LlmEvent::Text(piece) = event {
                reply.push_str(piece);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(reply.contains("Paris"), "reply: {reply:?}");
    assert!(words(&reply).len() >= 3, "reply: {reply:?}");
    assert!(stats.tokens > 0);
    assert!(stats.first_token.is_some());
}

#[test]
fn system_prompt_and_earlier_turns_are_not_evaluated_again() {
    let engine = engine();
    let prompt = "You are a phone assistant for a bakery. Answer in one sentence.";
    let pool = EnginePool::new(2);
    let mut a = engine.llm.session(prompt, &[]).unwrap();
    let mut history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "Do you sell bread?".into(),
    }];
    let mut reply = String::new();
    let first = a
        .reply(&history, &pool, &mut |event| {
            if let LlmEvent::Text(p) = event {
                reply.push_str(p);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    // The system prompt's state was restored, not evaluated.
    assert!(first.reused_tokens >= 10, "{first:?}");
    assert!(first.reused_tokens < first.prompt_tokens);

    history.push(ChatMessage {
        speaker: Speaker::Assistant,
        text: reply.trim().to_string(),
    });
    history.push(ChatMessage {
        speaker: Speaker::User,
        text: "When do you open?".into(),
    });
    let second = a
        .reply(&history, &pool, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(
        second.reused_tokens > first.reused_tokens + 3,
        "the first exchange should be reused: {first:?} then {second:?}"
    );

    // A second call with the same prompt starts from the same saved state.
    let mut b = engine.llm.session(prompt, &[]).unwrap();
    let other = b
        .reply(&history[..1], &pool, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(other.reused_tokens, first.reused_tokens);
}

/// The agent of the model-path test: the prompt shows the bracket form by
/// example (a 135M model follows examples, not descriptions).
fn acting_agent() -> AgentProfile {
    let mut p = AgentProfile::new(
        "en",
        "You are the phone receptionist of Hope Clinic. Answer in one short sentence. \
         Examples: Caller: When do you open? You: [answer] We open at eight. \
         Caller: Bye, thanks. You: [end_call] Goodbye! \
         Caller: Can I talk to the nurse? You: [transfer:nurse] Of course.",
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
    let engine = engine();
    let pool = EnginePool::new(2);
    let tools = action::tools(profile);
    let mut s = engine.llm.session(&profile.system_prompt, &tools).unwrap();
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: question.into(),
    }];
    let (mut words, mut calls) = (String::new(), Vec::new());
    s.reply(&history, &pool, &mut |event| {
        match event {
            LlmEvent::Text(t) => words.push_str(t),
            LlmEvent::ToolCall(c) => calls.push(c),
            LlmEvent::Malformed(m) => panic!("malformed action {m:?}"),
        }
        ControlFlow::Continue(())
    })
    .unwrap();
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

#[test]
fn llm_stops_when_the_listener_goes_away() {
    let engine = engine();
    let pool = EnginePool::new(2);
    let mut s = engine.llm.session("You are a storyteller.", &[]).unwrap();
    let history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "Tell me a long story about a lion.".into(),
    }];
    let mut pieces = 0;
    let stats = s
        .reply(&history, &pool, &mut |_| {
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
    let engine = engine();
    let pool = EnginePool::new(2);
    let p = acting_agent();
    let tools = action::tools(&p);
    let mut s = engine.llm.session(&p.system_prompt, &tools).unwrap();
    let mut history = vec![ChatMessage {
        speaker: Speaker::User,
        text: "What time do you open on Monday?".into(),
    }];
    let mut words = String::new();
    let first = s
        .reply(&history, &pool, &mut |e| {
            if let LlmEvent::Text(t) = e {
                words.push_str(t);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    history.push(ChatMessage {
        speaker: Speaker::Assistant,
        text: words.trim().to_string(),
    });
    history.push(ChatMessage {
        speaker: Speaker::User,
        text: "And on Saturday?".into(),
    });
    let second = s
        .reply(&history, &pool, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(
        second.reused_tokens >= first.prompt_tokens + 3,
        "the first answer was evaluated again: {first:?} then {second:?}"
    );
}
