//! One typed configuration: embedded defaults, then an optional TOML file, then
//! `IZWI_<SECTION>_<KEY>` environment overrides. Every value is checked once here
//! so that the rest of the program can trust it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
    #[error("environment variable {var} does not name a setting (known sections: {known})")]
    UnknownEnv { var: String, known: String },
}

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub models: ModelsConfig,
    pub engine: EngineConfig,
    pub turn: TurnConfig,
    pub dialplan: DialplanConfig,
    pub sip: SipConfig,
    pub http: HttpConfig,
    pub twilio: TwilioConfig,
    pub records: RecordsConfig,
    pub api: ApiConfig,
    pub agents: BTreeMap<String, AgentProfile>,
    pub log: LogConfig,
    /// Language model servers by name (`[llm.NAME]`), for agents whose `llm`
    /// names one; `local`, the embedded model, is always there.
    pub llm: BTreeMap<String, RemoteLlmConfig>,
    /// Speech recognition servers by name (`[asr.NAME]`), for agents whose
    /// `asr` names one.
    pub asr: BTreeMap<String, RemoteAsrConfig>,
    /// Speech synthesis servers by name (`[tts.NAME]`), for agents whose
    /// `tts` names one.
    pub tts: BTreeMap<String, RemoteTtsConfig>,
}

/// An OpenAI-compatible chat-completions server: vLLM, llama.cpp's
/// `llama-server`, llama-cpp-python's server, OpenAI itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteLlmConfig {
    /// The API's base, up to and including `/v1` (`http://10.0.0.5:8000/v1`);
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model name the server expects.
    pub model: String,
    /// The bearer token; prefer `api_key_env`, which keeps it out of the file.
    #[serde(default)]
    pub api_key: String,
    /// The environment variable that holds the bearer token.
    #[serde(default)]
    pub api_key_env: String,
    #[serde(default = "RemoteLlmConfig::default_max_tokens")]
    pub max_tokens: u32,
    /// Unset: the server's default.
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default = "RemoteLlmConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From the request to the reply's first event.
    #[serde(default = "RemoteLlmConfig::default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// The longest silence between two events of a reply.
    #[serde(default = "RemoteLlmConfig::default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// The most messages of the call's history sent with a request (the
    /// newest; the system prompt apart): a long call must not outgrow the
    /// server's context.
    #[serde(default = "RemoteLlmConfig::default_max_history_messages")]
    pub max_history_messages: usize,
    /// When the server fails before the reply's first word: `phrase` (the
    /// agent's `engine_failed` phrase) or `local` (the embedded model answers
    /// that turn).
    #[serde(default)]
    pub fallback: EngineFallback,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EngineFallback {
    #[default]
    Phrase,
    Local,
}

impl RemoteLlmConfig {
    fn default_max_tokens() -> u32 {
        120
    }
    fn default_connect_timeout_ms() -> u64 {
        2_000
    }
    fn default_first_token_timeout_ms() -> u64 {
        5_000
    }
    fn default_idle_timeout_ms() -> u64 {
        5_000
    }
    fn default_max_history_messages() -> usize {
        24
    }

    /// The bearer token, if any: `api_key`, else the variable `api_key_env` names.
    pub fn key(&self) -> Result<Option<String>, String> {
        bearer(&self.api_key, &self.api_key_env)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: String| Err((field.to_string(), msg));
        check_server(
            &self.base_url,
            &self.model,
            &self.api_key,
            &self.api_key_env,
        )?;
        if !(2..=1000).contains(&self.max_history_messages) {
            return bad("max_history_messages", "must be 2 to 1000".into());
        }
        if !(1..=4096).contains(&self.max_tokens) {
            return bad("max_tokens", "must be 1 to 4096".into());
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad("temperature", "must be 0 to 2".into());
        }
        check_timeouts(&[
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_token_timeout_ms", self.first_token_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ])
    }
}

/// A bearer token: `api_key`, else the variable `api_key_env` names, else none.
fn bearer(api_key: &str, api_key_env: &str) -> Result<Option<String>, String> {
    if !api_key.is_empty() {
        return Ok(Some(api_key.to_string()));
    }
    if api_key_env.is_empty() {
        return Ok(None);
    }
    match std::env::var(api_key_env) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        _ => Err(format!(
            "the environment variable `{api_key_env}` is not set"
        )),
    }
}

/// What every server's table must have right: an http(s) base URL with a
/// host, a model name, one way to give the key.
fn check_server(
    base_url: &str,
    model: &str,
    api_key: &str,
    api_key_env: &str,
) -> Result<(), (String, String)> {
    let bad = |field: &str, msg: String| Err((field.to_string(), msg));
    let url = base_url.trim();
    // A key belongs in api_key or api_key_env, where no log shows it.
    if url::Url::parse(url).is_ok_and(|u| !u.username().is_empty() || u.password().is_some()) {
        return bad(
            "base_url",
            "must not hold a user or password (use api_key_env)".into(),
        );
    }
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or("");
    if host.trim_matches('/').is_empty() {
        return bad(
            "base_url",
            format!("`{url}` is not an http:// or https:// URL with a host"),
        );
    }
    if model.trim().is_empty() {
        return bad("model", "must not be empty".into());
    }
    if !api_key.is_empty() && !api_key_env.is_empty() {
        return bad(
            "api_key_env",
            "set `api_key` or `api_key_env`, not both".into(),
        );
    }
    Ok(())
}

fn check_timeouts(timeouts: &[(&str, u64)]) -> Result<(), (String, String)> {
    for (field, v) in timeouts {
        if !(100..=120_000).contains(v) {
            return Err((field.to_string(), "must be 100 to 120000 ms".into()));
        }
    }
    Ok(())
}

/// An OpenAI-compatible speech recognition server (`{base_url}/audio/transcriptions`,
/// a WAV upload): faster-whisper servers, vLLM serving Whisper, OpenAI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteAsrConfig {
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub api_key_env: String,
    #[serde(default = "RemoteLlmConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From the upload to the transcript.
    #[serde(default = "RemoteAsrConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// When the server fails: `phrase` (the agent's `engine_failed` phrase
    /// answers the turn) or `local` (the embedded model transcribes it).
    #[serde(default)]
    pub fallback: EngineFallback,
}

impl RemoteAsrConfig {
    fn default_timeout_ms() -> u64 {
        10_000
    }

    pub fn key(&self) -> Result<Option<String>, String> {
        bearer(&self.api_key, &self.api_key_env)
    }

    fn check(&self) -> Result<(), (String, String)> {
        check_server(
            &self.base_url,
            &self.model,
            &self.api_key,
            &self.api_key_env,
        )?;
        check_timeouts(&[
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("timeout_ms", self.timeout_ms),
        ])
    }
}

/// An OpenAI-compatible speech synthesis server (`{base_url}/audio/speech`);
/// its audio is played as it arrives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteTtsConfig {
    pub base_url: String,
    pub model: String,
    /// The server's voice name.
    #[serde(default = "RemoteTtsConfig::default_voice")]
    pub voice: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default)]
    pub api_key_env: String,
    /// `pcm` (raw 16-bit little-endian mono at `sample_rate`) or `wav`.
    #[serde(default)]
    pub response_format: TtsFormat,
    /// The rate of `pcm` audio: OpenAI's is 24000. A server that names its
    /// rate in an `X-Sample-Rate` header is believed instead.
    #[serde(default = "RemoteTtsConfig::default_sample_rate")]
    pub sample_rate: u32,
    #[serde(default = "RemoteLlmConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From the request to the first audio.
    #[serde(default = "RemoteLlmConfig::default_first_token_timeout_ms")]
    pub first_audio_timeout_ms: u64,
    /// The longest wait between two pieces of audio.
    #[serde(default = "RemoteLlmConfig::default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// When the server fails before a phrase's first audio: `phrase` (the
    /// agent's `engine_failed` phrase, if nothing was said yet) or `local`
    /// (the embedded voice says the phrase).
    #[serde(default)]
    pub fallback: EngineFallback,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TtsFormat {
    #[default]
    Pcm,
    Wav,
}

impl RemoteTtsConfig {
    fn default_voice() -> String {
        "alloy".into()
    }
    fn default_sample_rate() -> u32 {
        24_000
    }

    pub fn key(&self) -> Result<Option<String>, String> {
        bearer(&self.api_key, &self.api_key_env)
    }

    fn check(&self) -> Result<(), (String, String)> {
        check_server(
            &self.base_url,
            &self.model,
            &self.api_key,
            &self.api_key_env,
        )?;
        if self.voice.trim().is_empty() {
            return Err(("voice".into(), "must not be empty".into()));
        }
        if !(8_000..=48_000).contains(&self.sample_rate) {
            return Err(("sample_rate".into(), "must be 8000 to 48000 Hz".into()));
        }
        check_timeouts(&[
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_audio_timeout_ms", self.first_audio_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ])
    }
}

/// The HTTP listener: cloud providers' webhooks and media streams (and, later,
/// metrics and the operator API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: String,
    /// The address callers' providers reach Izwi at, e.g. `https://izwi.example.org`
    /// (Izwi usually sits behind a TLS proxy). Webhook signatures are computed
    /// on it, and stream URLs handed out are built from it. Empty: taken from
    /// each request's Host header, as `http://`.
    pub public_url: String,
    /// Connections (HTTP and the WebSockets they become) open at once; 0: as
    /// many as the file limit leaves room for, at most 1024.
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_connections_per_source: usize,
    /// A request's headers must arrive within this; it also closes a
    /// keep-alive connection idle this long.
    pub header_timeout_secs: u64,
    /// A request (body included) must be answered within this.
    pub request_timeout_secs: u64,
    /// Who may read `/metrics` (CIDR blocks); empty: anyone who reaches the listener.
    pub metrics_allow: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "0.0.0.0:8080".into(),
            public_url: String::new(),
            max_connections: 0,
            max_connections_per_source: 256,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            metrics_allow: Vec::new(),
        }
    }
}

/// Call records (SQLite): timings and outcomes, never audio or transcripts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    pub enabled: bool,
    /// The SQLite file (created with its folder when missing).
    pub path: PathBuf,
    /// A PostgreSQL database instead (`postgres://user:password@host:5432/izwi`),
    /// which several nodes share; `path` is then unused. Empty: SQLite.
    pub url: String,
    /// Key of the HMAC that stands in for callers' numbers. Empty: a random
    /// key kept in a file beside the database (`<path>.key`), made on first use.
    pub caller_key: String,
    /// Records waiting for the writer; beyond this they are dropped and counted.
    pub queue: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            path: PathBuf::from("data/izwi.db"),
            url: String::new(),
            caller_key: String::new(),
            queue: 1024,
        }
    }
}

/// The operator API (`/v1/…`), metrics and health on the HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HS256 secret for bearer JWTs; empty: not accepted.
    pub jwt_secret: String,
    /// File holding the RS256 public key (PEM) for bearer JWTs; empty: not accepted.
    pub jwt_public_key: String,
    /// The `aud` a JWT must carry.
    pub jwt_audience: String,
    /// API keys (`X-Api-Key`): entries `NAME:KEY` or `NAME:KEY:admin`.
    pub api_keys: Vec<String>,
    /// Requests per minute per key or JWT subject; 0: no limit.
    pub rate_per_minute: u32,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    pub cors_origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            jwt_audience: "izwi".into(),
            api_keys: Vec::new(),
            rate_per_minute: 120,
            cors_origins: Vec::new(),
        }
    }
}

/// Twilio's voice webhook and Media Streams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    pub enabled: bool,
    /// The account's auth token: it keys webhook signatures (and stream tokens).
    pub auth_token: String,
    /// Checks `X-Twilio-Signature` on the webhook; turning it off accepts anyone.
    pub validate_signature: bool,
    pub voice_path: String,
    pub stream_path: String,
    /// Where Twilio asks what to do once a stream ends (the TwiML
    /// `<Connect action>`): `<Dial>` the target of an agent's transfer,
    /// `<Hangup/>` otherwise.
    pub action_path: String,
    /// Concurrent streams; more are refused at the webhook (TwiML `<Reject>`)
    /// and at the WebSocket upgrade (503).
    pub max_streams: usize,
    /// A stream must start this soon after its webhook was answered.
    pub stream_token_max_age_secs: u64,
    /// A WebSocket must send a valid `start` this soon after it opens.
    pub start_timeout_secs: u64,
    /// A started stream that sends no media for this long is closed.
    pub media_timeout_secs: u64,
    /// A WebSocket ping goes out this often.
    pub ping_secs: u64,
    /// A frame to Twilio that cannot be written within this closes the
    /// stream: the other side has stopped reading.
    pub send_timeout_secs: u64,
    /// Bytes a stream may send in any one second (Twilio sends about 20 KB).
    pub max_bytes_per_sec: usize,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            enabled: true,
            auth_token: String::new(),
            validate_signature: true,
            voice_path: "/twilio/voice".into(),
            stream_path: "/twilio/stream".into(),
            action_path: "/twilio/stream-ended".into(),
            max_streams: 100,
            stream_token_max_age_secs: 300,
            start_timeout_secs: 10,
            media_timeout_secs: 10,
            ping_secs: 10,
            send_timeout_secs: 5,
            max_bytes_per_sec: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Which set of models to load: `small` (CI, English) or `default` (multilingual ASR).
    pub profile: String,
    /// Where fetched and verified model files live.
    pub dir: PathBuf,
    /// A local folder holding model files under their manifest names (checked first).
    pub mirror: Option<PathBuf>,
    /// A manifest file replacing the embedded one.
    pub manifest: Option<PathBuf>,
    /// PyPI simple index (PEP 691 JSON) used for wheel sources.
    pub pypi_index: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// CPU threads that engine work of all calls may use at once (default: the
    /// machine's cores). Each job below takes as many as it runs threads.
    pub cpu_threads: usize,
    /// Threads of one utterance's speech recognition (on the critical path).
    pub asr_threads: usize,
    /// Threads of one LLM generation step.
    pub llm_threads: usize,
    /// Threads of the LLM's prompt evaluation.
    pub llm_batch_threads: usize,
    /// Threads of one phrase's synthesis (all cores by default: the first
    /// phrase is on the caller's wait, 200 -> 130 ms on 2 cores; the model
    /// writes on between phrases).
    pub tts_threads: usize,
    pub vad_threads: usize,
    /// Threads of one end-of-turn check (~60–90 ms on one thread when a pause
    /// needs a verdict). It runs beside the reply, while the local model
    /// writes on its own thread: one leaves that model its core.
    pub turn_threads: usize,
    /// LLM context size in tokens, per call.
    pub llm_context: u32,
    pub llm_max_reply_tokens: u32,
    /// 0 means greedy decoding.
    pub llm_temperature: f32,
    pub llm_seed: u32,
    /// ONNX Runtime shared library; empty means `ORT_DYLIB_PATH` or the model store.
    pub onnxruntime: Option<PathBuf>,
    /// The espeak-ng program used to phonemize text for Piper voices.
    pub espeak: PathBuf,
    /// Shorter Whisper encoder windows for short utterances (faster, slightly less accurate).
    pub asr_fit_audio_context: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Speech probability at or above which a frame counts as speech.
    pub vad_threshold: f32,
    /// Probability below which speech is considered to have stopped.
    pub vad_release: f32,
    /// Speech must last this long to open a caller turn (filters clicks).
    pub min_speech_ms: u32,
    /// Silence after speech that ends the caller's turn when no verdict of the
    /// end-of-turn model says otherwise (the reply may play from then).
    pub endpoint_silence_ms: u32,
    /// Silence after which the caller's words so far are recognised,
    /// speculatively: the result waits for the reply (or, if the caller goes on
    /// after a pause of `early_endpoint_ms`, stays as the turn's first words).
    /// At or above `early_endpoint_ms` the reply recognises the words itself.
    pub transcribe_after_ms: u32,
    /// Silence after which the reply starts being prepared, speculatively: it is
    /// dropped if the caller speaks again before it plays.
    pub early_endpoint_ms: u32,
    /// Judge each pause with the end-of-turn model (Smart Turn), in the
    /// languages it was trained on; other languages keep `endpoint_silence_ms`.
    pub detector: bool,
    /// Silence enough when the model judged the turn complete.
    pub complete_silence_ms: u32,
    /// Silence kept when it judged the turn incomplete (a pause mid-sentence).
    pub incomplete_silence_ms: u32,
    /// Probability of completeness from which a turn counts as complete.
    pub complete_threshold: f32,
    /// Also ask the language model (a local one) how likely the caller's
    /// message ends after their last word; either judge at
    /// `complete_threshold` makes the turn complete. Only where the
    /// end-of-turn model judges.
    pub judge_words: bool,
    /// A caller turn longer than this is cut and answered.
    pub max_utterance_ms: u32,
    /// Audio kept from before speech onset, so the first syllable reaches ASR.
    pub preroll_ms: u32,
    pub barge_in: bool,
    /// Caller speech over the agent must last this long to interrupt it.
    pub barge_in_min_ms: u32,
    /// Hold the agent's audio from the first frame of speech over it, and
    /// go on from there if the speech stops short of `barge_in_min_ms`: a
    /// barge-in is then heard at once, a cough costs a short pause.
    pub barge_in_pause: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DialplanConfig {
    /// The agent a call gets when no rule of the dialplan file routes it.
    pub default_agent: String,
    /// A dialplan file (rules, a default, agent profiles; see `dialplans/`).
    /// Watched: a change (or SIGHUP) reloads it without a restart. None: every
    /// call gets `default_agent`.
    pub file: Option<PathBuf>,
    /// Answer every call with an echo of the caller instead of the engine: a
    /// capacity test of the telephony side that needs no models.
    pub echo: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub enabled: bool,
    /// Address and port of the SIP listener (UDP).
    pub listen: String,
    /// Address put in Contact, Via and SDP; empty means the listen address
    /// (or 127.0.0.1 when listening on all addresses). Set it behind NAT.
    pub advertise: String,
    /// RTP ports, one per call, from this inclusive range.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Codecs in order of preference: pcmu, pcma, opus.
    pub codecs: Vec<String>,
    /// No RTP from the caller for this long ends the call.
    pub rtp_timeout_secs: u32,
    pub max_call_secs: u32,
    pub max_calls: usize,
    /// Calls one source address may hold at once when it is neither in
    /// `allow` nor authenticated by digest (those are bound only by
    /// `max_calls`): the share of the open door.
    pub max_calls_per_source: usize,
    /// SIP requests a second one source address may send (twice as many in
    /// a burst); beyond, they are dropped unanswered and counted. Sources in
    /// `allow` are not limited. 0: no limit.
    pub requests_per_source: u32,
    /// Where a call's RTP may come from: `peer` (the SDP address, or any
    /// port at the SDP's or the SIP peer's IP address, for callers behind
    /// NAT), `sdp` (only the SDP address and port) or `first` (the first
    /// packet from anywhere, then that IP).
    pub rtp_latch: RtpLatch,
    /// SIP-over-TCP connections open at once; 0: as many as the file limit
    /// leaves room for, at most 1024.
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_source: usize,
    /// A TCP connection that carries nothing (not even a keep-alive) for
    /// this long is closed.
    pub tcp_idle_secs: u64,
    /// A SIP message begun on a TCP connection must be complete within this.
    pub tcp_message_secs: u64,
    /// The most packets the jitter buffer holds before playout (20 ms each):
    /// it starts at one and grows by one each time a packet comes late.
    pub jitter_packets: usize,
    /// Ring (180) for this long before answering; 0 answers at once.
    pub ring_ms: u32,
    /// On SIGTERM, how long calls in progress may go on while new ones get
    /// 503 (a dispatcher's OPTIONS health check then takes the node out);
    /// Izwi stops as soon as the last has ended. 0: SIGTERM stops at once.
    pub drain_secs: u32,
    /// Addresses (CIDR blocks) whose calls are taken without authentication,
    /// e.g. a trunk's signalling addresses. Empty: no allow-list.
    pub allow: Vec<String>,
    /// Digest credentials a caller outside `allow` must present; an empty user
    /// disables authentication (then only `allow` decides, if set).
    pub auth_user: String,
    pub auth_password: String,
    pub auth_realm: String,
    /// Registrar to REGISTER with (`host` or `host:port`), so a trunk routes a
    /// number to Izwi; empty: no registration.
    pub register_to: String,
    /// `udp` or `tcp`.
    pub register_transport: String,
    /// Domain of the address of record and Request-URI; empty: the host of `register_to`.
    pub register_domain: String,
    /// User part of the address of record (and Contact).
    pub register_user: String,
    /// Digest username when it differs from `register_user`.
    pub register_auth_user: String,
    pub register_password: String,
    /// Registration lifetime asked for; Izwi re-registers before it runs out.
    pub register_expires: u32,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            listen: "0.0.0.0:5060".into(),
            advertise: String::new(),
            rtp_port_min: 20_000,
            rtp_port_max: 20_999,
            // G.711 first: what trunks and PBXes speak; Opus when a softphone offers only that or it is preferred.
            codecs: vec!["pcmu".into(), "pcma".into(), "opus".into()],
            rtp_timeout_secs: 30,
            max_call_secs: 3600,
            max_calls: 100,
            max_calls_per_source: 10,
            requests_per_source: 200,
            rtp_latch: RtpLatch::Peer,
            tcp_max_connections: 0,
            tcp_max_connections_per_source: 64,
            tcp_idle_secs: 300,
            tcp_message_secs: 10,
            jitter_packets: 3,
            ring_ms: 0,
            drain_secs: 300,
            allow: Vec::new(),
            auth_user: String::new(),
            auth_password: String::new(),
            auth_realm: "izwi".into(),
            register_to: String::new(),
            register_transport: "udp".into(),
            register_domain: String::new(),
            register_user: String::new(),
            register_auth_user: String::new(),
            register_password: String::new(),
            register_expires: 3600,
        }
    }
}

/// Which addresses a call's RTP is taken from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RtpLatch {
    /// The SDP address, or any port at the SDP's or the SIP peer's IP address.
    Peer,
    /// Only the SDP address and port.
    Sdp,
    /// The session's first packet from anywhere, then only that IP: for
    /// callers whose media matches neither address (a private SDP address
    /// through a signalling-only proxy). A stranger racing the first packet
    /// can win it: use only where `peer` cannot work.
    First,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// Whisper language code (`en`, `sn`, `sw`, …) or `auto`. It picks the
    /// language pack (src/lang/) that fills the phrases, the phonemes and
    /// the recogniser's prompt left empty here, and says numbers, times,
    /// dates and money in words.
    pub language: String,
    pub system_prompt: String,
    /// Played as soon as a call is answered; synthesized once and cached.
    /// Empty: the language pack's.
    #[serde(default)]
    pub greeting: String,
    /// How the embedded voice reads the words: an espeak-ng voice (`en-us`,
    /// `sw`) or a pack's own letter-to-sound rules (`izwi:sn`). Empty: the
    /// language pack's, or the voice model's own for a language without one.
    #[serde(default, alias = "espeak_voice")]
    pub phonemes: Option<String>,
    /// The embedded Piper voice that speaks for this agent, by its name in
    /// the model manifest (`sw_CD-lanfrica-medium`); it is loaded once, for
    /// every agent naming it, and `izwi models fetch` fetches it. Empty:
    /// the profile's voice.
    #[serde(default)]
    pub voice: Option<String>,
    /// Said before Izwi hangs up (unless the model's own reply said goodbye).
    #[serde(default)]
    pub goodbye: String,
    /// What the model may ask for: `end_call`, `transfer` (to the targets
    /// in `transfer`). None by default: a small model asked to choose picks
    /// an action for ordinary questions too (measured on the bundled 135M
    /// model); the silence policy and the keys act whatever the model.
    #[serde(default)]
    pub model_actions: Vec<String>,
    /// What happens when the caller says nothing.
    #[serde(default)]
    pub silence: SilencePolicy,
    /// The longest call, in seconds, before the goodbye and hang-up (0: none;
    /// `sip.max_call_secs` stays the hard limit).
    #[serde(default = "AgentProfile::default_max_call_secs")]
    pub max_call_secs: u32,
    /// Where the caller may be transferred: a name the model and the keys use
    /// → a SIP URI or a number. The model can never name anything else.
    #[serde(default)]
    pub transfer: BTreeMap<String, String>,
    /// Said before a transfer.
    #[serde(default)]
    pub transfer_announcement: String,
    /// Said when a transfer fails (the caller's side refused it).
    #[serde(default)]
    pub transfer_failed: String,
    /// What the call does when a transfer fails.
    #[serde(default)]
    pub transfer_fallback: TransferFallback,
    /// Keys and what they do: `"0" = "transfer:front_desk"`, `"9" = "repeat"`,
    /// `"#" = "end_call"`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Keys not mapped are collected and handed to the model, when set.
    #[serde(default)]
    pub collect: Option<CollectDigits>,
    /// The language model backend: `local` (the embedded model) or the name
    /// of an `[llm.NAME]` server.
    #[serde(default = "AgentProfile::default_llm")]
    pub llm: String,
    /// The speech recognition backend: `local` (the embedded Whisper) or the
    /// name of an `[asr.NAME]` server.
    #[serde(default = "AgentProfile::default_llm")]
    pub asr: String,
    /// Words the caller is likely to say (the clinic's name, places): the
    /// recogniser's initial prompt, to bias it towards them. Empty: the
    /// language pack's common words.
    #[serde(default)]
    pub asr_prompt: String,
    /// The speech synthesis backend: `local` (the embedded Piper voice) or
    /// the name of a `[tts.NAME]` server.
    #[serde(default = "AgentProfile::default_llm")]
    pub tts: String,
    /// Said when the language model fails (a server down, a timeout) and no
    /// other backend answers; the call goes on.
    #[serde(default)]
    pub engine_failed: String,
    /// HTTP functions the model may call (`[[agents.NAME.tools]]`).
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// How the model is asked to use the tools on the first step of a
    /// reply: `auto` (it chooses), `required` (some tool), `none`, or a
    /// tool's name.
    #[serde(default = "AgentProfile::default_tool_choice")]
    pub tool_choice: String,
    /// Steps of tool calls one reply may take before the model must speak
    /// (1-5). One by default: a small model asked again after a tool's
    /// answer tends to call the same tool again rather than answer.
    #[serde(default = "AgentProfile::default_tool_steps")]
    pub tool_steps: u32,
    /// Said when a tool is still running after `filler_after_ms` and
    /// nothing else has been said yet.
    #[serde(default)]
    pub filler: String,
    #[serde(default = "AgentProfile::default_filler_after_ms")]
    pub filler_after_ms: u32,
}

/// An HTTP function an agent's model may call. POST sends the arguments as
/// a JSON body, GET as query parameters; the answer must be JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// Letters, digits and `_`: what the model calls it.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON schema of an object: the arguments, checked before the call.
    #[serde(default = "ToolConfig::no_parameters")]
    pub parameters: serde_json::Value,
    pub url: String,
    #[serde(default = "ToolConfig::default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from environment variables (header →
    /// variable name), so that secrets stay out of the file.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, String>,
    #[serde(default = "ToolConfig::default_timeout_ms")]
    pub timeout_ms: u64,
}

impl ToolConfig {
    fn no_parameters() -> serde_json::Value {
        serde_json::json!({"type": "object", "properties": {}})
    }
    fn default_method() -> String {
        "POST".into()
    }
    fn default_timeout_ms() -> u64 {
        5_000
    }

    /// The parameters' names and schemas.
    pub fn properties(&self) -> Vec<(&String, &serde_json::Value)> {
        self.parameters
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.iter().collect())
            .unwrap_or_default()
    }

    fn check(&self, local_model: bool) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: String| Err((field.to_string(), msg));
        let n = &self.name;
        if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad("name", format!("`{n}` is not 1-64 letters, digits or _"));
        }
        if matches!(
            n.as_str(),
            "end_call" | "transfer" | "answer" | "auto" | "none" | "required"
        ) {
            return bad(
                "name",
                format!("`{n}` is a built-in action's or a tool_choice's name"),
            );
        }
        if self.description.trim().is_empty() {
            return bad("description", "must say what the tool does".into());
        }
        if self.parameters.get("type").and_then(|t| t.as_str()) != Some("object") {
            return bad(
                "parameters",
                "must be a JSON schema with type = \"object\"".into(),
            );
        }
        if let Err(e) = jsonschema::validator_for(&self.parameters) {
            return bad("parameters", format!("not a valid JSON schema: {e}"));
        }
        if local_model {
            let props = self.properties();
            let one_string = props.len() == 1
                && props[0].1.get("type").and_then(|t| t.as_str()) == Some("string");
            if !props.is_empty() && !one_string {
                return bad(
                    "parameters",
                    "the local model takes tools of no parameter or one string parameter; \
                     give the agent an [llm.NAME] server for more"
                        .into(),
                );
            }
        }
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return bad("url", format!("`{url}` is not an http:// or https:// URL"));
        }
        if !matches!(self.method.to_ascii_uppercase().as_str(), "GET" | "POST") {
            return bad("method", format!("`{}` is not GET or POST", self.method));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return bad("timeout_ms", "must be 100 to 60000".into());
        }
        Ok(())
    }
}

/// Caller silent for `after_secs`: the prompt, up to `prompts` times; then
/// the goodbye and a hang-up. With the defaults a silent call ends within
/// a minute.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SilencePolicy {
    /// 0: never (the call waits for the caller or the maximum length).
    pub after_secs: u32,
    pub prompt: String,
    pub prompts: u32,
}

impl Default for SilencePolicy {
    fn default() -> Self {
        SilencePolicy {
            after_secs: 12,
            // The language pack's.
            prompt: String::new(),
            prompts: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferFallback {
    /// Say `transfer_failed` and go on with the call.
    #[default]
    Continue,
    /// Say `transfer_failed`, then the goodbye, and hang up.
    HangUp,
}

/// Digits for the model: up to `max_digits`, or ended by `end_key`, or by
/// `timeout_secs` without a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectDigits {
    pub max_digits: u32,
    pub end_key: String,
    pub timeout_secs: u32,
}

impl Default for CollectDigits {
    fn default() -> Self {
        CollectDigits {
            max_digits: 10,
            end_key: "#".into(),
            timeout_secs: 5,
        }
    }
}

/// The name of the embedded language model as a backend.
pub const LOCAL_BACKEND: &str = "local";

/// What a key or the model may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    EndCall,
    Repeat,
    Transfer(String),
}

const KEYS: &str = "0123456789*#ABCD";

impl KeyAction {
    pub fn parse(s: &str) -> Option<KeyAction> {
        match s.trim() {
            "end_call" => Some(KeyAction::EndCall),
            "repeat" => Some(KeyAction::Repeat),
            t => t
                .strip_prefix("transfer:")
                .map(|n| KeyAction::Transfer(n.trim().to_string())),
        }
    }
}

impl AgentProfile {
    fn default_max_call_secs() -> u32 {
        900
    }
    pub fn default_llm() -> String {
        LOCAL_BACKEND.into()
    }
    fn default_tool_choice() -> String {
        "auto".into()
    }
    fn default_tool_steps() -> u32 {
        1
    }
    fn default_filler_after_ms() -> u32 {
        700
    }

    /// A profile with these words and every other setting at its default
    /// (the phrases its language's pack has).
    pub fn new(language: &str, system_prompt: &str, greeting: &str) -> AgentProfile {
        let mut profile = AgentProfile {
            language: language.into(),
            system_prompt: system_prompt.into(),
            greeting: greeting.into(),
            phonemes: None,
            voice: None,
            goodbye: String::new(),
            model_actions: Vec::new(),
            silence: SilencePolicy::default(),
            max_call_secs: Self::default_max_call_secs(),
            transfer: BTreeMap::new(),
            transfer_announcement: String::new(),
            transfer_failed: String::new(),
            transfer_fallback: TransferFallback::default(),
            keys: BTreeMap::new(),
            collect: None,
            llm: Self::default_llm(),
            asr: Self::default_llm(),
            asr_prompt: String::new(),
            tts: Self::default_llm(),
            engine_failed: String::new(),
            tools: Vec::new(),
            tool_choice: Self::default_tool_choice(),
            tool_steps: Self::default_tool_steps(),
            filler: String::new(),
            filler_after_ms: Self::default_filler_after_ms(),
        };
        profile.fill_from_pack();
        profile
    }

    /// Fills what is left empty from the language's pack: the fixed
    /// phrases (English ones for a language without a pack), the phonemes
    /// and the recogniser's prompt.
    pub fn fill_from_pack(&mut self) {
        let pack = crate::lang::pack(&self.language);
        let phrases = crate::lang::pack_or_english(&self.language).phrases;
        for (field, text) in [
            (&mut self.greeting, phrases.greeting),
            (&mut self.goodbye, phrases.goodbye),
            (&mut self.silence.prompt, phrases.still_there),
            (
                &mut self.transfer_announcement,
                phrases.transfer_announcement,
            ),
            (&mut self.transfer_failed, phrases.transfer_failed),
            (&mut self.engine_failed, phrases.engine_failed),
            (&mut self.filler, phrases.filler),
        ] {
            if field.trim().is_empty() {
                *field = text.to_string();
            }
        }
        if let Some(pack) = pack {
            if self.phonemes.as_deref().is_none_or(|p| p.trim().is_empty()) {
                self.phonemes = Some(pack.phonemes.to_string());
            }
            if self.asr_prompt.trim().is_empty() {
                self.asr_prompt = pack.asr_hint.to_string();
            }
        }
    }

    /// Whether the model may ask for `action`.
    pub fn model_may(&self, action: &str) -> bool {
        self.model_actions.iter().any(|a| a == action)
    }

    /// The key map, checked: `(key, action)`.
    pub fn key_actions(&self) -> Vec<(char, KeyAction)> {
        self.keys
            .iter()
            .filter_map(|(k, a)| Some((k.chars().next()?, KeyAction::parse(a)?)))
            .collect()
    }

    /// What is wrong with the profile, naming the setting (relative to the
    /// agent's table).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: String| Err((field.to_string(), msg));
        if self.language.trim().is_empty() {
            return bad("language", "must not be empty".into());
        }
        if self.system_prompt.trim().is_empty() {
            return bad("system_prompt", "must not be empty".into());
        }
        // Whisper keeps at most 224 tokens of prompt (its first ones are
        // dropped beyond): 800 characters is about that many.
        if self.asr_prompt.chars().count() > 800 {
            return bad("asr_prompt", "must be at most 800 characters".into());
        }
        if let Some(v) = &self.voice
            && (v.trim().is_empty() || v.contains(['/', '\\']) || v.starts_with('.'))
        {
            return bad(
                "voice",
                format!("`{v}` is not a voice name (one in the model manifest, without `.onnx`)"),
            );
        }
        if let Some(p) = &self.phonemes
            && crate::lang::rules_known(p) == Some(false)
        {
            return bad(
                "phonemes",
                format!(
                    "no letter-to-sound rules `{p}`; Izwi has {}",
                    crate::lang::rules_names()
                ),
            );
        }
        for (name, target) in &self.transfer {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
                return bad(
                    &format!("transfer.{name}"),
                    "a target's name is letters, digits and _ only".into(),
                );
            }
            let t = target.trim();
            let number = t.strip_prefix('+').unwrap_or(t);
            let uri = t.starts_with("sip:") || t.starts_with("sips:");
            if !uri && (number.is_empty() || !number.chars().all(|c| c.is_ascii_digit())) {
                return bad(
                    &format!("transfer.{name}"),
                    format!("`{target}` is neither a SIP URI (sip:…) nor a number"),
                );
            }
            if t.chars()
                .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == '"')
            {
                return bad(
                    &format!("transfer.{name}"),
                    format!("`{target}` contains spaces, quotes or angle brackets"),
                );
            }
        }
        for a in &self.model_actions {
            match a.as_str() {
                "end_call" => {}
                "transfer" if self.transfer.is_empty() => {
                    return bad(
                        "model_actions",
                        "`transfer` needs targets in this agent's `transfer` table".into(),
                    );
                }
                "transfer" => {}
                other => {
                    return bad(
                        "model_actions",
                        format!(
                            "`{other}` is not an action the model can ask for (end_call, transfer)"
                        ),
                    );
                }
            }
        }
        for (key, action) in &self.keys {
            if key.chars().count() != 1 || !KEYS.contains(key.as_str()) {
                return bad(
                    &format!("keys.\"{key}\""),
                    format!("`{key}` is not a key (one of {KEYS})"),
                );
            }
            match KeyAction::parse(action) {
                None => {
                    return bad(
                        &format!("keys.\"{key}\""),
                        format!(
                            "`{action}` is not an action (end_call, repeat, transfer:<target>)"
                        ),
                    );
                }
                Some(KeyAction::Transfer(t)) if !self.transfer.contains_key(&t) => {
                    return bad(
                        &format!("keys.\"{key}\""),
                        format!(
                            "transfer target `{t}` is not in this agent's transfer table ({})",
                            self.transfer.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            if let Err((field, msg)) = tool.check(self.llm == LOCAL_BACKEND) {
                return bad(&format!("tools[{i}].{field}"), msg);
            }
            if !names.insert(tool.name.as_str()) {
                return bad(
                    &format!("tools[{i}].name"),
                    format!("`{}` is named twice", tool.name),
                );
            }
        }
        match self.tool_choice.as_str() {
            "required" if self.tools.is_empty() || !self.model_actions.is_empty() => {
                return bad(
                    "tool_choice",
                    "`required` needs [[tools]] and no model_actions (a forced call \
                     must not be a hang-up or a transfer)"
                        .into(),
                );
            }
            "auto" | "none" | "required" => {}
            name if names.contains(name) => {}
            other => {
                return bad(
                    "tool_choice",
                    format!("`{other}` is not auto, none, required or one of this agent's tools"),
                );
            }
        }
        if !(1..=5).contains(&self.tool_steps) {
            return bad("tool_steps", "must be 1 to 5".into());
        }
        if self.filler_after_ms > 60_000 {
            return bad("filler_after_ms", "must be at most 60000".into());
        }
        if let Some(c) = &self.collect {
            if c.max_digits == 0 || c.max_digits > 32 {
                return bad("collect.max_digits", "must be 1 to 32".into());
            }
            if !c.end_key.is_empty()
                && (c.end_key.chars().count() != 1 || !KEYS.contains(c.end_key.as_str()))
            {
                return bad(
                    "collect.end_key",
                    format!("`{}` is not a key (one of {KEYS})", c.end_key),
                );
            }
            if self.keys.contains_key(&c.end_key) {
                return bad(
                    "collect.end_key",
                    format!("`{}` is also in the key map", c.end_key),
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `izwi=debug,warn`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        let mut agents = BTreeMap::new();
        agents.insert(
            "english".to_string(),
            AgentProfile::new(
                "en",
                "You are Izwi, a friendly phone assistant. Answer in one or two short \
                 spoken sentences. Do not use lists, markdown or emojis.",
                "Hello, this is Izwi. How can I help you today?",
            ),
        );
        Config {
            models: ModelsConfig::default(),
            engine: EngineConfig::default(),
            turn: TurnConfig::default(),
            dialplan: DialplanConfig::default(),
            sip: SipConfig::default(),
            http: HttpConfig::default(),
            twilio: TwilioConfig::default(),
            records: RecordsConfig::default(),
            api: ApiConfig::default(),
            agents,
            log: LogConfig::default(),
            llm: BTreeMap::new(),
            asr: BTreeMap::new(),
            tts: BTreeMap::new(),
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        let shared = PathBuf::from("../shared/models");
        ModelsConfig {
            profile: "default".into(),
            dir: PathBuf::from("models/cache"),
            mirror: shared.is_dir().then_some(shared),
            manifest: None,
            pypi_index: "https://pypi.org/simple".into(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            cpu_threads: cores,
            asr_threads: cores,
            // Generation steps take one core between phrases' synthesis.
            llm_threads: 1,
            llm_batch_threads: cores,
            tts_threads: cores,
            vad_threads: 1,
            turn_threads: 1,
            llm_context: 2048,
            llm_max_reply_tokens: 80,
            llm_temperature: 0.0,
            llm_seed: 1234,
            onnxruntime: None,
            espeak: PathBuf::from("espeak-ng"),
            asr_fit_audio_context: true,
        }
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            vad_threshold: 0.5,
            vad_release: 0.35,
            min_speech_ms: 90,
            endpoint_silence_ms: 400,
            transcribe_after_ms: 60,
            early_endpoint_ms: 150,
            detector: true,
            // Pipecat asks at 200 ms; a caller's comma ("Wait, I …") can be
            // that long, and on 2 cores the reply is not ready sooner anyway.
            complete_silence_ms: 300,
            incomplete_silence_ms: 1200,
            complete_threshold: 0.5,
            judge_words: true,
            max_utterance_ms: 20_000,
            preroll_ms: 200,
            barge_in: true,
            barge_in_min_ms: 120,
            barge_in_pause: true,
        }
    }
}

impl Default for DialplanConfig {
    fn default() -> Self {
        DialplanConfig {
            default_agent: "english".into(),
            file: None,
            echo: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Sections whose scalar keys may be overridden from the environment.
const ENV_SECTIONS: &[&str] = &[
    "models", "engine", "turn", "dialplan", "sip", "http", "twilio", "records", "api", "log",
];

/// Environment variables that belong to Izwi but are not settings.
const ENV_NOT_SETTINGS: &[&str] = &["IZWI_CONFIG"];

impl Config {
    /// Defaults, then `path` (if any), then `IZWI_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree =
            toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Invalid {
                setting: "<defaults>".into(),
                message: e.to_string(),
            })?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            merge(&mut tree, file);
        }
        for (var, value) in env {
            apply_env(&mut tree, &var, &value)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let setting = e.path().to_string();
            ConfigError::Invalid {
                setting,
                message: e.into_inner().to_string(),
            }
        })?;
        for agent in config.agents.values_mut() {
            agent.fill_from_pack();
        }
        config.validate()?;
        Ok(config)
    }

    /// The agent a call gets when nothing routes it elsewhere.
    pub fn default_agent(&self) -> (&str, &AgentProfile) {
        let name = self.dialplan.default_agent.as_str();
        // validate() guarantees the default agent exists.
        (name, &self.agents[name])
    }

    pub fn agent(&self, name: &str) -> Option<&AgentProfile> {
        self.agents.get(name)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        for (name, v) in [
            ("engine.cpu_threads", e.cpu_threads),
            ("engine.asr_threads", e.asr_threads),
            ("engine.llm_threads", e.llm_threads),
            ("engine.llm_batch_threads", e.llm_batch_threads),
            ("engine.tts_threads", e.tts_threads),
            ("engine.turn_threads", e.turn_threads),
            ("engine.vad_threads", e.vad_threads),
        ] {
            if v == 0 || v > 256 {
                return Err(invalid(name, format!("must be between 1 and 256, got {v}")));
            }
        }
        if !(256..=131_072).contains(&e.llm_context) {
            return Err(invalid(
                "engine.llm_context",
                "must be between 256 and 131072 tokens",
            ));
        }
        if e.llm_max_reply_tokens == 0 || e.llm_max_reply_tokens >= e.llm_context / 2 {
            return Err(invalid(
                "engine.llm_max_reply_tokens",
                "must be at least 1 and under half of engine.llm_context",
            ));
        }
        if !(0.0..=2.0).contains(&e.llm_temperature) {
            return Err(invalid("engine.llm_temperature", "must be between 0 and 2"));
        }
        let t = &self.turn;
        for (name, v) in [
            ("turn.vad_threshold", t.vad_threshold),
            ("turn.vad_release", t.vad_release),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(
                    name,
                    format!("must be a probability between 0 and 1, got {v}"),
                ));
            }
        }
        if t.vad_release > t.vad_threshold {
            return Err(invalid(
                "turn.vad_release",
                "must not exceed turn.vad_threshold",
            ));
        }
        if !(20..=5_000).contains(&t.endpoint_silence_ms) {
            return Err(invalid(
                "turn.endpoint_silence_ms",
                "must be between 20 and 5000 ms",
            ));
        }
        if t.early_endpoint_ms < 20 || t.early_endpoint_ms > t.endpoint_silence_ms {
            return Err(invalid(
                "turn.early_endpoint_ms",
                "must be at least 20 ms and at most turn.endpoint_silence_ms",
            ));
        }
        if !(20..=5_000).contains(&t.transcribe_after_ms) {
            return Err(invalid(
                "turn.transcribe_after_ms",
                "must be between 20 and 5000 ms",
            ));
        }
        // A verdict may only shorten the wait when complete and lengthen it
        // when not; without the detector these settings are not used.
        if t.detector && t.complete_silence_ms > t.endpoint_silence_ms {
            return Err(invalid(
                "turn.complete_silence_ms",
                "must be at most turn.endpoint_silence_ms",
            ));
        }
        if t.detector && !(t.endpoint_silence_ms..=5_000).contains(&t.incomplete_silence_ms) {
            return Err(invalid(
                "turn.incomplete_silence_ms",
                "must be between turn.endpoint_silence_ms and 5000 ms",
            ));
        }
        if !(0.0..=1.0).contains(&t.complete_threshold) {
            return Err(invalid(
                "turn.complete_threshold",
                "must be between 0 and 1",
            ));
        }
        if t.min_speech_ms > 2_000 {
            return Err(invalid("turn.min_speech_ms", "must be at most 2000 ms"));
        }
        if !(1_000..=120_000).contains(&t.max_utterance_ms) {
            return Err(invalid(
                "turn.max_utterance_ms",
                "must be between 1000 and 120000 ms",
            ));
        }
        if t.preroll_ms > 2_000 {
            return Err(invalid("turn.preroll_ms", "must be at most 2000 ms"));
        }
        if !(20..=5_000).contains(&t.barge_in_min_ms) {
            return Err(invalid(
                "turn.barge_in_min_ms",
                "must be between 20 and 5000 ms",
            ));
        }
        if !matches!(self.models.profile.as_str(), "small" | "default") {
            return Err(invalid(
                "models.profile",
                format!(
                    "unknown profile `{}` (expected `small` or `default`)",
                    self.models.profile
                ),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be `text` or `json`"));
        }
        let sip = &self.sip;
        if sip.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "sip.listen",
                format!("`{}` is not an address:port", sip.listen),
            ));
        }
        if !sip.advertise.is_empty() && sip.advertise.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "sip.advertise",
                format!("`{}` is not an IP address", sip.advertise),
            ));
        }
        if sip.rtp_port_min < 1024 || sip.rtp_port_min > sip.rtp_port_max {
            return Err(invalid(
                "sip.rtp_port_min",
                "must be at least 1024 and not above sip.rtp_port_max",
            ));
        }
        if sip.codecs.is_empty() {
            return Err(invalid("sip.codecs", "at least one codec is required"));
        }
        for c in &sip.codecs {
            if !matches!(c.to_ascii_lowercase().as_str(), "pcmu" | "pcma" | "opus") {
                return Err(invalid(
                    "sip.codecs",
                    format!("unknown codec `{c}` (known: pcmu, pcma, opus)"),
                ));
            }
        }
        if sip.rtp_timeout_secs == 0 || sip.max_call_secs == 0 || sip.max_calls == 0 {
            return Err(invalid(
                "sip",
                "rtp_timeout_secs, max_call_secs and max_calls must be positive",
            ));
        }
        for (name, v) in [
            ("sip.max_calls_per_source", sip.max_calls_per_source as u64),
            (
                "sip.tcp_max_connections_per_source",
                sip.tcp_max_connections_per_source as u64,
            ),
            ("sip.tcp_idle_secs", sip.tcp_idle_secs),
            ("sip.tcp_message_secs", sip.tcp_message_secs),
            (
                "http.max_connections_per_source",
                self.http.max_connections_per_source as u64,
            ),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.request_timeout_secs", self.http.request_timeout_secs),
            ("twilio.start_timeout_secs", self.twilio.start_timeout_secs),
            ("twilio.media_timeout_secs", self.twilio.media_timeout_secs),
            ("twilio.ping_secs", self.twilio.ping_secs),
            ("twilio.send_timeout_secs", self.twilio.send_timeout_secs),
            (
                "twilio.max_bytes_per_sec",
                self.twilio.max_bytes_per_sec as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(name, "must be positive"));
            }
        }
        for block in &self.http.metrics_allow {
            if let Err(e) = block.parse::<crate::sip::access::Cidr>() {
                return Err(invalid("http.metrics_allow", e));
            }
        }
        for block in &sip.allow {
            if let Err(e) = block.parse::<crate::sip::access::Cidr>() {
                return Err(invalid("sip.allow", e));
            }
        }
        if !sip.register_to.is_empty() {
            if sip.register_user.is_empty() {
                return Err(invalid(
                    "sip.register_user",
                    "must be set when sip.register_to is",
                ));
            }
            if !matches!(sip.register_transport.as_str(), "udp" | "tcp") {
                return Err(invalid("sip.register_transport", "must be `udp` or `tcp`"));
            }
            if !(10..=86_400).contains(&sip.register_expires) {
                return Err(invalid(
                    "sip.register_expires",
                    "must be between 10 and 86400 seconds",
                ));
            }
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not an address:port", self.http.listen),
            ));
        }
        let public = &self.http.public_url;
        if !public.is_empty() && !public.starts_with("http://") && !public.starts_with("https://") {
            return Err(invalid(
                "http.public_url",
                "must start with http:// or https://",
            ));
        }
        let tw = &self.twilio;
        for (name, path) in [
            ("twilio.voice_path", &tw.voice_path),
            ("twilio.stream_path", &tw.stream_path),
        ] {
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return Err(invalid(name, "must be a path starting with /"));
            }
        }
        if tw.voice_path == tw.stream_path {
            return Err(invalid(
                "twilio.stream_path",
                "must differ from twilio.voice_path",
            ));
        }
        if self.records.queue == 0 {
            return Err(invalid("records.queue", "must be at least 1"));
        }
        let url = self.records.url.trim();
        if !url.is_empty() {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "records.url",
                    "must be a postgres:// URL (empty: the SQLite file at records.path)",
                ));
            }
            // The nodes of a fleet must hash callers alike.
            if self.records.caller_key.is_empty() {
                return Err(invalid(
                    "records.caller_key",
                    "must be set when records.url names a shared database (every node \
                     must hash callers' numbers with the same key)",
                ));
            }
        }
        if tw.max_streams == 0 {
            return Err(invalid("twilio.max_streams", "must be at least 1"));
        }
        if !sip.auth_user.is_empty() && sip.auth_password.is_empty() {
            return Err(invalid(
                "sip.auth_password",
                "must be set when sip.auth_user is",
            ));
        }
        if sip.drain_secs > 86_400 {
            return Err(invalid("sip.drain_secs", "must be at most 86400 (a day)"));
        }
        if sip.ring_ms > 60_000 {
            return Err(invalid("sip.ring_ms", "must be at most 60000 ms"));
        }
        if !(1..=50).contains(&sip.jitter_packets) {
            return Err(invalid("sip.jitter_packets", "must be between 1 and 50"));
        }
        if self.agents.is_empty() {
            return Err(invalid("agents", "at least one agent profile is required"));
        }
        if !self.agents.contains_key(&self.dialplan.default_agent) {
            return Err(invalid(
                "dialplan.default_agent",
                format!(
                    "no agent named `{}` (agents: {})",
                    self.dialplan.default_agent,
                    self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (name, remote) in &self.llm {
            if name == LOCAL_BACKEND || name.is_empty() {
                return Err(invalid(
                    &format!("llm.{name}"),
                    "`local` is the embedded model's name; choose another",
                ));
            }
            if let Err((field, msg)) = remote.check() {
                return Err(invalid(&format!("llm.{name}.{field}"), &msg));
            }
        }
        let servers = [
            ("asr", self.asr.keys().collect::<Vec<_>>()),
            ("tts", self.tts.keys().collect::<Vec<_>>()),
        ];
        for (kind, names) in &servers {
            if names.iter().any(|n| *n == LOCAL_BACKEND || n.is_empty()) {
                return Err(invalid(
                    &format!("{kind}.{LOCAL_BACKEND}"),
                    "`local` is the embedded model's name; choose another",
                ));
            }
        }
        for (name, remote) in &self.asr {
            if let Err((field, msg)) = remote.check() {
                return Err(invalid(&format!("asr.{name}.{field}"), &msg));
            }
        }
        for (name, remote) in &self.tts {
            if let Err((field, msg)) = remote.check() {
                return Err(invalid(&format!("tts.{name}.{field}"), &msg));
            }
        }
        let manifest = self.agents.values().any(|a| a.voice.is_some()).then(|| {
            crate::models::Manifest::load(self.models.manifest.as_deref())
                .map_err(|e| e.to_string())
        });
        for (name, agent) in &self.agents {
            if let Err((field, msg)) = agent.check() {
                return Err(invalid(&format!("agents.{name}.{field}"), &msg));
            }
            if let (Some(voice), Some(manifest)) = (&agent.voice, &manifest) {
                let manifest = manifest
                    .as_ref()
                    .map_err(|e| invalid("models.manifest", e.clone()))?;
                if let Err(e) = manifest.voice(voice) {
                    return Err(invalid(&format!("agents.{name}.voice"), e.to_string()));
                }
            }
            let llms = self.llm.keys().collect::<Vec<_>>();
            for (kind, chosen, names) in [
                ("llm", &agent.llm, &llms),
                ("asr", &agent.asr, &servers[0].1),
                ("tts", &agent.tts, &servers[1].1),
            ] {
                if chosen != LOCAL_BACKEND && !names.contains(&chosen) {
                    let names = names.iter().map(|n| n.as_str()).collect::<Vec<_>>();
                    return Err(invalid(
                        &format!("agents.{name}.{kind}"),
                        format!(
                            "no backend named `{chosen}` (`local` or an [{kind}.NAME] table: {})",
                            names.join(", ")
                        ),
                    ));
                }
            }
            // The local model may answer this agent's turns too.
            if self
                .llm
                .get(&agent.llm)
                .is_some_and(|b| b.fallback == EngineFallback::Local)
            {
                for (i, tool) in agent.tools.iter().enumerate() {
                    if let Err((field, msg)) = tool.check(true) {
                        return Err(invalid(
                            &format!("agents.{name}.tools[{i}].{field}"),
                            format!("{msg} (its backend falls back to the local model)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Recursively overlays `over` onto `base`; tables merge, anything else replaces.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn apply_env(tree: &mut toml::Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("IZWI_") else {
        return Ok(());
    };
    if ENV_NOT_SETTINGS.contains(&var) {
        return Ok(());
    }
    // The documented name of the model mirror predates the section naming.
    let (section, key) = if rest == "MODEL_MIRROR" {
        ("models", "mirror".to_string())
    } else {
        let lower = rest.to_ascii_lowercase();
        let Some(section) = ENV_SECTIONS
            .iter()
            .copied()
            .find(|s| lower.starts_with(&format!("{s}_")))
        else {
            return Err(ConfigError::UnknownEnv {
                var: var.to_string(),
                known: ENV_SECTIONS.join(", "),
            });
        };
        (section, lower[section.len() + 1..].to_string())
    };
    let setting = format!("{section}.{key}");
    let table = tree
        .as_table_mut()
        .and_then(|t| t.get_mut(section))
        .and_then(|s| s.as_table_mut())
        .ok_or_else(|| invalid(&setting, "section missing from defaults"))?;
    let parsed = match table.get(&key) {
        Some(toml::Value::Integer(_)) => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid(&setting, format!("{var}={value:?} is not an integer")))?,
        Some(toml::Value::Float(_)) => value
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| invalid(&setting, format!("{var}={value:?} is not a number")))?,
        Some(toml::Value::Boolean(_)) => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
            _ => {
                return Err(invalid(
                    &setting,
                    format!("{var}={value:?} is not true/false"),
                ));
            }
        },
        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
        None => {
            if !known_key(section, &key) {
                return Err(invalid(&setting, format!("{var} names no setting")));
            }
            toml::Value::String(value.to_string())
        }
        Some(toml::Value::Array(_)) => toml::Value::Array(
            value
                .split(',')
                .map(|v| toml::Value::String(v.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        Some(_) => return Err(invalid(&setting, "cannot be set from the environment")),
    };
    table.insert(key, parsed);
    Ok(())
}

/// Optional settings are absent from the defaults tree; they are still settable.
fn known_key(section: &str, key: &str) -> bool {
    matches!(
        (section, key),
        (
            "models",
            "profile" | "dir" | "mirror" | "manifest" | "pypi_index"
        ) | ("engine", "onnxruntime" | "espeak")
            | ("dialplan", "default_agent" | "file")
            | (
                "sip",
                "listen"
                    | "advertise"
                    | "auth_user"
                    | "auth_password"
                    | "auth_realm"
                    | "register_to"
                    | "register_domain"
                    | "register_user"
                    | "register_auth_user"
                    | "register_password"
            )
            | ("log", "level" | "format")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.turn.endpoint_silence_ms, 400);
        assert_eq!(c.default_agent().0, "english");
    }

    #[test]
    fn an_agent_takes_what_it_leaves_empty_from_its_language_s_pack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("izwi.toml");
        std::fs::write(
            &path,
            "[agents.shona]\nlanguage = \"sn\"\nsystem_prompt = \"x\"\n\
             [agents.swahili]\nlanguage = \"sw\"\nsystem_prompt = \"x\"\ngoodbye = \"Kwaheri!\"\n\
             [agents.zulu]\nlanguage = \"zu\"\nsystem_prompt = \"x\"\nespeak_voice = \"en-gb\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        let sn = c.agent("shona").unwrap();
        let pack = crate::lang::pack("sn").unwrap();
        assert_eq!(sn.greeting, pack.phrases.greeting);
        assert_eq!(sn.silence.prompt, pack.phrases.still_there);
        assert_eq!(sn.engine_failed, pack.phrases.engine_failed);
        assert_eq!(sn.phonemes.as_deref(), Some("izwi:sn"));
        assert_eq!(sn.asr_prompt, pack.asr_hint);
        let sw = c.agent("swahili").unwrap();
        assert_eq!(sw.goodbye, "Kwaheri!", "what the agent sets stays");
        assert_eq!(sw.filler, crate::lang::pack("sw").unwrap().phrases.filler);
        assert_eq!(sw.phonemes.as_deref(), Some("sw"));
        // No pack: English phrases, the old name of `phonemes` still read.
        let zu = c.agent("zulu").unwrap();
        assert_eq!(zu.goodbye, crate::lang::en::PACK.phrases.goodbye);
        assert_eq!(zu.phonemes.as_deref(), Some("en-gb"));
        assert!(zu.asr_prompt.is_empty());

        std::fs::write(
            &path,
            "[agents.shona]\nlanguage = \"sn\"\nsystem_prompt = \"x\"\nphonemes = \"izwi:zu\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("agents.shona.phonemes") && err.contains("izwi:sn"),
            "{err}"
        );
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("izwi.toml");
        std::fs::write(
            &path,
            "[turn]\nendpoint_silence_ms = 700\n[agents.shona]\nlanguage = \"sn\"\nsystem_prompt = \"x\"\ngreeting = \"Mhoro\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("IZWI_TURN_BARGE_IN_MIN_MS", "200"),
                ("IZWI_ENGINE_LLM_TEMPERATURE", "0.5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.turn.endpoint_silence_ms, 700);
        assert_eq!(c.turn.barge_in_min_ms, 200);
        assert_eq!(c.engine.llm_temperature, 0.5);
        assert_eq!(c.agent("shona").unwrap().greeting, "Mhoro");
        assert!(
            c.agent("english").is_some(),
            "file agents add to the defaults"
        );
    }

    #[test]
    fn verdict_silences_are_ordered_only_when_the_detector_is_on() {
        let err =
            Config::load(None, env(&[("IZWI_TURN_INCOMPLETE_SILENCE_MS", "300")])).unwrap_err();
        assert!(
            err.to_string().contains("turn.incomplete_silence_ms"),
            "{err}"
        );
        let err = Config::load(None, env(&[("IZWI_TURN_COMPLETE_SILENCE_MS", "500")])).unwrap_err();
        assert!(
            err.to_string().contains("turn.complete_silence_ms"),
            "{err}"
        );
        let c = Config::load(
            None,
            env(&[
                ("IZWI_TURN_DETECTOR", "false"),
                ("IZWI_TURN_INCOMPLETE_SILENCE_MS", "300"),
                ("IZWI_TURN_EARLY_ENDPOINT_MS", "250"),
            ]),
        )
        .unwrap();
        assert!(!c.turn.detector);
    }

    #[test]
    fn an_agent_voice_must_be_in_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("izwi.toml");
        for (voice, said) in [
            (
                "en_US-nobody",
                "no voice `en_US-nobody` in the model manifest (voices: en_US-joe-medium, sw_CD-lanfrica-medium)",
            ),
            ("../joe", "is not a voice name"),
        ] {
            std::fs::write(
                &path,
                format!(
                    "[agents.a]\nlanguage = \"en\"\nsystem_prompt = \"x\"\nvoice = \"{voice}\"\n"
                ),
            )
            .unwrap();
            let err = Config::load(Some(&path), std::iter::empty())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("agents.a.voice") && err.contains(said),
                "{err}"
            );
        }
        std::fs::write(
            &path,
            "[agents.a]\nlanguage = \"sw\"\nsystem_prompt = \"x\"\nvoice = \"sw_CD-lanfrica-medium\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), std::iter::empty()).unwrap();
        assert_eq!(
            c.agent("a").unwrap().voice.as_deref(),
            Some("sw_CD-lanfrica-medium")
        );
    }

    #[test]
    fn bad_env_value_names_the_setting() {
        let err =
            Config::load(None, env(&[("IZWI_TURN_ENDPOINT_SILENCE_MS", "soon")])).unwrap_err();
        assert!(
            err.to_string().contains("turn.endpoint_silence_ms"),
            "{err}"
        );
        let err = Config::load(None, env(&[("IZWI_TURN_ENDPOINT_SILENCE_MS", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("turn.endpoint_silence_ms"),
            "{err}"
        );
        let err = Config::load(None, env(&[("IZWI_NOPE_X", "1")])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err}");
        let err = Config::load(None, env(&[("IZWI_TURN_NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("turn.nope"), "{err}");
    }

    #[test]
    fn tools_and_backends_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("izwi.toml");
        let agent = "[agents.desk]\nlanguage = \"en\"\nsystem_prompt = \"x\"\ngreeting = \"hi\"\n";
        let tool = |extra: &str| {
            format!(
                "{agent}{extra}\n[[agents.desk.tools]]\nname = \"hours\"\ndescription = \"d\"\n\
                 url = \"http://127.0.0.1:9/h\"\n\
                 parameters = {{ type = \"object\", properties = {{ day = {{ type = \"string\" }} }} }}\n"
            )
        };
        let fails = |text: String, setting: &str| {
            std::fs::write(&path, &text).unwrap();
            let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
            assert!(err.contains(setting), "{setting}: {err}\n{text}");
        };
        std::fs::write(&path, tool("")).unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.agents["desk"].tools[0].method, "POST");
        fails(tool("tool_choice = \"nothing\""), "agents.desk.tool_choice");
        fails(tool("tool_steps = 9"), "agents.desk.tool_steps");
        fails(tool("llm = \"gpu\""), "agents.desk.llm");
        fails(
            tool("").replace("name = \"hours\"", "name = \"end_call\""),
            "agents.desk.tools[0].name",
        );
        fails(
            tool("").replace("url = \"http://127.0.0.1:9/h\"", "url = \"ftp://x\""),
            "agents.desk.tools[0].url",
        );
        // The local model takes one string parameter at most.
        fails(
            tool("").replace(
                "day = { type = \"string\" }",
                "day = { type = \"string\" }, week = { type = \"integer\" }",
            ),
            "agents.desk.tools[0].parameters",
        );
        fails(
            tool("tool_choice = \"required\"\nmodel_actions = [\"end_call\"]"),
            "agents.desk.tool_choice",
        );
        fails(
            format!("{agent}llm = \"gpu\"\n[llm.gpu]\nbase_url = \"http://\"\nmodel = \"m\"\n"),
            "llm.gpu.base_url",
        );
        // Speech servers: named by the agent, checked like the model's; a
        // key in the URL is refused (it would show in errors).
        fails(format!("{agent}asr = \"stt\"\n"), "agents.desk.asr");
        fails(
            format!(
                "{agent}tts = \"voice\"\n[tts.voice]\nbase_url = \"https://u:key@h/v1\"\nmodel = \"m\"\n"
            ),
            "tts.voice.base_url",
        );
        fails(
            format!(
                "{agent}asr = \"stt\"\n[asr.stt]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\ntimeout_ms = 5\n"
            ),
            "asr.stt.timeout_ms",
        );
        fails(
            format!(
                "{agent}tts = \"voice\"\n[tts.voice]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nsample_rate = 100\n"
            ),
            "tts.voice.sample_rate",
        );
        fails(
            format!("{agent}[asr.local]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\n"),
            "asr.local",
        );
        fails(
            format!("{agent}asr_prompt = \"{}\"\n", "a".repeat(801)),
            "agents.desk.asr_prompt",
        );
        fails(
            "[records]\nurl = \"postgres://h/izwi\"\n".to_string(),
            "records.caller_key",
        );
        fails(
            "[records]\nurl = \"mysql://h/izwi\"\ncaller_key = \"k\"\n".to_string(),
            "records.url",
        );
        // A server agent whose backend falls back to the local model keeps
        // to the local model's tools.
        fails(
            tool("llm = \"gpu\"\n[llm.gpu]\nbase_url = \"http://h/v1\"\nmodel = \"m\"\nfallback = \"local\"\n")
                .replace(
                    "day = { type = \"string\" }",
                    "day = { type = \"string\" }, week = { type = \"integer\" }",
                ),
            "agents.desk.tools[0].parameters",
        );
        fails(
            format!(
                "{agent}llm = \"gpu\"\n[llm.gpu]\nbase_url = \"10.0.0.5:8000\"\nmodel = \"m\"\n"
            ),
            "llm.gpu.base_url",
        );
        fails(
            format!("{agent}[llm.local]\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n"),
            "llm.local",
        );
        // A server's agent may have tools of any parameters.
        std::fs::write(
            &path,
            tool(
                "llm = \"gpu\"\n[llm.gpu]\nbase_url = \"http://10.0.0.5:8000/v1\"\nmodel = \"m\"\n",
            )
            .replace(
                "day = { type = \"string\" }",
                "day = { type = \"string\" }, week = { type = \"integer\" }",
            ),
        )
        .unwrap();
        Config::load(Some(&path), env(&[])).unwrap();
    }

    #[test]
    fn bad_file_value_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("izwi.toml");
        std::fs::write(&path, "[engine]\ncpu_threads = \"many\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("engine.cpu_threads"), "{err}");
        std::fs::write(&path, "[engine]\nworkerz = 2\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("workerz"), "{err}");
        std::fs::write(&path, "[dialplan]\ndefault_agent = \"ghost\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("dialplan.default_agent"), "{err}");
    }

    #[test]
    fn sip_settings_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("IZWI_SIP_LISTEN", "127.0.0.1:5080"),
                ("IZWI_SIP_CODECS", "pcma, pcmu"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sip.listen, "127.0.0.1:5080");
        assert_eq!(c.sip.codecs, vec!["pcma", "pcmu"]);
        let err = Config::load(None, env(&[("IZWI_SIP_CODECS", "g729")])).unwrap_err();
        assert!(err.to_string().contains("sip.codecs"), "{err}");
        let err = Config::load(None, env(&[("IZWI_SIP_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("sip.listen"), "{err}");
    }

    #[test]
    fn model_mirror_variable() {
        let c = Config::load(None, env(&[("IZWI_MODEL_MIRROR", "/srv/models")])).unwrap();
        assert_eq!(c.models.mirror.as_deref(), Some(Path::new("/srv/models")));
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let c = Config::load(None, env(&[("HOME", "/root"), ("IZWI_CONFIG", "x.toml")])).unwrap();
        assert_eq!(c, Config::load(None, env(&[])).unwrap());
    }
}
