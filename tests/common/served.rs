//! A server process a test starts from a per-user cache (a Python server
//! from PyPI), on 127.0.0.1 only: its output kept for the test's messages,
//! the process killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Served {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Served {
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

impl Served {
    /// Runs `command`, which listens on `port`.
    pub fn spawn(mut command: Command, port: u16) -> Served {
        let what = format!("{command:?}");
        let mut child = command
            // A Python server's prints come late unless unbuffered.
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        keep(child.stdout.take().unwrap(), log.clone());
        keep(child.stderr.take().unwrap(), log.clone());
        Served { child, port, log }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
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

    /// Requests to `path` it answered with `status`, by its access log.
    pub fn answered(&self, path: &str, status: u16) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("POST {path} ")) && l.contains(&format!(" {status} ")))
            .count()
    }
}
