//! `izwi bench`: the latency budget, measured. By default in process: each
//! question is synthesized with the agent's voice, played into a fresh call (no
//! greeting) and answered; the figures of every turn (Izwi's own timers) are
//! summarised as medians and 95th percentiles. `izwi bench --sip` ([`sip`])
//! calls a running `izwi serve` instead and measures from the packets.

pub mod caller;
pub mod measure;
pub mod media;
pub mod server;
pub mod sip;
pub mod sipp;

use std::sync::Arc;

use crate::audio::ENGINE_RATE;
use crate::call::Agent;
use crate::call::conversation::TurnRecord;
use crate::config::TurnConfig;
use crate::engine::{Engine, EngineError};
use crate::talk::{Clock, talk};

/// What stops `izwi bench --sip`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Records(#[from] crate::records::RecordError),
    #[error(transparent)]
    Wav(#[from] crate::codec::wav::WavError),
    #[error(transparent)]
    Resample(#[from] crate::codec::resample::ResampleError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("espeak-ng voice {voice}: {reason}")]
    Espeak { voice: String, reason: String },
    #[error("the caller's line {text:?} ({voice}) came out silent")]
    Silent { text: String, voice: String },
    #[error(
        "sipp is needed for `izwi bench --sip` (Debian package sip-tester; scripts/setup.sh installs it): {0}"
    )]
    SippMissing(std::io::Error),
    #[error("{what}\nsipp errors:\n{errors}\nsipp messages (last lines):\n{messages}")]
    Sipp {
        what: String,
        errors: String,
        messages: String,
    },
    #[error("izwi serve exited ({status}) before the bench was done; its last log lines:\n{log}")]
    ServerExited { status: String, log: String },
    #[error("izwi serve did not answer SIP within {limit:?}; its last log lines:\n{log}")]
    ServerNotReady {
        limit: std::time::Duration,
        log: String,
    },
    #[error("call {call} of {calls}: {source}")]
    Call {
        call: usize,
        calls: usize,
        source: Box<BenchError>,
    },
}

impl BenchError {
    pub fn io(context: &str, source: std::io::Error) -> BenchError {
        BenchError::Io {
            context: context.to_string(),
            source,
        }
    }
}

pub const QUESTIONS: &[&str] = &[
    "What time does the clinic open on Monday?",
    "Can I book an appointment for tomorrow morning?",
    "How much does a consultation cost?",
    "Where is the nearest pharmacy?",
    "Do I need to bring my identity card?",
    "Is the doctor available on Saturday?",
];

/// Silence around each question, so onset and endpoint are detected as in a call.
const LEAD_IN: f64 = 0.5;
const TAIL: f64 = 1.0;

pub async fn run(
    engine: Arc<Engine>,
    agent: Arc<Agent>,
    turn: &TurnConfig,
    questions: &[String],
    clock: Clock,
) -> Result<Vec<TurnRecord>, EngineError> {
    let mut records = Vec::new();
    for q in questions {
        let speech = engine
            .speak(q.clone(), crate::engine::Voice::of(&agent.profile))
            .await?;
        let pad = |s: f64| vec![0.0f32; (s * ENGINE_RATE as f64) as usize];
        let mut caller = pad(LEAD_IN);
        caller.extend_from_slice(&speech);
        caller.extend(pad(TAIL));
        let outcome = talk(engine.clone(), agent.clone(), turn, &caller, clock).await?;
        records.extend(outcome.turns.into_iter().filter(|t| !t.greeting));
    }
    Ok(records)
}

/// The `q`-quantile (nearest rank) of the values present.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Caller end of speech to first agent audio. On the real-time clock this is
/// measured; on the simulated clock the engine's time is added to the audio-time
/// delay (endpointing), which is what a live call would hear.
pub fn response_ms(t: &TurnRecord, clock: Clock) -> Option<f64> {
    match clock {
        Clock::RealTime => t.response_ms,
        Clock::Simulated => Some(t.response_ms? + t.compute_ms?),
    }
}

pub fn summary(records: &[TurnRecord], clock: Clock) -> String {
    let col =
        |f: &dyn Fn(&TurnRecord) -> Option<f64>| records.iter().filter_map(f).collect::<Vec<f64>>();
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
    let resp = col(&|t| response_ms(t, clock));
    let asr_rtf = col(&|t| t.asr_rtf);
    let asr_ms = col(&|t| t.asr_ms);
    let first_tok = col(&|t| t.llm_first_token_ms);
    let tps = col(&|t| t.llm_tokens_per_s);
    let tts_first = col(&|t| t.tts_first_audio_ms);
    let tts_rtf = col(&|t| t.tts_rtf);
    let answered = records
        .iter()
        .filter(|t| t.first_audio_at_ms.is_some())
        .count();
    let mut s = String::new();
    s.push_str(&format!(
        "turns answered: {answered} of {} ({} clock)\n",
        records.len(),
        match clock {
            Clock::RealTime => "real-time",
            Clock::Simulated => "simulated",
        }
    ));
    s.push_str(&format!(
        "caller end of speech -> first agent audio: P50 {} ms, P95 {} ms\n",
        fmt(percentile(&resp, 0.5), 0),
        fmt(percentile(&resp, 0.95), 0)
    ));
    s.push_str(&format!(
        "ASR: {} ms P50, real-time factor {} mean (P95 {})\n",
        fmt(percentile(&asr_ms, 0.5), 0),
        fmt(mean(&asr_rtf), 3),
        fmt(percentile(&asr_rtf, 0.95), 3)
    ));
    s.push_str(&format!(
        "LLM: first token {} ms P50 (P95 {}), {} tokens/s mean\n",
        fmt(percentile(&first_tok, 0.5), 0),
        fmt(percentile(&first_tok, 0.95), 0),
        fmt(mean(&tps), 1)
    ));
    s.push_str(&format!(
        "TTS: first audio {} ms P50 (P95 {}), real-time factor {} mean\n",
        fmt(percentile(&tts_first, 0.5), 0),
        fmt(percentile(&tts_first, 0.95), 0),
        fmt(mean(&tts_rtf), 3)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 0.95), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[f64::NAN, 2.0], 0.5), Some(2.0));
    }
}
