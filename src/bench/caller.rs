//! The caller's side of a benchmark call: questions about a clinic spoken by
//! several voices at several speeds, some with a pause in the middle of the
//! sentence, as 8 kHz audio that starts and ends with speech.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::BenchError;
use crate::codec::{resample::resample, wav};
use crate::engine::Engine;

/// The rate the caller's audio is sent at (PCMU).
pub const RATE: u32 = 8_000;
/// Samples in one 20 ms packet at [`RATE`].
pub const PACKET: usize = 160;
/// A packet whose RMS reaches this (−40 dBFS) holds speech. Both sides use it:
/// the caller's speech extent and the agent's audio in [`super::measure`].
pub const LOUD_RMS: f32 = 0.01;
/// Every voice is brought to this speech level (−20 dBFS), so that no voice is
/// easier to hear than another.
const SPEECH_LEVEL: f32 = 0.1;

/// Spoken after the greeting, in order. `|` is where the caller pauses
/// mid-sentence: espeak-ng speaks the line whole with a break there, so the
/// first half keeps the rising or level pitch of a sentence that goes on
/// (Piper cannot: its halves are synthesized apart, silence between).
pub const QUESTIONS: &[&str] = &[
    "What time does the clinic open on Monday?",
    "I would like to book an appointment | for my daughter next Tuesday.",
    "How much does a consultation with the doctor cost?",
    "Do I need to bring my medical aid card?",
    "My son has had a fever since yesterday, | should I bring him in today?",
    "Is the doctor available on Saturday morning?",
    "Where can I park when I come to the clinic?",
    "I need to cancel my appointment | on Thursday afternoon.",
    "Can I get my blood test results over the phone?",
    "Do you offer vaccinations for children?",
    "How long does it usually take | to see a doctor without an appointment?",
    "Is there a pharmacy inside the clinic?",
];

/// Spoken while the agent is still answering (barge-in).
pub const INTERRUPTIONS: &[&str] = &[
    "Sorry, what is your phone number again?",
    "Wait, can I speak to a nurse instead?",
    "Hold on, do you take walk in patients?",
];

/// Who speaks a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Voice {
    /// The agent's own Piper voice (`Engine::speak`).
    Piper,
    /// espeak-ng with a voice variant and a speed in words per minute.
    Espeak { name: &'static str, speed: u32 },
}

impl std::fmt::Display for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Voice::Piper => f.write_str("piper"),
            Voice::Espeak { name, speed } => write!(f, "{name}@{speed}"),
        }
    }
}

pub const VOICES: [Voice; 6] = [
    Voice::Piper,
    Voice::Espeak {
        name: "en-us",
        speed: 150,
    },
    Voice::Espeak {
        name: "en-us+f3",
        speed: 170,
    },
    Voice::Espeak {
        name: "en-gb+m3",
        speed: 130,
    },
    Voice::Espeak {
        name: "en-us+m7",
        speed: 190,
    },
    Voice::Espeak {
        name: "en-gb+f2",
        speed: 160,
    },
];

/// Lengths of the mid-sentence pauses, taken in turn.
const PAUSES_MS: [u32; 4] = [400, 550, 700, 450];

/// A line to synthesize.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// One part, or two with a pause of `pause_ms` between.
    pub parts: Vec<String>,
    pub pause_ms: u32,
    pub voice: Voice,
}

/// A synthesized line, ready to send.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub text: String,
    pub voice: Voice,
    /// The mid-sentence pause, if the line has one.
    pub pause_ms: Option<u32>,
    /// 8 kHz, a whole number of packets; the first and the last packet hold
    /// speech, so their send times are the onset and the end of speech.
    pub audio: Vec<f32>,
}

impl Utterance {
    pub fn packets(&self) -> usize {
        self.audio.len() / PACKET
    }

    pub fn duration_ms(&self) -> f64 {
        self.audio.len() as f64 * 1000.0 / RATE as f64
    }
}

/// What the caller says: the questions, and the lines it interrupts with.
#[derive(Debug, Clone)]
pub struct Lineup {
    pub questions: Vec<Arc<Utterance>>,
    pub interruptions: Vec<Arc<Utterance>>,
}

/// The `i`-th line of a list, its voice and pause chosen so that the voices
/// take turns and the pauses fall to different voices.
pub fn line(i: usize, text: &str) -> Line {
    let voice = VOICES[(i + i / VOICES.len()) % VOICES.len()];
    let parts: Vec<String> = text
        .split('|')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    Line {
        pause_ms: PAUSES_MS[i % PAUSES_MS.len()],
        parts,
        voice,
    }
}

/// The first `n` built-in questions (cycling through the list, each round in
/// other voices).
pub fn built_in(n: usize) -> Vec<Line> {
    (0..n)
        .map(|i| line(i, QUESTIONS[i % QUESTIONS.len()]))
        .collect()
}

/// Questions from a text file: one a line, `|` for a mid-sentence pause,
/// blank lines and `#` comments skipped.
pub fn from_text(text: &str) -> Vec<Line> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| line(i, l))
        .collect()
}

/// The interruptions, in voices other than the questions around them.
pub fn interruptions() -> Vec<Line> {
    INTERRUPTIONS
        .iter()
        .enumerate()
        .map(|(j, t)| Line {
            parts: vec![t.to_string()],
            pause_ms: 0,
            voice: VOICES[(2 * j + 3) % VOICES.len()],
        })
        .collect()
}

/// Speaks `line` with its voice: Piper through `engine` (phonemes by
/// `piper_voice`, the agent's setting), or the espeak-ng program at `espeak`.
pub async fn synthesize(
    engine: &Engine,
    espeak: &Path,
    piper_voice: Option<&str>,
    line: &Line,
) -> Result<Utterance, BenchError> {
    if let Voice::Espeak { name, speed } = line.voice
        && line.parts.len() > 1
    {
        // One utterance with SSML breaks: halves synthesized apart would each
        // end as a sentence ends, a pause no listener would take for a pause.
        let escape = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let parts: Vec<String> = line.parts.iter().map(|p| escape(p)).collect();
        let ssml = format!(
            "<speak>{}</speak>",
            parts.join(&format!(" <break time=\"{}ms\"/> ", line.pause_ms))
        );
        let mut audio = espeak_speak(espeak, name, speed, &ssml, true).await?;
        normalise(&mut audio);
        let Some((first, last)) = speech_extent(&audio) else {
            return Err(BenchError::Silent {
                text: line.parts.join(" "),
                voice: line.voice.to_string(),
            });
        };
        let mut audio = audio[first * PACKET..((last + 1) * PACKET).min(audio.len())].to_vec();
        audio.resize(audio.len().div_ceil(PACKET) * PACKET, 0.0);
        return Ok(Utterance {
            text: line.parts.join(" … "),
            voice: line.voice,
            pause_ms: Some(line.pause_ms),
            audio,
        });
    }
    let mut audio = Vec::new();
    for (k, part) in line.parts.iter().enumerate() {
        let raw = match line.voice {
            Voice::Piper => {
                let a = engine
                    .speak(
                        part.clone(),
                        crate::engine::Voice::reading(piper_voice.map(String::from)),
                    )
                    .await?;
                resample(&a, crate::audio::ENGINE_RATE, RATE)?
            }
            Voice::Espeak { name, speed } => espeak_speak(espeak, name, speed, part, false).await?,
        };
        let mut part_audio = raw;
        normalise(&mut part_audio);
        let Some((first, last)) = speech_extent(&part_audio) else {
            return Err(BenchError::Silent {
                text: part.clone(),
                voice: line.voice.to_string(),
            });
        };
        if k > 0 {
            audio.resize(
                audio.len() + line.pause_ms as usize * RATE as usize / 1000,
                0.0,
            );
        }
        audio.extend_from_slice(
            &part_audio[first * PACKET..((last + 1) * PACKET).min(part_audio.len())],
        );
    }
    // Whole packets: the last one (holding the last speech sample) padded with silence.
    audio.resize(audio.len().div_ceil(PACKET) * PACKET, 0.0);
    Ok(Utterance {
        text: line.parts.join(" … "),
        voice: line.voice,
        pause_ms: (line.parts.len() > 1).then_some(line.pause_ms),
        audio,
    })
}

async fn espeak_speak(
    espeak: &Path,
    voice: &str,
    speed: u32,
    text: &str,
    ssml: bool,
) -> Result<Vec<f32>, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temporary folder", e))?;
    let path = dir.path().join("line.wav");
    let out = tokio::process::Command::new(espeak)
        .args(["-v", voice, "-s", &speed.to_string(), "-w"])
        .arg(&path)
        .args(ssml.then_some("-m"))
        .arg(text)
        .output()
        .await
        .map_err(|e| BenchError::Espeak {
            voice: voice.into(),
            reason: format!(
                "cannot run {}: {e} (scripts/setup.sh installs espeak-ng)",
                espeak.display()
            ),
        })?;
    if !out.status.success() {
        return Err(BenchError::Espeak {
            voice: voice.into(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let (audio, rate) = wav::read_mono(&path)?;
    Ok(resample(&audio, rate, RATE)?)
}

/// RMS of each packet-long frame.
pub fn packet_levels(audio: &[f32]) -> Vec<f32> {
    audio.chunks(PACKET).map(crate::audio::rms).collect()
}

/// The first and last packet (indices) loud enough to be speech.
pub fn speech_extent(audio: &[f32]) -> Option<(usize, usize)> {
    let levels = packet_levels(audio);
    let first = levels.iter().position(|&l| l >= LOUD_RMS)?;
    let last = levels.iter().rposition(|&l| l >= LOUD_RMS)?;
    Some((first, last))
}

/// Scales speech to [`SPEECH_LEVEL`] (measured on the frames within 20 dB of
/// the loudest), then down if that would clip.
fn normalise(audio: &mut [f32]) {
    let levels = packet_levels(audio);
    let loudest = levels.iter().copied().fold(0.0f32, f32::max);
    if loudest <= 0.0 {
        return;
    }
    let speech: Vec<f32> = levels.into_iter().filter(|&l| l >= loudest * 0.1).collect();
    let level = crate::audio::rms(&speech);
    let peak = audio.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let gain = (SPEECH_LEVEL / level).min(0.95 / peak);
    for s in audio.iter_mut() {
        *s *= gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_take_turns_and_pauses_fall_to_several_voices() {
        let lines = built_in(12);
        assert_eq!(lines.len(), 12);
        let paused: Vec<&Line> = lines.iter().filter(|l| l.parts.len() == 2).collect();
        assert_eq!(paused.len(), 4);
        let voices: std::collections::BTreeSet<String> =
            paused.iter().map(|l| l.voice.to_string()).collect();
        assert_eq!(voices.len(), 4, "{voices:?}");
        assert!(paused.iter().all(|l| (350..=700).contains(&l.pause_ms)));
        let all: std::collections::BTreeSet<String> =
            lines.iter().map(|l| l.voice.to_string()).collect();
        assert_eq!(all.len(), VOICES.len());
    }

    #[test]
    fn extent_is_the_loud_packets() {
        let mut a = vec![0.0; PACKET * 10];
        for s in &mut a[PACKET * 3 + 5..PACKET * 6 + 2] {
            *s = 0.2;
        }
        assert_eq!(speech_extent(&a), Some((3, 6)));
        assert_eq!(speech_extent(&[0.0; 800]), None);
    }

    #[test]
    fn a_file_of_questions() {
        let lines = from_text("# clinic\nWhen do you open?\n\nCan I come | tomorrow?\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].parts, ["Can I come", "tomorrow?"]);
    }
}
