//! Izwi: a self-hosted telephony voice agent.

pub mod audio;
pub mod bench;
pub mod call;
pub mod codec;
pub mod config;
pub mod dialplan;
pub mod engine;
pub mod http;
pub mod lang;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod provider;
pub mod records;
pub mod rtp;
pub mod sip;
pub mod talk;
pub mod tools;
