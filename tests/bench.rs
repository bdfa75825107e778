//! `izwi bench --sip`, short: Izwi started by the bench, called by sipp, the
//! caller's RTP sent and Izwi's measured by the bench, in steps of 1 and 2
//! concurrent calls. Checks that the measuring path works, not the timings:
//! every line answered as seen in the packets, the greeting heard, barge-in
//! measured, Izwi's records read back. Needs sipp and the small models, and
//! fails without them.

mod common;

use std::process::Command;

use common::izwi_bin;

#[test]
fn sip_bench_measures_every_answer_from_the_packets() {
    assert!(
        Command::new("sipp").arg("-v").output().is_ok(),
        "sipp must be installed (Debian sip-tester; scripts/setup.sh installs it)"
    );
    let profile = common::config().models.profile;
    let out = Command::new(izwi_bin())
        // The harness's own variable is no setting of Izwi's.
        .env_remove("IZWI_TEST_BIN")
        .env("IZWI_MODELS_PROFILE", &profile)
        .env("IZWI_LOG_LEVEL", "warn")
        .args(["bench", "--sip", "--questions", "2", "--calls", "1,2"])
        .args(["--gap", "4", "--json"])
        .output()
        .expect("izwi bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "izwi bench --sip failed ({}); with the {profile} models fetched (`izwi models fetch --profile {profile}`)?\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    for line in [
        "caller end of speech -> first agent audio (packets): P50 ",
        "cut-offs (agent audio began while the caller was speaking or pausing mid-sentence): ",
        "greeting heard on ",
        "barge-in: caller onset -> agent's last loud packet ",
        "Izwi's records of these calls (",
        "Izwi process: CPU ",
        "== capacity (",
        "memory per additional call: ",
    ] {
        assert!(
            stdout.contains(line),
            "no `{line}` in the report\n{context}"
        );
    }
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary\n{context}"));
    let report: serde_json::Value = serde_json::from_str(json).expect("JSON summary");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{context}");
    for (step, calls) in steps.iter().zip([1u64, 2]) {
        assert_eq!(step["calls"], calls, "{context}");
        let lines = step["lines"].as_array().expect("lines");
        // Two questions and one interruption a call.
        assert_eq!(lines.len() as u64, 3 * calls, "{context}");
        for l in lines {
            assert!(
                l["sent"].is_object(),
                "a line was never sent: {l}\n{context}"
            );
            let r = l["response_ms"].as_f64();
            assert!(
                r.is_some_and(|r| r.is_finite() && r >= 0.0),
                "no answer measured from the packets: {l}\n{context}"
            );
        }
        assert_eq!(step["greetings_heard"], calls, "{context}");
        assert!(step["greeting_from_ok_ms"]["p50"].is_f64(), "{context}");
        assert!(step["greeting_from_rtp_ms"]["p50"].is_f64(), "{context}");
        assert_eq!(step["barge_ins"], calls, "{context}");
        let stages = &step["stages"];
        assert_eq!(
            stages["calls_found"], calls,
            "records of every call: {context}"
        );
        for stage in [
            "response_ms",
            "asr_ms",
            "llm_first_token_ms",
            "tts_first_audio_ms",
        ] {
            assert!(
                stages[stage]["p50"].is_f64(),
                "no {stage} in Izwi's records\n{context}"
            );
        }
        let usage = &step["usage"];
        assert!(
            usage["core_pct"].as_f64().is_some_and(|c| c > 0.0),
            "{context}"
        );
        assert!(
            usage["rss_peak_mib"].as_f64().is_some_and(|m| m > 0.0),
            "{context}"
        );
    }
    assert!(report["mib_per_call"].is_f64(), "{context}");
}
