//! What answers a call, whatever carries it (RTP from a SIP trunk or a cloud
//! provider's media stream): the conversation with the engine, or the echo
//! agent for capacity tests.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use super::conversation::{Conversation, TurnRecord};
use crate::audio::Frame;
use crate::config::TurnConfig;
use crate::engine::{Engine, EngineError};

/// What a call needs to be answered; shared by every call of every transport.
pub struct CallContext {
    pub engine: Option<Arc<Engine>>,
    pub agent: Option<Arc<Agent>>,
    pub turn: TurnConfig,
    pub echo: bool,
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

    pub(crate) fn close(&mut self) -> Vec<TurnRecord> {
        match self {
            CallAgent::Engine(c) => {
                c.close();
                c.turns().to_vec()
            }
            CallAgent::Echo(_) => Vec::new(),
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
