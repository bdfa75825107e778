//! What answers a call, whatever carries it (RTP from a SIP trunk or a cloud
//! provider's media stream): the conversation with the engine, or the echo
//! agent for capacity tests.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use super::action::CallControl;
use super::agents::Agents;
use super::conversation::{Conversation, TurnOutcome, TurnRecord};
use super::ending::Ending;
use crate::audio::Frame;
use crate::config::TurnConfig;
use crate::engine::{Engine, EngineError};
use crate::metrics::{TurnTimings, metrics};
use crate::records::{
    ActionRow, CallEnd, CallGuard, CallStart, Outcome, Recorder, ToolRow, Transport, TurnRow,
};

/// What a call needs to be answered; shared by every call of every transport.
pub struct CallContext {
    pub engine: Option<Arc<Engine>>,
    /// The agents, and the dialplan that routes calls to them.
    pub agents: Arc<Agents>,
    pub turn: TurnConfig,
    pub echo: bool,
    /// Where calls' records go.
    pub recorder: Recorder,
    /// The calls in progress, for the console.
    pub live: Arc<super::live::LiveCalls>,
}

/// One call's record and metrics from start to end: whatever way the call
/// ends (its reactor returning, failing, panicking or being dropped), the
/// record is written and the active-calls gauge comes back down.
pub struct CallTracker {
    transport: Transport,
    guard: Option<CallGuard>,
    answered_at_ms: Option<i64>,
    codec: Option<String>,
}

impl CallTracker {
    pub fn start(recorder: &Recorder, start: CallStart) -> CallTracker {
        metrics().call_started(start.transport.as_str());
        let transport = start.transport;
        CallTracker {
            transport,
            guard: Some(recorder.start(start)),
            answered_at_ms: None,
            codec: None,
        }
    }

    pub fn id(&self) -> &str {
        self.guard.as_ref().map_or("", |g| g.id())
    }

    pub fn answered(&mut self, at_ms: i64) {
        self.answered_at_ms = Some(at_ms);
        if let Some(g) = self.guard.as_mut() {
            g.answered(at_ms);
        }
    }

    pub fn codec(&mut self, codec: &str) {
        self.codec = Some(codec.to_string());
        if let Some(g) = self.guard.as_mut() {
            g.codec(codec);
        }
    }

    /// Records the call's end: how it ended, the keys the caller pressed, and
    /// its turns (a failed turn counts as an error, and so does a failed call).
    pub fn finish(
        mut self,
        ending: Ending,
        digits: u32,
        turns: &[TurnRecord],
        actions: Vec<ActionRow>,
    ) {
        let outcome = ending.outcome();
        let errors = turns
            .iter()
            .filter(|t| matches!(t.outcome, TurnOutcome::Failed | TurnOutcome::Fallback))
            .count() as u32
            + u32::from(outcome == Outcome::Failed);
        let m = metrics();
        let transport = self.transport.as_str();
        for t in turns {
            m.turn(
                transport,
                &TurnTimings {
                    response_ms: t.response_ms,
                    asr_ms: t.asr_ms,
                    llm_first_token_ms: t.llm_first_token_ms,
                    tts_first_audio_ms: t.tts_first_audio_ms,
                    llm_tokens_per_s: t.llm_tokens_per_s,
                },
            );
            if t.barged_in {
                m.barge_in(transport);
            }
        }
        for _ in 0..digits {
            m.dtmf(transport);
        }
        for a in &actions {
            m.agent_action(&a.action, &a.result);
        }
        m.call_ended(transport, outcome.as_str());
        log_turns(self.id(), turns);
        if let Some(guard) = self.guard.take() {
            let id = guard.id().to_string();
            guard.finish(CallEnd {
                id,
                answered_at_ms: self.answered_at_ms,
                ended_at_ms: crate::records::now_ms(),
                outcome,
                hangup_cause: ending.cause(),
                hangup_side: ending.side(),
                codec: self.codec.take(),
                dtmf: digits,
                errors,
                turns: turns.iter().map(turn_row).collect(),
                actions,
                tools: turns
                    .iter()
                    .flat_map(|t| {
                        t.tools.iter().map(|u| ToolRow {
                            turn: t.index as u32,
                            name: u.name.clone(),
                            duration_ms: u.duration_ms,
                            outcome: u.outcome.to_string(),
                        })
                    })
                    .collect(),
            });
        }
    }
}

impl Drop for CallTracker {
    fn drop(&mut self) {
        // Unfinished: the guard records a failed end as it drops.
        if self.guard.is_some() {
            metrics().call_ended(self.transport.as_str(), Outcome::Failed.as_str());
        }
    }
}

fn turn_row(t: &TurnRecord) -> TurnRow {
    TurnRow {
        index: t.index as u32,
        greeting: t.greeting,
        outcome: match t.outcome {
            TurnOutcome::Answered => "answered",
            TurnOutcome::Interrupted => "interrupted",
            TurnOutcome::NothingHeard => "nothing_heard",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Fallback => "fallback",
            TurnOutcome::HungUp => "hung_up",
        }
        .to_string(),
        response_ms: t.response_ms,
        asr_ms: t.asr_ms,
        llm_first_token_ms: t.llm_first_token_ms,
        llm_tokens_per_s: t.llm_tokens_per_s,
        tts_first_audio_ms: t.tts_first_audio_ms,
        words_heard: t.words_heard as u32,
        words_spoken: t.words_spoken as u32,
        interrupted: t.barged_in,
        speech_onset_ms: t.speech_onset_at_ms,
        speech_end_ms: t.speech_end_at_ms,
    }
}

/// What answers the caller.
pub enum CallAgent {
    Engine(Box<Conversation>),
    /// Plays the caller's audio back: for capacity tests without models.
    Echo(VecDeque<Frame>),
}

impl CallAgent {
    pub async fn start(
        echo: bool,
        engine: Option<Arc<Engine>>,
        agent: Option<Arc<Agent>>,
        turn: &TurnConfig,
        call_id: &str,
    ) -> Result<CallAgent, EngineError> {
        match (echo, engine, agent) {
            (true, _, _) => Ok(CallAgent::Echo(VecDeque::new())),
            (false, Some(engine), Some(agent)) => Ok(CallAgent::Engine(Box::new(
                Conversation::start(engine, agent, turn, call_id).await?,
            ))),
            _ => Err(EngineError::Worker("no engine loaded for this call".into())),
        }
    }

    pub(crate) fn push(&mut self, frame: &Frame, at: Duration) {
        match self {
            CallAgent::Engine(c) => c.push_caller(frame, at),
            CallAgent::Echo(q) => {
                q.push_back(*frame);
                // Bounded: a stalled sender must not grow the queue.
                while q.len() > 8 {
                    q.pop_front();
                }
            }
        }
    }

    pub(crate) async fn next(&mut self, at: Duration) -> Option<Frame> {
        match self {
            CallAgent::Engine(c) => c.next_frame(at, false).await,
            CallAgent::Echo(q) => q.pop_front(),
        }
    }

    /// A key the caller pressed; returns keys to send back. The echo agent
    /// echoes them, which lets a peer check DTMF both ways.
    pub(crate) fn digit(&mut self, key: char, at: Duration) -> Option<String> {
        match self {
            CallAgent::Engine(c) => {
                c.push_digit(key, at);
                None
            }
            CallAgent::Echo(_) => Some(key.to_string()),
        }
    }

    /// Ends the conversation: its turns and actions, for the record.
    pub(crate) fn close(&mut self) -> (Vec<TurnRecord>, Vec<ActionRow>) {
        match self {
            CallAgent::Engine(c) => {
                c.close();
                (c.turns().to_vec(), c.actions().to_vec())
            }
            CallAgent::Echo(_) => (Vec::new(), Vec::new()),
        }
    }

    pub(crate) fn take_control(&mut self) -> Option<CallControl> {
        match self {
            CallAgent::Engine(c) => c.take_control(),
            CallAgent::Echo(_) => None,
        }
    }

    pub(crate) fn transfer_result(&mut self, done: bool) {
        if let CallAgent::Engine(c) = self {
            c.transfer_result(done);
        }
    }
}

impl CallAgent {
    /// For transports that confirm playback (see [`Conversation::confirm_playback`]).
    pub(crate) fn confirm_playback(&mut self) {
        if let CallAgent::Engine(c) = self {
            c.confirm_playback();
        }
    }

    pub(crate) fn take_phrase_ends(&mut self) -> Vec<u64> {
        match self {
            CallAgent::Engine(c) => c.take_phrase_ends(),
            CallAgent::Echo(_) => Vec::new(),
        }
    }

    pub(crate) fn heard_through(&mut self, seq: u64) {
        if let CallAgent::Engine(c) = self {
            c.heard_through(seq);
        }
    }

    /// The turn machine's state, the caller's turns answered and the last
    /// reply's latency (none for the echo agent).
    pub(crate) fn progress(&self) -> Option<(super::turn::State, usize, Option<f64>)> {
        match self {
            CallAgent::Engine(c) => {
                let turns = c.turns();
                let answered = turns.iter().filter(|t| !t.greeting).count();
                let last = turns
                    .iter()
                    .rev()
                    .find(|t| !t.greeting)
                    .and_then(|t| t.response_ms);
                Some((c.state(), answered, last))
            }
            CallAgent::Echo(_) => None,
        }
    }

    pub(crate) fn barge_ins(&self) -> u64 {
        match self {
            CallAgent::Engine(c) => c.barge_ins(),
            CallAgent::Echo(_) => 0,
        }
    }
}

/// One log line per turn of an ended call: the timings operators read, never
/// what was said.
pub fn log_turns(call_id: &str, turns: &[TurnRecord]) {
    for t in turns {
        tracing::info!(
            call = %call_id,
            turn = t.index,
            greeting = t.greeting,
            outcome = ?t.outcome,
            response_ms = t.response_ms.map(|v| v.round() as i64),
            asr_ms = t.asr_ms.map(|v| v.round() as i64),
            llm_first_token_ms = t.llm_first_token_ms.map(|v| v.round() as i64),
            tts_first_audio_ms = t.tts_first_audio_ms.map(|v| v.round() as i64),
            words_heard = t.words_heard,
            words_spoken = t.words_spoken,
            barged_in = t.barged_in,
            "turn"
        );
    }
}
