//! The speech engine: one trait per stage, one file per backend, models loaded
//! once and shared by every call.

pub mod asr;
#[cfg(test)]
pub mod fake;
pub mod llm;
pub mod onnx;
pub mod phrase;
pub mod pool;
pub mod tts;
pub mod turn_detector;
pub mod vad;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, EngineConfig};
use crate::models::{ModelError, ModelStore, Role};

pub use pool::{Abandoned, EnginePool};
pub use turn_detector::TurnDetector;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("ONNX Runtime: {0}")]
    Onnx(String),
    #[error("voice activity detection: {0}")]
    Vad(String),
    #[error("speech recognition: {0}")]
    Asr(String),
    #[error("language model: {0}")]
    Llm(String),
    #[error("speech synthesis: {0}")]
    Tts(String),
    #[error("end-of-turn detection: {0}")]
    Turn(String),
    #[error("engine worker stopped: {0}")]
    Worker(String),
}

/// Streaming voice activity detection for one call.
pub trait VadStream: Send {
    /// Feeds 16 kHz audio; returns the speech probability of the newest
    /// window completed by this input, if one was.
    fn push(&mut self, samples: &[f32]) -> Result<Option<f32>, EngineError>;
}

pub trait Vad: Send + Sync {
    fn stream(&self) -> Result<Box<dyn VadStream>, EngineError>;
}

pub trait Asr: Send + Sync {
    /// Transcribes one utterance of 16 kHz audio; `language` is a Whisper code
    /// or `auto`. Stops early, with an error, once `abandoned` is set.
    fn transcribe_unless(
        &self,
        audio: &[f32],
        language: &str,
        abandoned: &Abandoned,
    ) -> Result<String, EngineError>;

    fn transcribe(&self, audio: &[f32], language: &str) -> Result<String, EngineError> {
        self.transcribe_unless(audio, language, &Abandoned::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub speaker: Speaker,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens already in the KV cache from earlier turns.
    pub reused_tokens: usize,
    pub first_token: Option<Duration>,
    pub tokens: usize,
    pub decode_time: Duration,
}

impl GenerationStats {
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_time.is_zero() {
            0.0
        } else {
            self.tokens as f64 / self.decode_time.as_secs_f64()
        }
    }
}

/// An action the model may ask for, as a function with JSON-schema
/// parameters (what OpenAI-style tool calling and chat templates take).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema of an object; `{"type":"object","properties":{}}` for none.
    pub parameters: serde_json::Value,
}

/// The model asked for an action. Nothing is done with it until the call has
/// checked it against what the agent allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

/// What a reply is made of, as it streams: words to speak and actions asked
/// for. The reply is done when [`LlmSession::reply`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent<'a> {
    Text(&'a str),
    ToolCall(ToolCall),
    /// The model asked for an action in a form that cannot be read (cut off,
    /// malformed): refused, and the call goes on.
    Malformed(&'a str),
}

/// One call's conversation with the language model; keeps its KV cache between turns.
pub trait LlmSession: Send {
    /// Streams the assistant's next reply to `history` (which ends with the
    /// caller's words) event by event until done or `on_event` breaks.
    fn reply(
        &mut self,
        history: &[ChatMessage],
        pool: &EnginePool,
        on_event: &mut dyn FnMut(LlmEvent<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError>;
}

pub trait Llm: Send + Sync {
    /// A session whose system prompt is already evaluated (computed once per
    /// prompt and tool set, then reused); the model may ask for `tools`.
    fn session(
        &self,
        system_prompt: &str,
        tools: &[ToolSpec],
    ) -> Result<Box<dyn LlmSession>, EngineError>;
}

pub trait Tts: Send + Sync {
    fn sample_rate(&self) -> u32;
    /// Synthesizes one phrase; `voice` overrides the phonemizer voice.
    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<f32>, EngineError>;
}

/// The loaded models and the pool their work runs on.
pub struct Engine {
    pub vad: Arc<dyn Vad>,
    pub asr: Arc<dyn Asr>,
    pub llm: Arc<dyn Llm>,
    pub tts: Arc<dyn Tts>,
    /// None when `turn.detector` is off: pauses are then judged by silence alone.
    pub turn: Option<Arc<dyn TurnDetector>>,
    pub pool: EnginePool,
    pub settings: EngineConfig,
}

impl Engine {
    /// Speech recognition of one utterance on the pool.
    pub async fn transcribe(
        &self,
        audio: Vec<f32>,
        language: String,
    ) -> Result<String, EngineError> {
        let asr = self.asr.clone();
        self.pool
            .run_abandonable(self.settings.asr_threads, move |abandoned| {
                asr.transcribe_unless(&audio, &language, abandoned)
            })
            .await?
    }

    /// The probability that the caller's turn is complete, judged on the pool
    /// from the turn's 16 kHz audio so far.
    pub async fn turn_complete(&self, audio: Vec<f32>) -> Result<f32, EngineError> {
        let Some(turn) = self.turn.clone() else {
            return Err(EngineError::Turn("no end-of-turn model loaded".into()));
        };
        self.pool
            .run(self.settings.turn_threads, move || turn.complete(&audio))
            .await?
    }

    /// One phrase synthesized on the pool, at the engine's 16 kHz.
    pub async fn speak(
        &self,
        text: String,
        voice: Option<String>,
    ) -> Result<Vec<f32>, EngineError> {
        let tts = self.tts.clone();
        self.pool
            .run(self.settings.tts_threads, move || {
                let raw = tts.synthesize(&text, voice.as_deref())?;
                crate::codec::resample::resample(&raw, tts.sample_rate(), crate::audio::ENGINE_RATE)
                    .map_err(|e| EngineError::Tts(e.to_string()))
            })
            .await?
    }

    /// A conversation with the language model, its system prompt already evaluated.
    pub async fn llm_session(
        &self,
        system_prompt: String,
        tools: Vec<ToolSpec>,
    ) -> Result<Box<dyn LlmSession>, EngineError> {
        let llm = self.llm.clone();
        self.pool
            .run(self.settings.llm_batch_threads, move || {
                llm.session(&system_prompt, &tools)
            })
            .await?
    }
}

/// How long each model took to load, for the start-up log.
#[derive(Debug, Default)]
pub struct LoadTimes {
    pub vad: Duration,
    pub asr: Duration,
    pub llm: Duration,
    pub tts: Duration,
    pub turn: Duration,
}

impl Engine {
    /// Verifies and loads every model of the configured profile.
    pub fn load(config: &Config) -> Result<(Engine, LoadTimes), EngineError> {
        let store = ModelStore::from_config(&config.models)?;
        let e = &config.engine;
        onnx::init(e.onnxruntime.clone(), &store)?;
        let mut times = LoadTimes::default();

        let t = Instant::now();
        let vad =
            vad::silero::SileroVad::load(&store.require(Role::Vad)?, e.vad_threads, e.cpu_threads)?;
        times.vad = t.elapsed();

        let t = Instant::now();
        let asr = asr::whisper::WhisperAsr::load(
            &store.require(Role::Asr)?,
            e.asr_threads,
            e.asr_fit_audio_context,
        )?;
        times.asr = t.elapsed();

        let t = Instant::now();
        let llm = llm::llama::LlamaLlm::load(&store.require(Role::Llm)?, e)?;
        times.llm = t.elapsed();

        let t = Instant::now();
        let tts = tts::piper::PiperTts::load(
            &store.require(Role::Tts)?,
            &store.require(Role::TtsConfig)?,
            // ONNX threads beyond the pool's slots would only fight over cores.
            e.tts_threads.min(e.cpu_threads),
            e.espeak.clone(),
        )?;
        times.tts = t.elapsed();

        let t = Instant::now();
        let turn: Option<Arc<dyn TurnDetector>> = if config.turn.detector {
            let threads = e.turn_threads.min(e.cpu_threads);
            Some(Arc::new(turn_detector::smart_turn::SmartTurn::load(
                &store.require(Role::Turn)?,
                threads,
                e.cpu_threads / threads.max(1),
            )?))
        } else {
            None
        };
        times.turn = t.elapsed();

        Ok((
            Engine {
                vad: Arc::new(vad),
                asr: Arc::new(asr),
                llm: Arc::new(llm),
                tts: Arc::new(tts),
                turn,
                pool: EnginePool::new(e.cpu_threads),
                settings: e.clone(),
            },
            times,
        ))
    }
}
