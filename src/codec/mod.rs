//! Audio conversions between the wire and the engine.

pub mod resample;
pub mod wav;
