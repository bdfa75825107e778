//! SIP user agent (RFC 3261) and SDP offer/answer (RFC 3264/4566).

pub mod access;
pub mod digest;
pub mod endpoint;
pub mod message;
pub mod register;
pub mod sdp;
pub mod stream;
pub mod ua;
