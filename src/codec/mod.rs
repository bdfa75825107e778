//! Audio conversions between the wire and the engine.

pub mod g711;
pub mod plc;
pub mod resample;
pub mod wav;
pub mod wire;
