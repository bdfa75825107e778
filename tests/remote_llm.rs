//! Agents whose language model is a real OpenAI-compatible server
//! (llama-cpp-python's, from PyPI): a spoken question answered through
//! `izwi talk` and over a SIP call from baresip, a barge-in that closes the
//! server's request, and the failure policy (fallback phrase or local model)
//! when the server is down or refuses.

mod common;

use std::path::Path;
use std::time::Duration;

use common::attack::{metric, metrics};
use common::llm_server::{self, LlmServer};
use common::sip_peer::*;
use common::*;
use izwi::audio::ENGINE_RATE;

const PROMPT: &str = "You are Izwi, a friendly phone assistant. Answer in one or two short \
                      spoken sentences.";
/// The variable the configuration names for the server's key.
const KEY_VAR: &str = "LLM_SERVER_KEY";

/// A configuration with backends `server` (the real one), `wrong_key` (the
/// same, refused), `down` (nothing listens) and `down_local` (down, the
/// local model stands in), and an agent on each.
fn config_file(dir: &Path, server: &LlmServer) -> std::path::PathBuf {
    let closed = free_tcp_port();
    let base = server.base_url();
    let mut text = format!(
        r#"
[llm.server]
base_url = "{base}"
model = "{model}"
api_key_env = "{KEY_VAR}"
temperature = 0.0
max_tokens = 60
# The tests share 2 cores with other tests' servers and models.
first_token_timeout_ms = 60000
idle_timeout_ms = 30000

[llm.wrong_key]
base_url = "{base}"
model = "{model}"
api_key = "not-the-key"

[llm.down]
base_url = "http://127.0.0.1:{closed}/v1"
model = "x"
connect_timeout_ms = 500

[llm.down_local]
base_url = "http://127.0.0.1:{closed}/v1"
model = "x"
fallback = "local"
"#,
        model = llm_server::MODEL
    );
    for (agent, llm) in [
        ("remote", "server"),
        ("wrong_key", "wrong_key"),
        ("down", "down"),
        ("down_local", "down_local"),
    ] {
        text.push_str(&format!(
            "\n[agents.{agent}]\nlanguage = \"en\"\nllm = \"{llm}\"\nsystem_prompt = \"{PROMPT}\"\ngreeting = \"Hello.\"\n"
        ));
    }
    let path = dir.join("izwi.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The caller: the greeting heard, then each question in turn, with room
/// for the answer after each.
fn caller(questions: &[&str]) -> (Vec<f32>, Vec<(f64, f64)>) {
    asking(2.5, questions, 7.0)
}

/// `izwi talk` with `agent` (the server's key in the environment).
fn talk(config: &Path, agent: &str, audio: &[f32]) -> Talked {
    izwi_talk(
        config.parent().unwrap(),
        audio,
        &[
            "--config",
            config.to_str().unwrap(),
            "--agent",
            agent,
            "--fast",
        ],
        &[(KEY_VAR, llm_server::KEY)],
    )
}

fn config_profile() -> String {
    config().models.profile
}

#[test]
fn izwi_talk_asks_the_server_and_speaks_its_answer() {
    let server = LlmServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server);
    let (audio, spans) = caller(&["What is the capital city of France?"]);
    let Talked {
        stdout,
        turns,
        agent,
    } = talk(&config, "remote", &audio);
    assert_eq!(turns.len(), 1, "{stdout}");
    let t = &turns[0];
    assert_eq!(t["outcome"], "answered", "{t}");
    assert!(t["words_generated"].as_u64().unwrap() >= 3, "{t}");
    assert!(t["llm_first_token_ms"].as_f64().unwrap() > 0.0, "{t}");
    assert_eq!(server.requests(200), 1, "{}", server.log());
    let answer = heard(&agent, spans[0].1, spans[0].1 + 7.0);
    assert!(
        words(&answer).len() >= 3,
        "the server's answer is not several words of speech: {answer:?}\n{}",
        server.log()
    );
}

#[test]
fn a_server_down_or_refusing_gets_the_fallback_and_the_call_goes_on() {
    let server = LlmServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server);
    let (audio, spans) = caller(&["What is the capital city of France?", "And of Kenya?"]);

    // Nothing listens: each turn hears the fallback phrase; the call is
    // not failed and goes on to the next question.
    let Talked {
        stdout,
        turns,
        agent,
    } = talk(&config, "down", &audio);
    let outcomes: Vec<_> = turns.iter().map(|t| t["outcome"].clone()).collect();
    assert_eq!(outcomes, ["fallback", "fallback"], "{stdout}");
    for (_, end) in &spans {
        let said = heard(&agent, *end, end + 6.0);
        assert!(said.contains("sorry"), "no fallback phrase: {said:?}");
    }
    assert!(stdout.contains("ended: talk_end"), "{stdout}");

    // The server refuses the key: a 401, the same fallback.
    let turns = talk(&config, "wrong_key", &audio).turns;
    assert_eq!(turns[0]["outcome"], "fallback", "{turns:?}");
    assert!(server.requests(401) >= 1, "{}", server.log());

    // Down, with the local model standing in: answered all the same.
    let Talked { turns, agent, .. } = talk(&config, "down_local", &audio);
    let outcomes: Vec<_> = turns.iter().map(|t| t["outcome"].clone()).collect();
    assert_eq!(outcomes, ["answered", "answered"], "{turns:?}");
    let said = heard(&agent, spans[0].1, spans[0].1 + 6.0);
    assert!(
        !said.contains("sorry") && words(&said).len() >= 2,
        "{said:?}"
    );
}

/// Over SIP: the server's answer is heard; a caller who talks over a long
/// answer makes Izwi drop the reply, and the server sees its request's
/// connection closed. A second call, to an agent whose server is down, hears
/// the fallback phrase, and the failure is counted.
#[test]
fn a_sip_call_hears_the_server_and_a_barge_in_closes_its_request() {
    let server = LlmServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server);
    // A storyteller that goes on: the request is still open when the caller
    // interrupts (the reply is read only as fast as it is synthesised).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[agents.story]\nlanguage = \"en\"\nllm = \"long\"\ngreeting = \"Hello.\"\n\
         system_prompt = \"You are a storyteller. Tell very long stories with many details.\"\n\
         [llm.long]\nmodel = \"smollm2\"\nmax_tokens = 2000\ntemperature = 0.0\n\
         first_token_timeout_ms = 60000\nidle_timeout_ms = 30000\n",
    );
    text.push_str(&format!(
        "base_url = \"{}\"\napi_key = \"{}\"\n",
        server.base_url(),
        llm_server::KEY
    ));
    std::fs::write(&config, text).unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[rule]]\nname = \"down-line\"\nagent = \"down\"\nto = \"200\"\n\n[default]\nagent = \"story\"\n",
    )
    .unwrap();
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", &config_profile()),
        ("IZWI_CONFIG", config.to_str().unwrap()),
        ("IZWI_DIALPLAN_FILE", plan.to_str().unwrap()),
        (KEY_VAR, llm_server::KEY),
    ]);

    let question = espeak("Tell me a long story about a lion and a mouse.");
    let stop = espeak("Stop, stop. Thank you, that is enough.");
    let ask_at = 2.5;
    let question_end = ask_at + duration(&question);
    let barge_at = question_end + 6.0;
    let story_caller = compose(
        barge_at + duration(&stop) + 6.0,
        &[(ask_at, &question), (barge_at, &stop)],
    );
    let disconnect = server.watch("Disconnected from client", Duration::from_secs(60));
    let received = baresip_asks(&izwi, "100", &story_caller, 60);
    let story = heard(&received, question_end, barge_at);
    assert!(
        words(&story).len() >= 4,
        "no story heard before the barge-in: {story:?}\n{}",
        izwi.log()
    );
    // Closed at the barge-in, not by the hang-up (which comes some 8 s later).
    let closed = disconnect.join().unwrap();
    assert!(
        closed.is_some_and(|t| t.as_secs_f64() < barge_at + 3.0),
        "the server did not see its request closed at the barge-in ({closed:?}, barge-in at {barge_at:.1} s):\n{}\nizwi:\n{}",
        server.log(),
        izwi.log()
    );
    assert!(izwi.log().contains("barge-in"), "{}", izwi.log());

    // The down agent: the fallback phrase, and the failure counted.
    let (q, _) = caller(&["What is the capital city of France?"]);
    let before = metric(
        &metrics(&izwi),
        "izwi_engine_failures_total",
        &[("backend", "down"), ("kind", "connect")],
    );
    let received = baresip_asks(&izwi, "200", &q, 30);
    let said = heard(&received, 2.5, received.len() as f64 / ENGINE_RATE as f64);
    assert!(
        said.contains("sorry"),
        "no fallback phrase: {said:?}\n{}",
        izwi.log()
    );
    let after = metric(
        &metrics(&izwi),
        "izwi_engine_failures_total",
        &[("backend", "down"), ("kind", "connect")],
    );
    assert_eq!(after - before, 1.0, "{}", izwi.log());
}
