//! `izwi talk`: a recorded caller plays into a conversation, in real time or on a
//! simulated clock, and the agent's side is written time-aligned with it.

use std::sync::Arc;
use std::time::Duration;

use crate::audio::{ENGINE_RATE, FRAME, SILENCE, frames};
use crate::call::Agent;
use crate::call::action::CallControl;
use crate::call::conversation::{Conversation, TurnRecord};
use crate::call::ending::Ending;
use crate::config::TurnConfig;
use crate::engine::{ChatMessage, Engine, EngineError};
use crate::records::ActionRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Frames are fed every 20 ms of wall time; engine latency is heard.
    RealTime,
    /// The audio clock waits for the engine: as fast as possible, deterministic.
    Simulated,
}

pub struct TalkOutcome {
    /// The agent's side at 16 kHz, sample-aligned with the caller's.
    pub agent_audio: Vec<f32>,
    pub turns: Vec<TurnRecord>,
    /// The conversation as the agent remembers it (in memory only).
    pub history: Vec<ChatMessage>,
    pub caller_seconds: f64,
    pub actions: Vec<ActionRow>,
    /// How the talk ended: the recording ran out, or the agent hung up or
    /// transferred (a transfer is taken as done: there is no one to hand to).
    pub ending: Ending,
    /// Where the agent transferred the caller.
    pub transferred_to: Option<String>,
}

/// How long the harness keeps listening after the recording ends.
const MAX_TAIL: Duration = Duration::from_secs(60);
/// Quiet time after the recording and the agent are both done.
const SETTLE: Duration = Duration::from_millis(500);

pub async fn talk(
    engine: Arc<Engine>,
    agent: Arc<Agent>,
    turn: &TurnConfig,
    caller: &[f32],
    clock: Clock,
) -> Result<TalkOutcome, EngineError> {
    let mut conv = Conversation::start(engine, agent, turn, "talk").await?;
    let caller_frames = frames(caller);
    let mut out =
        Vec::with_capacity(caller.len() + MAX_TAIL.as_secs() as usize * ENGINE_RATE as usize);
    let start = tokio::time::Instant::now();
    let mut quiet = Duration::ZERO;
    let mut ending = Ending::TalkEnd;
    let mut transferred_to = None;
    for k in 0u32.. {
        let at = FRAME * k;
        if clock == Clock::RealTime {
            tokio::time::sleep_until(start + at).await;
        }
        let frame = caller_frames.get(k as usize).unwrap_or(&SILENCE);
        conv.push_caller(frame, at);
        let agent_frame = conv.next_frame(at, clock == Clock::Simulated).await;
        out.extend_from_slice(&agent_frame.unwrap_or(SILENCE));
        match conv.take_control() {
            Some(CallControl::HangUp(e)) => {
                ending = e;
                break;
            }
            Some(CallControl::Transfer { target }) => {
                conv.transfer_result(true);
                transferred_to = Some(target);
                ending = Ending::Transferred;
                break;
            }
            None => {}
        }
        if k as usize >= caller_frames.len() {
            quiet = if conv.is_idle() {
                quiet + FRAME
            } else {
                Duration::ZERO
            };
            let tail = at.saturating_sub(FRAME * caller_frames.len() as u32);
            if quiet >= SETTLE || tail >= MAX_TAIL {
                break;
            }
        }
    }
    conv.close();
    Ok(TalkOutcome {
        agent_audio: out,
        turns: conv.turns().to_vec(),
        history: conv.history().to_vec(),
        caller_seconds: caller.len() as f64 / ENGINE_RATE as f64,
        actions: conv.actions().to_vec(),
        ending,
        transferred_to,
    })
}

/// A caller who says `lines` with the agent's voice: after the greeting and a
/// short pause, each line then a pause long enough for a short answer.
pub async fn spoken_caller(
    engine: &Arc<Engine>,
    agent: &Agent,
    lines: &[String],
) -> Result<Vec<f32>, EngineError> {
    let samples = |d: Duration| (d.as_secs_f64() * ENGINE_RATE as f64) as usize;
    let greeting = FRAME * agent.greeting.len() as u32;
    let mut audio = vec![0.0; samples(greeting + Duration::from_millis(800))];
    for line in lines {
        let spoken = engine
            .speak(line.clone(), crate::engine::Voice::of(&agent.profile))
            .await?;
        audio.extend_from_slice(&spoken);
        audio.extend(std::iter::repeat_n(0.0, samples(Duration::from_secs(6))));
    }
    Ok(audio)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The per-turn table printed by `izwi talk`.
pub fn report(turns: &[TurnRecord]) -> String {
    let mut s = String::new();
    s.push_str(
        "turn  outcome        end→audio  compute  asr_ms  asr_rtf  llm_first  tok/s  tts_first  tts_rtf  heard  spoken  barge-in\n",
    );
    for t in turns {
        let label = if t.greeting {
            "greet".to_string()
        } else {
            t.index.to_string()
        };
        s.push_str(&format!(
            "{:<5} {:<14} {:>9} {:>8} {:>7} {:>8} {:>10} {:>6} {:>10} {:>8} {:>6} {:>7}  {}\n",
            label,
            format!("{:?}", t.outcome).to_lowercase(),
            opt(t.response_ms, 0),
            opt(t.compute_ms, 0),
            opt(t.asr_ms, 0),
            opt(t.asr_rtf, 2),
            opt(t.llm_first_token_ms, 0),
            opt(t.llm_tokens_per_s, 1),
            opt(t.tts_first_audio_ms, 0),
            opt(t.tts_rtf, 2),
            t.words_heard,
            t.words_spoken,
            if t.barged_in { "yes" } else { "no" },
        ));
    }
    s
}
