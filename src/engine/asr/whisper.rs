//! Whisper through whisper.cpp (whisper-rs). One model per process; decoder
//! states are pooled so a call does not pay for allocating one per utterance.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{clean_transcript, collapse_loop};
use crate::engine::{Abandoned, Asr, EngineError};

/// whisper.cpp refuses input under one second.
const MIN_SAMPLES: usize = 16_000 + 1_600;
/// The encoder's full window (30 s) in its frames, 50 per second.
const FULL_AUDIO_CTX: usize = 1500;
/// A window fitted to a short utterance makes Whisper loop on repeated words
/// when it may not write timestamps (it has no way to say where speech ends):
/// 11 of 48 espeak-ng questions looped at 5 s without them, 1 of 48 with them
/// (then bounded by `max_tokens` and collapsed). 5 s is half the cost of 10 s.
const MIN_FITTED_AUDIO_CTX: usize = 256;
/// Tokens a second of speech may take, beyond a few: a loop stops there.
const TOKENS_PER_SECOND: f32 = 6.0;

thread_local! {
    /// This thread's transcription was told to stop: whisper.cpp's complaint
    /// that it failed to encode or decode is then no error.
    static STOPPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Asked by whisper.cpp (on the transcribing thread) whether to stop.
unsafe extern "C" fn stop_requested(flag: *mut std::ffi::c_void) -> bool {
    // SAFETY: the pointer is `abandoned.flag()`, alive during `full` (see its caller).
    let stop = unsafe { &*(flag as *const std::sync::atomic::AtomicBool) }.load(Ordering::Relaxed);
    if stop {
        let _ = STOPPING.try_with(|s| s.set(true));
    }
    stop
}

/// whisper.cpp's log lines, into tracing (as whisper-rs's own hook does,
/// under its target), except the error a requested stop causes.
unsafe extern "C" fn whisper_log(
    level: std::os::raw::c_uint,
    text: *const std::os::raw::c_char,
    _: *mut std::ffi::c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a NUL-terminated string, alive during the call.
    let text = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let stopping = STOPPING.try_with(|s| s.get()).unwrap_or(false);
    // ggml's levels: 3 warn, 4 error; the rest (model-load narration) is debug.
    match level {
        4 if !stopping => tracing::error!(target: "whisper_rs", "{text}"),
        3 => tracing::warn!(target: "whisper_rs", "{text}"),
        _ => tracing::debug!(target: "whisper_rs", "{text}"),
    }
}

pub struct WhisperAsr {
    ctx: Arc<WhisperContext>,
    states: Mutex<Vec<WhisperState>>,
    threads: usize,
    fit_audio_context: bool,
    multilingual: bool,
}

impl WhisperAsr {
    pub fn load(
        path: &Path,
        threads: usize,
        fit_audio_context: bool,
    ) -> Result<WhisperAsr, EngineError> {
        crate::engine::llm::native_logs_to_tracing();
        static HOOK: std::sync::Once = std::sync::Once::new();
        // SAFETY: `whisper_log` neither panics nor unwinds, and lives forever.
        HOOK.call_once(|| unsafe {
            whisper_rs::set_log_callback(Some(whisper_log), std::ptr::null_mut())
        });
        let path_str = path.to_str().ok_or_else(|| {
            EngineError::Asr(format!("model path {} is not UTF-8", path.display()))
        })?;
        let ctx = WhisperContext::new_with_params(path_str, WhisperContextParameters::default())
            .map_err(|e| EngineError::Asr(format!("cannot load {}: {e}", path.display())))?;
        let multilingual = ctx.is_multilingual();
        Ok(WhisperAsr {
            ctx: Arc::new(ctx),
            states: Mutex::new(Vec::new()),
            threads,
            fit_audio_context,
            multilingual,
        })
    }

    fn give_back(&self, state: WhisperState) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
    }

    fn take_state(&self) -> Result<WhisperState, EngineError> {
        if let Some(s) = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        self.ctx
            .create_state()
            .map_err(|e| EngineError::Asr(format!("cannot create decoder state: {e}")))
    }
}

impl Asr for WhisperAsr {
    fn transcribe_unless(
        &self,
        audio: &[f32],
        language: &str,
        prompt: &str,
        abandoned: &Abandoned,
    ) -> Result<String, EngineError> {
        let mut padded;
        let mut input = audio;
        if audio.len() < MIN_SAMPLES {
            padded = audio.to_vec();
            padded.resize(MIN_SAMPLES, 0.0);
            input = &padded;
        }
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads as i32);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        params.set_no_context(true);
        params.set_single_segment(true);
        // Timestamps let a fitted window end the transcript where the speech
        // ends (see MIN_FITTED_AUDIO_CTX); the text keeps none of them.
        params.set_no_timestamps(!self.fit_audio_context);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        // A repetition loop re-decoded at rising temperatures costs seconds; on a
        // phone turn a plain greedy pass is the better trade.
        params.set_temperature_inc(0.0);
        // English-only models know one language whatever the agent asks for.
        let lang = match (self.multilingual, language) {
            (false, _) => Some("en"),
            (true, "auto") => None,
            (true, l) => Some(l),
        };
        params.set_language(lang);
        params.set_detect_language(self.multilingual && language == "auto");
        if !prompt.is_empty() {
            params.set_initial_prompt(prompt);
        }
        if self.fit_audio_context {
            // The encoder cost grows with its window; a phone utterance rarely needs 30 s.
            let frames = (input.len().div_ceil(320) + 64).max(MIN_FITTED_AUDIO_CTX);
            params.set_audio_ctx(frames.min(FULL_AUDIO_CTX) as i32);
            let seconds = input.len() as f32 / crate::audio::ENGINE_RATE as f32;
            params.set_max_tokens(10 + (seconds * TOKENS_PER_SECOND) as i32);
        }
        // whisper.cpp asks after its encoder and after each decoded token
        // whether to stop, so a transcription thrown away (the caller went
        // on) frees the cores early. `set_abort_callback_safe` would leak a
        // box per call; the flag is borrowed instead, and outlives `full`.
        let _ = STOPPING.try_with(|s| s.set(false));
        // SAFETY: `stop_requested` only reads the AtomicBool behind the
        // pointer, which lives (in `abandoned`) until after `state.full` returns.
        unsafe {
            params.set_abort_callback(Some(stop_requested));
            params.set_abort_callback_user_data(abandoned.flag()
                as *const std::sync::atomic::AtomicBool
                as *mut std::ffi::c_void);
        }
        let mut state = self.take_state()?;
        let result = state.full(params, input);
        if let Err(e) = result {
            // A stop we asked for leaves the state as whisper.cpp's next run
            // starts it anyway (mel, caches and results are set afresh): it
            // goes back, so that stops, now routine, do not make a new state
            // (tens of MB allocated and freed) each time.
            if abandoned.is_set() {
                self.give_back(state);
            }
            return Err(EngineError::Asr(e.to_string()));
        }
        let mut text = String::new();
        for segment in state.as_iter() {
            if let Ok(s) = segment.to_str_lossy() {
                text.push_str(&s);
            }
        }
        self.give_back(state);
        let text = clean_transcript(&text);
        // Only a fitted window loops (see MIN_FITTED_AUDIO_CTX).
        Ok(if self.fit_audio_context {
            collapse_loop(&text)
        } else {
            text
        })
    }
}

impl std::fmt::Debug for WhisperAsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperAsr")
            .field("threads", &self.threads)
            .finish()
    }
}
