//! Language model backends.

pub mod bracket;
pub mod llama;

use std::sync::Once;

/// whisper.cpp and llama.cpp share one ggml; route its logs (and llama's) to tracing
/// instead of stderr, once per process.
pub fn native_logs_to_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        whisper_rs::install_logging_hooks();
    });
}
