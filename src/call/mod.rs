//! One call: the agent it talks to, the conversation core and the turn machine.

pub mod action;
pub mod agents;
pub mod conversation;
pub mod core;
pub mod ending;
pub mod live;
pub mod reply;
pub mod session;
pub mod transcript;
pub mod turn;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audio::{Frame, frames};
use crate::config::{AgentProfile, LOCAL_BACKEND};
use crate::engine::{Engine, EngineError, Hearing, ToolSpec};
use crate::tools::Toolbox;

/// An agent profile made ready for calls: its fixed phrases synthesized once
/// and its system prompt evaluated once, so that a call starts speaking at once.
pub struct Agent {
    pub name: String,
    pub profile: AgentProfile,
    pub greeting: Vec<Frame>,
    pub phrases: Phrases,
    /// The actions and tools the model is offered.
    pub tools: Vec<ToolSpec>,
    /// The agent's HTTP tools, ready to call.
    pub toolbox: Arc<Toolbox>,
    pub prepared_in: Duration,
}

/// A fixed phrase and its audio (none when its text is empty).
#[derive(Debug, Clone, Default)]
pub struct Phrase {
    pub text: String,
    pub frames: Vec<Frame>,
}

/// What an agent says around its actions.
#[derive(Debug, Clone, Default)]
pub struct Phrases {
    pub goodbye: Phrase,
    pub still_there: Phrase,
    pub transferring: Phrase,
    pub transfer_failed: Phrase,
    /// Said when the language model fails.
    pub engine_failed: Phrase,
    /// Said while a slow tool runs.
    pub filler: Phrase,
}

/// A fixed phrase in the agent's voice, kept for every call; in the
/// embedded voice when the agent's server cannot say it now, so that the
/// agent starts (and its fallback phrase works when that server is down).
async fn synthesize(
    engine: &Arc<Engine>,
    text: &str,
    profile: &AgentProfile,
) -> Result<Phrase, EngineError> {
    let text = text.trim().to_string();
    if text.is_empty() {
        return Ok(Phrase::default());
    }
    let voice = crate::engine::Voice::of(profile);
    let said = crate::lang::speakable(&profile.language, &text);
    let audio = match engine
        .speak_with(&profile.tts, said.clone(), voice.clone())
        .await
    {
        Ok(audio) => audio,
        Err(e) if profile.tts != LOCAL_BACKEND => {
            tracing::warn!(backend = %profile.tts, error = %e, "a fixed phrase is said in the embedded voice");
            engine.speak(said, voice).await?
        }
        Err(e) => return Err(e),
    };
    Ok(Phrase {
        text,
        frames: frames(&audio),
    })
}

impl Agent {
    pub async fn prepare(
        engine: &Arc<Engine>,
        name: &str,
        profile: &AgentProfile,
    ) -> Result<Agent, EngineError> {
        let t = Instant::now();
        let greeting = synthesize(engine, &profile.greeting, profile).await?.frames;
        let phrases = Phrases {
            goodbye: synthesize(engine, &profile.goodbye, profile).await?,
            still_there: synthesize(engine, &profile.silence.prompt, profile).await?,
            transferring: if profile.transfer.is_empty() {
                Phrase::default()
            } else {
                synthesize(engine, &profile.transfer_announcement, profile).await?
            },
            transfer_failed: if profile.transfer.is_empty() {
                Phrase::default()
            } else {
                synthesize(engine, &profile.transfer_failed, profile).await?
            },
            engine_failed: synthesize(engine, &profile.engine_failed, profile).await?,
            filler: if profile.tools.is_empty() {
                Phrase::default()
            } else {
                synthesize(engine, &profile.filler, profile).await?
            },
        };
        let toolbox = Toolbox::new(&profile.tools)
            .map_err(|e| EngineError::Worker(format!("agent `{name}`: {e}")))?;
        let mut tools = action::tools(profile);
        tools.extend(toolbox.specs());
        // Checks the backend exists; a local one evaluates the system
        // prompt into its shared prefix cache.
        engine.llm_session(name, profile, tools.clone()).await?;
        Ok(Agent {
            name: name.to_string(),
            profile: profile.clone(),
            greeting,
            phrases,
            tools,
            toolbox: Arc::new(toolbox),
            prepared_in: t.elapsed(),
        })
    }
}

impl Agent {
    /// Runs each engine stage once on this agent's settings, so the first
    /// caller does not pay for cold caches: what `/v1/admin/warmup` asks for.
    pub async fn warm(&self, engine: &Arc<Engine>) -> Result<Duration, EngineError> {
        let t = Instant::now();
        let silence = vec![0.0; crate::audio::ENGINE_RATE as usize / 2];
        engine
            .transcribe(silence, &Hearing::of(&self.profile))
            .await?;
        engine
            .speak_with(
                &self.profile.tts,
                "Hello.".into(),
                crate::engine::Voice::of(&self.profile),
            )
            .await?;
        engine
            .llm_session(&self.name, &self.profile, self.tools.clone())
            .await?;
        Ok(t.elapsed())
    }
}

/// Runs a call's reactor as a task of its own and waits for it: `None` when it
/// panicked, so that whoever holds the call can still end it, record it and
/// give its slot back instead of losing it with the task.
pub async fn supervise<T: Send + 'static>(
    reactor: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    match tokio::spawn(reactor).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(panicked = e.is_panic(), "a call's reactor failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_panicking_reactor_is_reported_not_lost() {
        assert_eq!(super::supervise(async { 7 }).await, Some(7));
        let r: Option<u8> = super::supervise(async { panic!("a bug in a reactor") }).await;
        assert_eq!(r, None);
    }
}
