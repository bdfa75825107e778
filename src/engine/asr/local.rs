//! The embedded recogniser as a backend: each utterance runs on the engine
//! pool's slots, and is told to stop when its caller has gone.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::engine::{Asr, AsrBackend, EngineError, EnginePool, Hearing};

pub struct OnPool {
    pub asr: Arc<dyn Asr>,
    pub pool: EnginePool,
    pub threads: usize,
}

impl AsrBackend for OnPool {
    fn transcribe(
        &self,
        audio: Vec<f32>,
        hearing: &Hearing,
    ) -> BoxFuture<'static, Result<String, EngineError>> {
        let asr = self.asr.clone();
        let pool = self.pool.clone();
        let threads = self.threads;
        let hearing = hearing.clone();
        Box::pin(async move {
            pool.run_abandonable(threads, move |abandoned| {
                asr.transcribe_unless(&audio, &hearing.language, &hearing.prompt, abandoned)
            })
            .await?
        })
    }
}
