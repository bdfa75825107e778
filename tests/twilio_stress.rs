//! Twilio Media Streams under abuse and load, against Izwi's echo agent with
//! signatures (and so stream tokens) checked. The clients are our own
//! (tests/python/stream_client.py) and streamdouble, both outside Izwi's code.
//! Bounded in count and time, on 127.0.0.1 only.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::sip_peer::*;
use common::twilio;
use serde_json::Value;

/// Each bad case of stream_client.py, with the close code and the end label
/// (in the `media stream ended` line) that src/http/media_stream.rs gives it.
const BAD_CASES: &[(&str, u16, &str)] = &[
    ("malformed_json", 1007, "end=protocol:json"),
    ("not_an_object", 1007, "end=protocol:json"),
    ("unknown_event", 1008, "end=protocol:unknown_event"),
    ("bad_base64", 1007, "end=protocol:base64"),
    ("media_before_start", 1008, "end=protocol:sequence"),
    ("oversized_frame", 1009, "end=protocol:too_large"),
    ("flood", 1008, "end=protocol:flood"),
    ("binary_frame", 1003, "end=protocol:binary"),
    ("second_start", 1008, "end=protocol:sequence"),
    ("unauthorized", 1008, "end=protocol:unauthorized"),
    (
        "unauthorized_wrong_token",
        1008,
        "end=protocol:unauthorized",
    ),
];

const LOAD_STREAMS: usize = 50;
const LOAD_SECONDS: u64 = 30;

/// The venv's python and streamdouble, and our client; a missing one fails
/// the test (with Izwi's log), never skips it.
struct Tools {
    python: PathBuf,
    streamdouble: PathBuf,
    client: PathBuf,
}

fn tools(izwi: &Izwi) -> Tools {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin");
    let t = Tools {
        python: bin.join("python"),
        streamdouble: bin.join("streamdouble"),
        client: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stream_client.py"),
    };
    for p in [&t.python, &t.streamdouble, &t.client] {
        assert!(
            p.exists(),
            "{} is missing: run `make test-tools` (make test does)\nizwi:\n{}",
            p.display(),
            izwi.log()
        );
    }
    t
}

/// Runs a command to its end or `limit` (then kills it and fails); returns
/// its status, stdout and stderr.
fn run(mut cmd: Command, limit: Duration, izwi: &Izwi) -> (ExitStatus, String, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}\nizwi:\n{}", izwi.log()));
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {limit:?}\nstderr:\n{}\nizwi:\n{}",
                err.join().unwrap(),
                izwi.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

fn param(params: &[(String, String)], name: &str) -> String {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} parameter in {params:?}"))
}

/// The `media stream ended` lines, once there are `n` (or fails after `limit`).
fn ended_lines(izwi: &Izwi, n: usize, limit: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let lines: Vec<String> = izwi
            .log()
            .lines()
            .filter(|l| l.contains("media stream ended"))
            .map(str::to_string)
            .collect();
        if lines.len() >= n || t.elapsed() > limit {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_alive(izwi: &Izwi) {
    let log = izwi.log();
    assert!(!log.contains("panicked"), "Izwi panicked:\n{log}");
    let url = format!("http://127.0.0.1:{}/healthz", izwi.http_port);
    let status = ureq::get(&url)
        .timeout(Duration::from_secs(5))
        .call()
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("/healthz: {e}\nizwi:\n{log}"));
    assert_eq!(status, 200, "/healthz\nizwi:\n{log}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Clock ticks per second, from `getconf CLK_TCK` (100, Linux's USER_HZ, if that fails).
fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[test]
fn bad_stream_input_closes_only_that_stream_with_a_reason() {
    let izwi = Izwi::start(&twilio::env());
    let tools = tools(&izwi);
    let (_, params) = twilio::connect(&izwi, "CAgoodcall0001");
    let token = param(&params, "token");
    let url = twilio::local_stream_url(&izwi);

    // The good call: four seconds of a 400 Hz tone, which the echo agent plays back.
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let tone: Vec<f32> = (0..4 * 8000)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 400.0 * i as f32 / 8000.0).sin())
        .collect();
    izwi::codec::wav::write_mono(&wav, &tone, 8000).unwrap();
    let mut good = Command::new(&tools.streamdouble);
    good.arg("call")
        .arg(&url)
        .arg("--audio")
        .arg(&wav)
        .arg("--json")
        .args(["--param", &format!("token={token}")])
        .args(["--param", "callSid=CAgoodcall0001"]);
    let good = std::thread::scope(|s| {
        let good = s.spawn(|| run(good, Duration::from_secs(30), &izwi));
        // The bad streams come while the good call is live.
        izwi.wait_log("media stream started", Duration::from_secs(10));

        // One call, and so one token, per case: a token opens one stream only.
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        for (i, (case, _, _)) in BAD_CASES.iter().enumerate() {
            let call_sid = format!("CAbadcall{i:04}");
            let (_, params) = twilio::connect(&izwi, &call_sid);
            let mut bad = Command::new(&tools.python);
            bad.arg(&tools.client)
                .arg("bad")
                .arg(&url)
                .args(["--case", case])
                .args(["--param", &format!("token={}", param(&params, "token"))])
                .args(["--param", &format!("callSid={call_sid}")]);
            let (status, out, err) = run(bad, Duration::from_secs(30), &izwi);
            assert!(
                status.success(),
                "stream_client bad {case}: {status}\n{err}\nizwi:\n{}",
                izwi.log()
            );
            for l in out.lines() {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}"));
                seen.insert(v["case"].as_str().unwrap().to_string(), v);
            }
        }
        let out = format!("{seen:?}");
        let err = "";
        for (case, code, _) in BAD_CASES {
            let v = seen
                .get(*case)
                .unwrap_or_else(|| panic!("no result for {case}:\n{out}\n{err}"));
            println!("{case}: {v}");
            assert_eq!(
                v["close_code"].as_u64(),
                Some(u64::from(*code)),
                "{case}: {v}\nizwi:\n{}",
                izwi.log()
            );
            assert!(
                !v["close_reason"].as_str().unwrap_or("").is_empty(),
                "{case} closed without a reason: {v}"
            );
        }
        good.join().unwrap()
    });

    // The good call went through undisturbed, its audio echoed.
    let (status, out, err) = good;
    assert!(
        status.success(),
        "streamdouble: {status}\n{out}\n{err}\nizwi:\n{}",
        izwi.log()
    );
    let m: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let sent = m["frames_sent"].as_f64().unwrap();
    let received = m["media_frames_received"].as_f64().unwrap();
    assert!(sent >= 190.0, "streamdouble sent {sent} frames: {m}");
    assert!(
        (0.9..=1.1).contains(&(received / sent)),
        "echo: {received} frames back for {sent} sent: {m}\nizwi:\n{}",
        izwi.log()
    );
    assert_eq!(m["violations"], Value::Array(vec![]), "{m}");

    // Every stream that reached the reactor left its record, bad ones included.
    let ended = ended_lines(&izwi, BAD_CASES.len() + 1, Duration::from_secs(10));
    let log = izwi.log();
    assert_eq!(ended.len(), BAD_CASES.len() + 1, "{log}");
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, end) in BAD_CASES {
        *want.entry(end).or_default() += 1;
    }
    *want.entry("end=stream_stop").or_default() += 1;
    for (end, n) in want {
        let got = ended.iter().filter(|l| l.contains(end)).count();
        assert_eq!(got, n, "`{end}` lines:\n{}", ended.join("\n"));
    }
    assert_alive(&izwi);
}

#[test]
fn fifty_concurrent_streams_with_the_echo_agent_for_thirty_seconds() {
    let izwi = Izwi::start(&twilio::env());
    let tools = tools(&izwi);
    // A token opens one stream, of the call it was issued for: one webhook per stream.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let lines: Vec<String> = (0..LOAD_STREAMS)
        .map(|i| {
            let call_sid = format!("CAloadtest{i:04}");
            let (_, params) = twilio::connect(&izwi, &call_sid);
            format!("{call_sid} {}", param(&params, "token"))
        })
        .collect();
    std::fs::write(&tokens, lines.join("\n")).unwrap();
    let url = twilio::local_stream_url(&izwi);

    let before = cpu_ticks(izwi.pid());
    let mut load = Command::new(&tools.python);
    load.arg(&tools.client)
        .arg("load")
        .arg(&url)
        .arg(LOAD_STREAMS.to_string())
        .arg(LOAD_SECONDS.to_string())
        .arg("--tokens")
        .arg(&tokens);
    let (status, out, err) = run(load, Duration::from_secs(LOAD_SECONDS + 30), &izwi);
    let ended = ended_lines(&izwi, LOAD_STREAMS, Duration::from_secs(10));
    let ticks = cpu_ticks(izwi.pid()) - before;
    assert!(
        status.success(),
        "stream_client load: {status}\n{out}\n{err}\nizwi:\n{}",
        izwi.log()
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    println!("load: {r}");
    assert_eq!(
        r["errors"],
        Value::Array(vec![]),
        "{r}\nizwi:\n{}",
        izwi.log()
    );
    assert_eq!(r["completed"].as_u64(), Some(LOAD_STREAMS as u64), "{r}");
    let ratio = r["min_received_ratio"].as_f64().unwrap();
    assert!(ratio >= 0.9, "echo: {r}\nizwi:\n{}", izwi.log());

    assert_eq!(ended.len(), LOAD_STREAMS, "{}", izwi.log());
    let stopped = ended
        .iter()
        .filter(|l| l.contains("end=stream_stop"))
        .count();
    assert_eq!(stopped, LOAD_STREAMS, "{}", ended.join("\n"));
    assert_alive(&izwi);

    let cpu_s = ticks as f64 / clock_ticks_per_sec();
    println!(
        "{LOAD_STREAMS} streams x {LOAD_SECONDS} s: Izwi CPU {cpu_s:.2} s in all, {:.1} ms CPU per stream ({:.2} % of a core per stream)",
        cpu_s * 1000.0 / LOAD_STREAMS as f64,
        cpu_s * 100.0 / LOAD_STREAMS as f64 / LOAD_SECONDS as f64
    );
}
