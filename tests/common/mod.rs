//! Shared set-up for the tests that run the real models (profile `small`).
//! A missing model or tool fails the test with the command that provides it.

#![allow(dead_code)]

pub mod attack;
pub mod llm_server;
pub mod postgres;
pub mod served;
pub mod sip_peer;
pub mod speech_server;
pub mod twilio;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use izwi::audio::ENGINE_RATE;
use izwi::codec::{resample::resample, wav};
use izwi::config::Config;
use izwi::engine::Engine;

/// One test of a binary at a time, for tests that run models or servers in
/// real time: two such side by side on 2 cores starve each other's timing.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The configuration tests run with: the small profile unless the environment says otherwise.
pub fn config() -> Config {
    let mut c = Config::load(None, std::env::vars()).expect("configuration");
    if std::env::var_os("IZWI_MODELS_PROFILE").is_none() {
        c.models.profile = "small".into();
    }
    c
}

/// Models are loaded once per test binary, as in the server.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let (engine, _) = Engine::load(&config()).unwrap_or_else(|e| {
                panic!("cannot load the small models: {e}\n(run `make test`, or `izwi models fetch --profile small`)")
            });
            Arc::new(engine)
        })
        .clone()
}

/// Speech from espeak-ng (a different voice from the agent's), at 16 kHz.
pub fn espeak(text: &str) -> Vec<f32> {
    espeak_in("en-us", text)
}

/// Speech from espeak-ng's `voice` (`sw`: its Swahili), at 16 kHz.
pub fn espeak_in(voice: &str, text: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (scripts/setup.sh installs it)");
    assert!(status.success(), "espeak-ng failed");
    let (audio, rate) = wav::read_mono(&path).unwrap();
    resample(&audio, rate, ENGINE_RATE).unwrap()
}

pub fn seconds(s: f64) -> usize {
    (s * ENGINE_RATE as f64) as usize
}

/// Places each clip at its start time (seconds) in silence of `total` seconds.
pub fn compose(total: f64, clips: &[(f64, &[f32])]) -> Vec<f32> {
    let mut out = vec![0.0; seconds(total)];
    for (at, clip) in clips {
        let start = seconds(*at);
        assert!(start + clip.len() <= out.len(), "clip past the end");
        for (o, c) in out[start..].iter_mut().zip(clip.iter()) {
            *o += c;
        }
    }
    out
}

/// Start of the first sample louder than a whisper, in seconds from the clip's start.
pub fn onset(clip: &[f32]) -> f64 {
    let i = clip
        .iter()
        .position(|s| s.abs() > 0.02)
        .expect("clip is silent");
    i as f64 / ENGINE_RATE as f64
}

/// End of the last sample louder than a whisper, in seconds from the clip's start.
pub fn speech_end(clip: &[f32]) -> f64 {
    let i = clip
        .iter()
        .rposition(|s| s.abs() > 0.02)
        .expect("clip is silent");
    (i + 1) as f64 / ENGINE_RATE as f64
}

pub fn duration(clip: &[f32]) -> f64 {
    clip.len() as f64 / ENGINE_RATE as f64
}

pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The binary under test: this build's, or `IZWI_TEST_BIN` (to measure
/// another build, such as the last release, against the same tests).
pub fn izwi_bin() -> PathBuf {
    std::env::var_os("IZWI_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_izwi")))
}

/// The loudest 20 ms frame in `[from, to)` seconds of `audio`.
pub fn peak_rms(audio: &[f32], from: f64, to: f64) -> f32 {
    let (a, b) = (seconds(from).min(audio.len()), seconds(to).min(audio.len()));
    audio[a..b]
        .chunks(320)
        .map(izwi::audio::rms)
        .fold(0.0, f32::max)
}

/// What `izwi talk --json` did with a caller's audio.
pub struct Talked {
    pub stdout: String,
    /// The turn records, the greeting's apart.
    pub turns: Vec<serde_json::Value>,
    /// The agent's side, 16 kHz.
    pub agent: Vec<f32>,
}

/// `izwi talk --json` on `caller` (16 kHz), with `args` before `--in` (an
/// agent, `--fast`) and `env`; files and records in `dir`. Fails the test
/// unless it succeeds.
pub fn izwi_talk(
    dir: &std::path::Path,
    caller: &[f32],
    args: &[&str],
    env: &[(&str, &str)],
) -> Talked {
    let name = args.join("-").replace(['/', ' '], "_");
    let input = dir.join(format!("caller{name}.wav"));
    let output = dir.join(format!("agent{name}.wav"));
    wav::write_mono(&input, caller, ENGINE_RATE).unwrap();
    let mut cmd = Command::new(izwi_bin());
    cmd.env("IZWI_MODELS_PROFILE", config().models.profile)
        .env("IZWI_RECORDS_PATH", dir.join("records.db"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .arg("talk")
        .args(args)
        .arg("--json")
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "izwi talk {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let turns = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|t| t["greeting"] == false)
        .collect();
    let (agent, _) = wav::read_mono(&output).unwrap();
    Talked {
        stdout,
        turns,
        agent,
    }
}

/// What Whisper hears in `audio` (16 kHz) from `from` to `to` seconds, lower case.
pub fn heard(audio: &[f32], from: f64, to: f64) -> String {
    let a = &audio[seconds(from).min(audio.len())..seconds(to).min(audio.len())];
    engine().asr.transcribe(a, "en").unwrap().to_lowercase()
}

/// A caller who asks each of `questions` (espeak-ng's voice), the first at
/// `first_at` seconds, with `room` seconds of silence after each for the
/// answer: the audio (16 kHz) and each question's (start, end).
pub fn asking(first_at: f64, questions: &[&str], room: f64) -> (Vec<f32>, Vec<(f64, f64)>) {
    let clips: Vec<Vec<f32>> = questions.iter().map(|q| espeak(q)).collect();
    let mut at = first_at;
    let mut placed = Vec::new();
    let mut spans = Vec::new();
    for c in &clips {
        placed.push((at, c.as_slice()));
        spans.push((at, at + duration(c)));
        at += duration(c) + room;
    }
    (compose(at, &placed), spans)
}
