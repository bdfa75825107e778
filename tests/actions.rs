//! The agent acts: hangs up on a silent caller (after asking whether they are
//! still there, and saying goodbye), transfers a caller by REFER (SIP) or by
//! the `<Connect action>` callback's `<Dial>` (Twilio), on a key the dialplan
//! maps. Real peers: baresip and sipp for SIP, streamdouble for Twilio; the
//! small models answer; the records say what the agent did.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sip_peer::{Izwi, baresip_dir_at, free_udp_port, silent_microphone};
use common::twilio::{self, AUTH_TOKEN, PUBLIC_URL};

/// One agent: a short greeting, a short silence policy, key 0 transfers to
/// the front desk at `desk`, other keys are collected for the model.
fn dialplan(dir: &Path, desk: &str) -> std::path::PathBuf {
    let path = dir.join("plan.toml");
    std::fs::write(
        &path,
        format!(
            r##"[default]
agent = "desk"

[agents.desk]
language = "en"
system_prompt = "You are the receptionist of Hope Clinic. Answer in one short sentence."
greeting = "Hope Clinic, hello."
goodbye = "Goodbye, and thank you for calling."
silence = {{ after_secs = 3, prompt = "Are you still there?", prompts = 1 }}
transfer = {{ front_desk = "{desk}" }}
transfer_announcement = "Please hold, I am transferring your call."
keys = {{ "0" = "transfer:front_desk" }}
collect = {{ max_digits = 4, end_key = "#", timeout_secs = 3 }}
"##
        ),
    )
    .unwrap();
    path
}

fn izwi_with(plan: &Path) -> Izwi {
    let mut env = vec![
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_DIALPLAN_FILE", plan.to_str().unwrap()),
    ];
    env.extend(twilio::env());
    Izwi::start(&env)
}

/// The record of a call, as `izwi calls show` gives it.
fn record(izwi: &Izwi, id: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let out = Command::new(common::izwi_bin())
            .env("IZWI_RECORDS_PATH", izwi.dir.path().join("records.db"))
            .args(["calls", "show", id, "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if r["call"]["outcome"] != "open" {
                return r;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no finished record for {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `key=` on a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .trim_matches('"')
}

/// baresip with a silent microphone for `seconds`, its console collected.
struct Baresip {
    child: std::process::Child,
    console: Arc<Mutex<String>>,
    ctrl: u16,
    dir: tempfile::TempDir,
}

impl Baresip {
    fn call(izwi: &Izwi, seconds: u32) -> Baresip {
        let (dir, ctrl) = baresip_dir_at("PCMU/8000", "127.0.0.1");
        let d = dir.path();
        silent_microphone(d, seconds);
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(d)
            .args([
                "-e",
                &format!("/dial sip:izwi@127.0.0.1:{}", izwi.port),
                "-t",
                &(seconds + 10).to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip must be installed (scripts/setup.sh)");
        let console = Arc::new(Mutex::new(String::new()));
        let sink = console.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut c = sink.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
        Baresip {
            child,
            console,
            ctrl,
            dir,
        }
    }

    fn wait(&self, needle: &str, limit: Duration, izwi: &Izwi) {
        let t = Instant::now();
        while !self.console.lock().unwrap().contains(needle) {
            assert!(
                t.elapsed() < limit,
                "baresip never printed {needle:?}:\n{}\nizwi:\n{}",
                self.console.lock().unwrap(),
                izwi.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, cmd: &str) {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.ctrl)).unwrap();
        write!(c, "{}:{},", cmd.len(), cmd).unwrap();
    }

    /// What baresip received and played, at 8 kHz.
    fn received(&self) -> Vec<f32> {
        let path = std::fs::read_dir(self.dir.path().join("snd"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .expect("baresip wrote no received audio");
        let (audio, rate) = izwi::codec::wav::read_mono(&path).unwrap();
        izwi::codec::resample::resample(&audio, rate, 16_000).unwrap()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_silent_sip_caller_is_asked_then_told_goodbye_and_izwi_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let izwi = izwi_with(&dialplan(dir.path(), "sip:desk@127.0.0.1:5999"));
    let caller = Baresip::call(&izwi, 40);
    caller.wait("Call established", Duration::from_secs(10), &izwi);
    let offered = izwi.wait_line("call offered", Duration::from_secs(5));
    let id = field(&offered, "call=").to_string();
    // Greeting (~1.5 s), 3 s of silence, the prompt, 3 s, goodbye, BYE.
    caller.wait("terminated", Duration::from_secs(25), &izwi);
    let r = record(&izwi, &id);
    let call = &r["call"];
    assert_eq!(call["hangup_side"], "agent", "{r}");
    assert_eq!(call["hangup_cause"], "agent:silence", "{r}");
    assert_eq!(call["outcome"], "completed", "{r}");
    let actions: Vec<(&str, &str, &str)> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["source"].as_str().unwrap(),
                a["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("silence_prompt", "silence", "done"),
            ("end_call", "silence", "done")
        ],
        "{r}"
    );
    let (prompt_at, end_at) = (
        r["actions"][0]["at_ms"].as_f64().unwrap(),
        r["actions"][1]["at_ms"].as_f64().unwrap(),
    );
    assert!(
        (3_000.0..9_000.0).contains(&prompt_at) && end_at > prompt_at + 3_000.0,
        "{r}"
    );
    // What the caller heard: the prompt, then the goodbye, played in full.
    let heard = common::engine()
        .asr
        .transcribe(&caller.received(), "en")
        .unwrap()
        .to_lowercase();
    assert!(heard.contains("still there"), "{heard}");
    assert!(
        heard.contains("thank you for calling"),
        "the goodbye was cut: {heard}"
    );
}

/// sipp as the front desk: answers one call and logs what it got.
fn front_desk(dir: &Path) -> (std::process::Child, u16) {
    let port = free_udp_port();
    let child = Command::new("sipp")
        .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-trace_msg", "-message_file"])
        .arg(dir.join("desk.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp must be installed (scripts/setup.sh)");
    (child, port)
}

#[test]
fn key_0_transfers_a_baresip_caller_by_refer_to_a_sipp_front_desk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut desk, desk_port) = front_desk(dir.path());
    let izwi = izwi_with(&dialplan(
        dir.path(),
        &format!("sip:desk@127.0.0.1:{desk_port}"),
    ));
    let caller = Baresip::call(&izwi, 30);
    caller.wait("Call established", Duration::from_secs(10), &izwi);
    let offered = izwi.wait_line("call offered", Duration::from_secs(5));
    let id = field(&offered, "call=").to_string();
    std::thread::sleep(Duration::from_millis(1500));
    // Four digits: collected, and handed to the model, which answers them.
    for key in ["1", "2", "3", "4"] {
        caller.command(&format!(
            r#"{{"command":"sndcode","params":"{key}","token":"k"}}"#
        ));
        std::thread::sleep(Duration::from_millis(400));
    }
    izwi.wait_line("action=\"collect\"", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    caller.command(r#"{"command":"sndcode","params":"0","token":"k"}"#);
    // The announcement plays, then the REFER; baresip calls the desk and
    // reports it up by NOTIFY; Izwi's leg ends.
    let result = izwi.wait_line("transfer result", Duration::from_secs(20));
    assert!(result.contains("Ok"), "{result}\n{}", izwi.log());
    let t = Instant::now();
    let desk_log = loop {
        let log = std::fs::read_to_string(dir.path().join("desk.log")).unwrap_or_default();
        if log.contains("INVITE sip:desk@") {
            break log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the front desk got no call:\n{log}\n{}",
            izwi.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(desk_log.contains("From:"), "{desk_log}");
    let r = record(&izwi, &id);
    assert_eq!(r["call"]["hangup_cause"], "transferred", "{r}");
    assert_eq!(r["call"]["hangup_side"], "agent", "{r}");
    assert_eq!(r["actions"][0]["action"], "collect", "{r}");
    assert_eq!(r["actions"][0]["result"], "done", "{r}");
    // The model answered the digits (a turn with no words heard).
    let digits_turn = r["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["greeting"] == false)
        .unwrap_or_else(|| panic!("no turn for the digits: {r}"));
    assert_eq!(digits_turn["words_heard"], 0, "{r}");
    assert!(digits_turn["tts_first_audio_ms"].as_f64().is_some(), "{r}");
    let a = &r["actions"][1];
    assert_eq!(a["action"], "transfer", "{r}");
    assert_eq!(a["source"], "key", "{r}");
    assert_eq!(a["target"], "front_desk", "{r}");
    assert_eq!(a["result"], "done", "{r}");
    drop(caller);
    let _ = desk.kill();
    let _ = desk.wait();
}

/// Twilio's `<Connect action>` callback, signed as Twilio signs it.
fn stream_ended(izwi: &Izwi, call_sid: &str, sign: bool) -> (u16, String) {
    let params = [
        ("AccountSid", "ACtest"),
        ("CallSid", call_sid),
        ("CallStatus", "in-progress"),
    ];
    let url = format!("http://127.0.0.1:{}/twilio/stream-ended", izwi.http_port);
    let mut req = ureq::post(&url);
    if sign {
        let signature = twilio::sign(
            AUTH_TOKEN,
            &format!("{PUBLIC_URL}/twilio/stream-ended"),
            &params,
        );
        req = req.set("X-Twilio-Signature", &signature);
    }
    match req.send_form(&params) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn twilio_silent_caller_gets_the_stream_closed_and_a_key_transfers_by_dial() {
    let dir = tempfile::tempdir().unwrap();
    let izwi = izwi_with(&dialplan(dir.path(), "+263242700100"));

    // A caller who says nothing: prompt, goodbye, the stream closes, and the
    // callback hangs up.
    let (_, params) = twilio::connect(&izwi, "CA3001");
    let scenario = dir.path().join("silent.yaml");
    std::fs::write(
        &scenario,
        "name: a silent caller\nsteps:\n  - wait: 25.0\n  - hangup\n",
    )
    .unwrap();
    let t = Instant::now();
    let out = twilio::scenario(&izwi, &scenario, &params);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the stream was not closed by Izwi: {report}\n{}",
        izwi.log()
    );
    let started = izwi.wait_line("media stream started", Duration::from_secs(5));
    let id = field(&started, "call=").to_string();
    let r = record(&izwi, &id);
    assert_eq!(r["call"]["hangup_cause"], "agent:silence", "{r}");
    assert_eq!(r["call"]["hangup_side"], "agent", "{r}");
    let (status, body) = stream_ended(&izwi, "CA3001", true);
    assert_eq!(status, 200);
    assert!(body.contains("<Hangup/>"), "{body}");

    // Key 0: the stream ends, and the callback dials the front desk.
    let (_, params) = twilio::connect(&izwi, "CA3002");
    let scenario = dir.path().join("key.yaml");
    std::fs::write(
        &scenario,
        "name: the caller presses 0\nsteps:\n  - wait_for: quiet\n  - dtmf: \"0\"\n  - wait: 15.0\n  - hangup\n",
    )
    .unwrap();
    let out = twilio::scenario(&izwi, &scenario, &params);
    let report = String::from_utf8_lossy(&out.stdout);
    let log = izwi.wait_log("end=transferred", Duration::from_secs(20));
    let ended = log
        .lines()
        .filter(|l| l.contains("media stream ended"))
        .nth(1)
        .unwrap_or_else(|| panic!("{report}\n{log}"));
    assert!(ended.contains("end=transferred"), "{ended}");
    // Unsigned, the callback is refused and the transfer is still there.
    let (status, _) = stream_ended(&izwi, "CA3002", false);
    assert_eq!(status, 403);
    let (status, body) = stream_ended(&izwi, "CA3002", true);
    assert_eq!(status, 200);
    assert!(
        body.contains("<Dial>+263242700100</Dial>"),
        "{body}\n{}",
        izwi.log()
    );
    // Once only.
    let (_, again) = stream_ended(&izwi, "CA3002", true);
    assert!(again.contains("<Hangup/>"), "{again}");
}
