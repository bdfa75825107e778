//! Speech synthesis backends.

pub mod espeak;
pub mod piper;
