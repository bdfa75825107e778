//! `izwi bench --sip`: Izwi called over SIP by sipp, the caller's audio sent
//! and Izwi's received by the bench as RTP, every latency computed from the
//! packets ([`super::measure`]). Steps of 1, 2, 4 … concurrent calls give the
//! capacity; Izwi's own records of the same calls give the stage breakdown.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::caller::{Lineup, Utterance};
use super::measure::{self, CallResult, LineResult};
use super::media::{self, Kind, MediaLog, Script, Timing};
use super::server::{self, Server};
use super::sipp::{self, Sipp};
use super::{BenchError, percentile};
use crate::records::{CallQuery, Store, TurnRow};

/// sipp hangs up this long after the script's end: room for the bench
/// noticing the 200 OK a little after sipp sent the ACK.
const HOLD_SLACK: Duration = Duration::from_millis(1_500);
/// Loading the models on a busy 2-core machine takes a while.
const READY_LIMIT: Duration = Duration::from_secs(180);
const RSS_EVERY: Duration = Duration::from_millis(250);

pub struct Options {
    /// Concurrent calls of each step.
    pub calls: Vec<usize>,
    /// An Izwi already running; `None` starts one.
    pub target: Option<SocketAddr>,
    pub timing: Timing,
    /// Passed to the Izwi started.
    pub config: Option<PathBuf>,
    pub agent: Option<String>,
}

/// Median, 95th percentile (nearest rank) and maximum of the values present.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stat {
    pub n: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        Stat {
            n: values.len(),
            p50: percentile(values, 0.5),
            p95: percentile(values, 0.95),
            max: percentile(values, 1.0),
        }
    }
}

/// Izwi's own timers for the same calls (its records).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stages {
    pub calls_found: usize,
    /// Turns other than the greeting.
    pub turns: usize,
    pub response_ms: Stat,
    pub asr_ms: Stat,
    pub llm_first_token_ms: Stat,
    pub tts_first_audio_ms: Stat,
    pub greeting_response_ms: Stat,
}

/// What the Izwi process used during a step (only when the bench started it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    pub cpu_s: f64,
    /// CPU time over wall time, in % of one core.
    pub core_pct: f64,
    /// The same, in % of all the machine's cores.
    pub machine_pct: f64,
    pub cores: usize,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub hwm_mib: f64,
}

/// One line of one call, as measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineRow {
    pub call: usize,
    pub text: String,
    pub voice: String,
    pub pause_ms: Option<u32>,
    #[serde(flatten)]
    pub result: LineResult,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub calls: usize,
    pub questions_per_call: usize,
    pub barge_ins_per_call: usize,
    /// sipp's `-d`: each call's length after its answer.
    pub hold_s: f64,
    pub stagger_s: f64,
    /// Questions (not interruptions): end of speech → first agent audio.
    pub response_ms: Stat,
    pub questions_asked: usize,
    pub questions_with_pause: usize,
    pub cut_offs: usize,
    pub cut_offs_in_pause_questions: usize,
    pub late_previous: usize,
    pub talked_over: usize,
    pub greetings_heard: usize,
    pub greeting_from_rtp_ms: Stat,
    pub greeting_from_ok_ms: Stat,
    pub barge_ins: usize,
    pub barge_in_stop_ms: Stat,
    pub barge_ins_not_stopped: usize,
    pub barge_ins_agent_quiet: usize,
    pub barge_in_cut_offs: usize,
    pub barge_in_response_ms: Stat,
    pub stages: Option<Stages>,
    pub usage: Option<Usage>,
    /// The bench process's own CPU, in % of one core.
    pub bench_core_pct: f64,
    pub max_send_late_ms: f64,
    /// Packets the bench sent more than 5 ms after their time, of all it sent.
    pub late_sends: usize,
    pub packets_sent: usize,
    pub lines: Vec<LineRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: String,
    /// Whether the bench started Izwi itself (CPU, memory and records known).
    pub spawned: bool,
    pub idle_rss_mib: Option<f64>,
    pub steps: Vec<Step>,
    /// Slope of the peak resident memory over the steps' call counts.
    pub mib_per_call: Option<f64>,
}

/// The lines of call `k`: the questions (rotated by `k`, so concurrent calls
/// say different things at once), an interruption after the 2nd, 8th, 14th …
pub fn sequence(lineup: &Lineup, k: usize) -> Vec<(Arc<Utterance>, Kind)> {
    let n = lineup.questions.len();
    let mut out = Vec::new();
    let mut b = 0;
    for i in 0..n {
        out.push((lineup.questions[(i + k) % n].clone(), Kind::Question));
        if (i % 6 == 1 || n == 1) && !lineup.interruptions.is_empty() {
            let m = lineup.interruptions.len();
            out.push((lineup.interruptions[(b + k) % m].clone(), Kind::BargeIn));
            b += 1;
        }
    }
    out
}

/// Runs every step and hands each to `on_step` as it completes.
pub async fn run(
    opts: &Options,
    lineup: &Lineup,
    mut on_step: impl FnMut(&Step),
) -> Result<Report, BenchError> {
    sipp::check_installed()?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temporary folder", e))?;
    let scenario = sipp::write_scenario(dir.path())?;
    let (mut server, target) = match opts.target {
        Some(t) => (None, t),
        None => {
            let s = Server::spawn(opts.config.as_deref(), opts.agent.as_deref())?;
            tracing::info!(sip = %s.sip, pid = s.pid(), "izwi serve started; waiting for it to answer SIP");
            let s = tokio::task::spawn_blocking(move || {
                let mut s = s;
                s.wait_ready(READY_LIMIT).map(|_| s)
            })
            .await
            .map_err(|e| BenchError::io("waiting for izwi serve", std::io::Error::other(e)))??;
            let sip = s.sip;
            (Some(s), sip)
        }
    };
    let local = local_ip_towards(target)?;
    let pid = server.as_ref().map(Server::pid);
    let idle_rss_mib = pid.and_then(server::memory_kib).map(|(rss, _)| mib(rss));
    let mut steps = Vec::new();
    for (s, &n) in opts.calls.iter().enumerate() {
        let scripts: Vec<Script> = (0..n)
            .map(|k| Script::build(sequence(lineup, k), &opts.timing))
            .collect();
        let step_dir = dir.path().join(format!("step-{s}"));
        std::fs::create_dir(&step_dir)
            .map_err(|e| BenchError::io("creating a temporary folder", e))?;
        let scenario = scenario.clone();
        tracing::info!(
            calls = n,
            seconds = scripts[0].length.as_secs(),
            "placing calls"
        );
        let (calls, usage) = tokio::task::spawn_blocking(move || {
            run_step(&scripts, target, local, &scenario, &step_dir, pid)
        })
        .await
        .map_err(|e| BenchError::io("running the calls", std::io::Error::other(e)))??;
        if let Some(s) = server.as_mut() {
            s.check_alive()?;
        }
        let stages = match &server {
            Some(s) => {
                let ids: Vec<String> = calls.calls.iter().map(|c| c.call_id.clone()).collect();
                Some(stages(&s.records(), &ids).await?)
            }
            None => None,
        };
        let step = summarise(n, calls, usage, stages);
        on_step(&step);
        steps.push(step);
    }
    drop(server.take());
    let points: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|s| Some((s.calls as f64, s.usage.as_ref()?.rss_peak_mib)))
        .collect();
    Ok(Report {
        target: target.to_string(),
        spawned: pid.is_some(),
        idle_rss_mib,
        mib_per_call: slope(&points),
        steps,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope; `None` with fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The address of this machine on the route towards `target`.
fn local_ip_towards(target: SocketAddr) -> Result<IpAddr, BenchError> {
    if target.ip().is_loopback() {
        return Ok(target.ip());
    }
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(target)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .map_err(|e| BenchError::io(&format!("finding the local address towards {target}"), e))
}

struct CallRun {
    call_id: String,
    script: Script,
    log: MediaLog,
    /// sipp's receipt of the 200 OK, ms after the bench's answer time (may be negative).
    ok_ms: f64,
}

struct StepRun {
    calls: Vec<CallRun>,
    stagger: Duration,
    bench_core_pct: f64,
}

/// Places the calls of one step, staggered, and waits for them all.
fn run_step(
    scripts: &[Script],
    target: SocketAddr,
    local: IpAddr,
    scenario: &Path,
    dir: &Path,
    pid: Option<u32>,
) -> Result<(StepRun, Option<Usage>), BenchError> {
    let n = scripts.len();
    // Spread the calls' lines evenly over one line's slot.
    let slot = scripts[0].length.as_secs_f64() / scripts[0].items.len().max(1) as f64;
    let stagger = Duration::from_secs_f64((slot / n as f64).min(3.0));
    let stagger = if n == 1 { Duration::ZERO } else { stagger };
    let rss_before = pid.and_then(server::memory_kib).map(|m| m.0);
    let cpu_before = pid.and_then(server::cpu_time);
    let own_before = server::cpu_time(std::process::id());
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let (results, rss_peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = pid.and_then(server::memory_kib) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(RSS_EVERY);
            }
            peak
        });
        let handles: Vec<_> = scripts
            .iter()
            .enumerate()
            .map(|(k, script)| {
                scope.spawn(move || {
                    std::thread::sleep(stagger * k as u32);
                    one_call(k, script, target, local, scenario, dir)
                })
            })
            .collect();
        let results: Vec<Result<CallRun, BenchError>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::io(
                        "a call",
                        std::io::Error::other("its thread panicked"),
                    ))
                })
            })
            .collect();
        done.store(true, Ordering::Relaxed);
        (results, sampler.join().unwrap_or(0))
    });
    let wall = started.elapsed();
    let mut calls = Vec::with_capacity(n);
    for (k, r) in results.into_iter().enumerate() {
        calls.push(r.map_err(|e| BenchError::Call {
            call: k + 1,
            calls: n,
            source: Box::new(e),
        })?);
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let usage = match (pid, cpu_before, rss_before) {
        (Some(pid), Some(cpu_before), Some(rss_before)) => {
            let cpu = server::cpu_time(pid).unwrap_or(cpu_before) - cpu_before;
            let hwm = server::memory_kib(pid).map_or(0, |m| m.1);
            let core_pct = 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
            Some(Usage {
                wall_s: wall.as_secs_f64(),
                cpu_s: cpu.as_secs_f64(),
                core_pct,
                machine_pct: core_pct / cores as f64,
                cores,
                rss_before_mib: mib(rss_before),
                rss_peak_mib: mib(rss_peak.max(rss_before)),
                hwm_mib: mib(hwm),
            })
        }
        _ => None,
    };
    let own = server::cpu_time(std::process::id())
        .zip(own_before)
        .map_or(Duration::ZERO, |(a, b)| a.saturating_sub(b));
    Ok((
        StepRun {
            calls,
            stagger,
            bench_core_pct: 100.0 * own.as_secs_f64() / wall.as_secs_f64(),
        },
        usage,
    ))
}

fn one_call(
    k: usize,
    script: &Script,
    target: SocketAddr,
    local: IpAddr,
    scenario: &Path,
    dir: &Path,
) -> Result<CallRun, BenchError> {
    let dir = dir.join(format!("call-{k}"));
    std::fs::create_dir(&dir).map_err(|e| BenchError::io("creating a temporary folder", e))?;
    let socket =
        UdpSocket::bind((local, 0)).map_err(|e| BenchError::io("binding the RTP socket", e))?;
    let media_port = socket
        .local_addr()
        .map_err(|e| BenchError::io("binding the RTP socket", e))?
        .port();
    let hold = script.length + HOLD_SLACK;
    let mut sipp = Sipp::start(scenario, target, local, media_port, hold, &dir)?;
    let answer = sipp.wait_answer(Duration::from_secs(30))?;
    let (t0, t0_wall) = (Instant::now(), SystemTime::now());
    let ok_ms = match answer.ok_at.duration_since(t0_wall) {
        Ok(after) => after.as_secs_f64() * 1000.0,
        Err(before) => -before.duration().as_secs_f64() * 1000.0,
    };
    let log = media::play(
        &socket,
        answer.rtp,
        script,
        t0,
        HOLD_SLACK + Duration::from_secs(10),
        || sipp.exited(),
    )
    .map_err(|e| BenchError::io("sending or receiving RTP", e))?;
    sipp.finish(Duration::from_secs(15))?;
    Ok(CallRun {
        call_id: answer.call_id,
        script: script.clone(),
        log,
        ok_ms,
    })
}

/// Izwi's records of the calls with these SIP Call-IDs (waiting a little
/// for the writer to catch up).
async fn stages(path: &Path, call_ids: &[String]) -> Result<Stages, BenchError> {
    // Only read: the key (which hashes callers' numbers on writes) is never used.
    let store = Store::open(path, "izwi-bench").await?;
    let mut turns: Vec<TurnRow> = Vec::new();
    let mut found = 0;
    for id in call_ids {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let q = CallQuery {
                remote_id: Some(id.clone()),
                ..CallQuery::default()
            };
            let ended = store
                .list(&q)
                .await?
                .calls
                .into_iter()
                .find(|c| c.ended_at_ms.is_some());
            if let Some(call) = ended {
                if let Some((_, t)) = store.get(&call.id).await? {
                    turns.extend(t);
                }
                found += 1;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    store.close().await;
    let col = |greeting: bool, f: fn(&TurnRow) -> Option<f64>| {
        turns
            .iter()
            .filter(|t| t.greeting == greeting)
            .filter_map(f)
            .collect::<Vec<f64>>()
    };
    Ok(Stages {
        calls_found: found,
        turns: turns.iter().filter(|t| !t.greeting).count(),
        response_ms: Stat::of(&col(false, |t| t.response_ms)),
        asr_ms: Stat::of(&col(false, |t| t.asr_ms)),
        llm_first_token_ms: Stat::of(&col(false, |t| t.llm_first_token_ms)),
        tts_first_audio_ms: Stat::of(&col(false, |t| t.tts_first_audio_ms)),
        greeting_response_ms: Stat::of(&col(true, |t| t.response_ms)),
    })
}

fn summarise(n: usize, run: StepRun, usage: Option<Usage>, stages: Option<Stages>) -> Step {
    let mut rows = Vec::new();
    let mut greetings_rtp = Vec::new();
    let mut greetings_ok = Vec::new();
    let mut max_late: f64 = 0.0;
    for (k, call) in run.calls.iter().enumerate() {
        let kinds: Vec<Kind> = call.script.items.iter().map(|i| i.kind).collect();
        let result: CallResult = measure::analyse(&kinds, &call.log, Some(call.ok_ms));
        greetings_rtp.extend(result.greeting_from_rtp_ms);
        greetings_ok.extend(result.greeting_from_ok_ms);
        max_late = max_late.max(result.max_send_late_ms);
        for (item, line) in call.script.items.iter().zip(result.lines) {
            rows.push(LineRow {
                call: k + 1,
                text: item.utterance.text.clone(),
                voice: item.utterance.voice.to_string(),
                pause_ms: item.utterance.pause_ms,
                result: line,
            });
        }
    }
    let questions: Vec<&LineRow> = rows
        .iter()
        .filter(|r| r.result.kind == Kind::Question && r.result.sent.is_some())
        .collect();
    let barge_ins: Vec<&LineRow> = rows
        .iter()
        .filter(|r| r.result.kind == Kind::BargeIn && r.result.sent.is_some())
        .collect();
    let values = |rows: &[&LineRow], f: fn(&LineResult) -> Option<f64>| {
        rows.iter()
            .filter_map(|r| f(&r.result))
            .collect::<Vec<f64>>()
    };
    let count = |rows: &[&LineRow], f: fn(&LineRow) -> bool| rows.iter().filter(|r| f(r)).count();
    let first = &run.calls[0].script;
    Step {
        calls: n,
        questions_per_call: first
            .items
            .iter()
            .filter(|i| i.kind == Kind::Question)
            .count(),
        barge_ins_per_call: first
            .items
            .iter()
            .filter(|i| i.kind == Kind::BargeIn)
            .count(),
        hold_s: (first.length + HOLD_SLACK).as_secs_f64(),
        stagger_s: run.stagger.as_secs_f64(),
        response_ms: Stat::of(&values(&questions, |r| r.response_ms)),
        questions_asked: questions.len(),
        questions_with_pause: count(&questions, |r| r.pause_ms.is_some()),
        cut_offs: count(&questions, |r| r.result.cut_off),
        cut_offs_in_pause_questions: count(&questions, |r| {
            r.result.cut_off && r.pause_ms.is_some()
        }),
        late_previous: count(&questions, |r| r.result.late_previous),
        talked_over: count(&questions, |r| r.result.talked_over),
        greetings_heard: greetings_rtp.len(),
        greeting_from_rtp_ms: Stat::of(&greetings_rtp),
        greeting_from_ok_ms: Stat::of(&greetings_ok),
        barge_ins: barge_ins.len(),
        barge_in_stop_ms: Stat::of(&values(&barge_ins, |r| r.stop_ms)),
        barge_ins_not_stopped: count(&barge_ins, |r| r.result.not_stopped),
        barge_ins_agent_quiet: count(&barge_ins, |r| r.result.agent_quiet_at_onset),
        barge_in_cut_offs: count(&barge_ins, |r| r.result.cut_off),
        barge_in_response_ms: Stat::of(&values(&barge_ins, |r| r.response_ms)),
        stages,
        usage,
        bench_core_pct: run.bench_core_pct,
        max_send_late_ms: max_late,
        late_sends: run.calls.iter().map(|c| c.log.late_sends).sum(),
        packets_sent: run.calls.iter().map(|c| c.log.packets_sent).sum(),
        lines: rows,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn p50_p95(s: &Stat) -> String {
    format!("P50 {} ms, P95 {} ms", ms(s.p50), ms(s.p95))
}

/// The per-line table of a step.
pub fn lines_text(step: &Step) -> String {
    let mut s = format!(
        "{:>4} {:>2} {:<9} {:<13} {:>5} {:>8} {:>7}  {:<18} text\n",
        "call", "#", "kind", "voice", "pause", "response", "stop", "notes"
    );
    let mut index = 0;
    let mut call = 0;
    for r in &step.lines {
        if r.call != call {
            call = r.call;
            index = 0;
        }
        index += 1;
        let l = &r.result;
        let mut notes = Vec::new();
        if l.sent.is_none() {
            notes.push("not sent");
        }
        if l.cut_off {
            notes.push("CUT OFF");
        }
        if l.late_previous {
            notes.push("late answer");
        }
        if l.talked_over {
            notes.push("talked over");
        }
        if l.not_stopped {
            notes.push("NOT STOPPED");
        }
        if l.agent_quiet_at_onset {
            notes.push("agent quiet");
        }
        if l.sent.is_some() && l.response_ms.is_none() {
            notes.push("NO ANSWER");
        }
        s.push_str(&format!(
            "{:>4} {:>2} {:<9} {:<13} {:>5} {:>8} {:>7}  {:<18} {}\n",
            r.call,
            index,
            match l.kind {
                Kind::Question => "question",
                Kind::BargeIn => "barge-in",
            },
            r.voice,
            r.pause_ms.map_or("-".into(), |p| p.to_string()),
            ms(l.response_ms),
            ms(l.stop_ms),
            notes.join(","),
            r.text
        ));
    }
    s
}

/// A step's summary.
pub fn step_text(step: &Step) -> String {
    let mut s = format!(
        "== {} concurrent call(s): {} questions and {} barge-in(s) each, {:.0} s a call, started {:.1} s apart\n",
        step.calls, step.questions_per_call, step.barge_ins_per_call, step.hold_s, step.stagger_s
    );
    s.push_str(&format!(
        "caller end of speech -> first agent audio (packets): {}, max {} ms; {} of {} questions answered\n",
        p50_p95(&step.response_ms),
        ms(step.response_ms.max),
        step.response_ms.n,
        step.questions_asked
    ));
    s.push_str(&format!(
        "cut-offs (agent audio began while the caller was speaking or pausing mid-sentence): {} of {} questions ({} of {} with a mid-sentence pause)\n",
        step.cut_offs, step.questions_asked, step.cut_offs_in_pause_questions, step.questions_with_pause
    ));
    if step.late_previous + step.talked_over > 0 {
        s.push_str(&format!(
            "overlaps: {} question(s) met a late answer to the line before, {} ended while the agent was talking\n",
            step.late_previous, step.talked_over
        ));
    }
    s.push_str(&format!(
        "greeting heard on {} of {} call(s): first agent audio {} after Izwi's first RTP packet; {} after sipp received the 200 OK\n",
        step.greetings_heard,
        step.calls,
        p50_p95(&step.greeting_from_rtp_ms),
        p50_p95(&step.greeting_from_ok_ms)
    ));
    s.push_str(&format!(
        "barge-in: caller onset -> agent's last loud packet {} over {} of {} (not stopped {}, agent already quiet {}, cut off {}); replies to them {}\n",
        p50_p95(&step.barge_in_stop_ms),
        step.barge_in_stop_ms.n,
        step.barge_ins,
        step.barge_ins_not_stopped,
        step.barge_ins_agent_quiet,
        step.barge_in_cut_offs,
        p50_p95(&step.barge_in_response_ms)
    ));
    match &step.stages {
        Some(st) => {
            let pair = |x: &Stat| format!("{} / {}", ms(x.p50), ms(x.p95));
            s.push_str(&format!(
                "Izwi's records of these calls ({} of {} found, {} turns; its own timers, P50 / P95 ms):\n  end of speech -> first audio {} (from the packets: {})\n  ASR {}, LLM first token {}, TTS first audio {}\n",
                st.calls_found,
                step.calls,
                st.turns,
                pair(&st.response_ms),
                pair(&step.response_ms),
                pair(&st.asr_ms),
                pair(&st.llm_first_token_ms),
                pair(&st.tts_first_audio_ms),
            ));
            if st.greeting_response_ms.n > 0 {
                s.push_str(&format!("  greeting {}\n", pair(&st.greeting_response_ms)));
            }
        }
        None => s.push_str("Izwi's records: not read (Izwi not started by the bench)\n"),
    }
    match &step.usage {
        Some(u) => s.push_str(&format!(
            "Izwi process: CPU {:.0}% of one core ({:.0}% of {} cores) over {:.0} s; RSS {:.0} MiB before, {:.0} MiB peak ({:+.1} MiB a call), VmHWM {:.0} MiB\n",
            u.core_pct,
            u.machine_pct,
            u.cores,
            u.wall_s,
            u.rss_before_mib,
            u.rss_peak_mib,
            (u.rss_peak_mib - u.rss_before_mib) / step.calls as f64,
            u.hwm_mib
        )),
        None => s.push_str("Izwi process: CPU and memory not measured (Izwi not started by the bench)\n"),
    }
    s.push_str(&format!(
        "bench: {:.0}% of one core; {} of {} packets sent over 5 ms late (at most {:.1} ms)\n",
        step.bench_core_pct, step.late_sends, step.packets_sent, step.max_send_late_ms
    ));
    s
}

/// The table of all steps.
pub fn sweep_text(report: &Report) -> String {
    let mut s = format!(
        "== capacity ({}; {})\n{:>5} {:>9} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10}\n",
        report.target,
        if report.spawned {
            "started by the bench"
        } else {
            "already running"
        },
        "calls",
        "questions",
        "P50 ms",
        "P95 ms",
        "cut-offs",
        "greet P50",
        "barge P50",
        "CPU %1c",
        "CPU %mach",
        "RSS peak",
        "MiB/call",
    );
    for st in &report.steps {
        let u = st.usage.as_ref();
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        s.push_str(&format!(
            "{:>5} {:>9} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10}\n",
            st.calls,
            st.questions_asked,
            ms(st.response_ms.p50),
            ms(st.response_ms.p95),
            format!("{}/{}", st.cut_offs, st.questions_asked),
            ms(st.greeting_from_ok_ms.p50),
            ms(st.barge_in_stop_ms.p50),
            f(u.map(|u| u.core_pct)),
            f(u.map(|u| u.machine_pct)),
            f(u.map(|u| u.rss_peak_mib)),
            u.map_or("-".into(), |u| format!(
                "{:+.1}",
                (u.rss_peak_mib - u.rss_before_mib) / st.calls as f64
            )),
        ));
    }
    if let Some(idle) = report.idle_rss_mib {
        s.push_str(&format!("Izwi idle after start: RSS {idle:.0} MiB\n"));
    }
    match report.mib_per_call {
        Some(m) => s.push_str(&format!(
            "memory per additional call: {m:.1} MiB (slope of peak RSS over the steps)\n"
        )),
        None => s.push_str("memory per additional call: - (needs two steps and a started Izwi)\n"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_follow_the_second_question_and_every_sixth_after() {
        let u = |t: &str| {
            Arc::new(Utterance {
                text: t.into(),
                voice: super::super::caller::Voice::Piper,
                pause_ms: None,
                audio: vec![0.1; 160],
            })
        };
        let lineup = Lineup {
            questions: (0..12).map(|i| u(&format!("q{i}"))).collect(),
            interruptions: vec![u("b0"), u("b1")],
        };
        let texts = |k| {
            sequence(&lineup, k)
                .iter()
                .map(|(u, _)| u.text.clone())
                .collect::<Vec<_>>()
        };
        let t = texts(0);
        assert_eq!(t.len(), 14);
        assert_eq!(&t[..4], ["q0", "q1", "b0", "q2"]);
        assert_eq!(t[9], "b1");
        // The next call starts elsewhere in the list.
        assert_eq!(&texts(1)[..3], ["q1", "q2", "b1"]);
        let two = Lineup {
            questions: lineup.questions[..2].to_vec(),
            interruptions: lineup.interruptions.clone(),
        };
        assert_eq!(sequence(&two, 0).len(), 3);
    }

    #[test]
    fn slope_of_memory() {
        let s = slope(&[(1.0, 500.0), (2.0, 540.0), (4.0, 620.0)]).unwrap();
        assert!((s - 40.0).abs() < 1e-9, "{s}");
        assert_eq!(slope(&[(1.0, 500.0)]), None);
    }
}
