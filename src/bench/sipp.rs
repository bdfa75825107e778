//! sipp as the caller's signalling: one sipp process per call, running the
//! scenario whose SDP offers the bench's own RTP socket; what Izwi answered
//! is read from sipp's message trace.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::BenchError;

/// Embedded so that an installed binary needs no source tree.
pub const SCENARIO: &str = include_str!("../../sip/scenarios/call-media-by-test.xml");

/// Writes the scenario into `dir` and returns its path.
pub fn write_scenario(dir: &Path) -> Result<PathBuf, BenchError> {
    let path = dir.join("call-media-by-test.xml");
    std::fs::write(&path, SCENARIO).map_err(|e| BenchError::io("writing the sipp scenario", e))?;
    Ok(path)
}

/// Fails with how to install sipp when it cannot be run.
pub fn check_installed() -> Result<(), BenchError> {
    match Command::new("sipp").arg("-v").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(BenchError::SippMissing(e)),
    }
}

/// Izwi's answer to the INVITE.
#[derive(Debug, Clone)]
pub struct Answer {
    pub call_id: String,
    /// Where Izwi takes the call's RTP (its SDP).
    pub rtp: SocketAddr,
    /// When sipp received the 200 OK (its trace's timestamp).
    pub ok_at: SystemTime,
}

pub struct Sipp {
    child: Child,
    dir: PathBuf,
    started: Instant,
}

impl Sipp {
    /// Calls `target` from `local`: the SDP offers `media_port`, the caller
    /// hangs up `hold` after its ACK. sipp's files go to `dir`.
    pub fn start(
        scenario: &Path,
        target: SocketAddr,
        local: IpAddr,
        media_port: u16,
        hold: Duration,
        dir: &Path,
    ) -> Result<Sipp, BenchError> {
        let fields = dir.join("fields.csv");
        std::fs::write(&fields, format!("SEQUENTIAL\n{media_port};20;\n"))
            .map_err(|e| BenchError::io("writing sipp's injection file", e))?;
        let port = |ip| free_udp_port(ip).map(|p| p.to_string());
        let child = Command::new("sipp")
            .current_dir(dir)
            // The trace's timestamps are local time: make that UTC to read them.
            .env("TZ", "UTC")
            .arg("-sf")
            .arg(scenario)
            .arg(target.to_string())
            .args(["-i", &local.to_string(), "-p", &port(local)?])
            // sipp binds a media port of its own even when unused; a free one
            // keeps parallel calls apart.
            .args(["-mp", &port(local)?])
            .args(["-m", "1", "-nostdin", "-trace_msg", "-trace_err"])
            .args(["-message_file", "messages.log", "-error_file", "errors.log"])
            .arg("-inf")
            .arg(&fields)
            .args(["-d", &hold.as_millis().to_string()])
            .args(["-timeout", &(hold.as_secs() + 60).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::SippMissing)?;
        Ok(Sipp {
            child,
            dir: dir.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// Waits for Izwi's 200 OK with an SDP answer in sipp's trace.
    pub fn wait_answer(&mut self, limit: Duration) -> Result<Answer, BenchError> {
        loop {
            let text = std::fs::read_to_string(self.dir.join("messages.log")).unwrap_or_default();
            if let Some(answer) = parse_answer(&text) {
                return Ok(answer);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(format!("sipp exited ({status}) before a 200 OK")));
            }
            if self.started.elapsed() > limit {
                return Err(self.failure(format!("no 200 OK with SDP within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether sipp has finished (the call is over).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for sipp to finish its call, which must have succeeded.
    pub fn finish(mut self, limit: Duration) -> Result<(), BenchError> {
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(self.failure(format!("sipp failed ({status})"))),
                Ok(None) if t.elapsed() > limit => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(
                        self.failure(format!("sipp still running {limit:?} after the script"))
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(BenchError::io("waiting for sipp", e)),
            }
        }
    }

    fn failure(&self, what: String) -> BenchError {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let messages = read("messages.log");
        let tail: Vec<&str> = messages.lines().rev().take(40).collect();
        BenchError::Sipp {
            what,
            errors: read("errors.log").trim().to_string(),
            messages: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn free_udp_port(ip: IpAddr) -> Result<u16, BenchError> {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("finding a free UDP port", e))
}

/// The 200 OK to the INVITE in a sipp message trace (`-trace_msg`), with
/// the INVITE's Call-ID. Each message there follows a line
/// `----…---- YYYY-MM-DD HH:MM:SS.micro` (sipp's local time, UTC here).
pub fn parse_answer(trace: &str) -> Option<Answer> {
    const RULE: &str = "-----------------------------------------------";
    let mut call_id = None;
    for block in trace.split(RULE).skip(1) {
        let (stamp, rest) = block.split_once('\n')?;
        let (direction, message) = rest.split_once('\n')?;
        let message = message.trim_start();
        let header = |name: &str| {
            message
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
                })
        };
        if direction.contains("sent") && message.starts_with("INVITE ") {
            call_id = header("Call-ID").map(String::from);
        }
        if !(direction.contains("received") && message.starts_with("SIP/2.0 200")) {
            continue;
        }
        if !header("CSeq").is_some_and(|c| c.ends_with("INVITE")) {
            continue;
        }
        let sdp_line = |prefix: &str| {
            message
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
        };
        let port: u16 = sdp_line("m=audio ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let ip: IpAddr = sdp_line("c=IN IP4 ")?.trim().parse().ok()?;
        return Some(Answer {
            call_id: call_id?,
            rtp: SocketAddr::new(ip, port),
            ok_at: parse_stamp(stamp.trim())?,
        });
    }
    None
}

/// `YYYY-MM-DD HH:MM:SS.frac` in UTC.
fn parse_stamp(s: &str) -> Option<SystemTime> {
    let mut it = s.split_whitespace();
    let (date, time) = (it.next()?, it.next()?);
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    let whole = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60;
    let secs = whole as f64 + sec;
    (secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "----------------------------------------------- 2026-12-01 01:47:21.667016
UDP message sent (545 bytes):

INVITE sip:service@127.0.0.1:15099 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:40100;branch=z9hG4bK-23703-1-0
Call-ID: 1-23703@127.0.0.1
CSeq: 1 INVITE
Content-Length:   193

v=0
m=audio 40000 RTP/AVP 0 101

----------------------------------------------- 2026-12-01 01:47:21.667267
UDP message received [277] bytes :

SIP/2.0 100 Trying
CSeq: 1 INVITE

----------------------------------------------- 2026-12-01 01:47:21.667429
UDP message received [600] bytes :

SIP/2.0 200 OK
Call-ID: 1-23703@127.0.0.1
CSeq: 1 INVITE
Content-Type: application/sdp

v=0
o=izwi 1 1 IN IP4 127.0.0.1
c=IN IP4 127.0.0.1
m=audio 39002 RTP/AVP 0 101

";

    #[test]
    fn the_answer_from_the_trace() {
        let a = parse_answer(TRACE).unwrap();
        assert_eq!(a.call_id, "1-23703@127.0.0.1");
        assert_eq!(a.rtp, "127.0.0.1:39002".parse().unwrap());
        let secs = a.ok_at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        // date -u -d '2026-12-01 01:47:21' +%s
        assert!((secs - 1_796_089_641.667_429).abs() < 1e-5, "{secs}");
        assert!(parse_answer(&TRACE[..TRACE.find("SIP/2.0 200").unwrap()]).is_none());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
