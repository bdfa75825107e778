//! A stand-in engine for unit tests of the logic around the models (the call
//! core, the conversation): speech is any loud frame, recognition returns a
//! set sentence, the model says a scripted reply (words and actions), a
//! phrase's audio is a tone as long as its words, and every turn is judged
//! complete (so the short silence of a complete turn ends it). Real models are tested against real
//! weights in `tests/`.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use super::{
    Asr, ChatMessage, Engine, EngineError, EnginePool, GenerationStats, Llm, LlmEvent, LlmSession,
    ToolCall, ToolSpec, Tts, TurnDetector, Vad, VadStream,
};
use crate::config::EngineConfig;

/// What the fake model answers, turn after turn (the last one repeats).
#[derive(Clone, Default)]
pub struct Script {
    pub replies: Vec<Vec<Step>>,
    /// Every history the model was asked to answer, for tests to read.
    pub seen: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
}

#[derive(Clone, Debug)]
pub enum Step {
    Say(&'static str),
    Act(ToolCall),
}

struct LoudVad;
struct LoudStream;

impl VadStream for LoudStream {
    fn push(&mut self, samples: &[f32]) -> Result<Option<f32>, EngineError> {
        let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt();
        Ok(Some(if rms > 0.01 { 1.0 } else { 0.0 }))
    }
}

impl Vad for LoudVad {
    fn stream(&self) -> Result<Box<dyn VadStream>, EngineError> {
        Ok(Box::new(LoudStream))
    }
}

struct SetAsr;

impl Asr for SetAsr {
    fn transcribe_unless(
        &self,
        audio: &[f32],
        _: &str,
        _: &crate::engine::Abandoned,
    ) -> Result<String, EngineError> {
        Ok(if audio.is_empty() {
            String::new()
        } else {
            "what time do you open".into()
        })
    }
}

struct ScriptedLlm(Script);
struct ScriptedSession {
    script: Script,
    turn: usize,
}

impl Llm for ScriptedLlm {
    fn session(&self, _: &str, _: &[ToolSpec]) -> Result<Box<dyn LlmSession>, EngineError> {
        Ok(Box::new(ScriptedSession {
            script: self.0.clone(),
            turn: 0,
        }))
    }
}

impl LlmSession for ScriptedSession {
    fn reply(
        &mut self,
        history: &[ChatMessage],
        _: &EnginePool,
        on_event: &mut dyn FnMut(LlmEvent<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        self.script
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(history.to_vec());
        let replies = &self.script.replies;
        let steps = replies
            .get(self.turn)
            .or(replies.last())
            .cloned()
            .unwrap_or_default();
        self.turn += 1;
        let mut stats = GenerationStats::default();
        for step in steps {
            stats.tokens += 1;
            let flow = match &step {
                Step::Say(t) => on_event(LlmEvent::Text(t)),
                Step::Act(c) => on_event(LlmEvent::ToolCall(c.clone())),
            };
            if flow.is_break() {
                break;
            }
        }
        Ok(stats)
    }
}

struct ToneTts;

impl Tts for ToneTts {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    /// 200 ms of tone a word.
    fn synthesize(&self, text: &str, _: Option<&str>) -> Result<Vec<f32>, EngineError> {
        let n = text.split_whitespace().count() * 3_200;
        Ok((0..n)
            .map(|i| 0.3 * (i as f32 * 300.0 * std::f32::consts::TAU / 16_000.0).sin())
            .collect())
    }
}

/// An end-of-turn detector that answers the same probability for any audio.
pub struct FixedTurn(pub f32);

impl TurnDetector for FixedTurn {
    fn complete(&self, _: &[f32]) -> Result<f32, EngineError> {
        Ok(self.0)
    }
}

/// The fake engine with `script` as its model.
pub fn engine(script: Script) -> Arc<Engine> {
    engine_judged(script, 1.0)
}

/// The fake engine whose end-of-turn model gives every turn `complete`.
pub fn engine_judged(script: Script, complete: f32) -> Arc<Engine> {
    Arc::new(Engine {
        vad: Arc::new(LoudVad),
        asr: Arc::new(SetAsr),
        llm: Arc::new(ScriptedLlm(script)),
        tts: Arc::new(ToneTts),
        turn: Some(Arc::new(FixedTurn(complete))),
        pool: EnginePool::new(2),
        settings: EngineConfig::default(),
    })
}
