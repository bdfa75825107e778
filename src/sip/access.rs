//! Who may call: an allow-list of trunk addresses and/or digest authentication.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::limits::Cidr;

use super::digest::{self, Algorithm, Challenge, NonceIssuer, NonceState};

#[derive(Debug)]
pub struct Credentials {
    pub realm: String,
    pub username: String,
    pub password: String,
}

/// What a request asks to be let in with.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    pub source: IpAddr,
    pub method: &'a str,
    /// The Request-URI exactly as it stands in the request line.
    pub request_uri: &'a str,
    pub call_id: &'a str,
    /// The Authorization (or Proxy-Authorization) header value, if any.
    pub authorization: Option<&'a str>,
}

/// Why credentials that came with a request were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not a Digest header this server can read.
    Malformed,
    /// Another user name or realm than ours.
    Identity,
    /// Not a nonce of ours, or one issued for another source or call.
    Nonce,
    /// The digest's `uri` is not the Request-URI.
    Uri,
    /// A nonce and count seen before.
    Replay,
    /// The response does not match: a wrong password.
    Password,
}

impl Failure {
    /// Every kind, in declaration order (`kind as usize` indexes this).
    pub const ALL: [Failure; 6] = [
        Failure::Malformed,
        Failure::Identity,
        Failure::Nonce,
        Failure::Uri,
        Failure::Replay,
        Failure::Password,
    ];

    /// Whether it counts against the source: only failures that needed a
    /// nonce Izwi issued to that source for that call (so not a spoofer's
    /// garbage, nor a stale cached answer from another call).
    pub fn strikes(self) -> bool {
        matches!(
            self,
            Failure::Identity | Failure::Uri | Failure::Replay | Failure::Password
        )
    }

    /// The label counters and logs carry.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Malformed => "auth_malformed",
            Failure::Identity => "auth_identity",
            Failure::Nonce => "auth_nonce",
            Failure::Uri => "auth_uri",
            Failure::Replay => "auth_replay",
            Failure::Password => "auth_password",
        }
    }
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Answer 401 with this WWW-Authenticate value. `failure` says what was
    /// wrong with the credentials the request carried, if it carried any.
    Challenge {
        www: String,
        failure: Option<Failure>,
    },
    /// Not on the allow-list and no authentication configured.
    Forbidden,
    /// Too many failures from this source lately: refused without a
    /// challenge (so without a hash computed) for this long.
    Blocked {
        retry_after_secs: u64,
    },
}

/// How long a nonce stays good: long enough for a slow trunk's retry.
const NONCE_AGE_SECS: u64 = 300;
/// Nonces remembered as used (for replay detection) at most.
const MAX_USED_NONCES: usize = 65_536;
/// Sources whose failures are remembered at most.
const MAX_FAILING_SOURCES: usize = 4_096;
/// Failures a source may have before it is made to wait.
const FREE_FAILURES: u32 = 3;
/// The longest wait one failure can earn; each failure past the free ones
/// doubles the wait, from one second.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A source's failures are forgotten after this long without one.
const FORGET_FAILURES: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Used {
    /// Highest nonce count taken (`None`: a no-qop answer, good once).
    nc: Option<u32>,
    expires: u64,
}

#[derive(Debug)]
pub struct AccessPolicy {
    allow: Vec<Cidr>,
    auth: Option<Credentials>,
    nonces: NonceIssuer,
    /// The clock nonces carry: seconds since this policy was made.
    epoch: Instant,
    used: HashMap<String, Used>,
    failures: HashMap<IpAddr, Strikes>,
}

impl AccessPolicy {
    pub fn new(allow: Vec<Cidr>, auth: Option<Credentials>) -> AccessPolicy {
        AccessPolicy {
            allow,
            auth,
            nonces: NonceIssuer::random(),
            epoch: Instant::now(),
            used: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    /// Anyone may call: no allow-list and no credentials.
    pub fn open() -> AccessPolicy {
        AccessPolicy::new(Vec::new(), None)
    }

    /// Whether `source` is on the allow-list (a trusted trunk).
    pub fn trusted(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(source))
    }

    /// Whether callers outside the allow-list must prove a password.
    pub fn authenticates(&self) -> bool {
        self.auth.is_some()
    }

    /// Sources currently remembered for their failures (bounded).
    pub fn failing_sources(&self) -> usize {
        self.failures.len()
    }

    /// Decides on one request (RFC 3261 §22 with RFC 7616's checks): nonces
    /// expire and are bound to the source and Call-ID they were issued for,
    /// a nonce count is taken once, the digest `uri` must be the
    /// Request-URI, and a source that keeps failing is made to wait.
    pub fn check(&mut self, req: &AuthRequest<'_>, now: Instant) -> Verdict {
        if self.trusted(req.source) {
            return Verdict::Allowed;
        }
        let Some(auth) = &self.auth else {
            return if self.allow.is_empty() {
                Verdict::Allowed
            } else {
                Verdict::Forbidden
            };
        };
        let source = crate::limits::source_key(req.source);
        if let Some(s) = self.failures.get(&source)
            && s.blocked_until > now
        {
            let wait = s.blocked_until.saturating_duration_since(now);
            return Verdict::Blocked {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
        }
        let clock = now.saturating_duration_since(self.epoch).as_secs();
        let binding = binding(req);
        // Ok: a right answer to a fresh nonce, whose count is yet to be taken.
        // Err: challenge again (stale?, what was wrong).
        // The nonce is looked at first: only an answer to a challenge Izwi
        // sent to this source for this call (which a spoofer never sees)
        // counts as a failed attempt against the source.
        let checked = match req.authorization.map(digest::parse_credentials) {
            None => Err((false, None)),
            Some(Err(_)) => Err((false, Some(Failure::Malformed))),
            Some(Ok(creds)) => {
                match self
                    .nonces
                    .check(&creds.nonce, clock, NONCE_AGE_SECS, &binding)
                {
                    NonceState::Invalid => Err((false, Some(Failure::Nonce))),
                    _ if creds.username != auth.username || creds.realm != auth.realm => {
                        Err((false, Some(Failure::Identity)))
                    }
                    // A stale nonce with the right password: the client retries silently.
                    NonceState::Stale => {
                        let right = digest::verify(&creds, req.method, &auth.password);
                        Err((right, (!right).then_some(Failure::Password)))
                    }
                    NonceState::Valid if !digest::same_uri(&creds.uri, req.request_uri) => {
                        Err((false, Some(Failure::Uri)))
                    }
                    NonceState::Valid if !digest::verify(&creds, req.method, &auth.password) => {
                        Err((false, Some(Failure::Password)))
                    }
                    NonceState::Valid => Ok(creds),
                }
            }
        };
        let checked = checked.and_then(|creds| {
            self.take_nonce(&creds, clock)
                .map_err(|()| (false, Some(Failure::Replay)))
        });
        let verdict = match checked {
            Ok(()) => Verdict::Allowed,
            Err((stale, failure)) => {
                let realm = self.auth.as_ref().map_or("", |a| a.realm.as_str());
                let mut c =
                    Challenge::new(realm, self.nonces.issue(clock, &binding), Algorithm::Md5);
                c.stale = stale;
                Verdict::Challenge {
                    www: c.to_header_value(),
                    failure,
                }
            }
        };
        match &verdict {
            Verdict::Allowed => {
                self.failures.remove(&source);
            }
            Verdict::Challenge {
                failure: Some(f), ..
            } if f.strikes() => self.strike(source, now),
            _ => {}
        }
        verdict
    }

    /// Marks the nonce count as taken; `Err` if it was taken before.
    fn take_nonce(&mut self, creds: &digest::Credentials, clock: u64) -> Result<(), ()> {
        let nc = creds.nonce_count();
        if let Some(u) = self.used.get_mut(&creds.nonce) {
            return match (u.nc, nc) {
                (Some(seen), Some(nc)) if nc > seen => {
                    u.nc = Some(nc);
                    Ok(())
                }
                _ => Err(()),
            };
        }
        if self.used.len() >= MAX_USED_NONCES {
            self.used.retain(|_, u| u.expires > clock);
            if self.used.len() >= MAX_USED_NONCES {
                // Every slot holds a live nonce: refuse rather than forget one
                // (forgetting would let its answers be replayed).
                return Err(());
            }
        }
        self.used.insert(
            creds.nonce.clone(),
            Used {
                nc,
                expires: clock + NONCE_AGE_SECS + 1,
            },
        );
        Ok(())
    }

    fn strike(&mut self, source: IpAddr, now: Instant) {
        if !self.failures.contains_key(&source) && self.failures.len() >= MAX_FAILING_SOURCES {
            self.failures
                .retain(|_, s| now.saturating_duration_since(s.last) < FORGET_FAILURES);
            if self.failures.len() >= MAX_FAILING_SOURCES {
                // The quietest eighth goes at once: O(1) a new source on average.
                let mut quiet: Vec<(Instant, IpAddr)> =
                    self.failures.iter().map(|(k, s)| (s.last, *k)).collect();
                let n = MAX_FAILING_SOURCES / 8;
                quiet.select_nth_unstable(n - 1);
                for (_, k) in quiet.into_iter().take(n) {
                    self.failures.remove(&k);
                }
            }
        }
        let s = self.failures.entry(source).or_insert(Strikes {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.saturating_duration_since(s.last) >= FORGET_FAILURES {
            s.count = 0;
        }
        s.count += 1;
        s.last = now;
        if s.count > FREE_FAILURES {
            let doublings = (s.count - FREE_FAILURES - 1).min(16);
            let wait = Duration::from_secs(1 << doublings).min(MAX_BACKOFF);
            s.blocked_until = now + wait;
        }
    }
}

/// What a nonce is issued for: the source address and the Call-ID, so that
/// a captured answer is worth nothing on another call or from elsewhere.
fn binding(req: &AuthRequest<'_>) -> Vec<u8> {
    let mut b = req.source.to_string().into_bytes();
    b.push(b' ');
    b.extend_from_slice(req.call_id.as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const URI: &str = "sip:izwi@192.0.2.9";

    fn req<'a>(source: &str, call_id: &'a str, authorization: Option<&'a str>) -> AuthRequest<'a> {
        AuthRequest {
            source: ip(source),
            method: "INVITE",
            request_uri: URI,
            call_id,
            authorization,
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy::new(
            Vec::new(),
            Some(Credentials {
                realm: "izwi".into(),
                username: "trunk".into(),
                password: "s3cret".into(),
            }),
        )
    }

    fn www(v: Verdict) -> (digest::Challenge, Option<Failure>) {
        match v {
            Verdict::Challenge { www, failure } => {
                (digest::parse_challenge(&www).unwrap(), failure)
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn answer(ch: &digest::Challenge, uri: &str, password: &str, nc: u32) -> String {
        digest::respond(ch, "INVITE", uri, "trunk", password, "abc", nc)
    }

    #[test]
    fn allow_list_without_auth_forbids_strangers() {
        let t = Instant::now();
        let mut p = AccessPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], None);
        assert_eq!(p.check(&req("127.0.0.1", "c", None), t), Verdict::Allowed);
        assert_eq!(p.check(&req("192.0.2.1", "c", None), t), Verdict::Forbidden);
        assert_eq!(
            AccessPolicy::open().check(&req("192.0.2.1", "c", None), t),
            Verdict::Allowed
        );
    }

    #[test]
    fn digest_challenge_then_the_right_answer_once() {
        let t = Instant::now();
        let mut p = policy();
        let (ch, failure) = www(p.check(&req("192.0.2.1", "c1", None), t));
        assert_eq!(failure, None, "no credentials is no failure");
        let good = answer(&ch, URI, "s3cret", 1);
        assert_eq!(
            p.check(&req("192.0.2.1", "c1", Some(&good)), t),
            Verdict::Allowed
        );
        // The same answer again is a replay; the next count is not.
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c1", Some(&good)), t)).1,
            Some(Failure::Replay)
        );
        let next = answer(&ch, URI, "s3cret", 2);
        assert_eq!(
            p.check(&req("192.0.2.1", "c1", Some(&next)), t),
            Verdict::Allowed
        );
        // A wrong password, and a garbage header.
        let bad = answer(&ch, URI, "guess", 3);
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c1", Some(&bad)), t)).1,
            Some(Failure::Password)
        );
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c1", Some("Digest garbage")), t)).1,
            Some(Failure::Malformed)
        );
    }

    #[test]
    fn a_captured_answer_is_worth_nothing_elsewhere() {
        let t = Instant::now();
        let mut p = policy();
        let (ch, _) = www(p.check(&req("192.0.2.1", "c1", None), t));
        let good = answer(&ch, URI, "s3cret", 1);
        // Another call, another source, another Request-URI.
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c2", Some(&good)), t)).1,
            Some(Failure::Nonce)
        );
        assert_eq!(
            www(p.check(&req("192.0.2.7", "c1", Some(&good)), t)).1,
            Some(Failure::Nonce)
        );
        let elsewhere = answer(&ch, "sip:other@192.0.2.9", "s3cret", 1);
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c1", Some(&elsewhere)), t)).1,
            Some(Failure::Uri)
        );
        // A no-qop (RFC 2069) answer is good once.
        let (mut legacy, _) = www(p.check(&req("192.0.2.1", "c9", None), t));
        legacy.qop_auth = false;
        let once = answer(&legacy, URI, "s3cret", 1);
        assert_eq!(
            p.check(&req("192.0.2.1", "c9", Some(&once)), t),
            Verdict::Allowed
        );
        assert_eq!(
            www(p.check(&req("192.0.2.1", "c9", Some(&once)), t)).1,
            Some(Failure::Replay)
        );
    }

    #[test]
    fn a_stale_nonce_is_challenged_again_flagged_stale_when_the_password_was_right() {
        let t = Instant::now();
        let mut p = policy();
        let (ch, _) = www(p.check(&req("192.0.2.1", "c1", None), t));
        let good = answer(&ch, URI, "s3cret", 1);
        let later = t + Duration::from_secs(NONCE_AGE_SECS + 5);
        let (again, failure) = www(p.check(&req("192.0.2.1", "c1", Some(&good)), later));
        assert!(again.stale);
        assert_eq!(failure, None);
    }

    #[test]
    fn guessing_is_slowed_down_per_source() {
        let t0 = Instant::now();
        let mut p = policy();
        let guess = |p: &mut AccessPolicy, source: &str, at: Instant| {
            let (ch, _) = www(p.check(&req(source, "g", None), at));
            p.check(&req(source, "g", Some(&answer(&ch, URI, "guess", 1))), at)
        };
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                www(guess(&mut p, "192.0.2.66", t0)).1,
                Some(Failure::Password)
            );
        }
        // The next failure earns a wait, and each one after doubles it.
        assert!(matches!(
            guess(&mut p, "192.0.2.66", t0),
            Verdict::Challenge { .. }
        ));
        assert_eq!(
            p.check(&req("192.0.2.66", "g", None), t0),
            Verdict::Blocked {
                retry_after_secs: 1
            }
        );
        let t1 = t0 + Duration::from_millis(1_001);
        assert!(matches!(
            guess(&mut p, "192.0.2.66", t1),
            Verdict::Challenge { .. }
        ));
        assert_eq!(
            p.check(&req("192.0.2.66", "g", None), t1),
            Verdict::Blocked {
                retry_after_secs: 2
            }
        );
        // A neighbour is not slowed down, and gets in with the right password.
        let (ch, _) = www(p.check(&req("192.0.2.1", "n", None), t1));
        let good = answer(&ch, URI, "s3cret", 1);
        assert_eq!(
            p.check(&req("192.0.2.1", "n", Some(&good)), t1),
            Verdict::Allowed
        );
        // Long quiet: forgiven.
        let much_later = t1 + FORGET_FAILURES + MAX_BACKOFF;
        assert!(matches!(
            p.check(&req("192.0.2.66", "g", None), much_later),
            Verdict::Challenge { failure: None, .. }
        ));
    }

    #[test]
    fn memory_of_failures_is_bounded() {
        let t = Instant::now();
        let mut p = policy();
        for i in 0..(MAX_FAILING_SOURCES as u32 + 500) {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let mut r = req("10.0.0.1", "x", None);
            r.source = source;
            let (ch, _) = www(p.check(&r, t));
            let wrong = answer(&ch, URI, "guess", 1);
            r.authorization = Some(&wrong);
            assert_eq!(www(p.check(&r, t)).1, Some(Failure::Password));
        }
        assert!(p.failing_sources() <= MAX_FAILING_SOURCES);
        assert!(p.failing_sources() > 0);
    }

    #[test]
    fn garbage_that_needs_no_challenge_never_blocks_a_source() {
        // A spoofer sending garbage "from" a trunk's address must not lock it out.
        let t = Instant::now();
        let mut p = policy();
        let stale_elsewhere = {
            let (ch, _) = www(p.check(&req("192.0.2.1", "old-call", None), t));
            answer(&ch, URI, "s3cret", 1)
        };
        for i in 0..50 {
            let garbage = format!("Digest username=\"x{i}\", nonce=\"n\"");
            p.check(&req("192.0.2.1", "spoofed", Some(&garbage)), t);
            // A cached answer bound to another call: refused, not held against the source.
            p.check(&req("192.0.2.1", "new-call", Some(&stale_elsewhere)), t);
        }
        assert_eq!(p.failing_sources(), 0);
        let (ch, _) = www(p.check(&req("192.0.2.1", "real", None), t));
        let good = answer(&ch, URI, "s3cret", 1);
        assert_eq!(
            p.check(&req("192.0.2.1", "real", Some(&good)), t),
            Verdict::Allowed
        );
    }
}
