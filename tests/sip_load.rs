//! Capacity: sipp holds 100 concurrent calls with RTP both ways for 30 s against
//! Izwi's echo agent. Bounded in count and time, on 127.0.0.1 only.

mod common;

use std::time::Duration;

use common::sip_peer::*;

const CALLS: usize = 100;
const HOLD_MS: u64 = 30_000;

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_hundred_concurrent_calls_with_rtp_both_ways() {
    // One trunk carries every call: it is given all the slots.
    let izwi = Izwi::start(&[
        ("IZWI_SIP_MAX_CALLS", "150"),
        ("IZWI_SIP_MAX_CALLS_PER_SOURCE", "150"),
        ("IZWI_SIP_RTP_PORT_MIN", "42000"),
        ("IZWI_SIP_RTP_PORT_MAX", "42599"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    // Two seconds of a 300 Hz tone as headerless µ-law, which sipp streams verbatim.
    let tone: Vec<f32> = (0..16_000)
        .map(|i| (i as f32 * 300.0 * std::f32::consts::TAU / 8000.0).sin() * 0.3)
        .collect();
    let mut ulaw = Vec::new();
    izwi::codec::g711::Law::Mu.encode(&tone, &mut ulaw);
    std::fs::write(dir.path().join("speech.ulaw"), ulaw).unwrap();

    let before = cpu_ticks(izwi.pid());
    let out = sipp(
        &izwi,
        &scenario("load-echo.xml"),
        dir.path(),
        &[
            "-m",
            &CALLS.to_string(),
            "-l",
            &CALLS.to_string(),
            "-r",
            "25",
            "-d",
            &HOLD_MS.to_string(),
        ],
    )
    .output()
    .expect("sipp must be installed (scripts/setup.sh)");
    check(out, dir.path(), &izwi);
    // Every call's summary is logged once its BYE is processed.
    let t = std::time::Instant::now();
    let mut ended: Vec<String> = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        ended = izwi
            .log()
            .lines()
            .filter(|l| l.contains("call media ended"))
            .map(String::from)
            .collect();
        if ended.len() >= CALLS {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ended.len(), CALLS, "{}", izwi.log());
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let expected = HOLD_MS / 20;
    let mut max_queue = 0;
    for line in &ended {
        assert!(field(line, "packets_in") >= expected * 9 / 10, "{line}");
        assert!(field(line, "packets_out") >= expected * 9 / 10, "{line}");
        assert_eq!(field(line, "lost"), 0, "{line}");
        assert_eq!(field(line, "late"), 0, "{line}");
        max_queue = max_queue.max(field(line, "max_in_to_agent_ms"));
    }
    let ticks = cpu_ticks(izwi.pid()) - before;
    let hz = 100.0; // USER_HZ on Linux
    let cpu_s = ticks as f64 / hz;
    println!(
        "{CALLS} calls x {} s: Izwi CPU {cpu_s:.2} s in all, {:.1} ms CPU per call ({:.2} % of a core per call); longest caller packet → engine frame {max_queue} ms",
        HOLD_MS / 1000,
        cpu_s * 1000.0 / CALLS as f64,
        cpu_s * 100.0 / CALLS as f64 / (HOLD_MS as f64 / 1000.0)
    );
}
