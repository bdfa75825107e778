//! Tools: HTTP functions an agent's model may call. Each is configured per
//! agent (name, description, JSON-schema parameters, URL, method, headers,
//! timeout). A call the model asks for is checked against the schema before
//! anything is sent; the function's JSON answer goes back to the model. No
//! argument or result is logged or recorded: only the tool's name, how long
//! it took and how it ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::config::ToolConfig;
use crate::engine::ToolSpec;

/// A function's answer beyond this is refused: it goes into a prompt.
const MAX_RESULT_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("tool `{tool}`: {message}")]
    Config { tool: String, message: String },
}

/// How a tool call ended (the record's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutcome {
    Done,
    /// Not sent: the arguments broke the schema, or no such tool.
    Refused,
    /// The function answered with an error status, or not with JSON.
    Failed,
    Timeout,
    /// The caller spoke over it (or hung up) before it answered.
    Interrupted,
}

impl ToolOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ToolOutcome::Done => "done",
            ToolOutcome::Refused => "refused",
            ToolOutcome::Failed => "failed",
            ToolOutcome::Timeout => "timeout",
            ToolOutcome::Interrupted => "interrupted",
        }
    }
}

/// What a call gave: the JSON the model reads, and how it ended.
#[derive(Debug, Clone)]
pub struct ToolAnswer {
    pub outcome: ToolOutcome,
    pub result: Value,
    pub took: Duration,
}

struct HttpTool {
    config: ToolConfig,
    validator: jsonschema::Validator,
    headers: HeaderMap,
}

/// One agent's tools, ready to call.
#[derive(Default)]
pub struct Toolbox {
    tools: BTreeMap<String, HttpTool>,
    client: Option<reqwest::Client>,
}

impl Toolbox {
    /// Compiles the schemas and reads the secret headers' variables.
    pub fn new(configs: &[ToolConfig]) -> Result<Toolbox, ToolError> {
        let mut tools = BTreeMap::new();
        for c in configs {
            let bad = |message: String| ToolError::Config {
                tool: c.name.clone(),
                message,
            };
            let validator = jsonschema::validator_for(&c.parameters)
                .map_err(|e| bad(format!("parameters: {e}")))?;
            let mut headers = HeaderMap::new();
            let secrets = c.secret_headers.iter().map(|(name, var)| {
                std::env::var(var).map(|v| (name, v)).map_err(|_| {
                    bad(format!(
                        "secret_headers.{name}: the environment variable `{var}` is not set"
                    ))
                })
            });
            let plain = c.headers.iter().map(|(n, v)| Ok((n, v.clone())));
            for header in plain.chain(secrets) {
                let (name, value) = header?;
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(format!("`{name}` is not a header name")))?;
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| bad(format!("header `{name}`: not a valid value")))?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            tools.insert(
                c.name.clone(),
                HttpTool {
                    config: c.clone(),
                    validator,
                    headers,
                },
            );
        }
        let client = if tools.is_empty() {
            None
        } else {
            Some(
                crate::engine::remote::client(Duration::from_secs(5)).map_err(|e| {
                    ToolError::Config {
                        tool: "*".into(),
                        message: e.to_string(),
                    }
                })?,
            )
        };
        Ok(Toolbox { tools, client })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// What the model is told of each tool.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .values()
            .map(|t| ToolSpec {
                name: t.config.name.clone(),
                description: t.config.description.clone(),
                parameters: t.config.parameters.clone(),
            })
            .collect()
    }

    /// Checks the model's arguments, calls the function, and gives back
    /// what the model should read. Dropping the future aborts the request.
    pub async fn call(&self, name: &str, arguments: &Value) -> ToolAnswer {
        let t = Instant::now();
        let answer = |outcome, result| ToolAnswer {
            outcome,
            result,
            took: t.elapsed(),
        };
        let (Some(tool), Some(client)) = (self.tools.get(name), &self.client) else {
            return answer(
                ToolOutcome::Refused,
                json!({"error": format!("there is no tool named {name}")}),
            );
        };
        if let Err(e) = tool.validator.validate(arguments) {
            // The model's own words back to it, so that it can ask again.
            return answer(
                ToolOutcome::Refused,
                json!({"error": format!("the arguments do not match the tool's parameters: {e}")}),
            );
        }
        let c = &tool.config;
        let request = if c.method.eq_ignore_ascii_case("GET") {
            let query: Vec<(String, String)> = arguments
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect();
            client.get(&c.url).query(&query)
        } else {
            client.post(&c.url).json(arguments)
        };
        let request = request
            .headers(tool.headers.clone())
            .timeout(Duration::from_millis(c.timeout_ms));
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return answer(
                    ToolOutcome::Timeout,
                    json!({"error": "the tool did not answer in time"}),
                );
            }
            Err(_) => {
                return answer(
                    ToolOutcome::Failed,
                    json!({"error": "the tool could not be reached"}),
                );
            }
        };
        let status = response.status();
        let body = read_bounded(response).await;
        match body {
            Err(Bounded::Timeout) => answer(
                ToolOutcome::Timeout,
                json!({"error": "the tool did not answer in time"}),
            ),
            Err(_) => answer(
                ToolOutcome::Failed,
                json!({"error": "the tool's answer could not be read"}),
            ),
            Ok(_) if !status.is_success() => answer(
                ToolOutcome::Failed,
                json!({"error": format!("the tool failed (HTTP {})", status.as_u16())}),
            ),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => answer(ToolOutcome::Done, v),
                Err(_) => answer(
                    ToolOutcome::Failed,
                    json!({"error": "the tool did not answer with JSON"}),
                ),
            },
        }
    }
}

enum Bounded {
    Timeout,
    TooLarge,
    Broken,
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, Bounded> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESULT_BYTES {
                    return Err(Bounded::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(Bounded::Timeout),
            Err(_) => return Err(Bounded::Broken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    /// A function that answers every request with `status` and `body`
    /// after `delay`, and keeps the requests it got.
    async fn function(
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/f", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let Some(request) = crate::engine::remote::read_request(&mut conn).await else {
                        return;
                    };
                    keep.lock().unwrap().push(request);
                    tokio::time::sleep(delay).await;
                    let _ = conn
                        .write_all(
                            format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (url, seen)
    }

    fn tool(url: &str, method: &str) -> ToolConfig {
        ToolConfig {
            name: "opening_hours".into(),
            description: "When the clinic opens on a day".into(),
            parameters: json!({"type": "object",
                "properties": {"day": {"type": "string", "enum": ["monday", "saturday"]}},
                "required": ["day"]}),
            url: url.into(),
            method: method.into(),
            headers: [("X-Clinic".to_string(), "hope".to_string())].into(),
            // A variable every process has: tests must not set variables.
            secret_headers: [("X-Secret".to_string(), "HOME".to_string())].into(),
            timeout_ms: 500,
        }
    }

    #[tokio::test]
    async fn a_valid_call_is_sent_and_its_json_answer_comes_back() {
        let (url, seen) = function(200, r#"{"opens":"07:30"}"#, Duration::ZERO).await;
        let post = Toolbox::new(&[tool(&url, "POST")]).unwrap();
        assert_eq!(post.specs()[0].name, "opening_hours");
        let a = post.call("opening_hours", &json!({"day": "monday"})).await;
        assert_eq!(a.outcome, ToolOutcome::Done);
        assert_eq!(a.result, json!({"opens": "07:30"}));
        let get = Toolbox::new(&[tool(&url, "GET")]).unwrap();
        let a = get.call("opening_hours", &json!({"day": "saturday"})).await;
        assert_eq!(a.outcome, ToolOutcome::Done);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].starts_with("POST /f "), "{}", seen[0]);
        assert!(seen[0].ends_with(r#"{"day":"monday"}"#), "{}", seen[0]);
        let head = seen[0].to_ascii_lowercase();
        let home = std::env::var("HOME").unwrap().to_ascii_lowercase();
        assert!(head.contains("x-clinic: hope") && head.contains(&format!("x-secret: {home}")));
        assert!(seen[1].starts_with("GET /f?day=saturday "), "{}", seen[1]);
    }

    #[tokio::test]
    async fn a_call_that_breaks_the_schema_is_refused_and_never_sent() {
        let (url, seen) = function(200, "{}", Duration::ZERO).await;
        let tools = Toolbox::new(&[tool(&url, "POST")]).unwrap();
        for bad in [
            json!({"day": "sunday"}),
            json!({}),
            json!({"day": 3}),
            json!("monday"),
        ] {
            let a = tools.call("opening_hours", &bad).await;
            assert_eq!(a.outcome, ToolOutcome::Refused, "{bad}");
            assert!(a.result["error"].as_str().unwrap().contains("do not match"));
        }
        let a = tools.call("launch_missiles", &json!({})).await;
        assert_eq!(a.outcome, ToolOutcome::Refused);
        assert!(seen.lock().unwrap().is_empty(), "a refused call was sent");
    }

    #[tokio::test]
    async fn errors_slowness_and_non_json_are_told_apart() {
        let args = json!({"day": "monday"});
        let (url, _) = function(500, r#"{"detail":"boom"}"#, Duration::ZERO).await;
        let a = Toolbox::new(&[tool(&url, "POST")])
            .unwrap()
            .call("opening_hours", &args)
            .await;
        assert_eq!(a.outcome, ToolOutcome::Failed);
        assert!(a.result["error"].as_str().unwrap().contains("500"));
        let (url, _) = function(200, "<html>", Duration::ZERO).await;
        let a = Toolbox::new(&[tool(&url, "POST")])
            .unwrap()
            .call("opening_hours", &args)
            .await;
        assert_eq!(a.outcome, ToolOutcome::Failed);
        let (url, _) = function(200, "{}", Duration::from_secs(2)).await;
        let a = Toolbox::new(&[tool(&url, "POST")])
            .unwrap()
            .call("opening_hours", &args)
            .await;
        assert_eq!(a.outcome, ToolOutcome::Timeout);
        assert!(a.took < Duration::from_secs(1), "{:?}", a.took);
    }

    #[test]
    fn a_missing_secret_is_named() {
        let mut t = tool("http://127.0.0.1:9/f", "POST");
        t.secret_headers = [("X-Secret".to_string(), "IZWI_TOOL_TEST_UNSET".to_string())].into();
        let e = Toolbox::new(&[t]).err().unwrap().to_string();
        assert!(
            e.contains("IZWI_TOOL_TEST_UNSET") && e.contains("opening_hours"),
            "{e}"
        );
    }
}
