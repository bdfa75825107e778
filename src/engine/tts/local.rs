//! The embedded voice as a backend: a phrase is made whole on the engine
//! pool's slots and comes as one piece, resampled to the engine's rate.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::engine::{EngineError, EnginePool, Speech, Tts, TtsBackend};

pub struct OnPool {
    pub tts: Arc<dyn Tts>,
    pub pool: EnginePool,
    pub threads: usize,
}

impl TtsBackend for OnPool {
    fn speak(&self, text: String, voice: Option<String>) -> Speech {
        let tts = self.tts.clone();
        let pool = self.pool.clone();
        let threads = self.threads;
        futures_util::stream::once(async move {
            pool.run(threads, move || {
                let raw = tts.synthesize(&text, voice.as_deref())?;
                crate::codec::resample::resample(&raw, tts.sample_rate(), crate::audio::ENGINE_RATE)
                    .map_err(|e| EngineError::Tts(e.to_string()))
            })
            .await?
        })
        .boxed()
    }
}
