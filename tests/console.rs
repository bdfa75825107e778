//! The operator console in a real browser: Debian's Chromium, headless,
//! driven over WebDriver (chromedriver) by fantoccini. An `izwi serve` with
//! the small models answers a SIP call from sipp, which the console shows
//! live and then draws; the browser's own (fake) microphone talks to the
//! english agent, and Whisper hears the agent's answer as the page received
//! it. Screenshots go to `target/console-screenshots/`.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sip_peer::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use izwi::audio::ENGINE_RATE;
use izwi::codec::resample::resample;

const ADMIN_KEY: &str = "ops-key-0123456789abcdef";
const VIEWER_KEY: &str = "viewer-key-0123456789abcd";

fn start_izwi() -> Izwi {
    Izwi::start(&[
        ("IZWI_DIALPLAN_ECHO", "false"),
        ("IZWI_MODELS_PROFILE", "small"),
        (
            "IZWI_API_API_KEYS",
            &format!("ops:{ADMIN_KEY}:admin,viewer:{VIEWER_KEY}"),
        ),
    ])
}

/// chromedriver on a port of its own, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = free_tcp_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver must be installed (scripts/setup.sh installs chromium-driver)");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

/// A headless Chromium; `microphone`: a WAV file its fake microphone plays once.
async fn browser(driver: &Driver, microphone: Option<&std::path::Path>) -> Client {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1280,1000".into(),
        "--autoplay-policy=no-user-gesture-required".into(),
        "--use-fake-ui-for-media-stream".into(),
    ];
    if let Some(wav) = microphone {
        args.push("--use-fake-device-for-media-stream".into());
        args.push(format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            wav.display()
        ));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for(c: &Client, css: &str, secs: u64) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(secs))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` within {secs} s: {e}"))
}

/// The first live call's id and text. The list is drawn anew on each change,
/// so an element found may be gone when read: both are read in one script.
async fn first_live_call(c: &Client, secs: u64) -> (String, String) {
    let start = Instant::now();
    loop {
        let row = c
            .execute(
                "const r = document.querySelector('#live-calls tr[data-call]'); \
                 return r ? [r.getAttribute('data-call'), r.textContent] : null;",
                vec![],
            )
            .await
            .unwrap();
        if let Some([id, text]) = row.as_array().map(Vec::as_slice)
            && let (Some(id), Some(text)) = (id.as_str(), text.as_str())
        {
            return (id.to_string(), text.to_string());
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no live call listed within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(c: &Client, izwi: &Izwi, key: &str) {
    c.goto(&format!("http://127.0.0.1:{}/console", izwi.http_port))
        .await
        .unwrap();
    wait_for(c, "#credential", 10)
        .await
        .send_keys(key)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// A plain HTTP request: (status, content-security-policy, set-cookie, body).
fn http(
    izwi: &Izwi,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Option<String>, Option<String>, String) {
    let mut req = ureq::request(
        method,
        &format!("http://127.0.0.1:{}{path}", izwi.http_port),
    );
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let sent = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let csp = resp.header("content-security-policy").map(str::to_string);
    let cookie = resp.header("set-cookie").map(str::to_string);
    (
        resp.status(),
        csp,
        cookie,
        resp.into_string().unwrap_or_default(),
    )
}

#[test]
fn without_a_session_nothing_is_shown_and_cross_site_requests_are_refused() {
    let _one = one_at_a_time();
    let izwi = start_izwi();
    // The page itself (the sign-in form) and its assets, under a strict CSP.
    for path in [
        "/console",
        "/console/app.js",
        "/console/app.css",
        "/console/worklet.js",
    ] {
        let (status, csp, _, _) = http(&izwi, "GET", path, &[], None);
        assert_eq!(status, 200, "{path}");
        let csp = csp.unwrap_or_else(|| panic!("{path}: no CSP"));
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    let index = http(&izwi, "GET", "/console", &[], None).3;
    assert!(
        !index.contains("<script>") && !index.contains("style="),
        "{index}"
    );
    // Every route with data, without a session.
    for (method, path) in [
        ("GET", "/console/api/me"),
        ("GET", "/console/api/live"),
        ("GET", "/console/api/calls"),
        ("GET", "/console/api/calls/x"),
        ("GET", "/console/api/latency"),
        ("GET", "/console/api/agents"),
        ("GET", "/console/talk"),
        ("POST", "/console/api/calls/x/hangup"),
        ("POST", "/console/api/sign-out"),
    ] {
        let (status, _, _, _) = http(&izwi, method, path, &[], None);
        assert_eq!(status, 401, "{method} {path}");
    }
    // A wrong key gets no session.
    let (status, _, cookie, _) = http(
        &izwi,
        "POST",
        "/console/api/session",
        &[("content-type", "application/json")],
        Some(r#"{"credential":"not-a-key-0123456789"}"#),
    );
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    // Signing in from another site is refused.
    let body = format!(r#"{{"credential":"{ADMIN_KEY}"}}"#);
    let (status, _, _, _) = http(
        &izwi,
        "POST",
        "/console/api/session",
        &[
            ("content-type", "application/json"),
            ("origin", "http://evil.example"),
        ],
        Some(&body),
    );
    assert_eq!(status, 403);
    let (status, _, cookie, answer) = http(
        &izwi,
        "POST",
        "/console/api/session",
        &[("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
    let cookie = cookie.unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    // A cross-site POST carrying the session cookie: refused, without the
    // token or from another origin; the same request with both goes through.
    let hang_up = "/console/api/calls/nobody/hangup";
    let (status, _, _, _) = http(&izwi, "POST", hang_up, &[("cookie", &session)], None);
    assert_eq!(status, 403);
    let (status, _, _, _) = http(
        &izwi,
        "POST",
        hang_up,
        &[
            ("cookie", &session),
            ("x-csrf-token", &csrf),
            ("origin", "http://evil.example"),
        ],
        None,
    );
    assert_eq!(status, 403);
    let (status, _, _, _) = http(
        &izwi,
        "POST",
        hang_up,
        &[("cookie", &session), ("x-csrf-token", &csrf)],
        None,
    );
    assert_eq!(status, 404, "no such call: past the checks");
    // Behind a TLS proxy the cookie is Secure.
    let (_, _, cookie, _) = http(
        &izwi,
        "POST",
        "/console/api/session",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-proto", "https"),
        ],
        Some(&body),
    );
    assert!(cookie.unwrap().contains("; Secure"));
    // A viewer may not hang up.
    let (_, _, cookie, answer) = http(
        &izwi,
        "POST",
        "/console/api/session",
        &[("content-type", "application/json")],
        Some(&format!(r#"{{"credential":"{VIEWER_KEY}"}}"#)),
    );
    let viewer = cookie.unwrap().split(';').next().unwrap().to_string();
    let token = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, _, _) = http(
        &izwi,
        "POST",
        hang_up,
        &[("cookie", &viewer), ("x-csrf-token", &token)],
        None,
    );
    assert_eq!(status, 403);
}

/// The call's record once it is closed (read through the operator API).
async fn record_of(izwi: &Izwi, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, _, _, body) = http(
            izwi,
            "GET",
            &format!("/v1/calls/{id}"),
            &[("x-api-key", ADMIN_KEY)],
            None,
        );
        if status == 200 {
            let record: serde_json::Value = serde_json::from_str(&body).unwrap();
            if record["call"]["outcome"] != "open" || start.elapsed() > Duration::from_secs(10) {
                return record;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no record of {id}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_console_shows_a_sip_call_live_then_draws_its_turns() {
    let _one = one_at_a_time();
    runtime().block_on(sip_call_live_then_drawn());
}

async fn sip_call_live_then_drawn() {
    let izwi = start_izwi();
    let driver = driver();
    let c = browser(&driver, None).await;

    // A wrong key is refused in the page.
    sign_in(&c, &izwi, "wrong-key-0123456789abcdef").await;
    let refused = wait_for(&c, "#sign-in-error", 10).await;
    let start = Instant::now();
    while !refused.text().await.unwrap().contains("Refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.find(Locator::Css("#nav[hidden]")).await.is_ok());
    shot(&c, "sign-in-refused").await;

    sign_in(&c, &izwi, ADMIN_KEY).await;
    wait_for(&c, "#live-status", 10).await;
    let load = c
        .execute(
            "const n = performance.getEntriesByType('navigation')[0]; \
             return [n.domContentLoadedEventEnd, n.loadEventEnd, n.transferSize];",
            vec![],
        )
        .await
        .unwrap();
    println!(
        "console page: DOM ready {} ms, loaded {} ms after navigation",
        load[0], load[1]
    );

    // sipp calls; the live view lists the call while it lasts.
    let question = resample(
        &espeak("What time does the clinic open on Saturday?"),
        ENGINE_RATE,
        8_000,
    )
    .unwrap();
    let mut call = tokio::task::block_in_place(|| MediaCall::start(&izwi, 30_000));
    let (id, text) = first_live_call(&c, 15).await;
    assert!(text.contains("sip") && text.contains("english"), "{text}");
    shot(&c, "live-call").await;
    // The caller asks after the greeting; the row counts the answered turn.
    tokio::task::block_in_place(|| {
        call.stream(&vec![0.0; 8_000 * 4]);
        call.stream(&question);
    });
    // The list is drawn anew on each change: read it by script.
    let turns_shown = format!(
        "const r = document.querySelector(\"tr[data-call='{id}'] td:nth-child(6)\"); return r ? r.textContent : null;"
    );
    let start = Instant::now();
    loop {
        let turns = c.execute(&turns_shown, vec![]).await.unwrap();
        if turns.as_str().is_some_and(|t| t.trim() != "0") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no turn counted: {turns}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&c, "live-call-answered").await;
    // The caller listens to the answer until sipp hangs up.
    tokio::task::block_in_place(|| {
        while call.sipp.try_wait().unwrap().is_none() {
            call.receive();
        }
    });
    tokio::task::block_in_place(|| call.finish(&izwi));
    // Gone from the live view once it ends.
    let start = Instant::now();
    while c
        .find(Locator::Css(&format!("tr[data-call='{id}']")))
        .await
        .is_ok()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the call stayed listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Its page draws its turns: the caller's speech and the reply's stages.
    c.goto(&format!(
        "http://127.0.0.1:{}/console#call/{id}",
        izwi.http_port
    ))
    .await
    .unwrap();
    wait_for(&c, "svg#timeline", 10).await;
    let speech = c
        .find_all(Locator::Css("svg#timeline rect.turn-speech"))
        .await
        .unwrap();
    assert!(!speech.is_empty(), "no caller speech drawn");
    let stages = c
        .find_all(Locator::Css(
            "svg#timeline rect.asr, svg#timeline line.first-audio",
        ))
        .await
        .unwrap();
    assert!(stages.len() >= 2, "the reply's stages are not drawn");
    shot(&c, "call-timeline").await;

    // An admin hangs a call up from the live view: Izwi sends the BYE (this
    // caller sends no audio, and would otherwise be cut off only by the
    // 30 s RTP timeout).
    c.goto(&format!("http://127.0.0.1:{}/console#live", izwi.http_port))
        .await
        .unwrap();
    wait_for(&c, "#live-status", 10).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let caller = sipp(&izwi, &scenario("bye-from-izwi.xml"), dir.path(), &[])
        .spawn()
        .expect("sipp must be installed (scripts/setup.sh)");
    let (second, _) = first_live_call(&c, 15).await;
    assert_ne!(second, id);
    c.execute(
        &format!("document.querySelector(\"tr[data-call='{second}'] button.danger\").click();"),
        vec![],
    )
    .await
    .unwrap();
    let out = tokio::task::block_in_place(|| caller.wait_with_output().unwrap());
    check(out, dir.path(), &izwi);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "hung up only after {:?}",
        started.elapsed()
    );
    let record = record_of(&izwi, &second).await;
    assert_eq!(record["call"]["hangup_cause"], "operator", "{record}");
    assert_eq!(record["call"]["hangup_side"], "izwi", "{record}");

    for page in ["history", "latency", "agents"] {
        c.goto(&format!(
            "http://127.0.0.1:{}/console#{page}",
            izwi.http_port
        ))
        .await
        .unwrap();
        let css = match page {
            "history" => format!("#history-calls tr[data-call='{id}']"),
            "latency" => "svg.latency-histogram rect.bar".to_string(),
            _ => "tr[data-agent='english']".to_string(),
        };
        wait_for(&c, &css, 10).await;
        shot(&c, page).await;
    }
    c.close().await.unwrap();
}

#[test]
fn the_browser_talks_to_the_english_agent_and_hears_its_answer() {
    let _one = one_at_a_time();
    runtime().block_on(browser_talks());
}

async fn browser_talks() {
    let izwi = start_izwi();
    let driver = driver();
    // The fake microphone: silence through the greeting, the question, and
    // a word over the answer (a barge-in).
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("question.wav");
    let question = espeak("What time does the clinic open on Saturday?");
    let over = espeak("Sorry, wait a moment please.");
    let caller = compose(20.0, &[(5.0, &question), (10.5, &over)]);
    izwi::codec::wav::write_mono(&wav, &caller, ENGINE_RATE).unwrap();
    let c = browser(&driver, Some(&wav)).await;
    sign_in(&c, &izwi, ADMIN_KEY).await;
    wait_for(&c, "#live-status", 10).await;
    c.goto(&format!("http://127.0.0.1:{}/console#talk", izwi.http_port))
        .await
        .unwrap();
    wait_for(&c, "#talk-agent option[value='english']", 10).await;
    c.find(Locator::Id("talk-call"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = c.find(Locator::Id("talk-status")).await.unwrap();
    let start = Instant::now();
    while !status.text().await.unwrap().contains("In a call") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the call did not start: {}\n{}",
            status.text().await.unwrap(),
            izwi.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&c, "talk-in-call").await;
    tokio::time::sleep(Duration::from_secs(19)).await;
    let clears = c
        .execute("return window.izwiConsole.talk().state.clears;", vec![])
        .await
        .unwrap();
    assert!(
        clears.as_u64().unwrap_or(0) >= 1,
        "no clear came for the barge-in: {clears}\n{}",
        izwi.log()
    );
    let b64 = c
        .execute("return window.izwiConsole.talk().receivedBase64();", vec![])
        .await
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    let received: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    assert!(
        received.len() > ENGINE_RATE as usize * 3,
        "the page received {} samples",
        received.len()
    );
    let call_id = c
        .execute("return window.izwiConsole.talk().state.id;", vec![])
        .await
        .unwrap();
    c.find(Locator::Id("talk-hangup"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let start = Instant::now();
    while !status.text().await.unwrap().contains("ended") {
        assert!(start.elapsed() < Duration::from_secs(10), "no end shown");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&c, "talk-ended").await;
    c.close().await.unwrap();

    // What the page received: the greeting and the answer, heard as words.
    let heard = heard(&received, 0.0, received.len() as f64 / ENGINE_RATE as f64);
    let words = words(&heard);
    println!("the page heard: {heard:?}");
    assert!(words.len() >= 6, "too few words heard: {heard:?}");
    // The call has its record, transport `browser`, with the answered turn.
    let record = record_of(&izwi, call_id.as_str().unwrap()).await;
    assert_eq!(record["call"]["transport"], "browser", "{record}");
    assert_eq!(record["call"]["outcome"], "completed", "{record}");
    assert_eq!(record["call"]["hangup_side"], "caller", "{record}");
    assert!(
        record["call"]["barge_ins"].as_u64().unwrap() >= 1,
        "{record}"
    );
    let answered = record["turns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["greeting"] == false && t["words_heard"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(answered >= 1, "{record}");
}
