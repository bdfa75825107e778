//! Voice activity detection backends.

pub mod silero;
