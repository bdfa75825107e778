//! Call records, metrics and the operator API of a running `izwi serve`
//! (echo agent, no models), on 127.0.0.1 only.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::izwi_bin;
use common::sip_peer::*;
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const OPS_KEY: &str = "ops-key-0123456789abcdef";
const VIEWER_KEY: &str = "viewer-key-0123456789abcd";
const BURST_KEY: &str = "burst-key-0123456789abcde";

fn api_env() -> Vec<(&'static str, String)> {
    vec![
        ("IZWI_API_JWT_SECRET", SECRET.into()),
        (
            "IZWI_API_API_KEYS",
            format!("ops:{OPS_KEY}:admin,viewer:{VIEWER_KEY},burst:{BURST_KEY}"),
        ),
        ("IZWI_API_RATE_PER_MINUTE", "20".into()),
        (
            "IZWI_API_CORS_ORIGINS",
            "https://console.example.test".into(),
        ),
    ]
}

fn start(extra: &[(&str, String)]) -> Izwi {
    let mut env = api_env();
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Izwi::start(&refs)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(secret: &str, aud: &str, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": "alice", "aud": aud, "exp": exp });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// (status, headers we look at, body)
fn get(izwi: &Izwi, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    request(izwi, "GET", path, headers)
}

fn request(
    izwi: &Izwi,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let url = format!("http://127.0.0.1:{}{path}", izwi.http_port);
    let mut req = ureq::request(method, &url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}\n{}", izwi.log()),
    };
    let status = resp.status();
    let extra = resp
        .header("retry-after")
        .or(resp.header("access-control-allow-origin"))
        .map(str::to_string);
    (status, extra, resp.into_string().unwrap_or_default())
}

/// A sipp call that Izwi answers; sipp hangs up after `hold_ms`.
fn sipp_call(izwi: &Izwi, hold_ms: u32) -> std::process::Child {
    let dir = tempfile::tempdir().unwrap();
    let fields = dir.path().join("fields.csv");
    std::fs::write(&fields, format!("SEQUENTIAL\n{};20;\n", free_udp_port())).unwrap();
    let hold = hold_ms.to_string();
    let child = sipp(
        izwi,
        &scenario("call-media-by-test.xml"),
        dir.path(),
        &["-inf", fields.to_str().unwrap(), "-d", &hold],
    )
    .spawn()
    .expect("sipp must be installed (scripts/setup.sh)");
    // The directory goes with the process; sipp has read its files by then.
    std::mem::forget(dir);
    child
}

/// The SIP Call-ID of the call Izwi answered (its record's id), from its log.
fn answered_call_id(izwi: &Izwi) -> String {
    let line = izwi.wait_line("call answered", Duration::from_secs(10));
    line.split("call=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no call id in {line}"))
        .to_string()
}

#[test]
fn the_operator_api_checks_credentials_and_limits_rates() {
    let izwi = start(&[]);
    let valid = jwt(SECRET, "izwi", now() + 600);
    let bearer = |t: &str| format!("Bearer {t}");
    let status = |headers: &[(&str, &str)]| get(&izwi, "/v1/calls", headers).0;

    // JWTs: valid, expired, wrong audience, wrong key, alg none, missing.
    let (code, _, body) = get(&izwi, "/v1/calls", &[("Authorization", &bearer(&valid))]);
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(page["calls"].is_array(), "{body}");
    let expired = jwt(SECRET, "izwi", now() - 120);
    assert_eq!(status(&[("Authorization", &bearer(&expired))]), 401);
    let audience = jwt(SECRET, "someone-else", now() + 600);
    assert_eq!(status(&[("Authorization", &bearer(&audience))]), 401);
    let wrong_key = jwt(
        "another-secret-that-is-also-32-bytes-long",
        "izwi",
        now() + 600,
    );
    assert_eq!(status(&[("Authorization", &bearer(&wrong_key))]), 401);
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({ "alg": "none", "typ": "JWT" })),
        b64(
            serde_json::json!({ "sub": "mallory", "aud": "izwi", "exp": now() + 600, "admin": true })
        )
    );
    assert_eq!(status(&[("Authorization", &bearer(&none))]), 401);
    assert_eq!(status(&[]), 401);
    // API keys, and the admin claim on admin routes.
    assert_eq!(status(&[("X-Api-Key", VIEWER_KEY)]), 200);
    assert_eq!(status(&[("X-Api-Key", "not-a-key-0123456789abc")]), 401);
    let warm = |key: &str| request(&izwi, "POST", "/v1/admin/warmup", &[("X-Api-Key", key)]).0;
    assert_eq!(warm(VIEWER_KEY), 403);
    assert_eq!(warm(OPS_KEY), 200);
    assert_eq!(
        request(
            &izwi,
            "POST",
            "/v1/admin/warmup",
            &[("Authorization", &bearer(&valid))]
        )
        .0,
        403,
        "a JWT without an admin claim"
    );
    // The rate limit trips for one key (20 a minute) and not for another.
    let mut codes = Vec::new();
    let mut retry = None;
    for _ in 0..25 {
        let (code, extra, _) = get(&izwi, "/v1/calls", &[("X-Api-Key", BURST_KEY)]);
        if code == 429 {
            retry = extra;
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 20, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 5, "{codes:?}");
    assert!(
        retry
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|r| r >= 1)
    );
    assert_eq!(status(&[("X-Api-Key", OPS_KEY)]), 200);
    // CORS for the configured origin only.
    let (_, allow, _) = get(
        &izwi,
        "/v1/calls",
        &[
            ("X-Api-Key", OPS_KEY),
            ("Origin", "https://console.example.test"),
        ],
    );
    assert_eq!(allow.as_deref(), Some("https://console.example.test"));
    let (_, allow, _) = get(
        &izwi,
        "/v1/calls",
        &[
            ("X-Api-Key", OPS_KEY),
            ("Origin", "https://evil.example.test"),
        ],
    );
    assert_eq!(allow, None);
    let preflight = |origin: &str| {
        request(
            &izwi,
            "OPTIONS",
            "/v1/calls",
            &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
        )
        .0
    };
    assert_eq!(preflight("https://console.example.test"), 204);
    assert_eq!(preflight("https://evil.example.test"), 403);
    // Health needs no credentials.
    assert_eq!(get(&izwi, "/healthz", &[]).0, 200);
    assert_eq!(get(&izwi, "/readyz", &[]).0, 200);
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape =
        prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_parse_and_move_with_a_call_whose_record_is_kept() {
    let izwi = start(&[]);
    let scrape = || get(&izwi, "/metrics", &[]).2;
    let before = scrape();
    let done = [("transport", "sip"), ("outcome", "completed")];
    let calls_before = sample(&before, "izwi_calls_total", &done);

    let out = sipp_call(&izwi, 1000).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", izwi.log());
    izwi.wait_log("call media ended", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape();
    assert_eq!(
        sample(&after, "izwi_calls_total", &done),
        calls_before + 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "izwi_calls_started_total", &[("transport", "sip")]),
        1.0
    );
    assert_eq!(
        sample(&after, "izwi_calls_active", &[("transport", "sip")]),
        0.0
    );
    assert_eq!(sample(&after, "izwi_ready", &[]), 1.0);
    // Its record, read back through the API.
    let id = answered_call_id(&izwi);
    let (code, _, body) = get(&izwi, &format!("/v1/calls/{id}"), &[("X-Api-Key", OPS_KEY)]);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["call"]["transport"], "sip", "{body}");
    assert_eq!(v["call"]["outcome"], "completed", "{body}");
    assert_eq!(v["call"]["hangup_cause"], "caller_bye", "{body}");
    assert_eq!(v["call"]["hangup_side"], "caller", "{body}");
    assert_eq!(v["call"]["codec"], "PCMU", "{body}");
    assert_eq!(v["call"]["agent"], "echo", "{body}");
    assert!(v["call"]["duration_ms"].as_i64().unwrap() >= 900, "{body}");
    // The caller (sipp's user part) is kept only as an HMAC.
    assert!(
        v["call"]["caller_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64),
        "{body}"
    );
    let (code, _, _) = get(&izwi, "/v1/calls/no-such-call", &[("X-Api-Key", OPS_KEY)]);
    assert_eq!(code, 404);
    let (code, _, body) = get(
        &izwi,
        "/v1/calls?outcome=completed&limit=1",
        &[("X-Api-Key", OPS_KEY)],
    );
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    let (code, _, _) = get(&izwi, "/v1/calls?outcome=happy", &[("X-Api-Key", OPS_KEY)]);
    assert_eq!(code, 400);
}

/// kill -9 during a call: after a restart on the same database the call is
/// there, marked interrupted.
#[test]
fn a_call_cut_by_kill_9_is_recorded_as_interrupted() {
    let izwi = start(&[]);
    let records = izwi.dir.path().join("records.db");
    let mut caller = sipp_call(&izwi, 30_000);
    let id = answered_call_id(&izwi);
    // The start of the call reaches the database before the process dies.
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-9", &izwi.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = caller.kill();
    let _ = caller.wait();

    let path = records.to_str().unwrap().to_string();
    let again = start(&[("IZWI_RECORDS_PATH", path.clone())]);
    again.wait_log("marked interrupted", Duration::from_secs(5));
    let show = Command::new(izwi_bin())
        .env("IZWI_RECORDS_PATH", &path)
        .args(["calls", "show", &id, "--json"])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["call"]["outcome"], "interrupted", "{v}");
    assert_eq!(v["call"]["transport"], "sip", "{v}");
    let (code, _, body) = get(
        &again,
        "/v1/calls?outcome=interrupted",
        &[("X-Api-Key", OPS_KEY)],
    );
    assert_eq!(code, 200);
    assert!(body.contains(&id), "{body}");
    drop(izwi);
}
