//! Latencies from packets alone: the send times of the caller's packets and the
//! arrival times and levels of Izwi's, never Izwi's own timers.
//!
//! The agent's audio is grouped into runs: loud packets ([`LOUD_RMS`]) less
//! than [`RUN_GAP_MS`] apart. Times are ms after the call's answer.

use serde::Serialize;

use super::caller::LOUD_RMS;
use super::media::{Kind, MediaLog, Sent};

/// Loud packets closer than this belong to one stretch of agent speech
/// (words and phrases of one answer); a longer quiet ends it.
pub const RUN_GAP_MS: f64 = 250.0;
/// No reply to a line can start this soon after its onset (Izwi needs the
/// speech to begin and then an endpoint's silence), so agent audio that starts
/// within it is what was playing already, not a reply that cut the caller off.
pub const NO_REPLY_WITHIN_MS: f64 = 300.0;
/// The agent counts as talking at an interruption's onset when its last loud
/// packet arrived at most this long before.
pub const TALKING_WITHIN_MS: f64 = 200.0;

/// A stretch of agent speech: arrival of its first and last loud packet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Run {
    pub start: f64,
    pub end: f64,
}

pub fn loud_runs(log: &MediaLog) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for rx in log.received.iter().filter(|r| r.rms >= LOUD_RMS) {
        match runs.last_mut() {
            Some(r) if rx.at - r.end < RUN_GAP_MS => r.end = rx.at,
            _ => runs.push(Run {
                start: rx.at,
                end: rx.at,
            }),
        }
    }
    runs
}

/// One line's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineResult {
    pub kind: Kind,
    pub sent: Option<Sent>,
    /// Caller's end of speech (send of the last speech packet) → first loud
    /// agent packet after it (before the next line).
    pub response_ms: Option<f64>,
    /// Agent audio began while the caller was still speaking or pausing mid-sentence.
    pub cut_off: bool,
    /// Agent audio began during the line, but the agent had not yet answered
    /// the line before: a late answer, not counted as a cut-off.
    pub late_previous: bool,
    /// The agent was talking when the caller finished.
    pub talked_over: bool,
    /// Interruptions: caller onset (send of the first speech packet) → the
    /// agent's last loud packet before it went quiet.
    pub stop_ms: Option<f64>,
    /// Interruptions: the agent had already gone quiet at the onset.
    pub agent_quiet_at_onset: bool,
    /// Interruptions: the agent kept talking until the caller finished.
    pub not_stopped: bool,
}

/// One call's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallResult {
    /// First loud agent packet − first RTP packet from Izwi.
    pub greeting_from_rtp_ms: Option<f64>,
    /// First loud agent packet − sipp's receipt of the 200 OK.
    pub greeting_from_ok_ms: Option<f64>,
    pub lines: Vec<LineResult>,
    pub max_send_late_ms: f64,
}

/// Measures a call: `kinds` of the script's lines, `ok_ms` when the 200 OK
/// arrived (sipp's trace), relative to the same origin as `log`.
pub fn analyse(kinds: &[Kind], log: &MediaLog, ok_ms: Option<f64>) -> CallResult {
    let runs = loud_runs(log);
    let first_onset = log.sent.iter().flatten().next().map(|s| s.onset);
    let greeting = runs
        .first()
        .filter(|r| first_onset.is_none_or(|o| r.start < o));
    let mut lines = Vec::with_capacity(kinds.len());
    let mut prev_end = 0.0;
    for (i, (&kind, sent)) in kinds.iter().zip(&log.sent).enumerate() {
        let mut line = LineResult {
            kind,
            sent: *sent,
            response_ms: None,
            cut_off: false,
            late_previous: false,
            talked_over: false,
            stop_ms: None,
            agent_quiet_at_onset: false,
            not_stopped: false,
        };
        let Some(s) = *sent else {
            lines.push(line);
            continue;
        };
        let next_onset = log
            .sent
            .get(i + 1)
            .copied()
            .flatten()
            .map_or(f64::INFINITY, |n| n.onset);
        let previous_answered = runs
            .iter()
            .any(|r| r.start > prev_end && r.start <= s.onset);
        let began_during = runs
            .iter()
            .any(|r| r.start > s.onset + NO_REPLY_WITHIN_MS && r.start <= s.end);
        line.cut_off = began_during && previous_answered;
        line.late_previous = began_during && !previous_answered;
        line.talked_over = runs.iter().any(|r| r.start <= s.end && r.end >= s.end);
        line.response_ms = runs
            .iter()
            .find(|r| r.start > s.end && r.start < next_onset)
            .map(|r| r.start - s.end);
        if kind == Kind::BargeIn {
            match runs
                .iter()
                .find(|r| r.start <= s.onset && r.end >= s.onset - TALKING_WITHIN_MS)
            {
                None => line.agent_quiet_at_onset = true,
                Some(r) if r.end >= s.end => line.not_stopped = true,
                Some(r) => line.stop_ms = Some((r.end - s.onset).max(0.0)),
            }
        }
        prev_end = s.end;
        lines.push(line);
    }
    CallResult {
        greeting_from_rtp_ms: greeting.zip(log.first_rx).map(|(r, f)| r.start - f),
        greeting_from_ok_ms: greeting.zip(ok_ms).map(|(r, ok)| r.start - ok),
        lines,
        max_send_late_ms: log.max_send_late_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::super::media::Rx;
    use super::*;

    /// Agent audio: loud packets every 20 ms over each `(from, to)` span, silent ones elsewhere.
    fn log(sent: &[(f64, f64)], loud: &[(f64, f64)], until: f64) -> MediaLog {
        let mut received = Vec::new();
        let mut t = 10.0;
        while t < until {
            let on = loud.iter().any(|&(a, b)| t >= a && t <= b);
            received.push(Rx {
                at: t,
                rms: if on { 0.1 } else { 0.0 },
            });
            t += 20.0;
        }
        MediaLog {
            sent: sent
                .iter()
                .map(|&(onset, end)| Some(Sent { onset, end }))
                .collect(),
            received,
            first_rx: Some(10.0),
            packets_sent: 0,
            max_send_late_ms: 0.0,
            late_sends: 0,
        }
    }

    #[test]
    fn a_plain_exchange() {
        // Greeting 110..2990; question 4000..6000; answer from 6510.
        let l = log(
            &[(4000.0, 6000.0)],
            &[(110.0, 2990.0), (6510.0, 9000.0)],
            10_000.0,
        );
        let c = analyse(&[Kind::Question], &l, Some(-20.0));
        assert_eq!(c.greeting_from_rtp_ms, Some(100.0));
        assert_eq!(c.greeting_from_ok_ms, Some(130.0));
        let q = &c.lines[0];
        assert_eq!(q.response_ms, Some(510.0));
        assert!(!q.cut_off && !q.late_previous && !q.talked_over);
    }

    #[test]
    fn a_reply_in_the_mid_sentence_pause_is_a_cut_off() {
        // Question 4000..7000 with a pause; the agent starts at 5600 and is
        // stopped at 6000 by the caller going on, then answers at 7450.
        let l = log(
            &[(4000.0, 7000.0)],
            &[(110.0, 2990.0), (5610.0, 5990.0), (7450.0, 9000.0)],
            10_000.0,
        );
        let q = &analyse(&[Kind::Question], &l, None).lines[0];
        assert!(q.cut_off);
        assert_eq!(q.response_ms, Some(450.0));
        assert!(!q.talked_over);
    }

    #[test]
    fn audio_still_playing_at_the_onset_is_no_cut_off() {
        // The greeting runs 150 ms into the question.
        let l = log(
            &[(3000.0, 5000.0)],
            &[(110.0, 3150.0), (5700.0, 7000.0)],
            8_000.0,
        );
        let q = &analyse(&[Kind::Question], &l, None).lines[0];
        assert!(!q.cut_off);
        assert_eq!(q.response_ms, Some(710.0));
    }

    #[test]
    fn an_answer_late_for_the_line_before_is_not_a_cut_off() {
        // Question 1 is never answered before question 2 starts; the answer
        // arrives during question 2.
        let l = log(
            &[(3000.0, 5000.0), (8000.0, 10_000.0)],
            &[(110.0, 2000.0), (9000.0, 9500.0), (10_600.0, 12_000.0)],
            13_000.0,
        );
        let c = analyse(&[Kind::Question, Kind::Question], &l, None);
        assert_eq!(c.lines[0].response_ms, None);
        assert!(c.lines[1].late_previous && !c.lines[1].cut_off);
        assert_eq!(c.lines[1].response_ms, Some(610.0));
    }

    #[test]
    fn barge_in_stop() {
        // Answer from 6500; the caller interrupts at 7100..8500; the agent's
        // last loud packet arrives at 7290; it answers again at 9000.
        let l = log(
            &[(4000.0, 6000.0), (7100.0, 8500.0)],
            &[(110.0, 2990.0), (6510.0, 7290.0), (9010.0, 10_000.0)],
            11_000.0,
        );
        let c = analyse(&[Kind::Question, Kind::BargeIn], &l, None);
        let b = &c.lines[1];
        assert_eq!(b.stop_ms, Some(190.0));
        assert!(!b.cut_off && !b.not_stopped && !b.agent_quiet_at_onset);
        assert_eq!(b.response_ms, Some(510.0));

        // Not stopped: the answer goes on past the caller's end of speech.
        let l = log(
            &[(4000.0, 6000.0), (7100.0, 8500.0)],
            &[(110.0, 2990.0), (6510.0, 9500.0)],
            11_000.0,
        );
        let b = &analyse(&[Kind::Question, Kind::BargeIn], &l, None).lines[1];
        assert!(b.not_stopped && b.talked_over);
        assert_eq!(b.stop_ms, None);
    }
}
