//! Where a call's RTP may come from, and where Izwi's goes: only the peer the
//! signalling allows. Sans-IO: packets' source addresses and the time go in,
//! a verdict and the address to send to come out.
//!
//! The SDP names the caller's media address. Behind NAT the packets come from
//! another port (or, with a private address in the SDP, another address), so
//! in the `peer` mode a packet of the session from any port at the SDP's IP or
//! at the SIP peer's IP may *latch*: Izwi then answers there (symmetric RTP).
//! A stranger (any other IP) is refused whatever it sends, before the first
//! packet and during a pause alike. The latch moves to another allowed address
//! only after the latched one has been silent for [`RELATCH`] (a NAT
//! rebinding). In the `sdp` mode nothing latches: only the SDP address and
//! port are taken, and Izwi sends there. The `first` mode is for callers whose
//! packets match neither address (a private SDP address reached through a
//! signalling-only proxy): the session's first packet latches from anywhere,
//! and after it only that IP is taken.
//!
//! When the SDP names another IP than the SIP peer's, nothing is sent until a
//! packet of the session has come from an allowed address: an INVITE (even
//! acknowledged) naming a third party makes Izwi send that party nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::RtpLatch;

/// How long the latched source must be silent before another allowed address
/// may take its place.
pub const RELATCH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct SourceFilter {
    mode: RtpLatch,
    /// The SDP's address: where media goes until a source has latched.
    signalled: SocketAddr,
    /// The SIP peer's address (the caller, or its proxy).
    peer_ip: IpAddr,
    latched: Option<SocketAddr>,
    last: Option<Instant>,
    /// A packet of the session has come from an allowed address.
    heard: bool,
}

impl SourceFilter {
    pub fn new(mode: RtpLatch, signalled: SocketAddr, peer_ip: IpAddr) -> SourceFilter {
        SourceFilter {
            mode,
            signalled,
            peer_ip,
            latched: None,
            last: None,
            heard: false,
        }
    }

    /// Whether Izwi may send: the SDP names the SIP peer's own IP, or a packet
    /// of the session has come from where the signalling allows.
    pub fn may_send(&self) -> bool {
        self.heard || self.signalled.ip() == self.peer_ip
    }

    /// Whether to take a packet from `from`. `ours`: it carries one of the
    /// session's payload types (only those may latch).
    pub fn accepts(&mut self, from: SocketAddr, ours: bool, now: Instant) -> bool {
        if !self.allowed(from) {
            return false;
        }
        self.heard |= ours;
        match self.latched {
            Some(l) if l == from => {
                if ours {
                    self.last = Some(now);
                }
                true
            }
            Some(_) => {
                let silent = self
                    .last
                    .is_none_or(|t| now.saturating_duration_since(t) > RELATCH);
                if ours && silent {
                    self.latch(from, now);
                    true
                } else {
                    false
                }
            }
            None => {
                if ours && self.mode != RtpLatch::Sdp {
                    self.latch(from, now);
                }
                true
            }
        }
    }

    fn latch(&mut self, from: SocketAddr, now: Instant) {
        self.latched = Some(from);
        self.last = Some(now);
    }

    fn allowed(&self, from: SocketAddr) -> bool {
        if from == self.signalled {
            return true;
        }
        match self.mode {
            RtpLatch::Sdp => false,
            RtpLatch::Peer => {
                let ip = from.ip();
                ip == self.peer_ip || (ip == self.signalled.ip() && !ip.is_unspecified())
            }
            RtpLatch::First => self.latched.is_none_or(|l| l.ip() == from.ip()),
        }
    }

    /// Where Izwi's packets go: the latched source, or the SDP address.
    pub fn destination(&self) -> SocketAddr {
        self.latched.unwrap_or(self.signalled)
    }

    /// A new offer or answer moved the session: learn its source again.
    pub fn moved(&mut self, signalled: SocketAddr) {
        self.signalled = signalled;
        self.latched = None;
        self.last = None;
        self.heard = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_stranger_is_refused_before_the_first_packet_and_during_a_pause() {
        let t0 = Instant::now();
        let sdp = a("192.0.2.10:4000");
        let mut f = SourceFilter::new(RtpLatch::Peer, sdp, "192.0.2.10".parse().unwrap());
        let stranger = a("198.51.100.66:4000");
        // Before the caller's first packet: refused, and nothing learned.
        assert!(!f.accepts(stranger, true, t0));
        assert_eq!(f.destination(), sdp);
        assert!(f.accepts(sdp, true, ms(t0, 10)));
        // During a long pause: still refused.
        assert!(!f.accepts(stranger, true, ms(t0, 10_000)));
        assert_eq!(f.destination(), sdp);
    }

    #[test]
    fn nat_latch_at_the_peers_ip_and_relatch_only_after_silence() {
        let t0 = Instant::now();
        // A private address in the SDP; the packets come from the NAT, which is the SIP peer.
        let sdp = a("10.0.0.5:4000");
        let nat = "203.0.113.7".parse().unwrap();
        let mut f = SourceFilter::new(RtpLatch::Peer, sdp, nat);
        let first = SocketAddr::new(nat, 61_000);
        // Not of the session: taken (RTCP-mux, comfort noise) but not learned from.
        assert!(f.accepts(first, false, t0));
        assert_eq!(f.destination(), sdp);
        assert!(f.accepts(first, true, t0));
        assert_eq!(f.destination(), first);
        // Another port of the NAT while the first is alive: refused.
        let rebound = SocketAddr::new(nat, 61_002);
        assert!(!f.accepts(rebound, true, ms(t0, 500)));
        assert!(f.accepts(first, true, ms(t0, 1_000)));
        // After the first has been silent: the NAT rebinding takes over.
        assert!(f.accepts(
            rebound,
            true,
            ms(t0, 1_000) + RELATCH + Duration::from_millis(1)
        ));
        assert_eq!(f.destination(), rebound);
        // Silence alone never lets a stranger in.
        assert!(!f.accepts(a("198.51.100.66:61000"), true, ms(t0, 60_000)));
    }

    #[test]
    fn nothing_goes_to_a_third_party_before_it_has_sent_from_there() {
        let t0 = Instant::now();
        // The SIP peer is 198.51.100.66; its SDP names 192.0.2.77, a victim.
        let victim = a("192.0.2.77:4000");
        let mut f = SourceFilter::new(RtpLatch::Peer, victim, "198.51.100.66".parse().unwrap());
        assert!(!f.may_send());
        // Neither a packet of another session nor the attacker's own port opens it.
        assert!(f.accepts(a("198.51.100.66:5000"), false, t0));
        assert!(!f.may_send());
        // The caller's own packet does (a proxy in the path, the media elsewhere).
        assert!(f.accepts(victim, true, t0));
        assert!(f.may_send());
        // When the SDP names the SIP peer itself, media may go out at once.
        let g = SourceFilter::new(
            RtpLatch::Peer,
            a("192.0.2.10:4000"),
            "192.0.2.10".parse().unwrap(),
        );
        assert!(g.may_send());
    }

    #[test]
    fn first_mode_latches_anywhere_once_then_keeps_to_that_ip() {
        let t0 = Instant::now();
        let mut f = SourceFilter::new(
            RtpLatch::First,
            a("10.0.0.5:4000"),
            "192.0.2.1".parse().unwrap(),
        );
        let caller = a("203.0.113.9:50000");
        assert!(f.accepts(caller, true, t0));
        assert_eq!(f.destination(), caller);
        assert!(!f.accepts(a("198.51.100.66:50000"), true, ms(t0, 60_000)));
        assert!(
            f.accepts(a("203.0.113.9:50002"), true, ms(t0, 60_000)),
            "a NAT rebinding"
        );
    }

    #[test]
    fn sdp_mode_takes_only_the_signalled_address() {
        let t0 = Instant::now();
        let sdp = a("192.0.2.10:4000");
        let mut f = SourceFilter::new(RtpLatch::Sdp, sdp, "192.0.2.10".parse().unwrap());
        assert!(!f.accepts(a("192.0.2.10:4002"), true, t0));
        assert!(f.accepts(sdp, true, t0));
        assert_eq!(f.destination(), sdp);
        f.moved(a("192.0.2.11:5000"));
        assert!(!f.accepts(sdp, true, ms(t0, 10_000)));
        assert_eq!(f.destination(), a("192.0.2.11:5000"));
    }
}
