//! The `izwi` binary: errors are reported here, once, in words.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use izwi::call::Agent;
use izwi::call::session::CallTracker;
use izwi::codec::{resample::resample, wav};
use izwi::config::Config;
use izwi::engine::Engine;
use izwi::models::{ModelStore, Role, fetch, store::Check};
use izwi::records::{CallQuery, CallStart, Outcome, Recorder, Store, Transport, now_ms};
use izwi::talk::{self, Clock};

#[derive(Parser)]
#[command(name = "izwi", version, about = "Self-hosted telephony voice agent")]
struct Cli {
    /// TOML configuration file (settings may also come from IZWI_* variables).
    #[arg(long, short, global = true, env = "IZWI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the models and agents and serve calls.
    Serve,
    /// Play a recorded caller into an agent and record its answers.
    Talk(TalkArgs),
    /// Measure the latency budget: spoken questions through the whole engine
    /// (in process, or with --sip over SIP and RTP, from the packets).
    Bench(BenchArgs),
    /// Say text as an agent (or a language) would, with the embedded voice:
    /// to hear and check a language pack.
    Say(SayArgs),
    /// Transcribe a WAV file with the configured speech recognizer (to check what Izwi hears).
    Transcribe {
        file: PathBuf,
        /// Whisper language code, or `auto`.
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// Fetch, verify and list model files.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Read the call records (the same database `serve` writes).
    Calls {
        #[command(subcommand)]
        action: CallsAction,
    },
    /// Check a dialplan, or ask which agent would answer a call.
    Dialplan {
        #[command(subcommand)]
        action: DialplanAction,
    },
}

#[derive(Subcommand)]
enum DialplanAction {
    /// Validate a dialplan file: agents defined, patterns compiling, every rule reachable.
    Check {
        /// The dialplan (TOML); default: dialplan.file of the configuration.
        file: Option<PathBuf>,
    },
    /// Print which agent (and rule) would answer a call.
    Route(RouteArgs),
}

#[derive(Args)]
struct RouteArgs {
    /// The number called.
    #[arg(long)]
    to: Option<String>,
    /// The caller's number.
    #[arg(long)]
    from: Option<String>,
    /// The user part of the SIP Request-URI.
    #[arg(long)]
    sip_user: Option<String>,
    /// A SIP header, NAME=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    header: Vec<(String, String)>,
    /// A provider (Twilio) parameter, NAME=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    param: Vec<(String, String)>,
    /// The dialplan (TOML); default: dialplan.file of the configuration.
    #[arg(long)]
    file: Option<PathBuf>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

#[derive(Subcommand)]
enum CallsAction {
    /// Calls, newest first.
    List(ListArgs),
    /// One call with its turns.
    Show {
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ListArgs {
    /// Calls started at or after this many hours ago.
    #[arg(long)]
    since_hours: Option<f64>,
    /// open, completed, failed or interrupted.
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["out", "text_only", "phonemes"])))]
struct SayArgs {
    /// The words, as an agent's model or phrase would write them.
    #[arg(required = true)]
    text: Vec<String>,
    /// Say them as this agent does (its language, phonemes); default:
    /// dialplan.default_agent.
    #[arg(long, conflicts_with = "lang")]
    agent: Option<String>,
    /// Say them with this language's pack (`sn`, `sw`, `en`) instead.
    #[arg(long)]
    lang: Option<String>,
    /// Say them with this voice of the model manifest (default: the agent's,
    /// or the profile's).
    #[arg(long)]
    voice: Option<String>,
    /// Where to write the speech (16 kHz mono WAV).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only print the text as the voice is given it (numbers, times, dates
    /// and money in words); loads no model.
    #[arg(long)]
    text_only: bool,
    /// Print the phonemes the voice is given.
    #[arg(long)]
    phonemes: bool,
}

#[derive(Args)]
struct TalkArgs {
    /// The caller's side: any WAV file (resampled to 16 kHz mono).
    #[arg(long = "in", required_unless_present = "say", conflicts_with = "say")]
    input: Option<PathBuf>,
    /// The caller's side as words, spoken with the agent's voice after the
    /// greeting; repeat it for several questions (a pause follows each).
    #[arg(long)]
    say: Vec<String>,
    /// Where to write the agent's side (16 kHz mono, aligned with the caller's).
    #[arg(long = "out")]
    output: PathBuf,
    /// Run on a simulated audio clock as fast as possible (deterministic timing).
    #[arg(long)]
    fast: bool,
    /// Agent profile to talk to (default: dialplan.default_agent).
    #[arg(long)]
    agent: Option<String>,
    /// Also print each turn's record as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Use the simulated clock (faster; latency is then endpointing plus engine time). Not with --sip.
    #[arg(long)]
    fast: bool,
    /// How many built-in clinic questions (a number), or a text file with one
    /// question a line (with --sip, `|` marks a mid-sentence pause). Default: all built-in ones.
    #[arg(long, value_name = "N|FILE")]
    questions: Option<String>,
    /// Agent profile (default: dialplan.default_agent).
    #[arg(long)]
    agent: Option<String>,
    /// Call Izwi over SIP (sipp signalling, the bench's own RTP) and measure
    /// every latency from the packets; starts `izwi serve` unless --target.
    #[arg(long)]
    sip: bool,
    /// With --sip: concurrent calls of each step of a capacity sweep, e.g. 1,2,4,8 (default 1).
    #[arg(long, value_delimiter = ',', value_name = "N,N,…")]
    calls: Option<Vec<usize>>,
    /// With --sip: call the Izwi listening at HOST:PORT (SIP over UDP) instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    target: Option<String>,
    /// With --sip: seconds of listening after each question before the next is due (default 4).
    #[arg(long, value_name = "SECONDS")]
    gap: Option<f64>,
    /// With --sip: print the whole report as one JSON object at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Download (or copy from the mirror) every missing file of a profile, verified.
    Fetch(ProfileArg),
    /// Check every file of a profile against the manifest.
    Verify(ProfileArg),
    /// List the manifest's files for a profile and their state.
    List(ProfileArg),
}

#[derive(Args)]
struct ProfileArg {
    /// Model profile (default: models.profile from the configuration).
    #[arg(long)]
    profile: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("izwi: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    init_logging(&config)?;
    match cli.command {
        Command::Models { action } => models(&config, action),
        Command::Talk(args) => runtime()?.block_on(talk_cmd(config, args)),
        Command::Serve => runtime()?.block_on(serve(config)),
        Command::Bench(args) => runtime()?.block_on(bench_cmd(config, cli.config, args)),
        Command::Say(args) => say(&config, args),
        Command::Transcribe { file, language } => transcribe(&config, &file, &language),
        Command::Calls { action } => runtime()?.block_on(calls_cmd(config, action)),
        Command::Dialplan { action } => dialplan_cmd(&config, action),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(config: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    // The native libraries narrate every model load at info; keep that for debug.
    let level = if config.log.level.contains("llama") || config.log.level.contains("whisper") {
        config.log.level.clone()
    } else {
        format!("{},llama-cpp-2=warn,whisper_rs=warn", config.log.level)
    };
    let filter = EnvFilter::try_new(&level)
        .with_context(|| format!("setting `log.level`: invalid filter {:?}", config.log.level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

fn store_for(config: &Config, profile: Option<String>) -> Result<ModelStore> {
    let mut models = config.models.clone();
    if let Some(p) = profile {
        models.profile = p;
    }
    let store = ModelStore::from_config(&models)?;
    if store.entries().is_empty() {
        bail!(
            "profile `{}` has no models (profiles: {})",
            store.profile,
            store.manifest.profiles().join(", ")
        );
    }
    Ok(store)
}

/// The voices the agents name (the configuration's and the dialplan file's),
/// beyond the profile's own.
fn agent_voices(config: &Config) -> Result<Vec<String>> {
    let plan = dialplan_of(config, None)?;
    let mut voices: Vec<String> = plan
        .agents
        .values()
        .filter_map(|a| a.voice.clone())
        .collect();
    voices.sort();
    voices.dedup();
    Ok(voices)
}

fn models(config: &Config, action: ModelsAction) -> Result<()> {
    let voices = agent_voices(config)?;
    let voices = voices.iter().map(String::as_str);
    match action {
        ModelsAction::Fetch(p) => {
            let store = store_for(config, p.profile)?;
            for entry in store.entries_with_voices(voices)? {
                match fetch::fetch_one(&store, entry)? {
                    fetch::Outcome::AlreadyPresent => {
                        println!("ok       {:<36} {}", entry.id, entry.file)
                    }
                    fetch::Outcome::Fetched { from } => {
                        println!("fetched  {:<36} {} (from {from})", entry.id, entry.file)
                    }
                }
            }
            println!(
                "all models of profile `{}` and the agents' voices are in {}",
                store.profile,
                store.dir.display()
            );
            Ok(())
        }
        ModelsAction::Verify(p) => {
            let store = store_for(config, p.profile)?;
            let mut bad = 0;
            for entry in store.entries_with_voices(voices)? {
                let state = match store.check(entry)? {
                    Check::Verified => "ok".to_string(),
                    Check::Missing => {
                        bad += 1;
                        "MISSING".to_string()
                    }
                    Check::Mismatch(d) => {
                        bad += 1;
                        format!("MISMATCH (sha256 {})", d.sha256)
                    }
                };
                println!(
                    "{:<10} {:<36} {}",
                    state,
                    entry.id,
                    store.path_of(entry).display()
                );
            }
            if bad > 0 {
                bail!(
                    "{bad} model file(s) of profile `{}` or the agents' voices missing or wrong; run `izwi models fetch --profile {}`",
                    store.profile,
                    store.profile
                );
            }
            Ok(())
        }
        ModelsAction::List(p) => {
            let store = store_for(config, p.profile)?;
            println!(
                "{:<36} {:<10} {:>10}  {:<8} file / sources",
                "id", "role", "size", "state"
            );
            let listed = store.entries_with_voices(voices)?;
            let others: Vec<_> = store
                .manifest
                .models
                .iter()
                .filter(|m| {
                    matches!(m.role, Role::Tts | Role::TtsConfig)
                        && !listed.iter().any(|l| l.id == m.id)
                })
                .collect();
            for (heading, entries) in [
                ("", &listed),
                ("\nvoices an agent may name (`voice = \"NAME\"`):", &others),
            ] {
                if entries.is_empty() {
                    continue;
                }
                if !heading.is_empty() {
                    println!("{heading}");
                }
                for entry in entries {
                    list_entry(&store, entry);
                }
            }
            Ok(())
        }
    }
}

fn list_entry(store: &ModelStore, entry: &izwi::models::ModelEntry) {
    let state = if store.path_of(entry).exists() {
        "present"
    } else {
        "absent"
    };
    let size = entry.size.map_or("-".to_string(), |s| s.to_string());
    let language = entry
        .language
        .as_ref()
        .map_or(String::new(), |l| format!("  (language {l})"));
    println!(
        "{:<36} {:<10} {:>10}  {:<8} {}{language}",
        entry.id,
        entry.role.as_str(),
        size,
        state,
        entry.file
    );
    for s in &entry.sources {
        println!("{:<68}   from {}", "", s.describe());
    }
}

async fn load_engine(config: &Config) -> Result<Arc<Engine>> {
    let t = Instant::now();
    let cfg = config.clone();
    let (engine, times) = tokio::task::spawn_blocking(move || Engine::load(&cfg))
        .await
        .context("model loading stopped")??;
    tracing::info!(
        profile = %config.models.profile,
        vad_ms = times.vad.as_millis() as u64,
        asr_ms = times.asr.as_millis() as u64,
        llm_ms = times.llm.as_millis() as u64,
        tts_ms = times.tts.as_millis() as u64,
        turn_ms = times.turn.as_millis() as u64,
        total_ms = t.elapsed().as_millis() as u64,
        "models loaded"
    );
    Ok(Arc::new(engine))
}

fn pick_agent<'a>(
    config: &'a Config,
    name: Option<&'a str>,
) -> Result<(&'a str, &'a izwi::config::AgentProfile)> {
    match name {
        Some(n) => Ok((
            n,
            config
                .agent(n)
                .with_context(|| format!("no agent named `{n}` in the configuration"))?,
        )),
        None => Ok(config.default_agent()),
    }
}

/// How the endpoint is decided, for a benchmark's header.
fn turn_summary(t: &izwi::config::TurnConfig) -> String {
    if t.detector {
        format!(
            "words recognised after {} ms of silence, reply prepared after {} ms, played after {} ms when the end-of-turn model judges the turn complete{}, {} ms when not, {} ms in languages it does not know",
            t.transcribe_after_ms,
            t.early_endpoint_ms,
            t.complete_silence_ms,
            if t.judge_words {
                " (or a local language model reads its words as finished)"
            } else {
                ""
            },
            t.incomplete_silence_ms,
            t.endpoint_silence_ms
        )
    } else {
        format!(
            "words recognised after {} ms of silence, reply prepared after {} ms, played after {} ms",
            t.transcribe_after_ms, t.early_endpoint_ms, t.endpoint_silence_ms
        )
    }
}

async fn bench_cmd(config: Config, config_path: Option<PathBuf>, args: BenchArgs) -> Result<()> {
    if args.sip {
        if args.fast {
            bail!("--fast is for the in-process bench; --sip runs in real time");
        }
        return bench_sip(config, config_path, args).await;
    }
    if args.calls.is_some() || args.target.is_some() || args.gap.is_some() || args.json {
        bail!("--calls, --target, --gap and --json go with --sip");
    }
    let (name, profile) = pick_agent(&config, args.agent.as_deref())?;
    let questions: Vec<String> = match args.questions.as_deref() {
        Some(q) => match q.parse::<usize>() {
            Ok(n) => izwi::bench::QUESTIONS
                .iter()
                .cycle()
                .take(n)
                .map(|q| q.to_string())
                .collect(),
            Err(_) => std::fs::read_to_string(q)
                .with_context(|| format!("reading {q}"))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        },
        None => izwi::bench::QUESTIONS
            .iter()
            .map(|q| q.to_string())
            .collect(),
    };
    if questions.is_empty() {
        bail!("no questions to ask");
    }
    let engine = load_engine(&config).await?;
    // The greeting would only delay each question; the latency of interest is the reply's.
    let mut quiet = profile.clone();
    quiet.greeting.clear();
    let agent = Arc::new(Agent::prepare(&engine, name, &quiet).await?);
    let clock = if args.fast {
        Clock::Simulated
    } else {
        Clock::RealTime
    };
    let records = izwi::bench::run(engine.clone(), agent, &config.turn, &questions, clock).await?;
    print!("{}", talk::report(&records));
    println!(
        "profile {}, {} engine workers, {}",
        config.models.profile,
        engine.pool.size(),
        turn_summary(&config.turn)
    );
    print!("{}", izwi::bench::summary(&records, clock));
    Ok(())
}

/// `izwi bench --sip`: the caller's lines are synthesized here (the models
/// loaded only for that, and dropped before any call), then Izwi is called.
async fn bench_sip(config: Config, config_path: Option<PathBuf>, args: BenchArgs) -> Result<()> {
    use izwi::bench::{caller, media::Timing, sip};
    use std::io::Write;
    let lines = match args.questions.as_deref() {
        None => caller::built_in(caller::QUESTIONS.len()),
        Some(q) => match q.parse::<usize>() {
            Ok(n) => caller::built_in(n),
            Err(_) => caller::from_text(
                &std::fs::read_to_string(q).with_context(|| format!("reading {q}"))?,
            ),
        },
    };
    if lines.is_empty() {
        bail!("no questions to ask");
    }
    let calls = args.calls.unwrap_or_else(|| vec![1]);
    // The started Izwi has 100 RTP ports, and each call is a sipp of its own.
    if calls.is_empty() || calls.iter().any(|&n| n == 0 || n > 50) {
        bail!("--calls takes counts from 1 to 50, e.g. 1,2,4");
    }
    let gap = args.gap.unwrap_or(4.0);
    if !(0.5..=60.0).contains(&gap) {
        bail!("--gap takes 0.5 to 60 seconds");
    }
    let target = match &args.target {
        Some(t) => {
            use std::net::ToSocketAddrs;
            let addr = t
                .to_socket_addrs()
                .with_context(|| format!("--target {t}: not HOST:PORT"))?
                .find(|a| a.is_ipv4())
                .with_context(|| format!("--target {t}: no IPv4 address"))?;
            if args.agent.is_some() {
                bail!("--agent cannot choose the agent of an Izwi already running (--target)");
            }
            Some(addr)
        }
        None => None,
    };
    // Fail at once, not after loading the models and synthesizing.
    izwi::bench::sipp::check_installed()?;
    let (_, profile) = pick_agent(&config, args.agent.as_deref())?;
    let piper_voice = profile.phonemes.clone();
    let t = Instant::now();
    let engine = load_engine(&config).await?;
    let mut lineup = caller::Lineup {
        questions: Vec::new(),
        interruptions: Vec::new(),
    };
    let espeak = &config.engine.espeak;
    for line in &lines {
        let u = caller::synthesize(&engine, espeak, piper_voice.as_deref(), line).await?;
        lineup.questions.push(Arc::new(u));
    }
    for line in &caller::interruptions() {
        let u = caller::synthesize(&engine, espeak, piper_voice.as_deref(), line).await?;
        lineup.interruptions.push(Arc::new(u));
    }
    drop(engine);
    println!(
        "izwi bench --sip: {} questions ({} with a mid-sentence pause) and {} interruptions in {} voices, synthesized in {:.1} s; profile {}, {}",
        lineup.questions.len(),
        lineup
            .questions
            .iter()
            .filter(|u| u.pause_ms.is_some())
            .count(),
        lineup.interruptions.len(),
        lineup
            .questions
            .iter()
            .chain(&lineup.interruptions)
            .map(|u| u.voice.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        t.elapsed().as_secs_f64(),
        config.models.profile,
        turn_summary(&config.turn)
    );
    let opts = sip::Options {
        calls,
        target,
        timing: Timing {
            greeting: std::time::Duration::from_secs(3),
            gap: std::time::Duration::from_secs_f64(gap),
            wait: std::time::Duration::from_secs_f64(gap),
        },
        config: config_path,
        agent: args.agent.clone(),
    };
    let report = sip::run(&opts, &lineup, |step| {
        if step.calls == 1 {
            print!("{}", sip::lines_text(step));
        }
        print!("{}", sip::step_text(step));
        let _ = std::io::stdout().flush();
    })
    .await?;
    print!("{}", sip::sweep_text(&report));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn talk_cmd(config: Config, args: TalkArgs) -> Result<()> {
    let (name, profile) = pick_agent(&config, args.agent.as_deref())?;
    let engine = load_engine(&config).await?;
    let agent = Arc::new(Agent::prepare(&engine, name, profile).await?);
    let audio = match &args.input {
        Some(input) => {
            let (audio, rate) = wav::read_mono(input)?;
            resample(&audio, rate, izwi::audio::ENGINE_RATE)?
        }
        None => talk::spoken_caller(&engine, &agent, &args.say).await?,
    };
    let clock = if args.fast {
        Clock::Simulated
    } else {
        Clock::RealTime
    };
    let (store, recorder, writer) = open_records(&config).await?;
    let id = izwi::records::new_call_id();
    let mut tracker = CallTracker::start(
        &recorder,
        CallStart {
            id: id.clone(),
            remote_id: None,
            rule: None,
            transport: Transport::Talk,
            started_at_ms: now_ms(),
            called: None,
            caller: None,
            agent: Some(name.to_string()),
            codec: None,
        },
    );
    tracker.answered(now_ms());
    let outcome = talk::talk(engine, agent, &config.turn, &audio, clock).await?;
    tracker.finish(outcome.ending, 0, &outcome.turns, outcome.actions.clone());
    close_records(store, recorder, writer).await;
    if config.records.enabled {
        println!("call {id} recorded in {}", config.records.path.display());
    }
    wav::write_mono(&args.output, &outcome.agent_audio, izwi::audio::ENGINE_RATE)?;
    print!("{}", talk::report(&outcome.turns));
    if !outcome.actions.is_empty() {
        print!("{}", izwi::records::actions_table(&outcome.actions));
    }
    println!("ended: {}", outcome.ending);
    if let Some(to) = &outcome.transferred_to {
        println!("transferred to {to}");
    }
    if args.json {
        for t in &outcome.turns {
            println!("{}", serde_json::to_string(t)?);
        }
    }
    println!(
        "caller {:.1} s, agent side written to {} ({:.1} s)",
        outcome.caller_seconds,
        args.output.display(),
        outcome.agent_audio.len() as f64 / izwi::audio::ENGINE_RATE as f64
    );
    Ok(())
}

/// The call records: opened (and migrated), calls left open by a killed
/// process closed as interrupted, and the writer started. Off: a recorder that
/// writes nowhere.
async fn open_records(
    config: &Config,
) -> Result<(Option<Store>, Recorder, Option<tokio::task::JoinHandle<()>>)> {
    if !config.records.enabled {
        return Ok((None, Recorder::disabled(), None));
    }
    let key = caller_key(config)?;
    let store = open_store(config, &key).await?;
    // A shared database holds the other nodes' live calls too: only calls
    // older than the longest a call may last are this node's to close.
    let longest_secs = config
        .agents
        .values()
        .map(|a| a.max_call_secs)
        .chain([config.sip.max_call_secs])
        .max()
        .unwrap_or(0);
    let started_before = match store.backend() {
        izwi::records::Backend::Sqlite => None,
        izwi::records::Backend::Postgres => Some(now_ms() - (i64::from(longest_secs) + 60) * 1000),
    };
    let closed = store.close_interrupted(now_ms(), started_before).await?;
    if closed > 0 {
        tracing::warn!(
            calls = closed,
            "calls left open by a stopped process marked interrupted"
        );
    }
    let (recorder, writer) = store.writer(config.records.queue);
    Ok((Some(store), recorder, Some(writer)))
}

/// Lets the writer drain what is queued, then closes the database.
async fn close_records(
    store: Option<Store>,
    recorder: Recorder,
    writer: Option<tokio::task::JoinHandle<()>>,
) {
    drop(recorder);
    if let Some(w) = writer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
    }
    if let Some(s) = store {
        s.close().await;
    }
}

/// The records database the configuration names: the SQLite file, or a
/// shared PostgreSQL database.
async fn open_store(config: &Config, key: &str) -> Result<Store> {
    let r = &config.records;
    if r.url.is_empty() {
        Store::open(&r.path, key)
            .await
            .with_context(|| format!("opening the call records ({})", r.path.display()))
    } else {
        Store::open_url(&r.url, key).await.with_context(|| {
            format!(
                "opening the call records ({}, records.url)",
                izwi::records::shown_url(&r.url)
            )
        })
    }
}

/// The caller-number HMAC key: configured, or kept in a file beside the
/// database (made on first use, readable by its owner only).
fn caller_key(config: &Config) -> Result<String> {
    if !config.records.caller_key.is_empty() {
        return Ok(config.records.caller_key.clone());
    }
    let mut path = config.records.path.clone().into_os_string();
    path.push(".key");
    let path = PathBuf::from(path);
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_string();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = hex::encode(rand::random::<[u8; 32]>());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating the caller key {}", path.display()))?;
    f.write_all(key.as_bytes())?;
    tracing::info!(path = %path.display(), "made a new caller-number key");
    Ok(key)
}

async fn calls_cmd(config: Config, action: CallsAction) -> Result<()> {
    if !config.records.enabled {
        bail!("call records are off (records.enabled = false)");
    }
    let path = &config.records.path;
    if config.records.url.is_empty() && !path.exists() {
        bail!("no call records at {} (records.path)", path.display());
    }
    // The same key as the writer's, so that opening never warns about it.
    let store = open_store(&config, &caller_key(&config)?).await?;
    match action {
        CallsAction::List(a) => {
            let outcome = match a.outcome.as_deref() {
                Some(o) => Some(Outcome::parse(o).with_context(|| {
                    format!("--outcome {o}: expected open, completed, failed or interrupted")
                })?),
                None => None,
            };
            let q = CallQuery {
                from_ms: a.since_hours.map(|h| now_ms() - (h * 3_600_000.0) as i64),
                outcome,
                agent: a.agent,
                limit: a.limit,
                ..CallQuery::default()
            };
            let page = store.list(&q).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print!("{}", izwi::records::table(&page.calls));
            }
        }
        CallsAction::Show { id, json } => {
            let Some((call, turns)) = store.get(&id).await? else {
                bail!("no call `{id}` in {}", path.display());
            };
            let actions = store.actions(&id).await?;
            let tools = store.tool_calls(&id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "call": call, "turns": turns, "actions": actions, "tools": tools,
                    }))?
                );
            } else {
                print!("{}", izwi::records::table(std::slice::from_ref(&call)));
                print!("{}", izwi::records::turns_table(&turns));
                if !actions.is_empty() {
                    print!("{}", izwi::records::actions_table(&actions));
                }
                if !tools.is_empty() {
                    print!("{}", izwi::records::tools_table(&tools));
                }
            }
        }
    }
    store.close().await;
    Ok(())
}

/// How far Izwi is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// No new calls; the calls in progress go on.
    Draining,
    /// Every call is hung up and Izwi exits.
    Now,
}

/// SIGTERM (a service manager, a rolling update) drains: new SIP calls and
/// OPTIONS health checks get 503, readiness goes false, and Izwi stops when
/// its calls have ended or `sip.drain_secs` have passed. Ctrl-C, or a second
/// SIGTERM, stops at once after hanging up the calls.
async fn stop_signals(
    stop: Arc<tokio::sync::watch::Sender<Stop>>,
    drain_secs: u32,
    ready: Arc<std::sync::atomic::AtomicBool>,
    draining: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let next = async |term: &mut Option<tokio::signal::unix::Signal>| -> bool {
        match term {
            Some(t) => tokio::select! {
                _ = tokio::signal::ctrl_c() => false,
                _ = t.recv() => true,
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                false
            }
        }
    };
    let terminated = next(&mut term).await;
    if terminated && drain_secs > 0 {
        draining.store(true, std::sync::atomic::Ordering::SeqCst);
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        izwi::metrics::metrics().set_ready(false);
        tracing::info!(
            drain_secs,
            "SIGTERM: draining (a second SIGTERM or Ctrl-C stops at once)"
        );
        let _ = stop.send(Stop::Draining);
        tokio::select! {
            _ = next(&mut term) => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(drain_secs as u64)) => {
                tracing::info!("sip.drain_secs passed: hanging up the calls left");
            }
        }
    }
    tracing::info!("stopping: hanging up calls");
    let _ = stop.send(Stop::Now);
}

fn say(config: &Config, args: SayArgs) -> Result<()> {
    let text = args.text.join(" ");
    let (language, phonemes, voice) = match (&args.lang, &args.agent) {
        (Some(code), _) => {
            let pack = izwi::lang::pack(code).with_context(|| {
                let known: Vec<&str> = izwi::lang::PACKS.iter().map(|p| p.code).collect();
                format!("no language pack `{code}` (Izwi has {})", known.join(", "))
            })?;
            (pack.code.to_string(), Some(pack.phonemes.to_string()), None)
        }
        (None, name) => {
            // The dialplan file's agents as well as the configuration's.
            let plan = dialplan_of(config, None)?;
            let name = name.as_deref().unwrap_or(&plan.default_agent);
            let profile = plan.agents.get(name).with_context(|| {
                let known: Vec<&str> = plan.agents.keys().map(String::as_str).collect();
                format!("no agent `{name}` (agents: {})", known.join(", "))
            })?;
            (
                profile.language.clone(),
                profile.phonemes.clone(),
                profile.voice.clone(),
            )
        }
    };
    let voice = args.voice.clone().or(voice);
    let said = izwi::lang::speakable(&language, &text);
    if args.text_only {
        println!("{said}");
        return Ok(());
    }
    let store = ModelStore::from_config(&config.models)?;
    izwi::engine::onnx::init(config.engine.onnxruntime.clone(), &store)?;
    let (model, voice_config) = match &voice {
        Some(name) => store.voice(name)?,
        None => (store.require(Role::Tts)?, store.require(Role::TtsConfig)?),
    };
    let voice = izwi::engine::tts::piper::PiperTts::load(
        &model,
        &voice_config,
        config.engine.tts_threads.min(config.engine.cpu_threads),
        config.engine.espeak.clone(),
    )?;
    if args.phonemes {
        println!("{}", voice.phonemes(&said, phonemes.as_deref())?);
    }
    if let Some(out) = &args.out {
        use izwi::engine::Tts;
        let audio = voice.synthesize(&said, phonemes.as_deref())?;
        let audio = resample(&audio, voice.sample_rate(), izwi::audio::ENGINE_RATE)?;
        wav::write_mono(out, &audio, izwi::audio::ENGINE_RATE)?;
        eprintln!(
            "{:.1} s of speech written to {}",
            audio.len() as f64 / f64::from(izwi::audio::ENGINE_RATE),
            out.display()
        );
    }
    Ok(())
}

fn transcribe(config: &Config, file: &std::path::Path, language: &str) -> Result<()> {
    let store = ModelStore::from_config(&config.models)?;
    // As a call hears it: with the call's encoder window.
    let asr = izwi::engine::asr::whisper::WhisperAsr::load(
        &store.require(Role::Asr)?,
        config.engine.asr_threads,
        config.engine.asr_fit_audio_context,
    )?;
    let (audio, rate) = wav::read_mono(file)?;
    let audio = resample(&audio, rate, izwi::audio::ENGINE_RATE)?;
    println!("{}", izwi::engine::Asr::transcribe(&asr, &audio, language)?);
    Ok(())
}

/// The dialplan the configuration names (or every call to its default agent).
fn dialplan_of(config: &Config, file: Option<&PathBuf>) -> Result<izwi::dialplan::Dialplan> {
    use izwi::dialplan::Dialplan;
    let default = &config.dialplan.default_agent;
    match file.or(config.dialplan.file.as_ref()) {
        Some(path) => Ok(Dialplan::load(path, default, &config.agents)?),
        None => Ok(Dialplan::single(default, &config.agents)),
    }
}

fn dialplan_cmd(config: &Config, action: DialplanAction) -> Result<()> {
    match action {
        DialplanAction::Check { file } => {
            let plan = dialplan_of(config, file.as_ref())?;
            let source = plan
                .source
                .as_ref()
                .map_or("the configuration".to_string(), |p| p.display().to_string());
            println!(
                "{source}: {} rules, {} agents, default agent `{}`",
                plan.rules.len(),
                plan.agents.len(),
                plan.default_agent
            );
            for r in &plan.rules {
                println!("  line {:>4}  {}  →  {}", r.line, r.name, r.agent);
            }
            Ok(())
        }
        DialplanAction::Route(a) => {
            let plan = dialplan_of(config, a.file.as_ref())?;
            let route = plan.route(&izwi::dialplan::CallInfo {
                to: a.to,
                from: a.from,
                sip_user: a.sip_user,
                headers: a.header,
                params: a.param.into_iter().collect(),
            });
            match route.rule {
                Some(rule) => println!("agent {} (rule {rule})", route.agent),
                None => println!("agent {} (default)", route.agent),
            }
            Ok(())
        }
    }
}

/// Reloads the dialplan when its file changes or on SIGHUP: a plan that
/// fails its check is refused (logged, counted) and the old one stays.
async fn watch_dialplan(config: Config, agents: Arc<izwi::call::agents::Agents>) {
    let Some(path) = config.dialplan.file.clone() else {
        return;
    };
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let signalled = tokio::select! {
            _ = poll.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = modified(&path);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        let m = izwi::metrics::metrics();
        match dialplan_of(&config, Some(&path)) {
            Ok(plan) => match agents.reload(plan).await {
                Ok(()) => {
                    m.dialplan_reload("loaded");
                    tracing::info!(file = %path.display(), signalled, "dialplan reloaded");
                }
                Err(e) => {
                    m.dialplan_reload("refused");
                    tracing::error!(file = %path.display(), error = %e, "dialplan refused: its agents cannot be prepared; the old plan stays");
                }
            },
            Err(e) => {
                m.dialplan_reload("refused");
                tracing::error!(error = %format!("{e:#}"), "dialplan refused; the old plan stays");
            }
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    use izwi::call::session::CallContext;
    use izwi::sip::endpoint::Endpoint;
    // Every connection and RTP socket is a file: take all the system allows.
    match izwi::limits::raise_file_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(
                before,
                after,
                "raised the open-file limit to its hard limit"
            )
        }
        Ok((_, limit)) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let plan = dialplan_of(&config, None)?;
    // The echo agent needs no models: a capacity test of the telephony side alone.
    let engine = if config.dialplan.echo {
        tracing::info!("echo agent: calls hear themselves; no models loaded");
        None
    } else {
        Some(load_engine(&config).await?)
    };
    let agents = Arc::new(
        izwi::call::agents::Agents::new(engine.clone(), plan)
            .await
            .context("preparing the agents")?,
    );
    if config.dialplan.file.is_some() {
        tokio::spawn(watch_dialplan(config.clone(), agents.clone()));
    }
    if !config.sip.enabled && !config.http.enabled {
        tracing::info!("sip.enabled and http.enabled are both false; nothing to serve");
        return Ok(());
    }
    let (store, recorder, writer) = open_records(&config).await?;
    let ctx = Arc::new(CallContext {
        engine,
        agents,
        turn: config.turn.clone(),
        echo: config.dialplan.echo,
        recorder: recorder.clone(),
        live: Default::default(),
    });
    drop(recorder);
    // Agents are prepared (greeting synthesized, prompt evaluated): warm.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    izwi::metrics::metrics().set_ready(true);
    // One stop signal for every transport.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Running);
    let reached = move |at: Stop| {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s == at || *s == Stop::Now).await;
        }
    };
    let sip = if config.sip.enabled {
        Some(Endpoint::bind(&config.sip, ctx.clone()).await?)
    } else {
        None
    };
    let http = if config.http.enabled {
        Some(
            izwi::http::Server::bind(
                &config,
                ctx.clone(),
                store.clone(),
                ready.clone(),
                draining.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    tracing::info!("Izwi is ready; SIGTERM drains, Ctrl-C stops");
    let stop_tx = Arc::new(stop_tx);
    let signals = tokio::spawn(stop_signals(
        stop_tx.clone(),
        config.sip.drain_secs,
        ready.clone(),
        draining.clone(),
    ));
    let live_streams = http.as_ref().map(|s| s.live_streams());
    let sip_task = sip.map(|e| tokio::spawn(e.run(reached(Stop::Draining), reached(Stop::Now))));
    let http_task = http.map(|s| tokio::spawn(s.run(reached(Stop::Now))));
    // The SIP endpoint ends by itself once drained (or when stopped).
    match sip_task {
        Some(t) => t.await.context("the SIP endpoint stopped abnormally")?,
        None => reached(Stop::Draining).await,
    }
    // Then the media streams in progress end theirs, unless told to stop.
    if let Some(streams) = live_streams {
        let now = reached(Stop::Now);
        tokio::pin!(now);
        while streams() > 0 {
            tokio::select! {
                _ = &mut now => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    }
    let _ = stop_tx.send(Stop::Now);
    signals.abort();
    if let Some(t) = http_task {
        t.await
            .context("the HTTP server stopped abnormally")?
            .context("the HTTP server failed")?;
    }
    // Every call has ended: the last records go to the writer, then the database closes.
    let recorder = ctx.recorder.clone();
    drop(ctx);
    close_records(store, recorder, writer).await;
    Ok(())
}
