//! Several Izwi nodes behind Kamailio's dispatcher (Debian's kamailio, with
//! `sip/kamailio/dispatcher.cfg`), sipp as the callers: calls are spread over
//! the nodes; a node told to stop (SIGTERM) drains — its calls go on, its
//! OPTIONS answers turn 503 so the dispatcher takes it out, new calls get 503
//! and go to the other node — and exits when its last call has ended. Both
//! nodes write their call records to one PostgreSQL (Debian's, a temporary
//! cluster), which `izwi calls list` reads whole.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::attack::{metric, metrics};
use common::postgres::Postgres;
use common::sip_peer::*;

/// The key every node hashes callers' numbers with.
const CALLER_KEY: &str = "fleet-caller-key-0123456789";

/// sipp through the proxy: `calls` calls of `hold_ms` each, `limit` at once.
fn calls(proxy: u16, dir: &std::path::Path, calls: usize, limit: usize, hold_ms: u64) -> Command {
    sipp_to(
        proxy,
        &scenario("load-echo.xml"),
        dir,
        &[
            "-m",
            &calls.to_string(),
            "-l",
            &limit.to_string(),
            "-r",
            "10",
            "-d",
            &hold_ms.to_string(),
        ],
    )
}

/// A folder with the µ-law audio the callers stream (a tone, looped).
fn caller_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tone: Vec<f32> = (0..8_000)
        .map(|i| (i as f32 * 300.0 * std::f32::consts::TAU / 8000.0).sin() * 0.3)
        .collect();
    let mut ulaw = Vec::new();
    izwi::codec::g711::Law::Mu.encode(&tone, &mut ulaw);
    std::fs::write(dir.path().join("speech.ulaw"), ulaw).unwrap();
    dir
}

/// The calls in the shared records, once `expected` are there and none is
/// open (the records writers run behind the calls): every one completed.
fn completed(pg: &Postgres, expected: usize) -> usize {
    let t = Instant::now();
    loop {
        let rows = pg.calls(CALLER_KEY);
        let done = rows.iter().filter(|c| c["outcome"] == "completed").count();
        let open = rows.iter().filter(|c| c["outcome"] == "open").count();
        if (done >= expected && open == 0) || t.elapsed() > Duration::from_secs(10) {
            let bad: Vec<_> = rows
                .iter()
                .filter(|c| c["outcome"] != "completed")
                .collect();
            assert!(bad.is_empty(), "calls not completed: {bad:?}");
            return done;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The calls each of `nodes` has ended as completed, by its metrics, once
/// they add up to `total` (a node counts a call just after its BYE).
fn ended_on(nodes: &[&Izwi], total: usize) -> Vec<usize> {
    let t = Instant::now();
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|n| {
                metric(
                    &metrics(n),
                    "izwi_calls_total",
                    &[("transport", "sip"), ("outcome", "completed")],
                ) as usize
            })
            .collect();
        if counts.iter().sum::<usize>() >= total || t.elapsed() > Duration::from_secs(10) {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn calls_spread_over_two_nodes_and_a_draining_node_finishes_its_calls_and_takes_no_new_ones() {
    let pg = Postgres::start();
    let url = pg.url();
    let shared = [
        ("IZWI_RECORDS_URL", url.as_str()),
        ("IZWI_RECORDS_CALLER_KEY", CALLER_KEY),
    ];
    let a = Izwi::start(&[shared[0], shared[1], ("IZWI_SIP_DRAIN_SECS", "60")]);
    let b = Izwi::start(&shared);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dispatcher.list");
    std::fs::write(
        &list,
        format!("1 sip:127.0.0.1:{}\n1 sip:127.0.0.1:{}\n", a.port, b.port),
    )
    .unwrap();
    let proxy_port = free_udp_port();
    let _proxy = Kamailio::start(
        "dispatcher.cfg",
        proxy_port,
        &[
            ("__LISTEN__", format!("udp:127.0.0.1:{proxy_port}")),
            ("__LIST__", list.to_str().unwrap().to_string()),
        ],
    );

    // Twenty calls, four at a time: both nodes take some, none fails.
    let callers = caller_dir();
    let out = calls(proxy_port, callers.path(), 20, 4, 1000)
        .output()
        .unwrap();
    check(out, callers.path(), &b);
    // One set of records holds all twenty.
    assert_eq!(completed(&pg, 20), 20, "{}", pg.log());
    let (on_a, on_b) = match ended_on(&[&a, &b], 20)[..] {
        [a, b] => (a, b),
        _ => unreachable!(),
    };
    assert_eq!(on_a + on_b, 20, "a: {on_a}, b: {on_b}");
    assert!(on_a >= 5 && on_b >= 5, "not spread: a {on_a}, b {on_b}");

    // Four long calls, two on each node; then node a is told to stop.
    let long = caller_dir();
    let long_calls = calls(proxy_port, long.path(), 4, 4, 8000)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    a.wait_log("draining", Duration::from_secs(5));
    // Its next health check says 503: the dispatcher takes it out.
    std::thread::sleep(Duration::from_secs(2));

    // New calls while a drains: all reach b, none fails.
    let more = caller_dir();
    let out = calls(proxy_port, more.path(), 10, 5, 500).output().unwrap();
    check(out, more.path(), &b);

    // a's calls went on to their end: the long calls all succeeded.
    let out = long_calls.wait_with_output().unwrap();
    check(out, long.path(), &a);
    let log = a.wait_log("drained: no calls left", Duration::from_secs(20));
    assert!(a.wait_exit(Duration::from_secs(10)).success(), "{log}");
    let log = a.log();
    assert!(log.contains("SIP endpoint stopped"), "{log}");
    assert_eq!(completed(&pg, 34), 34, "{log}");
    assert_eq!(ended_on(&[&b], on_b + 12), [on_b + 12], "{}", b.log());

    // a is gone: the next calls all reach b.
    let last = caller_dir();
    let out = calls(proxy_port, last.path(), 5, 5, 300).output().unwrap();
    check(out, last.path(), &b);
    assert_eq!(ended_on(&[&b], on_b + 17), [on_b + 17], "{}", b.log());
    assert_eq!(completed(&pg, 39), 39, "{}", b.log());
}
