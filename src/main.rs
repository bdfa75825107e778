//! The `izwi` binary: errors are reported here, once, in words.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use izwi::call::Agent;
use izwi::codec::{resample::resample, wav};
use izwi::config::Config;
use izwi::engine::Engine;
use izwi::models::{ModelStore, fetch, store::Check};
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
    /// Measure the latency budget: spoken questions through the whole engine.
    Bench(BenchArgs),
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
}

#[derive(Args)]
struct TalkArgs {
    /// The caller's side: any WAV file (resampled to 16 kHz mono).
    #[arg(long = "in")]
    input: PathBuf,
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
    /// Use the simulated clock (faster; latency is then endpointing plus engine time).
    #[arg(long)]
    fast: bool,
    /// A text file with one question per line (default: built-in clinic questions).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Agent profile (default: dialplan.default_agent).
    #[arg(long)]
    agent: Option<String>,
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
        Command::Bench(args) => runtime()?.block_on(bench_cmd(config, args)),
        Command::Transcribe { file, language } => transcribe(&config, &file, &language),
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

fn models(config: &Config, action: ModelsAction) -> Result<()> {
    match action {
        ModelsAction::Fetch(p) => {
            let store = store_for(config, p.profile)?;
            for entry in store.entries() {
                match fetch::fetch_one(&store, entry)? {
                    fetch::Outcome::AlreadyPresent => {
                        println!("ok       {:<32} {}", entry.id, entry.file)
                    }
                    fetch::Outcome::Fetched { from } => {
                        println!("fetched  {:<32} {} (from {from})", entry.id, entry.file)
                    }
                }
            }
            println!(
                "all models of profile `{}` are in {}",
                store.profile,
                store.dir.display()
            );
            Ok(())
        }
        ModelsAction::Verify(p) => {
            let store = store_for(config, p.profile)?;
            let mut bad = 0;
            for entry in store.entries() {
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
                    "{:<10} {:<32} {}",
                    state,
                    entry.id,
                    store.path_of(entry).display()
                );
            }
            if bad > 0 {
                bail!(
                    "{bad} model file(s) of profile `{}` missing or wrong; run `izwi models fetch --profile {}`",
                    store.profile,
                    store.profile
                );
            }
            Ok(())
        }
        ModelsAction::List(p) => {
            let store = store_for(config, p.profile)?;
            println!(
                "{:<32} {:<10} {:>10}  {:<10} file / sources",
                "id", "role", "size", "state"
            );
            for entry in store.entries() {
                let state = if store.path_of(entry).exists() {
                    "present"
                } else {
                    "absent"
                };
                println!(
                    "{:<32} {:<10} {:>10}  {:<10} {}",
                    entry.id,
                    entry.role.as_str(),
                    entry.size,
                    state,
                    entry.file
                );
                for s in &entry.sources {
                    println!("{:<68}   from {}", "", s.describe());
                }
            }
            Ok(())
        }
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

async fn bench_cmd(config: Config, args: BenchArgs) -> Result<()> {
    let (name, profile) = pick_agent(&config, args.agent.as_deref())?;
    let questions: Vec<String> = match &args.questions {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
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
        "profile {}, {} engine workers, endpoint silence {} ms",
        config.models.profile,
        engine.pool.size(),
        config.turn.endpoint_silence_ms
    );
    print!("{}", izwi::bench::summary(&records, clock));
    Ok(())
}

async fn talk_cmd(config: Config, args: TalkArgs) -> Result<()> {
    let (name, profile) = pick_agent(&config, args.agent.as_deref())?;
    let (audio, rate) = wav::read_mono(&args.input)?;
    let audio = resample(&audio, rate, izwi::audio::ENGINE_RATE)?;
    let engine = load_engine(&config).await?;
    let agent = Arc::new(Agent::prepare(&engine, name, profile).await?);
    let clock = if args.fast {
        Clock::Simulated
    } else {
        Clock::RealTime
    };
    let outcome = talk::talk(engine, agent, &config.turn, &audio, clock).await?;
    wav::write_mono(&args.output, &outcome.agent_audio, izwi::audio::ENGINE_RATE)?;
    print!("{}", talk::report(&outcome.turns));
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

/// Ctrl-C, or SIGTERM from a service manager: either stops Izwi after hanging up its calls.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping: hanging up calls");
}

fn transcribe(config: &Config, file: &std::path::Path, language: &str) -> Result<()> {
    let store = ModelStore::from_config(&config.models)?;
    let asr = izwi::engine::asr::whisper::WhisperAsr::load(
        &store.require(izwi::models::Role::Asr)?,
        config.engine.asr_threads,
        false,
    )?;
    let (audio, rate) = wav::read_mono(file)?;
    let audio = resample(&audio, rate, izwi::audio::ENGINE_RATE)?;
    println!("{}", izwi::engine::Asr::transcribe(&asr, &audio, language)?);
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    use izwi::call::session::CallContext;
    use izwi::sip::endpoint::Endpoint;
    // The echo agent needs no models: a capacity test of the telephony side alone.
    let (engine, agent) = if config.dialplan.echo {
        tracing::info!("echo agent: calls hear themselves; no models loaded");
        (None, None)
    } else {
        let engine = load_engine(&config).await?;
        let mut default_agent = None;
        for (name, profile) in &config.agents {
            let agent = Agent::prepare(&engine, name, profile)
                .await
                .with_context(|| format!("preparing agent `{name}`"))?;
            tracing::info!(
                agent = %name,
                language = %profile.language,
                greeting_ms = agent.greeting.len() as u64 * izwi::audio::FRAME_MS as u64,
                prepared_ms = agent.prepared_in.as_millis() as u64,
                "agent ready"
            );
            let agent = Arc::new(agent);
            if *name == config.dialplan.default_agent {
                default_agent = Some(agent);
            }
        }
        (Some(engine), default_agent)
    };
    if !config.sip.enabled && !config.http.enabled {
        tracing::info!("sip.enabled and http.enabled are both false; nothing to serve");
        return Ok(());
    }
    let ctx = Arc::new(CallContext {
        engine,
        agent,
        turn: config.turn.clone(),
        echo: config.dialplan.echo,
    });
    // One stop signal for every transport.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let sip = if config.sip.enabled {
        Some(Endpoint::bind(&config.sip, ctx.clone()).await?)
    } else {
        None
    };
    let http = if config.http.enabled {
        Some(izwi::http::Server::bind(&config.http, &config.twilio, ctx.clone()).await?)
    } else {
        None
    };
    tracing::info!("Izwi is ready; Ctrl-C or SIGTERM stops");
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let sip_task = sip.map(|e| tokio::spawn(e.run(stopped())));
    let http_task = http.map(|s| tokio::spawn(s.run(stopped())));
    if let Some(t) = sip_task {
        t.await.context("the SIP endpoint stopped abnormally")?;
    }
    if let Some(t) = http_task {
        t.await
            .context("the HTTP server stopped abnormally")?
            .context("the HTTP server failed")?;
    }
    Ok(())
}
