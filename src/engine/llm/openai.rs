//! A language model behind an OpenAI-compatible `/v1/chat/completions`
//! endpoint (vLLM, llama.cpp's `llama-server`, llama-cpp-python's server,
//! OpenAI), streamed as server-sent events. A reply is one request; dropping
//! the reply drops the response and so closes its connection, which is how
//! such servers learn to stop generating.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::RemoteLlmConfig;
use crate::engine::remote::{self, sse};
use crate::engine::{
    ChatMessage, EngineError, GenerationStats, Llm, LlmEvent, LlmReply, LlmSession, RemoteFailure,
    Speaker, ToolCall, ToolChoice, ToolSpec,
};

/// A reply's words beyond this are cut: `max_tokens` bounds an honest
/// server, this a broken one.
const MAX_REPLY_BYTES: usize = 64 * 1024;

struct Backend {
    endpoint: remote::Endpoint,
    config: RemoteLlmConfig,
}

pub struct OpenAiLlm {
    backend: Arc<Backend>,
}

impl OpenAiLlm {
    pub fn new(name: &str, config: &RemoteLlmConfig) -> Result<OpenAiLlm, EngineError> {
        Ok(OpenAiLlm {
            backend: Arc::new(Backend {
                endpoint: remote::Endpoint::new(
                    "llm",
                    name,
                    &config.base_url,
                    "chat/completions",
                    config.key(),
                    config.connect_timeout_ms,
                )?,
                config: config.clone(),
            }),
        })
    }
}

impl Llm for OpenAiLlm {
    fn session(
        &self,
        system_prompt: String,
        tools: Vec<ToolSpec>,
    ) -> BoxFuture<'static, Result<Arc<dyn LlmSession>, EngineError>> {
        let session: Arc<dyn LlmSession> = Arc::new(OpenAiSession {
            backend: self.backend.clone(),
            system_prompt,
            tools,
        });
        Box::pin(async move { Ok(session) })
    }
}

struct OpenAiSession {
    backend: Arc<Backend>,
    system_prompt: String,
    tools: Vec<ToolSpec>,
}

impl LlmSession for OpenAiSession {
    fn reply(&self, history: Vec<ChatMessage>, choice: ToolChoice) -> LlmReply {
        let body = request_body(
            &self.backend.config,
            &self.system_prompt,
            &self.tools,
            &choice,
            &history,
        );
        let reading = Reading::new(self.backend.clone(), body);
        futures_util::stream::unfold(reading, |mut r| async move {
            r.next().await.map(|event| (event, r))
        })
        .boxed()
    }
}

/// The request: the conversation as OpenAI chat messages, streamed.
fn request_body(
    config: &RemoteLlmConfig,
    system_prompt: &str,
    tools: &[ToolSpec],
    choice: &ToolChoice,
    history: &[ChatMessage],
) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system_prompt})];
    // The newest exchanges that fit the configured number of messages,
    // starting at the caller's words (a tool's answer never loses its call).
    let user = |m: &ChatMessage| m.speaker == Speaker::User;
    let mut from = history.len().saturating_sub(config.max_history_messages);
    match history[from..].iter().position(user) {
        Some(i) => from += i,
        // The caller's last words come before the tail: the turn goes whole.
        None => from = history[..from].iter().rposition(user).unwrap_or(0),
    }
    for m in &history[from..] {
        match &m.speaker {
            Speaker::User => messages.push(json!({"role": "user", "content": m.text})),
            Speaker::Assistant => messages.push(json!({"role": "assistant", "content": m.text})),
            // One assistant message holds the words said before the calls
            // and the calls (strict templates want roles to alternate).
            // Content "" rather than null: some servers want a string.
            Speaker::ToolCall { id, name } => {
                let call = json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": m.text}});
                let last = messages.last_mut().filter(|l| l["role"] == "assistant");
                match last {
                    Some(l) if l["tool_calls"].is_array() => {
                        if let Some(calls) = l["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    Some(l) => l["tool_calls"] = json!([call]),
                    None => messages
                        .push(json!({"role": "assistant", "content": "", "tool_calls": [call]})),
                }
            }
            Speaker::ToolResult { id, .. } => {
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": m.text}))
            }
        }
    }
    let mut body = json!({
        "model": config.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": config.max_tokens,
    });
    if let Some(t) = config.temperature {
        body["temperature"] = json!(t);
    }
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    body
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Delta {
    content: Option<String>,
    /// Some servers send `null` for none.
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: usize,
    #[serde(default)]
    completion_tokens: usize,
}

/// A reply being read, event by event.
struct Reading {
    backend: Arc<Backend>,
    body: Option<Value>,
    response: Option<reqwest::Response>,
    decoder: sse::Decoder,
    /// Tool calls as their pieces arrive, by index: name and arguments so far.
    calls: BTreeMap<usize, (String, String)>,
    ready: VecDeque<LlmEvent>,
    stats: GenerationStats,
    started: Instant,
    first_event: Option<Instant>,
    /// Bytes of words so far, and the pieces they came in.
    words: usize,
    pieces: usize,
    finished: bool,
    done: bool,
}

impl Reading {
    fn new(backend: Arc<Backend>, body: Value) -> Reading {
        Reading {
            backend,
            body: Some(body),
            response: None,
            decoder: sse::Decoder::default(),
            calls: BTreeMap::new(),
            ready: VecDeque::new(),
            stats: GenerationStats::default(),
            started: Instant::now(),
            first_event: None,
            words: 0,
            pieces: 0,
            finished: false,
            done: false,
        }
    }

    fn fail(&mut self, kind: RemoteFailure, detail: impl Into<String>) -> EngineError {
        self.done = true;
        remote::failure(&self.backend.endpoint.name, kind, detail)
    }

    /// How long the next read may take: up to the first-token deadline,
    /// then the idle limit.
    fn patience(&self) -> Duration {
        let c = &self.backend.config;
        match self.first_event {
            None => Duration::from_millis(c.first_token_timeout_ms)
                .saturating_sub(self.started.elapsed()),
            Some(_) => Duration::from_millis(c.idle_timeout_ms),
        }
    }

    async fn next(&mut self) -> Option<Result<LlmEvent, EngineError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.read().await {
                return Some(Err(e));
            }
        }
    }

    /// Reads on until something is ready or the reply is over.
    async fn read(&mut self) -> Result<(), EngineError> {
        if let Some(body) = self.body.take() {
            self.started = Instant::now();
            let request = self.backend.endpoint.post().json(&body);
            let response = match tokio::time::timeout(self.patience(), request.send()).await {
                Err(_) => {
                    return Err(self.fail(RemoteFailure::Timeout, "no response in time"));
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(remote::transport_failure(&self.backend.endpoint.name, &e));
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if !status.is_success() {
                // The body may echo the request (the caller's words): not kept.
                return Err(self.fail(
                    RemoteFailure::Status(status.as_u16()),
                    status.canonical_reason().unwrap_or("error").to_string(),
                ));
            }
            self.response = Some(response);
            return Ok(());
        }
        let patience = self.patience();
        let Some(response) = self.response.as_mut() else {
            self.done = true;
            return Ok(());
        };
        let chunk = match tokio::time::timeout(patience, response.chunk()).await {
            Err(_) => {
                let phase = if self.first_event.is_none() {
                    "no first token in time"
                } else {
                    "the stream stalled"
                };
                return Err(self.fail(RemoteFailure::Timeout, phase));
            }
            Ok(Err(e)) => {
                self.done = true;
                return Err(remote::transport_failure(&self.backend.endpoint.name, &e));
            }
            Ok(Ok(chunk)) => chunk,
        };
        let Some(bytes) = chunk else {
            // The body ended. Servers end with `[DONE]`; a finish reason
            // without it is accepted, nothing at all is not.
            if !self.finished {
                return Err(self.fail(RemoteFailure::Malformed, "the stream ended early"));
            }
            self.finish();
            return Ok(());
        };
        let events = match self.decoder.push(&bytes) {
            Ok(events) => events,
            Err(e) => return Err(self.fail(RemoteFailure::Malformed, e.to_string())),
        };
        for event in events {
            if self.done {
                break;
            }
            self.event(&event.data)?;
        }
        Ok(())
    }

    fn event(&mut self, data: &str) -> Result<(), EngineError> {
        if data.trim() == "[DONE]" {
            self.finish();
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| self.fail(RemoteFailure::Malformed, format!("a chunk: {e}")))?;
        if chunk.error.is_some() {
            return Err(self.fail(
                RemoteFailure::Malformed,
                "the server reported an error in the stream",
            ));
        }
        if let Some(u) = chunk.usage {
            self.stats.prompt_tokens = u.prompt_tokens;
            self.stats.tokens = u.completion_tokens;
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(());
        };
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            let now = Instant::now();
            self.first_event.get_or_insert(now);
            self.stats
                .first_token
                .get_or_insert_with(|| now - self.started);
            self.words += text.len();
            self.pieces += 1;
            if self.words > MAX_REPLY_BYTES {
                tracing::warn!(backend = %self.backend.endpoint.name, "a reply longer than {MAX_REPLY_BYTES} bytes was cut");
                self.finish();
                return Ok(());
            }
            self.ready.push_back(LlmEvent::Text(text));
        }
        for call in choice.delta.tool_calls.unwrap_or_default() {
            self.first_event.get_or_insert_with(Instant::now);
            if self.calls.len() >= 8 && !self.calls.contains_key(&call.index) {
                continue;
            }
            let entry = self.calls.entry(call.index).or_default();
            if let Some(f) = call.function {
                // OpenAI names the function in the first piece only; some
                // servers (llama-cpp-python) repeat it in every piece.
                match f.name.as_deref() {
                    Some(n) if entry.0.is_empty() || entry.0 != n => entry.0.push_str(n),
                    _ => {}
                }
                if entry.1.len() < MAX_REPLY_BYTES {
                    entry.1.push_str(f.arguments.as_deref().unwrap_or(""));
                }
            }
        }
        if choice.finish_reason.is_some() {
            self.finished = true;
            self.flush_calls();
        }
        Ok(())
    }

    /// The tool calls pieced together, each once.
    fn flush_calls(&mut self) {
        for (_, (name, arguments)) in std::mem::take(&mut self.calls) {
            let arguments = if arguments.trim().is_empty() {
                Ok(json!({}))
            } else {
                serde_json::from_str::<Value>(&arguments)
            };
            self.ready.push_back(match arguments {
                Ok(arguments) if !name.is_empty() => {
                    LlmEvent::ToolCall(ToolCall { name, arguments })
                }
                _ => LlmEvent::Malformed(name),
            });
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.flush_calls();
        if let Some(first) = self.first_event {
            self.stats.decode_time = first.elapsed();
        }
        if self.stats.tokens == 0 {
            // No usage reported: the number of pieces streamed stands in.
            self.stats.tokens = self.pieces;
        }
        self.ready
            .push_back(LlmEvent::Done(std::mem::take(&mut self.stats)));
        self.done = true;
        self.response = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that answers one request with `response` (raw HTTP), then
    /// holds the connection for `hold`; returns its base URL and the request.
    async fn serve_once(
        response: String,
        hold: Duration,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let request = remote::read_request(&mut conn).await.unwrap();
            conn.write_all(response.as_bytes()).await.unwrap();
            tokio::time::sleep(hold).await;
            request
        });
        (url, task)
    }

    fn sse(events: &[&str]) -> String {
        let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn config(url: &str) -> RemoteLlmConfig {
        RemoteLlmConfig {
            base_url: url.into(),
            model: "m".into(),
            api_key: "k".into(),
            api_key_env: String::new(),
            max_tokens: 50,
            temperature: Some(0.0),
            connect_timeout_ms: 500,
            first_token_timeout_ms: 1000,
            idle_timeout_ms: 300,
            max_history_messages: 24,
            fallback: Default::default(),
        }
    }

    async fn collect(url: &str, name: &str, tools: Vec<ToolSpec>) -> Vec<Result<LlmEvent, String>> {
        let llm = OpenAiLlm::new(name, &config(url)).unwrap();
        let session = llm.session("be brief".into(), tools).await.unwrap();
        let history = vec![ChatMessage {
            speaker: Speaker::User,
            text: "hello".into(),
        }];
        session
            .reply(history, ToolChoice::Auto)
            .map(|e| e.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn words_and_a_tool_call_in_pieces_stream_out() {
        let (url, server) = serve_once(
            sse(&[
                r#"{"choices":[{"delta":{"role":"assistant","content":null,"tool_calls":null}}]}"#,
                r#"{"choices":[{"delta":{"content":"One "}}]}"#,
                r#"{"choices":[{"delta":{"content":"moment."}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"transfer","arguments":"{\"to\":"}}]}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"transfer","arguments":"\"nurse\"}"}}]}}]}"#,
                r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
                r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
                "[DONE]",
            ]),
            Duration::ZERO,
        )
        .await;
        let tool = ToolSpec {
            name: "transfer".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        };
        let events = collect(&url, "t1", vec![tool]).await;
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions "),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer k")
        );
        let body: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "hello");
        assert_eq!(body["tools"][0]["function"]["name"], "transfer");
        let events: Vec<LlmEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events[0], LlmEvent::Text("One ".into()));
        assert_eq!(events[1], LlmEvent::Text("moment.".into()));
        assert_eq!(
            events[2],
            LlmEvent::ToolCall(ToolCall {
                name: "transfer".into(),
                arguments: json!({"to": "nurse"})
            })
        );
        let LlmEvent::Done(stats) = &events[3] else {
            panic!("{events:?}")
        };
        assert_eq!((stats.prompt_tokens, stats.tokens), (12, 7));
        assert!(stats.first_token.is_some());
        assert_eq!(events.len(), 4);
    }

    #[tokio::test]
    async fn failures_are_typed_and_counted() {
        let count = |name: &str, kind: &str| {
            let text = crate::metrics::metrics().encode();
            text.lines()
                .find(|l| {
                    l.starts_with("izwi_engine_failures_total")
                        && l.contains(&format!("backend=\"{name}\""))
                        && l.contains(&format!("kind=\"{kind}\""))
                })
                .map_or(0.0, |l| {
                    l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
                })
        };
        // A 500: its body (which may echo the prompt) is not in the error.
        let body = "{\"error\":\"hello was bad\"}";
        let (url, _s) = serve_once(
            format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            Duration::ZERO,
        )
        .await;
        let events = collect(&url, "f500", Vec::new()).await;
        let [Err(e)] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(
            e.contains("f500") && e.contains("500") && !e.contains("hello"),
            "{e}"
        );
        assert_eq!(count("f500", "status_5xx"), 1.0);

        // Nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let events = collect(&format!("http://127.0.0.1:{port}/v1"), "fdown", Vec::new()).await;
        assert!(matches!(&events[..], [Err(_)]), "{events:?}");
        assert_eq!(count("fdown", "connect"), 1.0);

        // A first word, then the stream stalls past the idle limit.
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let (url, _s) = serve_once(
            format!("{head}{:x}\r\n{chunk}\r\n", chunk.len()),
            Duration::from_secs(3),
        )
        .await;
        let events = collect(&url, "fstall", Vec::new()).await;
        assert_eq!(events[0], Ok(LlmEvent::Text("Hi".into())));
        assert!(
            matches!(&events[1..], [Err(e)] if e.contains("stalled")),
            "{events:?}"
        );
        assert_eq!(count("fstall", "timeout"), 1.0);

        // A stream cut off before it finished, and one that is not JSON.
        let (url, _s) = serve_once(
            sse(&[r#"{"choices":[{"delta":{"content":"Hi"}}]}"#]),
            Duration::ZERO,
        )
        .await;
        let events = collect(&url, "fcut", Vec::new()).await;
        assert!(
            matches!(&events[..], [Ok(_), Err(e)] if e.contains("ended early")),
            "{events:?}"
        );
        let (url, _s) = serve_once(sse(&["<html>"]), Duration::ZERO).await;
        let events = collect(&url, "fjunk", Vec::new()).await;
        assert!(matches!(&events[..], [Err(_)]), "{events:?}");
        assert_eq!(
            count("fcut", "malformed") + count("fjunk", "malformed"),
            2.0
        );
    }

    #[test]
    fn the_history_is_cut_at_a_turn_and_a_tool_call_rides_with_its_words() {
        let m = |speaker: Speaker, text: &str| ChatMessage {
            speaker,
            text: text.into(),
        };
        let call = |id: &str| Speaker::ToolCall {
            id: id.into(),
            name: "hours".into(),
        };
        let result = |id: &str| Speaker::ToolResult {
            id: id.into(),
            name: "hours".into(),
        };
        let history = vec![
            m(Speaker::User, "hi"),
            m(Speaker::Assistant, "hello"),
            m(Speaker::User, "when do you open"),
            m(Speaker::Assistant, "Let me check."),
            m(call("call00000"), r#"{"day":"monday"}"#),
            m(call("call00001"), r#"{"day":"tuesday"}"#),
            m(result("call00000"), r#"{"opens":"8"}"#),
            m(result("call00001"), r#"{"opens":"9"}"#),
        ];
        let mut c = config("http://x/v1");
        c.max_history_messages = 4;
        let body = request_body(&c, "sys", &[], &ToolChoice::Auto, &history);
        let msgs = body["messages"].as_array().unwrap();
        // system; the last turn whole though longer than 4; one assistant
        // message with its words and both calls; the two answers.
        let roles: Vec<_> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "tool"],
            "{body}"
        );
        assert_eq!(msgs[1]["content"], "when do you open");
        assert_eq!(msgs[2]["content"], "Let me check.");
        assert_eq!(msgs[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[2]["tool_calls"][1]["id"], "call00001");
        assert_eq!(msgs[4]["tool_call_id"], "call00001");
        c.max_history_messages = 24;
        let all = request_body(&c, "sys", &[], &ToolChoice::Auto, &history);
        assert_eq!(all["messages"].as_array().unwrap().len(), 7);
        assert!(
            all.get("tools").is_none(),
            "no tools, no tool_choice: {all}"
        );
    }

    #[tokio::test]
    async fn a_malformed_tool_call_is_refused_not_run() {
        let (url, _s) = serve_once(
            sse(&[
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"end_call","arguments":"{\"x\":"}}]},"finish_reason":"tool_calls"}]}"#,
                "[DONE]",
            ]),
            Duration::ZERO,
        )
        .await;
        let events = collect(&url, "fmal", Vec::new()).await;
        assert_eq!(events[0], Ok(LlmEvent::Malformed("end_call".into())));
        assert!(matches!(events[1], Ok(LlmEvent::Done(_))));
    }
}
