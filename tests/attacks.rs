//! Izwi under attack (issue 9): each test runs in a network namespace of its
//! own, starts a real `izwi serve` (echo agent, no models), attacks it from
//! 127.0.0.66 and checks that a neighbour on 127.0.0.1 is still served, that
//! memory and CPU stay bounded and that the right counters move. Each prints
//! its figures; `IZWI_TEST_BIN=<older izwi>` runs the same attacks against
//! another build.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::attack::*;
use common::one_at_a_time;
use common::sip_peer::{Izwi, Launch};
use common::twilio;

const OPS_KEY: &str = "ops-key-0123456789abcdef";

fn api_env() -> (&'static str, String) {
    ("IZWI_API_API_KEYS", format!("ops:{OPS_KEY}"))
}

/// GET on the operator API with the test's key.
fn api(izwi: &Izwi, path: &str) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}{path}", izwi.http_port);
    let r = ureq::get(&url)
        .set("X-Api-Key", OPS_KEY)
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", izwi.log()));
    serde_json::from_str(&r.into_string().unwrap()).unwrap()
}

fn uri(izwi: &Izwi) -> String {
    format!("sip:+263242700000@127.0.0.1:{}", izwi.port)
}

/// A whole call from the neighbour: set up, media both ways for a second, hung up.
/// Returns the packets and loud packets it heard back.
fn neighbour_call(izwi: &Izwi, call_id: &str) -> (usize, usize) {
    let client = SipClient::new(NEIGHBOUR, izwi);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (izwi_rtp, tag) = call(
        &client,
        &uri(izwi),
        call_id,
        "nb",
        media.local_addr().unwrap(),
        "",
    )
    .unwrap_or_else(|r| panic!("the neighbour's call was refused: {r}\n{}", izwi.log()));
    let heard = talk(&media, izwi_rtp, 0..50, 0x1234);
    assert_eq!(bye(&client, &uri(izwi), call_id, "nb", &tag), 200);
    heard
}

/// Sends frames of tone numbered `seqs` to Izwi, paced, while counting what comes back.
fn talk(
    media: &UdpSocket,
    to: SocketAddr,
    seqs: std::ops::Range<u16>,
    ssrc: u32,
) -> (usize, usize) {
    let sender = media.try_clone().unwrap();
    let tone = tone_frame();
    let frames = seqs.len() as u64;
    let pace = std::thread::spawn(move || {
        let t = Instant::now();
        for (n, seq) in seqs.enumerate() {
            let due = Duration::from_millis(20 * n as u64);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
            let _ = sender.send_to(&rtp(seq, ssrc, &tone), to);
        }
    });
    let heard = receive_for(media, Duration::from_millis(20 * frames + 300));
    pace.join().unwrap();
    heard
}

fn count_lines(izwi: &Izwi, needle: &str) -> usize {
    izwi.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_stranger_cannot_take_a_calls_media_before_its_first_packet_or_during_a_pause() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::start(&[
        ("IZWI_SIP_RTP_PORT_MIN", "40000"),
        ("IZWI_SIP_RTP_PORT_MAX", "40199"),
    ]);
    let m0 = metrics(&izwi);
    let probe = Probe::start(&izwi);
    let rss0 = probe.rss_mb();
    let client = SipClient::new(NEIGHBOUR, &izwi);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let attacker = Arc::new(UdpSocket::bind(format!("{ATTACKER}:0")).unwrap());
    let (izwi_rtp, tag) = call(
        &client,
        &uri(&izwi),
        "hijack-1",
        "c1",
        media.local_addr().unwrap(),
        "",
    )
    .expect("the caller's call");
    let tone = tone_frame();
    // Every even port of the range, as a stranger guessing the call's port would.
    let spray = |rounds: u16| {
        for r in 0..rounds {
            for port in (40_000..40_200).step_by(2) {
                let _ = attacker.send_to(&rtp(r, 0x0bad, &tone), ("127.0.0.1", port));
            }
        }
    };

    // Before the caller's first packet.
    spray(5);
    let (before_first, _) = receive_for(&media, Duration::from_secs(1));
    let (stolen_first, _) = receive_for(&attacker, Duration::from_millis(200));

    // The caller talks, then pauses longer than any re-latch delay while the stranger sprays.
    let (_, echoed) = talk(&media, izwi_rtp, 0..50, 0xca11);
    let stop = Arc::new(AtomicBool::new(false));
    let sprayer = {
        let (a, stop, tone) = (attacker.clone(), stop.clone(), tone.clone());
        std::thread::spawn(move || {
            let mut r = 100u16;
            while !stop.load(Ordering::Relaxed) {
                for port in (40_000..40_200).step_by(2) {
                    let _ = a.send_to(&rtp(r, 0x0bad, &tone), ("127.0.0.1", port));
                }
                r = r.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (in_pause, _) = receive_for(&media, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    sprayer.join().unwrap();
    let (stolen_pause, _) = receive_for(&attacker, Duration::from_millis(300));
    let cores = probe.cores();
    // The caller goes on, and hears itself again: the media is still its own.
    let (_, echoed_after) = talk(&media, izwi_rtp, 50..100, 0xca11);
    assert_eq!(bye(&client, &uri(&izwi), "hijack-1", "c1", &tag), 200);

    let m1 = metrics(&izwi);
    let foreign = metric(
        &m1,
        "izwi_rtp_packets_dropped_total",
        &[("reason", "foreign")],
    ) - metric(
        &m0,
        "izwi_rtp_packets_dropped_total",
        &[("reason", "foreign")],
    );
    let rss = probe.rss_mb();
    println!(
        "hijack: caller heard {before_first} packets before its first and {in_pause} during its pause; \
         the stranger got {stolen_first} + {stolen_pause}; {foreign} stranger packets refused and counted; \
         echo {echoed}/{echoed_after} loud frames; Izwi {cores:.2} cores, RSS {rss0:.1} → {rss:.1} MB"
    );
    assert_eq!(stolen_first + stolen_pause, 0, "{}", izwi.log());
    assert!(
        before_first >= 40,
        "Izwi's audio went elsewhere: {before_first}"
    );
    assert!(in_pause >= 120, "Izwi's audio went elsewhere: {in_pause}");
    assert!(
        echoed_after >= 20,
        "the caller's media was taken: {echoed_after}"
    );
    assert!(foreign >= 100.0, "refused packets are counted: {foreign}");
    assert!(rss - rss0 < 30.0, "RSS grew {rss0:.1} → {rss:.1} MB");
    assert!(cores < 1.0, "{cores:.2} cores");
}

#[test]
fn an_invite_naming_a_third_party_makes_izwi_send_it_nothing_even_when_acknowledged() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::start(&[]);
    let probe = Probe::start(&izwi);
    let victim = UdpSocket::bind("127.0.0.77:0").unwrap();
    let attacker = SipClient::new(ATTACKER, &izwi);
    let mut answered = 0;
    let mut sent_bytes = 0;
    for i in 0..5 {
        let body = offer(victim.local_addr().unwrap());
        let call_id = format!("reflect-{i}");
        let invite = Request {
            method: "INVITE",
            uri: &uri(&izwi),
            via: attacker.local(),
            branch: &branch(),
            call_id: &call_id,
            from_tag: "r",
            to_tag: None,
            cseq: 1,
            extra: "",
            body: &body,
        };
        let text = invite.text();
        sent_bytes += text.len();
        attacker.send(&text);
        let Some(ok) = attacker
            .final_response(Duration::from_secs(2))
            .filter(|r| status(r) == Some(200))
        else {
            continue;
        };
        answered += 1;
        // Even acknowledged: the attacker has the 200, so the ACK is easy.
        let tag = to_tag(&ok);
        let ack_branch = branch();
        let ack = invite.ack(&tag, &ack_branch).text();
        sent_bytes += ack.len();
        attacker.send(&ack);
    }
    let (reflected, _) = receive_for(&victim, Duration::from_secs(4));
    let (heard, _) = neighbour_call(&izwi, "reflect-neighbour");
    let cores = probe.cores();
    println!(
        "reflection: {answered} INVITEs naming a third party answered and ACKed ({sent_bytes} bytes); \
         the third party received {reflected} RTP packets in 4 s; the neighbour heard {heard}; Izwi {cores:.2} cores"
    );
    assert_eq!(
        answered, 5,
        "the INVITEs are answered (so this is about media, not refusal)"
    );
    assert_eq!(reflected, 0, "media went to a third party");
    assert!(heard >= 40, "the neighbour's call: {heard}");
}

#[test]
fn digest_replays_a_wrong_uri_and_password_guessing_are_refused() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::start(&[
        ("IZWI_SIP_AUTH_USER", "trunk"),
        ("IZWI_SIP_AUTH_PASSWORD", "s3cret-pw"),
    ]);
    let m0 = metrics(&izwi);
    let uri = uri(&izwi);
    let neighbour = SipClient::new(NEIGHBOUR, &izwi);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let body = offer(media.local_addr().unwrap());
    let invite = |c: &SipClient, call_id: &str, from_tag: &str, cseq: u32, extra: &str| {
        let msg = Request {
            method: "INVITE",
            uri: &uri,
            via: c.local(),
            branch: &branch(),
            call_id,
            from_tag,
            to_tag: None,
            cseq,
            extra,
            body: &body,
        }
        .text();
        c.send(&msg);
        c.final_response(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no answer to INVITE {call_id}\n{}", izwi.log()))
    };
    let challenge = |r: &str| {
        assert_eq!(status(r), Some(401), "{r}");
        izwi::sip::digest::parse_challenge(&header(r, "WWW-Authenticate").unwrap()).unwrap()
    };
    let answer = |ch: &izwi::sip::digest::Challenge, uri: &str, password: &str| {
        format!(
            "Authorization: {}\r\n",
            izwi::sip::digest::respond(ch, "INVITE", uri, "trunk", password, "cn0", 1)
        )
    };

    // The right answer gets the call.
    let ch = challenge(&invite(&neighbour, "auth-1", "a1", 1, ""));
    let good = answer(&ch, &uri, "s3cret-pw");
    let ok = invite(&neighbour, "auth-1", "a1", 2, &good);
    assert_eq!(status(&ok), Some(200), "{ok}\n{}", izwi.log());
    // The captured header, replayed on a new call and on a new dialog of the same Call-ID.
    let replay_new_call = invite(&neighbour, "auth-2", "a2", 1, &good);
    let replay_same_call = invite(&neighbour, "auth-1", "a9", 1, &good);
    // A digest computed for another Request-URI.
    let ch = challenge(&invite(&neighbour, "auth-3", "a3", 1, ""));
    let elsewhere = answer(&ch, "sip:someone-else@127.0.0.1", "s3cret-pw");
    let wrong_uri = invite(&neighbour, "auth-3", "a3", 2, &elsewhere);

    // Guessing from another address, as fast as answers come.
    let attacker = SipClient::new(ATTACKER, &izwi);
    let t = Instant::now();
    let (mut checked, mut blocked) = (0, 0);
    for i in 0..40 {
        let r = invite(&attacker, &format!("guess-{i}"), "g", 1, "");
        if status(&r) == Some(403) {
            blocked += 1;
            continue;
        }
        let ch = challenge(&r);
        let guess = answer(&ch, &uri, &format!("guess{i}"));
        let r = invite(&attacker, &format!("guess-{i}"), "g", 2, &guess);
        match status(&r) {
            Some(401) => checked += 1,
            Some(403) => blocked += 1,
            other => panic!("a guess got {other:?}: {r}"),
        }
    }
    let guessing_s = t.elapsed().as_secs_f64();
    // Meanwhile the neighbour still gets in.
    let ch = challenge(&invite(&neighbour, "auth-4", "a4", 1, ""));
    let after = invite(
        &neighbour,
        "auth-4",
        "a4",
        2,
        &answer(&ch, &uri, "s3cret-pw"),
    );

    let m1 = metrics(&izwi);
    let delta = |reason: &str| {
        metric(
            &m1,
            "izwi_sip_messages_rejected_total",
            &[("reason", reason)],
        ) - metric(
            &m0,
            "izwi_sip_messages_rejected_total",
            &[("reason", reason)],
        )
    };
    println!(
        "digest: replay on a new call → {:?}, on the same Call-ID → {:?}, wrong uri → {:?}; \
         40 guesses in {guessing_s:.2} s: {checked} checked, {blocked} refused unchecked; \
         counters nonce {} replay {} uri {} password {} blocked {}",
        status(&replay_new_call),
        status(&replay_same_call),
        status(&wrong_uri),
        delta("auth_nonce"),
        delta("auth_replay"),
        delta("auth_uri"),
        delta("auth_password"),
        delta("auth_blocked"),
    );
    assert_eq!(status(&replay_new_call), Some(401), "{replay_new_call}");
    assert_eq!(status(&replay_same_call), Some(401), "{replay_same_call}");
    assert_eq!(status(&wrong_uri), Some(401), "{wrong_uri}");
    assert_eq!(status(&after), Some(200), "{after}\n{}", izwi.log());
    assert!(checked <= 6, "{checked} guesses were checked");
    assert!(blocked >= 30, "{blocked} guesses refused without a check");
    assert!(delta("auth_nonce") >= 1.0);
    assert!(delta("auth_replay") >= 1.0);
    assert!(delta("auth_uri") >= 1.0);
    assert!(delta("auth_password") >= checked as f64);
    assert!(delta("auth_blocked") >= blocked as f64);
    assert!(
        count_lines(&izwi, "too many failed authentications") <= 20,
        "log lines about a guesser are bounded"
    );
}

#[test]
fn an_invite_flood_from_one_source_leaves_call_slots_for_a_neighbour() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::start(&[
        ("IZWI_SIP_MAX_CALLS", "20"),
        ("IZWI_SIP_MAX_CALLS_PER_SOURCE", "5"),
        ("IZWI_SIP_REQUESTS_PER_SOURCE", "50"),
    ]);
    let m0 = metrics(&izwi);
    let probe = Probe::start(&izwi);
    let rss0 = probe.rss_mb();
    let attacker = SipClient::new(ATTACKER, &izwi);
    let own_media = UdpSocket::bind(format!("{ATTACKER}:0")).unwrap();
    let body = offer(own_media.local_addr().unwrap());
    for i in 0..300 {
        attacker.send(
            &Request {
                method: "INVITE",
                uri: &uri(&izwi),
                via: attacker.local(),
                branch: &branch(),
                call_id: &format!("flood-{i}"),
                from_tag: "f",
                to_tag: None,
                cseq: 1,
                extra: "",
                body: &body,
            }
            .text(),
        );
    }
    let replies = attacker.until(Duration::from_secs(2), |_| false);
    let count = |code| {
        replies
            .iter()
            .filter(|r| status(r) == Some(code) && r.contains("CSeq: 1 INVITE"))
            .map(|r| header(r, "Call-ID").unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let (taken, busy) = (count(200), count(503));
    let unanswered = 300 - taken - busy;
    let heard: Vec<(usize, usize)> = (0..3)
        .map(|i| neighbour_call(&izwi, &format!("neighbour-{i}")))
        .collect();
    let m1 = metrics(&izwi);
    let delta = |reason: &str| {
        metric(
            &m1,
            "izwi_sip_messages_rejected_total",
            &[("reason", reason)],
        ) - metric(
            &m0,
            "izwi_sip_messages_rejected_total",
            &[("reason", reason)],
        )
    };
    let (cores, rss) = (probe.cores(), probe.rss_mb());
    println!(
        "INVITE flood: 300 from one source: {taken} calls taken, {busy} refused with 503, \
         {unanswered} dropped over its rate; the neighbour's 3 calls heard {heard:?}; \
         counters source_busy {} rate_limited {}; Izwi {cores:.2} cores, RSS {rss0:.1} → {rss:.1} MB",
        delta("source_busy"),
        delta("rate_limited"),
    );
    assert!(taken <= 5, "one source took {taken} call slots");
    assert!(busy >= 1, "nothing refused with 503");
    for (packets, _) in &heard {
        assert!(*packets >= 40, "the neighbour's call: {heard:?}");
    }
    assert!(delta("source_busy") >= 1.0);
    assert!(delta("rate_limited") >= 1.0);
    assert!(rss - rss0 < 30.0);
    assert!(
        count_lines(&izwi, "source holds its share") + count_lines(&izwi, "over the source's rate")
            <= 40,
        "log lines under a flood are bounded"
    );
}

#[test]
fn an_options_flood_from_one_source_does_not_starve_a_neighbour() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::start(&[]);
    let m0 = metrics(&izwi);
    let probe = Probe::start(&izwi);
    let rss0 = probe.rss_mb();
    const SECONDS: u64 = 5;
    const FLOOD_PER_SEC: u64 = 20_000;
    const NEIGHBOUR_PER_SEC: u64 = 150;
    let stop = Arc::new(AtomicBool::new(false));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let flood_answered = Arc::new(AtomicU64::new(0));
    let attacker = Arc::new(SipClient::new(ATTACKER, &izwi));
    let options = |c: &SipClient, i: u64, tag: &str| {
        Request {
            method: "OPTIONS",
            uri: &uri(&izwi),
            via: c.local(),
            branch: &format!("z9hG4bK{tag}{i}"),
            call_id: &format!("{tag}-{i}"),
            from_tag: tag,
            to_tag: None,
            cseq: 1,
            extra: "",
            body: "",
        }
        .text()
    };
    let template = options(&attacker, 0, "fl");
    let sender = {
        let (a, stop, sent) = (attacker.clone(), stop.clone(), flood_sent.clone());
        std::thread::spawn(move || {
            // 200 every 10 ms against the clock, each with a fresh branch and Call-ID.
            let t = Instant::now();
            let mut i = 0u64;
            for batch in 0..SECONDS * 100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for _ in 0..FLOOD_PER_SEC / 100 {
                    i += 1;
                    let m = template
                        .replace("z9hG4bKfl0", &format!("z9hG4bKfl{i}"))
                        .replace("fl-0", &format!("fl-{i}"));
                    let _ = a.sock.send_to(m.as_bytes(), a.target);
                }
                sent.store(i, Ordering::Relaxed);
                let due = Duration::from_millis(10 * (batch + 1));
                if let Some(wait) = due.checked_sub(t.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let drain = {
        let (a, stop, answered) = (attacker.clone(), stop.clone(), flood_answered.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if a.sock.recv_from(&mut buf).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // The neighbour: paced OPTIONS, each answer matched by its branch.
    let neighbour = SipClient::new(NEIGHBOUR, &izwi);
    neighbour
        .sock
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let total = NEIGHBOUR_PER_SEC * SECONDS;
    let mut answered = std::collections::HashSet::new();
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut sent = 0;
    while t.elapsed() < Duration::from_secs(SECONDS) + Duration::from_millis(500) {
        if sent < total && t.elapsed() >= Duration::from_millis(1000 * sent / NEIGHBOUR_PER_SEC) {
            neighbour.send(&options(&neighbour, sent, "nb"));
            sent += 1;
        }
        if let Ok((n, _)) = neighbour.sock.recv_from(&mut buf) {
            let r = String::from_utf8_lossy(&buf[..n]);
            if status(&r) == Some(200)
                && let Some(b) = header(&r, "Via").and_then(|v| {
                    v.split("branch=")
                        .nth(1)
                        .map(|b| b.split(';').next().unwrap_or("").to_string())
                })
            {
                answered.insert(b);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drain.join().unwrap();
    let (cores, rss) = (probe.cores(), probe.rss_mb());
    let m1 = metrics(&izwi);
    let limited = metric(
        &m1,
        "izwi_sip_messages_rejected_total",
        &[("reason", "rate_limited")],
    ) - metric(
        &m0,
        "izwi_sip_messages_rejected_total",
        &[("reason", "rate_limited")],
    );
    let served = answered.len() as f64 / total as f64;
    let flood_sent = flood_sent.load(Ordering::Relaxed);
    println!(
        "OPTIONS flood: {flood_sent} sent in {SECONDS} s ({}/s) by one source, {} answered, {limited} dropped over its rate; \
         the neighbour had {}/{} answered ({:.1} %, {:.0}/s); Izwi {cores:.2} cores, RSS {rss0:.1} → {rss:.1} MB",
        flood_sent / SECONDS,
        flood_answered.load(Ordering::Relaxed),
        answered.len(),
        total,
        served * 100.0,
        answered.len() as f64 / SECONDS as f64,
    );
    assert!(
        served >= 0.95,
        "the neighbour was starved: {:.1} % answered",
        served * 100.0
    );
    assert!(
        limited >= flood_sent as f64 * 0.5,
        "{limited} of {flood_sent} counted"
    );
    assert!(rss - rss0 < 30.0, "RSS grew {rss0:.1} → {rss:.1} MB");
    assert!(cores < 1.5, "{cores:.2} cores");
}

/// Connections that say nothing, or trickle a byte at a time, from one source
/// against Izwi started with only 256 file descriptors.
#[test]
fn idle_and_trickling_connections_under_a_low_file_limit() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::launch(
        &[
            ("IZWI_SIP_MAX_CALLS", "20"),
            ("IZWI_HTTP_HEADER_TIMEOUT_SECS", "2"),
            ("IZWI_SIP_TCP_MESSAGE_SECS", "2"),
            ("IZWI_SIP_TCP_IDLE_SECS", "3"),
        ],
        Launch {
            nofile: Some(256),
            ..Launch::default()
        },
    );
    let m0 = metrics(&izwi);
    let fds0 = open_files(izwi.pid());
    let sip: SocketAddr = format!("127.0.0.1:{}", izwi.port).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", izwi.http_port).parse().unwrap();
    let mut conns = Vec::new();
    for i in 0..300 {
        let to = if i % 2 == 0 { sip } else { http };
        if let Ok(c) = tcp_from(ATTACKER, to) {
            conns.push(c);
        }
    }
    let probe = Probe::start(&izwi);
    // Half of them (half of each listener's) trickle: a byte of a message
    // every 400 ms; the others say nothing.
    let trickle: Vec<_> = conns
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 < 2)
        .filter_map(|(_, c)| c.try_clone().ok())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let text = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.66;branch=z9hG4bKt\r\n";
            let mut i = 0;
            let mut trickle = trickle;
            while !stop.load(Ordering::Relaxed) {
                for c in trickle.iter_mut() {
                    let _ = std::io::Write::write_all(c, &text[i % text.len()..=i % text.len()]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let fds_attacked = open_files(izwi.pid());
    // The neighbour, meanwhile: HTTP, SIP over TCP, a call over UDP.
    let (health, _) = http_get(&izwi, "/healthz");
    let mut tcp = tcp_from(NEIGHBOUR, sip).expect("the neighbour's TCP connection");
    let opt = Request {
        method: "OPTIONS",
        uri: &uri(&izwi),
        via: tcp.local_addr().unwrap(),
        branch: &branch(),
        call_id: "tcp-nb",
        from_tag: "n",
        to_tag: None,
        cseq: 1,
        extra: "",
        body: "",
    }
    .text()
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    std::io::Write::write_all(&mut tcp, opt.as_bytes()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = std::io::Read::read(&mut tcp, &mut buf).unwrap_or(0);
    let tcp_answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (heard, _) = neighbour_call(&izwi, "fd-neighbour");
    // Every attacking connection is closed by Izwi within its timeouts.
    let t = Instant::now();
    let mut closed = 0;
    for c in conns.iter_mut() {
        if closed_within(c, Duration::from_secs(6).saturating_sub(t.elapsed())) {
            closed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
    let cores = probe.cores();
    drop(conns);
    std::thread::sleep(Duration::from_millis(300));
    let fds1 = open_files(izwi.pid());
    let m1 = metrics(&izwi);
    let delta =
        |name: &str, labels: &[(&str, &str)]| metric(&m1, name, labels) - metric(&m0, name, labels);
    let refused = delta("izwi_connections_refused_total", &[]);
    let timed_out = |listener, reason| {
        delta(
            "izwi_connections_closed_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    println!(
        "connections: 300 from one source under a 256-file limit: {refused} refused at once, \
         {closed} closed by Izwi within 6 s (sip idle {} message {}, http header {}); \
         Izwi files {fds0} → {fds_attacked} under attack → {fds1}; {cores:.2} cores; \
         neighbour: /healthz {health}, TCP OPTIONS {:?}, call heard {heard}",
        timed_out("sip_tcp", "idle_timeout"),
        timed_out("sip_tcp", "message_timeout"),
        timed_out("http", "header_timeout"),
        status(&tcp_answer),
    );
    assert_eq!(health, 200);
    assert_eq!(status(&tcp_answer), Some(200), "{tcp_answer}");
    assert!(heard >= 40, "the neighbour's call: {heard}");
    assert!(closed >= 290, "{closed} of 300 closed");
    assert!(refused >= 1.0, "per-source caps refused nothing");
    assert!(timed_out("sip_tcp", "message_timeout") >= 1.0);
    assert!(timed_out("sip_tcp", "idle_timeout") >= 1.0);
    assert!(timed_out("http", "header_timeout") >= 1.0);
    assert!(cores < 0.5, "{cores:.2} cores while connections idle");
    assert!(fds1 <= fds0 + 10, "files {fds0} → {fds1}");
}

/// With caps set above what the file limit allows, accepts fail with EMFILE:
/// Izwi must pause instead of spinning, count it, and recover.
#[test]
fn running_out_of_file_descriptors_pauses_accepting_instead_of_spinning() {
    let _serial = one_at_a_time();
    isolate();
    let izwi = Izwi::launch(
        &[
            ("IZWI_SIP_MAX_CALLS", "10"),
            ("IZWI_SIP_TCP_MAX_CONNECTIONS", "2000"),
            ("IZWI_SIP_TCP_MAX_CONNECTIONS_PER_SOURCE", "2000"),
            ("IZWI_HTTP_MAX_CONNECTIONS", "2000"),
            ("IZWI_HTTP_MAX_CONNECTIONS_PER_SOURCE", "2000"),
            ("IZWI_SIP_TCP_IDLE_SECS", "60"),
        ],
        Launch {
            nofile: Some(160),
            ..Launch::default()
        },
    );
    let m0 = metrics(&izwi);
    let sip: SocketAddr = format!("127.0.0.1:{}", izwi.port).parse().unwrap();
    let mut conns: Vec<_> = (0..300)
        .filter_map(|_| tcp_from(ATTACKER, sip).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let probe = Probe::start(&izwi);
    std::thread::sleep(Duration::from_secs(3));
    let cores = probe.cores();
    let at_limit = open_files(izwi.pid());
    // The attacker lets go: Izwi accepts again.
    conns.clear();
    let t = Instant::now();
    let mut recovered = None;
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(mut c) = tcp_from(NEIGHBOUR, sip) {
            let opt = format!(
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP {};branch={}\r\nFrom: <sip:n@127.0.0.1>;tag=n\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: emfile-{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                c.local_addr().unwrap(),
                branch(),
                t.elapsed().as_millis()
            );
            let _ = std::io::Write::write_all(&mut c, opt.as_bytes());
            c.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let mut buf = [0u8; 2048];
            if let Ok(n) = std::io::Read::read(&mut c, &mut buf)
                && status(&String::from_utf8_lossy(&buf[..n])) == Some(200)
            {
                recovered = Some(t.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (health, _) = http_get(&izwi, "/healthz");
    let m1 = metrics(&izwi);
    let errors = metric(&m1, "izwi_accept_errors_total", &[("listener", "sip_tcp")])
        - metric(&m0, "izwi_accept_errors_total", &[("listener", "sip_tcp")]);
    println!(
        "EMFILE: 300 connections against a 160-file limit: {at_limit} files open, {errors} accept errors counted, \
         Izwi {cores:.2} cores while out of files; a neighbour was answered {recovered:?} after the attacker let go"
    );
    assert!(errors >= 1.0, "no accept error counted\n{}", izwi.log());
    assert!(cores < 0.3, "the accept loop spins: {cores:.2} cores");
    assert!(recovered.is_some(), "no recovery\n{}", izwi.log());
    assert_eq!(health, 200);
}

#[test]
fn idle_websockets_take_no_stream_slot_and_bad_streams_end_as_failures() {
    let _serial = one_at_a_time();
    isolate();
    let mut env = twilio::env();
    env.extend([
        ("IZWI_TWILIO_MAX_STREAMS", "2"),
        ("IZWI_TWILIO_START_TIMEOUT_SECS", "2"),
        ("IZWI_TWILIO_SEND_TIMEOUT_SECS", "2"),
    ]);
    let key = api_env();
    env.push((key.0, &key.1));
    let izwi = Izwi::start(&env);
    let m0 = metrics(&izwi);
    let probe = Probe::start(&izwi);
    // Thirty sockets that never start, from one source.
    let mut idle: Vec<_> = (0..30).map(|_| websocket(&izwi, ATTACKER, None)).collect();

    // A genuine call still gets a slot, and its audio back.
    let (_, params) = twilio::connect(&izwi, "CAgenuine0001");
    let token = params.iter().find(|(k, _)| k == "token").unwrap().1.clone();
    let mut good = websocket(&izwi, NEIGHBOUR, None);
    good.send(tungstenite::Message::text(twilio_start(
        "CAgenuine0001",
        &token,
    )))
    .unwrap();
    let tone = tone_frame();
    let mut echoed = 0;
    good.get_mut()
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    for _ in 0..100 {
        good.send(tungstenite::Message::text(twilio_media(
            "CAgenuine0001",
            &tone,
        )))
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        while let Ok(m) = good.read() {
            if m.to_text().is_ok_and(|t| t.contains("\"media\"")) {
                echoed += 1;
            }
        }
    }
    good.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Every idle socket is closed by its deadline, with a reason.
    let idle_closed: Vec<Option<u16>> = idle.iter_mut().map(close_code).collect();
    // The genuine token again: refused, it starts one stream only.
    let mut again = websocket(&izwi, NEIGHBOUR, None);
    again
        .send(tungstenite::Message::text(twilio_start(
            "CAgenuine0001",
            &token,
        )))
        .unwrap();
    let reused = close_code(&mut again);
    // A token for one call presented for another.
    let mut other = websocket(&izwi, NEIGHBOUR, None);
    other
        .send(tungstenite::Message::text(twilio_start(
            "CAsomeoneelse",
            &token,
        )))
        .unwrap();
    let wrong_call = close_code(&mut other);
    good.send(tungstenite::Message::text(
        r#"{"event":"stop","stop":{"accountSid":"ACtest","callSid":"CAgenuine0001"}}"#,
    ))
    .unwrap();

    // Not UTF-8, after a valid start: 1007, and the call ends as failed.
    let (_, params) = twilio::connect(&izwi, "CAbadutf80001");
    let token = params.iter().find(|(k, _)| k == "token").unwrap().1.clone();
    let mut utf8 = websocket(&izwi, NEIGHBOUR, None);
    utf8.send(tungstenite::Message::text(twilio_start(
        "CAbadutf80001",
        &token,
    )))
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    write_raw(&mut utf8, &raw_frame(0x1, &[0x7b, 0xff, 0xfe, 0x7d]));
    let bad_utf8 = close_code(&mut utf8);

    // Large frames at a low frame rate: over the byte rate.
    let (_, params) = twilio::connect(&izwi, "CAbytes000001");
    let token = params.iter().find(|(k, _)| k == "token").unwrap().1.clone();
    let mut bytes = websocket(&izwi, NEIGHBOUR, None);
    bytes
        .send(tungstenite::Message::text(twilio_start(
            "CAbytes000001",
            &token,
        )))
        .unwrap();
    let big = twilio_media("CAbytes000001", &vec![0xffu8; 45_000]);
    for _ in 0..8 {
        if bytes.send(tungstenite::Message::text(big.clone())).is_err() {
            break;
        }
    }
    let byte_flood = close_code(&mut bytes);

    // A client that never reads: closed, not waited on, while another call goes on.
    let (_, params) = twilio::connect(&izwi, "CAdeaf0000001");
    let token = params.iter().find(|(k, _)| k == "token").unwrap().1.clone();
    let mut deaf = websocket(&izwi, NEIGHBOUR, Some(4096));
    deaf.send(tungstenite::Message::text(twilio_start(
        "CAdeaf0000001",
        &token,
    )))
    .unwrap();
    let t = Instant::now();
    let mut deaf_cut = None;
    while t.elapsed() < Duration::from_secs(30) {
        let frame = tungstenite::Message::text(twilio_media("CAdeaf0000001", &tone));
        if let Err(e) = deaf.send(frame) {
            println!("the deaf client's send failed after {:?}: {e}", t.elapsed());
            deaf_cut = Some(t.elapsed());
            break;
        }
        if izwi.log().contains("end=slow_consumer") {
            deaf_cut = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cores = probe.cores();

    let m1 = metrics(&izwi);
    let rejected = |kind: &str| {
        metric(&m1, "izwi_stream_frames_rejected_total", &[("kind", kind)])
            - metric(&m0, "izwi_stream_frames_rejected_total", &[("kind", kind)])
    };
    // A call's record once it has ended (or as it stands after a while).
    let record = |sid: &str| {
        let t = Instant::now();
        loop {
            let page = api(&izwi, &format!("/v1/calls?remote_id={sid}"));
            let c = page["calls"].as_array().and_then(|c| c.first()).cloned();
            if c.as_ref().is_some_and(|c| c["outcome"] != "open")
                || t.elapsed() > Duration::from_secs(10)
            {
                return c.unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let genuine = record("CAgenuine0001");
    let utf8_rec = record("CAbadutf80001");
    let deaf_rec = record("CAdeaf0000001");
    println!(
        "WebSockets: 30 idle sockets closed with {:?}; the genuine call heard {echoed} frames; \
         a reused token → {reused:?}, another call's token → {wrong_call:?}, not UTF-8 → {bad_utf8:?}, \
         over the byte rate → {byte_flood:?}; a client that stopped reading was cut after {deaf_cut:?}; \
         records: genuine {} {}, utf8 {} {}, deaf {} {}; counters start_timeout {} token_reused {} slow_consumer {}; Izwi {cores:.2} cores",
        idle_closed
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        genuine["outcome"],
        genuine["hangup_cause"],
        utf8_rec["outcome"],
        utf8_rec["hangup_cause"],
        deaf_rec["outcome"],
        deaf_rec["hangup_cause"],
        rejected("start_timeout"),
        rejected("token_reused"),
        rejected("slow_consumer"),
    );
    assert!(
        echoed >= 60,
        "the genuine call heard {echoed} frames\n{}",
        izwi.log()
    );
    assert!(
        idle_closed.iter().all(|c| *c == Some(1008)),
        "{idle_closed:?}"
    );
    assert!(rejected("start_timeout") >= 30.0);
    assert_eq!(reused, Some(1008));
    assert_eq!(wrong_call, Some(1008));
    assert!(rejected("token_reused") >= 1.0);
    assert_eq!(bad_utf8, Some(1007));
    assert_eq!(byte_flood, Some(1008));
    assert!(
        deaf_cut.is_some_and(|d| d < Duration::from_secs(20)),
        "{deaf_cut:?}\n{}",
        izwi.log()
    );
    assert!(rejected("slow_consumer") >= 1.0);
    assert!(
        count_lines(&izwi, "media stream ended") <= 20,
        "a line per idle socket: the log is not bounded"
    );
    assert_eq!(genuine["outcome"], "completed", "{genuine}");
    assert_eq!(utf8_rec["outcome"], "failed");
    assert_eq!(utf8_rec["hangup_cause"], "protocol:utf8");
    assert_eq!(deaf_rec["outcome"], "failed");
    assert_eq!(deaf_rec["hangup_cause"], "slow_consumer");
}

#[test]
fn a_full_disk_degrades_the_records_and_loses_none() {
    let _serial = one_at_a_time();
    isolate();
    let key = api_env();
    let izwi = Izwi::launch(
        &[(key.0, &key.1)],
        Launch {
            tmpfs_bytes: Some(2 << 20),
            ..Launch::default()
        },
    );
    let dir = std::path::PathBuf::from(format!("/proc/{}/root", izwi.pid()))
        .join(izwi.dir.path().strip_prefix("/").unwrap());
    neighbour_call(&izwi, "disk-0");
    let listed = |izwi: &Izwi| {
        api(izwi, "/v1/calls?limit=50")["calls"]
            .as_array()
            .unwrap()
            .clone()
    };
    let t = Instant::now();
    while listed(&izwi).iter().any(|c| c["outcome"] == "open") || listed(&izwi).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "{}", izwi.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Fill the disk.
    let ballast = dir.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let m0 = metrics(&izwi);
    let heard: Vec<usize> = (1..=3)
        .map(|i| neighbour_call(&izwi, &format!("disk-{i}")).0)
        .collect();
    let t = Instant::now();
    let (mut ready_code, mut ready_body) = (0, String::new());
    while t.elapsed() < Duration::from_secs(5) {
        (ready_code, ready_body) = http_get(&izwi, "/readyz");
        if ready_code == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m1 = metrics(&izwi);
    let errors = metric(&m1, "izwi_call_records_write_errors_total", &[])
        - metric(&m0, "izwi_call_records_write_errors_total", &[]);
    let pending = metric(&m1, "izwi_call_records_pending", &[]);
    // Space comes back.
    std::fs::remove_file(&ballast).unwrap();
    let t = Instant::now();
    let mut recovered = None;
    while t.elapsed() < Duration::from_secs(20) {
        if http_get(&izwi, "/readyz").0 == 200 {
            recovered = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let calls = listed(&izwi);
    let m2 = metrics(&izwi);
    println!(
        "disk full: calls heard {heard:?}; /readyz {ready_code} {ready_body}; {errors} write errors, \
         {pending} records waiting; recovered {recovered:?} after space came back; {} of 4 calls recorded: {:?}",
        calls.len(),
        calls
            .iter()
            .map(|c| (c["remote_id"].clone(), c["outcome"].clone()))
            .collect::<Vec<_>>()
    );
    for h in &heard {
        assert!(*h >= 40, "calls go on while the disk is full: {heard:?}");
    }
    assert_eq!(ready_code, 503, "{ready_body}");
    assert!(ready_body.contains("degraded"), "{ready_body}");
    assert!(errors >= 1.0, "write errors are counted");
    assert!(pending >= 1.0, "records wait for the disk");
    assert!(
        recovered.is_some(),
        "/readyz never recovered\n{}",
        izwi.log()
    );
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls.iter().all(|c| c["outcome"] == "completed"),
        "{calls:?}"
    );
    assert_eq!(metric(&m2, "izwi_call_records_pending", &[]), 0.0);
    assert_eq!(metric(&m2, "izwi_call_records_dropped_total", &[]), 0.0);
}

#[test]
fn calls_sharing_a_call_id_keep_their_own_records_and_a_merged_request_gets_482() {
    let _serial = one_at_a_time();
    isolate();
    let key = api_env();
    let izwi = Izwi::start(&[(key.0, &key.1)]);
    let m0 = metrics(&izwi);
    let client = SipClient::new(NEIGHBOUR, &izwi);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let m = media.local_addr().unwrap();
    let u = uri(&izwi);
    // Two dialogs, one Call-ID (two From tags).
    let (_, t1) = call(&client, &u, "shared-1", "one", m, "").expect("first dialog");
    let (_, t2) = call(&client, &u, "shared-1", "two", m, "").expect("second dialog");
    // A merged request: the first dialog's Call-ID, From tag and CSeq, another branch.
    let body = offer(m);
    client.send(
        &Request {
            method: "INVITE",
            uri: &u,
            via: client.local(),
            branch: &branch(),
            call_id: "shared-1",
            from_tag: "one",
            to_tag: None,
            cseq: 1,
            extra: "",
            body: &body,
        }
        .text(),
    );
    let merged = client.final_response(Duration::from_secs(3));
    assert_eq!(bye(&client, &u, "shared-1", "one", &t1), 200);
    assert_eq!(bye(&client, &u, "shared-1", "two", &t2), 200);
    // A 30 KB Call-ID.
    let huge = format!("huge-{}", "x".repeat(30_000));
    let (_, th) = call(&client, &u, &huge, "h", m, "").expect("a call with a 30 KB Call-ID");
    assert_eq!(bye(&client, &u, &huge, "h", &th), 200);

    let wait_closed = |remote: &str, n: usize| {
        let t = Instant::now();
        loop {
            let page = api(&izwi, &format!("/v1/calls?remote_id={remote}"));
            let calls = page["calls"].as_array().unwrap().clone();
            if calls.len() >= n && calls.iter().all(|c| c["outcome"] != "open") {
                return calls;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{page}\n{}",
                izwi.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let shared = wait_closed("shared-1", 2);
    let capped = wait_closed(&huge[..128], 1);
    let m1 = metrics(&izwi);
    let merged_count = metric(
        &m1,
        "izwi_sip_messages_rejected_total",
        &[("reason", "merged")],
    ) - metric(
        &m0,
        "izwi_sip_messages_rejected_total",
        &[("reason", "merged")],
    );
    println!(
        "Call-IDs: two dialogs of one Call-ID → {} records {:?}; merged request → {:?}; \
         a 30 KB Call-ID stored as {} characters",
        shared.len(),
        shared.iter().map(|c| c["id"].clone()).collect::<Vec<_>>(),
        merged.as_deref().and_then(status),
        capped[0]["remote_id"].as_str().map_or(0, str::len),
    );
    assert_eq!(shared.len(), 2);
    assert_ne!(shared[0]["id"], shared[1]["id"]);
    assert!(shared.iter().all(|c| c["outcome"] == "completed"));
    assert_eq!(merged.as_deref().and_then(status), Some(482));
    assert!(merged_count >= 1.0);
    assert_eq!(capped.len(), 1);
    assert_eq!(capped[0]["remote_id"].as_str().unwrap().len(), 128);
}
