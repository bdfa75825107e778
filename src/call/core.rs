//! The call core: one call, whatever carries it. A transport (an RTP session,
//! a provider's media stream) hands it the caller's decoded audio at the
//! wire's rate, the keys pressed and what the far end confirms it played; it
//! calls [`CallCore::tick`] every 20 ms and carries out what comes back:
//! agent audio at the wire's rate, phrase marks, a clear on barge-in, keys to
//! send. The core owns everything else: the agent and its conversation,
//! reblocking and resampling both ways, the call's one audio clock, the
//! record, and how the call ended.
//!
//! The clock is the core's own: tick `n` is audio time `n × 20 ms`, and caller
//! audio is stamped on it as it is taken, never by counting what arrived. Audio
//! that comes late is taken as soon as it is here (and stamped up to the
//! present), and never more than [`MAX_LAG`] behind, so that the latency the
//! record reports is Izwi's, from the moment the caller's audio reached it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use super::conversation::TurnRecord;
use super::ending::Ending;
use super::session::{CallAgent, CallContext, CallTracker};
use crate::audio::{ENGINE_RATE, FRAME, FRAME_SAMPLES, Frame, SILENCE};
use crate::codec::resample::StreamResampler;
use crate::engine::EngineError;
use crate::records::{CallStart, now_ms};

/// How far caller audio may lag the clock; older audio is skipped (as if
/// lost) so that a stall followed by a burst cannot delay the call for good.
pub const MAX_LAG: Duration = Duration::from_millis(100);
/// Caller audio held at most, waiting for the clock (a burst larger than
/// this is cut from its oldest end).
const MAX_BACKLOG: usize = FRAME_SAMPLES * 50;
/// Ticks after the agent's last frame during which the resampler's tail still
/// goes out, so a phrase does not lose its last milliseconds.
const TAIL_TICKS: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("wire rate {0} Hz: {1}")]
    Rate(u32, String),
    #[error(transparent)]
    Agent(#[from] EngineError),
}

/// What a transport tells the core about its call when it starts.
pub struct CoreSetup {
    /// The record's start (transport, ids, parties, agent, rule, codec).
    pub start: CallStart,
    /// The agent the dialplan chose (`None`: the echo agent answers).
    pub agent: Option<Arc<Agent>>,
    /// The rate of the audio the transport hands in and takes out.
    pub wire_rate: u32,
    /// The far end confirms what it played (Twilio's marks): a barge-in then
    /// keeps in the conversation only what was confirmed heard.
    pub confirms_playback: bool,
    /// Silence goes out as audio too (an RTP stream never pauses); otherwise
    /// agent audio goes out only while the agent speaks.
    pub continuous: bool,
}

/// What one tick gives the transport to carry out. Owned by the transport and
/// reused from tick to tick.
#[derive(Debug, Default)]
pub struct Tick {
    /// Agent audio at the wire rate: a 20 ms frame, or nothing.
    pub audio: Vec<f32>,
    /// Phrases played to their end: the transport marks each (and reports
    /// back with [`CallCore::heard_through`] when the far end has played it).
    pub marks: Vec<u64>,
    /// The caller barged in: audio already handed out should be dropped.
    pub clear: bool,
    /// Keys to send to the caller.
    pub keys: String,
}

pub struct CallCore {
    agent: CallAgent,
    tracker: CallTracker,
    up: StreamResampler,
    down: StreamResampler,
    wire_frame: usize,
    continuous: bool,
    /// Caller audio at 16 kHz not yet taken by the clock.
    caller: VecDeque<f32>,
    /// Agent audio at the wire rate not yet handed out.
    agent_wire: VecDeque<f32>,
    ticks: u32,
    /// Audio time of the next caller frame.
    caller_at: Duration,
    barge_ins: u64,
    tail: u8,
    keys: String,
    digits: u32,
    /// Caller audio skipped because it lagged too far, in frames.
    skipped: u64,
    scratch: Vec<f32>,
}

impl CallCore {
    /// Records the call's start and starts its agent. When the agent cannot
    /// start, the call is recorded as failed and the error returned.
    pub async fn start(ctx: &CallContext, setup: CoreSetup) -> Result<CallCore, CoreError> {
        let mut tracker = CallTracker::start(&ctx.recorder, setup.start);
        tracker.answered(now_ms());
        let rate = setup.wire_rate;
        let resamplers = StreamResampler::new(rate, ENGINE_RATE)
            .and_then(|up| Ok((up, StreamResampler::new(ENGINE_RATE, rate)?)))
            .map_err(|e| CoreError::Rate(rate, e.to_string()));
        let (up, down) = match resamplers {
            Ok(r) => r,
            Err(e) => {
                tracker.finish(Ending::AgentFailed, 0, &[]);
                return Err(e);
            }
        };
        let agent = CallAgent::start(
            ctx.echo,
            ctx.engine.clone(),
            setup.agent,
            &ctx.turn,
            tracker.id(),
        )
        .await;
        let mut agent = match agent {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(call = %tracker.id(), error = %e, "cannot start the call's agent");
                tracker.finish(Ending::AgentFailed, 0, &[]);
                return Err(e.into());
            }
        };
        if setup.confirms_playback {
            agent.confirm_playback();
        }
        let wire_frame = rate as usize / 50;
        Ok(CallCore {
            agent,
            tracker,
            up,
            down,
            wire_frame,
            continuous: setup.continuous,
            caller: VecDeque::with_capacity(FRAME_SAMPLES * 4),
            agent_wire: VecDeque::with_capacity(wire_frame * 4),
            ticks: 0,
            caller_at: Duration::ZERO,
            barge_ins: 0,
            tail: 0,
            keys: String::new(),
            digits: 0,
            skipped: 0,
            scratch: Vec::with_capacity(FRAME_SAMPLES * 6),
        })
    }

    /// Izwi's id for the call.
    pub fn id(&self) -> &str {
        self.tracker.id()
    }

    /// The call's audio clock: the start of the next tick.
    pub fn now(&self) -> Duration {
        FRAME * self.ticks
    }

    /// Caller audio at the wire rate, decoded, in any amount.
    pub fn caller_audio(&mut self, wire: &[f32]) {
        self.scratch.clear();
        if self.up.push(wire, &mut self.scratch).is_err() {
            return;
        }
        self.caller.extend(self.scratch.iter().copied());
        if self.caller.len() > MAX_BACKLOG {
            let extra = self.caller.len() - MAX_BACKLOG;
            self.caller.drain(..extra);
            self.skipped += (extra / FRAME_SAMPLES) as u64;
        }
    }

    /// Caller audio held, waiting for the clock.
    pub fn caller_backlog(&self) -> Duration {
        Duration::from_secs_f64(self.caller.len() as f64 / ENGINE_RATE as f64)
    }

    /// A key the caller pressed.
    pub fn digit(&mut self, key: char) {
        self.digits += 1;
        if let Some(keys) = self.agent.digit(key, self.caller_at) {
            self.keys.push_str(&keys);
        }
    }

    /// The far end has played phrase `seq` (and all before it) to its end.
    pub fn heard_through(&mut self, seq: u64) {
        self.agent.heard_through(seq);
    }

    /// The wire's rate changed (a re-INVITE moved the call to another codec):
    /// the resamplers start again at the new rate; agent audio not yet handed
    /// out at the old rate is dropped.
    pub fn rewire(&mut self, wire_rate: u32) {
        let resamplers = StreamResampler::new(wire_rate, ENGINE_RATE)
            .and_then(|up| Ok((up, StreamResampler::new(ENGINE_RATE, wire_rate)?)));
        match resamplers {
            Ok((up, down)) => {
                self.up = up;
                self.down = down;
                self.wire_frame = wire_rate as usize / 50;
                self.agent_wire.clear();
            }
            Err(e) => {
                tracing::warn!(call = %self.id(), wire_rate, error = %e, "cannot resample at the new rate; keeping the old");
            }
        }
    }

    /// The codec changed (a re-INVITE): the record says the last one.
    pub fn codec(&mut self, name: &str) {
        self.tracker.codec(name);
    }

    /// Advances the clock by one 20 ms tick: takes the caller audio that is
    /// due, asks the agent for its frame, and fills `out`.
    pub async fn tick(&mut self, out: &mut Tick) {
        out.audio.clear();
        out.marks.clear();
        out.clear = false;
        out.keys.clear();
        let now = self.now();
        self.ticks += 1;
        // Caller time never lags the clock by more than MAX_LAG: after a stall
        // it jumps (a gap, as for lost packets), and audio held beyond
        // MAX_LAG is the late end of a burst, cut from its oldest side.
        if self.caller_at + MAX_LAG < now {
            let behind = now - MAX_LAG - self.caller_at;
            self.caller_at += FRAME * (behind.as_millis() / FRAME.as_millis()) as u32;
        }
        let keep = FRAME_SAMPLES * (MAX_LAG.as_millis() / FRAME.as_millis() + 1) as usize;
        if self.caller.len() > keep {
            let extra = (self.caller.len() - keep) / FRAME_SAMPLES * FRAME_SAMPLES;
            self.caller.drain(..extra);
            self.skipped += (extra / FRAME_SAMPLES) as u64;
        }
        while self.caller.len() >= FRAME_SAMPLES && self.caller_at <= now {
            let mut frame: Frame = SILENCE;
            for (f, s) in frame.iter_mut().zip(self.caller.drain(..FRAME_SAMPLES)) {
                *f = s;
            }
            self.agent.push(&frame, self.caller_at);
            self.caller_at += FRAME;
        }
        let frame = self.agent.next(now).await;
        out.marks.extend(self.agent.take_phrase_ends());
        let barge_ins = self.agent.barge_ins();
        if barge_ins > self.barge_ins {
            self.barge_ins = barge_ins;
            self.agent_wire.clear();
            self.tail = 0;
            out.clear = true;
        }
        self.tail = if frame.is_some() {
            TAIL_TICKS
        } else {
            self.tail.saturating_sub(1)
        };
        self.scratch.clear();
        // Silence goes through the resampler too, keeping its state continuous.
        if self
            .down
            .push(&frame.unwrap_or(SILENCE), &mut self.scratch)
            .is_err()
        {
            self.scratch.clear();
            self.scratch.resize(self.wire_frame, 0.0);
        }
        if self.continuous || self.tail > 0 {
            self.agent_wire.extend(self.scratch.iter().copied());
            if self.agent_wire.len() >= self.wire_frame {
                out.audio.extend(self.agent_wire.drain(..self.wire_frame));
            } else if self.continuous {
                // The resampler's first output is short: the stream never pauses.
                out.audio.extend(self.agent_wire.drain(..));
                out.audio.resize(self.wire_frame, 0.0);
            }
        } else {
            self.agent_wire.clear();
        }
        out.keys.push_str(&self.keys);
        self.keys.clear();
    }

    /// Ends the call: the conversation closes, and the record is written with
    /// how it ended. Returns the turns, for the transport's log line.
    pub fn end(mut self, ending: Ending) -> Vec<TurnRecord> {
        let turns = self.agent.close();
        if self.skipped > 0 {
            tracing::info!(call = %self.id(), frames = self.skipped, "caller audio came too late and was skipped");
        }
        self.tracker.finish(ending, self.digits, &turns);
        turns
    }
}

#[cfg(test)]
mod tests_support {
    pub use super::*;
    pub use crate::config::TurnConfig;
    pub use crate::records::{Recorder, Transport};

    pub async fn echo_context() -> CallContext {
        let plan = crate::dialplan::Dialplan::single("english", &Default::default());
        CallContext {
            engine: None,
            agents: Arc::new(super::super::agents::Agents::new(None, plan).await.unwrap()),
            turn: TurnConfig::default(),
            echo: true,
            recorder: Recorder::disabled(),
        }
    }

    pub async fn core(continuous: bool) -> CallCore {
        let setup = CoreSetup {
            agent: None,
            start: CallStart {
                id: "t".into(),
                remote_id: None,
                transport: Transport::Talk,
                started_at_ms: 0,
                called: None,
                caller: None,
                agent: None,
                rule: None,
                codec: None,
            },
            wire_rate: 8_000,
            confirms_playback: false,
            continuous,
        };
        CallCore::start(&echo_context().await, setup).await.unwrap()
    }

    pub fn tone(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (i as f32 * 400.0 * std::f32::consts::TAU / 8000.0).sin())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;

    #[tokio::test]
    async fn one_clock_a_frame_a_tick_and_late_audio_is_taken_up_to_the_present() {
        let mut c = core(true).await;
        let mut out = Tick::default();
        for _ in 0..5 {
            c.caller_audio(&tone(160));
            c.tick(&mut out).await;
            assert_eq!(out.audio.len(), 160, "a continuous stream never pauses");
        }
        assert_eq!(c.now(), FRAME * 5);
        // Caller time follows the clock within a frame (the resampler's delay).
        let lag = c.now() - c.caller_at;
        assert!(lag <= FRAME * 2, "{lag:?}");
        // A stall: the clock goes on, the caller's audio lags...
        for _ in 0..3 {
            c.tick(&mut out).await;
        }
        assert!(c.now() - c.caller_at >= FRAME * 3);
        // ...and what comes late is taken at once, up to the present.
        c.caller_audio(&tone(160 * 3));
        c.tick(&mut out).await;
        assert!(
            c.now() - c.caller_at <= FRAME * 2,
            "{:?} {:?}",
            c.now(),
            c.caller_at
        );
        // A long stall then a burst: caller time never lags more than MAX_LAG,
        // and the burst's late end is cut rather than delaying the call.
        for _ in 0..50 {
            c.tick(&mut out).await;
        }
        c.caller_audio(&tone(160 * 40));
        c.tick(&mut out).await;
        assert!(
            c.now() - c.caller_at <= MAX_LAG + FRAME,
            "{:?} {:?}",
            c.now(),
            c.caller_at
        );
        assert!(c.skipped > 0);
        assert!(
            c.caller_backlog() <= MAX_LAG + FRAME,
            "{:?}",
            c.caller_backlog()
        );
    }

    #[tokio::test]
    async fn a_sender_slower_than_the_clock_loses_no_audio() {
        // Three frames in every four ticks: caller time jumps, audio is kept.
        let mut c = core(false).await;
        let mut out = Tick::default();
        let (mut pushed, mut heard) = (0, 0);
        for i in 0..200 {
            if i % 4 != 3 && pushed < 120 {
                c.caller_audio(&tone(160));
                pushed += 1;
            }
            c.tick(&mut out).await;
            heard += usize::from(!out.audio.is_empty());
        }
        assert!(heard >= 110, "{heard} frames echoed of {pushed}");
        assert_eq!(c.skipped, 0);
    }

    #[tokio::test]
    async fn a_stream_transport_gets_audio_only_while_the_agent_speaks() {
        let mut c = core(false).await;
        let mut out = Tick::default();
        c.tick(&mut out).await;
        assert!(out.audio.is_empty(), "nothing to say, nothing sent");
        // The echo agent speaks what it hears.
        let mut spoke = 0;
        for _ in 0..10 {
            c.caller_audio(&tone(160));
            c.tick(&mut out).await;
            if !out.audio.is_empty() {
                assert_eq!(out.audio.len(), 160);
                spoke += 1;
            }
        }
        assert!(spoke >= 8, "{spoke}");
        // Then it stops, after a short tail.
        let mut quiet = 0;
        for _ in 0..20 {
            c.tick(&mut out).await;
            quiet += usize::from(out.audio.is_empty());
        }
        assert!(quiet >= 15, "{quiet}");
    }

    #[tokio::test]
    async fn keys_are_counted_and_the_echo_agents_come_back_to_be_sent() {
        let mut c = core(true).await;
        let mut out = Tick::default();
        c.digit('5');
        c.digit('#');
        c.tick(&mut out).await;
        assert_eq!(out.keys, "5#");
        c.tick(&mut out).await;
        assert!(out.keys.is_empty());
        assert_eq!(c.digits, 2);
        assert!(c.end(Ending::CallerBye).is_empty());
    }
}
