//! Call records: one row of metrics per call and one per turn, in SQLite.
//!
//! Calls report through a [`Recorder`] (cheap to clone, never blocks: a
//! bounded channel to one writer task; a full channel drops the record and
//! counts it). The [`Store`] owns the database: it opens and migrates it, runs
//! the writer, closes calls left open by a killed process, and answers the
//! operator API's and CLI's queries.
//!
//! Privacy by construction: no audio and no transcript text exist in these
//! types, and the caller's number is never stored, only
//! [`caller_hash`]`(key, number)`.

mod store;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;

pub use store::{Backend, Store, shown_url};
pub use table::{actions_table, table, tools_table, turns_table};

/// How the call reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sip,
    Twilio,
    Talk,
    /// The operator console's page: the browser's microphone over a WebSocket.
    Browser,
}

/// Who hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Caller,
    Izwi,
    /// The agent ended the call (its decision, a key, or its silence or
    /// length policy), or handed it on.
    Agent,
    Provider,
    Unknown,
}

/// How the call ended. `Open` while the call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Open,
    Completed,
    Failed,
    Interrupted,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// The stored (and serialised) name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            /// Parses the stored name; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)+ _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| {
                    format!("unknown value {s:?}; expected one of: {}", [$($s),+].join(", "))
                })
            }
        }
    };
}

text_enum!(Transport { Sip => "sip", Twilio => "twilio", Talk => "talk", Browser => "browser" });
text_enum!(Side { Caller => "caller", Izwi => "izwi", Agent => "agent", Provider => "provider", Unknown => "unknown" });
text_enum!(Outcome {
    Open => "open",
    Completed => "completed",
    Failed => "failed",
    Interrupted => "interrupted",
});

/// Longest transport id of a call kept ([`CallStart::remote_id`]), in characters.
pub const MAX_REMOTE_ID: usize = 128;

/// A new call's id: 128 random bits in hex, unique whatever the transport's
/// own id for the call says (two SIP dialogs may share a Call-ID).
pub fn new_call_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// At most `n` characters of `s`.
pub fn cap(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A call began. Sent once, when the call is accepted.
#[derive(Clone, PartialEq)]
pub struct CallStart {
    /// Izwi's own id for the call ([`new_call_id`]).
    pub id: String,
    /// The transport's id for the call: the SIP Call-ID, Twilio's CallSid
    /// (stored capped at [`MAX_REMOTE_ID`] characters).
    pub remote_id: Option<String>,
    pub transport: Transport,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// The number dialled (stored as is).
    pub called: Option<String>,
    /// The caller's number. NEVER stored: only HMAC-SHA256(key, number) is.
    pub caller: Option<String>,
    pub agent: Option<String>,
    /// The dialplan rule that chose the agent (`None`: the default).
    pub rule: Option<String>,
    pub codec: Option<String>,
}

// By hand so that the caller's number never reaches a log through `{:?}`.
impl fmt::Debug for CallStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStart")
            .field("id", &self.id)
            .field("remote_id", &self.remote_id)
            .field("transport", &self.transport)
            .field("started_at_ms", &self.started_at_ms)
            .field("called", &self.called)
            .field("caller", &self.caller.as_ref().map(|_| "<redacted>"))
            .field("agent", &self.agent)
            .field("rule", &self.rule)
            .field("codec", &self.codec)
            .finish()
    }
}

/// A call ended. Sent once, however the call ended (error, reactor crash,
/// dropped connection included: see [`CallGuard`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CallEnd {
    pub id: String,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: i64,
    /// `Completed` or `Failed` (`Interrupted` is for start-up recovery).
    pub outcome: Outcome,
    /// Short label: "caller_bye", "izwi_bye", "rtp_timeout", "max_duration",
    /// "stream_stop", "socket_closed", "protocol:<kind>", "shutdown",
    /// "agent_failed", "cancelled", "rejected:<code>", "talk_end", …
    /// Capped at 64 characters when stored.
    pub hangup_cause: String,
    pub hangup_side: Side,
    /// Known only after negotiation for some transports; overrides the
    /// start's when `Some`.
    pub codec: Option<String>,
    pub dtmf: u32,
    pub errors: u32,
    pub turns: Vec<TurnRow>,
    pub actions: Vec<ActionRow>,
    pub tools: Vec<ToolRow>,
}

/// One call of an agent's tool: which, in which turn, how long, how it
/// ended. Never its arguments or its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRow {
    pub turn: u32,
    /// The tool's configured name (capped at 64 characters when stored).
    pub name: String,
    pub duration_ms: Option<f64>,
    /// "done" | "refused" | "failed" | "timeout" | "interrupted"
    pub outcome: String,
}

/// One thing the agent did besides talking. Labels only: never the words
/// that asked for it, never a number the model or the caller produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRow {
    /// Audio time from the start of the call.
    pub at_ms: f64,
    /// "end_call" | "transfer" | "repeat" | "collect" | "silence_prompt" | "unknown"
    pub action: String,
    /// "model" | "key" | "silence" | "max_length" | "collect" | "fallback"
    pub source: String,
    /// The configured target's name (transfers).
    pub target: Option<String>,
    /// "done" | "refused" | "failed" | "interrupted"
    pub result: String,
}

/// An action's stored label: one of the schema's, or `unknown`.
pub fn action_label(action: &str) -> &'static str {
    match action {
        "end_call" => "end_call",
        "transfer" => "transfer",
        "repeat" => "repeat",
        "collect" => "collect",
        "silence_prompt" => "silence_prompt",
        _ => "unknown",
    }
}

/// One answered turn's response latency, for the console's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponsePoint {
    /// When its call started, Unix milliseconds.
    pub at_ms: i64,
    pub transport: Option<String>,
    pub agent: Option<String>,
    pub response_ms: f64,
}

/// One turn's metrics. No words, only counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRow {
    pub index: u32,
    pub greeting: bool,
    /// "answered" | "interrupted" | "nothing_heard" | "failed" | "hung_up"
    /// (capped at 32 characters when stored).
    pub outcome: String,
    /// Caller's end of speech → first agent audio.
    pub response_ms: Option<f64>,
    pub asr_ms: Option<f64>,
    pub llm_first_token_ms: Option<f64>,
    pub llm_tokens_per_s: Option<f64>,
    pub tts_first_audio_ms: Option<f64>,
    pub words_heard: u32,
    pub words_spoken: u32,
    pub interrupted: bool,
    /// When the caller's speech of this turn began and ended, in ms from
    /// the answer (none for the greeting).
    #[serde(default)]
    pub speech_onset_ms: Option<f64>,
    #[serde(default)]
    pub speech_end_ms: Option<f64>,
}

/// One call as the operator API and CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRow {
    pub id: String,
    /// The transport's id for the call (SIP Call-ID, Twilio CallSid), capped.
    pub remote_id: Option<String>,
    /// `None` only when the call's End arrived without its Start (the Start
    /// was dropped under load).
    pub transport: Option<Transport>,
    pub started_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// `ended - (answered or started)`.
    pub duration_ms: Option<i64>,
    pub called: Option<String>,
    pub caller_hash: Option<String>,
    pub agent: Option<String>,
    /// The dialplan rule that chose the agent (`None`: the default).
    pub rule: Option<String>,
    pub codec: Option<String>,
    pub outcome: Outcome,
    pub hangup_cause: Option<String>,
    pub hangup_side: Option<Side>,
    pub turns: u32,
    pub barge_ins: u32,
    pub dtmf: u32,
    pub errors: u32,
}

/// Filters and page for [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallQuery {
    /// Calls started at or after this (unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// Calls started before this (unix ms, exclusive).
    pub to_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    pub agent: Option<String>,
    /// The transport's id for the call (exact).
    pub remote_id: Option<String>,
    /// Page size, clamped to `1..=500`.
    pub limit: u32,
    /// Opaque, from [`Page::next_cursor`].
    pub cursor: Option<String>,
}

impl CallQuery {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
}

impl Default for CallQuery {
    fn default() -> Self {
        CallQuery {
            from_ms: None,
            to_ms: None,
            outcome: None,
            agent: None,
            remote_id: None,
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// One page of calls, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub calls: Vec<CallRow>,
    /// Pass back as [`CallQuery::cursor`] for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// Failures opening, migrating or querying the records database.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("call records: cannot create directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "call records: cannot open the database {path}: {source} (check the path or URL, its permissions, and that the server is up)"
    )]
    Open { path: String, source: sqlx::Error },
    #[error(
        "call records: cannot migrate the database {path}: {source} (was it written by a newer izwi?)"
    )]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("call records: query on {path} failed: {source}")]
    Query { path: String, source: sqlx::Error },
    #[error("call records: {path} holds an unexpected {column} value {value:?}")]
    Corrupt {
        path: String,
        column: &'static str,
        value: String,
    },
    #[error("call records: invalid page cursor (pass back next_cursor exactly as given)")]
    BadCursor,
}

/// What a call sends to the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Start(CallStart),
    End(CallEnd),
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    write_errors: AtomicU64,
    /// Records kept for a retry after a failed write.
    pending: AtomicU64,
    /// The last write failed and records wait for a retry.
    degraded: AtomicBool,
}

/// The handle calls use. Cheap to clone. Never blocks: a full channel drops
/// the record and counts it. When every clone is dropped the writer drains
/// what is queued and ends.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("enabled", &self.tx.is_some())
            .field("dropped", &self.dropped())
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

impl Recorder {
    fn new(tx: mpsc::Sender<Record>, counters: Arc<Counters>) -> Recorder {
        Recorder {
            tx: Some(tx),
            counters,
        }
    }

    /// Queues a record for the writer. `true` if queued; `false` if the
    /// channel was full or the writer gone (counted in [`Self::dropped`]) or
    /// the recorder is [disabled](Self::disabled) (not counted).
    pub fn record(&self, r: Record) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(r) {
            Ok(()) => true,
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records dropped because the channel was full (or the writer gone).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed (each record is kept and written again later).
    pub fn write_errors(&self) -> u64 {
        self.counters.write_errors.load(Ordering::Relaxed)
    }

    /// Records waiting to be written again after a failed write.
    pub fn pending(&self) -> u64 {
        self.counters.pending.load(Ordering::Relaxed)
    }

    /// Whether writes are failing (records wait in memory for the database).
    pub fn degraded(&self) -> bool {
        self.counters.degraded.load(Ordering::Relaxed)
    }

    /// A recorder that writes nowhere and counts nothing as dropped (for
    /// `izwi` subcommands run with records off).
    pub fn disabled() -> Recorder {
        Recorder {
            tx: None,
            counters: Arc::default(),
        }
    }

    /// Whether records go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Records `start` and returns a guard that records the call's end even
    /// if the reactor returns early, errors out, panics or is dropped.
    pub fn start(&self, start: CallStart) -> CallGuard {
        let guard = CallGuard {
            recorder: self.clone(),
            id: start.id.clone(),
            answered_at_ms: None,
            codec: None,
            done: false,
        };
        self.record(Record::Start(start));
        guard
    }
}

/// Guarantees a call its End record. Made by [`Recorder::start`]; finish it
/// with [`CallGuard::finish`]. Dropped unfinished, it records a `Failed` end
/// with cause "reactor_dropped" (or "reactor_panicked" while unwinding).
#[derive(Debug)]
pub struct CallGuard {
    recorder: Recorder,
    id: String,
    answered_at_ms: Option<i64>,
    codec: Option<String>,
    done: bool,
}

impl CallGuard {
    /// The call's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Notes the answer time, for the end recorded if the guard is dropped.
    pub fn answered(&mut self, at_ms: i64) {
        self.answered_at_ms = Some(at_ms);
    }

    /// Notes the negotiated codec, for the end recorded if the guard is dropped.
    pub fn codec(&mut self, codec: impl Into<String>) {
        self.codec = Some(codec.into());
    }

    /// Records the call's end. Returns what [`Recorder::record`] returned.
    pub fn finish(mut self, end: CallEnd) -> bool {
        self.done = true;
        self.recorder.record(Record::End(end))
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let cause = if std::thread::panicking() {
            "reactor_panicked"
        } else {
            "reactor_dropped"
        };
        self.recorder.record(Record::End(CallEnd {
            id: std::mem::take(&mut self.id),
            answered_at_ms: self.answered_at_ms,
            ended_at_ms: now_ms(),
            outcome: Outcome::Failed,
            hangup_cause: cause.to_owned(),
            hangup_side: Side::Unknown,
            codec: self.codec.take(),
            dtmf: 0,
            errors: 1,
            turns: Vec::new(),
            actions: Vec::new(),
            tools: Vec::new(),
        }));
    }
}

/// Current unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The number with spaces, dashes, dots and parentheses removed, so that
/// "+263 (77) 123-4567" and "+263771234567" are the same caller.
pub fn normalise_number(number: &str) -> String {
    number
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '(' | ')' | '.'))
        .collect()
}

/// HMAC-SHA256(key, normalised number), lowercase hex (64 characters).
pub fn caller_hash(key: &str, number: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(normalise_number(number).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
