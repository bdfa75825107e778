//! The speech engine: one trait per stage, one file per backend, models loaded
//! once and shared by every call.

pub mod asr;
#[cfg(test)]
pub mod fake;
pub mod llm;
pub mod onnx;
pub mod phrase;
pub mod pool;
pub mod remote;
pub mod tts;
pub mod turn_detector;
pub mod vad;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::config::{AgentProfile, Config, EngineConfig, LOCAL_BACKEND};
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
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A setting the configuration check cannot see (an environment variable).
    #[error("{0}")]
    Setting(String),
    #[error("agent `{agent}`: no {stage} backend named `{backend}` (backends: {known})")]
    UnknownBackend {
        agent: String,
        stage: &'static str,
        backend: String,
        known: String,
    },
}

/// A remote engine failed. The message names the backend and the kind of
/// failure, never a prompt, a transcript or audio.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}`: {kind}: {detail}")]
pub struct RemoteError {
    pub backend: String,
    pub kind: RemoteFailure,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RemoteFailure {
    #[error("cannot connect")]
    Connect,
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("malformed response")]
    Malformed,
}

impl RemoteFailure {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RemoteFailure::Connect => "connect",
            RemoteFailure::Timeout => "timeout",
            RemoteFailure::Status(s) if *s >= 500 => "status_5xx",
            RemoteFailure::Status(_) => "status_4xx",
            RemoteFailure::Malformed => "malformed",
        }
    }
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

/// The embedded speech recogniser (blocking; run on the pool).
pub trait Asr: Send + Sync {
    /// Transcribes one utterance of 16 kHz audio; `language` is a Whisper code
    /// or `auto`, `prompt` words to expect (may be empty). Stops early, with
    /// an error, once `abandoned` is set.
    fn transcribe_unless(
        &self,
        audio: &[f32],
        language: &str,
        prompt: &str,
        abandoned: &Abandoned,
    ) -> Result<String, EngineError>;

    fn transcribe(&self, audio: &[f32], language: &str) -> Result<String, EngineError> {
        self.transcribe_unless(audio, language, "", &Abandoned::default())
    }
}

/// How an agent hears its callers: which recogniser, in which language,
/// expecting which words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hearing {
    /// `local` or an `[asr.NAME]` server.
    pub backend: String,
    /// A Whisper code or `auto`.
    pub language: String,
    /// The recogniser's initial prompt (may be empty).
    pub prompt: String,
}

impl Hearing {
    pub fn of(profile: &AgentProfile) -> Hearing {
        Hearing {
            backend: profile.asr.clone(),
            language: profile.language.clone(),
            prompt: profile.asr_prompt.trim().to_string(),
        }
    }
}

/// A speech recognition backend: the embedded Whisper on the pool, or a
/// server. Dropping the future abandons the work (a server's request is
/// closed).
pub trait AsrBackend: Send + Sync {
    fn transcribe(
        &self,
        audio: Vec<f32>,
        hearing: &Hearing,
    ) -> BoxFuture<'static, Result<String, EngineError>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
    /// The assistant asked for a tool; the message's text is the call's
    /// JSON arguments. `id` pairs it with its result.
    ToolCall {
        id: String,
        name: String,
    },
    /// A tool's answer (JSON) to the call `id`.
    ToolResult {
        id: String,
        name: String,
    },
}

/// How the model may use its tools on one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// It chooses between words and a tool.
    #[default]
    Auto,
    /// Words only.
    None,
    /// Some tool.
    Required,
    /// This tool.
    Named(String),
}

impl ToolChoice {
    /// From an agent's `tool_choice` setting (checked by the configuration).
    pub fn parse(s: &str) -> ToolChoice {
        match s {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            name => ToolChoice::Named(name.to_string()),
        }
    }
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

/// What a reply is made of, as it streams: words to speak, actions asked
/// for, and at the end the figures of the generation.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Text(String),
    ToolCall(ToolCall),
    /// The model asked for an action in a form that cannot be read (cut off,
    /// malformed): refused, and the call goes on.
    Malformed(String),
    /// How likely the model finds it that the caller's message ends where
    /// it does: the probability of its end-of-message token right after
    /// their last word, a reading of the words for the end-of-turn verdict.
    /// A local model says it before its first word; a remote one never.
    TurnEnds(f32),
    /// The last event of a reply that ran to its end.
    Done(GenerationStats),
}

/// A reply as it streams. Dropping it stops the model: a local one at its
/// next token, a remote one by closing its request.
pub type LlmReply = BoxStream<'static, Result<LlmEvent, EngineError>>;

/// One call's conversation with a language model (a local one keeps its KV
/// cache between turns).
pub trait LlmSession: Send + Sync {
    /// The assistant's next reply to `history`, which ends with the caller's
    /// words or a tool's answer.
    fn reply(&self, history: Vec<ChatMessage>, tools: ToolChoice) -> LlmReply;

    /// The conversation so far (`history`, ending with the assistant's
    /// words), evaluated ahead of the caller's next message while they
    /// speak, so that the reply to it has only their words left to read. In
    /// the background; nothing to do for a server.
    fn prepare(&self, _history: Vec<ChatMessage>) {}

    /// Whether the model reads the prompt on this machine's cores before
    /// its first event (and says [`LlmEvent::TurnEnds`] there): work for the
    /// same cores is then best started after that event.
    fn reads_here(&self) -> bool {
        false
    }
}

/// A language model backend: the embedded one, or a server.
pub trait Llm: Send + Sync {
    /// A session whose system prompt is ready (a local model evaluates it
    /// once per prompt and tool set); the model may ask for `tools`.
    fn session(
        &self,
        system_prompt: String,
        tools: Vec<ToolSpec>,
    ) -> BoxFuture<'static, Result<Arc<dyn LlmSession>, EngineError>>;
}

/// The embedded voice (blocking; run on the pool).
pub trait Tts: Send + Sync {
    fn sample_rate(&self) -> u32;
    /// Synthesizes one phrase; `voice` overrides the phonemizer voice.
    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<f32>, EngineError>;
}

/// One phrase's audio at the engine's 16 kHz, in pieces as it is made.
/// Dropping it stops the synthesis (a server's request is closed).
pub type Speech = BoxStream<'static, Result<Vec<f32>, EngineError>>;

/// Who says a phrase in an embedded voice: which Piper voice, and how its
/// words become phonemes. A server speaks with the voice its table names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voice {
    /// A voice of the model manifest; `None`: the profile's.
    pub name: Option<String>,
    /// An espeak-ng voice or a pack's rules; `None`: the voice's own.
    pub phonemes: Option<String>,
}

impl Voice {
    /// The agent's voice.
    pub fn of(profile: &AgentProfile) -> Voice {
        Voice {
            name: profile.voice.clone(),
            phonemes: profile.phonemes.clone(),
        }
    }

    /// The profile's voice, reading with `phonemes`.
    pub fn reading(phonemes: Option<String>) -> Voice {
        Voice {
            name: None,
            phonemes,
        }
    }
}

/// A speech synthesis backend: the embedded voices on the pool, or a server.
pub trait TtsBackend: Send + Sync {
    fn speak(&self, text: String, voice: Voice) -> Speech;
}

/// The loaded models and the pool their work runs on.
pub struct Engine {
    pub vad: Arc<dyn Vad>,
    pub asr: Arc<dyn Asr>,
    /// Language model backends by name; `local` is the embedded model.
    pub llms: BTreeMap<String, Arc<dyn Llm>>,
    /// The profile's voice.
    pub tts: Arc<dyn Tts>,
    /// Every embedded voice, each loaded when an agent first names it.
    pub voices: Arc<tts::local::Voices>,
    /// Speech recognition backends by name; `local` is the embedded Whisper.
    pub asr_backends: BTreeMap<String, Arc<dyn AsrBackend>>,
    /// Speech synthesis backends by name; `local` is the embedded voice.
    pub tts_backends: BTreeMap<String, Arc<dyn TtsBackend>>,
    /// None when `turn.detector` is off: pauses are then judged by silence alone.
    pub turn: Option<Arc<dyn TurnDetector>>,
    pub pool: EnginePool,
    pub settings: EngineConfig,
}

impl Engine {
    /// Speech recognition of one utterance, as `hearing` says.
    pub async fn transcribe(
        &self,
        audio: Vec<f32>,
        hearing: &Hearing,
    ) -> Result<String, EngineError> {
        let backend =
            self.asr_backends
                .get(&hearing.backend)
                .ok_or_else(|| EngineError::UnknownBackend {
                    agent: String::new(),
                    stage: "speech recognition",
                    backend: hearing.backend.clone(),
                    known: names(&self.asr_backends),
                })?;
        backend.transcribe(audio, hearing).await
    }

    /// The probability that the caller's turn is complete, judged on the pool
    /// from the turn's 16 kHz audio so far.
    pub async fn turn_complete(&self, audio: Vec<f32>) -> Result<f32, EngineError> {
        let Some(turn) = self.turn.clone() else {
            return Err(EngineError::Turn("no end-of-turn model loaded".into()));
        };
        self.pool
            .run_first(self.settings.turn_threads, move || turn.complete(&audio))
            .await?
    }

    /// One phrase by an embedded voice, whole, at the engine's 16 kHz.
    pub async fn speak(&self, text: String, voice: Voice) -> Result<Vec<f32>, EngineError> {
        self.speak_with(LOCAL_BACKEND, text, voice).await
    }

    /// One phrase by the backend named `backend`, as it is made.
    pub fn speech(&self, backend: &str, text: String, voice: Voice) -> Speech {
        match self.tts_backends.get(backend) {
            Some(b) => b.speak(text, voice),
            None => {
                let e = EngineError::UnknownBackend {
                    agent: String::new(),
                    stage: "speech synthesis",
                    backend: backend.to_string(),
                    known: names(&self.tts_backends),
                };
                futures_util::stream::iter([Err(e)]).boxed()
            }
        }
    }

    /// One phrase by the backend named `backend`, whole.
    pub async fn speak_with(
        &self,
        backend: &str,
        text: String,
        voice: Voice,
    ) -> Result<Vec<f32>, EngineError> {
        let mut speech = self.speech(backend, text, voice);
        let mut audio = Vec::new();
        while let Some(piece) = speech.next().await {
            audio.extend(piece?);
        }
        Ok(audio)
    }

    /// A conversation with `agent`'s language model backend.
    pub async fn llm_session(
        &self,
        agent: &str,
        profile: &AgentProfile,
        tools: Vec<ToolSpec>,
    ) -> Result<Arc<dyn LlmSession>, EngineError> {
        let llm = self
            .llms
            .get(&profile.llm)
            .ok_or_else(|| EngineError::UnknownBackend {
                agent: agent.to_string(),
                stage: "language model",
                backend: profile.llm.clone(),
                known: names(&self.llms),
            })?;
        llm.session(profile.system_prompt.clone(), tools).await
    }
}

/// Every configured backend of one stage by name, `local` (the embedded
/// model) among them: each server made by `server`, which also says whether
/// the embedded model stands in for it, wrapped then by `standby(server,
/// local, name)`.
pub fn backends<T: ?Sized, C>(
    local: Arc<T>,
    servers: &BTreeMap<String, C>,
    server: impl Fn(&str, &C) -> Result<(Arc<T>, crate::config::EngineFallback), EngineError>,
    standby: impl Fn(Arc<T>, Arc<T>, String) -> Arc<T>,
) -> Result<BTreeMap<String, Arc<T>>, EngineError> {
    let mut all = BTreeMap::new();
    for (name, config) in servers {
        let (remote, fallback) = server(name, config)?;
        let backend = match fallback {
            crate::config::EngineFallback::Phrase => remote,
            crate::config::EngineFallback::Local => standby(remote, local.clone(), name.clone()),
        };
        all.insert(name.clone(), backend);
    }
    all.insert(LOCAL_BACKEND.to_string(), local);
    Ok(all)
}

fn names<T>(backends: &BTreeMap<String, T>) -> String {
    backends.keys().cloned().collect::<Vec<_>>().join(", ")
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

        let pool = EnginePool::new(e.cpu_threads);
        let asr: Arc<dyn Asr> = Arc::new(asr);
        let asr_backends = asr::backends(
            Arc::new(asr::local::OnPool {
                asr: asr.clone(),
                pool: pool.clone(),
                threads: e.asr_threads,
            }),
            &config.asr,
        )?;
        let t = Instant::now();
        let local = llm::llama::LlamaLlm::load(&store.require(Role::Llm)?, e)?;
        let llms = llm::backends(
            Arc::new(llm::local::OnPool::new(
                local,
                pool.clone(),
                e.llm_batch_threads,
            )),
            &config.llm,
        )?;
        times.llm = t.elapsed();

        let t = Instant::now();
        // ONNX threads beyond the pool's slots would only fight over cores.
        let voice_threads = e.tts_threads.min(e.cpu_threads);
        let tts = tts::piper::PiperTts::load(
            &store.require(Role::Tts)?,
            &store.require(Role::TtsConfig)?,
            voice_threads,
            e.espeak.clone(),
        )?;
        let tts: Arc<dyn Tts> = Arc::new(tts);
        let espeak = e.espeak.clone();
        let voice_store = store.clone();
        let voices = Arc::new(tts::local::Voices::new(
            store.default_voice()?,
            tts.clone(),
            Box::new(move |name| {
                let (model, config) = voice_store.voice(name)?;
                let voice =
                    tts::piper::PiperTts::load(&model, &config, voice_threads, espeak.clone())?;
                Ok(Arc::new(voice) as Arc<dyn Tts>)
            }),
        ));
        let tts_backends = tts::backends(
            Arc::new(tts::local::OnPool {
                voices: voices.clone(),
                pool: pool.clone(),
                threads: e.tts_threads,
            }),
            &config.tts,
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
                asr,
                llms,
                tts,
                voices,
                asr_backends,
                tts_backends,
                turn,
                pool,
                settings: e.clone(),
            },
            times,
        ))
    }
}
