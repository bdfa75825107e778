//! Turn-taking: who has the floor. A pure state machine fed with the VAD's speech
//! probability for each 20 ms frame and with what the agent's audio is doing, in
//! audio time; it returns what the call must do. No I/O, no clocks of its own.

use std::time::Duration;

use crate::audio::FRAME;
use crate::config::TurnConfig;

/// A frame of speech counts as voiced at this fraction of the caller's usual
/// speech level (−20 dB): the VAD stays on for 40–120 ms after the last
/// sound (measured on espeak-ng voices), quieter frames that a turn's end is
/// dated back over.
const VOICED_RATIO: f32 = 0.1;
/// The end of speech is dated back over quiet frames by this much at most,
/// so that a caller who trails off quietly keeps the VAD's end.
const MAX_DATED_BACK: Duration = Duration::from_millis(200);
/// Weight of each speech frame in the caller's usual level (about a second).
const LEVEL_WEIGHT: f32 = 0.02;

/// The configurable policies: endpointing (when the caller has finished) and
/// barge-in (when the caller takes the floor from the agent).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnPolicy {
    pub speech_threshold: f32,
    pub speech_release: f32,
    pub min_speech: Duration,
    /// Silence after which the caller's words so far are recognised,
    /// speculatively (the caller may go on).
    pub transcribe_after: Duration,
    /// Silence after which the reply is prepared, speculatively.
    pub early_endpoint: Duration,
    /// Silence after which the caller's turn is over and the reply may play,
    /// unless the end-of-turn model judged the turn first.
    pub endpoint_silence: Duration,
    /// Silence enough once the end-of-turn model judged the turn complete.
    pub complete_silence: Duration,
    /// Silence kept once it judged the turn incomplete (the caller is pausing).
    pub incomplete_silence: Duration,
    pub max_utterance: Duration,
    pub barge_in: bool,
    pub barge_in_min: Duration,
    /// Pause the agent's audio as soon as speech starts over it (resumed if
    /// the speech stops short of `barge_in_min`).
    pub barge_in_pause: bool,
}

impl From<&TurnConfig> for TurnPolicy {
    fn from(c: &TurnConfig) -> Self {
        let ms = |v: u32| Duration::from_millis(v as u64);
        TurnPolicy {
            speech_threshold: c.vad_threshold,
            speech_release: c.vad_release,
            min_speech: ms(c.min_speech_ms),
            transcribe_after: ms(c.transcribe_after_ms),
            early_endpoint: ms(c.early_endpoint_ms.min(c.endpoint_silence_ms)),
            endpoint_silence: ms(c.endpoint_silence_ms),
            complete_silence: ms(c.complete_silence_ms),
            incomplete_silence: ms(c.incomplete_silence_ms),
            max_utterance: ms(c.max_utterance_ms),
            barge_in: c.barge_in,
            barge_in_min: ms(c.barge_in_min_ms),
            barge_in_pause: c.barge_in_pause,
        }
    }
}

impl Default for TurnPolicy {
    fn default() -> Self {
        TurnPolicy::from(&TurnConfig::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nobody speaking; waiting for the caller.
    Listening,
    /// The caller has the floor.
    UserSpeaking,
    /// The caller finished; the reply is being prepared.
    Thinking,
    /// The agent's audio is playing.
    AgentSpeaking,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// One frame of caller audio starting at `at`, with the VAD's latest
    /// speech probability and the frame's RMS level.
    Frame {
        at: Duration,
        speech_prob: f32,
        level: f32,
    },
    /// The first frame of an agent reply (or greeting) is being played.
    AgentStarted,
    /// The agent's last frame has been played.
    AgentFinished,
    /// The reply was given up (nothing intelligible was said, or the engine failed).
    ReplyAbandoned,
    /// The call took the floor for words of its own (a goodbye, a transfer):
    /// whatever the caller was doing is forgotten, back to listening.
    Reset,
    /// The end-of-turn model's verdict on the turn that just paused.
    Judged { complete: bool },
    /// It was asked about that turn and gave no verdict: the silence policy
    /// decides.
    Unjudged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The caller started a turn; audio from `onset` belongs to it.
    UserStarted { onset: Duration },
    /// The caller has paused (once per pause, before `UserFinished` when
    /// `transcribe_after` is the shorter): what they said up to `last_speech`
    /// may be recognised while they are silent.
    Paused { last_speech: Duration },
    /// The caller has paused long enough to prepare the answer; it may play
    /// from `play_from` unless the caller speaks again before (`UserResumed`).
    /// `last_speech` is when speech stopped.
    UserFinished {
        onset: Duration,
        last_speech: Duration,
        play_from: Duration,
        forced: bool,
    },
    /// The caller spoke again before the reply began: drop the reply, keep the turn open.
    UserResumed,
    /// The verdict moved the time the reply may play from.
    PlayFrom(Duration),
    /// Speech started over the agent's audio: hold it where it is until the
    /// speech either lasts long enough to be a barge-in or stops.
    PauseAgent,
    /// The speech over the agent stopped short of a barge-in (a cough, an
    /// "mm-hm"): its audio goes on from where it was held.
    ResumeAgent,
    /// The caller spoke over the agent long enough: stop its audio now, cancel the reply.
    BargeIn { onset: Duration },
}

#[derive(Debug, Clone)]
pub struct TurnMachine {
    policy: TurnPolicy,
    state: State,
    /// Speech per the hysteresis of threshold and release.
    speaking: bool,
    /// Start of the current run of speech frames.
    run_start: Duration,
    /// End of the current turn's speech: its last voiced frame, or at most
    /// [`MAX_DATED_BACK`] before the VAD's end.
    last_speech: Duration,
    /// End of the last frame the VAD called speech.
    vad_end: Duration,
    /// End of the last frame of speech at the caller's level.
    voiced_end: Duration,
    /// The caller's usual speech level (a moving average over their turns'
    /// speech frames, `levels` of them so far).
    level: f32,
    levels: u32,
    /// Start of the caller's current turn.
    onset: Duration,
    /// After a forced cut, speech counts again only once it has paused: a caller
    /// (or a stuck line) that never stops must not reopen the turn every frame.
    hold: bool,
    /// `Paused` was said for the current pause.
    paused: bool,
    /// `PauseAgent` was said and neither `ResumeAgent` nor `BargeIn` since.
    agent_held: bool,
}

impl TurnMachine {
    pub fn new(policy: TurnPolicy) -> TurnMachine {
        TurnMachine {
            policy,
            state: State::Listening,
            speaking: false,
            run_start: Duration::ZERO,
            last_speech: Duration::ZERO,
            vad_end: Duration::ZERO,
            voiced_end: Duration::ZERO,
            level: 0.0,
            levels: 0,
            onset: Duration::ZERO,
            hold: false,
            paused: false,
            agent_held: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The caller's audio counts as speech now.
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// The agent's audio is held for speech that may become a barge-in.
    pub fn agent_held(&self) -> bool {
        self.agent_held
    }

    pub fn policy(&self) -> &TurnPolicy {
        &self.policy
    }

    /// Advances the machine by one input.
    pub fn step(&mut self, input: Input) -> Option<Output> {
        match input {
            Input::Frame {
                at,
                speech_prob,
                level,
            } => self.frame(at, speech_prob, level),
            Input::AgentStarted => {
                match self.state {
                    State::Listening | State::Thinking => self.state = State::AgentSpeaking,
                    State::UserSpeaking | State::AgentSpeaking => {}
                }
                None
            }
            Input::AgentFinished => {
                self.agent_held = false;
                match self.state {
                    State::AgentSpeaking => self.state = State::Listening,
                    State::Listening | State::UserSpeaking | State::Thinking => {}
                }
                None
            }
            Input::Reset => {
                self.agent_held = false;
                self.state = State::Listening;
                self.speaking = false;
                self.hold = false;
                None
            }
            Input::Judged { complete } => match self.state {
                // The call drops a verdict's reply when the caller resumes, so a
                // verdict in Thinking is about this pause; a forced cut waits for none.
                State::Thinking if !self.hold => {
                    let wait = if complete {
                        self.policy.complete_silence
                    } else {
                        self.policy.incomplete_silence
                    };
                    Some(Output::PlayFrom(self.last_speech + wait))
                }
                State::Thinking | State::Listening | State::UserSpeaking | State::AgentSpeaking => {
                    None
                }
            },
            Input::Unjudged => match self.state {
                State::Thinking if !self.hold => Some(Output::PlayFrom(
                    self.last_speech + self.policy.endpoint_silence,
                )),
                State::Thinking | State::Listening | State::UserSpeaking | State::AgentSpeaking => {
                    None
                }
            },
            Input::ReplyAbandoned => {
                self.agent_held = false;
                match self.state {
                    State::Thinking | State::AgentSpeaking => self.state = State::Listening,
                    State::Listening | State::UserSpeaking => {}
                }
                None
            }
        }
    }

    fn frame(&mut self, at: Duration, prob: f32, level: f32) -> Option<Output> {
        if self.hold {
            if prob < self.policy.speech_release {
                self.hold = false;
            } else {
                self.speaking = false;
                return None;
            }
        }
        let was = self.speaking;
        if prob >= self.policy.speech_threshold {
            self.speaking = true;
        } else if prob < self.policy.speech_release {
            self.speaking = false;
        }
        if self.speaking && !was {
            self.run_start = at;
        }
        let end = at + FRAME;
        if self.speaking && self.state == State::UserSpeaking {
            // The mean of the first frames, then a moving average: one loud
            // click at the start weighs as one frame.
            self.levels = self.levels.saturating_add(1);
            let weight = LEVEL_WEIGHT.max(1.0 / self.levels as f32);
            self.level += weight * (level - self.level);
        }
        let run = if self.speaking {
            end - self.run_start
        } else {
            Duration::ZERO
        };

        match self.state {
            State::Listening => {
                if run >= self.policy.min_speech {
                    self.begin_turn(end);
                    return Some(Output::UserStarted { onset: self.onset });
                }
                None
            }
            State::UserSpeaking => {
                if self.speaking {
                    self.vad_end = end;
                    if level >= VOICED_RATIO * self.level {
                        self.voiced_end = end;
                    }
                    self.last_speech = self
                        .voiced_end
                        .max(self.vad_end.saturating_sub(MAX_DATED_BACK));
                    self.paused = false;
                }
                let forced = end - self.onset >= self.policy.max_utterance;
                let silence = end - self.last_speech;
                if forced || (!self.speaking && silence >= self.policy.early_endpoint) {
                    self.paused = false;
                    self.state = State::Thinking;
                    self.hold = forced;
                    let play_from = if forced {
                        end
                    } else {
                        self.last_speech + self.policy.endpoint_silence
                    };
                    return Some(Output::UserFinished {
                        onset: self.onset,
                        last_speech: self.last_speech,
                        play_from,
                        forced,
                    });
                }
                if !self.speaking && !self.paused && silence >= self.policy.transcribe_after {
                    self.paused = true;
                    return Some(Output::Paused {
                        last_speech: self.last_speech,
                    });
                }
                None
            }
            State::Thinking => {
                if run >= self.policy.min_speech {
                    self.state = State::UserSpeaking;
                    self.speech_until(end);
                    return Some(Output::UserResumed);
                }
                None
            }
            State::AgentSpeaking => {
                if !self.policy.barge_in {
                    return None;
                }
                if run >= self.policy.barge_in_min {
                    self.begin_turn(end);
                    return Some(Output::BargeIn { onset: self.onset });
                }
                // Waiting out barge_in_min with the agent still talking would
                // cost the caller that long again; holding costs a cough a
                // stutter.
                if self.policy.barge_in_pause && self.speaking != self.agent_held {
                    self.agent_held = self.speaking;
                    return Some(if self.speaking {
                        Output::PauseAgent
                    } else {
                        Output::ResumeAgent
                    });
                }
                None
            }
        }
    }

    fn begin_turn(&mut self, end: Duration) {
        self.agent_held = false;
        self.state = State::UserSpeaking;
        self.paused = false;
        self.onset = self.run_start;
        self.speech_until(end);
    }

    fn speech_until(&mut self, end: Duration) {
        self.last_speech = end;
        self.vad_end = end;
        self.voiced_end = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn policy() -> TurnPolicy {
        TurnPolicy {
            speech_threshold: 0.5,
            speech_release: 0.35,
            min_speech: ms(100),
            transcribe_after: ms(500),
            early_endpoint: ms(500),
            endpoint_silence: ms(500),
            complete_silence: ms(200),
            incomplete_silence: ms(1200),
            max_utterance: ms(10_000),
            barge_in: true,
            barge_in_min: ms(120),
            barge_in_pause: false,
        }
    }

    /// Feeds frames of `prob` from `*t` for `dur`, collecting outputs with
    /// their frame time; a frame's level follows its probability.
    fn feed(m: &mut TurnMachine, t: &mut Duration, prob: f32, dur: u64) -> Vec<(u64, Output)> {
        feed_level(m, t, prob, prob / 10.0, dur)
    }

    #[test]
    fn a_turn_opens_after_min_speech_and_ends_after_endpoint_silence() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        assert!(feed(&mut m, &mut t, 0.0, 200).is_empty());
        let out = feed(&mut m, &mut t, 0.9, 1000);
        assert_eq!(out, vec![(280, Output::UserStarted { onset: ms(200) })]);
        assert_eq!(m.state(), State::UserSpeaking);
        let out = feed(&mut m, &mut t, 0.0, 1000);
        assert_eq!(
            out,
            vec![(
                1680,
                Output::UserFinished {
                    onset: ms(200),
                    last_speech: ms(1200),
                    play_from: ms(1700),
                    forced: false
                }
            )]
        );
        assert_eq!(m.state(), State::Thinking);
    }

    #[test]
    fn the_reply_is_prepared_early_and_plays_at_the_endpoint() {
        let mut m = TurnMachine::new(TurnPolicy {
            early_endpoint: ms(200),
            ..policy()
        });
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 1000);
        let out = feed(&mut m, &mut t, 0.0, 300);
        assert_eq!(
            out,
            vec![(
                1180,
                Output::UserFinished {
                    onset: Duration::ZERO,
                    last_speech: ms(1000),
                    play_from: ms(1500),
                    forced: false
                }
            )]
        );
        // Speech again before the reply plays: the turn goes on.
        let out = feed(&mut m, &mut t, 0.9, 200);
        assert_eq!(out[0].1, Output::UserResumed);
    }

    #[test]
    fn a_pause_is_announced_once_before_the_turn_ends() {
        let mut m = TurnMachine::new(TurnPolicy {
            transcribe_after: ms(60),
            early_endpoint: ms(200),
            ..policy()
        });
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 1000);
        // A short pause: announced at 60 ms of silence, and only then.
        let out = feed(&mut m, &mut t, 0.0, 100);
        assert_eq!(
            out,
            vec![(
                1040,
                Output::Paused {
                    last_speech: ms(1000)
                }
            )]
        );
        // Speech again, then a pause that ends the turn: announced again first.
        assert!(feed(&mut m, &mut t, 0.9, 400).is_empty());
        let out = feed(&mut m, &mut t, 0.0, 300);
        assert_eq!(
            out,
            vec![
                (
                    1540,
                    Output::Paused {
                        last_speech: ms(1500)
                    }
                ),
                (
                    1680,
                    Output::UserFinished {
                        onset: Duration::ZERO,
                        last_speech: ms(1500),
                        play_from: ms(2000),
                        forced: false
                    }
                )
            ]
        );
    }

    #[test]
    fn a_verdict_moves_when_the_reply_may_play() {
        let mut m = TurnMachine::new(TurnPolicy {
            early_endpoint: ms(100),
            ..policy()
        });
        let mut t = Duration::ZERO;
        // No verdict before the caller finishes: nothing to move.
        assert_eq!(m.step(Input::Judged { complete: true }), None);
        feed(&mut m, &mut t, 0.9, 1000);
        let out = feed(&mut m, &mut t, 0.0, 100);
        assert!(matches!(
            out[0].1,
            Output::UserFinished {
                play_from,
                ..
            } if play_from == ms(1500)
        ));
        assert_eq!(
            m.step(Input::Judged { complete: true }),
            Some(Output::PlayFrom(ms(1200)))
        );
        // The caller goes on after a pause judged incomplete: the same turn.
        assert_eq!(
            m.step(Input::Judged { complete: false }),
            Some(Output::PlayFrom(ms(2200)))
        );
        // No verdict after all: the silence policy's time.
        assert_eq!(m.step(Input::Unjudged), Some(Output::PlayFrom(ms(1500))));
        let out = feed(&mut m, &mut t, 0.9, 300);
        assert_eq!(out[0].1, Output::UserResumed);
        // A late verdict about the earlier pause changes nothing.
        assert_eq!(m.step(Input::Judged { complete: true }), None);
        assert_eq!(m.step(Input::Unjudged), None);
        assert_eq!(m.state(), State::UserSpeaking);
    }

    #[test]
    fn a_second_judge_finding_the_turn_complete_brings_the_reply_forward() {
        let mut m = TurnMachine::new(TurnPolicy {
            early_endpoint: ms(100),
            ..policy()
        });
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 1000);
        feed(&mut m, &mut t, 0.0, 100);
        // The sound sounded unfinished; the words then read as finished.
        assert_eq!(
            m.step(Input::Judged { complete: false }),
            Some(Output::PlayFrom(ms(2200)))
        );
        assert_eq!(
            m.step(Input::Judged { complete: true }),
            Some(Output::PlayFrom(ms(1200)))
        );
    }

    #[test]
    fn a_forced_cut_is_not_judged() {
        let mut m = TurnMachine::new(TurnPolicy {
            max_utterance: ms(1000),
            ..policy()
        });
        let mut t = Duration::ZERO;
        let out = feed(&mut m, &mut t, 0.9, 1100);
        assert!(matches!(
            out.last().unwrap().1,
            Output::UserFinished { forced: true, .. }
        ));
        assert_eq!(m.step(Input::Judged { complete: false }), None);
    }

    #[test]
    fn clicks_shorter_than_min_speech_open_no_turn() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        for _ in 0..10 {
            assert!(feed(&mut m, &mut t, 0.9, 80).is_empty());
            assert!(feed(&mut m, &mut t, 0.0, 200).is_empty());
        }
        assert_eq!(m.state(), State::Listening);
    }

    #[test]
    fn hysteresis_keeps_a_turn_through_uncertain_frames() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 300);
        // Between release and threshold: still speech, so no endpoint however long.
        assert!(feed(&mut m, &mut t, 0.4, 2000).is_empty());
        assert_eq!(m.state(), State::UserSpeaking);
    }

    #[test]
    fn short_pauses_do_not_end_the_turn() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 500);
        assert!(feed(&mut m, &mut t, 0.0, 400).is_empty());
        assert!(feed(&mut m, &mut t, 0.9, 500).is_empty());
        assert_eq!(m.state(), State::UserSpeaking);
    }

    #[test]
    fn endless_speech_is_cut_at_max_utterance() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        let out = feed(&mut m, &mut t, 0.9, 12_000);
        assert_eq!(out.len(), 2);
        assert!(matches!(
            out[1].1,
            Output::UserFinished { forced: true, .. }
        ));
        assert_eq!(out[1].0 + 20, 10_000, "cut when the turn reaches 10 s");
        // The speech that goes on is not a new turn until it pauses.
        m.step(Input::AgentStarted);
        assert!(
            feed(&mut m, &mut t, 0.9, 1000).is_empty(),
            "no barge-in from the same run"
        );
        feed(&mut m, &mut t, 0.0, 100);
        let out = feed(&mut m, &mut t, 0.9, 300);
        assert!(matches!(out[0].1, Output::BargeIn { .. }));
    }

    #[test]
    fn speech_while_thinking_resumes_the_turn() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 500);
        feed(&mut m, &mut t, 0.0, 600);
        assert_eq!(m.state(), State::Thinking);
        let out = feed(&mut m, &mut t, 0.9, 300);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Output::UserResumed);
        assert_eq!(m.state(), State::UserSpeaking);
        // The resumed turn keeps its original onset.
        let out = feed(&mut m, &mut t, 0.0, 600);
        assert!(matches!(out[0].1, Output::UserFinished { onset, .. } if onset == Duration::ZERO));
    }

    #[test]
    fn barge_in_after_its_minimum_and_not_before() {
        let mut m = TurnMachine::new(policy());
        m.step(Input::AgentStarted);
        assert_eq!(m.state(), State::AgentSpeaking);
        let mut t = Duration::ZERO;
        // A backchannel ("mm") of 100 ms does not interrupt.
        assert!(feed(&mut m, &mut t, 0.9, 100).is_empty());
        assert!(feed(&mut m, &mut t, 0.0, 300).is_empty());
        assert_eq!(m.state(), State::AgentSpeaking);
        let out = feed(&mut m, &mut t, 0.9, 300);
        assert_eq!(out, vec![(500, Output::BargeIn { onset: ms(400) })]);
        assert_eq!(m.state(), State::UserSpeaking);
        // The interrupting speech is a normal caller turn from here on.
        let out = feed(&mut m, &mut t, 0.0, 600);
        assert!(matches!(out[0].1, Output::UserFinished { onset, .. } if onset == ms(400)));
    }

    /// Feeds frames of `prob` and `level` from `*t` for `dur`.
    fn feed_level(
        m: &mut TurnMachine,
        t: &mut Duration,
        prob: f32,
        level: f32,
        dur: u64,
    ) -> Vec<(u64, Output)> {
        let mut out = Vec::new();
        let end = *t + ms(dur);
        while *t < end {
            if let Some(o) = m.step(Input::Frame {
                at: *t,
                speech_prob: prob,
                level,
            }) {
                out.push((t.as_millis() as u64, o));
            }
            *t += FRAME;
        }
        out
    }

    #[test]
    fn the_end_of_speech_is_dated_back_over_the_vads_quiet_hangover() {
        for (hangover, level, dated) in [
            // The VAD stays on 100 ms after the sound: the end is the sound's.
            (100, 0.0, 1000),
            // A quiet tail at −14 dB is still speech.
            (100, 0.02, 1100),
            // Never more than 200 ms back.
            (400, 0.0, 1200),
        ] {
            let mut m = TurnMachine::new(policy());
            let mut t = Duration::ZERO;
            feed_level(&mut m, &mut t, 0.9, 0.1, 1000);
            feed_level(&mut m, &mut t, 0.9, level, hangover);
            let out = feed_level(&mut m, &mut t, 0.0, 0.0, 1000);
            let Some((_, Output::UserFinished { last_speech, .. })) = out.first() else {
                panic!("{out:?}");
            };
            assert_eq!(*last_speech, ms(dated), "{hangover} ms at {level}");
        }
        // A click as the turn opens weighs as one frame in the caller's level:
        // their quiet tail stays speech.
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed_level(&mut m, &mut t, 0.9, 0.1, 100);
        feed_level(&mut m, &mut t, 0.9, 1.0, 20);
        feed_level(&mut m, &mut t, 0.9, 0.1, 880);
        feed_level(&mut m, &mut t, 0.9, 0.02, 100);
        let out = feed_level(&mut m, &mut t, 0.0, 0.0, 1000);
        assert!(
            matches!(out[..], [(_, Output::UserFinished { last_speech, .. })] if last_speech == ms(1100)),
            "{out:?}"
        );
    }

    #[test]
    fn speech_over_the_agent_holds_its_audio_until_it_is_a_barge_in_or_stops() {
        let mut m = TurnMachine::new(TurnPolicy {
            barge_in_pause: true,
            ..policy()
        });
        m.step(Input::AgentStarted);
        let mut t = Duration::ZERO;
        // A cough: held on its first frame, resumed on the first quiet one.
        let out = feed(&mut m, &mut t, 0.9, 60);
        assert_eq!(out, vec![(0, Output::PauseAgent)]);
        assert!(m.agent_held());
        let out = feed(&mut m, &mut t, 0.0, 100);
        assert_eq!(out, vec![(60, Output::ResumeAgent)]);
        assert!(!m.agent_held());
        assert_eq!(m.state(), State::AgentSpeaking);
        // Probabilities between release and threshold hold nothing.
        assert!(feed(&mut m, &mut t, 0.4, 200).is_empty());
        // Speech that lasts: held at once, a barge-in at its minimum.
        let out = feed(&mut m, &mut t, 0.9, 300);
        assert_eq!(
            out,
            vec![
                (360, Output::PauseAgent),
                (460, Output::BargeIn { onset: ms(360) })
            ]
        );
        assert!(!m.agent_held());
        // The agent's end forgets a hold.
        let mut m = TurnMachine::new(TurnPolicy {
            barge_in_pause: true,
            ..policy()
        });
        m.step(Input::AgentStarted);
        feed(&mut m, &mut t, 0.9, 40);
        assert!(m.agent_held());
        m.step(Input::AgentFinished);
        assert!(!m.agent_held());
        // Without barge_in_pause the agent talks on until the barge-in.
        let mut m = TurnMachine::new(policy());
        m.step(Input::AgentStarted);
        let out = feed(&mut m, &mut t, 0.9, 200);
        assert!(matches!(out[..], [(_, Output::BargeIn { .. })]), "{out:?}");
    }

    #[test]
    fn barge_in_can_be_disabled() {
        let mut m = TurnMachine::new(TurnPolicy {
            barge_in: false,
            ..policy()
        });
        m.step(Input::AgentStarted);
        let mut t = Duration::ZERO;
        assert!(feed(&mut m, &mut t, 0.9, 2000).is_empty());
        assert_eq!(m.state(), State::AgentSpeaking);
        m.step(Input::AgentFinished);
        // Speech still going when the agent stops becomes a turn.
        let out = feed(&mut m, &mut t, 0.9, 200);
        assert!(matches!(out[0].1, Output::UserStarted { .. }));
    }

    #[test]
    fn reply_lifecycle() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 500);
        feed(&mut m, &mut t, 0.0, 600);
        assert_eq!(m.state(), State::Thinking);
        m.step(Input::AgentStarted);
        assert_eq!(m.state(), State::AgentSpeaking);
        m.step(Input::AgentFinished);
        assert_eq!(m.state(), State::Listening);

        feed(&mut m, &mut t, 0.9, 500);
        feed(&mut m, &mut t, 0.0, 600);
        m.step(Input::ReplyAbandoned);
        assert_eq!(m.state(), State::Listening);
    }

    #[test]
    fn agent_events_out_of_place_change_nothing() {
        let mut m = TurnMachine::new(policy());
        let mut t = Duration::ZERO;
        feed(&mut m, &mut t, 0.9, 300);
        for input in [
            Input::AgentStarted,
            Input::AgentFinished,
            Input::ReplyAbandoned,
        ] {
            assert_eq!(m.step(input), None);
            assert_eq!(m.state(), State::UserSpeaking);
        }
        let mut idle = TurnMachine::new(policy());
        idle.step(Input::AgentFinished);
        idle.step(Input::ReplyAbandoned);
        assert_eq!(idle.state(), State::Listening);
    }

    /// Every state, every input: no panic, and every transition lands in a state
    /// that the output (if any) is consistent with.
    #[test]
    fn exhaustive_transitions_are_consistent() {
        let probs = [0.0, 0.4, 0.9];
        let events = [
            Input::AgentStarted,
            Input::AgentFinished,
            Input::ReplyAbandoned,
            Input::Judged { complete: true },
            Input::Judged { complete: false },
            Input::Unjudged,
        ];
        // Drive the machine through random-ish but reproducible sequences.
        let mut seed = 12345u64;
        for run in 0..200 {
            let mut m = TurnMachine::new(TurnPolicy {
                barge_in_pause: run % 2 == 0,
                ..policy()
            });
            let mut t = Duration::ZERO;
            for _ in 0..300 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pick = (seed >> 33) as usize;
                let before = m.state();
                let out = if pick.is_multiple_of(10) {
                    m.step(events[pick / 10 % events.len()])
                } else {
                    let o = m.step(Input::Frame {
                        at: t,
                        speech_prob: probs[pick % 3],
                        level: probs[pick / 3 % 3] / 10.0,
                    });
                    t += FRAME;
                    o
                };
                match out {
                    Some(Output::UserStarted { .. }) => {
                        assert_eq!(before, State::Listening);
                        assert_eq!(m.state(), State::UserSpeaking);
                    }
                    Some(Output::UserFinished {
                        onset, last_speech, ..
                    }) => {
                        assert_eq!(before, State::UserSpeaking);
                        assert_eq!(m.state(), State::Thinking);
                        assert!(onset < last_speech);
                    }
                    Some(Output::Paused { last_speech }) => {
                        assert_eq!(before, State::UserSpeaking);
                        assert_eq!(m.state(), State::UserSpeaking);
                        assert!(last_speech < t);
                    }
                    Some(Output::UserResumed) => {
                        assert_eq!(before, State::Thinking);
                        assert_eq!(m.state(), State::UserSpeaking);
                    }
                    Some(Output::BargeIn { onset }) => {
                        assert_eq!(before, State::AgentSpeaking);
                        assert_eq!(m.state(), State::UserSpeaking);
                        assert!(onset <= t);
                    }
                    Some(Output::PauseAgent) => {
                        assert_eq!(before, State::AgentSpeaking);
                        assert!(m.agent_held());
                    }
                    Some(Output::ResumeAgent) => {
                        assert_eq!(before, State::AgentSpeaking);
                        assert!(!m.agent_held());
                    }
                    Some(Output::PlayFrom(at)) => {
                        assert_eq!(before, State::Thinking);
                        assert_eq!(m.state(), State::Thinking);
                        let p = m.policy();
                        assert!(
                            at == m.last_speech + p.complete_silence
                                || at == m.last_speech + p.incomplete_silence
                                || at == m.last_speech + p.endpoint_silence
                        );
                    }
                    None => {}
                }
                // Only the agent's audio is ever held.
                assert!(!m.agent_held() || m.state() == State::AgentSpeaking);
            }
        }
    }
}
