//! The SIP front end against sipp, an independent SIP stack, on 127.0.0.1 only.
//! Izwi runs as a real `izwi serve` process with the echo agent (no models).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::sip_peer::*;
use izwi::rtp::dtmf;

#[test]
fn options_is_answered_with_200_and_allow() {
    let izwi = Izwi::start(&[]);
    let msgs = run_sipp(&izwi, "options.xml");
    assert!(msgs.contains("SIP/2.0 200 OK"), "{msgs}");
}

#[test]
fn an_unsupported_codec_gets_488() {
    let izwi = Izwi::start(&[]);
    let msgs = run_sipp(&izwi, "unsupported-codec.xml");
    assert!(msgs.contains("SIP/2.0 488"), "{msgs}");
    assert!(!msgs.contains("SIP/2.0 200 OK"), "{msgs}");
}

#[test]
fn hold_and_codec_change_by_reinvite_are_answered() {
    let izwi = Izwi::start(&[]);
    let msgs = run_sipp(&izwi, "hold.xml");
    izwi.wait_log("session updated", Duration::from_secs(5));
    let log = izwi.log();
    let line = log.lines().find(|l| l.contains("session updated")).unwrap();
    assert!(line.contains("RecvOnly") && line.contains("Pcma"), "{line}");
    assert!(msgs.matches("SIP/2.0 200 OK").count() >= 3, "{msgs}");
}

#[test]
fn cancel_before_answer_gets_200_and_487() {
    let izwi = Izwi::start(&[("IZWI_SIP_RING_MS", "5000")]);
    let msgs = run_sipp(&izwi, "cancel.xml");
    assert!(msgs.contains("SIP/2.0 180 Ringing"), "{msgs}");
    assert!(msgs.contains("SIP/2.0 487"), "{msgs}");
    izwi.wait_log("call ended before answer", Duration::from_secs(5));
}

#[test]
fn a_caller_outside_the_allow_list_must_answer_a_digest_challenge() {
    // 127.0.0.1 is not in the allow-list, so the caller is challenged.
    let izwi = Izwi::start(&[
        ("IZWI_SIP_ALLOW", "192.0.2.0/24"),
        ("IZWI_SIP_AUTH_USER", "trunk"),
        ("IZWI_SIP_AUTH_PASSWORD", "s3cret"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = sipp(
        &izwi,
        &scenario("digest.xml"),
        dir.path(),
        &["-au", "trunk", "-ap", "s3cret"],
    )
    .output()
    .unwrap();
    check(out, dir.path(), &izwi);
    let msgs = std::fs::read_to_string(dir.path().join("messages.log")).unwrap();
    assert!(
        msgs.contains("SIP/2.0 401 Unauthorized") && msgs.contains("WWW-Authenticate: Digest"),
        "{msgs}"
    );
    assert!(msgs.contains("SIP/2.0 200 OK"), "{msgs}");

    // A wrong password is challenged again and the call never answered.
    let dir = tempfile::tempdir().unwrap();
    let out = sipp(
        &izwi,
        &scenario("digest.xml"),
        dir.path(),
        &["-au", "trunk", "-ap", "wrong"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "a wrong password was accepted");
    let msgs = std::fs::read_to_string(dir.path().join("messages.log")).unwrap_or_default();
    assert!(!msgs.contains("SIP/2.0 200 OK"), "{msgs}");
}

#[test]
fn tcp_carries_options_and_a_call_that_izwi_ends() {
    let izwi = Izwi::start(&[("IZWI_SIP_RTP_TIMEOUT_SECS", "2")]);
    for name in ["options.xml", "bye-from-izwi.xml"] {
        let dir = tempfile::tempdir().unwrap();
        let out = sipp(&izwi, &scenario(name), dir.path(), &["-t", "t1"])
            .output()
            .unwrap();
        check(out, dir.path(), &izwi);
        let msgs = std::fs::read_to_string(dir.path().join("messages.log")).unwrap();
        assert!(
            msgs.contains("SIP/2.0/TCP"),
            "{name} did not go over TCP: {msgs}"
        );
    }
    izwi.wait_log("ending=rtp_timeout", Duration::from_secs(5));
}

#[test]
fn izwi_hangs_up_when_rtp_stops() {
    let izwi = Izwi::start(&[("IZWI_SIP_RTP_TIMEOUT_SECS", "2")]);
    let t = Instant::now();
    let msgs = run_sipp(&izwi, "bye-from-izwi.xml");
    assert!(msgs.contains("BYE sip:sipp@127.0.0.1"), "{msgs}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "hung up before the RTP timeout"
    );
    izwi.wait_log("ending=rtp_timeout", Duration::from_secs(5));
}

#[test]
fn a_call_carries_rtp_both_ways_and_dtmf_and_survives_bad_input() {
    let izwi = Izwi::start(&[]);
    let mut call = MediaCall::start(&izwi, 6000);
    let izwi_rtp = call.izwi_rtp.clone();

    // Malformed input while the call is up: none of it may disturb the call.
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let target = format!("127.0.0.1:{}", izwi.port);
    for junk in [
        &b"\x00\x01\x02garbage"[..],
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        &[0xffu8; 3000][..],
    ] {
        sip.send_to(junk, &target).unwrap();
    }
    let bad_length = "OPTIONS sip:izwi@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:izwi@127.0.0.1>\r\nCall-ID: bad-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 500\r\n\r\n";
    sip.send_to(bad_length.as_bytes(), &target).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sip
        .recv_from(&mut buf)
        .expect("an answer to the malformed OPTIONS");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    for junk in [
        &b"\x80"[..],
        &[0x80u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x40u8; 200][..],
    ] {
        call.media.send_to(junk, &izwi_rtp).unwrap();
    }

    // Two seconds of a 440 Hz tone, then the digit 5 as RFC 4733 events.
    let tone: Vec<f32> = (0..16_000)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 0.4)
        .collect();
    call.stream(&tone);
    let ts = call.packetizer.timestamp();
    for (event, marker) in dtmf::tone_packets('5', 100, 8000, 20) {
        let pkt = call
            .packetizer
            .event(101, &dtmf::encode(&event), marker, ts);
        call.media.send_to(&pkt, &izwi_rtp).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        call.receive();
    }
    // Keep the stream alive while the echo drains.
    call.stream(&[0.0; 160 * 25]);
    let call_digits = call.digits.clone();
    let received = call.finish(&izwi);
    // Izwi sent a steady stream back, and the echo of the tone is in it.
    assert!(
        received.len() >= 160 * 100,
        "only {} samples came back",
        received.len()
    );
    let loud = received
        .chunks(160)
        .filter(|c| izwi::audio::rms(c) > 0.1)
        .count();
    assert!(
        loud >= 60,
        "the tone did not come back: {loud} loud packets"
    );
    let log = izwi.wait_log("call media ended", Duration::from_secs(5));
    let line = izwi.wait_line("call media ended", Duration::from_secs(5));
    assert!(line.contains("dtmf=1"), "{line}");
    assert!(line.contains("digits_sent=1"), "{line}");
    assert!(line.contains("malformed=3"), "{line}");
    assert!(log.contains("RemoteBye"), "{log}");
    // The echo agent sends the key back as telephone-events (DTMF out).
    assert_eq!(call_digits, "5");
}

/// A late offer (INVITE without SDP): Izwi offers in its 200, the ACK answers,
/// and the answer's 30 ms packet time is used both ways.
#[test]
fn a_late_offer_is_answered_in_the_ack_and_its_ptime_is_honoured() {
    let izwi = Izwi::start(&[]);
    let mut call = MediaCall::start_with(&izwi, "call-late-offer-by-test.xml", 4000, 30);
    let tone: Vec<f32> = (0..16_000)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 0.4)
        .collect();
    call.stream(&tone);
    call.stream(&[0.0; 240 * 20]);
    let sizes = call.packet_sizes.clone();
    let received = call.finish(&izwi);
    let loud = received
        .chunks(240)
        .filter(|c| izwi::audio::rms(c) > 0.1)
        .count();
    assert!(
        loud >= 40,
        "the tone did not come back: {loud} loud packets"
    );
    assert!(sizes.len() > 50, "{} packets", sizes.len());
    assert!(
        sizes.iter().all(|&n| n == 240),
        "packets not of 30 ms: {sizes:?}"
    );
    let log = izwi.wait_log("call media ended", Duration::from_secs(5));
    assert!(log.contains("late offer"), "{log}");
    assert!(log.contains("ptime=30"), "{log}");
}

/// The heart of the issue: a caller on a SIP call asks a question and hears a
/// spoken answer from the real engine (small models), over PCMU.
#[test]
fn a_sip_caller_asks_and_hears_a_spoken_answer() {
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
    ]);
    let mut call = MediaCall::start(&izwi, 16_000);

    // The greeting plays first; the question comes after it, then silence.
    let question = common::espeak("What time does the clinic open on Monday?");
    let question8k = izwi::codec::resample::resample(&question, 16_000, 8_000).unwrap();
    let ask_at = 4.0;
    let mut caller = vec![0.0f32; (ask_at * 8000.0) as usize];
    caller.extend_from_slice(&question8k);
    let question_end = caller.len() as f64 / 8000.0;
    caller.resize(caller.len() + 8000 * 9, 0.0);

    call.stream(&caller);
    let received = call.finish(&izwi);

    // Izwi's stream is continuous from the answer, so its timeline matches ours.
    let greeting = &received[..(ask_at * 8000.0) as usize];
    assert!(izwi::audio::rms(greeting) > 0.01, "no greeting heard");
    let reply = &received[(question_end * 8000.0) as usize..];
    let reply16 = izwi::codec::resample::resample(reply, 8_000, 16_000).unwrap();
    let heard = common::engine().asr.transcribe(&reply16, "en").unwrap();
    let words = common::words(&heard);
    assert!(
        words.len() >= 4,
        "the answer is not several words of speech: {heard:?}\n{}",
        izwi.log()
    );
    let line = izwi.wait_line("call media ended", Duration::from_secs(5));
    assert!(
        line.contains("turns=2"),
        "greeting and one answered turn expected: {line}"
    );
}

/// kamailio, a record-routing proxy, stands in front of Izwi: a call completes
/// through it, and the BYEs of both sides follow the recorded route.
#[test]
fn calls_work_through_a_record_routing_proxy() {
    let izwi = Izwi::start(&[("IZWI_SIP_RTP_TIMEOUT_SECS", "2")]);
    let proxy_port = free_udp_port();
    let _proxy = Kamailio::start(
        "proxy.cfg",
        proxy_port,
        &[
            ("__LISTEN__", format!("udp:127.0.0.1:{proxy_port}")),
            ("__IZWI__", format!("sip:127.0.0.1:{}", izwi.port)),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let via_proxy = |name: &str, extra: &[&str]| {
        let d = tempfile::tempdir().unwrap();
        let out = sipp_to(proxy_port, &scenario(name), d.path(), extra)
            .output()
            .unwrap();
        check(out, d.path(), &izwi);
        std::fs::read_to_string(d.path().join("messages.log")).unwrap()
    };
    // Izwi hangs up (no RTP): its BYE must go through the proxy.
    let msgs = via_proxy("bye-from-izwi.xml", &[]);
    assert!(
        msgs.contains(&format!("Record-Route: <sip:127.0.0.1:{proxy_port}")),
        "{msgs}"
    );
    let bye = msgs.split("BYE sip:").nth(1).expect("a BYE from Izwi");
    let first_via = bye.lines().find(|l| l.starts_with("Via:")).unwrap();
    assert!(
        first_via.contains(&format!("127.0.0.1:{proxy_port}")),
        "BYE bypassed the proxy: {first_via}"
    );

    // The caller hangs up: its BYE follows the route to Izwi.
    let fields = dir.path().join("fields.csv");
    std::fs::write(&fields, format!("SEQUENTIAL\n{};\n", free_udp_port())).unwrap();
    let msgs = via_proxy(
        "call-media-by-test.xml",
        &["-inf", fields.to_str().unwrap(), "-d", "500"],
    );
    assert!(msgs.contains("Route: <sip:127.0.0.1:"), "{msgs}");
    izwi.wait_log("RemoteBye", Duration::from_secs(5));
}

/// A folder holding a baresip configuration (`sip/baresip/config`) whose one
/// account offers `codec`, and a `snd/` folder for what it records. Returns
/// it with baresip's ctrl_tcp command port.
fn baresip_dir(codec: &str) -> (tempfile::TempDir, u16) {
    baresip_dir_at(codec, "127.0.0.1")
}

/// baresip, a real softphone, calls Izwi with a spoken question as its
/// microphone; what it received must hold a spoken answer.
fn baresip_call(account_codec: &str, rate: u32, channels: usize, expect_codec: &str) {
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
    ]);
    let (dir, _) = baresip_dir(account_codec);
    let d = dir.path();

    let question = common::espeak("What time does the clinic open on Monday?");
    let ask_at = 4.0;
    let caller16 = common::compose(
        // Room for the answer even on a busy machine (baresip hangs up when the file ends).
        ask_at + common::duration(&question) + 14.0,
        &[(ask_at, &question)],
    );
    let audio16 = baresip_dials(&izwi, d, "izwi", &caller16, (rate, channels as u16), 40);
    let question_end = ask_at + common::duration(&question);
    let reply = &audio16[common::seconds(question_end).min(audio16.len())..];
    let heard = common::engine().asr.transcribe(reply, "en").unwrap();
    assert!(
        common::words(&heard).len() >= 4,
        "no spoken answer in what baresip received: {heard:?}\n{}",
        izwi.log()
    );
    let log = izwi.wait_log("call media ended", Duration::from_secs(5));
    assert!(log.contains(&format!("codec={expect_codec}")), "{log}");
}

#[test]
fn baresip_asks_over_pcmu_and_records_a_spoken_answer() {
    baresip_call("PCMU/8000", 8_000, 1, "Pcmu");
}

#[test]
fn baresip_asks_over_opus_and_records_a_spoken_answer() {
    baresip_call("opus/48000/2", 48_000, 2, "Opus");
}

/// kamailio as a trunk's registrar (digest, registrations granted for 3 s):
/// Izwi registers, keeps refreshing before expiry, and a call to its number
/// routed by the registrar reaches it. A wrong password is reported, and
/// registration over TCP (a connection Izwi opens) works too.
#[test]
fn izwi_registers_with_a_trunk_refreshes_and_takes_its_calls() {
    let udp = free_udp_port();
    let tcp = free_udp_port();
    let _registrar = Kamailio::start(
        "registrar.cfg",
        udp,
        &[
            ("__LISTEN_UDP__", format!("udp:127.0.0.1:{udp}")),
            ("__LISTEN_TCP__", format!("tcp:127.0.0.1:{tcp}")),
            ("__USER__", "izwi".to_string()),
            ("__PASSWORD__", "s3cret".to_string()),
            ("__EXPIRES__", "3".to_string()),
        ],
    );
    let registering = |port: u16, transport: &str, password: &str| {
        let to = format!("127.0.0.1:{port}");
        Izwi::start(&[
            ("IZWI_SIP_REGISTER_TO", to.as_str()),
            ("IZWI_SIP_REGISTER_DOMAIN", "izwi.test"),
            ("IZWI_SIP_REGISTER_USER", "izwi"),
            ("IZWI_SIP_REGISTER_PASSWORD", password),
            ("IZWI_SIP_REGISTER_TRANSPORT", transport),
        ])
    };
    let izwi = registering(udp, "udp", "s3cret");
    let wrong = registering(udp, "udp", "guess");
    let over_tcp = registering(tcp, "tcp", "s3cret");

    // Three grants of 3 s in a row: each refreshed before it ran out.
    let t = Instant::now();
    while izwi.log().matches("registered").count() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no refreshes:\n{}",
            izwi.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(izwi.log().contains("expires=3"), "{}", izwi.log());
    wrong.wait_log("credentials refused", Duration::from_secs(5));
    assert!(!wrong.log().contains(" registered"), "{}", wrong.log());
    over_tcp.wait_log("registered", Duration::from_secs(5));

    // A call to the number, through the registrar, reaches Izwi.
    let d = tempfile::tempdir().unwrap();
    let fields = d.path().join("fields.csv");
    std::fs::write(&fields, format!("SEQUENTIAL\n{};20;\n", free_udp_port())).unwrap();
    let out = sipp_to(
        udp,
        &scenario("call-media-by-test.xml"),
        d.path(),
        &["-inf", fields.to_str().unwrap(), "-d", "500", "-s", "izwi"],
    )
    .output()
    .unwrap();
    check(out, d.path(), &izwi);
    izwi.wait_log("RemoteBye", Duration::from_secs(5));
    let msgs = std::fs::read_to_string(d.path().join("messages.log")).unwrap();
    assert!(
        msgs.contains(&format!("Record-Route: <sip:127.0.0.1:{udp}")),
        "{msgs}"
    );
}

/// DTMF both ways with baresip: keys pressed in baresip (RFC 4733, sent on
/// command over its ctrl_tcp socket mid-call) reach Izwi as digit events, and
/// the echo agent's keys sent back are reported by baresip.
#[test]
fn baresip_and_izwi_exchange_dtmf() {
    use std::io::{BufRead, BufReader, Write};
    let izwi = Izwi::start(&[]);
    let (dir, ctrl) = baresip_dir("PCMU/8000");
    let d = dir.path();
    // Eight seconds of quiet microphone; baresip hangs up when it ends.
    silent_microphone(d, 8);

    let mut baresip = std::process::Command::new("baresip")
        .arg("-f")
        .arg(d)
        .args([
            "-e",
            &format!("/dial sip:izwi@127.0.0.1:{}", izwi.port),
            "-t",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("baresip must be installed (scripts/setup.sh)");
    let console = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = console.clone();
    let stdout = baresip.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut c = sink.lock().unwrap();
            c.push_str(&line);
            c.push('\n');
        }
    });
    let wait_console = |needle: &str| {
        let t = Instant::now();
        while !console.lock().unwrap().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "baresip never printed {needle:?}:\n{}\nizwi:\n{}",
                console.lock().unwrap(),
                izwi.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_console("Call established");
    let mut control = std::net::TcpStream::connect(("127.0.0.1", ctrl)).unwrap();
    for key in ["5", "#"] {
        let cmd = format!(r#"{{"command":"sndcode","params":"{key}","token":"k"}}"#);
        write!(control, "{}:{},", cmd.len(), cmd).unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    // baresip 1.0 reports the events it receives, start and end.
    wait_console("received event: '5' (end=1)");
    wait_console("received event: '#' (end=1)");
    let hangup = r#"{"command":"hangup","token":"h"}"#;
    write!(control, "{}:{},", hangup.len(), hangup).unwrap();
    wait_console("terminated");
    let _ = baresip.kill();
    let _ = baresip.wait();
    let line = izwi.wait_line("call media ended", Duration::from_secs(10));
    assert!(line.contains("dtmf=2"), "{line}");
    assert!(line.contains("digits_sent=2"), "{line}");
    assert!(line.contains("lost=0"), "{line}");
}

/// A caller on another host (the far end of a veth pair, in a network
/// namespace of its own) calls Izwi listening on every address with no
/// `sip.advertise`: Izwi's SDP and Contact carry the address the caller can
/// reach, and the caller hears the greeting.
#[test]
fn a_caller_on_another_host_hears_izwi_listening_on_every_address() {
    common::attack::isolate();
    let far = format!("izwi-far-{}", std::process::id());
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &far]);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _gone = Gone(far.clone());
    ip(&[
        "link", "add", "izv0", "type", "veth", "peer", "name", "izv1",
    ]);
    ip(&["link", "set", "izv1", "netns", &far]);
    ip(&["addr", "add", "10.77.0.1/24", "dev", "izv0"]);
    ip(&["link", "set", "izv0", "up"]);
    for args in [
        &["addr", "add", "10.77.0.2/24", "dev", "izv1"][..],
        &["link", "set", "izv1", "up"],
        &["link", "set", "lo", "up"],
    ] {
        let mut all = vec!["netns", "exec", &far, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }
    let port = free_udp_port();
    let listen = format!("0.0.0.0:{port}");
    let izwi = Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_SIP_LISTEN", listen.as_str()),
    ]);
    let (dir, _) = baresip_dir_at("PCMU/8000", "10.77.0.2");
    let d = dir.path();
    silent_microphone(d, 6);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &far, "baresip", "-f"])
        .arg(d)
        .args([
            "-e",
            &format!("/dial sip:izwi@10.77.0.1:{port}"),
            "-t",
            "20",
        ])
        .output()
        .expect("baresip");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains("Call established"),
        "{console}\n{}",
        izwi.log()
    );
    let received = std::fs::read_dir(d.join("snd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip wrote no received audio");
    let (audio, rate) = izwi::codec::wav::read_mono(&received).unwrap();
    let audio16 = izwi::codec::resample::resample(&audio, rate, 16_000).unwrap();
    let heard = common::engine().asr.transcribe(&audio16, "en").unwrap();
    assert!(
        common::words(&heard).len() >= 3,
        "the caller heard no greeting: {heard:?}\n{}",
        izwi.log()
    );
    // What Izwi gave the caller to reach it: the veth address, not loopback.
    let answered = izwi.wait_line("call offered", Duration::from_secs(5));
    assert!(answered.contains("peer=10.77.0.2"), "{answered}");
    assert!(
        !console.contains("127.0.0.1:"),
        "the caller was told of loopback:\n{console}"
    );
}
