//! The heart of a call, independent of its transport: caller frames go in, agent
//! frames come out, both stamped with audio time. It owns the turn machine, the
//! VAD stream, the conversation history and the reply in progress. A transport's
//! reactor calls [`Conversation::push_caller`] and [`Conversation::next_frame`]
//! once per 20 ms tick.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::error::TryRecvError;

use super::action::{self, Action, CallControl, Source};
use super::ending::{AgentEnd, Ending};
use super::reply::{self, ReplyEvent, ReplyInput, ReplyRequest, ReplyStream};
use super::transcript::Transcript;
use super::turn::{Input, Output, State, TurnMachine, TurnPolicy};
use super::{Agent, Phrase};
use crate::audio::{ENGINE_RATE, FRAME, Frame, ms_to_samples};
use crate::config::TransferFallback;
use crate::config::TurnConfig;
use crate::engine::{ChatMessage, Engine, EngineError, Hearing, LlmSession, Speaker, VadStream};
use crate::records::ActionRow;
use crate::tools::ToolOutcome;

/// Caller audio kept for the start of a turn (onset detection lags the onset).
const RECENT: Duration = Duration::from_secs(3);
/// Keys a call keeps; more are a flood.
const MAX_DIGITS: usize = 256;
/// Actions a call records; more are a flood (of keys).
const MAX_ACTIONS: usize = 64;
/// The last answer kept for `repeat`, at most (10 s: 640 KB).
const MAX_REPEAT_FRAMES: usize = 10 * 50;
/// After the last frame of the words before a hang-up or transfer: time for
/// them to leave the far end's buffers (a transport that confirms playback
/// waits for that instead, up to [`CONFIRM_WAIT`]).
const GRACE: Duration = Duration::from_millis(300);
const CONFIRM_WAIT: Duration = Duration::from_secs(3);
/// The agent's audio is held for speech over it only while the caller's
/// audio keeps coming (a stream that stalls would hold it for the stall).
const HOLD_FRESH: Duration = Duration::from_millis(100);
/// Holds an answer takes that came to nothing; past them it talks on until a
/// barge-in (a line echoing the agent would make it stutter all through).
pub const MAX_HOLDS: u8 = 3;

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    Answered,
    Interrupted,
    NothingHeard,
    Failed,
    /// The language model failed and the agent's fallback phrase answered.
    Fallback,
    /// The call ended while this turn was still in progress.
    HungUp,
}

/// Timings of one agent turn. Times named `*_at_ms` are audio time from the start
/// of the call; durations named `*_ms` are wall-clock compute.
#[derive(Debug, Clone, Serialize)]
pub struct TurnRecord {
    pub index: usize,
    pub greeting: bool,
    pub outcome: TurnOutcome,
    pub speech_onset_at_ms: Option<f64>,
    pub speech_end_at_ms: Option<f64>,
    pub first_audio_at_ms: Option<f64>,
    /// Caller's end of speech to the agent's first audio, on the audio clock.
    pub response_ms: Option<f64>,
    /// Wall time from the end of the turn to the first phrase ready to play
    /// (and its end-of-turn verdict in).
    pub compute_ms: Option<f64>,
    pub asr_ms: Option<f64>,
    pub asr_rtf: Option<f64>,
    pub llm_first_token_ms: Option<f64>,
    pub llm_tokens: Option<usize>,
    pub llm_tokens_per_s: Option<f64>,
    pub llm_prompt_tokens: Option<usize>,
    pub llm_reused_tokens: Option<usize>,
    pub tts_first_audio_ms: Option<f64>,
    pub tts_rtf: Option<f64>,
    pub words_heard: usize,
    /// Words in every phrase synthesized for this turn.
    pub words_generated: usize,
    /// Words the caller actually heard (all of them unless interrupted).
    pub words_spoken: usize,
    pub barged_in: bool,
    /// The agent's tools called in this turn, in order.
    pub tools: Vec<ToolUse>,
}

/// A tool call of a turn: the tool's name, how long, how it ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolUse {
    pub name: String,
    pub duration_ms: Option<f64>,
    pub outcome: &'static str,
}

/// Tool calls kept a turn: the model is held to a few steps anyway.
const MAX_TOOL_USES: usize = 16;

impl TurnRecord {
    fn new(index: usize, greeting: bool) -> TurnRecord {
        TurnRecord {
            index,
            greeting,
            outcome: TurnOutcome::Answered,
            speech_onset_at_ms: None,
            speech_end_at_ms: None,
            first_audio_at_ms: None,
            response_ms: None,
            compute_ms: None,
            asr_ms: None,
            asr_rtf: None,
            llm_first_token_ms: None,
            llm_tokens: None,
            llm_tokens_per_s: None,
            llm_prompt_tokens: None,
            llm_reused_tokens: None,
            tts_first_audio_ms: None,
            tts_rtf: None,
            words_heard: 0,
            words_generated: 0,
            words_spoken: 0,
            barged_in: false,
            tools: Vec::new(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A phrase being played: its text and the frames not yet played.
struct Playing {
    /// Numbered across the call, for transports that confirm playback.
    seq: u64,
    text: String,
    frames: VecDeque<Frame>,
    total: usize,
    /// All its audio is here (a streamed phrase's may still be arriving).
    complete: bool,
}

struct ActiveReply {
    /// `None` for the greeting, whose audio is all here from the start.
    stream: Option<ReplyStream>,
    phrases: VecDeque<Playing>,
    /// Phrases sent whole, with their numbers.
    spoken: Vec<(u64, String)>,
    done: bool,
    started: bool,
    /// Audio time before which the reply must not play (the caller may go on).
    play_from: Duration,
    heard: Option<String>,
    requested: Instant,
    synth: Duration,
    synth_audio: Duration,
    record: TurnRecord,
    /// Fixed words (a prompt, a goodbye, a repeat): not a turn of its own.
    fixed: bool,
    /// What the call does once these words are played.
    then: Option<CallControl>,
    /// What the model asked for, checked, to do after its words.
    action: Option<Action>,
    /// The frames played so far, for `repeat`.
    kept: Vec<Frame>,
    /// Holds for speech over it that stopped short of a barge-in.
    holds: u8,
    /// A judge (the end-of-turn model, or the model's reading of the
    /// words) found the turn complete: a later verdict cannot make the
    /// reply wait longer. `None`: no verdict yet.
    complete: Option<bool>,
    /// A verdict is still to come, and may let the reply play sooner than
    /// `play_from`: its events are read while it waits.
    verdict_due: bool,
}

impl ActiveReply {
    fn new(
        stream: Option<ReplyStream>,
        phrases: VecDeque<Playing>,
        record: TurnRecord,
    ) -> ActiveReply {
        ActiveReply {
            fixed: false,
            then: None,
            action: None,
            kept: Vec::new(),
            holds: 0,
            complete: None,
            verdict_due: false,
            done: stream.is_none(),
            stream,
            phrases,
            spoken: Vec::new(),
            started: false,
            play_from: Duration::ZERO,
            heard: None,
            requested: Instant::now(),
            synth: Duration::ZERO,
            synth_audio: Duration::ZERO,
            record,
        }
    }

    /// A verdict came after the first phrase was ready: the reply could
    /// play no sooner (on a simulated clock, the wait is counted here).
    fn verdict_in(&mut self) {
        if !self.started
            && let Some(compute) = self.record.compute_ms.as_mut()
        {
            *compute = compute.max(ms(self.requested.elapsed()));
        }
    }

    /// Text of the phrases the transport confirmed played (through `heard`):
    /// a phrase only sent may still be in its playback buffer, unheard.
    fn confirmed_text(&self, heard: Option<u64>) -> String {
        self.spoken
            .iter()
            .filter(|(seq, _)| heard.is_some_and(|h| *seq <= h))
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Text of what the caller actually heard: whole phrases, plus the share of
    /// the current phrase's words that its played frames represent.
    fn played_text(&self) -> String {
        let mut parts: Vec<String> = self.spoken.iter().map(|(_, t)| t.clone()).collect();
        if let Some(p) = self.phrases.front() {
            let played = p.total - p.frames.len();
            if played > 0 {
                let words: Vec<&str> = p.text.split_whitespace().collect();
                // A phrase still arriving is longer than what is here: its
                // length is guessed at 300 ms (15 frames) a word meanwhile.
                let total = if p.complete {
                    p.total
                } else {
                    p.total.max(words.len() * 15)
                };
                let n = (words.len() * played)
                    .div_ceil(total.max(1))
                    .min(words.len());
                if n > 0 {
                    parts.push(words[..n].join(" "));
                }
            }
        }
        parts.join(" ")
    }
}

pub struct Conversation {
    engine: Arc<Engine>,
    agent: Arc<Agent>,
    call_id: String,
    vad: Box<dyn VadStream>,
    speech_prob: f32,
    turn: TurnMachine,
    preroll: Duration,
    recent: VecDeque<f32>,
    recent_end: Duration,
    capture: Option<Vec<f32>>,
    /// What the caller said in this turn, recognised at their pauses.
    transcript: Transcript,
    history: Vec<ChatMessage>,
    llm: Arc<dyn LlmSession>,
    reply: Option<ActiveReply>,
    turns: Vec<TurnRecord>,
    digits: Vec<DigitRecord>,
    vad_errors: u64,
    next_phrase: u64,
    barge_ins: u64,
    /// Replies cut while playing by a key or a policy.
    cuts: u64,
    playback: Option<Playback>,
    digit_log: crate::limits::LogGate,
    /// Audio time of the latest input or output.
    now: Duration,
    /// A final phrase is playing or played: the caller is no longer heard.
    closing: bool,
    /// The control waiting for its words to be played.
    due: Option<Due>,
    /// Controls for the transport.
    controls: VecDeque<CallControl>,
    actions: Vec<ActionRow>,
    /// A transfer was handed to the transport and its result is awaited;
    /// with the index of its record.
    transfer_pending: bool,
    transferring: Option<usize>,
    /// The last phrase sent whole.
    last_sent: Option<u64>,
    /// Since when nobody has spoken.
    quiet_since: Duration,
    silence_prompts: u32,
    /// Keys collected for the model, and when the last came.
    collected: String,
    last_key: Duration,
    /// The last answer, for `repeat`.
    last_answer: Option<Phrase>,
    /// Pauses are judged by the end-of-turn model (it knows the agent's language).
    judge: bool,
    complete_threshold: f32,
    /// Let the language model's reading of the words also judge the turn.
    judge_words: bool,
}

/// A control waiting for the words before it to be heard.
struct Due {
    control: CallControl,
    /// The last phrase of those words (none: nothing to wait for).
    seq: Option<u64>,
    /// When their last frame went out.
    sent: Duration,
}

/// What a transport that confirms playback (Twilio's marks) has reported.
#[derive(Default)]
struct Playback {
    /// Phrases sent whole, waiting for the transport to be told (a mark each).
    ended: Vec<u64>,
    /// The last phrase the caller is known to have heard to its end.
    heard: Option<u64>,
}

/// A key the caller pressed (RFC 4733 event or Twilio `dtmf`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DigitRecord {
    pub digit: char,
    /// Audio time from the start of the call.
    pub at_ms: f64,
    /// Turns completed when it was pressed.
    pub turn: usize,
}

impl Conversation {
    pub async fn start(
        engine: Arc<Engine>,
        agent: Arc<Agent>,
        turn: &TurnConfig,
        call_id: impl Into<String>,
    ) -> Result<Conversation, EngineError> {
        let vad = engine.vad.stream()?;
        let agent_language = agent.profile.language.clone();
        let engine_judges = engine.turn.is_some();
        let session = engine
            .llm_session(&agent.name, &agent.profile, agent.tools.clone())
            .await?;
        let mut c = Conversation {
            engine,
            agent,
            call_id: call_id.into(),
            vad,
            speech_prob: 0.0,
            turn: TurnMachine::new(TurnPolicy::from(turn)),
            preroll: Duration::from_millis(turn.preroll_ms as u64),
            recent: VecDeque::with_capacity(ms_to_samples(RECENT.as_millis() as u32)),
            recent_end: Duration::ZERO,
            capture: None,
            transcript: Transcript::default(),
            history: Vec::new(),
            llm: session,
            reply: None,
            turns: Vec::new(),
            digits: Vec::new(),
            vad_errors: 0,
            next_phrase: 0,
            barge_ins: 0,
            cuts: 0,
            playback: None,
            digit_log: crate::limits::LogGate::new(5, Duration::from_secs(10)),
            now: Duration::ZERO,
            closing: false,
            due: None,
            controls: VecDeque::new(),
            actions: Vec::new(),
            transfer_pending: false,
            transferring: None,
            last_sent: None,
            quiet_since: Duration::ZERO,
            silence_prompts: 0,
            collected: String::new(),
            last_key: Duration::ZERO,
            last_answer: None,
            judge: turn.detector
                && engine_judges
                && crate::engine::turn_detector::knows_language(&agent_language),
            complete_threshold: turn.complete_threshold,
            judge_words: turn.judge_words,
        };
        c.greet();
        Ok(c)
    }

    fn greet(&mut self) {
        if self.agent.greeting.is_empty() {
            return;
        }
        let frames: VecDeque<Frame> = self.agent.greeting.iter().copied().collect();
        let mut record = TurnRecord::new(0, true);
        record.words_generated = self.agent.profile.greeting.split_whitespace().count();
        let greeting = Playing {
            seq: self.phrase_seq(),
            text: self.agent.profile.greeting.clone(),
            total: frames.len(),
            frames,
            complete: true,
        };
        self.reply = Some(ActiveReply::new(None, VecDeque::from([greeting]), record));
    }

    fn phrase_seq(&mut self) -> u64 {
        self.next_phrase += 1;
        self.next_phrase
    }

    /// The transport will confirm what the caller heard ([`Conversation::heard_through`]):
    /// a barge-in then keeps in the history only phrases confirmed heard, not
    /// what was sent, which may still sit in the transport's playback buffer.
    pub fn confirm_playback(&mut self) {
        self.playback.get_or_insert_with(Playback::default);
    }

    /// Phrases sent whole since the last call: the transport marks each.
    pub fn take_phrase_ends(&mut self) -> Vec<u64> {
        self.playback
            .as_mut()
            .map(|p| std::mem::take(&mut p.ended))
            .unwrap_or_default()
    }

    /// The caller heard phrase `seq` (and all before it) to its end.
    pub fn heard_through(&mut self, seq: u64) {
        if let Some(p) = self.playback.as_mut() {
            p.heard = p.heard.max(Some(seq));
        }
    }

    /// Barge-ins and replies cut by a key or a policy so far: a transport
    /// with its own playback buffer clears it on each.
    pub fn barge_ins(&self) -> u64 {
        self.barge_ins + self.cuts
    }

    pub fn state(&self) -> State {
        self.turn.state()
    }

    /// Nothing playing, nothing pending, nobody speaking.
    pub fn is_idle(&self) -> bool {
        self.reply.is_none() && self.turn.state() == State::Listening
    }

    /// Ends the conversation: a reply still in progress is recorded as cut by the hang-up.
    pub fn close(&mut self) {
        if let Some(mut r) = self.reply.take() {
            if let Some(a) = r.action.take() {
                self.record_action(a.label(), Source::Model, None, "interrupted");
            }
            if !r.fixed {
                r.record.words_spoken = r.played_text().split_whitespace().count();
                r.record.outcome = TurnOutcome::HungUp;
                self.turns.push(r.record);
            }
        }
        // A transfer with no word from the caller's side when the call ended.
        if self.transfer_pending
            && let Some(i) = self.transferring.take()
            && let Some(a) = self.actions.get_mut(i)
        {
            a.result = "interrupted".into();
        }
    }

    /// What the agent did besides talking, for the record.
    pub fn actions(&self) -> &[ActionRow] {
        &self.actions
    }

    /// The next control for the transport, once its words have been played.
    pub fn take_control(&mut self) -> Option<CallControl> {
        self.controls.pop_front()
    }

    /// The transport's result of a [`CallControl::Transfer`]: on success the
    /// call is over (the transport ends it); on failure the caller hears so,
    /// and the agent's fallback decides what follows.
    pub fn transfer_result(&mut self, done: bool) {
        if !std::mem::take(&mut self.transfer_pending) {
            tracing::debug!(call = %self.call_id, "a transfer result with no transfer pending");
            return;
        }
        if let Some(i) = self.transferring.take()
            && let Some(a) = self.actions.get_mut(i)
        {
            a.result = if done { "done" } else { "failed" }.into();
        }
        if done {
            return;
        }
        tracing::info!(call = %self.call_id, "transfer failed; the call goes on");
        self.closing = false;
        self.quiet_since = self.now;
        self.turn.step(Input::Reset);
        let failed = self.agent.phrases.transfer_failed.clone();
        match self.agent.profile.transfer_fallback {
            TransferFallback::Continue => self.say(vec![failed], None),
            TransferFallback::HangUp => {
                let goodbye = self.agent.phrases.goodbye.clone();
                self.say(
                    vec![failed, goodbye],
                    Some(CallControl::HangUp(Ending::Agent(AgentEnd::TransferFailed))),
                )
            }
        }
    }

    fn record_action(
        &mut self,
        action: &str,
        source: Source,
        target: Option<&str>,
        result: &str,
    ) -> Option<usize> {
        if self.actions.len() >= MAX_ACTIONS {
            return None;
        }
        tracing::info!(call = %self.call_id, action, source = source.as_str(), target, result, "agent action");
        self.actions.push(ActionRow {
            at_ms: ms(self.now),
            action: action.into(),
            source: source.as_str().into(),
            target: target.map(str::to_string),
            result: result.into(),
        });
        Some(self.actions.len() - 1)
    }

    /// Plays fixed words in place of whatever the agent was doing; with
    /// `then`, they are the call's last (the caller is no longer heard), and
    /// the control follows once they are played.
    fn say(&mut self, phrases: Vec<Phrase>, then: Option<CallControl>) {
        self.drop_reply();
        let mut playing = VecDeque::new();
        for p in phrases.into_iter().filter(|p| !p.frames.is_empty()) {
            let seq = self.phrase_seq();
            playing.push_back(Playing {
                seq,
                total: p.frames.len(),
                frames: p.frames.into(),
                text: p.text,
                complete: true,
            });
        }
        if then.is_some() {
            self.closing = true;
            self.set_capture(None);
            self.turn.step(Input::Reset);
        }
        if playing.is_empty() {
            // Nothing more to say: the control waits for the last words sent.
            if let Some(control) = then {
                self.due = Some(Due {
                    control,
                    seq: self.last_sent,
                    sent: self.now,
                });
            }
            return;
        }
        let mut r = ActiveReply::new(None, playing, TurnRecord::new(0, false));
        r.fixed = true;
        r.then = then;
        self.reply = Some(r);
    }

    /// The reply in progress stops where it is (a key or a policy took over).
    fn drop_reply(&mut self) {
        if self.replace_reply() {
            self.turn.step(Input::ReplyAbandoned);
        }
    }

    /// Takes the reply in progress out of the way and records it, leaving
    /// the turn machine alone; `true` if there was one.
    fn replace_reply(&mut self) -> bool {
        let Some(mut r) = self.reply.take() else {
            return false;
        };
        if r.started {
            self.cuts += 1;
        }
        // What the far end had not yet played is cleared with the cut.
        let played = match &self.playback {
            Some(p) => r.confirmed_text(p.heard),
            None => r.played_text(),
        };
        self.remember_said(&played);
        if !r.fixed {
            r.record.words_spoken = played.split_whitespace().count();
            r.record.outcome = TurnOutcome::Interrupted;
            self.turns.push(r.record);
        }
        if let Some(a) = r.action.take() {
            self.record_action(a.label(), Source::Model, None, "interrupted");
        }
        true
    }

    /// What the caller heard of the agent goes into the history.
    fn remember_said(&mut self, played: &str) {
        if !played.is_empty() {
            self.history.push(ChatMessage {
                speaker: Speaker::Assistant,
                text: played.to_string(),
            });
        }
    }

    /// Carries out a checked action.
    fn perform(&mut self, action: Action, source: Source, words_before: bool) {
        let why = match source {
            Source::Key => AgentEnd::Key,
            Source::Silence => AgentEnd::Silence,
            Source::MaxLength => AgentEnd::MaxLength,
            _ => AgentEnd::Model,
        };
        match action {
            Action::EndCall => {
                self.record_action("end_call", source, None, "done");
                let goodbye = if words_before {
                    Vec::new()
                } else {
                    vec![self.agent.phrases.goodbye.clone()]
                };
                self.say(goodbye, Some(CallControl::HangUp(Ending::Agent(why))));
            }
            Action::Transfer { name, target } => {
                self.transfer_pending = true;
                self.transferring = self.record_action("transfer", source, Some(&name), "failed");
                let announce = vec![self.agent.phrases.transferring.clone()];
                self.say(announce, Some(CallControl::Transfer { target }));
            }
            Action::Repeat => match self.last_answer.clone() {
                Some(answer) => {
                    self.record_action("repeat", source, None, "done");
                    self.say(vec![answer], None);
                }
                None => {
                    self.record_action("repeat", source, None, "refused");
                }
            },
        }
    }

    /// Policies that act on time: the caller's silence, the longest call,
    /// keys left waiting; and a control whose words have been heard.
    fn policies(&mut self, at: Duration) {
        if let Some(due) = &self.due {
            let heard = match (due.seq, self.playback.as_ref()) {
                (None, _) => true,
                (Some(seq), Some(p)) => {
                    p.heard.is_some_and(|h| h >= seq) || at >= due.sent + CONFIRM_WAIT
                }
                (Some(_), None) => at >= due.sent + GRACE,
            };
            if heard && let Some(due) = self.due.take() {
                self.controls.push_back(due.control);
            }
        }
        if self.closing {
            return;
        }
        let profile = &self.agent.profile;
        if profile.max_call_secs > 0 && at >= Duration::from_secs(profile.max_call_secs as u64) {
            tracing::info!(call = %self.call_id, "the agent's longest call is reached");
            self.perform(Action::EndCall, Source::MaxLength, false);
            return;
        }
        if !self.collected.is_empty()
            && let Some(c) = &profile.collect
            && at >= self.last_key + Duration::from_secs(c.timeout_secs as u64)
        {
            self.collected_digits();
            return;
        }
        if !self.is_idle() || !self.collected.is_empty() {
            self.quiet_since = at;
            return;
        }
        let silence = &profile.silence;
        if silence.after_secs == 0
            || at < self.quiet_since + Duration::from_secs(silence.after_secs as u64)
        {
            return;
        }
        self.quiet_since = at;
        if self.silence_prompts < silence.prompts {
            self.silence_prompts += 1;
            self.record_action("silence_prompt", Source::Silence, None, "done");
            let prompt = self.agent.phrases.still_there.clone();
            self.say(vec![prompt], None);
        } else {
            self.perform(Action::EndCall, Source::Silence, false);
        }
    }

    /// The keys collected go to the model, as the caller's words.
    fn collected_digits(&mut self) {
        let digits = std::mem::take(&mut self.collected);
        self.record_action("collect", Source::Collect, None, "done");
        self.drop_reply();
        let index = self.turns.iter().filter(|t| !t.greeting).count() + 1;
        let text = format!("(The caller typed on the keypad: {digits})");
        let stream = reply::start(
            self.engine.clone(),
            self.llm.clone(),
            ReplyRequest {
                input: ReplyInput::Text(text.clone()),
                agent: self.agent.clone(),
                history: self.history.clone(),
                judge: false,
                words_settle: None,
            },
        );
        let mut r = ActiveReply::new(Some(stream), VecDeque::new(), TurnRecord::new(index, false));
        r.heard = Some(text);
        r.play_from = self.now;
        self.reply = Some(r);
    }

    pub fn turns(&self) -> &[TurnRecord] {
        &self.turns
    }

    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// A key the caller pressed at audio time `at`. Kept for the call's
    /// record (and for menus to come); the conversation itself goes on. A
    /// flood of keys is counted, not kept, and logged a few at a time.
    pub fn push_digit(&mut self, digit: char, at: Duration) {
        let turn = self.turns.len();
        if let Some(held) = self.digit_log.pass(Instant::now()) {
            tracing::info!(call = %self.call_id, turn, held, "caller pressed a key");
        }
        if self.digits.len() < MAX_DIGITS {
            self.digits.push(DigitRecord {
                digit,
                at_ms: at.as_secs_f64() * 1000.0,
                turn,
            });
        }
        self.now = self.now.max(at);
        if self.closing {
            return;
        }
        self.quiet_since = self.now;
        self.silence_prompts = 0;
        if let Some(action) = action::from_key(&self.agent.profile, digit) {
            self.perform(action, Source::Key, false);
            return;
        }
        let Some(c) = self.agent.profile.collect.clone() else {
            return;
        };
        self.last_key = self.now;
        let end = c.end_key.chars().next();
        if Some(digit) == end {
            if !self.collected.is_empty() {
                self.collected_digits();
            }
            return;
        }
        self.collected.push(digit);
        if self.collected.len() >= c.max_digits as usize {
            self.collected_digits();
        }
    }

    pub fn digits(&self) -> &[DigitRecord] {
        &self.digits
    }

    pub fn vad_errors(&self) -> u64 {
        self.vad_errors
    }

    /// One 20 ms frame of caller audio starting at audio time `at`.
    pub fn push_caller(&mut self, frame: &Frame, at: Duration) {
        self.now = self.now.max(at + FRAME);
        if self.closing {
            return;
        }
        self.recent.extend(frame.iter().copied());
        let cap = ms_to_samples(RECENT.as_millis() as u32);
        if self.recent.len() > cap {
            let extra = self.recent.len() - cap;
            self.recent.drain(..extra);
        }
        self.recent_end = at + FRAME;
        if let Some(c) = self.capture.as_mut() {
            c.extend_from_slice(frame);
        }
        match self.vad.push(frame) {
            Ok(Some(p)) => self.speech_prob = p,
            Ok(None) => {}
            Err(e) => {
                // A failed window counts as silence; the call goes on.
                self.vad_errors += 1;
                self.speech_prob = 0.0;
                tracing::warn!(call = %self.call_id, error = %e, "VAD failed on a window");
            }
        }
        let out = self.turn.step(Input::Frame {
            at,
            speech_prob: self.speech_prob,
            level: crate::audio::rms(frame),
        });
        if self.turn.speaking() {
            self.transcript.spoke();
        }
        match out {
            None => {}
            Some(Output::UserStarted { onset }) => {
                self.silence_prompts = 0;
                self.set_capture(Some(self.recent_since(onset.saturating_sub(self.preroll))));
            }
            Some(Output::Paused { last_speech }) => {
                if let Some(capture) = self.capture.as_deref() {
                    self.transcript.paused(
                        &self.engine,
                        &Hearing::of(&self.agent.profile),
                        capture,
                        last_speech,
                    );
                }
            }
            Some(Output::UserFinished {
                onset,
                last_speech,
                play_from,
                forced,
            }) => {
                tracing::debug!(call = %self.call_id, ?onset, ?last_speech, forced, "caller turn ended");
                let judged = self.judge && !forced;
                self.request_reply(onset, last_speech, judged);
                if let Some(r) = self.reply.as_mut() {
                    // A verdict comes beside the reply, which may be ready
                    // first: until it comes, the turn may be a pause.
                    r.play_from = if judged {
                        play_from.max(last_speech + self.turn.policy().incomplete_silence)
                    } else {
                        play_from
                    };
                }
            }
            // Only a verdict moves the time a reply plays.
            Some(Output::PlayFrom(_)) => {}
            Some(Output::UserResumed) => {
                tracing::debug!(call = %self.call_id, "caller resumed before the reply; reply dropped");
                self.transcript.resumed();
                if let Some(mut r) = self.reply.take() {
                    if let Some(a) = r.action.take() {
                        self.record_action(a.label(), Source::Model, None, "interrupted");
                    }
                    // A tool already called (a booking made, perhaps) is kept
                    // in the record, in a turn of its own.
                    if !r.record.tools.is_empty() {
                        r.record.outcome = TurnOutcome::Interrupted;
                        self.turns.push(r.record);
                    }
                }
            }
            Some(Output::PauseAgent) => {
                tracing::debug!(call = %self.call_id, "speech over the agent; its audio held");
            }
            Some(Output::ResumeAgent) => {
                if let Some(r) = self.reply.as_mut() {
                    r.holds = r.holds.saturating_add(1);
                }
                tracing::debug!(call = %self.call_id, "the speech over the agent stopped short of a barge-in; its audio goes on");
            }
            Some(Output::BargeIn { onset }) => {
                tracing::info!(call = %self.call_id, turn = self.turns.len(), "barge-in");
                self.finish_reply(true);
                self.set_capture(Some(self.recent_since(onset.saturating_sub(self.preroll))));
            }
        }
    }

    /// A new turn's audio (or none): what was recognised of the last goes.
    fn set_capture(&mut self, capture: Option<Vec<f32>>) {
        self.capture = capture;
        self.transcript.reset();
    }

    /// Caller audio from audio time `from` to now.
    fn recent_since(&self, from: Duration) -> Vec<f32> {
        let back = self.recent_end.saturating_sub(from);
        let n = (back.as_secs_f64() * ENGINE_RATE as f64) as usize;
        let n = n.min(self.recent.len());
        self.recent
            .iter()
            .skip(self.recent.len() - n)
            .copied()
            .collect()
    }

    fn request_reply(&mut self, onset: Duration, last_speech: Duration, judge: bool) {
        // A reply the caller spoke over before it played (to collected keys,
        // say) is recorded, not lost.
        self.replace_reply();
        let capture = self.capture.as_deref().unwrap_or_default();
        let words = self.transcript.finished(capture, last_speech);
        // The end-of-turn model hears the last 8 s.
        let audio = if judge {
            capture[capture.len().saturating_sub(reply::JUDGED_SAMPLES)..].to_vec()
        } else {
            Vec::new()
        };
        let index = self.turns.iter().filter(|t| !t.greeting).count() + 1;
        let mut record = TurnRecord::new(index, false);
        record.speech_onset_at_ms = Some(ms(onset));
        record.speech_end_at_ms = Some(ms(last_speech));
        let stream = reply::start(
            self.engine.clone(),
            self.llm.clone(),
            ReplyRequest {
                input: ReplyInput::Speech { audio, words },
                agent: self.agent.clone(),
                history: self.history.clone(),
                judge,
                words_settle: self.judge_words.then_some(self.complete_threshold),
            },
        );
        let mut r = ActiveReply::new(Some(stream), VecDeque::new(), record);
        r.verdict_due = judge;
        self.reply = Some(r);
    }

    /// The agent's frame for audio time `at`, or `None` for silence. With
    /// `simulated` the audio clock waits for the engine (deterministic results,
    /// engine time not counted); otherwise whatever is not ready is silence.
    pub async fn next_frame(&mut self, at: Duration, simulated: bool) -> Option<Frame> {
        self.now = self.now.max(at);
        self.policies(at);
        loop {
            let reply = self.reply.as_mut()?;
            if reply.started
                && reply.holds < MAX_HOLDS
                && self.turn.agent_held()
                && at <= self.recent_end + HOLD_FRESH
            {
                return None;
            }
            while reply
                .phrases
                .front()
                .is_some_and(|p| p.frames.is_empty() && p.complete)
            {
                if let Some(p) = reply.phrases.pop_front() {
                    if let Some(playback) = self.playback.as_mut() {
                        playback.ended.push(p.seq);
                    }
                    self.last_sent = Some(p.seq);
                    reply.spoken.push((p.seq, p.text));
                }
            }
            let ready = reply.phrases.front().is_some_and(|p| !p.frames.is_empty());
            if ready && !reply.started && at < reply.play_from {
                // The verdict comes beside the reply: it is read (waited
                // for, in simulated time) while the reply waits.
                if !reply.verdict_due || reply.done {
                    return None;
                }
            } else if let Some(frame) = reply.phrases.front_mut().and_then(|p| p.frames.pop_front())
            {
                if !reply.started {
                    reply.started = true;
                    reply.record.first_audio_at_ms = Some(ms(at));
                    if let Some(end) = reply.record.speech_end_at_ms {
                        reply.record.response_ms = Some(ms(at) - end);
                    }
                    if let Some(text) = reply.heard.take() {
                        self.history.push(ChatMessage {
                            speaker: Speaker::User,
                            text,
                        });
                    }
                    // Fields apart: the reply is borrowed.
                    self.capture = None;
                    self.transcript.reset();
                    self.turn.step(Input::AgentStarted);
                }
                if !reply.fixed && reply.kept.len() < MAX_REPEAT_FRAMES {
                    reply.kept.push(frame);
                }
                return Some(frame);
            }
            if reply.done {
                self.finish_reply(false);
                return None;
            }
            let Some(stream) = reply.stream.as_mut() else {
                reply.done = true;
                continue;
            };
            let event = if simulated {
                stream.events.recv().await
            } else {
                match stream.events.try_recv() {
                    Ok(ev) => Some(ev),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            match event {
                Some(ev) => self.handle(ev),
                None => {
                    if let Some(r) = self.reply.as_mut() {
                        r.done = true;
                        r.verdict_due = false;
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: ReplyEvent) {
        let seq = if matches!(event, ReplyEvent::Phrase { .. }) {
            self.phrase_seq()
        } else {
            0
        };
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        let rec = &mut reply.record;
        match event {
            ReplyEvent::Judged { probability, took } => {
                tracing::debug!(call = %self.call_id, probability, took_ms = took.as_millis() as u64, "turn judged");
                let complete =
                    probability >= self.complete_threshold || reply.complete == Some(true);
                reply.complete = Some(complete);
                reply.verdict_due = false;
                reply.verdict_in();
                if let Some(Output::PlayFrom(at)) = self.turn.step(Input::Judged { complete }) {
                    // The fallback phrase already has its time.
                    reply.play_from = if reply.record.outcome == TurnOutcome::Fallback {
                        reply.play_from.min(at)
                    } else {
                        at
                    };
                }
            }
            ReplyEvent::Unjudged => {
                reply.verdict_due = false;
                reply.verdict_in();
                if reply.complete.is_none()
                    && let Some(Output::PlayFrom(at)) = self.turn.step(Input::Unjudged)
                {
                    reply.play_from = reply.play_from.min(at);
                }
            }
            // Either judge finding the turn complete is enough: Smart Turn
            // hears how it was said, the model reads what was said. With
            // izwi bench --sip, Smart Turn heard 5 of 12 finished synthetic
            // questions as unfinished; the model read several of those as
            // finished, and none of the pauses it was asked about.
            ReplyEvent::WordsJudged { probability } => {
                tracing::debug!(call = %self.call_id, probability, "turn judged by its words");
                if self.judge_words && probability >= self.complete_threshold {
                    reply.complete = Some(true);
                    reply.verdict_due = false;
                    if let Some(Output::PlayFrom(at)) =
                        self.turn.step(Input::Judged { complete: true })
                    {
                        reply.play_from = reply.play_from.min(at);
                    }
                }
            }
            ReplyEvent::Heard { text, asr, audio } => {
                rec.asr_ms = Some(ms(asr));
                rec.asr_rtf = Some(asr.as_secs_f64() / audio.as_secs_f64().max(1e-3));
                rec.words_heard = text.split_whitespace().count();
                reply.heard = Some(text);
            }
            ReplyEvent::Phrase {
                text,
                audio,
                synth,
                complete,
            } => {
                if rec.tts_first_audio_ms.is_none() {
                    rec.tts_first_audio_ms = Some(ms(synth));
                    rec.compute_ms = Some(ms(reply.requested.elapsed()));
                }
                rec.words_generated += text.split_whitespace().count();
                reply.synth += synth;
                reply.synth_audio += FRAME * audio.len() as u32;
                rec.tts_rtf =
                    Some(reply.synth.as_secs_f64() / reply.synth_audio.as_secs_f64().max(1e-3));
                reply.phrases.push_back(Playing {
                    seq,
                    text,
                    total: audio.len(),
                    frames: audio.into(),
                    complete,
                });
            }
            ReplyEvent::PhraseAudio {
                audio,
                synth,
                complete,
            } => {
                reply.synth += synth;
                reply.synth_audio += FRAME * audio.len() as u32;
                rec.tts_rtf =
                    Some(reply.synth.as_secs_f64() / reply.synth_audio.as_secs_f64().max(1e-3));
                if let Some(p) = reply.phrases.back_mut().filter(|p| !p.complete) {
                    p.total += audio.len();
                    p.frames.extend(audio);
                    p.complete = complete;
                }
            }
            ReplyEvent::FirstToken(after) => rec.llm_first_token_ms = Some(ms(after)),
            ReplyEvent::Generated(stats) => {
                if rec.llm_first_token_ms.is_none() {
                    rec.llm_first_token_ms = stats.first_token.map(ms);
                }
                rec.llm_tokens = Some(stats.tokens);
                rec.llm_tokens_per_s = Some(stats.tokens_per_second());
                rec.llm_prompt_tokens = Some(stats.prompt_tokens);
                rec.llm_reused_tokens = Some(stats.reused_tokens);
            }
            ReplyEvent::Done => reply.done = true,
            ReplyEvent::Action(call) => {
                let at = ms(self.now);
                match action::from_model(&self.agent.profile, &call) {
                    Ok(a) if reply.action.is_none() => reply.action = Some(a),
                    Ok(_) => {
                        tracing::info!(call = %self.call_id, "a second action in one reply refused");
                        if self.actions.len() < MAX_ACTIONS {
                            self.actions.push(action::refused_row(Some(&call), at));
                        }
                    }
                    Err(refusal) => {
                        let row = action::refused_row(Some(&call), at);
                        tracing::info!(call = %self.call_id, action = %row.action, %refusal, "the model's action refused");
                        if self.actions.len() < MAX_ACTIONS {
                            self.actions.push(row);
                        }
                    }
                }
            }
            ReplyEvent::MalformedAction => {
                tracing::info!(call = %self.call_id, refusal = %action::Refusal::Malformed, "the model's action refused");
                if self.actions.len() < MAX_ACTIONS {
                    self.actions.push(action::refused_row(None, ms(self.now)));
                }
            }
            ReplyEvent::NothingHeard { asr } => {
                rec.asr_ms = Some(ms(asr));
                rec.outcome = TurnOutcome::NothingHeard;
                self.abandon();
            }
            ReplyEvent::ToolStarted(name) => {
                tracing::info!(call = %self.call_id, turn = rec.index, tool = %name, "tool called");
                if rec.tools.len() < MAX_TOOL_USES {
                    // Until it answers, it counts as interrupted: a barge-in
                    // or a hang-up drops the reply, and this with it.
                    rec.tools.push(ToolUse {
                        name,
                        duration_ms: None,
                        outcome: ToolOutcome::Interrupted.as_str(),
                    });
                }
            }
            ReplyEvent::ToolDone {
                name,
                outcome,
                took,
            } => {
                tracing::info!(call = %self.call_id, turn = rec.index, tool = %name, outcome = outcome.as_str(), took_ms = took.as_millis() as u64, "tool answered");
                if let Some(t) = rec
                    .tools
                    .iter_mut()
                    .rev()
                    .find(|t| t.name == name && t.duration_ms.is_none())
                {
                    t.duration_ms = Some(ms(took));
                    t.outcome = outcome.as_str();
                }
            }
            ReplyEvent::EngineFailed(error) => {
                tracing::warn!(call = %self.call_id, turn = rec.index, %error, "an engine failed; the fallback phrase answers");
                rec.outcome = TurnOutcome::Fallback;
                // Its verdict may never come: the fallback waits no longer
                // than the silence policy.
                reply.verdict_due = false;
                if reply.complete.is_none()
                    && let Some(Output::PlayFrom(at)) = self.turn.step(Input::Unjudged)
                {
                    reply.play_from = reply.play_from.min(at);
                }
            }
            ReplyEvent::Failed(error) => {
                tracing::warn!(call = %self.call_id, turn = rec.index, %error, "reply failed");
                rec.outcome = TurnOutcome::Failed;
                if reply.started {
                    // What is queued plays out, and is remembered as said.
                    reply.done = true;
                } else {
                    self.abandon();
                }
            }
        }
    }

    /// The reply ends before any audio: back to listening.
    fn abandon(&mut self) {
        if let Some(mut r) = self.reply.take() {
            if let Some(a) = r.action.take() {
                self.record_action(a.label(), Source::Model, None, "interrupted");
            }
            self.turns.push(r.record);
        }
        self.set_capture(None);
        self.turn.step(Input::ReplyAbandoned);
    }

    /// Ends the reply in progress, keeping in the history only what was played.
    fn finish_reply(&mut self, interrupted: bool) {
        let Some(mut r) = self.reply.take() else {
            return;
        };
        let played = match (&self.playback, interrupted) {
            (Some(p), true) => r.confirmed_text(p.heard),
            _ => r.played_text(),
        };
        if interrupted {
            self.barge_ins += 1;
        }
        self.remember_said(&played);
        if !r.fixed {
            r.record.words_spoken = played.split_whitespace().count();
            r.record.barged_in = interrupted;
            if interrupted {
                r.record.outcome = TurnOutcome::Interrupted;
            }
            if !interrupted && !r.kept.is_empty() {
                self.last_answer = Some(Phrase {
                    text: played.clone(),
                    frames: std::mem::take(&mut r.kept),
                });
            }
            self.turns.push(r.record);
        }
        if !interrupted && r.started {
            self.turn.step(Input::AgentFinished);
        } else if !interrupted {
            // Nothing to say (an empty reply, or only an action): back to
            // listening, with what the caller said kept.
            if let Some(text) = r.heard.take() {
                self.history.push(ChatMessage {
                    speaker: Speaker::User,
                    text,
                });
            }
            self.set_capture(None);
            self.turn.step(Input::ReplyAbandoned);
        }
        if let Some(control) = r.then.take() {
            let seq = r.spoken.last().map(|(seq, _)| *seq);
            self.due = Some(Due {
                control,
                seq,
                sent: self.now,
            });
        }
        match r.action.take() {
            Some(a) if interrupted => {
                self.record_action(a.label(), Source::Model, None, "interrupted");
            }
            Some(a) => self.perform(a, Source::Model, !played.is_empty()),
            None => {}
        }
        if !self.closing
            && self
                .history
                .last()
                .is_some_and(|m| m.speaker == Speaker::Assistant)
        {
            self.llm.prepare(self.history.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::SILENCE;

    fn reply(spoken: &[&str], current: Option<(&str, usize, usize)>) -> ActiveReply {
        let mut phrases = VecDeque::new();
        if let Some((text, total, left)) = current {
            phrases.push_back(Playing {
                seq: 9,
                text: text.into(),
                frames: std::iter::repeat_n(SILENCE, left).collect(),
                total,
                complete: true,
            });
        }
        let mut r = ActiveReply::new(None, phrases, TurnRecord::new(1, false));
        r.spoken = spoken
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u64 + 1, s.to_string()))
            .collect();
        r.started = true;
        r
    }

    #[test]
    fn played_text_is_whole_phrases_plus_the_heard_share_of_the_current_one() {
        let r = reply(
            &["We open at eight."],
            Some(("On Saturday we close at noon.", 100, 50)),
        );
        assert_eq!(r.played_text(), "We open at eight. On Saturday we");
        let r = reply(
            &["We open at eight."],
            Some(("On Saturday we close at noon.", 100, 100)),
        );
        assert_eq!(
            r.played_text(),
            "We open at eight.",
            "nothing of an unstarted phrase"
        );
        let r = reply(&[], Some(("Hello there.", 10, 9)));
        assert_eq!(r.played_text(), "Hello", "a started word counts as heard");
        let r = reply(&["One.", "Two three."], None);
        assert_eq!(r.played_text(), "One. Two three.");
    }

    #[test]
    fn confirmed_text_is_only_phrases_the_transport_played() {
        // Phrases 1 and 2 sent whole, 3 half sent; marks came back for 1 only.
        let r = reply(
            &["We open at eight.", "On Saturday at nine."],
            Some(("Sunday we are closed.", 100, 50)),
        );
        assert_eq!(r.confirmed_text(Some(1)), "We open at eight.");
        assert_eq!(
            r.confirmed_text(Some(2)),
            "We open at eight. On Saturday at nine."
        );
        assert_eq!(
            r.confirmed_text(None),
            "",
            "no mark back: nothing heard for sure"
        );
        // What was sent would have said more.
        assert_eq!(
            r.played_text(),
            "We open at eight. On Saturday at nine. Sunday we"
        );
    }
}
