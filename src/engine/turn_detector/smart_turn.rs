//! Pipecat's Smart Turn v3 (a Whisper-encoder classifier, ONNX, int8): the
//! last 8 s of the turn as Whisper log-mel features in, the probability that
//! the turn is complete out (the graph ends in its sigmoid).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ort::session::Session;
use ort::value::Tensor;

use super::TurnDetector;
use super::features::{FRAMES, N_MELS, turn_features};
use crate::engine::{EngineError, onnx};

const INPUT: &str = "input_features";
const OUTPUT: &str = "logits";

/// Each session costs about 30 MB once it has run; with one thread a check
/// (~45 ms) four answer some 80 checks a second, far more pauses than a
/// machine's calls make (with all cores a check, one session).
const MAX_SESSIONS: usize = 4;

pub struct SmartTurn {
    /// Several, so calls ending their turns together do not queue behind one.
    sessions: Vec<Mutex<Session>>,
}

impl SmartTurn {
    /// `sessions` (at most four) run on `threads` threads each.
    pub fn load(path: &Path, threads: usize, sessions: usize) -> Result<SmartTurn, EngineError> {
        let all = onnx::sessions(
            path,
            threads,
            sessions.clamp(1, MAX_SESSIONS),
            EngineError::Turn,
        )?;
        Ok(SmartTurn { sessions: all })
    }

    /// A free session if there is one, else the wait for the first.
    fn session(&self) -> MutexGuard<'_, Session> {
        for s in &self.sessions {
            if let Ok(guard) = s.try_lock() {
                return guard;
            }
        }
        self.sessions[0].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model on ready features (`N_MELS` rows of `FRAMES`).
    pub fn infer(&self, features: Vec<f32>) -> Result<f32, EngineError> {
        let err = |e: ort::Error| EngineError::Turn(e.to_string());
        let input = Tensor::from_array(([1usize, N_MELS, FRAMES], features)).map_err(err)?;
        let mut session = self.session();
        let outputs = session.run(ort::inputs![INPUT => input]).map_err(err)?;
        let (_, prob) = outputs
            .get(OUTPUT)
            .ok_or_else(|| EngineError::Turn(format!("the model has no output `{OUTPUT}`")))?
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        match prob.first() {
            Some(&p) if p.is_finite() => Ok(p),
            _ => Err(EngineError::Turn(format!(
                "unexpected output: {} values",
                prob.len()
            ))),
        }
    }
}

impl TurnDetector for SmartTurn {
    fn complete(&self, audio: &[f32]) -> Result<f32, EngineError> {
        self.infer(turn_features(audio))
    }
}
