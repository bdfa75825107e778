//! llama-cpp-python's OpenAI-compatible server, from PyPI: compiled once by
//! `scripts/llm-server.sh` into a per-user cache (`make test` does it), and
//! started here on the small profile's SmolLM2 file, on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sip_peer::free_tcp_port;

/// The bearer token the server demands.
pub const KEY: &str = "izwi-test-key";
/// The model's name on the server.
pub const MODEL: &str = "smollm2";

pub struct LlmServer {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keep(stream: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
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
        let mut child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&gguf)
            .args(["--model_alias", MODEL, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--n_ctx", "2048", "--n_threads", "1", "--api_key", KEY])
            .args(options)
            // Its "disconnected" is a print(): unbuffered, or it comes late.
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        keep(child.stdout.take().unwrap(), log.clone());
        keep(child.stderr.take().unwrap(), log.clone());
        let server = LlmServer { child, port, log };
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

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// When `needle` first appears in the log, watched from now on in a
    /// thread of its own (for at most `limit`).
    pub fn watch(
        &self,
        needle: &'static str,
        limit: Duration,
    ) -> std::thread::JoinHandle<Option<Duration>> {
        let log = self.log.clone();
        let t = Instant::now();
        std::thread::spawn(move || {
            while t.elapsed() < limit {
                if log.lock().unwrap().contains(needle) {
                    return Some(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Chat-completion requests it answered with `status`.
    pub fn requests(&self, status: u16) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("POST /v1/chat/completions") && l.contains(&format!(" {status} "))
            })
            .count()
    }
}
