//! Izwi as a `izwi serve` process, and sipp driving calls at it.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::izwi_bin;

/// A folder holding a baresip configuration (`sip/baresip/config`) for a
/// baresip on `address`, whose one account offers `codec`, and a `snd/`
/// folder for what it records. Returns it with baresip's ctrl_tcp port.
pub fn baresip_dir_at(codec: &str, address: &str) -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("snd")).unwrap();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sip/baresip/config"))
            .unwrap();
    let ctrl = free_udp_port();
    let config = template
        .replace("127.0.0.1", address)
        .replace("__DIR__", d.to_str().unwrap())
        .replace("__PORT__", &free_udp_port().to_string())
        .replace("__CTRL__", &ctrl.to_string());
    std::fs::write(d.join("config"), config).unwrap();
    std::fs::write(
        d.join("accounts"),
        format!("<sip:baresip@{address}>;regint=0;audio_codecs={codec}\n"),
    )
    .unwrap();
    (dir, ctrl)
}

/// baresip calls `number` over PCMU with `caller` (16 kHz) as its
/// microphone; what it heard, at 16 kHz.
pub fn baresip_asks(izwi: &Izwi, number: &str, caller: &[f32], limit_secs: u32) -> Vec<f32> {
    let (dir, _) = baresip_dir_at("PCMU/8000", "127.0.0.1");
    baresip_dials(izwi, dir.path(), number, caller, (8_000, 1), limit_secs)
}

/// The baresip configured in `dir` (see [`baresip_dir_at`]) dials `number` at
/// Izwi with `caller` (16 kHz) as its microphone, written at the codec's
/// `(rate, channels)` as its aufile wants; baresip hangs up when the file
/// ends (or after `limit_secs`). Returns what it received, at 16 kHz.
pub fn baresip_dials(
    izwi: &Izwi,
    dir: &Path,
    number: &str,
    caller: &[f32],
    (rate, channels): (u32, u16),
    limit_secs: u32,
) -> Vec<f32> {
    let audio = izwi::codec::resample::resample(caller, 16_000, rate).unwrap();
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(dir.join("caller.wav"), spec).unwrap();
    for s in &audio {
        for _ in 0..channels {
            wav.write_sample((s * 32767.0) as i16).unwrap();
        }
    }
    wav.finalize().unwrap();
    let out = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args([
            "-e",
            &format!("/dial sip:{number}@127.0.0.1:{}", izwi.port),
            "-t",
            &limit_secs.to_string(),
        ])
        .output()
        .expect("baresip must be installed (scripts/setup.sh)");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains("Call established"),
        "{console}\n{}",
        izwi.log()
    );
    let received = std::fs::read_dir(dir.join("snd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip wrote no received audio");
    let (audio, rate) = izwi::codec::wav::read_mono(&received).unwrap();
    izwi::codec::resample::resample(&audio, rate, 16_000).unwrap()
}

/// A quiet 8 kHz microphone of `seconds` for the baresip in `dir` (baresip
/// hangs up when it ends).
pub fn silent_microphone(dir: &Path, seconds: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(dir.join("caller.wav"), spec).unwrap();
    for _ in 0..seconds * 8000 {
        wav.write_sample(0i16).unwrap();
    }
    wav.finalize().unwrap();
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Izwi {
    child: Mutex<Child>,
    /// Holds this Izwi's call records (`records.db`).
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The HTTP listener (webhooks, media streams).
    pub http_port: u16,
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

/// How an Izwi under test is started, beyond its settings.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Open-file limit (soft and hard) Izwi starts with.
    pub nofile: Option<u64>,
    /// A tmpfs of this many bytes mounted over Izwi's folder (its records
    /// live there) in a mount namespace of its own: a disk that can fill up.
    /// The test reaches it at `/proc/<pid>/root/<folder>`.
    pub tmpfs_bytes: Option<u64>,
}

impl Izwi {
    pub fn start(env: &[(&str, &str)]) -> Izwi {
        Izwi::launch(env, Launch::default())
    }

    pub fn launch(env: &[(&str, &str)], launch: Launch) -> Izwi {
        let port = free_udp_port();
        // A private RTP range per test, away from the SIP ports the OS hands out.
        let rtp_min = 30_000 + (port % 100) * 100;
        let http_port = free_tcp_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = match launch.tmpfs_bytes {
            None => Command::new(izwi_bin()),
            Some(bytes) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@""#)
                    .arg("sh")
                    .arg(bytes.to_string())
                    .arg(dir.path())
                    .arg(izwi_bin());
                c
            }
        };
        if let Some(n) = launch.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // The harness's own variable is no setting of Izwi's.
        cmd.env_remove("IZWI_TEST_BIN");
        cmd.arg("serve")
            .env("IZWI_SIP_LISTEN", format!("127.0.0.1:{port}"))
            .env("IZWI_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("IZWI_RECORDS_PATH", dir.path().join("records.db"))
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
            dir,
            port,
            http_port,
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

    /// The first log line holding `needle`, once it is there.
    pub fn wait_line(&self, needle: &str, limit: Duration) -> String {
        self.wait_log(needle, limit)
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_string()
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
    /// Payload bytes of each audio packet Izwi sent.
    pub packet_sizes: Vec<usize>,
    /// Keys Izwi sent as telephone-events (payload type 101).
    pub digits: String,
    dtmf: izwi::rtp::dtmf::DtmfReceiver,
    /// Packet time the test sends and asks for, in ms.
    pub ptime: u32,
}

impl MediaCall {
    /// Places the call; sipp hangs up after `hold_ms`.
    pub fn start(izwi: &Izwi, hold_ms: u32) -> MediaCall {
        MediaCall::start_with(izwi, "call-media-by-test.xml", hold_ms, 20)
    }

    /// Places a call to `number`; sipp hangs up after `hold_ms`.
    pub fn start_to(izwi: &Izwi, number: &str, hold_ms: u32) -> MediaCall {
        MediaCall::place(izwi, "call-media-by-test.xml", hold_ms, 20, &["-s", number])
    }

    /// Places the call of a `*-by-test.xml` scenario asking for `ptime` ms packets.
    pub fn start_with(izwi: &Izwi, scenario_name: &str, hold_ms: u32, ptime: u32) -> MediaCall {
        MediaCall::place(izwi, scenario_name, hold_ms, ptime, &[])
    }

    fn place(
        izwi: &Izwi,
        scenario_name: &str,
        hold_ms: u32,
        ptime: u32,
        extra: &[&str],
    ) -> MediaCall {
        let media = UdpSocket::bind("127.0.0.1:0").unwrap();
        media
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fields = dir.path().join("fields.csv");
        std::fs::write(
            &fields,
            format!(
                "SEQUENTIAL\n{};{ptime};\n",
                media.local_addr().unwrap().port()
            ),
        )
        .unwrap();
        let hold = hold_ms.to_string();
        let mut args = vec!["-inf", fields.to_str().unwrap(), "-d", &hold];
        args.extend_from_slice(extra);
        let sipp = sipp(izwi, &scenario(scenario_name), dir.path(), &args)
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
            packet_sizes: Vec::new(),
            digits: String::new(),
            dtmf: Default::default(),
            ptime,
        }
    }

    /// Takes in whatever Izwi has sent (PCMU and telephone-events).
    pub fn receive(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.media.recv_from(&mut buf) {
            let Ok((h, payload)) = izwi::rtp::packet::parse(&buf[..n]) else {
                continue;
            };
            match h.payload_type {
                0 => {
                    izwi::codec::g711::Law::Mu.decode(payload, &mut self.received);
                    self.packet_sizes.push(payload.len());
                }
                101 => self.digits.extend(self.dtmf.push(h.timestamp, payload)),
                _ => {}
            }
        }
    }

    /// Sends 8 kHz audio as PCMU in real time, one packet per ptime, receiving meanwhile.
    pub fn stream(&mut self, audio: &[f32]) {
        let start = Instant::now();
        let samples = 8 * self.ptime as usize;
        for (i, chunk) in audio.chunks(samples).enumerate() {
            let mut bytes = Vec::new();
            izwi::codec::g711::Law::Mu.encode(chunk, &mut bytes);
            let pkt = self.packetizer.packet(&bytes, chunk.len() as u32);
            self.media.send_to(&pkt, &self.izwi_rtp).unwrap();
            let due = start + Duration::from_millis(self.ptime as u64 * (i as u64 + 1));
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

/// Fails the test at once, with Izwi's log, when sipp is not installed.
pub fn require_sipp(izwi: &Izwi) {
    if Command::new("sipp").arg("-v").output().is_err() {
        panic!(
            "sipp must be installed (scripts/setup.sh installs it)\nizwi:\n{}",
            izwi.log()
        );
    }
}

impl Izwi {
    /// Waits for Izwi to exit by itself; its exit status.
    pub fn wait_exit(&self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Ok(Some(exit)) = self.child.lock().unwrap().try_wait() {
                return exit;
            }
            assert!(
                t.elapsed() < limit,
                "izwi did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops Izwi with SIGTERM, as a service manager does, and returns its log
    /// once it has exited and its last line has been read.
    pub fn terminate(&self, limit: Duration) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed:\n{}", self.log());
        let t = Instant::now();
        let exit = loop {
            if let Ok(Some(exit)) = self.child.lock().unwrap().try_wait() {
                break exit;
            }
            assert!(
                t.elapsed() < limit,
                "izwi did not exit within {limit:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread may still be draining the pipe.
        let t = Instant::now();
        while !self.log().contains("SIP endpoint stopped") && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            exit.success(),
            "izwi exited with {exit} on SIGTERM:\n{}",
            self.log()
        );
        self.log()
    }
}

/// The status code of a SIP response (`None` for anything else).
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let rest = msg.strip_prefix(b"SIP/2.0 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// The value of the first header `name` (full name, case-insensitive) of a message.
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// The ACK for a non-2xx final `response` to `invite` (RFC 3261 §17.1.1.3): the
/// INVITE's Request-URI, Via, From and Call-ID, the response's To.
pub fn ack_for(invite: &str, response: &str) -> String {
    let uri = invite.split(' ').nth(1).unwrap_or_default();
    let get = |m, n| header(m, n).unwrap_or_default();
    let cseq = get(invite, "CSeq").split_whitespace().next().unwrap_or("1");
    format!(
        "ACK {uri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
        get(invite, "Via"),
        get(invite, "From"),
        get(response, "To"),
        get(invite, "Call-ID"),
    )
}

/// What reading one message off a SIP stream came to.
#[derive(Debug)]
pub enum StreamRead {
    Message(String),
    /// The peer closed the connection (or reset it).
    Closed,
    /// Nothing whole arrived in time; the connection is still open.
    Nothing,
}

/// Reads the next whole message from a TCP connection within `limit`, keeping
/// what follows it in `pending`. CRLF keep-alives are skipped. Sets the
/// connection's read timeout.
pub fn read_stream_message(
    stream: &mut std::net::TcpStream,
    pending: &mut Vec<u8>,
    limit: Duration,
) -> StreamRead {
    use std::io::Read;
    let t = Instant::now();
    loop {
        let lead = pending
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        pending.drain(..lead);
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let body = header(&head, "Content-Length")
                .or_else(|| header(&head, "l"))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + body {
                let msg: Vec<u8> = pending.drain(..end + 4 + body).collect();
                return StreamRead::Message(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        let Some(left) = limit.checked_sub(t.elapsed()).filter(|d| !d.is_zero()) else {
            return StreamRead::Nothing;
        };
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(50))));
        let mut buf = [0u8; 8192];
        match stream.read(&mut buf) {
            Ok(0) => return StreamRead::Closed,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return StreamRead::Closed,
        }
    }
}

/// kamailio (Debian) running one of the configs in `sip/kamailio/`, whose
/// `__NAME__` placeholders are filled in; stopped on drop.
pub struct Kamailio {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    /// Starts it and waits until it answers OPTIONS on UDP `port`.
    pub fn start(config: &str, port: u16, fill: &[(&str, String)]) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sip/kamailio")
                .join(config),
        )
        .unwrap();
        for (name, value) in fill {
            cfg = cfg.replace(name, value);
        }
        std::fs::write(dir.path().join("kamailio.cfg"), cfg).unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(dir.path().join("kamailio.cfg"))
            .args(["-DD", "-E", "-Y"])
            .arg(&run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kamailio must be installed (scripts/setup.sh)");
        let k = Kamailio { child, _dir: dir };
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let t = Instant::now();
        loop {
            let ping = format!(
                "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKprobe{}\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:k@x>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 5\r\nContent-Length: 0\r\n\r\n",
                probe.local_addr().unwrap(),
                t.elapsed().as_millis()
            );
            probe
                .send_to(ping.as_bytes(), format!("127.0.0.1:{port}"))
                .unwrap();
            let mut buf = [0u8; 2048];
            if probe.recv_from(&mut buf).is_ok() {
                return k;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "kamailio ({config}) did not start"
            );
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets kamailio stop its worker processes too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
