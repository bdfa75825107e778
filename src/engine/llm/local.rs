//! A language model on this machine's cores, behind the backend-neutral
//! [`Llm`] trait: its sessions generate on a blocking thread that takes the
//! engine pool's slots step by step (the pool gate belongs here, not to the
//! trait), and hand their events over a bounded channel. Dropping the reply
//! closes the channel, and the generation stops at its next token.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::engine::{
    ChatMessage, EngineError, EnginePool, GenerationStats, Llm, LlmEvent, LlmReply, LlmSession,
    ToolChoice, ToolSpec,
};

/// Events a reply may run ahead of its reader: a few phrases' worth of tokens.
const QUEUE: usize = 32;

/// A model whose work is blocking and counted in the pool's slots.
pub trait LocalModel: Send + Sync + 'static {
    type Session: LocalSession;
    /// A session with `system_prompt` evaluated (blocking).
    fn session(
        &self,
        system_prompt: &str,
        tools: &[ToolSpec],
    ) -> Result<Self::Session, EngineError>;
}

pub trait LocalSession: Send + 'static {
    /// Generates the reply to `history` event by event until done or
    /// `on_event` breaks, taking `pool` slots around each step.
    fn generate(
        &mut self,
        history: &[ChatMessage],
        tools: &ToolChoice,
        pool: &EnginePool,
        on_event: &mut dyn FnMut(LlmEvent) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError>;

    /// Evaluates `history` up to where the caller's next message will
    /// start (blocking, taking `pool` slots); the tokens evaluated.
    fn prepare(
        &mut self,
        _history: &[ChatMessage],
        _pool: &EnginePool,
    ) -> Result<usize, EngineError> {
        Ok(0)
    }
}

/// A local model as a backend.
pub struct OnPool<M> {
    model: Arc<M>,
    pool: EnginePool,
    /// Threads the system prompt's evaluation takes.
    threads: usize,
}

impl<M: LocalModel> OnPool<M> {
    pub fn new(model: M, pool: EnginePool, threads: usize) -> OnPool<M> {
        OnPool {
            model: Arc::new(model),
            pool,
            threads,
        }
    }
}

impl<M: LocalModel> Llm for OnPool<M> {
    fn session(
        &self,
        system_prompt: String,
        tools: Vec<ToolSpec>,
    ) -> BoxFuture<'static, Result<Arc<dyn LlmSession>, EngineError>> {
        let model = self.model.clone();
        let pool = self.pool.clone();
        let threads = self.threads;
        Box::pin(async move {
            let session = pool
                .run(threads, move || model.session(&system_prompt, &tools))
                .await??;
            Ok(Arc::new(PoolSession {
                session: Arc::new(Mutex::new(session)),
                pool,
            }) as Arc<dyn LlmSession>)
        })
    }
}

struct PoolSession<S> {
    /// One reply at a time: a new one waits until a dropped one has noticed.
    session: Arc<Mutex<S>>,
    pool: EnginePool,
}

impl<S: LocalSession> LlmSession for PoolSession<S> {
    fn reply(&self, history: Vec<ChatMessage>, tools: ToolChoice) -> LlmReply {
        let session = self.session.clone();
        let pool = self.pool.clone();
        // Started when first polled, so that a reply never read costs nothing.
        let start = async move {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::task::spawn_blocking(move || {
                let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
                let result = session.generate(&history, &tools, &pool, &mut |event| match tx
                    .blocking_send(Ok(event))
                {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                });
                let _ = tx.blocking_send(result.map(LlmEvent::Done));
            });
            futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            })
        };
        futures_util::stream::once(start).flatten().boxed()
    }

    fn reads_here(&self) -> bool {
        true
    }

    fn prepare(&self, history: Vec<ChatMessage>) {
        let session = self.session.clone();
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
            match session.prepare(&history, &pool) {
                Ok(tokens) => tracing::debug!(tokens, "conversation evaluated ahead"),
                // The reply evaluates it then.
                Err(e) => tracing::warn!(error = %e, "evaluating the conversation ahead failed"),
            }
        });
    }
}
