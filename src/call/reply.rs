//! One reply, streamed: ASR on the caller's utterance, then the LLM's pieces cut
//! into phrases, each phrase synthesized while the next is still being written.
//! Every stage talks to the next over a bounded channel; dropping the
//! [`ReplyStream`] cancels all of them (the LLM stops at its next token, TTS at its
//! next phrase).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Agent;
use super::transcript::{self, Words};
use crate::audio::{ENGINE_RATE, FRAME_SAMPLES, Frame, frames};
use crate::engine::phrase::PhraseCutter;
use crate::engine::{
    ChatMessage, Engine, EngineError, GenerationStats, Hearing, LlmEvent, LlmSession, Speaker,
    ToolCall, ToolChoice,
};
use crate::tools::ToolOutcome;

/// Bound of every queue between stages.
pub const QUEUE: usize = 8;

/// A phrase's audio held back while it is all quiet, to cut its lead-in:
/// 300 ms at most; a phrase quiet for longer is played as it comes.
const LEAD_IN_LIMIT: usize = 300 * ENGINE_RATE as usize / 1000;

/// The end-of-turn model hears the last 8 s of a turn.
pub const JUDGED_SAMPLES: usize = 8 * ENGINE_RATE as usize;

#[derive(Debug)]
pub enum ReplyEvent {
    /// The end-of-turn model's probability that the caller has finished.
    Judged {
        probability: f32,
        took: Duration,
    },
    /// The end-of-turn model was asked and gave no verdict (it failed).
    Unjudged,
    /// The language model's reading of the caller's words: the probability
    /// that their message ends after its last word (a local model only).
    WordsJudged {
        probability: f32,
    },
    /// What the caller said (kept in memory for the conversation, never logged).
    Heard {
        text: String,
        asr: Duration,
        audio: Duration,
    },
    /// A phrase begins: its text and its first audio; all of it when
    /// `complete`, else the rest follows as [`ReplyEvent::PhraseAudio`].
    Phrase {
        text: String,
        audio: Vec<Frame>,
        /// From the phrase's request to its first audio.
        synth: Duration,
        complete: bool,
    },
    /// More of the phrase begun last, as it is made.
    PhraseAudio {
        audio: Vec<Frame>,
        /// Since the piece before.
        synth: Duration,
        complete: bool,
    },
    /// The model's first words, this long after it was asked. Told at once,
    /// so that a reply cut short by a barge-in keeps the figure.
    FirstToken(Duration),
    /// The LLM finished (or was stopped).
    Generated(GenerationStats),
    /// Nothing intelligible was said: no reply.
    NothingHeard {
        asr: Duration,
    },
    Failed(String),
    /// An engine (recogniser, model, voice) failed before the reply's first
    /// word; the agent's fallback phrase follows (the error names the
    /// backend and the kind).
    EngineFailed(String),
    /// The model asked for an action (not yet checked).
    Action(ToolCall),
    /// One of the agent's tools is being called.
    ToolStarted(String),
    /// The tool called last has answered (or failed, or was refused).
    ToolDone {
        name: String,
        outcome: ToolOutcome,
        took: Duration,
    },
    /// The model asked for an action in a form that cannot be read.
    MalformedAction,
    /// No more phrases will come.
    Done,
}

impl ReplyEvent {
    /// One of the agent's fixed phrases, synthesised when it was prepared.
    fn fixed(phrase: &super::Phrase) -> ReplyEvent {
        ReplyEvent::Phrase {
            text: phrase.text.clone(),
            audio: phrase.frames.clone(),
            synth: Duration::ZERO,
            complete: true,
        }
    }
}

/// What the reply answers.
pub enum ReplyInput {
    /// The caller's turn: its audio, for the end-of-turn model, and its
    /// words, recognised or being recognised.
    Speech { audio: Vec<f32>, words: Words },
    /// Something the caller gave otherwise (keys), already in words.
    Text(String),
}

pub struct ReplyRequest {
    pub input: ReplyInput,
    /// Who answers: language, voice, fixed phrases, tools.
    pub agent: Arc<Agent>,
    pub history: Vec<ChatMessage>,
    /// Ask the end-of-turn model about the caller's audio.
    pub judge: bool,
    /// The model's reading of the caller's words (a local model's
    /// [`LlmEvent::TurnEnds`]) at or above this probability settles the
    /// turn as complete: the end-of-turn model is then not asked.
    pub words_settle: Option<f32>,
}

/// The receiving end of a reply in progress; dropping it cancels the reply.
pub struct ReplyStream {
    pub events: mpsc::Receiver<ReplyEvent>,
    task: JoinHandle<()>,
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start(engine: Arc<Engine>, llm: Arc<dyn LlmSession>, req: ReplyRequest) -> ReplyStream {
    let (tx, events) = mpsc::channel(QUEUE);
    let task = tokio::spawn(async move {
        if let Err(e) = run(&engine, llm, req, &tx).await {
            let _ = tx.send(ReplyEvent::Failed(e.to_string())).await;
        }
    });
    ReplyStream { events, task }
}

/// The receiver is gone: the reply was cancelled.
struct Cancelled;

impl From<Cancelled> for EngineError {
    fn from(_: Cancelled) -> Self {
        EngineError::Worker("reply cancelled".into())
    }
}

async fn send(tx: &mpsc::Sender<ReplyEvent>, ev: ReplyEvent) -> Result<(), Cancelled> {
    tx.send(ev).await.map_err(|_| Cancelled)
}

async fn run(
    engine: &Arc<Engine>,
    llm: Arc<dyn LlmSession>,
    req: ReplyRequest,
    tx: &mpsc::Sender<ReplyEvent>,
) -> Result<(), EngineError> {
    let ReplyRequest {
        input,
        agent,
        mut history,
        judge,
        words_settle,
    } = req;
    let hearing = Hearing::of(&agent.profile);
    let voice = crate::engine::Voice::of(&agent.profile);
    let language = agent.profile.language.clone();
    let mut judged = None;
    let text = match input {
        ReplyInput::Text(text) => text,
        ReplyInput::Speech { audio, words } => {
            judged = judge.then_some(audio);
            let heard = match transcript::gather(engine, words, &hearing).await {
                Ok(heard) => heard,
                // The caller is told, and the call goes on.
                Err(e) if !agent.phrases.engine_failed.frames.is_empty() => {
                    send(tx, ReplyEvent::EngineFailed(e.to_string())).await?;
                    send(tx, ReplyEvent::fixed(&agent.phrases.engine_failed)).await?;
                    send(tx, ReplyEvent::Done).await?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if heard.text.is_empty() {
                send(tx, ReplyEvent::NothingHeard { asr: heard.asr }).await?;
                return Ok(());
            }
            send(
                tx,
                ReplyEvent::Heard {
                    text: heard.text.clone(),
                    asr: heard.asr,
                    audio: heard.audio,
                },
            )
            .await?;
            heard.text
        }
    };
    history.push(ChatMessage {
        speaker: Speaker::User,
        text,
    });

    // The end-of-turn model runs beside the reply rather than before it.
    // A model that reads the prompt on these cores goes first (the
    // verdict only moves when the reply plays, the prompt is on its
    // critical path), and Smart Turn then runs on the core its token
    // loop leaves idle; words the model reads as finished settle the turn
    // without it. A server's model leaves the cores free from the start.
    let (judge_now, judge_when) = tokio::sync::oneshot::channel::<bool>();
    let mut judge_now = Some(judge_now);
    let reads_here = llm.reads_here();
    let judging = async move {
        let Some(audio) = judged else {
            return Ok(());
        };
        // A reply that ends before its first event is judged all the same.
        if reads_here && judge_when.await == Ok(false) {
            return Ok(());
        }
        let t = Instant::now();
        match engine.turn_complete(audio).await {
            Ok(probability) => {
                let took = t.elapsed();
                send(tx, ReplyEvent::Judged { probability, took }).await
            }
            // Without a verdict the silence policy decides.
            Err(e) => {
                tracing::warn!(error = %e, "end-of-turn model failed");
                send(tx, ReplyEvent::Unjudged).await
            }
        }
    };

    // `None` says: what is held is a phrase now (a tool is about to run).
    let (piece_tx, mut pieces) = mpsc::channel::<Option<String>>(QUEUE);
    // Actions go straight to the call, beside the phrases: they are few.
    let actions = tx.clone();
    let (phrase_tx, mut phrases) = mpsc::channel::<String>(QUEUE);

    // The voice's stage owns its receiver: when it stops early, the stages
    // before it see their queue closed and stop too.
    let voice_backend = agent.profile.tts.clone();
    let engine_failed = agent.phrases.engine_failed.clone();

    let generate = async move {
        let mut total: Option<GenerationStats> = None;
        // Words said (or an action taken) this turn: then a failure cannot
        // be covered by the fallback phrase.
        let mut spoke = false;
        let mut filler_said = false;
        // The model may call tools in this many steps in a row; on the
        // step after, it must speak.
        let tool_steps = agent.profile.tool_steps as usize;
        let asked = Instant::now();
        let mut first_told = false;
        for step in 0..=tool_steps {
            let choice = match step {
                s if s == tool_steps => ToolChoice::None,
                0 => ToolChoice::parse(&agent.profile.tool_choice),
                _ => ToolChoice::Auto,
            };
            let mut reply = llm.reply(history.clone(), choice);
            let mut calls = Vec::new();
            let mut words = String::new();
            let stats = loop {
                // A stream that ends without its last event: the model's
                // worker is gone; handled as its failure.
                let event = reply.next().await.unwrap_or_else(|| {
                    Err(EngineError::Worker(
                        "the language model stopped mid-reply".into(),
                    ))
                });
                if let Some(now) = judge_now.take() {
                    let settled = matches!(&event, Ok(LlmEvent::TurnEnds(p))
                        if words_settle.is_some_and(|at| *p >= at));
                    let _ = now.send(!settled);
                }
                match event {
                    Ok(LlmEvent::Text(piece)) => {
                        if !first_told {
                            first_told = true;
                            send(&actions, ReplyEvent::FirstToken(asked.elapsed())).await?;
                        }
                        spoke = true;
                        words.push_str(&piece);
                        piece_tx.send(Some(piece)).await.map_err(|_| Cancelled)?;
                    }
                    Ok(LlmEvent::ToolCall(call)) if agent.toolbox.has(&call.name) => {
                        calls.push(call);
                    }
                    Ok(LlmEvent::ToolCall(call)) => {
                        spoke = true;
                        send(&actions, ReplyEvent::Action(call)).await?;
                    }
                    Ok(LlmEvent::Malformed(_)) => {
                        send(&actions, ReplyEvent::MalformedAction).await?
                    }
                    // Heard only for a turn whose sound was judged: the
                    // call then knows what the verdict is about.
                    Ok(LlmEvent::TurnEnds(probability)) => {
                        if judge && step == 0 {
                            send(&actions, ReplyEvent::WordsJudged { probability }).await?;
                        }
                    }
                    Ok(LlmEvent::Done(stats)) => break stats,
                    // Nothing said yet (a filler is no answer): the caller
                    // hears the agent's fallback phrase instead of silence,
                    // and the call goes on.
                    Err(e) if !spoke && !agent.phrases.engine_failed.frames.is_empty() => {
                        let fallback = &agent.phrases.engine_failed;
                        send(&actions, ReplyEvent::EngineFailed(e.to_string())).await?;
                        send(&actions, ReplyEvent::fixed(fallback)).await?;
                        return Ok(total.unwrap_or_default());
                    }
                    Err(e) => return Err(e),
                }
            };
            match &mut total {
                None => total = Some(stats),
                Some(t) => {
                    t.tokens += stats.tokens;
                    t.decode_time += stats.decode_time;
                }
            }
            // On the step that must speak, a call is not run (a model that
            // ignores tool_choice gets no loop out of it).
            if calls.is_empty() || step == tool_steps {
                break;
            }
            if !words.trim().is_empty() {
                piece_tx.send(None).await.map_err(|_| Cancelled)?;
                history.push(ChatMessage {
                    speaker: Speaker::Assistant,
                    text: words.trim().to_string(),
                });
            }
            for (i, call) in calls.into_iter().enumerate() {
                // Nine letters and digits: what the strictest servers accept.
                let id = format!("call{step:02}{i:03}");
                send(&actions, ReplyEvent::ToolStarted(call.name.clone())).await?;
                let answer = {
                    let running = agent.toolbox.call(&call.name, &call.arguments);
                    tokio::pin!(running);
                    let filler = &agent.phrases.filler;
                    let wait = Duration::from_millis(agent.profile.filler_after_ms as u64);
                    // Words already said this turn stand in for it.
                    if spoke || filler_said || filler.frames.is_empty() {
                        running.await
                    } else {
                        tokio::select! {
                            answer = &mut running => answer,
                            _ = tokio::time::sleep(wait) => {
                                filler_said = true;
                                send(
                                    &actions,
                                    ReplyEvent::fixed(filler),
                                )
                                .await?;
                                running.await
                            }
                        }
                    }
                };
                send(
                    &actions,
                    ReplyEvent::ToolDone {
                        name: call.name.clone(),
                        outcome: answer.outcome,
                        took: answer.took,
                    },
                )
                .await?;
                history.push(ChatMessage {
                    speaker: Speaker::ToolCall {
                        id: id.clone(),
                        name: call.name.clone(),
                    },
                    text: call.arguments.to_string(),
                });
                history.push(ChatMessage {
                    speaker: Speaker::ToolResult {
                        id,
                        name: call.name,
                    },
                    text: answer.result.to_string(),
                });
            }
        }
        Ok::<GenerationStats, EngineError>(total.unwrap_or_default())
    };

    let cut = async move {
        let mut cutter = PhraseCutter::default();
        while let Some(piece) = pieces.recv().await {
            let phrases = match piece {
                Some(piece) => cutter.push(&piece),
                None => cutter.finish().into_iter().collect(),
            };
            for phrase in phrases {
                if phrase_tx.send(phrase).await.is_err() {
                    return;
                }
            }
        }
        if let Some(rest) = cutter.finish() {
            let _ = phrase_tx.send(rest).await;
        }
    };

    let speak = async move {
        // The reply's first sound is what the caller waits for: its quiet
        // lead-in is cut (later phrases keep theirs, the pause between
        // sentences).
        let mut first = true;
        while let Some(phrase) = phrases.recv().await {
            let started = Instant::now();
            let mut last = started;
            let said = crate::lang::speakable(&language, &phrase);
            let mut speech = engine.speech(&voice_backend, said, voice.clone());
            let mut held: Vec<f32> = Vec::new();
            let mut trimming = first;
            let mut begun = false;
            loop {
                let (audio, complete) = match speech.next().await {
                    Some(Ok(audio)) => (audio, false),
                    None => (Vec::new(), true),
                    // Nothing said yet: the fallback phrase instead of
                    // silence, and the reply ends there.
                    Some(Err(e)) if first && !engine_failed.frames.is_empty() => {
                        send(tx, ReplyEvent::EngineFailed(e.to_string())).await?;
                        send(tx, ReplyEvent::fixed(&engine_failed)).await?;
                        return Ok(true);
                    }
                    Some(Err(e)) => return Err(e),
                };
                held.extend_from_slice(&audio);
                if trimming {
                    match crate::audio::sound_onset(&held) {
                        Some(at) => {
                            held.drain(..at);
                            trimming = false;
                        }
                        None if complete || held.len() >= LEAD_IN_LIMIT => trimming = false,
                        None => continue,
                    }
                }
                // Whole frames as they come; the last one padded.
                let n = if complete {
                    held.len()
                } else {
                    held.len() / FRAME_SAMPLES * FRAME_SAMPLES
                };
                let audio = frames(&held[..n]);
                held.drain(..n);
                if !begun {
                    if audio.is_empty() {
                        if complete {
                            break;
                        }
                        continue;
                    }
                    begun = true;
                    first = false;
                    send(
                        tx,
                        ReplyEvent::Phrase {
                            text: phrase.clone(),
                            audio,
                            synth: started.elapsed(),
                            complete,
                        },
                    )
                    .await?;
                } else if !audio.is_empty() || complete {
                    send(
                        tx,
                        ReplyEvent::PhraseAudio {
                            audio,
                            synth: last.elapsed(),
                            complete,
                        },
                    )
                    .await?;
                }
                last = Instant::now();
                if complete {
                    break;
                }
            }
        }
        Ok::<bool, EngineError>(false)
    };

    let stages = async move { tokio::join!(generate, cut, judging) };
    tokio::pin!(stages, speak);
    let generated = tokio::select! {
        spoken = &mut speak => match spoken {
            Ok(false) => {
                let (generated, (), judged) = stages.await;
                judged?;
                generated
            }
            // The voice failed and the fallback phrase answered: the model
            // is stopped where it is (waiting for a token, or a tool).
            Ok(true) => {
                send(tx, ReplyEvent::Done).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        },
        (generated, (), judged) = &mut stages => {
            judged?;
            if speak.await? {
                send(tx, ReplyEvent::Done).await?;
                return Ok(());
            }
            generated
        }
    };
    let stats = generated?;
    send(tx, ReplyEvent::Generated(stats)).await?;
    send(tx, ReplyEvent::Done).await?;
    Ok(())
}
