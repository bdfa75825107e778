//! ONNX Runtime is loaded from a shared library at run time (`load-dynamic`), so a
//! missing or wrong library is an error message rather than a link failure.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;

use super::EngineError;
use crate::models::{ModelStore, Role};

static ENV: OnceLock<Environment> = OnceLock::new();

/// Loads ONNX Runtime once: from `explicit`, else `ORT_DYLIB_PATH`, else the model store.
pub fn init(
    explicit: Option<PathBuf>,
    store: &ModelStore,
) -> Result<&'static Environment, EngineError> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let path = match explicit.or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)) {
        Some(p) => p,
        None => store.require(Role::Runtime)?,
    };
    if !path.is_file() {
        return Err(EngineError::Onnx(format!(
            "ONNX Runtime library {} not found; run `izwi models fetch` or set engine.onnxruntime",
            path.display()
        )));
    }
    let builder = ort::init_from(&path)
        .map_err(|e| EngineError::Onnx(format!("cannot load {}: {e}", path.display())))?;
    let env = builder
        .with_name("izwi")
        .with_telemetry(false)
        .build()
        .map_err(|e| EngineError::Onnx(e.to_string()))?;
    Ok(ENV.get_or_init(|| env))
}

pub fn env() -> Result<&'static Environment, EngineError> {
    ENV.get()
        .ok_or_else(|| EngineError::Onnx("ONNX Runtime is not initialised".into()))
}

pub fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Onnx(e.to_string())
}

/// `count` sessions (at least one) of the model at `path`, each running on
/// `threads` threads; a model that cannot be read or loaded is reported as an
/// error of the engine stage that wanted it (`stage`).
pub fn sessions(
    path: &Path,
    threads: usize,
    count: usize,
    stage: fn(String) -> EngineError,
) -> Result<Vec<Mutex<Session>>, EngineError> {
    let cannot = |e: &dyn std::fmt::Display| stage(format!("cannot load {}: {e}", path.display()));
    let model = std::fs::read(path).map_err(|e| cannot(&e))?;
    let env = env()?;
    (0..count.max(1))
        .map(|_| {
            let session = Session::builder(env)
                .map_err(err)?
                .with_intra_threads(threads.max(1))
                .map_err(err)?
                .with_inter_threads(1)
                .map_err(err)?
                .commit_from_memory(&model)
                .map_err(|e| cannot(&e))?;
            Ok(Mutex::new(session))
        })
        .collect()
}
