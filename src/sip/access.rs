//! Who may call: an allow-list of trunk addresses and/or digest authentication.

use std::net::IpAddr;

use super::digest::{self, Algorithm, Challenge, NonceIssuer, NonceState};

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct Credentials {
    pub realm: String,
    pub username: String,
    pub password: String,
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Answer 401 with this WWW-Authenticate value.
    Challenge(String),
    Forbidden,
}

#[derive(Debug)]
pub struct AccessPolicy {
    allow: Vec<Cidr>,
    auth: Option<Credentials>,
    nonces: NonceIssuer,
}

/// How long a nonce stays good: long enough for a slow trunk's retry.
const NONCE_AGE_SECS: u64 = 300;

impl AccessPolicy {
    pub fn new(allow: Vec<Cidr>, auth: Option<Credentials>) -> AccessPolicy {
        AccessPolicy {
            allow,
            auth,
            nonces: NonceIssuer::random(),
        }
    }

    /// Anyone may call: no allow-list and no credentials.
    pub fn open() -> AccessPolicy {
        AccessPolicy::new(Vec::new(), None)
    }

    /// `authorization` is the request's Authorization header value, if any;
    /// `now_secs` any clock that only moves forward.
    pub fn check(
        &self,
        source: IpAddr,
        method: &str,
        authorization: Option<&str>,
        now_secs: u64,
    ) -> Verdict {
        if self.allow.iter().any(|c| c.contains(source)) {
            return Verdict::Allowed;
        }
        let Some(auth) = &self.auth else {
            return if self.allow.is_empty() {
                Verdict::Allowed
            } else {
                Verdict::Forbidden
            };
        };
        let challenge = |stale: bool| {
            let mut c = Challenge::new(
                auth.realm.clone(),
                self.nonces.issue(now_secs),
                Algorithm::Md5,
            );
            c.stale = stale;
            Verdict::Challenge(c.to_header_value())
        };
        let Some(creds) = authorization.and_then(|h| digest::parse_credentials(h).ok()) else {
            return challenge(false);
        };
        if creds.username != auth.username || creds.realm != auth.realm {
            return challenge(false);
        }
        match self.nonces.check(&creds.nonce, now_secs, NONCE_AGE_SECS) {
            NonceState::Valid => {}
            NonceState::Stale => return challenge(digest::verify(&creds, method, &auth.password)),
            NonceState::Invalid => return challenge(false),
        }
        if digest::verify(&creds, method, &auth.password) {
            Verdict::Allowed
        } else {
            challenge(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_list_without_auth_forbids_strangers() {
        let p = AccessPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], None);
        assert_eq!(
            p.check(ip("127.0.0.1"), "INVITE", None, 0),
            Verdict::Allowed
        );
        assert_eq!(
            p.check(ip("192.0.2.1"), "INVITE", None, 0),
            Verdict::Forbidden
        );
        assert_eq!(
            AccessPolicy::open().check(ip("192.0.2.1"), "INVITE", None, 0),
            Verdict::Allowed
        );
    }

    #[test]
    fn digest_challenge_then_the_right_answer() {
        let p = AccessPolicy::new(
            Vec::new(),
            Some(Credentials {
                realm: "izwi".into(),
                username: "trunk".into(),
                password: "s3cret".into(),
            }),
        );
        let Verdict::Challenge(www) = p.check(ip("192.0.2.1"), "INVITE", None, 100) else {
            panic!()
        };
        let ch = digest::parse_challenge(&www).unwrap();
        let good = digest::respond(
            &ch,
            "INVITE",
            "sip:izwi@192.0.2.9",
            "trunk",
            "s3cret",
            "abc",
            1,
        );
        assert_eq!(
            p.check(ip("192.0.2.1"), "INVITE", Some(&good), 110),
            Verdict::Allowed
        );
        let bad = digest::respond(
            &ch,
            "INVITE",
            "sip:izwi@192.0.2.9",
            "trunk",
            "guess",
            "abc",
            1,
        );
        assert!(matches!(
            p.check(ip("192.0.2.1"), "INVITE", Some(&bad), 110),
            Verdict::Challenge(_)
        ));
        // A nonce this old is stale: challenged again, flagged stale since the password was right.
        let Verdict::Challenge(again) =
            p.check(ip("192.0.2.1"), "INVITE", Some(&good), 100 + 10_000)
        else {
            panic!()
        };
        assert!(digest::parse_challenge(&again).unwrap().stale);
        assert!(matches!(
            p.check(ip("192.0.2.1"), "INVITE", Some("Digest garbage"), 110),
            Verdict::Challenge(_)
        ));
    }
}
