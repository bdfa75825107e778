//! The caller's words, recognised while they pause. At each pause a
//! transcription starts on the audio since the last words kept; the reply
//! takes its result instead of starting one. A pause long enough to have
//! prepared a reply keeps its words when the caller goes on, so that after
//! the caller's last word only the tail of the turn is left to recognise.
//!
//! Which audio goes where is decided by the turn machine's events in audio
//! time, never by how fast the engine is, so `izwi talk --fast` stays
//! deterministic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audio::ENGINE_RATE;
use crate::engine::{Engine, EngineError, Hearing};

/// One stretch of the turn, recognised.
#[derive(Debug, Clone)]
pub struct Heard {
    pub text: String,
    /// Compute time of the transcription.
    pub asr: Duration,
    /// Length of the audio it recognised.
    pub audio: Duration,
}

type Outcome = Option<Result<Heard, String>>;

/// Aborts the transcription once nobody holds it; the engine's pool then
/// stops or skips the work.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A transcription of one stretch of the turn, running or done.
#[derive(Clone)]
pub struct Pending {
    result: watch::Receiver<Outcome>,
    _task: Arc<AbortOnDrop>,
}

impl Pending {
    pub fn start(engine: Arc<Engine>, audio: Vec<f32>, hearing: Hearing) -> Pending {
        let (tx, result) = watch::channel(None);
        let task = tokio::spawn(async move {
            let outcome = recognise(&engine, audio, &hearing).await;
            let _ = tx.send(Some(outcome.map_err(|e| e.to_string())));
        });
        Pending {
            result,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Waits for the words.
    pub async fn heard(&self) -> Result<Heard, EngineError> {
        let mut rx = self.result.clone();
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| EngineError::Worker("transcription stopped".into()))?;
        match outcome.as_ref() {
            Some(Ok(heard)) => Ok(heard.clone()),
            Some(Err(e)) => Err(EngineError::Asr(e.clone())),
            None => Err(EngineError::Worker("transcription stopped".into())),
        }
    }
}

/// The words of a finished turn, as the reply gets them.
pub struct Words {
    /// Stretches kept across pauses the caller went on from, in order.
    pub kept: Vec<Pending>,
    pub tail: Tail,
}

pub enum Tail {
    /// Recognition started at this pause.
    Pending(Pending),
    /// Not started (a turn cut at its longest has no pause): the reply does it.
    Audio(Vec<f32>),
}

/// The turn's transcriptions, by capture offset (samples since the capture began).
#[derive(Default)]
pub struct Transcript {
    kept: Vec<Pending>,
    /// Capture samples the kept stretches cover.
    kept_to: usize,
    pause: Option<Pause>,
}

struct Pause {
    last_speech: Duration,
    /// Capture samples the transcription covers (from `kept_to`).
    to: usize,
    pending: Pending,
    /// The pause lasted until a reply was prepared.
    long: bool,
}

impl Transcript {
    /// A new turn (or none): everything is dropped, running work abandoned.
    pub fn reset(&mut self) {
        *self = Transcript::default();
    }

    /// The caller paused; `capture` is the turn's audio so far. A pause the
    /// caller went on from is forgotten, unless it was long.
    pub fn paused(
        &mut self,
        engine: &Arc<Engine>,
        hearing: &Hearing,
        capture: &[f32],
        last_speech: Duration,
    ) {
        self.pause = None;
        let from = self.kept_to.min(capture.len());
        let audio = capture[from..].to_vec();
        self.pause = Some(Pause {
            last_speech,
            to: capture.len(),
            pending: Pending::start(engine.clone(), audio, hearing.clone()),
            long: false,
        });
    }

    /// The turn ended at `last_speech`: its words for the reply, with `capture`
    /// the whole turn's audio. The transcript keeps its state, in case the
    /// caller resumes.
    pub fn finished(&mut self, capture: &[f32], last_speech: Duration) -> Words {
        let tail = match self.pause.as_mut() {
            Some(p) if p.last_speech == last_speech => {
                p.long = true;
                Tail::Pending(p.pending.clone())
            }
            _ => {
                self.pause = None;
                Tail::Audio(capture[self.kept_to.min(capture.len())..].to_vec())
            }
        };
        Words {
            kept: self.kept.clone(),
            tail,
        }
    }

    /// The caller speaks: a pause too short to have prepared a reply is over,
    /// and its transcription (of words that go on) is dropped at once.
    pub fn spoke(&mut self) {
        if self.pause.as_ref().is_some_and(|p| !p.long) {
            self.pause = None;
        }
    }

    /// The caller went on after the turn seemed finished: that pause's
    /// stretch is kept as the turn's words so far.
    pub fn resumed(&mut self) {
        if let Some(p) = self.pause.take()
            && p.long
        {
            self.kept.push(p.pending);
            self.kept_to = p.to;
        }
    }
}

/// One stretch recognised, timed.
async fn recognise(
    engine: &Engine,
    audio: Vec<f32>,
    hearing: &Hearing,
) -> Result<Heard, EngineError> {
    let t = Instant::now();
    let len = Duration::from_secs_f64(audio.len() as f64 / ENGINE_RATE as f64);
    let text = engine.transcribe(audio, hearing).await?;
    Ok(Heard {
        text,
        asr: t.elapsed(),
        audio: len,
    })
}

/// The words of `words`, in order, waiting for each; the timings are the tail's.
pub async fn gather(
    engine: &Engine,
    words: Words,
    hearing: &Hearing,
) -> Result<Heard, EngineError> {
    let mut parts = Vec::with_capacity(words.kept.len() + 1);
    for p in &words.kept {
        parts.push(p.heard().await?.text);
    }
    let tail = match words.tail {
        Tail::Pending(p) => p.heard().await?,
        Tail::Audio(audio) => recognise(engine, audio, hearing).await?,
    };
    parts.push(tail.text);
    let text = parts
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Heard { text, ..tail })
}
