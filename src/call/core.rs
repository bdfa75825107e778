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
use super::action::CallControl;
use super::conversation::TurnRecord;
use super::ending::Ending;
use super::live::{Live, LiveCall, state_name};
use super::session::{CallAgent, CallContext, CallTracker};
use super::turn::State;
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
    /// What the transport must do for the call (its words already played).
    pub control: Option<CallControl>,
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
    /// The call as the console lists it.
    live: Live,
}

/// Ticks between updates of the call's place in the live list.
const LIVE_EVERY: u32 = 5;

impl CallCore {
    /// Records the call's start and starts its agent. When the agent cannot
    /// start, the call is recorded as failed and the error returned.
    pub async fn start(ctx: &CallContext, setup: CoreSetup) -> Result<CallCore, CoreError> {
        let listed = LiveCall {
            id: setup.start.id.clone(),
            transport: setup.start.transport,
            agent: setup.start.agent.clone(),
            codec: setup.start.codec.clone(),
            started_at_ms: setup.start.started_at_ms,
            turns: 0,
            state: state_name(State::Listening),
            last_response_ms: None,
        };
        let mut tracker = CallTracker::start(&ctx.recorder, setup.start);
        tracker.answered(now_ms());
        let rate = setup.wire_rate;
        let resamplers = StreamResampler::new(rate, ENGINE_RATE)
            .and_then(|up| Ok((up, StreamResampler::new(ENGINE_RATE, rate)?)))
            .map_err(|e| CoreError::Rate(rate, e.to_string()));
        let (up, down) = match resamplers {
            Ok(r) => r,
            Err(e) => {
                tracker.finish(Ending::AgentFailed, 0, &[], Vec::new());
                return Err(e);
            }
        };
        let started = std::time::Instant::now();
        let agent = CallAgent::start(
            ctx.echo,
            ctx.engine.clone(),
            setup.agent,
            &ctx.turn,
            tracker.id(),
        )
        .await;
        tracing::debug!(call = %tracker.id(), ms = started.elapsed().as_millis() as u64, "agent started");
        let mut agent = match agent {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(call = %tracker.id(), error = %e, "cannot start the call's agent");
                tracker.finish(Ending::AgentFailed, 0, &[], Vec::new());
                return Err(e.into());
            }
        };
        if setup.confirms_playback {
            agent.confirm_playback();
        }
        let wire_frame = rate as usize / 50;
        let live = ctx.live.register(listed);
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
            live,
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
        self.live.update(|c| c.codec = Some(name.to_string()));
    }

    /// Advances the clock by one 20 ms tick: takes the caller audio that is
    /// due, asks the agent for its frame, and fills `out`.
    pub async fn tick(&mut self, out: &mut Tick) {
        out.audio.clear();
        out.marks.clear();
        out.clear = false;
        out.keys.clear();
        out.control = None;
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
        out.control = self.agent.take_control();
        if self.ticks.is_multiple_of(LIVE_EVERY) {
            if let Some((state, turns, last)) = self.agent.progress() {
                self.live.update(|c| {
                    c.state = state_name(state);
                    c.turns = turns;
                    c.last_response_ms = last.or(c.last_response_ms);
                });
            }
            if out.control.is_none() && self.live.hang_up_asked() {
                tracing::info!(call = %self.id(), "an operator hung up the call");
                out.control = Some(CallControl::HangUp(Ending::Operator));
            }
        }
    }

    /// How the transport's transfer went: done (the transport ends the call
    /// as [`Ending::Transferred`]) or refused (the agent goes on per its profile).
    pub fn transfer_result(&mut self, done: bool) {
        self.agent.transfer_result(done);
    }

    /// Ends the call: the conversation closes, and the record is written with
    /// how it ended. Returns the turns, for the transport's log line.
    pub fn end(mut self, ending: Ending) -> Vec<TurnRecord> {
        let (turns, actions) = self.agent.close();
        if self.skipped > 0 {
            tracing::info!(call = %self.id(), frames = self.skipped, "caller audio came too late and was skipped");
        }
        self.tracker.finish(ending, self.digits, &turns, actions);
        turns
    }
}

#[cfg(test)]
mod tests_support {
    pub use super::*;
    pub use crate::call::Agent;
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
            live: Default::default(),
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

/// The core with a conversation on the fake engine: the clock is the test's
/// (one tick per 20 ms of audio), the engine's work is done between ticks.
#[cfg(test)]
mod conversation_tests {
    use super::tests_support::*;
    use crate::call::action::CallControl;
    use crate::call::conversation::{MAX_HOLDS, TurnOutcome, TurnRecord};
    use crate::call::ending::AgentEnd;
    use crate::config::AgentProfile;
    use crate::engine::fake::{self, Script, Step};
    use crate::engine::{Speaker, ToolCall};

    const SPOKEN: &str =
        "We open at eight in the morning and we close at five in the afternoon on every weekday.";

    fn quiet_profile() -> AgentProfile {
        let mut p = AgentProfile::new("en", "x", "");
        // No greeting (new() gives the language's).
        p.greeting.clear();
        p.silence.after_secs = 0;
        p.goodbye = "Goodbye now.".into();
        p
    }

    async fn engine_core(script: Script, profile: AgentProfile, twilio: bool) -> CallCore {
        core_on(fake::engine(script), profile, twilio).await
    }

    async fn core_on(
        engine: Arc<crate::engine::Engine>,
        profile: AgentProfile,
        twilio: bool,
    ) -> CallCore {
        core_turned(engine, profile, twilio, TurnConfig::default()).await
    }

    async fn core_turned(
        engine: Arc<crate::engine::Engine>,
        profile: AgentProfile,
        twilio: bool,
        turn: TurnConfig,
    ) -> CallCore {
        let agent = Arc::new(Agent::prepare(&engine, "a", &profile).await.unwrap());
        let plan = crate::dialplan::Dialplan::single("a", &Default::default());
        let ctx = CallContext {
            engine: Some(engine.clone()),
            agents: Arc::new(super::super::agents::Agents::new(None, plan).await.unwrap()),
            turn,
            echo: false,
            recorder: Recorder::disabled(),
            live: Default::default(),
        };
        let setup = CoreSetup {
            agent: Some(agent),
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
            confirms_playback: twilio,
            continuous: !twilio,
        };
        CallCore::start(&ctx, setup).await.unwrap()
    }

    /// What happened on one tick.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        loud: bool,
        clear: bool,
        control: Option<CallControl>,
        marks: Vec<u64>,
    }

    /// One tick: the caller's frame (if any) in, the agent's out; the
    /// engine's tasks get their turn after it.
    async fn step(c: &mut CallCore, out: &mut Tick, caller: Option<&[f32]>) -> Seen {
        if let Some(a) = caller {
            c.caller_audio(a);
        }
        c.tick(out).await;
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Seen {
            loud: out.audio.iter().any(|s| s.abs() > 0.05),
            clear: out.clear,
            control: out.control.clone(),
            marks: out.marks.clone(),
        }
    }

    fn silence() -> Vec<f32> {
        vec![0.0; 160]
    }

    /// The caller speaks `frames` frames, then is silent until the agent is
    /// heard; returns the tick of the agent's first audio.
    async fn ask(c: &mut CallCore, out: &mut Tick, frames: usize) -> usize {
        for _ in 0..frames {
            step(c, out, Some(&tone(160))).await;
        }
        for i in 0..500 {
            if step(c, out, Some(&silence())).await.loud {
                return i;
            }
        }
        panic!("the agent never answered");
    }

    #[tokio::test]
    async fn a_barge_in_stops_the_answer_and_clears_the_far_end() {
        // The model is still writing when the caller barges in: the turn
        // keeps the time of its first words all the same.
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN), Step::Stall]],
            ..Default::default()
        };
        let mut c = engine_core(script, quiet_profile(), true).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        for _ in 0..25 {
            assert!(step(&mut c, &mut out, Some(&silence())).await.loud);
        }
        // The caller talks over the answer: it is held at once, cut (and the
        // far end cleared) once the speech has lasted barge_in_min_ms.
        let (mut cleared_at, mut quiet_at) = (None, None);
        for i in 0..30 {
            let s = step(&mut c, &mut out, Some(&tone(160))).await;
            if !s.loud && quiet_at.is_none() {
                quiet_at = Some(i);
            }
            if s.clear {
                cleared_at = Some(i);
                break;
            }
        }
        let at = cleared_at.expect("no clear on barge-in");
        assert!(at <= 12, "barge-in took {at} ticks");
        let quiet = quiet_at.expect("the agent talked on until the barge-in");
        assert!(
            quiet <= 3,
            "the agent went quiet {quiet} ticks after the onset"
        );
        assert!(!step(&mut c, &mut out, Some(&tone(160))).await.loud);
        let turns = c.end(Ending::CallerBye);
        let answer = turns.iter().find(|t| !t.greeting).unwrap();
        assert!(answer.barged_in);
        assert_eq!(answer.outcome, TurnOutcome::Interrupted);
        assert!(answer.words_spoken < SPOKEN.split_whitespace().count());
        assert!(answer.llm_first_token_ms.is_some(), "{answer:?}");
    }

    /// The agent's answer, with 60 ms of noise from the caller (shorter
    /// than barge_in_min_ms) 400 ms into it or none: the loud samples of the
    /// answer, the ticks from the noise's onset to the agent's first quiet
    /// tick, and the answer's record.
    async fn answer_over_a_cough(cough: bool) -> (usize, Option<usize>, TurnRecord) {
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let mut c = engine_core(script, quiet_profile(), false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        let loud_samples = |out: &Tick| out.audio.iter().filter(|s| s.abs() > 0.05).count();
        let mut samples = loud_samples(&out);
        for _ in 0..20 {
            step(&mut c, &mut out, Some(&silence())).await;
            samples += loud_samples(&out);
        }
        let mut quiet_at = None;
        if cough {
            for i in 0..3 {
                let s = step(&mut c, &mut out, Some(&tone(160))).await;
                samples += loud_samples(&out);
                if !s.loud && quiet_at.is_none() {
                    quiet_at = Some(i);
                }
            }
        }
        let mut quiet_ticks = 0;
        while quiet_ticks < 10 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            samples += loud_samples(&out);
            quiet_ticks = if s.loud { 0 } else { quiet_ticks + 1 };
        }
        let turns = c.end(Ending::CallerBye);
        let answer = turns.into_iter().find(|t| !t.greeting).unwrap();
        (samples, quiet_at, answer)
    }

    #[tokio::test]
    async fn a_cough_over_the_answer_holds_it_and_loses_none_of_it() {
        let (whole, _, _) = answer_over_a_cough(false).await;
        let (heard, quiet_at, answer) = answer_over_a_cough(true).await;
        let quiet = quiet_at.expect("the agent talked on over the caller's noise");
        assert!(
            quiet <= 2,
            "the agent went quiet {quiet} ticks after the onset"
        );
        // Only the resampler's edges at the hold differ (a frame is 160 samples).
        assert!(
            heard.abs_diff(whole) < 40,
            "{heard} loud samples with the hold, {whole} without"
        );
        assert!(!answer.barged_in, "{answer:?}");
        assert_eq!(answer.outcome, TurnOutcome::Answered);
    }

    #[tokio::test]
    async fn a_hold_lasts_only_while_the_callers_audio_comes_and_three_times_an_answer() {
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN)]],
            ..Default::default()
        };
        // A stream transport: caller frames only as its audio arrives.
        let mut c = engine_core(script, quiet_profile(), true).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        let mut held = Vec::new();
        for _ in 0..MAX_HOLDS + 1 {
            for _ in 0..10 {
                assert!(step(&mut c, &mut out, Some(&silence())).await.loud);
            }
            // 40 ms of noise, then the caller's audio stops coming.
            let mut quiet = 0;
            for _ in 0..2 {
                quiet += usize::from(!step(&mut c, &mut out, Some(&tone(160))).await.loud);
            }
            let mut stalled = 0;
            while !step(&mut c, &mut out, None).await.loud {
                stalled += 1;
                assert!(stalled < 10, "held through a stall of the caller's audio");
            }
            held.push(quiet + stalled > 0);
        }
        assert_eq!(held, [true, true, true, false], "holds of one answer");
    }

    #[tokio::test]
    async fn the_conversation_is_evaluated_ahead_once_an_answer_has_played() {
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let prepared = script.prepared.clone();
        let mut c = engine_core(script, quiet_profile(), false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        assert!(prepared.lock().unwrap().is_empty(), "evaluated mid-answer");
        while step(&mut c, &mut out, Some(&silence())).await.loud {}
        // On a blocking thread: given time on a loaded machine.
        for _ in 0..500 {
            if !prepared.lock().unwrap().is_empty() {
                break;
            }
            step(&mut c, &mut out, Some(&silence())).await;
        }
        let prepared = prepared.lock().unwrap();
        let texts: Vec<(&Speaker, &str)> = prepared
            .last()
            .expect("nothing evaluated ahead after the answer")
            .iter()
            .map(|m| (&m.speaker, m.text.trim()))
            .collect();
        assert_eq!(
            texts,
            [
                (&Speaker::User, "what time do you open"),
                (&Speaker::Assistant, SPOKEN)
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_model_is_answered_by_the_fallback_phrase_and_the_call_goes_on() {
        let script = Script {
            replies: vec![vec![Step::Fail], vec![Step::Say("Fine, thank you.")]],
            ..Default::default()
        };
        let mut c = engine_core(script, quiet_profile(), false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        // The fallback phrase (a tone of its words' length) plays whole.
        let words = AgentProfile::new("en", "x", "")
            .engine_failed
            .split_whitespace()
            .count();
        let mut loud = 1;
        while step(&mut c, &mut out, Some(&silence())).await.loud {
            loud += 1;
        }
        // 200 ms a word; the frame it starts in may straddle the tick.
        assert!(
            (words * 10..=words * 10 + 1).contains(&loud),
            "the fallback phrase did not play whole: {loud} ticks for {words} words"
        );
        ask(&mut c, &mut out, 50).await;
        for _ in 0..100 {
            step(&mut c, &mut out, Some(&silence())).await;
        }
        let turns = c.end(Ending::CallerBye);
        let outcomes: Vec<_> = turns
            .iter()
            .filter(|t| !t.greeting)
            .map(|t| t.outcome)
            .collect();
        assert_eq!(outcomes, [TurnOutcome::Fallback, TurnOutcome::Answered]);
    }

    /// The loud ticks of the agent's next answer.
    async fn answer_ticks(c: &mut CallCore, out: &mut Tick) -> usize {
        let mut loud = 0;
        for _ in 0..400 {
            if step(c, out, Some(&silence())).await.loud {
                loud += 1;
            } else if loud > 0 {
                break;
            }
        }
        loud
    }

    fn outcomes(turns: &[crate::call::conversation::TurnRecord]) -> Vec<TurnOutcome> {
        turns
            .iter()
            .filter(|t| !t.greeting)
            .map(|t| t.outcome)
            .collect()
    }

    #[tokio::test]
    async fn a_failed_recogniser_or_voice_is_answered_by_the_fallback_phrase() {
        let words = AgentProfile::new("en", "x", "")
            .engine_failed
            .split_whitespace()
            .count();
        for (asr, tts) in [("down", "local"), ("local", "down")] {
            let script = Script {
                replies: vec![vec![Step::Say("Fine, thank you.")]],
                ..Default::default()
            };
            let mut profile = quiet_profile();
            profile.asr = asr.into();
            profile.tts = tts.into();
            // The voice server being down, the fixed phrases are made by
            // the embedded voice: the agent still starts.
            let mut c = engine_core(script, profile, false).await;
            let mut out = Tick::default();
            for _ in 0..2 {
                ask(&mut c, &mut out, 50).await;
                // `ask` saw its first tick.
                let loud = 1 + answer_ticks(&mut c, &mut out).await;
                assert!(
                    (words * 10..=words * 10 + 1).contains(&loud),
                    "asr {asr}, tts {tts}: {loud} ticks for the {words} words of the fallback"
                );
            }
            let turns = c.end(Ending::CallerBye);
            assert_eq!(
                outcomes(&turns),
                [TurnOutcome::Fallback, TurnOutcome::Fallback],
                "asr {asr}, tts {tts}"
            );
        }
    }

    #[tokio::test]
    async fn a_voice_that_streams_is_played_whole_as_it_comes() {
        const ANSWER: &str = "We open at eight. We close at five.";
        let script = Script {
            replies: vec![vec![Step::Say(ANSWER)]],
            ..Default::default()
        };
        let mut profile = quiet_profile();
        profile.tts = "trickle".into();
        let mut c = engine_core(script, profile, false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        let mut loud = 1;
        for _ in 0..600 {
            if step(&mut c, &mut out, Some(&silence())).await.loud {
                loud += 1;
            }
        }
        // Each sentence is 4 words of 200 ms: every frame of both played.
        let words = ANSWER.split_whitespace().count();
        assert!(
            (words * 10..=words * 10 + 2).contains(&loud),
            "{loud} loud ticks for {words} words"
        );
        let turns = c.end(Ending::CallerBye);
        assert_eq!(outcomes(&turns), [TurnOutcome::Answered]);
        let answer = turns.iter().find(|t| !t.greeting).unwrap();
        assert_eq!(answer.words_spoken, words);
    }

    #[tokio::test]
    async fn a_transfer_comes_after_its_words_and_a_refusal_lets_the_call_go_on() {
        let mut profile = quiet_profile();
        profile
            .transfer
            .insert("front_desk".into(), "sip:desk@192.0.2.7".into());
        profile.model_actions = vec!["transfer".into()];
        let script = Script {
            replies: vec![vec![
                Step::Say("Of course."),
                Step::Act(ToolCall {
                    name: "transfer".into(),
                    arguments: serde_json::json!({"to": "front_desk"}),
                }),
            ]],
            ..Default::default()
        };
        let mut c = engine_core(script, profile, false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        let mut last_loud = 0;
        let mut control = None;
        for i in 0..600 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            if s.loud {
                last_loud = i;
            }
            if s.control.is_some() {
                control = s.control.map(|c| (i, c));
                break;
            }
        }
        let (at, control) = control.expect("no transfer");
        assert_eq!(
            control,
            CallControl::Transfer {
                target: "sip:desk@192.0.2.7".into()
            }
        );
        // "Of course." and the announcement, then the grace for the last frames.
        assert!(last_loud > 2 * 10, "the announcement was not played");
        assert!(at > last_loud, "the transfer came before its words ended");
        // The caller's side refused: the agent says so and the call goes on.
        c.transfer_result(false);
        let mut loud = 0;
        for _ in 0..300 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            loud += usize::from(s.loud);
            assert!(s.control.is_none(), "{:?}", s.control);
        }
        assert!(loud > 20, "the failure was not said");
        let (_, actions) = c.agent.close();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].action, "transfer");
        assert_eq!(actions[0].target.as_deref(), Some("front_desk"));
        assert_eq!(actions[0].result, "failed");
    }

    #[tokio::test]
    async fn a_forged_target_is_refused_and_the_call_goes_on() {
        let mut profile = quiet_profile();
        profile
            .transfer
            .insert("front_desk".into(), "sip:desk@192.0.2.7".into());
        profile.model_actions = vec!["transfer".into()];
        let script = Script {
            replies: vec![vec![
                Step::Say("Let me connect you."),
                Step::Act(ToolCall {
                    name: "transfer".into(),
                    arguments: serde_json::json!({"to": "+263779999999"}),
                }),
            ]],
            ..Default::default()
        };
        let mut c = engine_core(script, profile, false).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        for _ in 0..300 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            assert!(s.control.is_none(), "{:?}", s.control);
        }
        let (turns, actions) = c.agent.close();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].result, "refused");
        assert_eq!(actions[0].target, None, "a forged target is never stored");
        let answer = turns.iter().find(|t| !t.greeting).unwrap();
        assert_eq!(
            answer.outcome,
            TurnOutcome::Answered,
            "the words still played"
        );
    }

    #[tokio::test]
    async fn a_key_hangs_up_during_an_answer_after_the_goodbye() {
        let mut profile = quiet_profile();
        profile.keys.insert("#".into(), "end_call".into());
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let mut c = engine_core(script, profile, true).await;
        let mut out = Tick::default();
        ask(&mut c, &mut out, 50).await;
        for _ in 0..20 {
            step(&mut c, &mut out, Some(&silence())).await;
        }
        c.digit('#');
        let first = step(&mut c, &mut out, Some(&silence())).await;
        assert!(first.clear, "the answer queued at the far end is cleared");
        // The goodbye ("Goodbye now.", 400 ms) plays; the far end confirms it;
        // then the hang-up.
        let mut loud = 0;
        let mut hangup = None;
        for i in 0..400 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            loud += usize::from(s.loud);
            for m in &s.marks {
                c.heard_through(*m);
            }
            if let Some(ctl) = s.control {
                hangup = Some((i, ctl));
                break;
            }
        }
        let (at, ctl) = hangup.expect("no hang-up");
        assert_eq!(ctl, CallControl::HangUp(Ending::Agent(AgentEnd::Key)));
        assert!((18..=22).contains(&loud), "goodbye frames: {loud}");
        assert!(at < 40, "the hang-up waited {at} ticks");
        let turns = c.end(Ending::Agent(AgentEnd::Key));
        let answer = turns.iter().find(|t| !t.greeting).unwrap();
        assert_eq!(answer.outcome, TurnOutcome::Interrupted);
        assert!(!answer.barged_in);
    }

    #[tokio::test]
    async fn latency_stays_right_when_the_caller_s_frames_come_late() {
        // Twilio-like: frames come in bursts after gaps. The caller's audio is
        // stamped on the core's clock as it arrives, so the reported latency is
        // the one the caller lives (a count of frames would put the end of
        // speech a second early and report a second more).
        let script = Script {
            replies: vec![vec![Step::Say("We open at eight.")]],
            ..Default::default()
        };
        let mut c = engine_core(script, quiet_profile(), true).await;
        let mut out = Tick::default();
        let mut tick = 0usize;
        for _ in 0..50 {
            step(&mut c, &mut out, Some(&silence())).await;
            tick += 1;
        }
        // A second with no frames at all (the provider's stall).
        for _ in 0..50 {
            step(&mut c, &mut out, None).await;
            tick += 1;
        }
        // Speech, two frames every other tick (bursts), then silence likewise.
        let mut last_speech_tick = 0;
        for i in 0..40 {
            let audio = tone(320);
            let s = step(&mut c, &mut out, (i % 2 == 0).then_some(&audio[..])).await;
            if i % 2 == 0 {
                // Its second frame is due on the next tick.
                last_speech_tick = tick + 1;
            }
            tick += 1;
            assert!(!s.loud);
        }
        let mut first_audio_tick = None;
        for _ in 0..300 {
            let audio = vec![0.0; 320];
            let s = step(
                &mut c,
                &mut out,
                tick.is_multiple_of(2).then_some(&audio[..]),
            )
            .await;
            if s.loud {
                first_audio_tick = Some(tick);
                break;
            }
            tick += 1;
        }
        let first = first_audio_tick.expect("no answer");
        let lived = (first - last_speech_tick) as f64 * 20.0;
        let turns = c.end(Ending::StreamStop);
        let answer = turns.iter().find(|t| !t.greeting).unwrap();
        let reported = answer.response_ms.unwrap();
        assert!(
            (reported - lived).abs() <= 100.0,
            "reported {reported} ms, the caller lived {lived} ms"
        );
        // The fake judges every turn complete: the shorter silence applies,
        // not the plain endpoint's.
        let turn = crate::config::TurnConfig::default();
        assert!(
            reported >= turn.complete_silence_ms as f64
                && reported < turn.endpoint_silence_ms as f64,
            "the silence of a complete turn: {reported}"
        );
    }

    /// The caller speaks, pauses `pause` frames, speaks again, then waits:
    /// whether the agent spoke during the pause, the answer's turn, and the
    /// caller's words the model answered.
    async fn pause_mid_sentence(
        complete: f32,
        language: &str,
        pause: usize,
    ) -> (bool, crate::call::conversation::TurnRecord, String) {
        let script = Script {
            replies: vec![vec![Step::Say(SPOKEN)], vec![Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let seen = script.seen.clone();
        let mut profile = quiet_profile();
        profile.language = language.into();
        let mut c = core_on(fake::engine_judged(script, complete), profile, false).await;
        let mut out = Tick::default();
        for _ in 0..50 {
            step(&mut c, &mut out, Some(&tone(160))).await;
        }
        let mut cut_off = false;
        for _ in 0..pause {
            cut_off |= step(&mut c, &mut out, Some(&silence())).await.loud;
        }
        ask(&mut c, &mut out, 25).await;
        let turns = c.end(Ending::StreamStop);
        let answer = turns
            .into_iter()
            .find(|t| !t.greeting && t.first_audio_at_ms.is_some())
            .expect("an answer");
        let heard = seen
            .lock()
            .unwrap()
            .last()
            .and_then(|h| h.last())
            .map(|m| m.text.clone())
            .unwrap_or_default();
        (cut_off, answer, heard)
    }

    #[tokio::test]
    async fn a_pause_judged_incomplete_is_waited_out() {
        // 700 ms of pause: past the plain endpoint silence (400 ms).
        let (cut_off, answer, heard) = pause_mid_sentence(0.1, "en", 35).await;
        assert!(!cut_off, "the agent spoke into the caller's pause");
        // The answer is to the whole turn, after the caller's last words.
        let wait = crate::config::TurnConfig::default().incomplete_silence_ms as f64;
        assert!(
            answer.response_ms.unwrap() >= wait,
            "{:?} ms: an incomplete turn waits {wait} ms",
            answer.response_ms
        );
        assert!(answer.speech_onset_at_ms.unwrap() < 1100.0, "{answer:?}");
        // The words before the pause were recognised during it and kept; only
        // the words after it were left (the fake hears the same words in each).
        assert_eq!(heard, "what time do you open what time do you open");
    }

    #[tokio::test]
    async fn words_read_as_finished_end_a_turn_whose_sound_was_judged_unfinished() {
        let defaults = TurnConfig::default();
        for (words, judge_words, waits) in [
            (0.9, true, defaults.complete_silence_ms),
            (0.01, true, defaults.incomplete_silence_ms),
            (0.9, false, defaults.incomplete_silence_ms),
        ] {
            let script = Script {
                replies: vec![vec![Step::TurnEnds(words), Step::Say(SPOKEN)]],
                ..Default::default()
            };
            // Smart Turn (the fake) hears every turn as unfinished.
            let engine = fake::engine_judged(script, 0.1);
            let turn = TurnConfig {
                judge_words,
                ..TurnConfig::default()
            };
            let mut c = core_turned(engine, quiet_profile(), false, turn).await;
            let mut out = Tick::default();
            let quiet = ask(&mut c, &mut out, 50).await as u32 * 20;
            assert!(
                quiet + 40 >= waits && quiet < waits + 300,
                "words read at {words} (judged: {judge_words}): answered after {quiet} ms of silence, not {waits}"
            );
        }
    }

    #[tokio::test]
    async fn words_read_as_finished_spare_the_end_of_turn_model() {
        for (words, asked) in [(0.9, 0), (0.01, 1)] {
            let script = Script {
                replies: vec![vec![Step::TurnEnds(words), Step::Say(SPOKEN)]],
                ..Default::default()
            };
            let turn = fake::FixedTurn::new(0.1);
            let counted = turn.asked.clone();
            let engine = fake::engine_with_turn(script, turn);
            let mut c = core_turned(engine, quiet_profile(), false, TurnConfig::default()).await;
            let mut out = Tick::default();
            ask(&mut c, &mut out, 50).await;
            assert_eq!(
                counted.load(std::sync::atomic::Ordering::SeqCst),
                asked,
                "words read at {words}"
            );
        }
    }

    #[tokio::test]
    async fn a_reply_ready_before_its_verdict_plays_when_the_verdict_says() {
        // The words read as unfinished, and Smart Turn, asked beside the
        // reply, is held: the reply waits (the turn may be a pause) well past
        // the plain endpoint; once the verdict comes, complete, it is read
        // while the reply waits, and the reply plays at once.
        let script = Script {
            replies: vec![vec![Step::TurnEnds(0.01), Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let (release, held) = std::sync::mpsc::channel();
        let turn = fake::FixedTurn {
            held: Some(std::sync::Mutex::new(held)),
            ..fake::FixedTurn::new(1.0)
        };
        let asked = turn.asked.clone();
        let engine = fake::engine_with_turn(script, turn);
        let mut c = core_turned(engine, quiet_profile(), false, TurnConfig::default()).await;
        let mut out = Tick::default();
        for _ in 0..50 {
            step(&mut c, &mut out, Some(&tone(160))).await;
        }
        // 700 ms: past the endpoint silence (400), short of 1200.
        for i in 0..35 {
            let loud = step(&mut c, &mut out, Some(&silence())).await.loud;
            assert!(
                !loud,
                "the reply played {} ms into the pause, before its verdict",
                i * 20
            );
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        release.send(()).unwrap();
        let mut heard = None;
        for i in 0..20 {
            if step(&mut c, &mut out, Some(&silence())).await.loud {
                heard = Some(i);
                break;
            }
        }
        assert!(
            heard.is_some_and(|i| i < 10),
            "{heard:?} ticks after the verdict"
        );
    }

    #[tokio::test]
    async fn a_turn_the_end_of_turn_model_cannot_judge_keeps_the_silence_policy() {
        let script = Script {
            replies: vec![vec![Step::TurnEnds(0.01), Step::Say(SPOKEN)]],
            ..Default::default()
        };
        let turn = fake::FixedTurn {
            verdict: None,
            ..fake::FixedTurn::new(1.0)
        };
        let engine = fake::engine_with_turn(script, turn);
        let mut c = core_turned(engine, quiet_profile(), false, TurnConfig::default()).await;
        let mut out = Tick::default();
        let quiet = ask(&mut c, &mut out, 50).await as u32 * 20;
        let waits = TurnConfig::default().endpoint_silence_ms;
        assert!(
            quiet + 40 >= waits && quiet < waits + 300,
            "answered after {quiet} ms of silence, not {waits}"
        );
    }

    #[tokio::test]
    async fn a_short_pause_keeps_no_words_of_its_own() {
        // 100 ms: recognition starts (60 ms) but no reply (150 ms); the
        // caller goes on, and the turn is recognised as one stretch.
        let (cut_off, _, heard) = pause_mid_sentence(1.0, "en", 5).await;
        assert!(!cut_off);
        assert_eq!(heard, "what time do you open");
    }

    #[tokio::test]
    async fn a_language_the_model_does_not_know_keeps_the_silence_policy() {
        // Shona: the verdict (incomplete) is not asked for, so 400 ms of
        // silence end the turn and the pause is answered.
        let (cut_off, _, _) = pause_mid_sentence(0.1, "sn", 35).await;
        assert!(cut_off, "the silence policy should have answered the pause");
    }

    #[tokio::test]
    async fn a_silent_caller_is_prompted_then_hung_up_on() {
        let mut profile = quiet_profile();
        profile.silence.after_secs = 2;
        profile.silence.prompt = "Are you still there?".into();
        let mut c = engine_core(Script::default(), profile, false).await;
        let mut out = Tick::default();
        let (mut first_loud, mut hangup) = (None, None);
        for i in 0..600 {
            let s = step(&mut c, &mut out, Some(&silence())).await;
            if s.loud && first_loud.is_none() {
                first_loud = Some(i);
            }
            if let Some(ctl) = s.control {
                hangup = Some((i, ctl));
                break;
            }
        }
        assert_eq!(first_loud, Some(100), "the prompt after 2 s");
        let (at, ctl) = hangup.expect("no hang-up");
        assert_eq!(ctl, CallControl::HangUp(Ending::Agent(AgentEnd::Silence)));
        // Prompt (0.8 s), 2 s, goodbye (0.4 s), 300 ms of grace.
        assert!((270..285).contains(&at), "{at}");
        let (_, actions) = c.agent.close();
        let labels: Vec<_> = actions.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(labels, ["silence_prompt", "end_call"]);
    }

    #[tokio::test]
    async fn an_empty_reply_goes_back_to_listening() {
        // The model says nothing: the caller's words stay in the history, and
        // the call listens again (the silence policy still runs).
        let mut profile = quiet_profile();
        profile.silence.after_secs = 2;
        let script = Script {
            replies: vec![vec![]],
            ..Default::default()
        };
        let mut c = engine_core(script, profile, false).await;
        let mut out = Tick::default();
        for _ in 0..50 {
            step(&mut c, &mut out, Some(&tone(160))).await;
        }
        let mut prompted = false;
        for _ in 0..200 {
            prompted |= step(&mut c, &mut out, Some(&silence())).await.loud;
        }
        assert!(
            prompted,
            "the silence policy never ran after an empty reply"
        );
        let (_, actions) = c.agent.close();
        assert_eq!(actions[0].action, "silence_prompt");
    }

    #[tokio::test]
    async fn collected_keys_reach_the_model_as_the_caller_s_words() {
        let mut profile = quiet_profile();
        profile.collect = Some(crate::config::CollectDigits {
            max_digits: 6,
            end_key: "#".into(),
            timeout_secs: 3,
        });
        let script = Script {
            replies: vec![vec![Step::Say("Thank you.")]],
            ..Default::default()
        };
        let seen = script.seen.clone();
        let mut c = engine_core(script, profile, false).await;
        let mut out = Tick::default();
        for k in ['1', '2', '3', '4', '#'] {
            c.digit(k);
            step(&mut c, &mut out, Some(&silence())).await;
        }
        let mut loud = false;
        for _ in 0..100 {
            loud |= step(&mut c, &mut out, Some(&silence())).await.loud;
        }
        assert!(loud, "no answer to the keys");
        let seen = seen.lock().unwrap();
        let last = seen.last().expect("the model was not asked");
        assert!(
            last.last()
                .unwrap()
                .text
                .contains("typed on the keypad: 1234"),
            "{last:?}"
        );
    }
}
