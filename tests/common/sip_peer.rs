//! Izwi as a `izwi serve` process, and sipp driving calls at it.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::izwi_bin;

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Izwi {
    child: Mutex<Child>,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Izwi {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Izwi {
    pub fn start(env: &[(&str, &str)]) -> Izwi {
        let port = free_udp_port();
        // A private RTP range per test, away from the SIP ports the OS hands out.
        let rtp_min = 30_000 + (port % 100) * 100;
        let mut cmd = Command::new(izwi_bin());
        cmd.arg("serve")
            .env("IZWI_SIP_LISTEN", format!("127.0.0.1:{port}"))
            .env("IZWI_DIALPLAN_ECHO", "true")
            .env("IZWI_SIP_RTP_PORT_MIN", rtp_min.to_string())
            .env("IZWI_SIP_RTP_PORT_MAX", (rtp_min + 99).to_string())
            .env("IZWI_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("izwi serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let izwi = Izwi {
            child: Mutex::new(child),
            port,
            log,
        };
        // Loading the models takes seconds, more on a busy 2-core machine.
        izwi.wait_log("Izwi is ready", Duration::from_secs(90));
        izwi
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let t = Instant::now();
        while t.elapsed() < limit {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("izwi exited ({status}) before `{needle}`:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("`{needle}` not logged within {limit:?}:\n{}", self.log());
    }
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sip/scenarios")
        .join(name)
}

/// Runs sipp (as installed by scripts/setup.sh) for one call of `scenario`.
pub fn sipp(izwi: &Izwi, scenario_file: &Path, dir: &Path, extra: &[&str]) -> Command {
    sipp_to(izwi.port, scenario_file, dir, extra)
}

/// sipp calling whatever listens on `port` of 127.0.0.1 (Izwi, or a proxy before it).
pub fn sipp_to(port: u16, scenario_file: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sipp");
    cmd.current_dir(dir)
        .arg("-sf")
        .arg(scenario_file)
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-i",
            "127.0.0.1",
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "40",
            "-trace_msg",
            "-trace_err",
        ])
        .args([
            "-p",
            &free_udp_port().to_string(),
            "-mp",
            &free_udp_port().to_string(),
        ])
        .args(["-message_file", "messages.log", "-error_file", "errors.log"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

pub fn check(out: Output, dir: &Path, izwi: &Izwi) {
    let messages = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    let errors = std::fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "sipp failed ({:?})\nerrors:\n{errors}\nmessages:\n{messages}\nizwi:\n{}",
        out.status,
        izwi.log()
    );
}

pub fn run_sipp(izwi: &Izwi, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = sipp(izwi, &scenario(name), dir.path(), &[])
        .output()
        .expect("sipp must be installed (scripts/setup.sh)");
    check(out, dir.path(), izwi);
    std::fs::read_to_string(dir.path().join("messages.log")).unwrap_or_default()
}

/// Izwi's RTP port from its 200 OK in sipp's message trace.
pub fn answered_rtp_port(messages: &Path, limit: Duration) -> u16 {
    let t = Instant::now();
    while t.elapsed() < limit {
        let text = std::fs::read_to_string(messages).unwrap_or_default();
        if let Some(ok) = text.split("SIP/2.0 200 OK").nth(1)
            && let Some(m) = ok.lines().find(|l| l.starts_with("m=audio "))
            && let Some(port) = m.split_whitespace().nth(1).and_then(|p| p.parse().ok())
        {
            return port;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no 200 OK with SDP in the sipp trace");
}

/// A call signalled by sipp whose RTP is the test's own socket.
pub struct MediaCall {
    pub media: UdpSocket,
    /// Izwi's RTP address from its SDP answer.
    pub izwi_rtp: String,
    pub sipp: Child,
    pub dir: tempfile::TempDir,
    pub packetizer: izwi::rtp::packet::Packetizer,
    /// Izwi's audio as received so far, decoded (8 kHz).
    pub received: Vec<f32>,
}

impl MediaCall {
    /// Places the call; sipp hangs up after `hold_ms`.
    pub fn start(izwi: &Izwi, hold_ms: u32) -> MediaCall {
        let media = UdpSocket::bind("127.0.0.1:0").unwrap();
        media
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fields = dir.path().join("fields.csv");
        std::fs::write(
            &fields,
            format!("SEQUENTIAL\n{};\n", media.local_addr().unwrap().port()),
        )
        .unwrap();
        let hold = hold_ms.to_string();
        let sipp = sipp(
            izwi,
            &scenario("call-media-by-test.xml"),
            dir.path(),
            &["-inf", fields.to_str().unwrap(), "-d", &hold],
        )
        .spawn()
        .expect("sipp must be installed (scripts/setup.sh)");
        let rtp_port = answered_rtp_port(&dir.path().join("messages.log"), Duration::from_secs(20));
        MediaCall {
            media,
            izwi_rtp: format!("127.0.0.1:{rtp_port}"),
            sipp,
            dir,
            packetizer: izwi::rtp::packet::Packetizer::new(rand_ssrc(), 0),
            received: Vec::new(),
        }
    }

    /// Takes in whatever Izwi has sent (PCMU only).
    pub fn receive(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.media.recv_from(&mut buf) {
            if let Ok((h, payload)) = izwi::rtp::packet::parse(&buf[..n])
                && h.payload_type == 0
            {
                izwi::codec::g711::Law::Mu.decode(payload, &mut self.received);
            }
        }
    }

    /// Sends 8 kHz audio as PCMU in real time, 20 ms a packet, receiving meanwhile.
    pub fn stream(&mut self, audio: &[f32]) {
        let start = Instant::now();
        for (i, chunk) in audio.chunks(160).enumerate() {
            let mut bytes = Vec::new();
            izwi::codec::g711::Law::Mu.encode(chunk, &mut bytes);
            let pkt = self.packetizer.packet(&bytes, 160);
            self.media.send_to(&pkt, &self.izwi_rtp).unwrap();
            let due = start + Duration::from_millis(20 * (i as u64 + 1));
            while Instant::now() < due {
                self.receive();
            }
        }
    }

    /// Waits for sipp to finish the call and checks it succeeded.
    pub fn finish(self, izwi: &Izwi) -> Vec<f32> {
        let out = self.sipp.wait_with_output().unwrap();
        check(out, self.dir.path(), izwi);
        self.received
    }
}

fn rand_ssrc() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos())
}
