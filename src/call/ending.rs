//! How a call ended: one type for every transport, and what its record says.

use crate::records::{Outcome, Side};

/// Why the agent hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEnd {
    /// The model's `end_call`.
    Model,
    /// A key mapped to `end_call`.
    Key,
    /// The caller stayed silent through the prompts.
    Silence,
    /// The agent's longest call was reached.
    MaxLength,
    /// A transfer failed and the agent's fallback is to hang up.
    TransferFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The agent hung up, after its goodbye.
    Agent(AgentEnd),
    /// The caller was handed on (SIP REFER accepted and the new call up;
    /// Twilio: the stream ended for the `<Dial>`).
    Transferred,
    /// The caller hung up (a SIP BYE).
    CallerBye,
    /// Izwi hung up: the call was ended from Izwi's side without a reason
    /// of its own (the endpoint went away).
    IzwiBye,
    /// The answer was never acknowledged (SIP timer H).
    NoAck,
    /// The caller cancelled before the answer.
    Cancelled,
    /// Refused with this status before the answer.
    Rejected(u16),
    /// No media from the caller for too long.
    RtpTimeout,
    /// The call reached its longest allowed length.
    MaxDuration,
    /// The call's agent could not be started.
    AgentFailed,
    /// The call's reactor panicked (the call was still ended and recorded).
    Panicked,
    /// The provider said the call is over (Twilio's `stop`).
    StreamStop,
    /// The provider's socket went away without saying so.
    SocketClosed,
    /// Izwi closed the provider's stream over bad input of this kind.
    Protocol(&'static str),
    /// The provider's stream carried no media for too long.
    MediaTimeout,
    /// The provider stopped reading what Izwi sends.
    SlowConsumer,
    /// Every call slot was taken.
    Busy,
    /// Izwi is shutting down.
    Shutdown,
    /// `izwi talk`: the caller's recording ended.
    TalkEnd,
    /// An operator hung up from the console.
    Operator,
}

impl Ending {
    /// The record's outcome.
    pub fn outcome(self) -> Outcome {
        match self {
            Ending::Agent(_) | Ending::Transferred => Outcome::Completed,
            Ending::CallerBye
            | Ending::IzwiBye
            | Ending::MaxDuration
            | Ending::StreamStop
            | Ending::Shutdown
            | Ending::Operator
            | Ending::TalkEnd => Outcome::Completed,
            Ending::NoAck
            | Ending::Cancelled
            | Ending::Rejected(_)
            | Ending::RtpTimeout
            | Ending::AgentFailed
            | Ending::Panicked
            | Ending::SocketClosed
            | Ending::Protocol(_)
            | Ending::MediaTimeout
            | Ending::SlowConsumer
            | Ending::Busy => Outcome::Failed,
        }
    }

    /// Who ended the call.
    pub fn side(self) -> Side {
        match self {
            Ending::Agent(_) | Ending::Transferred => Side::Agent,
            Ending::CallerBye | Ending::NoAck | Ending::Cancelled | Ending::StreamStop => {
                Side::Caller
            }
            Ending::TalkEnd => Side::Caller,
            Ending::SocketClosed | Ending::MediaTimeout | Ending::SlowConsumer => Side::Provider,
            Ending::IzwiBye
            | Ending::Rejected(_)
            | Ending::RtpTimeout
            | Ending::MaxDuration
            | Ending::AgentFailed
            | Ending::Panicked
            | Ending::Protocol(_)
            | Ending::Busy
            | Ending::Operator
            | Ending::Shutdown => Side::Izwi,
        }
    }

    /// The record's `hangup_cause` (and the label logs carry).
    pub fn cause(self) -> String {
        match self {
            Ending::Agent(why) => match why {
                AgentEnd::Model => "agent:end_call".into(),
                AgentEnd::Key => "agent:key".into(),
                AgentEnd::Silence => "agent:silence".into(),
                AgentEnd::MaxLength => "agent:max_length".into(),
                AgentEnd::TransferFailed => "agent:transfer_failed".into(),
            },
            Ending::Transferred => "transferred".into(),
            Ending::CallerBye => "caller_bye".into(),
            Ending::IzwiBye => "izwi_bye".into(),
            Ending::NoAck => "no_ack".into(),
            Ending::Cancelled => "cancelled".into(),
            Ending::Rejected(code) => format!("rejected:{code}"),
            Ending::RtpTimeout => "rtp_timeout".into(),
            Ending::MaxDuration => "max_duration".into(),
            Ending::AgentFailed => "agent_failed".into(),
            Ending::Panicked => "reactor_panicked".into(),
            Ending::StreamStop => "stream_stop".into(),
            Ending::SocketClosed => "socket_closed".into(),
            Ending::Protocol(kind) => format!("protocol:{kind}"),
            Ending::MediaTimeout => "media_timeout".into(),
            Ending::SlowConsumer => "slow_consumer".into(),
            Ending::Busy => "busy".into(),
            Ending::Shutdown => "shutdown".into(),
            Ending::TalkEnd => "talk_end".into(),
            Ending::Operator => "operator".into(),
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_a_record_outcome_side_and_a_short_cause() {
        for e in [
            Ending::Agent(AgentEnd::Model),
            Ending::Agent(AgentEnd::Key),
            Ending::Agent(AgentEnd::Silence),
            Ending::Agent(AgentEnd::MaxLength),
            Ending::Agent(AgentEnd::TransferFailed),
            Ending::Transferred,
            Ending::CallerBye,
            Ending::IzwiBye,
            Ending::NoAck,
            Ending::Cancelled,
            Ending::Rejected(488),
            Ending::RtpTimeout,
            Ending::MaxDuration,
            Ending::AgentFailed,
            Ending::Panicked,
            Ending::StreamStop,
            Ending::SocketClosed,
            Ending::Protocol("json"),
            Ending::MediaTimeout,
            Ending::SlowConsumer,
            Ending::Busy,
            Ending::Shutdown,
            Ending::TalkEnd,
            Ending::Operator,
        ] {
            let cause = e.cause();
            assert!(!cause.is_empty() && cause.len() <= 64, "{e:?}");
            assert_ne!(e.outcome(), Outcome::Open);
            assert_ne!(e.side(), Side::Unknown);
        }
        assert_eq!(Ending::Rejected(486).cause(), "rejected:486");
        assert_eq!(Ending::Protocol("utf8").to_string(), "protocol:utf8");
        assert_eq!(Ending::SocketClosed.outcome(), Outcome::Failed);
        assert_eq!(Ending::Agent(AgentEnd::Silence).side(), Side::Agent);
        assert_eq!(Ending::Agent(AgentEnd::Silence).cause(), "agent:silence");
    }
}
