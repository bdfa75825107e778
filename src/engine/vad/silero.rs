//! Silero VAD v6 (ONNX): 512-sample windows at 16 kHz, each preceded by the last
//! 64 samples of the previous one, with a recurrent state carried per call.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::Tensor;

use crate::engine::{EngineError, Vad, VadStream, onnx};

const WINDOW: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;
const RATE: i64 = 16_000;

pub struct SileroVad {
    /// Runs are short (well under a millisecond); a few sessions avoid contention between calls.
    sessions: Arc<Vec<Mutex<Session>>>,
}

impl SileroVad {
    pub fn load(path: &Path, threads: usize, sessions: usize) -> Result<SileroVad, EngineError> {
        let all = onnx::sessions(path, threads, sessions, EngineError::Vad)?;
        Ok(SileroVad {
            sessions: Arc::new(all),
        })
    }
}

impl Vad for SileroVad {
    fn stream(&self) -> Result<Box<dyn VadStream>, EngineError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.sessions.len();
        Ok(Box::new(SileroStream {
            sessions: self.sessions.clone(),
            slot,
            state: vec![0.0; STATE],
            context: vec![0.0; CONTEXT],
            pending: Vec::with_capacity(WINDOW * 2),
        }))
    }
}

struct SileroStream {
    sessions: Arc<Vec<Mutex<Session>>>,
    slot: usize,
    state: Vec<f32>,
    context: Vec<f32>,
    pending: Vec<f32>,
}

impl SileroStream {
    fn window(&mut self, window: &[f32]) -> Result<f32, EngineError> {
        let mut input = Vec::with_capacity(CONTEXT + WINDOW);
        input.extend_from_slice(&self.context);
        input.extend_from_slice(window);
        self.context.copy_from_slice(&window[WINDOW - CONTEXT..]);
        let err = |e: ort::Error| EngineError::Vad(e.to_string());
        let input = Tensor::from_array(([1usize, CONTEXT + WINDOW], input)).map_err(err)?;
        let state = Tensor::from_array(([2usize, 1, 128], self.state.clone())).map_err(err)?;
        let sr = Tensor::from_array((Vec::<i64>::new(), vec![RATE])).map_err(err)?;
        let mut session = self.sessions[self.slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => input, "state" => state, "sr" => sr])
            .map_err(err)?;
        let (_, prob) = outputs["output"].try_extract_tensor::<f32>().map_err(err)?;
        let (_, next) = outputs["stateN"].try_extract_tensor::<f32>().map_err(err)?;
        if next.len() != STATE || prob.is_empty() {
            return Err(EngineError::Vad("unexpected output shape".into()));
        }
        self.state.copy_from_slice(next);
        Ok(prob[0])
    }
}

impl VadStream for SileroStream {
    fn push(&mut self, samples: &[f32]) -> Result<Option<f32>, EngineError> {
        self.pending.extend_from_slice(samples);
        let mut last = None;
        let mut start = 0;
        while self.pending.len() - start >= WINDOW {
            let window: Vec<f32> = self.pending[start..start + WINDOW].to_vec();
            last = Some(self.window(&window)?);
            start += WINDOW;
        }
        self.pending.drain(..start);
        Ok(last)
    }
}
