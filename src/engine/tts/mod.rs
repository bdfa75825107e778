//! Speech synthesis backends (the embedded Piper voice, OpenAI-compatible
//! servers), chosen per agent by name.

pub mod espeak;
pub mod local;
pub mod openai;
pub mod pcm;
pub mod piper;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::config::RemoteTtsConfig;
use crate::engine::{EngineError, Speech, TtsBackend, Voice};

/// Every configured backend by name, `local` among them.
pub fn backends(
    local: Arc<dyn TtsBackend>,
    remotes: &BTreeMap<String, RemoteTtsConfig>,
) -> Result<BTreeMap<String, Arc<dyn TtsBackend>>, EngineError> {
    crate::engine::backends(
        local,
        remotes,
        |name, config| {
            Ok((
                Arc::new(openai::OpenAiTts::new(name, config)?) as Arc<dyn TtsBackend>,
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

/// A server whose failure before a phrase's first audio the embedded voice
/// makes up for; once audio has come, a failure ends the phrase (what was
/// heard cannot be said again in another voice).
pub struct Fallback {
    pub primary: Arc<dyn TtsBackend>,
    pub fallback: Arc<dyn TtsBackend>,
    /// The primary's name, for the log.
    pub name: String,
}

impl TtsBackend for Fallback {
    fn speak(&self, text: String, voice: Voice) -> Speech {
        let mut primary = self.primary.speak(text.clone(), voice.clone());
        let fallback = self.fallback.clone();
        let name = self.name.clone();
        let first = async move {
            match primary.next().await {
                Some(Err(e)) => {
                    tracing::warn!(backend = %name, error = %e, "speech synthesis failed; the embedded voice says this phrase");
                    fallback.speak(text, voice)
                }
                first => futures_util::stream::iter(first).chain(primary).boxed(),
            }
        };
        futures_util::stream::once(first).flatten().boxed()
    }
}
