//! The malformed-SIP corpus (sip/malformed/, RFC 4475 in spirit) and malformed
//! RTP thrown at a running `izwi serve` while a call is up: nothing may crash
//! Izwi or disturb the call, and every message gets the response its file name
//! names, or is dropped and counted.

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::sip_peer::*;
use izwi::codec::Codec;
use izwi::sip::message::Identity;
use izwi::sip::sdp;
use izwi::sip::ua::{Event, Output, Transport, UaConfig, UserAgent};

/// What a corpus file must get, from the second-to-last part of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A final response with this code.
    Status(u16),
    /// No answer, counted in the user agent's `dropped`.
    Drop,
    /// No answer and not counted (keep-alives).
    Ignore,
    /// TCP: the connection is closed, nothing answered.
    Close,
    /// TCP: nothing answered, the connection stays open (waiting for more).
    Wait,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    outcome: Outcome,
}

fn corpus(sub: &str) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sip/malformed")
        .join(sub);
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let mut parts = name.rsplitn(3, '.');
            let ext = parts.next()?;
            let outcome = parts.next()?;
            if ext != "sip" && ext != "bin" {
                return None;
            }
            let outcome = match outcome {
                "drop" => Outcome::Drop,
                "ignore" => Outcome::Ignore,
                "close" => Outcome::Close,
                "wait" => Outcome::Wait,
                code => Outcome::Status(
                    code.parse()
                        .unwrap_or_else(|_| panic!("{name}: unknown outcome `{code}`")),
                ),
            };
            Some(Case {
                bytes: std::fs::read(&p).unwrap(),
                name,
                outcome,
            })
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// The file's bytes with the placeholder `__PORT__` replaced by `port`.
fn substitute(bytes: &[u8], port: u16) -> Vec<u8> {
    let port = port.to_string();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"__PORT__") {
            out.extend_from_slice(port.as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fn count(cases: &[Case], f: impl Fn(Outcome) -> bool) -> u64 {
    cases.iter().filter(|c| f(c.outcome)).count() as u64
}

/// A number from the `SIP endpoint stopped` line's `stats=Stats { … }`.
fn stat(line: &str, field: &str) -> u64 {
    line.split(&format!("{field}: "))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{field}` in {line}"))
}

const PCMU_SILENCE: [u8; 160] = [0xff; 160];

fn rtp(first: u8, payload_type: u8, ssrc: u32, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![first, payload_type, (sequence >> 8) as u8, sequence as u8];
    p.extend_from_slice(&(u32::from(sequence) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Datagrams for the call's RTP port: (what, bytes, whether Izwi must count it
/// as malformed). The others are well-formed RTP it must take in its stride.
fn rtp_junk() -> Vec<(&'static str, Vec<u8>, bool)> {
    let ssrc = 0x5eed_0001;
    let mut padding_zero = rtp(0xa0, 0, ssrc, 1, &PCMU_SILENCE);
    *padding_zero.last_mut().unwrap() = 0;
    let mut padding_long = rtp(0xa0, 0, ssrc, 2, &[0xff; 100]);
    *padding_long.last_mut().unwrap() = 255;
    let csrc = rtp(0x8f, 0, ssrc, 3, &[0; 16]);
    let mut extension = rtp(0x90, 0, ssrc, 4, &[0xbe, 0xde, 0xff, 0xff]);
    extension.extend_from_slice(&[0; 8]);
    let mut junk: Vec<u8> = (0..65_000u32).map(|i| (i * 31 % 251) as u8).collect();
    junk[0] = 0x00;
    let mut rtcp = vec![0x81, 201, 0x00, 0x07];
    rtcp.extend_from_slice(&ssrc.to_be_bytes());
    rtcp.extend_from_slice(&[0; 24]);
    vec![
        ("one byte", vec![0x80], true),
        (
            "header cut at 11 bytes",
            rtp(0x80, 0, ssrc, 5, &[])[..11].to_vec(),
            true,
        ),
        ("version 0", rtp(0x00, 0, ssrc, 6, &PCMU_SILENCE), true),
        ("version 1", rtp(0x40, 0, ssrc, 7, &PCMU_SILENCE), true),
        ("padding length 0", padding_zero, true),
        ("padding longer than the packet", padding_long, true),
        ("15 CSRCs claimed, 4 present", csrc, true),
        ("extension longer than the packet", extension, true),
        ("64 KB of junk", junk, true),
        (
            "PCMU payload of 250 ms (2000 bytes)",
            rtp(0x80, 0, ssrc, 10, &[0xff; 2000]),
            true,
        ),
        (
            "unknown payload type 99",
            rtp(0x80, 99, ssrc, 8, &PCMU_SILENCE),
            false,
        ),
        ("RTCP receiver report on the RTP port", rtcp, false),
        (
            "PCMU from another SSRC",
            rtp(0x80, 0, ssrc, 9, &PCMU_SILENCE),
            false,
        ),
    ]
}

/// Sends each UDP case from its own socket and checks what comes back.
/// Returns the failures, and the sockets of INVITEs (to check no retransmission
/// follows their ACK).
fn udp_pass(cases: &[Case], target: SocketAddr) -> (Vec<String>, Vec<(String, UdpSocket)>) {
    let mut failures = Vec::new();
    let mut invites = Vec::new();
    for case in cases {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bytes = substitute(&case.bytes, sock.local_addr().unwrap().port());
        sock.send_to(&bytes, target).unwrap();
        let mut buf = vec![0u8; 65_536];
        match case.outcome {
            Outcome::Status(code) => {
                let t = Instant::now();
                let limit = Duration::from_secs(1);
                let got = loop {
                    let Some(left) = limit.checked_sub(t.elapsed()) else {
                        break None;
                    };
                    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .unwrap();
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        break None;
                    };
                    match status_code(&buf[..n]) {
                        Some(c) if c < 200 => continue,
                        _ => break Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    }
                };
                match got {
                    None => failures.push(format!("{}: no final response within 1 s", case.name)),
                    Some(r) if status_code(r.as_bytes()) != Some(code) => {
                        failures.push(format!("{}: expected {code}, got:\n{r}", case.name))
                    }
                    Some(r) => {
                        if bytes.starts_with(b"INVITE ") {
                            let invite = String::from_utf8_lossy(&bytes).into_owned();
                            sock.send_to(ack_for(&invite, &r).as_bytes(), target)
                                .unwrap();
                            invites.push((case.name.clone(), sock));
                        }
                    }
                }
            }
            Outcome::Drop | Outcome::Ignore => {
                sock.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    failures.push(format!(
                        "{}: expected no answer, got:\n{}",
                        case.name,
                        String::from_utf8_lossy(&buf[..n])
                    ));
                }
            }
            Outcome::Close | Outcome::Wait => {
                failures.push(format!("{}: a stream outcome in the UDP corpus", case.name))
            }
        }
    }
    (failures, invites)
}

/// Sends each TCP case on its own connection and checks what comes back.
fn tcp_pass(cases: &[Case], target: SocketAddr) -> Vec<String> {
    use std::io::Write;
    let mut failures = Vec::new();
    for case in cases {
        let mut conn = TcpStream::connect(target).unwrap();
        let bytes = substitute(&case.bytes, conn.local_addr().unwrap().port());
        // Izwi may close the connection before a large message is all written.
        let _ = conn.write_all(&bytes);
        let mut pending = Vec::new();
        let mut read = |limit| read_stream_message(&mut conn, &mut pending, limit);
        match case.outcome {
            Outcome::Close => match read(Duration::from_secs(2)) {
                StreamRead::Closed => {}
                other => failures.push(format!("{}: expected a close, got {other:?}", case.name)),
            },
            Outcome::Wait => match read(Duration::from_millis(300)) {
                StreamRead::Nothing => {}
                other => failures.push(format!("{}: expected nothing, got {other:?}", case.name)),
            },
            Outcome::Status(code) => {
                // One answer per request in the file.
                let requests = bytes.windows(10).filter(|w| w == b" SIP/2.0\r\n").count();
                for i in 0..requests {
                    match read(Duration::from_secs(1)) {
                        StreamRead::Message(m) if status_code(m.as_bytes()) == Some(code) => {}
                        other => failures.push(format!(
                            "{}: answer {} of {requests}: expected {code}, got {other:?}",
                            case.name,
                            i + 1
                        )),
                    }
                }
            }
            Outcome::Drop | Outcome::Ignore => failures.push(format!(
                "{}: a datagram outcome in the TCP corpus",
                case.name
            )),
        }
    }
    failures
}

#[test]
fn malformed_sip_and_rtp_neither_crash_izwi_nor_disturb_a_call() {
    let udp_cases = corpus("");
    let tcp_cases = corpus("tcp");
    assert!(
        udp_cases.len() >= 40 && tcp_cases.len() >= 6,
        "corpus not found"
    );
    let izwi = Izwi::start(&[]);
    require_sipp(&izwi);
    let target: SocketAddr = format!("127.0.0.1:{}", izwi.port).parse().unwrap();

    // A call, and a tone streamed to it in real time until the corpus is sent.
    const HOLD_MS: u64 = 14_000;
    let call_start = Instant::now();
    let mut call = MediaCall::start(&izwi, HOLD_MS as u32);
    let media = call.media.try_clone().unwrap();
    let izwi_rtp: SocketAddr = call.izwi_rtp.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let streamer = {
        let stop = stop.clone();
        let deadline = call_start + Duration::from_millis(HOLD_MS - 2_500);
        std::thread::spawn(move || {
            // 440 whole cycles a second: the tone runs on across seconds.
            let second: Vec<f32> = (0..8000)
                .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 0.4)
                .collect();
            let mut seconds = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                call.stream(&second);
                seconds += 1;
            }
            let in_time = stop.load(Ordering::SeqCst);
            // Silence while the echo drains.
            call.stream(&[0.0; 160 * 20]);
            (call, seconds, in_time)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // Malformed RTP from the caller's own address, a packet apart.
    let junk = rtp_junk();
    for (_, bytes, _) in &junk {
        media.send_to(bytes, izwi_rtp).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let malformed = junk.iter().filter(|j| j.2).count();
    // A well-formed packet from a stranger: Izwi answers where the caller's RTP
    // comes from (symmetric RTP), but only from the source it learned, so the
    // stranger gets nothing and the caller's stream is not disturbed.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(&rtp(0x80, 0, 0x0bad_cafe, 1, &PCMU_SILENCE), izwi_rtp)
        .unwrap();

    // The corpus: every datagram, then the stream-framing cases on TCP.
    let (mut failures, invites) = udp_pass(&udp_cases, target);
    let after_acks = Instant::now();
    failures.extend(tcp_pass(&tcp_cases, target));
    // A 488 is retransmitted until its ACK (T1 = 500 ms): nothing may follow.
    std::thread::sleep(Duration::from_millis(700).saturating_sub(after_acks.elapsed()));
    for (name, sock) in &invites {
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            failures.push(format!(
                "{name}: answer retransmitted after the ACK:\n{}",
                String::from_utf8_lossy(&buf[..n])
            ));
        }
    }
    stop.store(true, Ordering::SeqCst);
    stranger
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut diverted = 0;
    let mut buf = [0u8; 2048];
    while stranger.recv_from(&mut buf).is_ok() {
        diverted += 1;
    }
    assert_eq!(diverted, 0, "RTP from a stranger diverted Izwi's audio");
    assert!(
        failures.is_empty(),
        "{} corpus case(s) failed:\n{}\n\nizwi:\n{}",
        failures.len(),
        failures.join("\n---\n"),
        izwi.log()
    );

    // The call was not disturbed: the echo kept coming, and sipp's BYE ends it.
    let (call, seconds, in_time) = streamer.join().unwrap();
    assert!(
        in_time,
        "the corpus took longer than the call lasts; raise HOLD_MS\n{}",
        izwi.log()
    );
    let received = call.finish(&izwi);
    let loud = received
        .chunks(160)
        .filter(|c| izwi::audio::rms(c) > 0.1)
        .count();
    let sent = seconds * 50;
    eprintln!("{loud} of {sent} tone packets came back");
    assert!(
        loud * 10 >= sent * 9,
        "only {loud} of {sent} tone packets came back\n{}",
        izwi.log()
    );
    let log = izwi.wait_log("call media ended", Duration::from_secs(5));
    let line = izwi.wait_line("call media ended", Duration::from_secs(5));
    let want = format!("malformed={malformed}");
    assert!(
        line.split_whitespace().any(|w| w == want),
        "expected {want}: {line}"
    );
    assert!(
        line.split_whitespace().any(|w| w == "foreign=1"),
        "the stranger's packet should be counted as foreign: {line}"
    );
    assert!(log.contains("RemoteBye"), "{log}");

    // Still answering.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let options = format!(
        "OPTIONS sip:izwi@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-mf-after\r\nFrom: <sip:t@127.0.0.1>;tag=after\r\nTo: <sip:izwi@127.0.0.1>\r\nCall-ID: mf-after\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        sock.local_addr().unwrap()
    );
    sock.send_to(options.as_bytes(), target).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|_| panic!("no answer to OPTIONS after the corpus\n{}", izwi.log()));
    assert_eq!(status_code(&buf[..n]), Some(200), "{}", izwi.log());

    // Every TCP framing error closed its own connection, and was logged.
    let closes = count(&tcp_cases, |o| o == Outcome::Close) as usize;
    assert_eq!(
        log.matches("closing SIP TCP connection").count(),
        closes,
        "{log}"
    );

    // The counts, as Izwi reports them when it stops.
    let log = izwi.terminate(Duration::from_secs(10));
    assert!(!log.contains("panicked"), "{log}");
    let stats = log
        .lines()
        .find(|l| l.contains("SIP endpoint stopped"))
        .unwrap_or_else(|| panic!("no stats line:\n{log}"));
    let drops = count(&udp_cases, |o| o == Outcome::Drop);
    let bad = count(&udp_cases, |o| {
        matches!(o, Outcome::Status(400 | 501 | 505))
    });
    assert_eq!(stat(stats, "dropped"), drops, "{stats}");
    assert_eq!(stat(stats, "bad_requests"), bad, "{stats}");
}

/// The same corpus through the sans-IO user agent alone (and the SDP offer/answer
/// for INVITEs, as the endpoint does it): fast, and exact about the counters.
#[test]
fn the_corpus_through_the_user_agent() {
    let cases = corpus("");
    assert!(cases.len() >= 40, "corpus not found");
    let mut ua = UserAgent::new(UaConfig {
        identity: Identity {
            user_agent: "izwi-test".into(),
            contact: "sip:izwi@127.0.0.1:5060".into(),
        },
        via_host: "127.0.0.1:5060".into(),
        max_calls: 100,
        max_calls_per_source: 100,
    });
    let peer: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let now = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        ua.handle_message(
            &substitute(&case.bytes, peer.port()),
            peer,
            Transport::Udp,
            now,
        );
        let mut finals = Vec::new();
        while let Some(out) = ua.poll_output() {
            match out {
                Output::Transmit { data, .. } => {
                    if status_code(data.as_bytes()).is_some_and(|c| c >= 200) {
                        finals.push(data);
                    }
                }
                Output::Event(Event::Incoming { call, offer, .. }) => {
                    let negotiated = offer.as_deref().map(|o| {
                        sdp::parse(o).map_err(|e| e.to_string()).and_then(|s| {
                            sdp::negotiate(&s, &[Codec::Pcmu, Codec::Pcma, Codec::Opus])
                                .map_err(|e| e.to_string())
                        })
                    });
                    match negotiated {
                        Some(Err(_)) => ua.reject(call, 488, "Not Acceptable Here", now),
                        _ => failures.push(format!("{}: offer accepted", case.name)),
                    }
                }
                Output::Event(_) => {}
            }
        }
        let codes: Vec<Option<u16>> = finals.iter().map(|f| status_code(f.as_bytes())).collect();
        let expected = match case.outcome {
            Outcome::Status(c) => vec![Some(c)],
            _ => vec![],
        };
        if codes != expected {
            failures.push(format!("{}: {codes:?}, expected {expected:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(ua.stats().dropped, count(&cases, |o| o == Outcome::Drop));
    assert_eq!(
        ua.stats().bad_requests,
        count(&cases, |o| matches!(o, Outcome::Status(400 | 501 | 505)))
    );
}
