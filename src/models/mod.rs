//! Model files: the manifest, verification of what is on disk, and fetching.

mod digest;
pub mod fetch;
pub mod manifest;
pub mod store;

use std::path::PathBuf;

pub use manifest::{Manifest, ModelEntry, Role, Source, VoiceEntries};
pub use store::ModelStore;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest ({origin}) is invalid: {message}")]
    Manifest { origin: String, message: String },
    #[error("profile `{profile}` has no {role} model in the manifest")]
    NoModel { profile: String, role: &'static str },
    #[error("no voice `{name}` in the model manifest (voices: {known})")]
    NoVoice { name: String, known: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is missing; run `izwi models fetch --profile {profile}`")]
    Missing { path: PathBuf, profile: String },
    #[error(
        "model file {path} is not the expected file (size {actual_size}, sha256 {actual_sha256}; \
         expected size {expected_size}, sha256 {expected_sha256}); delete it and run `izwi models fetch`"
    )]
    Mismatch {
        path: PathBuf,
        actual_size: u64,
        actual_sha256: String,
        expected_size: String,
        expected_sha256: String,
    },
    #[error("could not fetch `{id}` from any source:\n  {}", attempts.join("\n  "))]
    AllSourcesFailed { id: String, attempts: Vec<String> },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}
