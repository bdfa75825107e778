//! llama-cpp-python's OpenAI-compatible server, from PyPI: compiled once by
//! `scripts/llm-server.sh` into a per-user cache (`make test` does it), and
//! started here on the small profile's SmolLM2 file, on 127.0.0.1 only.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::served::Served;
use super::sip_peer::free_tcp_port;

/// The bearer token the server demands.
pub const KEY: &str = "izwi-test-key";
/// The model's name on the server.
pub const MODEL: &str = "smollm2";

pub struct LlmServer {
    served: Served,
}

impl std::ops::Deref for LlmServer {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl LlmServer {
    pub fn start() -> LlmServer {
        LlmServer::start_with(&[])
    }

    /// With more of the server's options (`--chat_format …`).
    pub fn start_with(options: &[&str]) -> LlmServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llm-server.sh");
        let out = Command::new(&script).output().unwrap();
        assert!(
            out.status.success(),
            "llama-cpp-python's server is not installed and could not be built: run `make test` \
             (scripts/llm-server.sh)\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let store = izwi::models::ModelStore::from_config(&super::config().models).unwrap();
        let gguf = store.require(izwi::models::Role::Llm).unwrap_or_else(|e| {
            panic!("{e} (run `make test`, or `izwi models fetch --profile small`)")
        });
        let port = free_tcp_port();
        let mut command = Command::new(&python);
        command
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&gguf)
            .args(["--model_alias", MODEL, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--n_ctx", "2048", "--n_threads", "1", "--api_key", KEY])
            .args(options);
        let server = LlmServer {
            served: Served::spawn(command, port),
        };
        assert!(
            server.wait_log("Uvicorn running", Duration::from_secs(120)),
            "the server did not start:\n{}",
            server.log()
        );
        // One completion first (not a chat one, which tests count): the
        // first request pays for the server's warm-up, on a busy machine
        // for seconds.
        let warm = ureq::post(&format!("{}/completions", server.base_url()))
            .set("Authorization", &format!("Bearer {KEY}"))
            .timeout(Duration::from_secs(120))
            .send_json(serde_json::json!({"model": MODEL, "prompt": "Hello", "max_tokens": 1}));
        assert!(warm.is_ok(), "warm-up failed: {warm:?}\n{}", server.log());
        server
    }

    /// Chat-completion requests it answered with `status`.
    pub fn requests(&self, status: u16) -> usize {
        self.answered("/v1/chat/completions", status)
    }
}
