//! Language model backends: the embedded model on this machine's cores
//! (`local`), and OpenAI-compatible servers, chosen per agent by name.

pub mod bracket;
pub mod llama;
pub mod local;
pub mod openai;

use std::collections::BTreeMap;
use std::sync::{Arc, Once};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::config::RemoteLlmConfig;
use crate::engine::{ChatMessage, EngineError, Llm, LlmReply, LlmSession, ToolChoice, ToolSpec};

/// whisper.cpp and llama.cpp share one ggml; route its logs (and llama's) to tracing
/// instead of stderr, once per process.
pub fn native_logs_to_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        whisper_rs::install_logging_hooks();
    });
}

/// Every configured backend by name, `local` among them.
pub fn backends(
    local: Arc<dyn Llm>,
    remotes: &BTreeMap<String, RemoteLlmConfig>,
) -> Result<BTreeMap<String, Arc<dyn Llm>>, EngineError> {
    crate::engine::backends(
        local,
        remotes,
        |name, config| {
            Ok((
                Arc::new(openai::OpenAiLlm::new(name, config)?) as Arc<dyn Llm>,
                config.fallback,
            ))
        },
        |primary, fallback, name| {
            Arc::new(Fallback {
                primary,
                fallback,
                name,
            })
        },
    )
}

/// A backend that hands a turn to another when it fails before its first
/// event (a server down, a timeout before the first token). A failure after
/// the reply has begun ends that reply: its words cannot be taken back.
pub struct Fallback {
    pub primary: Arc<dyn Llm>,
    pub fallback: Arc<dyn Llm>,
    /// The primary's name, for the log.
    pub name: String,
}

impl Llm for Fallback {
    fn session(
        &self,
        system_prompt: String,
        tools: Vec<ToolSpec>,
    ) -> BoxFuture<'static, Result<Arc<dyn LlmSession>, EngineError>> {
        let primary = self.primary.session(system_prompt.clone(), tools.clone());
        let fallback = Arc::new(Standby {
            llm: self.fallback.clone(),
            system_prompt,
            tools,
            session: tokio::sync::OnceCell::new(),
        });
        let name = self.name.clone();
        Box::pin(async move {
            Ok(Arc::new(FallbackSession {
                primary: primary.await?,
                fallback,
                name,
            }) as Arc<dyn LlmSession>)
        })
    }
}

/// The fallback's session, made on the first failure (a local one holds a
/// context of its own: not worth it for calls the server answers).
struct Standby {
    llm: Arc<dyn Llm>,
    system_prompt: String,
    tools: Vec<ToolSpec>,
    session: tokio::sync::OnceCell<Arc<dyn LlmSession>>,
}

impl Standby {
    async fn session(&self) -> Result<Arc<dyn LlmSession>, EngineError> {
        self.session
            .get_or_try_init(|| {
                self.llm
                    .session(self.system_prompt.clone(), self.tools.clone())
            })
            .await
            .cloned()
    }
}

struct FallbackSession {
    primary: Arc<dyn LlmSession>,
    fallback: Arc<Standby>,
    name: String,
}

impl LlmSession for FallbackSession {
    fn prepare(&self, history: Vec<ChatMessage>) {
        self.primary.prepare(history);
    }

    fn reads_here(&self) -> bool {
        self.primary.reads_here()
    }

    fn reply(&self, history: Vec<ChatMessage>, tools: ToolChoice) -> LlmReply {
        let mut primary = self.primary.reply(history.clone(), tools.clone());
        let fallback = self.fallback.clone();
        let name = self.name.clone();
        let first = async move {
            match primary.next().await {
                Some(Err(e)) => {
                    tracing::warn!(backend = %name, error = %e, "language model failed; the local model answers this turn");
                    match fallback.session().await {
                        Ok(session) => session.reply(history, tools),
                        Err(e) => futures_util::stream::iter([Err(e)]).boxed(),
                    }
                }
                first => futures_util::stream::iter(first).chain(primary).boxed(),
            }
        };
        futures_util::stream::once(first).flatten().boxed()
    }
}
