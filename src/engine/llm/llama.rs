//! llama.cpp through llama-cpp-2. The model is loaded once for the process; each
//! call gets its own small context. The system prompt is evaluated once per prompt
//! text, its KV state saved, and restored into every new call's context; within a
//! call, each turn evaluates only the tokens that differ from what the cache holds.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::SeqState;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::bracket::{self, Brackets, Piece};
use super::local::{LocalModel, LocalSession};
use crate::config::EngineConfig;
use crate::engine::{
    ChatMessage, EngineError, EnginePool, GenerationStats, LlmEvent, Speaker, ToolChoice, ToolSpec,
};

const SEQ: i32 = 0;

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let b = LlamaBackend::init().map_err(|e| EngineError::Llm(format!("backend: {e}")))?;
    Ok(BACKEND.get_or_init(|| b))
}

/// Creating contexts concurrently from one model is unsound in llama.cpp.
static NEW_CONTEXT: Mutex<()> = Mutex::new(());

struct Prefix {
    tokens: Vec<LlamaToken>,
    state: SeqState,
}

/// What every session needs of the loaded model.
#[derive(Clone)]
struct Shared {
    model: &'static LlamaModel,
    template: LlamaChatTemplate,
    settings: EngineConfig,
}

pub struct LlamaLlm {
    shared: Shared,
    prefixes: Mutex<HashMap<String, Arc<Prefix>>>,
}

impl LlamaLlm {
    pub fn load(path: &Path, settings: &EngineConfig) -> Result<LlamaLlm, EngineError> {
        super::native_logs_to_tracing();
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| EngineError::Llm(format!("cannot load {}: {e}", path.display())))?;
        // Loaded once and shared for the life of the process; calls borrow it.
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let template = model.chat_template(None).map_err(|e| {
            EngineError::Llm(format!(
                "{} has no usable chat template: {e}",
                path.display()
            ))
        })?;
        Ok(LlamaLlm {
            shared: Shared {
                model,
                template,
                settings: settings.clone(),
            },
            prefixes: Mutex::new(HashMap::new()),
        })
    }
}

/// llama.h's `LLAMA_FLASH_ATTN_TYPE_DISABLED`. On the CPU, "auto" turns
/// flash attention on, and its kernel then took 43% of a reply's time with
/// the bundled 135M model (perf).
const FLASH_ATTENTION_DISABLED: i32 = 0;

impl Shared {
    fn new_context(&self) -> Result<LlamaContext<'static>, EngineError> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.settings.llm_context))
            .with_n_batch(256)
            // The logits buffer is n_vocab × n_ubatch floats; 64 keeps a call's context small.
            .with_n_ubatch(64)
            .with_n_threads(self.settings.llm_threads as i32)
            .with_n_threads_batch(self.settings.llm_batch_threads as i32)
            .with_flash_attention_policy(FLASH_ATTENTION_DISABLED);
        let _guard = NEW_CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
        self.model
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Llm(format!("cannot create context: {e}")))
    }

    /// The prompt's tokens. `tagged`: the session's replies open with a
    /// tag, which the history (words only) does not keep; the answers are
    /// rendered with `[answer]` again so that they match what the model
    /// wrote and its cache is reused.
    fn render(
        &self,
        system: &str,
        history: &[ChatMessage],
        add_assistant: bool,
        tagged: bool,
    ) -> Result<Vec<LlamaToken>, EngineError> {
        let mut chat = Vec::with_capacity(history.len() + 1);
        let msg = |role: &str, text: &str| {
            LlamaChatMessage::new(role.to_string(), text.to_string())
                .map_err(|e| EngineError::Llm(format!("chat message: {e}")))
        };
        chat.push(msg("system", system)?);
        for m in history {
            match &m.speaker {
                Speaker::User => chat.push(msg("user", &m.text)?),
                // The bundled models' templates have no tool roles: the
                // answer is something the model is told, and its call is
                // left out, since shown its own `[name:value]` the 135M
                // model recites that instead of the answer (measured).
                Speaker::ToolCall { .. } => {}
                Speaker::ToolResult { name, .. } => chat.push(msg(
                    "user",
                    &format!("({name}: {}) Tell me.", plain(&m.text)),
                )?),
                Speaker::Assistant if tagged => chat.push(msg(
                    "assistant",
                    &format!("[{}] {}", bracket::ANSWER, m.text.trim_start()),
                )?),
                Speaker::Assistant => chat.push(msg("assistant", &m.text)?),
            }
        }
        let text = self
            .model
            .apply_chat_template(&self.template, &chat, add_assistant)
            .map_err(|e| EngineError::Llm(format!("chat template: {e}")))?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }
}

impl LlamaLlm {
    /// The evaluated system prompt, computed on first use and shared afterwards.
    fn prefix(&self, system: &str) -> Result<Arc<Prefix>, EngineError> {
        if let Some(p) = self
            .prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(system)
        {
            return Ok(p.clone());
        }
        let tokens = self.shared.render(system, &[], false, false)?;
        let mut ctx = self.shared.new_context()?;
        decode_tokens(&mut ctx, &tokens, 0, None, None)?;
        let state = ctx
            .state_seq_get(SEQ, Default::default())
            .map_err(|e| EngineError::Llm(format!("saving system prompt state: {e}")))?;
        let prefix = Arc::new(Prefix { tokens, state });
        self.prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(system.to_string(), prefix.clone());
        Ok(prefix)
    }
}

/// Evaluates `tokens` at positions from `start`, in batches, taking an engine
/// slot per batch. `odds_of`: the index in `tokens` of one whose probability
/// after the tokens before it is wanted (returned), read from the logits of
/// the token before it.
fn decode_tokens(
    ctx: &mut LlamaContext<'static>,
    tokens: &[LlamaToken],
    start: usize,
    pool: Option<(&EnginePool, usize)>,
    odds_of: Option<usize>,
) -> Result<Option<f32>, EngineError> {
    let n_batch = ctx.n_batch() as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    // The logits that predict `tokens[k]` are the previous token's.
    let read_at = odds_of
        .filter(|&k| k >= 1 && k < tokens.len())
        .map(|k| k - 1);
    let mut odds = None;
    let mut done = 0;
    while done < tokens.len() {
        let end = (done + n_batch).min(tokens.len());
        batch.clear();
        for (i, t) in tokens[done..end].iter().enumerate() {
            let pos = start + done + i;
            let wanted = done + i + 1 == tokens.len() || read_at == Some(done + i);
            batch
                .add(*t, pos as i32, &[SEQ], wanted)
                .map_err(|e| EngineError::Llm(format!("batch: {e}")))?;
        }
        let _permit = pool.map(|(p, threads)| p.acquire(threads));
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Llm(format!("decode: {e}")))?;
        if let Some(k) = read_at.filter(|k| (done..end).contains(k)) {
            let logits = ctx.get_logits_ith((k - done) as i32);
            odds = probability(logits, tokens[k + 1]);
        }
        done = end;
    }
    Ok(odds)
}

/// The softmax probability of `token` among `logits`.
fn probability(logits: &[f32], token: LlamaToken) -> Option<f32> {
    let of = *logits.get(usize::try_from(token.0).ok()?)?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    Some((of - max).exp() / sum)
}

impl LocalModel for LlamaLlm {
    type Session = LlamaSession;

    fn session(
        &self,
        system_prompt: &str,
        tools: &[ToolSpec],
    ) -> Result<LlamaSession, EngineError> {
        // The bundled models' templates have no function calling: actions
        // are taught in the prompt and held to a grammar (see `bracket`).
        let system_prompt = format!("{system_prompt}{}", bracket::instructions(tools));
        let system_prompt = system_prompt.as_str();
        let prefix = self.prefix(system_prompt)?;
        let mut ctx = self.shared.new_context()?;
        ctx.state_seq_set(&prefix.state, SEQ)
            .map_err(|e| EngineError::Llm(format!("restoring system prompt state: {e}")))?;
        Ok(LlamaSession {
            shared: self.shared.clone(),
            system: system_prompt.to_string(),
            evaluated: prefix.tokens.clone(),
            ctx,
            tools: tools.to_vec(),
            grammar: bracket::grammar(tools),
        })
    }
}

pub struct LlamaSession {
    shared: Shared,
    system: String,
    /// Tokens whose keys and values are in the context, in order from position 0.
    evaluated: Vec<LlamaToken>,
    ctx: LlamaContext<'static>,
    tools: Vec<ToolSpec>,
    grammar: Option<String>,
}

/// How much more likely `[answer]` is made than the actions (in logits): a
/// wrong hang-up costs far more than a missed one (the silence policy ends
/// the call anyway). Measured on the bundled 135M model with an agent whose
/// prompt shows the tags by example: 0.5 keeps its goodbyes and transfer
/// requests while a dozen ordinary questions got answers; 1.0 already loses
/// the transfers. It is still a weak judge (it ended a call on "what time
/// do you open?" once a greeting was in the history), hence `end_call` is
/// off unless an agent turns it on.
const ANSWER_BIAS: f32 = 0.5;

/// How much more likely the words of a function's answer are made in the
/// reply that follows it (in logits); see [`LlamaSession::quoting_sampler`].
const QUOTE_BIAS: f32 = 1.5;

impl LlamaSession {
    /// How many of `tokens`, from the first, the context holds already.
    fn cached(&self, tokens: &[LlamaToken]) -> usize {
        self.evaluated
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Drops the context's tokens from position `keep` on.
    fn keep(&mut self, keep: usize) -> Result<(), EngineError> {
        self.ctx
            .clear_kv_cache_seq(Some(SEQ as u32), Some(keep as u32), None)
            .map_err(|e| EngineError::Llm(format!("trimming cache: {e}")))?;
        self.evaluated.truncate(keep);
        Ok(())
    }

    /// The reply's opening tag: only the agent's tags (the grammar), with
    /// `[answer]` favoured; greedy, so that the same words get the same act.
    fn tag_sampler(&self, grammar: &str) -> Result<LlamaSampler, EngineError> {
        let model = self.shared.model;
        let answer = model
            .vocab()
            .tokenize(bracket::ANSWER.as_bytes(), false, false);
        let bias: Vec<LlamaLogitBias> = answer
            .first()
            .map(|t| LlamaLogitBias::new(*t, ANSWER_BIAS))
            .into_iter()
            .collect();
        Ok(LlamaSampler::chain_simple([
            LlamaSampler::grammar(model, grammar, "root")
                .map_err(|e| EngineError::Llm(format!("action grammar: {e}")))?,
            LlamaSampler::logit_bias(model.n_vocab(), &bias),
            LlamaSampler::greedy(),
        ]))
    }

    /// The reply's words after a function's answer (`told`): its tokens are
    /// favoured, so that a small model quotes the answer rather than
    /// invents one. With the 135M model and the clinic's opening-hours
    /// function, five questions got the function's time in 2 replies
    /// without the bias and in 4 or 5 with it at 1.0 to 2.0.
    fn quoting_sampler(&self, told: &str) -> LlamaSampler {
        let vocab = self.shared.model.vocab();
        let mut tokens = vocab.tokenize(told.as_bytes(), false, false);
        tokens.extend(vocab.tokenize(format!(" {told}").as_bytes(), false, false));
        tokens.sort_by_key(|t| t.0);
        tokens.dedup();
        let bias: Vec<LlamaLogitBias> = tokens
            .into_iter()
            .map(|t| LlamaLogitBias::new(t, QUOTE_BIAS))
            .collect();
        LlamaSampler::chain_simple([
            LlamaSampler::logit_bias(self.shared.model.n_vocab(), &bias),
            self.sampler(),
        ])
    }

    /// The reply's words.
    fn sampler(&self) -> LlamaSampler {
        let s = &self.shared.settings;
        let penalties = LlamaSampler::penalties(self.shared.model.n_vocab(), 64, 1.15, 0.0, 0.0);
        if s.llm_temperature <= 0.0 {
            LlamaSampler::chain_simple([penalties, LlamaSampler::greedy()])
        } else {
            LlamaSampler::chain_simple([
                penalties,
                LlamaSampler::top_k(40),
                LlamaSampler::top_p(0.9, 1),
                LlamaSampler::temp(s.llm_temperature),
                LlamaSampler::dist(s.llm_seed),
            ])
        }
    }
}

impl LocalSession for LlamaSession {
    fn prepare(
        &mut self,
        history: &[ChatMessage],
        pool: &EnginePool,
    ) -> Result<usize, EngineError> {
        // Where the next message starts: where the prompts for two different
        // messages part (a token the template's lead-in shares with the
        // message's first letters is left to the reply).
        let tagged = self.grammar.is_some();
        let next = |text: &str| {
            let mut h = history.to_vec();
            h.push(ChatMessage {
                speaker: Speaker::User,
                text: text.into(),
            });
            self.shared.render(&self.system, &h, true, tagged)
        };
        let (a, b) = (next("a")?, next("b")?);
        let ahead = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        // A conversation that no longer fits loses its oldest exchanges in
        // the reply: evaluated ahead, it would be evaluated again.
        let max_new = self.shared.settings.llm_max_reply_tokens as usize;
        if a.len() + max_new >= self.ctx.n_ctx() as usize {
            return Ok(0);
        }
        let common = self.cached(&a[..ahead]);
        if common >= ahead {
            return Ok(0);
        }
        self.keep(common)?;
        decode_tokens(
            &mut self.ctx,
            &a[common..ahead],
            common,
            Some((pool, self.shared.settings.llm_batch_threads)),
            None,
        )?;
        self.evaluated.extend_from_slice(&a[common..ahead]);
        Ok(ahead - common)
    }

    fn generate(
        &mut self,
        history: &[ChatMessage],
        choice: &ToolChoice,
        pool: &EnginePool,
        on_event: &mut dyn FnMut(LlmEvent) -> ControlFlow<()>,
    ) -> Result<GenerationStats, EngineError> {
        let started = Instant::now();
        let n_ctx = self.ctx.n_ctx() as usize;
        let max_new = self.shared.settings.llm_max_reply_tokens as usize;
        // Oldest exchanges go first when the conversation outgrows the context.
        let mut skip = 0;
        let prompt = loop {
            let tokens =
                self.shared
                    .render(&self.system, &history[skip..], true, self.grammar.is_some())?;
            if tokens.len() + max_new < n_ctx || skip + 1 >= history.len() {
                break tokens;
            }
            skip += 1;
        };
        if prompt.len() + max_new >= n_ctx {
            return Err(EngineError::Llm(format!(
                "the caller's turn alone ({} tokens) does not fit the context of {n_ctx}",
                prompt.len()
            )));
        }
        // At least one token must be decoded to get fresh logits.
        let common = self.cached(&prompt).min(prompt.len() - 1);
        self.keep(common)?;
        // The caller's message ends at the template's last end-of-message
        // token: how likely the model found that token where it stands is
        // its reading of whether the caller has finished. A template that
        // closes no user message (Mistral's `[/INST]`) has its last such
        // token before the caller's message: it gives no reading.
        let vocab = self.shared.model.vocab();
        let message_end = match history[skip..].split_last() {
            Some((last, earlier)) if last.speaker == Speaker::User => {
                let before = self
                    .shared
                    .render(&self.system, earlier, false, self.grammar.is_some())?
                    .len();
                prompt
                    .iter()
                    .rposition(|t| vocab.is_eog(*t))
                    .filter(|&i| i > common.max(before))
            }
            _ => None,
        };
        let turn_ends = decode_tokens(
            &mut self.ctx,
            &prompt[common..],
            common,
            Some((pool, self.shared.settings.llm_batch_threads)),
            message_end.map(|i| i - common),
        )?;
        self.evaluated.extend_from_slice(&prompt[common..]);

        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            reused_tokens: common,
            ..Default::default()
        };
        if let Some(p) = turn_ends
            && on_event(LlmEvent::TurnEnds(p)).is_break()
        {
            return Ok(stats);
        }
        // With actions, the reply opens with its tag; then the words.
        // Told a function's answer and held to words, a small model does
        // better untagged: forced to open with `[answer]`, the 135M one
        // recites its instructions instead of the answer (measured).
        let after_answer = *choice == ToolChoice::None
            && matches!(
                history.last().map(|m| &m.speaker),
                Some(Speaker::ToolResult { .. })
            );
        let tagged = self.grammar.is_some() && !after_answer;
        let mut in_tag = tagged;
        let mut sampler = if tagged {
            self.tag_sampler(&bracket::grammar_for(&self.tools, choice))?
        } else if after_answer {
            let told = history.last().map(|m| plain(&m.text)).unwrap_or_default();
            self.quoting_sampler(&told)
        } else {
            self.sampler()
        };
        let mut brackets = Brackets::new(if tagged { &self.tools } else { &[] });
        let mut pieces = Vec::new();
        let mut pending = Vec::<u8>::new();
        let mut batch = LlamaBatch::new(1, 1);
        let decode_start = Instant::now();
        for _ in 0..max_new {
            // Sampling also accepts the token (grammar, penalties): accepting
            // it again would count it twice and derail the grammar.
            let token = sampler.sample(&self.ctx, -1);
            if vocab.is_eog(token) {
                break;
            }
            stats.tokens += 1;
            pending.extend(vocab.token_to_piece(token, false, None));
            let text = take_utf8(&mut pending);
            if !text.is_empty() {
                stats.first_token.get_or_insert_with(|| started.elapsed());
                pieces.clear();
                brackets.push(&text, &mut pieces);
                // A function's words come after its answer, in the next step.
                let asked = pieces
                    .iter()
                    .any(|p| matches!(p, Piece::Call(c) if !bracket::speaks_after(&c.name)));
                if emit(&mut pieces, on_event).is_break() || asked {
                    break;
                }
                if in_tag && text.contains(']') {
                    in_tag = false;
                    sampler = self.sampler();
                }
            }
            batch.clear();
            batch
                .add(token, self.evaluated.len() as i32, &[SEQ], true)
                .map_err(|e| EngineError::Llm(format!("batch: {e}")))?;
            {
                let _permit = pool.acquire(self.shared.settings.llm_threads);
                self.ctx
                    .decode(&mut batch)
                    .map_err(|e| EngineError::Llm(format!("decode: {e}")))?;
            }
            self.evaluated.push(token);
        }
        stats.decode_time = decode_start.elapsed();
        pieces.clear();
        pieces.extend(brackets.finish());
        let _ = emit(&mut pieces, on_event);
        Ok(stats)
    }
}

fn emit(
    pieces: &mut Vec<Piece>,
    on_event: &mut dyn FnMut(LlmEvent) -> ControlFlow<()>,
) -> ControlFlow<()> {
    for p in pieces.drain(..) {
        let flow = match p {
            Piece::Text(t) => on_event(LlmEvent::Text(t)),
            Piece::Call(c) => on_event(LlmEvent::ToolCall(c)),
            Piece::Malformed(m) => on_event(LlmEvent::Malformed(m)),
            Piece::Stop => ControlFlow::Break(()),
        };
        flow?;
    }
    ControlFlow::Continue(())
}

/// A tool's JSON answer as words a small model reads well: `opens: half
/// past seven`, not braces and quotes.
fn plain(json: &str) -> String {
    fn words(v: &serde_json::Value, out: &mut Vec<String>, key: Option<&str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    words(v, out, Some(k));
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| words(v, out, key)),
            serde_json::Value::String(s) => out.push(match key {
                Some(k) => format!("{} {s}", k.replace('_', " ")),
                None => s.clone(),
            }),
            serde_json::Value::Null => {}
            other => out.push(match key {
                Some(k) => format!("{} {other}", k.replace('_', " ")),
                None => other.to_string(),
            }),
        }
    }
    let mut text = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => {
            let mut out = Vec::new();
            words(&v, &mut out, None);
            out.join(", ")
        }
        Err(_) => json.to_string(),
    };
    // A small context: the answer must leave room for the conversation.
    if text.len() > MAX_TOLD {
        let mut end = MAX_TOLD;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The most of a tool's answer the local model is told (bytes).
const MAX_TOLD: usize = 1024;

/// Splits off the longest valid UTF-8 prefix; a token may end inside a character.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let s = s.to_string();
            bytes.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            let valid = e.valid_up_to();
            let s = String::from_utf8_lossy(&bytes[..valid]).into_owned();
            bytes.drain(..valid);
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::take_utf8;

    #[test]
    fn split_characters_wait_for_their_rest() {
        let mut b = "ok ".as_bytes().to_vec();
        b.extend_from_slice(&"é".as_bytes()[..1]);
        assert_eq!(take_utf8(&mut b), "ok ");
        b.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut b), "é");
        assert!(b.is_empty());
    }
}
