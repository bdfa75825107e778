//! What the adversarial tests share: a network namespace per test, probes of
//! Izwi's CPU and memory, its metrics, and small raw clients (SIP over UDP and
//! TCP, RTP, WebSocket) that do exactly what an attacker does, byte for byte.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use super::sip_peer::Izwi;

/// Where attackers send from: another host as far as Izwi can tell.
pub const ATTACKER: &str = "127.0.0.66";
/// Where the legitimate caller (the neighbour) sends from.
pub const NEIGHBOUR: &str = "127.0.0.1";

/// Moves the calling thread, and every thread and process it starts from now
/// on, into a network namespace of its own with only a loopback interface:
/// nothing a test sends can leave it, and tests cannot see each other's ports.
/// Needs root (as `make test` runs in CI); fails loudly otherwise.
pub fn isolate() {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's namespace.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {} (the attack tests need root, as `make test` has in CI)",
        std::io::Error::last_os_error()
    );
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip (iproute2, installed by scripts/setup.sh)");
    assert!(up.success(), "cannot bring the namespace's loopback up");
}

/// Izwi's CPU time and memory, read from /proc.
pub struct Probe {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl Probe {
    pub fn start(izwi: &Izwi) -> Probe {
        let pid = izwi.pid();
        Probe {
            pid,
            ticks: cpu_ticks(pid),
            at: Instant::now(),
        }
    }

    /// Cores used on average since the probe started.
    pub fn cores(&self) -> f64 {
        let ticks = cpu_ticks(self.pid) - self.ticks;
        ticks as f64 / 100.0 / self.at.elapsed().as_secs_f64()
    }

    pub fn rss_mb(&self) -> f64 {
        rss_kb(self.pid) as f64 / 1024.0
    }
}

/// utime + stime, in clock ticks (USER_HZ, 100 on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// GET on Izwi's HTTP listener from the neighbour: (status, body).
pub fn http_get(izwi: &Izwi, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", izwi.http_port);
    match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}\nizwi:\n{}", izwi.log()),
    }
}

/// The samples of Izwi's metrics: `name{labels}` → value.
pub fn metrics(izwi: &Izwi) -> HashMap<String, f64> {
    let (code, text) = http_get(izwi, "/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// One sample, 0 when absent: `metric(&m, "izwi_x_total", &[("reason", "y")])`.
pub fn metric(m: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name
                && labels
                    .iter()
                    .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// A SIP user agent reduced to a UDP socket and string templates.
pub struct SipClient {
    pub sock: UdpSocket,
    pub target: SocketAddr,
}

impl SipClient {
    pub fn new(from_ip: &str, izwi: &Izwi) -> SipClient {
        let sock = UdpSocket::bind(format!("{from_ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        SipClient {
            sock,
            target: format!("127.0.0.1:{}", izwi.port).parse().unwrap(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, msg: &str) {
        let _ = self.sock.send_to(msg.as_bytes(), self.target);
    }

    /// Responses until one whose status passes `done` (returned last), or none within `limit`.
    pub fn until(&self, limit: Duration, done: impl Fn(u16) -> bool) -> Vec<String> {
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while t.elapsed() < limit {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = status(&text);
                got.push(text);
                if code.is_some_and(&done) {
                    break;
                }
            }
        }
        got
    }

    /// The final response to what was just sent (1xx skipped), if one comes.
    pub fn final_response(&self, limit: Duration) -> Option<String> {
        self.until(limit, |c| c >= 200)
            .into_iter()
            .rfind(|m| status(m).is_some_and(|c| c >= 200))
    }
}

/// The status code of a response.
pub fn status(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A header's value in a message.
pub fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The tag of the To header (Izwi's side of the dialog).
pub fn to_tag(msg: &str) -> String {
    header(msg, "To")
        .and_then(|t| t.split(";tag=").nth(1).map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The RTP port of an SDP body's audio line.
pub fn sdp_port(msg: &str) -> Option<u16> {
    msg.lines()
        .find(|l| l.starts_with("m=audio "))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// An SDP offer of PCMU (and telephone-event) at `media`.
pub fn offer(media: SocketAddr) -> String {
    let ip = media.ip();
    let port = media.port();
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// One request. `dialog`: (Call-ID, From tag, To tag if in dialog).
pub struct Request<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub via: SocketAddr,
    pub branch: &'a str,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: Option<&'a str>,
    pub cseq: u32,
    pub extra: &'a str,
    pub body: &'a str,
}

impl<'a> Request<'a> {
    /// The ACK of this INVITE's 2xx, whose To tag is `tag`.
    pub fn ack(&self, tag: &'a str, branch: &'a str) -> Request<'a> {
        Request {
            method: "ACK",
            branch,
            to_tag: Some(tag),
            body: "",
            ..*self
        }
    }

    pub fn text(&self) -> String {
        let to_tag = self.to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let ctype = if self.body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{m} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch={b};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+263771234567@{ip}>;tag={ft}\r\nTo: <sip:+263242700000@127.0.0.1>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cm}\r\nContact: <sip:caller@{via}>\r\n{extra}{ctype}Content-Length: {len}\r\n\r\n{body}",
            m = self.method,
            uri = self.uri,
            via = self.via,
            b = self.branch,
            ip = self.via.ip(),
            ft = self.from_tag,
            cid = self.call_id,
            cseq = self.cseq,
            cm = if self.method == "ACK" {
                "INVITE"
            } else {
                self.method
            },
            extra = self.extra,
            len = self.body.len(),
            body = self.body,
        )
    }
}

pub fn branch() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

/// One call set up from `client`: INVITE (with `extra` headers) → 200 → ACK.
/// Returns Izwi's RTP address and the To tag, or the final response that refused it.
pub fn call(
    client: &SipClient,
    uri: &str,
    call_id: &str,
    from_tag: &str,
    media: SocketAddr,
    extra: &str,
) -> Result<(SocketAddr, String), String> {
    let body = offer(media);
    let invite = Request {
        method: "INVITE",
        uri,
        via: client.local(),
        branch: &branch(),
        call_id,
        from_tag,
        to_tag: None,
        cseq: 1,
        extra,
        body: &body,
    };
    client.send(&invite.text());
    let ok = client
        .final_response(Duration::from_secs(5))
        .ok_or_else(|| "no final response".to_string())?;
    if status(&ok) != Some(200) {
        return Err(ok);
    }
    let tag = to_tag(&ok);
    let ack_branch = branch();
    let ack = Request {
        extra: "",
        ..invite.ack(&tag, &ack_branch)
    };
    client.send(&ack.text());
    let port = sdp_port(&ok).ok_or_else(|| format!("no SDP in {ok}"))?;
    Ok((SocketAddr::new(client.target.ip(), port), tag))
}

/// Ends a call set up by [`call`].
pub fn bye(client: &SipClient, uri: &str, call_id: &str, from_tag: &str, to_tag: &str) -> u16 {
    let bye = Request {
        method: "BYE",
        uri,
        via: client.local(),
        branch: &branch(),
        call_id,
        from_tag,
        to_tag: Some(to_tag),
        cseq: 2,
        extra: "",
        body: "",
    };
    client.send(&bye.text());
    client
        .final_response(Duration::from_secs(3))
        .and_then(|r| status(&r))
        .unwrap_or(0)
}

/// An RTP packet of 20 ms of PCMU.
pub fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8];
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// 20 ms of a 400 Hz tone, µ-law.
pub fn tone_frame() -> Vec<u8> {
    let tone: Vec<f32> = (0..160)
        .map(|i| 0.3 * (i as f32 * 400.0 * std::f32::consts::TAU / 8000.0).sin())
        .collect();
    let mut out = Vec::new();
    izwi::codec::g711::Law::Mu.encode(&tone, &mut out);
    out
}

/// Whether a PCMU payload carries sound (not µ-law silence).
pub fn loud(payload: &[u8]) -> bool {
    let mut pcm = Vec::new();
    izwi::codec::g711::Law::Mu.decode(payload, &mut pcm);
    izwi::audio::rms(&pcm) > 0.05
}

/// Counts datagrams on a socket for `limit`: (packets, loud payloads).
pub fn receive_for(sock: &UdpSocket, limit: Duration) -> (usize, usize) {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    let (mut n, mut sound) = (0, 0);
    while t.elapsed() < limit {
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            n += 1;
            if len > 12 && loud(&buf[12..len]) {
                sound += 1;
            }
        }
    }
    (n, sound)
}

/// A raw TCP connection from `from_ip` (0: any port).
pub fn tcp_from(from_ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&format!("{from_ip}:0").parse::<SocketAddr>().unwrap().into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// Whether Izwi has closed this connection (reads EOF or a reset within `limit`).
pub fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A WebSocket to Izwi's stream path, opened by tungstenite from `from_ip`;
/// `rcvbuf` shrinks the socket's receive buffer (a client that stops
/// reading then stops the sender quickly).
pub fn websocket(
    izwi: &Izwi,
    from_ip: &str,
    rcvbuf: Option<usize>,
) -> tungstenite::WebSocket<TcpStream> {
    let to: SocketAddr = format!("127.0.0.1:{}", izwi.http_port).parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.bind(&format!("{from_ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/twilio/stream", izwi.http_port);
    let (ws, _) = tungstenite::client::client(url.as_str(), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake: {e}\nizwi:\n{}", izwi.log()));
    ws
}

/// Twilio's `start` for a stream of `call_sid` presenting `token`.
pub fn twilio_start(call_sid: &str, token: &str) -> String {
    serde_json::json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "ACtest",
            "streamSid": format!("MZ{call_sid}"),
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": { "callSid": call_sid, "token": token },
            "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
        },
        "streamSid": format!("MZ{call_sid}"),
    })
    .to_string()
}

pub fn twilio_media(call_sid: &str, payload: &[u8]) -> String {
    use base64::Engine as _;
    serde_json::json!({
        "event": "media",
        "streamSid": format!("MZ{call_sid}"),
        "media": {
            "track": "inbound",
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        },
    })
    .to_string()
}

/// Reads until Izwi's close frame: its code, or None if the socket ended without one.
pub fn close_code(ws: &mut tungstenite::WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return Some(f.code.into()),
            Ok(tungstenite::Message::Close(None)) => return None,
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// A raw WebSocket frame from a client (masked), of any opcode and payload.
pub fn raw_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65_536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes `bytes` on the WebSocket's own TCP stream, under tungstenite.
pub fn write_raw(ws: &mut tungstenite::WebSocket<TcpStream>, bytes: &[u8]) {
    let _ = ws.get_mut().write_all(bytes);
}
