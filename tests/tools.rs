//! An agent's HTTP tools on the real models: the model calls a function of
//! the test's own (a small HTTP service), its answer shapes what the agent
//! says, and a slow function gets the filler phrase and can be talked over.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::llm_server::{self, LlmServer};
use common::*;

/// The clinic's function: answers every request with `body` after `delay`,
/// and keeps what it was sent.
struct Function {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    /// Requests whose caller closed the connection before the answer.
    dropped: Arc<AtomicUsize>,
}

fn function(body: &'static str, delay: Duration) -> Function {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicUsize::new(0));
    let keep = seen.clone();
    let gone = dropped.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let keep = keep.clone();
            let gone = gone.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.read(&mut buf).unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let l = l.to_ascii_lowercase();
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            keep.lock().unwrap().push(text);
                            break;
                        }
                    }
                    if n == 0 {
                        return;
                    }
                }
                // Waits, watching for the caller to hang up on it.
                let until = std::time::Instant::now() + delay;
                while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                    let _ = conn.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    match conn.read(&mut buf) {
                        Ok(0) => {
                            gone.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    Function {
        port,
        seen,
        dropped,
    }
}

fn config_file(dir: &Path, port: u16, filler_after_ms: u32) -> std::path::PathBuf {
    config_file_with(dir, port, filler_after_ms, "")
}

/// The desk agent with its tool; `extra` is added to the file (a backend,
/// the agent's `llm`).
fn config_file_with(
    dir: &Path,
    port: u16,
    filler_after_ms: u32,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("izwi.toml");
    std::fs::write(
        &path,
        format!(
            r#"{extra}
[agents.desk]
language = "en"
system_prompt = "You are the receptionist of Hope Clinic. Answer in one short sentence."
greeting = "Hope Clinic, hello."
tool_choice = "opening_hours"
filler = "One moment please, let me check."
filler_after_ms = {filler_after_ms}

[[agents.desk.tools]]
name = "opening_hours"
description = "the time the clinic opens on a day"
url = "http://127.0.0.1:{port}/hours"
timeout_ms = 10000
parameters = {{ type = "object", properties = {{ day = {{ type = "string", enum = ["monday", "tuesday", "saturday"] }} }}, required = ["day"] }}
"#
        ),
    )
    .unwrap();
    path
}

/// `izwi talk` with the desk agent: the turns (JSON), the agent's audio and
/// what it printed.
fn talk(config: &Path, caller: &[f32], fast: bool) -> (Vec<serde_json::Value>, Vec<f32>, String) {
    let mut args = vec!["--config", config.to_str().unwrap(), "--agent", "desk"];
    if fast {
        args.push("--fast");
    }
    let t = izwi_talk(config.parent().unwrap(), caller, &args, &[]);
    (t.turns, t.agent, t.stdout)
}

#[test]
fn the_model_calls_the_clinic_s_function_and_its_answer_shapes_the_reply() {
    let _one = one_at_a_time();
    let f = function(r#"{"opens": "half past seven"}"#, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), f.port, 5000);
    let question = espeak("When do you open on Monday?");
    let ask = 3.0;
    let end = ask + duration(&question);
    let caller = compose(end + 8.0, &[(ask, &question)]);
    let (turns, agent, stdout) = talk(&config, &caller, true);

    // The function got one call, with arguments its schema allows.
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{stdout}");
    assert!(seen[0].starts_with("POST /hours "), "{}", seen[0]);
    let body: serde_json::Value =
        serde_json::from_str(seen[0].split_once("\r\n\r\n").unwrap().1).unwrap();
    let day = body["day"].as_str().unwrap_or_default();
    assert!(["monday", "tuesday", "saturday"].contains(&day), "{body}");

    assert_eq!(turns.len(), 1, "{stdout}");
    assert_eq!(turns[0]["outcome"], "answered", "{stdout}");
    assert_eq!(turns[0]["tools"][0]["name"], "opening_hours", "{stdout}");
    assert_eq!(turns[0]["tools"][0]["outcome"], "done", "{stdout}");
    // What the function said is what the caller hears.
    let reply = heard(&agent, end, end + 8.0);
    assert!(
        reply.contains("half past") && (reply.contains("seven") || reply.contains('7')),
        "the function's answer is not in the reply: {reply:?}"
    );
}

#[test]
fn a_slow_function_gets_the_filler_and_the_caller_can_talk_over_it() {
    let _one = one_at_a_time();
    let f = function(r#"{"opens": "half past seven"}"#, Duration::from_secs(7));
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), f.port, 400);
    let question = espeak("When do you open on Monday?");
    let again = espeak("Hello? Are you still there?");
    let ask = 3.0;
    let end = ask + duration(&question);
    // Room for the endpoint, recognition, the model's call and the filler's
    // voice on a busy 2-core machine; the function is still running then.
    let barge = end + 3.5;
    let caller = compose(
        barge + duration(&again) + 14.0,
        &[(ask, &question), (barge, &again)],
    );
    // In real time: the filler waits on the wall clock, as a caller does.
    let (turns, agent, stdout) = talk(&config, &caller, false);
    let filler = heard(&agent, end, barge);
    assert!(
        filler.contains("moment"),
        "no filler while the function ran: {filler:?}\n{stdout}"
    );
    assert!(turns.len() >= 2, "{stdout}");
    assert_eq!(turns[0]["tools"][0]["outcome"], "interrupted", "{stdout}");
    assert!(turns[0]["tools"][0]["duration_ms"].is_null(), "{stdout}");
    // The call went on: the next turn called it again and got its answer.
    assert_eq!(turns[1]["tools"][0]["outcome"], "done", "{stdout}");
    assert!(f.seen.lock().unwrap().len() >= 2);
    // At least the request talked over was aborted (on a busy machine the
    // caller's words can also end another reply's call).
    assert!(
        f.dropped.load(Ordering::SeqCst) >= 1,
        "the request talked over was not aborted"
    );
}

/// The same through an OpenAI-compatible server (llama-cpp-python, its
/// function-calling chat format): the tool and the forced choice go out in
/// the request, the server's streamed call is checked and run, and its
/// answer goes back as a `tool` message in a second request.
#[test]
fn a_server_model_calls_the_function_through_the_openai_api() {
    let _one = one_at_a_time();
    let server = LlmServer::start_with(&["--chat_format", "chatml-function-calling"]);
    let f = function(r#"{"opens": "half past seven"}"#, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let backend = format!(
        "[llm.server]\nbase_url = \"{}\"\nmodel = \"{}\"\napi_key = \"{}\"\ntemperature = 0.0\nmax_tokens = 40\n\
         first_token_timeout_ms = 60000\nidle_timeout_ms = 30000\n",
        server.base_url(),
        llm_server::MODEL,
        llm_server::KEY
    );
    let config = config_file_with(dir.path(), f.port, 5000, &backend);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[agents.desk]\n", "[agents.desk]\nllm = \"server\"\n");
    std::fs::write(&config, text).unwrap();
    let question = espeak("When do you open on Monday?");
    let caller = compose(3.0 + duration(&question) + 8.0, &[(3.0, &question)]);
    let (turns, _, stdout) = talk(&config, &caller, true);
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{stdout}\n{}", server.log());
    let body: serde_json::Value =
        serde_json::from_str(seen[0].split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(
        ["monday", "tuesday", "saturday"].contains(&body["day"].as_str().unwrap_or_default()),
        "{body}"
    );
    assert_eq!(turns[0]["tools"][0]["outcome"], "done", "{stdout}");
    assert_eq!(turns[0]["outcome"], "answered", "{stdout}");
    assert_eq!(server.requests(200), 2, "{}", server.log());
}
