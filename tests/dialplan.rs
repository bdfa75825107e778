//! Dialplans (issue 10): `izwi dialplan check|route`, routing by the number
//! called over SIP (sipp) and Twilio (streamdouble) to agents whose greetings
//! differ (transcribed by Whisper), and reloads while a call is up.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::attack::*;
use common::sip_peer::*;
use common::twilio;

fn izwi_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::izwi_bin())
        .args(args)
        .env("IZWI_LOG_LEVEL", "warn")
        .output()
        .expect("izwi");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dialplans/clinic-lines.toml")
        .display()
        .to_string()
}

#[test]
fn a_dialplan_is_checked_and_asked_from_the_command_line() {
    let (ok, out, err) = izwi_cli(&["dialplan", "check", &example()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 rules") && out.contains("shona-line"),
        "{out}"
    );
    let route = |args: &[&str]| {
        let mut all = vec!["dialplan", "route", "--file"];
        let file = example();
        all.push(&file);
        all.extend_from_slice(args);
        let (ok, out, err) = izwi_cli(&all);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    assert_eq!(
        route(&["--to", "+263 242 700 100"]),
        "agent kiriniki (rule shona-line)"
    );
    assert_eq!(
        route(&["--to", "+263242700123"]),
        "agent clinic (rule english-line)"
    );
    assert_eq!(
        route(&["--to", "+1555", "--param", "lang=sn"]),
        "agent kiriniki (rule shona-by-twilio)"
    );
    assert_eq!(route(&["--to", "+1555"]), "agent clinic (default)");

    // Each kind of mistake is refused, naming the file and line.
    let dir = tempfile::tempdir().unwrap();
    for (text, line, says) in [
        ("[[rule]]\nagent = \"ghost\"\nto = \"1\"\n", 1, "`ghost`"),
        (
            "[[rule]]\nagent = \"english\"\nto = \"1\"\n\n[[rule]]\nagent = \"english\"\nfrom_pattern = \"([0-9]\"\n",
            5,
            "does not compile",
        ),
        (
            "[[rule]]\nname = \"all-of-263\"\nagent = \"english\"\nto_prefix = \"+263\"\n\n[[rule]]\nname = \"harare\"\nagent = \"english\"\nto = \"+263242\"\n",
            6,
            "`harare` can never match",
        ),
        (
            "[[rule]]\nagent = \"english\"\nwhen = \"monday\"\n",
            3,
            "when",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = izwi_cli(&["dialplan", "check", path.to_str().unwrap()]);
        assert!(!ok, "{text} was accepted");
        let at = format!("{}:{line}:", path.display());
        assert!(err.contains(&at) && err.contains(says), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A raw SIP call from the neighbour to `number` (echo agent): answered, ACKed.
fn call_number(izwi: &Izwi, number: &str, call_id: &str) -> (SipClient, String) {
    let client = SipClient::new(NEIGHBOUR, izwi);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let body = offer(media.local_addr().unwrap());
    let uri = format!("sip:{number}@127.0.0.1:{}", izwi.port);
    let invite = Request {
        method: "INVITE",
        uri: &uri,
        via: client.local(),
        branch: &branch(),
        call_id,
        from_tag: "d",
        to_tag: None,
        cseq: 1,
        extra: "",
        body: &body,
    };
    client.send(&invite.text().replace("+263242700000", number));
    let ok = client
        .final_response(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no answer\n{}", izwi.log()));
    assert_eq!(status(&ok), Some(200), "{ok}");
    let tag = to_tag(&ok);
    let ack_branch = branch();
    let ack = invite.ack(&tag, &ack_branch);
    client.send(&ack.text().replace("+263242700000", number));
    (client, tag)
}

fn rule_of(izwi: &Izwi, call_id: &str) -> String {
    let line = izwi.wait_line(&format!("sip_call_id={call_id} "), Duration::from_secs(5));
    line.split("rule=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rule in {line}"))
        .to_string()
}

fn wait_count(izwi: &Izwi, needle: &str, n: usize) {
    let t = Instant::now();
    while izwi.log().matches(needle).count() < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "`{needle}` ×{n}:\n{}",
            izwi.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_changed_dialplan_is_reloaded_and_calls_in_progress_keep_their_agent() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let write = |rule: &str| {
        std::fs::write(
            &plan,
            format!("[[rule]]\nname = \"{rule}\"\nagent = \"english\"\nto = \"100\"\n"),
        )
        .unwrap()
    };
    write("first");
    let izwi = Izwi::start(&[("IZWI_DIALPLAN_FILE", plan.to_str().unwrap())]);
    let (c1, t1) = call_number(&izwi, "100", "reload-1");
    assert_eq!(rule_of(&izwi, "reload-1"), "first");

    // Changed during the call: the call keeps its agent, the next gets the new plan.
    write("second");
    wait_count(&izwi, "dialplan reloaded", 1);
    let (c2, t2) = call_number(&izwi, "100", "reload-2");
    assert_eq!(rule_of(&izwi, "reload-2"), "second");
    let uri = format!("sip:100@127.0.0.1:{}", izwi.port);
    assert_eq!(bye(&c1, &uri, "reload-1", "d", &t1), 200);
    assert_eq!(bye(&c2, &uri, "reload-2", "d", &t2), 200);

    // A plan that fails its check is refused, logged and counted; the old stays.
    std::fs::write(&plan, "[[rule]]\nagent = \"ghost\"\nto = \"100\"\n").unwrap();
    wait_count(&izwi, "dialplan refused", 1);
    let m = metrics(&izwi);
    assert!(metric(&m, "izwi_dialplan_reloads_total", &[("result", "refused")]) >= 1.0);
    assert!(
        izwi.log().contains("plan.toml:1:"),
        "the error names the file and line"
    );
    let (c3, t3) = call_number(&izwi, "100", "reload-3");
    assert_eq!(rule_of(&izwi, "reload-3"), "second");
    assert_eq!(bye(&c3, &uri, "reload-3", "d", &t3), 200);

    // SIGHUP reloads too.
    write("third");
    wait_count(&izwi, "dialplan reloaded", 2);
    let status = Command::new("kill")
        .args(["-HUP", &izwi.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_count(&izwi, "signalled=true", 1);
    assert!(!izwi.log().contains("panicked"));
}

/// The greeting Izwi plays on a call to `number`, transcribed.
fn greeting_of_sip_call(izwi: &Izwi, number: &str) -> String {
    let mut call = MediaCall::start_to(izwi, number, 6_000);
    call.stream(&vec![0.0f32; 8000 * 5]);
    let received = call.finish(izwi);
    let audio16 = izwi::codec::resample::resample(&received, 8_000, 16_000).unwrap();
    common::engine().asr.transcribe(&audio16, "en").unwrap()
}

#[test]
fn the_number_called_picks_the_agent_over_sip_and_twilio() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        r#"
[[rule]]
name = "clinic-line"
agent = "clinic"
to = "100"

[[rule]]
name = "water-line"
agent = "water"
to_prefix = "200"

[default]
agent = "clinic"

[agents.clinic]
language = "en"
system_prompt = "You are the receptionist of a clinic. Answer in one short sentence."
greeting = "Welcome to the clinic."

[agents.water]
language = "en"
system_prompt = "You answer calls for the water company. Answer in one short sentence."
greeting = "You have reached the water company."
"#,
    )
    .unwrap();
    let mut env = twilio::env();
    env.extend([
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_DIALPLAN_FILE", plan.to_str().unwrap()),
    ]);
    let izwi = Izwi::start(&env);
    let clinic = common::words(&greeting_of_sip_call(&izwi, "100"));
    let water = common::words(&greeting_of_sip_call(&izwi, "200"));
    println!("greetings heard: {clinic:?} / {water:?}");
    assert!(
        clinic.contains(&"clinic".to_string()),
        "{clinic:?}\n{}",
        izwi.log()
    );
    assert!(
        water.contains(&"water".to_string()),
        "{water:?}\n{}",
        izwi.log()
    );

    // Twilio: the webhook's To is 200…; the stream's agent is the water company's.
    let mut params = twilio::call_params("CAwater0001");
    params[3].1 = "2004".into();
    let (_, stream_params) = twilio::connect_with(&izwi, &params);
    let wav = dir.path().join("silence.wav");
    izwi::codec::wav::write_mono(&wav, &vec![0.0f32; 8000 * 5], 8000).unwrap();
    let agent_wav = dir.path().join("agent.wav");
    let out = twilio::streamdouble(
        &izwi,
        &[
            "call",
            &twilio::local_stream_url(&izwi),
            "--audio",
            wav.to_str().unwrap(),
            "--out",
            agent_wav.to_str().unwrap(),
            "--quiet",
        ],
        &stream_params,
    );
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        izwi.log()
    );
    let (audio, rate) = izwi::codec::wav::read_mono(&agent_wav).unwrap();
    let audio16 = izwi::codec::resample::resample(&audio, rate, 16_000).unwrap();
    let heard = common::words(&common::engine().asr.transcribe(&audio16, "en").unwrap());
    println!("Twilio greeting heard: {heard:?}");
    assert!(
        heard.contains(&"water".to_string()),
        "{heard:?}\n{}",
        izwi.log()
    );
    let line = izwi.wait_line("media stream started", Duration::from_secs(5));
    assert!(
        line.contains("agent=water") && line.contains("rule=water-line"),
        "{line}"
    );
}
