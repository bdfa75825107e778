//! The Izwi under test: `izwi serve` (this very binary) started as a child on
//! 127.0.0.1 with ports and a records folder of its own, and what its process
//! uses (CPU time, resident memory) read from /proc.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BenchError;

/// Log lines kept for an error message.
const LOG_TAIL: usize = 80;

pub struct Server {
    child: Child,
    pub sip: SocketAddr,
    /// Holds the child's records (`records.db`).
    dir: tempfile::TempDir,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts `izwi serve` with the configuration file `config` (if any; the
    /// `IZWI_*` environment passes through) and these changes: SIP on a free
    /// port of 127.0.0.1, its own RTP ports, no HTTP listener, no
    /// registration, records in a temporary folder, calls from 127.0.0.1
    /// taken as from a trunk, and `agent` (if given) as the default agent.
    pub fn spawn(config: Option<&Path>, agent: Option<&str>) -> Result<Server, BenchError> {
        let exe =
            std::env::current_exe().map_err(|e| BenchError::io("finding izwi's own binary", e))?;
        let ip = IpAddr::from(Ipv4Addr::LOCALHOST);
        let port = super::sipp::free_udp_port(ip)?;
        // Below Linux's ephemeral ports (32768 up), where sipp's and the
        // bench's sockets come from; spread by port so parallel benches differ.
        let rtp_min = 23_000 + (port % 80) * 100;
        let dir =
            tempfile::tempdir().map_err(|e| BenchError::io("creating a temporary folder", e))?;
        let mut cmd = Command::new(exe);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("serve")
            .env("IZWI_SIP_ENABLED", "true")
            .env("IZWI_SIP_LISTEN", format!("127.0.0.1:{port}"))
            .env("IZWI_SIP_ADVERTISE", "")
            .env("IZWI_SIP_RTP_PORT_MIN", rtp_min.to_string())
            .env("IZWI_SIP_RTP_PORT_MAX", (rtp_min + 99).to_string())
            .env("IZWI_SIP_REGISTER_TO", "")
            .env("IZWI_SIP_RING_MS", "0")
            // Taken without authentication and without the per-source cap.
            .env("IZWI_SIP_ALLOW", "127.0.0.0/8")
            .env("IZWI_HTTP_ENABLED", "false")
            .env("IZWI_DIALPLAN_ECHO", "false")
            .env("IZWI_RECORDS_ENABLED", "true")
            .env("IZWI_RECORDS_PATH", dir.path().join("records.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(a) = agent {
            cmd.env("IZWI_DIALPLAN_DEFAULT_AGENT", a);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::io("starting izwi serve", e))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() == LOG_TAIL {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            });
        }
        Ok(Server {
            child,
            sip: SocketAddr::new(ip, port),
            dir,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn records(&self) -> PathBuf {
        self.dir.path().join("records.db")
    }

    fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits until Izwi answers SIP OPTIONS: it binds SIP only once its
    /// models are loaded and its agents prepared, whatever its log settings.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<(), BenchError> {
        let probe = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .map(|_| s)
            })
            .map_err(|e| BenchError::io("opening a UDP socket", e))?;
        let local = probe
            .local_addr()
            .map_err(|e| BenchError::io("opening a UDP socket", e))?;
        let t = Instant::now();
        let mut n = 0;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Err(BenchError::ServerExited {
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if t.elapsed() > limit {
                return Err(BenchError::ServerNotReady {
                    limit,
                    log: self.log_tail(),
                });
            }
            n += 1;
            let ping = format!(
                "OPTIONS sip:izwi@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbench{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:bench@{local}>;tag=bench\r\nTo: <sip:izwi@{sip}>\r\n\
                 Call-ID: bench-ready-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                sip = self.sip
            );
            let _ = probe.send_to(ping.as_bytes(), self.sip);
            let mut buf = [0u8; 4096];
            if let Ok((len, _)) = probe.recv_from(&mut buf)
                && buf[..len].starts_with(b"SIP/2.0 ")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails with Izwi's last log lines if it has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                std::thread::sleep(Duration::from_millis(200));
                Err(BenchError::ServerExited {
                    status: status.to_string(),
                    log: self.log_tail(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The records have been read by now; nothing is lost by not waiting
        // for a graceful stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time a process has used so far, all its threads (live and ended).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields count from after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc counts in USER_HZ, which the kernel fixes at 100 for user space.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// `VmRSS` and `VmHWM` (peak resident set) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
