//! A stand-in engine for unit tests of the logic around the models (the call
//! core, the conversation): speech is any loud frame, recognition returns a
//! set sentence, the model says a scripted reply (words and actions), a
//! phrase's audio is a tone as long as its words, and every turn is judged
//! complete (so the short silence of a complete turn ends it). Real models are tested against real
//! weights in `tests/`.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use super::llm::local::{LocalModel, LocalSession, OnPool};
use super::{
    Asr, ChatMessage, Engine, EngineError, EnginePool, GenerationStats, LlmEvent, ToolCall,
    ToolChoice, ToolSpec, Tts, TurnDetector, Vad, VadStream,
};
use crate::config::EngineConfig;

/// What the fake model answers, turn after turn (the last one repeats).
#[derive(Clone, Default)]
pub struct Script {
    pub replies: Vec<Vec<Step>>,
    /// Every history the model was asked to answer, for tests to read.
    pub seen: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
    /// Every history it was asked to evaluate ahead.
    pub prepared: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
}

#[derive(Clone, Debug)]
pub enum Step {
    Say(&'static str),
    Act(ToolCall),
    /// The model fails here (a server gone, say).
    Fail,
    /// The model is still writing (for a second) when the call moves on.
    Stall,
    /// The model's reading of the caller's words: how likely their message ends.
    TurnEnds(f32),
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
pub struct ScriptedSession {
    script: Script,
    turn: usize,
}

impl LocalModel for ScriptedLlm {
    type Session = ScriptedSession;

    fn session(&self, _: &str, _: &[ToolSpec]) -> Result<ScriptedSession, EngineError> {
        Ok(ScriptedSession {
            script: self.0.clone(),
            turn: 0,
        })
    }
}

impl LocalSession for ScriptedSession {
    fn prepare(&mut self, history: &[ChatMessage], _: &EnginePool) -> Result<usize, EngineError> {
        self.script
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(history.to_vec());
        Ok(history.len())
    }

    fn generate(
        &mut self,
        history: &[ChatMessage],
        _: &ToolChoice,
        _: &EnginePool,
        on_event: &mut dyn FnMut(LlmEvent) -> ControlFlow<()>,
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
                Step::Say(t) => on_event(LlmEvent::Text(t.to_string())),
                Step::Act(c) => on_event(LlmEvent::ToolCall(c.clone())),
                Step::TurnEnds(p) => on_event(LlmEvent::TurnEnds(*p)),
                Step::Fail => return Err(EngineError::Llm("scripted failure".into())),
                Step::Stall => {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    ControlFlow::Continue(())
                }
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

/// A server that is down: every request fails.
struct Down;

fn down() -> EngineError {
    EngineError::Remote(super::RemoteError {
        backend: "down".into(),
        kind: super::RemoteFailure::Connect,
        detail: "connection refused".into(),
    })
}

impl super::AsrBackend for Down {
    fn transcribe(
        &self,
        _: Vec<f32>,
        _: &super::Hearing,
    ) -> futures_util::future::BoxFuture<'static, Result<String, EngineError>> {
        Box::pin(async { Err(down()) })
    }
}

impl super::TtsBackend for Down {
    fn speak(&self, _: String, _: super::Voice) -> super::Speech {
        futures_util::StreamExt::boxed(futures_util::stream::iter([Err(down())]))
    }
}

/// A streaming voice server: ToneTts's audio in pieces of 30 ms (not a
/// whole number of frames), 5 ms apart.
struct Trickle;

impl super::TtsBackend for Trickle {
    fn speak(&self, text: String, voice: super::Voice) -> super::Speech {
        use futures_util::StreamExt;
        let audio = ToneTts
            .synthesize(&text, voice.phonemes.as_deref())
            .unwrap_or_default();
        let pieces: Vec<Vec<f32>> = audio.chunks(480).map(<[f32]>::to_vec).collect();
        futures_util::stream::iter(pieces)
            .then(|p| async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(p)
            })
            .boxed()
    }
}

/// An end-of-turn detector that answers the same probability for any
/// audio (or fails, with `None`); with `held`, only once told to.
pub struct FixedTurn {
    pub verdict: Option<f32>,
    pub held: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    /// How many times it was asked.
    pub asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl FixedTurn {
    pub fn new(complete: f32) -> FixedTurn {
        FixedTurn {
            verdict: Some(complete),
            held: None,
            asked: Default::default(),
        }
    }
}

impl TurnDetector for FixedTurn {
    fn complete(&self, _: &[f32]) -> Result<f32, EngineError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(held) = &self.held {
            let _ = held.lock().unwrap_or_else(|p| p.into_inner()).recv();
        }
        self.verdict
            .ok_or_else(|| EngineError::Turn("the fake detector fails".into()))
    }
}

/// The fake engine with `script` as its model.
pub fn engine(script: Script) -> Arc<Engine> {
    engine_judged(script, 1.0)
}

/// The fake engine whose end-of-turn model gives every turn `complete`.
pub fn engine_judged(script: Script, complete: f32) -> Arc<Engine> {
    engine_with_turn(script, FixedTurn::new(complete))
}

/// The fake engine with `turn` as its end-of-turn model.
pub fn engine_with_turn(script: Script, turn: FixedTurn) -> Arc<Engine> {
    let pool = EnginePool::new(2);
    let local: Arc<dyn super::Llm> = Arc::new(OnPool::new(ScriptedLlm(script), pool.clone(), 1));
    let asr: Arc<dyn super::Asr> = Arc::new(SetAsr);
    let tts: Arc<dyn Tts> = Arc::new(ToneTts);
    let local_asr: Arc<dyn super::AsrBackend> = Arc::new(super::asr::local::OnPool {
        asr: asr.clone(),
        pool: pool.clone(),
        threads: 1,
    });
    let voices = Arc::new(super::tts::local::Voices::new(
        "tone".into(),
        tts.clone(),
        Box::new(|name| Err(EngineError::Tts(format!("no voice `{name}` here")))),
    ));
    let local_tts: Arc<dyn super::TtsBackend> = Arc::new(super::tts::local::OnPool {
        voices: voices.clone(),
        pool: pool.clone(),
        threads: 1,
    });
    let local_name = crate::config::LOCAL_BACKEND.to_string();
    Arc::new(Engine {
        vad: Arc::new(LoudVad),
        asr,
        llms: [(local_name.clone(), local)].into(),
        tts,
        voices,
        // Beside the embedded ones: servers named `down` and `trickle`.
        asr_backends: [
            (local_name.clone(), local_asr),
            (
                "down".to_string(),
                Arc::new(Down) as Arc<dyn super::AsrBackend>,
            ),
        ]
        .into(),
        tts_backends: [
            (local_name, local_tts),
            (
                "down".to_string(),
                Arc::new(Down) as Arc<dyn super::TtsBackend>,
            ),
            (
                "trickle".to_string(),
                Arc::new(Trickle) as Arc<dyn super::TtsBackend>,
            ),
        ]
        .into(),
        turn: Some(Arc::new(turn)),
        pool,
        settings: EngineConfig::default(),
    })
}
