//! Plain-text tables of call records for `izwi calls`.

use std::fmt::Write;

use super::{ActionRow, CallRow, ToolRow, TurnRow};

fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn table(calls: &[CallRow]) -> String {
    let mut out = format!(
        "{:<36} {:<7} {:<21} {:>8} {:<12} {:<10} {:<14} {:>5} {:>5} {:>4}\n",
        "ID", "VIA", "STARTED", "SECONDS", "AGENT", "OUTCOME", "CAUSE", "TURNS", "BARGE", "DTMF"
    );
    for c in calls {
        let _ = writeln!(
            out,
            "{:<36} {:<7} {:<21} {:>8} {:<12} {:<10} {:<14} {:>5} {:>5} {:>4}",
            c.id,
            opt(c.transport.map(|t| t.as_str())),
            when(c.started_at_ms),
            opt(c.duration_ms.map(|d| format!("{:.1}", d as f64 / 1000.0))),
            opt(c.agent.as_deref()),
            c.outcome.as_str(),
            opt(c.hangup_cause.as_deref()),
            c.turns,
            c.barge_ins,
            c.dtmf
        );
    }
    out
}

pub fn turns_table(turns: &[TurnRow]) -> String {
    let ms = |v: Option<f64>| opt(v.map(|v| format!("{v:.0}")));
    let mut out = format!(
        "{:>4} {:<13} {:>9} {:>7} {:>8} {:>8} {:>8} {:>6} {:>6}\n",
        "TURN", "OUTCOME", "RESPONSE", "ASR", "LLM 1ST", "TOK/S", "TTS 1ST", "HEARD", "SPOKEN"
    );
    for t in turns {
        let outcome = if t.greeting {
            "greeting"
        } else {
            t.outcome.as_str()
        };
        let _ = writeln!(
            out,
            "{:>4} {:<13} {:>9} {:>7} {:>8} {:>8} {:>8} {:>6} {:>6}",
            t.index,
            outcome,
            ms(t.response_ms),
            ms(t.asr_ms),
            ms(t.llm_first_token_ms),
            opt(t.llm_tokens_per_s.map(|v| format!("{v:.1}"))),
            ms(t.tts_first_audio_ms),
            t.words_heard,
            t.words_spoken
        );
    }
    out
}

pub fn actions_table(actions: &[ActionRow]) -> String {
    let mut out = format!(
        "{:>9} {:<15} {:<11} {:<16} {}\n",
        "AT", "ACTION", "SOURCE", "TARGET", "RESULT"
    );
    for a in actions {
        let _ = writeln!(
            out,
            "{:>9} {:<15} {:<11} {:<16} {}",
            format!("{:.1}s", a.at_ms / 1000.0),
            a.action,
            a.source,
            a.target.as_deref().unwrap_or("-"),
            a.result
        );
    }
    out
}

pub fn tools_table(tools: &[ToolRow]) -> String {
    let mut out = format!("{:>4} {:<24} {:>9} {}\n", "TURN", "TOOL", "MS", "OUTCOME");
    for t in tools {
        let _ = writeln!(
            out,
            "{:>4} {:<24} {:>9} {}",
            t.turn,
            t.name,
            t.duration_ms.map_or("-".into(), |d| format!("{d:.0}")),
            t.outcome
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00Z");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(when(1_795_578_867_892), "2026-11-25 03:54:27Z");
    }
}
