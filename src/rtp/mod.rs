//! RTP media (RFC 3550): packets, jitter buffer, RFC 4733 telephone events.

pub mod dtmf;
pub mod jitter;
pub mod packet;
pub mod session;
pub mod source;
