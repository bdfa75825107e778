//! Outbound registration at a SIP registrar or trunk (RFC 3261 §10) with
//! digest authentication, as a sans-IO state machine: responses and the
//! current time go in; REGISTER requests and the next wake-up time come out.
//! The shell that owns the socket drives it like [`super::ua::UserAgent`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::{Method, SipMessage, StatusCode};

use super::digest::{self, Challenge};
use super::message::{self, ALLOW, Parsed};
use super::ua::{T1, T2, TIMER_H, Transport};

/// Timer F (RFC 3261 §17.1.2.2) is 64·T1, the same span as timer H.
const TIMER_F: Duration = TIMER_H;
/// Wait after the first failure; doubled per consecutive failure.
const BACKOFF_START: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Refreshing less than this before expiry risks losing the binding to one
/// lost datagram plus a challenge round trip.
const MIN_MARGIN: Duration = Duration::from_secs(2);
/// Challenges answered within one attempt before the credentials are taken
/// as refused: registrars that issue a fresh nonce with every 401 would
/// otherwise loop forever on a wrong password.
const MAX_CHALLENGES: u32 = 3;
/// Grants beyond this are treated as this, so deadlines stay far from the
/// limits of `Instant` whatever a registrar writes.
const MAX_GRANT_SECS: u32 = 365 * 24 * 3600;

#[derive(Clone)]
pub struct RegisterConfig {
    /// Where REGISTERs go (already resolved).
    pub registrar: SocketAddr,
    pub transport: Transport,
    /// Request-URI, e.g. "sip:trunk.example.com" (RFC 3261 §10.2: the domain).
    pub registrar_uri: String,
    /// Address of record, put in From and To, e.g. "sip:izwi@trunk.example.com".
    pub aor: String,
    /// Our Contact URI, e.g. "sip:izwi@203.0.113.5:5060".
    pub contact: String,
    pub username: String,
    pub password: String,
    /// Expires we ask for (seconds).
    pub expires: u32,
    /// host:port for our Via.
    pub via_host: String,
    pub user_agent: String,
}

/// Written by hand so that logging a config never shows the password.
impl std::fmt::Debug for RegisterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterConfig")
            .field("registrar", &self.registrar)
            .field("transport", &self.transport)
            .field("registrar_uri", &self.registrar_uri)
            .field("aor", &self.aor)
            .field("contact", &self.contact)
            .field("username", &self.username)
            .field("expires", &self.expires)
            .field("via_host", &self.via_host)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    /// Not yet tried, or unregistered at shutdown.
    Idle,
    /// A REGISTER is in flight.
    Registering,
    /// The registrar accepted us until this instant.
    Registered { until: Instant },
    /// The last attempt failed (final error status, or no answer, or
    /// credentials refused); retry at `retry_at`.
    Failed { reason: String, retry_at: Instant },
}

/// A challenge kept to answer it again on later requests (pre-authorisation).
struct Auth {
    challenge: Challenge,
    /// Requests sent with this nonce so far; the next one carries `nc + 1`.
    nc: u32,
}

/// The REGISTER client transaction in flight (RFC 3261 §17.1.2).
struct Tx {
    branch: String,
    cseq: u32,
    request: String,
    /// Expires asked for; 0 marks the unregistration.
    expires: u32,
    /// Nonces whose credentials the request carried, to tell a refusal from
    /// a fresh challenge.
    www_nonce: Option<String>,
    proxy_nonce: Option<String>,
    /// Timer E; `None` over TCP, which retransmits by itself.
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up: Instant,
}

/// What the final response to a transaction asks of us.
enum Outcome {
    Granted(u32),
    /// Credentials or a longer Expires were learnt: send again at once.
    Again,
    Failed(String),
    /// Sending again with the same credentials would only be refused again.
    Refused(String),
}

pub struct Registration {
    cfg: RegisterConfig,
    state: RegState,
    call_id: String,
    from_tag: String,
    /// CSeq of the last REGISTER sent.
    cseq: u32,
    /// What we ask for; raised by 423 Min-Expires.
    expires: u32,
    www: Option<Auth>,
    proxy: Option<Auth>,
    tx: Option<Tx>,
    /// When the next attempt (first, refresh or retry) starts; only while no
    /// transaction is in flight.
    next_attempt: Option<Instant>,
    /// Challenges answered since the current attempt began.
    challenges: u32,
    /// Consecutive failed attempts, for the backoff.
    failures: u32,
    registrations: u64,
    unregistering: bool,
    out: VecDeque<(SocketAddr, Transport, String)>,
}

impl Registration {
    /// Schedules the first REGISTER at `now`: it goes out on the
    /// [`Registration::handle_timeout`] call that [`Registration::poll_timeout`] asks for.
    pub fn new(cfg: RegisterConfig, now: Instant) -> Registration {
        let call_id = format!("{}@{}", message::token(""), cfg.via_host);
        let expires = cfg.expires;
        Registration {
            cfg,
            state: RegState::Idle,
            call_id,
            from_tag: message::token(""),
            cseq: 0,
            expires,
            www: None,
            proxy: None,
            tx: None,
            next_attempt: Some(now),
            challenges: 0,
            failures: 0,
            registrations: 0,
            unregistering: false,
            out: VecDeque::new(),
        }
    }

    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// Number of successful registrations so far (first + refreshes).
    pub fn registrations(&self) -> u64 {
        self.registrations
    }

    /// The Call-ID every REGISTER of this registration carries.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Next request to send: (to, transport, text).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Transport, String)> {
        self.out.pop_front()
    }

    /// When [`Registration::handle_timeout`] must next be called. `None` once
    /// an unregistration has finished: a shutdown can stop driving then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.tx {
            Some(tx) => Some(tx.retransmit_at.map_or(tx.give_up, |at| at.min(tx.give_up))),
            None => self.next_attempt,
        }
    }

    /// Retransmissions, give-ups, refreshes and retries that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(tx) = self.tx.as_mut() {
            if now >= tx.give_up {
                self.tx = None;
                if self.unregistering {
                    self.finish_unregister("no answer");
                } else {
                    self.attempt_failed("no answer".into(), now);
                }
                return;
            }
            if let Some(at) = tx.retransmit_at
                && now >= at
            {
                tx.interval = (tx.interval * 2).min(T2);
                tx.retransmit_at = Some(now + tx.interval);
                let request = tx.request.clone();
                self.out
                    .push_back((self.cfg.registrar, self.cfg.transport, request));
            }
            return;
        }
        if let Some(at) = self.next_attempt
            && now >= at
        {
            self.next_attempt = None;
            self.challenges = 0;
            self.send_register(now);
        }
    }

    /// A response received from the network. Returns false if it is not for
    /// this registration (Call-ID, CSeq method REGISTER and top Via branch of
    /// the request in flight), so the caller can count it as a stray.
    pub fn handle_response(&mut self, resp: &Parsed, now: Instant) -> bool {
        let SipMessage::Response(r) = &resp.msg else {
            return false;
        };
        let ours = resp.call_id == self.call_id
            && resp.cseq_method == Method::Register
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.branch == resp.branch && tx.cseq == resp.cseq);
        if !ours {
            return false;
        }
        let code = r.status_code.code();
        if code < 200 {
            // Proceeding (RFC 3261 §17.1.2.2): the request got through, so
            // only a lost final response needs covering, every T2.
            if let Some(tx) = self.tx.as_mut()
                && tx.retransmit_at.is_some()
            {
                tx.interval = T2;
                tx.retransmit_at = Some(now + T2);
            }
            return true;
        }
        let Some(tx) = self.tx.take() else {
            return true;
        };
        let outcome = self.outcome(&tx, code, &r.status_code, resp);
        if self.unregistering {
            match (tx.expires == 0, outcome) {
                (_, Outcome::Again) => self.send_register(now),
                // The answer to a REGISTER that was in flight when
                // unregister() was called: now the unregistration can go.
                (false, Outcome::Granted(_) | Outcome::Failed(_)) => self.send_register(now),
                (_, Outcome::Refused(reason) | Outcome::Failed(reason)) => {
                    self.finish_unregister(&reason)
                }
                (true, Outcome::Granted(_)) => self.finish_unregister("ok"),
            }
            return true;
        }
        match outcome {
            Outcome::Again => self.send_register(now),
            Outcome::Granted(0) => {
                self.attempt_failed("registrar granted 0 s".into(), now);
            }
            Outcome::Granted(secs) => self.registered(secs, code, now),
            Outcome::Failed(reason) | Outcome::Refused(reason) => {
                self.attempt_failed(reason, now);
            }
        }
        true
    }

    /// Sends REGISTER with Expires: 0 (for shutdown); the state becomes Idle
    /// at once and nothing is refreshed any more. A REGISTER already in
    /// flight is let finish first (RFC 3261 §10.2: one at a time). Drive the
    /// machine until [`Registration::poll_timeout`] returns `None` (or a
    /// shutdown deadline passes) so that a challenge can be answered.
    pub fn unregister(&mut self, now: Instant) {
        if self.unregistering {
            return;
        }
        self.unregistering = true;
        self.next_attempt = None;
        self.challenges = 0;
        if self.state != RegState::Idle {
            tracing::info!(aor = %self.cfg.aor, "unregistering");
        }
        self.state = RegState::Idle;
        // With nothing ever sent there is no binding to remove.
        if self.tx.is_none() && self.cseq > 0 {
            self.send_register(now);
        }
    }

    fn outcome(&mut self, tx: &Tx, code: u16, status: &StatusCode, resp: &Parsed) -> Outcome {
        match code {
            200..=299 => Outcome::Granted(self.granted(resp, tx.expires)),
            401 | 407 => self.take_challenge(tx, code, status, resp),
            423 => {
                let min = resp
                    .header_value("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    // Asking for no more than before would loop.
                    Some(min) if tx.expires > 0 && min > tx.expires => {
                        tracing::info!(aor = %self.cfg.aor, min_expires = min, "registrar wants a longer Expires");
                        self.expires = min;
                        Outcome::Again
                    }
                    _ => Outcome::Failed(format!(
                        "{} without a usable Min-Expires",
                        status_text(status)
                    )),
                }
            }
            _ => Outcome::Failed(status_text(status)),
        }
    }

    fn take_challenge(
        &mut self,
        tx: &Tx,
        code: u16,
        status: &StatusCode,
        resp: &Parsed,
    ) -> Outcome {
        let proxy = code == 407;
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        // Registrars may offer several algorithms; the first we can answer wins.
        let Some(challenge) = resp
            .header_values(name)
            .iter()
            .find_map(|v| digest::parse_challenge(v).ok())
        else {
            return Outcome::Failed(format!(
                "{} without a usable challenge",
                status_text(status)
            ));
        };
        let sent = if proxy {
            &tx.proxy_nonce
        } else {
            &tx.www_nonce
        };
        if sent.as_deref() == Some(challenge.nonce.as_str()) && !challenge.stale {
            return Outcome::Refused("credentials refused".into());
        }
        self.challenges += 1;
        if self.challenges > MAX_CHALLENGES {
            return Outcome::Refused(format!(
                "credentials refused (challenged {} times)",
                self.challenges
            ));
        }
        let slot = if proxy {
            &mut self.proxy
        } else {
            &mut self.www
        };
        // The same nonce again (stale) continues its count: nc must not repeat.
        let nc = slot
            .as_ref()
            .filter(|a| a.challenge.nonce == challenge.nonce)
            .map_or(0, |a| a.nc);
        *slot = Some(Auth { challenge, nc });
        Outcome::Again
    }

    /// Expiry granted by a 2xx: our Contact's `expires` parameter, else the
    /// Expires header, else what we asked for (RFC 3261 §10.2.4).
    fn granted(&self, resp: &Parsed, asked: u32) -> u32 {
        let from_contact = resp
            .header_values("Contact")
            .iter()
            .flat_map(|v| split_list(v))
            .filter(|c| same_uri(&message::uri_of(c), &self.cfg.contact))
            .find_map(|c| header_param(c, "expires").and_then(|v| v.parse::<u32>().ok()));
        from_contact
            .or_else(|| {
                resp.header_value("Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
            .unwrap_or(asked)
            .min(MAX_GRANT_SECS)
    }

    fn registered(&mut self, secs: u32, code: u16, now: Instant) {
        let granted = Duration::from_secs(secs.into());
        self.failures = 0;
        self.registrations += 1;
        self.state = RegState::Registered {
            until: now + granted,
        };
        let refresh = refresh_after(secs);
        self.next_attempt = Some(now + refresh);
        tracing::info!(
            aor = %self.cfg.aor,
            status = code,
            expires = secs,
            refresh_in_s = refresh.as_secs_f64(),
            "registered"
        );
    }

    fn attempt_failed(&mut self, reason: String, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures);
        let retry_at = now + wait;
        tracing::warn!(
            aor = %self.cfg.aor,
            reason = %reason,
            retry_in_s = wait.as_secs(),
            "registration failed"
        );
        self.state = RegState::Failed { reason, retry_at };
        self.next_attempt = Some(retry_at);
    }

    fn finish_unregister(&mut self, result: &str) {
        self.tx = None;
        self.next_attempt = None;
        tracing::info!(aor = %self.cfg.aor, result, "unregistration finished");
    }

    fn send_register(&mut self, now: Instant) {
        self.cseq = self.cseq.saturating_add(1);
        let branch = message::token("z9hG4bK");
        let expires = if self.unregistering { 0 } else { self.expires };
        let cfg = &self.cfg;
        let www = self.www.as_mut().map(|a| answer(a, cfg));
        let proxy = self.proxy.as_mut().map(|a| answer(a, cfg));

        let mut out = format!("REGISTER {} SIP/2.0\r\n", cfg.registrar_uri);
        out.push_str(&format!(
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            cfg.transport.as_str(),
            cfg.via_host
        ));
        out.push_str("Max-Forwards: 70\r\n");
        out.push_str(&format!("From: <{}>;tag={}\r\n", cfg.aor, self.from_tag));
        out.push_str(&format!("To: <{}>\r\n", cfg.aor));
        out.push_str(&format!("Call-ID: {}\r\n", self.call_id));
        out.push_str(&format!("CSeq: {} REGISTER\r\n", self.cseq));
        out.push_str(&format!("Contact: <{}>\r\n", cfg.contact));
        out.push_str(&format!("Expires: {expires}\r\n"));
        if let Some((value, _)) = &www {
            out.push_str(&format!("Authorization: {value}\r\n"));
        }
        if let Some((value, _)) = &proxy {
            out.push_str(&format!("Proxy-Authorization: {value}\r\n"));
        }
        out.push_str(&format!("User-Agent: {}\r\n", cfg.user_agent));
        out.push_str(&format!("Allow: {ALLOW}\r\n"));
        out.push_str("Content-Length: 0\r\n\r\n");

        tracing::debug!(aor = %cfg.aor, cseq = self.cseq, expires, "sending REGISTER");
        self.out
            .push_back((cfg.registrar, cfg.transport, out.clone()));
        let reliable = cfg.transport == Transport::Tcp;
        self.tx = Some(Tx {
            branch,
            cseq: self.cseq,
            request: out,
            expires,
            www_nonce: www.map(|(_, nonce)| nonce),
            proxy_nonce: proxy.map(|(_, nonce)| nonce),
            retransmit_at: (!reliable).then(|| now + T1),
            interval: T1,
            give_up: now + TIMER_F,
        });
        if !self.unregistering {
            self.state = RegState::Registering;
        }
    }
}

/// The credentials answering `auth` for the next request, and the nonce
/// they answer.
fn answer(auth: &mut Auth, cfg: &RegisterConfig) -> (String, String) {
    auth.nc = auth.nc.saturating_add(1);
    let value = digest::respond(
        &auth.challenge,
        "REGISTER",
        &cfg.registrar_uri,
        &cfg.username,
        &cfg.password,
        &message::token(""),
        auth.nc,
    );
    (value, auth.challenge.nonce.clone())
}

/// How long after a grant of `secs` to refresh: early by a fifth, at least
/// [`MIN_MARGIN`], but never past half the grant.
fn refresh_after(secs: u32) -> Duration {
    let granted = Duration::from_secs(secs.into());
    let margin = (granted / 5).max(MIN_MARGIN).min(granted / 2);
    granted - margin
}

/// Wait before retry after `failures` consecutive failures (≥ 1).
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// "CODE Reason" for logs and [`RegState::Failed`]. rsip keeps only the code
/// of well-known statuses, so their reason comes from the variant name.
fn status_text(status: &StatusCode) -> String {
    let reason = match status {
        StatusCode::Other(_, reason) => reason.clone(),
        known => {
            let shown = known.to_string();
            let name = shown.split_once(' ').map_or("", |(_, n)| n);
            let mut spaced = String::with_capacity(name.len() + 4);
            let mut prev_lower = false;
            for c in name.chars() {
                if c.is_ascii_uppercase() && prev_lower {
                    spaced.push(' ');
                }
                prev_lower = c.is_ascii_lowercase();
                spaced.push(c);
            }
            spaced
        }
    };
    format!("status {} {reason}", status.code())
}

/// Splits a header value listing several entries at the commas between them
/// (not those inside quotes or angle brackets).
fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// A header parameter of a name-addr or addr-spec entry (after `>` when the
/// URI is bracketed; otherwise everything after the URI is header params).
fn header_param(entry: &str, name: &str) -> Option<String> {
    let params = match entry.rfind('>') {
        Some(i) if entry.contains('<') => &entry[i + 1..],
        _ => entry.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Whether a Contact URI the registrar returned is ours. Registrars may
/// change case or add URI parameters, so a match without parameters counts.
fn same_uri(theirs: &str, ours: &str) -> bool {
    let bare = |u: &str| {
        u.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    theirs.eq_ignore_ascii_case(ours) || (!theirs.is_empty() && bare(theirs) == bare(ours))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{Algorithm, parse_credentials, verify};

    const PASSWORD: &str = "s3cret";

    fn cfg(transport: Transport) -> RegisterConfig {
        RegisterConfig {
            registrar: "192.0.2.10:5060".parse().unwrap(),
            transport,
            registrar_uri: "sip:trunk.example.com".into(),
            aor: "sip:izwi@trunk.example.com".into(),
            contact: "sip:izwi@203.0.113.5:5060".into(),
            username: "izwi".into(),
            password: PASSWORD.into(),
            expires: 3600,
            via_host: "203.0.113.5:5060".into(),
            user_agent: "izwi-test".into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A registration whose first REGISTER has gone out at `t0`.
    fn start(transport: Transport) -> (Registration, Instant, String) {
        let t0 = Instant::now();
        let mut reg = Registration::new(cfg(transport), t0);
        reg.handle_timeout(t0);
        let req = sent(&mut reg);
        (reg, t0, req)
    }

    /// The one request queued, checking where it goes.
    fn sent(reg: &mut Registration) -> String {
        let (to, _, text) = reg.poll_transmit().expect("a request");
        assert_eq!(to, reg.cfg.registrar);
        assert!(
            reg.poll_transmit().is_none(),
            "more than one request queued"
        );
        text
    }

    fn parsed(text: &str) -> Parsed {
        message::parse(text.as_bytes()).unwrap()
    }

    fn header(req: &str, name: &str) -> Option<String> {
        parsed(req).header_value(name)
    }

    /// A response to `req` as a registrar writes it, with extra header lines.
    fn reply(req: &str, status: &str, extra: &[String]) -> Parsed {
        let p = parsed(req);
        let mut r = format!("SIP/2.0 {status}\r\n");
        for v in &p.vias {
            r.push_str(&format!("Via: {v};received=198.51.100.7\r\n"));
        }
        let from = p.header_value("From").unwrap();
        let to = p.header_value("To").unwrap();
        r.push_str(&format!("From: {from}\r\nTo: {to};tag=srv1\r\n"));
        r.push_str(&format!(
            "Call-ID: {}\r\nCSeq: {} REGISTER\r\n",
            p.call_id, p.cseq
        ));
        for e in extra {
            r.push_str(e);
            r.push_str("\r\n");
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        parsed(&r)
    }

    fn www(nonce: &str) -> String {
        let ch = Challenge {
            opaque: Some("op-1".into()),
            ..Challenge::new("trunk.example.com", nonce, Algorithm::Md5)
        };
        format!("WWW-Authenticate: {}", ch.to_header_value())
    }

    fn ok(req: &str, extra: &[String]) -> Parsed {
        reply(req, "200 OK", extra)
    }

    /// Registered through a 401 (so a challenge is kept), 200 with Expires 3600.
    fn registered_with_auth(reg: &mut Registration, t0: Instant, first: &str) -> String {
        assert!(reg.handle_response(&reply(first, "401 Unauthorized", &[www("n1")]), t0));
        let second = sent(reg);
        assert!(reg.handle_response(&ok(&second, &["Expires: 3600".into()]), t0));
        second
    }

    #[test]
    fn first_register_has_the_rfc_3261_headers() {
        let t0 = Instant::now();
        let mut reg = Registration::new(cfg(Transport::Udp), t0);
        assert_eq!(reg.state(), &RegState::Idle);
        assert_eq!(reg.poll_timeout(), Some(t0));
        assert!(reg.poll_transmit().is_none());
        reg.handle_timeout(t0);
        assert_eq!(reg.state(), &RegState::Registering);
        let (to, transport, req) = reg.poll_transmit().unwrap();
        assert_eq!(to, "192.0.2.10:5060".parse().unwrap());
        assert_eq!(transport, Transport::Udp);

        assert!(
            req.starts_with("REGISTER sip:trunk.example.com SIP/2.0\r\n"),
            "{req}"
        );
        let p = parsed(&req);
        assert_eq!(p.request().unwrap().method, Method::Register);
        assert_eq!(p.cseq, 1);
        assert_eq!(p.cseq_method, Method::Register);
        assert_eq!(p.call_id, reg.call_id());
        assert!(p.branch.starts_with("z9hG4bK") && p.branch.len() > 7);
        let via = header(&req, "Via").unwrap();
        assert!(
            via.starts_with("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK"),
            "{via}"
        );
        assert!(via.ends_with(";rport"), "{via}");
        assert_eq!(header(&req, "Max-Forwards").as_deref(), Some("70"));
        let from = header(&req, "From").unwrap();
        assert!(
            from.starts_with("<sip:izwi@trunk.example.com>;tag="),
            "{from}"
        );
        assert!(p.from_tag.is_some());
        assert_eq!(
            header(&req, "To").as_deref(),
            Some("<sip:izwi@trunk.example.com>")
        );
        assert_eq!(p.to_tag, None);
        assert_eq!(
            header(&req, "Contact").as_deref(),
            Some("<sip:izwi@203.0.113.5:5060>")
        );
        assert_eq!(header(&req, "Expires").as_deref(), Some("3600"));
        assert_eq!(header(&req, "User-Agent").as_deref(), Some("izwi-test"));
        assert_eq!(header(&req, "Allow").as_deref(), Some(ALLOW));
        assert_eq!(header(&req, "Content-Length").as_deref(), Some("0"));
        assert!(header(&req, "Authorization").is_none());
        assert!(!req.contains(PASSWORD));
        // Sent once: nothing more until a timer or response.
        assert!(reg.poll_transmit().is_none());
        assert_eq!(reg.poll_timeout(), Some(t0 + T1));
    }

    #[test]
    fn udp_retransmits_on_timer_e_with_the_same_text() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let mut at = Vec::new();
        while let Some(t) = reg.poll_timeout() {
            if t >= t0 + TIMER_F {
                break;
            }
            reg.handle_timeout(t);
            assert_eq!(sent(&mut reg), first);
            at.push((t - t0).as_millis());
        }
        // T1, doubling, capped at T2 = 4 s, until timer F at 32 s.
        assert_eq!(
            at,
            vec![
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ]
        );
        assert_eq!(reg.poll_timeout(), Some(t0 + TIMER_F));
    }

    #[test]
    fn provisional_response_slows_retransmission_to_t2() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let t = t0 + ms(100);
        assert!(reg.handle_response(&reply(&first, "100 Trying", &[]), t));
        assert_eq!(reg.state(), &RegState::Registering);
        assert_eq!(reg.poll_timeout(), Some(t + T2));
        reg.handle_timeout(t0 + T1);
        assert!(
            reg.poll_transmit().is_none(),
            "no timer E at T1 once proceeding"
        );
        reg.handle_timeout(t + T2);
        assert_eq!(sent(&mut reg), first);
    }

    #[test]
    fn no_answer_fails_at_timer_f_and_retries_after_backoff() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let give_up = t0 + TIMER_F;
        reg.handle_timeout(give_up);
        let retry_at = give_up + secs(5);
        assert_eq!(
            reg.state(),
            &RegState::Failed {
                reason: "no answer".into(),
                retry_at
            }
        );
        assert!(reg.poll_transmit().is_none());
        assert_eq!(reg.poll_timeout(), Some(retry_at));
        reg.handle_timeout(retry_at - ms(1));
        assert!(reg.poll_transmit().is_none());
        reg.handle_timeout(retry_at);
        let again = sent(&mut reg);
        let (p1, p2) = (parsed(&first), parsed(&again));
        assert_eq!(p2.cseq, p1.cseq + 1);
        assert_eq!(p2.call_id, p1.call_id);
        assert_eq!(p2.from_tag, p1.from_tag);
        assert_ne!(p2.branch, p1.branch);
        assert_eq!(reg.state(), &RegState::Registering);
    }

    #[test]
    fn tcp_does_not_retransmit_but_still_gives_up() {
        let (mut reg, t0, first) = start(Transport::Tcp);
        assert!(header(&first, "Via").unwrap().starts_with("SIP/2.0/TCP "));
        assert_eq!(reg.poll_timeout(), Some(t0 + TIMER_F));
        reg.handle_timeout(t0 + secs(10));
        assert!(reg.poll_transmit().is_none());
        reg.handle_timeout(t0 + TIMER_F);
        assert!(matches!(reg.state(), RegState::Failed { reason, .. } if reason == "no answer"));
    }

    #[test]
    fn unauthorized_is_answered_with_verifiable_credentials() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let t1 = t0 + ms(40);
        assert!(reg.handle_response(&reply(&first, "401 Unauthorized", &[www("n1")]), t1));
        assert_eq!(reg.state(), &RegState::Registering);
        let second = sent(&mut reg);
        let (p1, p2) = (parsed(&first), parsed(&second));
        assert_eq!(p2.cseq, p1.cseq + 1);
        assert_eq!(p2.call_id, p1.call_id);
        assert_ne!(p2.branch, p1.branch);
        assert!(header(&second, "Proxy-Authorization").is_none());
        assert!(!second.contains(PASSWORD));

        let creds = parse_credentials(&header(&second, "Authorization").unwrap()).unwrap();
        assert_eq!(creds.username, "izwi");
        assert_eq!(creds.realm, "trunk.example.com");
        assert_eq!(creds.nonce, "n1");
        assert_eq!(creds.uri, "sip:trunk.example.com");
        assert_eq!(creds.nc.as_deref(), Some("00000001"));
        assert_eq!(creds.opaque.as_deref(), Some("op-1"));
        assert!(verify(&creds, "REGISTER", PASSWORD));
        assert!(!verify(&creds, "REGISTER", "wrong"));

        // The new request has its own timer F.
        assert_eq!(reg.poll_timeout(), Some(t1 + T1));
        reg.handle_timeout(t0 + TIMER_F);
        assert_eq!(reg.state(), &RegState::Registering);
        assert_eq!(sent(&mut reg), second, "a retransmission, not a give-up");

        // Refreshes are pre-authorised with the kept nonce, counting on.
        let t2 = t0 + secs(1);
        assert!(reg.handle_response(&ok(&second, &["Expires: 3600".into()]), t2));
        assert_eq!(reg.registrations(), 1);
        reg.handle_timeout(t2 + secs(48 * 60));
        let refresh = sent(&mut reg);
        assert_eq!(parsed(&refresh).cseq, p2.cseq + 1);
        let again = parse_credentials(&header(&refresh, "Authorization").unwrap()).unwrap();
        assert_eq!(again.nonce, "n1");
        assert_eq!(again.nc.as_deref(), Some("00000002"));
        assert_ne!(again.cnonce, creds.cnonce);
        assert!(verify(&again, "REGISTER", PASSWORD));

        // A new nonce on the refresh is just answered, its count from 1.
        assert!(reg.handle_response(&reply(&refresh, "401 Unauthorized", &[www("n2")]), t2));
        let third = sent(&mut reg);
        let c3 = parse_credentials(&header(&third, "Authorization").unwrap()).unwrap();
        assert_eq!(
            (c3.nonce.as_str(), c3.nc.as_deref()),
            ("n2", Some("00000001"))
        );
        assert!(reg.handle_response(&ok(&third, &[]), t2));
        assert_eq!(reg.registrations(), 2);
    }

    #[test]
    fn a_second_challenge_for_the_same_nonce_means_wrong_credentials() {
        let (mut reg, t0, first) = start(Transport::Udp);
        assert!(reg.handle_response(&reply(&first, "401 Unauthorized", &[www("n1")]), t0));
        let second = sent(&mut reg);
        assert!(reg.handle_response(&reply(&second, "401 Unauthorized", &[www("n1")]), t0));
        assert!(
            reg.poll_transmit().is_none(),
            "must not resend refused credentials"
        );
        assert_eq!(
            reg.state(),
            &RegState::Failed {
                reason: "credentials refused".into(),
                retry_at: t0 + secs(5)
            }
        );
        assert_eq!(reg.poll_timeout(), Some(t0 + secs(5)));
    }

    #[test]
    fn stale_nonce_is_answered_again() {
        let (mut reg, t0, first) = start(Transport::Udp);
        assert!(reg.handle_response(&reply(&first, "401 Unauthorized", &[www("n1")]), t0));
        let second = sent(&mut reg);
        let stale = Challenge {
            stale: true,
            ..Challenge::new("trunk.example.com", "n1", Algorithm::Md5)
        };
        let line = format!("WWW-Authenticate: {}", stale.to_header_value());
        assert!(reg.handle_response(&reply(&second, "401 Unauthorized", &[line]), t0));
        let third = sent(&mut reg);
        let creds = parse_credentials(&header(&third, "Authorization").unwrap()).unwrap();
        assert_eq!(creds.nc.as_deref(), Some("00000002"));
        assert_eq!(reg.state(), &RegState::Registering);
    }

    #[test]
    fn registrar_rotating_nonces_cannot_loop_us() {
        let (mut reg, t0, mut req) = start(Transport::Udp);
        for n in 0.. {
            assert!(reg.handle_response(
                &reply(&req, "401 Unauthorized", &[www(&format!("r{n}"))]),
                t0
            ));
            match reg.poll_transmit() {
                Some((_, _, next)) => req = next,
                None => break,
            }
            assert!(n < 10, "still answering challenges");
        }
        assert!(
            matches!(reg.state(), RegState::Failed { reason, .. } if reason.starts_with("credentials refused"))
        );
    }

    #[test]
    fn proxy_challenge_is_answered_with_proxy_authorization() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let ch = Challenge::new("proxy.example.com", "p1", Algorithm::Sha256);
        let line = format!("Proxy-Authenticate: {}", ch.to_header_value());
        assert!(reg.handle_response(
            &reply(&first, "407 Proxy Authentication Required", &[line]),
            t0
        ));
        let second = sent(&mut reg);
        assert!(header(&second, "Authorization").is_none());
        let creds = parse_credentials(&header(&second, "Proxy-Authorization").unwrap()).unwrap();
        assert_eq!(creds.realm, "proxy.example.com");
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        assert!(verify(&creds, "REGISTER", PASSWORD));
        assert_eq!(parsed(&second).cseq, 2);
    }

    #[test]
    fn interval_too_brief_retries_with_min_expires() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let r = reply(
            &first,
            "423 Interval Too Brief",
            &["Min-Expires: 7200".into()],
        );
        assert!(reg.handle_response(&r, t0));
        let second = sent(&mut reg);
        assert_eq!(header(&second, "Expires").as_deref(), Some("7200"));
        assert_eq!(parsed(&second).cseq, 2);
        assert!(reg.handle_response(&ok(&second, &[]), t0));
        assert_eq!(
            reg.state(),
            &RegState::Registered {
                until: t0 + secs(7200)
            }
        );
        // Refreshes keep asking for what the registrar accepts.
        reg.handle_timeout(reg.poll_timeout().unwrap());
        assert_eq!(header(&sent(&mut reg), "Expires").as_deref(), Some("7200"));
    }

    #[test]
    fn interval_too_brief_without_a_usable_min_expires_fails() {
        for extra in [
            vec![],
            vec!["Min-Expires: soon".to_string()],
            vec!["Min-Expires: 3600".into()],
        ] {
            let (mut reg, t0, first) = start(Transport::Udp);
            assert!(reg.handle_response(&reply(&first, "423 Interval Too Brief", &extra), t0));
            assert!(reg.poll_transmit().is_none(), "{extra:?}");
            assert!(
                matches!(reg.state(), RegState::Failed { reason, .. } if reason.starts_with("status 423 Interval Too Brief"))
            );
        }
    }

    #[test]
    fn contact_expires_sets_the_grant_and_the_refresh() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let t = t0 + ms(30);
        let r = ok(
            &first,
            &[
                "Contact: <sip:phone@198.51.100.20>;expires=99, <SIP:izwi@203.0.113.5:5060;transport=udp>;expires=10".into(),
                "Expires: 3600".into(),
            ],
        );
        assert!(reg.handle_response(&r, t));
        assert_eq!(
            reg.state(),
            &RegState::Registered {
                until: t + secs(10)
            }
        );
        assert_eq!(reg.registrations(), 1);
        assert_eq!(reg.poll_timeout(), Some(t + secs(8)));
        // The answered request is not retransmitted any more.
        reg.handle_timeout(t + secs(7));
        assert!(reg.poll_transmit().is_none());
        reg.handle_timeout(t + secs(8));
        let refresh = sent(&mut reg);
        let (p1, p2) = (parsed(&first), parsed(&refresh));
        assert_eq!(p2.cseq, p1.cseq + 1);
        assert_eq!(p2.call_id, p1.call_id);
        assert_eq!(p2.from_tag, p1.from_tag);
        assert_eq!(header(&refresh, "Expires").as_deref(), Some("3600"));
        assert_eq!(reg.state(), &RegState::Registering);
    }

    #[test]
    fn expires_header_is_used_without_our_contact() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let r = ok(
            &first,
            &[
                "Contact: <sip:other@198.51.100.20>;expires=99".into(),
                "Expires: 120".into(),
            ],
        );
        assert!(reg.handle_response(&r, t0));
        assert_eq!(
            reg.state(),
            &RegState::Registered {
                until: t0 + secs(120)
            }
        );
        assert_eq!(reg.poll_timeout(), Some(t0 + secs(96)));
    }

    #[test]
    fn garbage_values_fall_back_to_what_we_asked() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let r = ok(
            &first,
            &[
                "Contact: <sip:izwi@203.0.113.5:5060>;expires=soon".into(),
                "Expires: -1".into(),
            ],
        );
        assert!(reg.handle_response(&r, t0));
        assert_eq!(
            reg.state(),
            &RegState::Registered {
                until: t0 + secs(3600)
            }
        );
        assert_eq!(reg.poll_timeout(), Some(t0 + secs(48 * 60)));
    }

    #[test]
    fn a_grant_of_zero_is_a_failure() {
        let (mut reg, t0, first) = start(Transport::Udp);
        assert!(reg.handle_response(&ok(&first, &["Expires: 0".into()]), t0));
        assert!(
            matches!(reg.state(), RegState::Failed { retry_at, .. } if *retry_at == t0 + secs(5))
        );
        assert_eq!(reg.registrations(), 0);
    }

    #[test]
    fn challenge_without_a_usable_header_fails_without_resending() {
        for extra in [
            vec![],
            vec!["WWW-Authenticate: Basic realm=\"x\"".to_string()],
        ] {
            let (mut reg, t0, first) = start(Transport::Udp);
            assert!(reg.handle_response(&reply(&first, "401 Unauthorized", &extra), t0));
            assert!(reg.poll_transmit().is_none());
            assert!(
                matches!(reg.state(), RegState::Failed { reason, .. } if reason.starts_with("status 401 Unauthorized"))
            );
        }
    }

    #[test]
    fn strays_are_reported_and_ignored() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let other_call = ok(&first.replace(reg.call_id(), "someone-else"), &[]);
        assert!(!reg.handle_response(&other_call, t0));
        let p = parsed(&first);
        let other_branch = ok(&first.replace(&p.branch, "z9hG4bKother"), &[]);
        assert!(!reg.handle_response(&other_branch, t0));
        let other_cseq = ok(&first.replace("CSeq: 1 REGISTER", "CSeq: 9 REGISTER"), &[]);
        assert!(!reg.handle_response(&other_cseq, t0));
        // Our own request looped back is no response.
        assert!(!reg.handle_response(&p, t0));
        assert_eq!(reg.state(), &RegState::Registering);
        assert_eq!(reg.registrations(), 0);

        // Once answered, a retransmitted final response is a stray too.
        assert!(reg.handle_response(&ok(&first, &[]), t0));
        assert!(!reg.handle_response(&ok(&first, &[]), t0));
        assert_eq!(reg.registrations(), 1);
    }

    #[test]
    fn unregister_sends_expires_zero_and_stops_refreshing() {
        let (mut reg, t0, first) = start(Transport::Udp);
        let second = registered_with_auth(&mut reg, t0, &first);
        let t = t0 + secs(60);
        reg.unregister(t);
        assert_eq!(reg.state(), &RegState::Idle);
        let bye = sent(&mut reg);
        assert_eq!(header(&bye, "Expires").as_deref(), Some("0"));
        assert_eq!(
            header(&bye, "Contact").as_deref(),
            Some("<sip:izwi@203.0.113.5:5060>")
        );
        assert_eq!(parsed(&bye).cseq, parsed(&second).cseq + 1);
        assert_eq!(parsed(&bye).call_id, reg.call_id());
        let creds = parse_credentials(&header(&bye, "Authorization").unwrap()).unwrap();
        assert!(verify(&creds, "REGISTER", PASSWORD));

        // A fresh challenge on the way out is still answered.
        assert!(reg.handle_response(&reply(&bye, "401 Unauthorized", &[www("n9")]), t));
        let bye2 = sent(&mut reg);
        assert_eq!(header(&bye2, "Expires").as_deref(), Some("0"));
        assert!(reg.handle_response(&ok(&bye2, &[]), t));
        assert_eq!(reg.state(), &RegState::Idle);
        assert_eq!(reg.poll_timeout(), None);
        reg.handle_timeout(t0 + secs(10_000));
        assert!(reg.poll_transmit().is_none());
        assert_eq!(reg.registrations(), 1);
    }

    #[test]
    fn unregister_waits_for_the_request_in_flight() {
        let (mut reg, t0, first) = start(Transport::Udp);
        reg.unregister(t0);
        assert_eq!(reg.state(), &RegState::Idle);
        assert!(reg.poll_transmit().is_none(), "one REGISTER at a time");
        assert!(reg.handle_response(&ok(&first, &[]), t0));
        let bye = sent(&mut reg);
        assert_eq!(header(&bye, "Expires").as_deref(), Some("0"));
        assert_eq!(reg.state(), &RegState::Idle);
        // No answer to the unregistration: give up quietly.
        reg.handle_timeout(t0 + TIMER_F);
        assert_eq!(reg.poll_timeout(), None);
        assert_eq!(reg.state(), &RegState::Idle);
    }

    #[test]
    fn unregister_before_anything_was_sent_sends_nothing() {
        let t0 = Instant::now();
        let mut reg = Registration::new(cfg(Transport::Udp), t0);
        reg.unregister(t0);
        reg.handle_timeout(t0 + secs(1));
        assert!(reg.poll_transmit().is_none());
        assert_eq!(reg.poll_timeout(), None);
    }

    #[test]
    fn backoff_grows_to_five_minutes_and_resets_on_success() {
        let (mut reg, mut t, mut req) = start(Transport::Udp);
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(reg.handle_response(&reply(&req, "503 Service Unavailable", &[]), t));
            let RegState::Failed { reason, retry_at } = reg.state().clone() else {
                panic!("{:?}", reg.state());
            };
            assert_eq!(reason, "status 503 Service Unavailable");
            waits.push((retry_at - t).as_secs());
            t = retry_at;
            reg.handle_timeout(t);
            req = sent(&mut reg);
        }
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert!(reg.handle_response(&ok(&req, &[]), t));
        t += secs(48 * 60);
        reg.handle_timeout(t);
        let refresh = sent(&mut reg);
        assert!(reg.handle_response(&reply(&refresh, "403 Forbidden", &[]), t));
        assert_eq!(
            reg.state(),
            &RegState::Failed {
                reason: "status 403 Forbidden".into(),
                retry_at: t + secs(5)
            }
        );
    }

    #[test]
    fn unknown_status_keeps_its_reason_phrase() {
        let (mut reg, t0, first) = start(Transport::Udp);
        assert!(reg.handle_response(&reply(&first, "499 Trunk Says No", &[]), t0));
        assert!(
            matches!(reg.state(), RegState::Failed { reason, .. } if reason == "status 499 Trunk Says No")
        );
    }

    #[test]
    fn refresh_margins() {
        assert_eq!(refresh_after(3600), secs(48 * 60));
        assert_eq!(refresh_after(10), secs(8));
        assert_eq!(refresh_after(2), secs(1));
        assert_eq!(refresh_after(1), ms(500));
        assert_eq!(refresh_after(0), Duration::ZERO);
    }

    #[test]
    fn contact_lists_and_params() {
        assert_eq!(
            split_list(r#""a, b" <sip:x@h>;expires=5, <sip:y@h;p=1,2>, sip:z@h;expires=7"#),
            vec![
                r#""a, b" <sip:x@h>;expires=5"#,
                "<sip:y@h;p=1,2>",
                "sip:z@h;expires=7"
            ]
        );
        assert_eq!(
            header_param("<sip:x@h;expires=1>;expires=5", "expires").as_deref(),
            Some("5")
        );
        assert_eq!(header_param("<sip:x@h;expires=1>", "expires"), None);
        assert_eq!(
            header_param("sip:z@h;Expires=7", "expires").as_deref(),
            Some("7")
        );
        assert!(same_uri("SIP:izwi@H:5060;ob", "sip:izwi@h:5060"));
        assert!(!same_uri("sip:other@h:5060", "sip:izwi@h:5060"));
        assert!(!same_uri("", "sip:izwi@h"));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", cfg(Transport::Udp));
        assert!(shown.contains("izwi@trunk.example.com"));
        assert!(!shown.contains(PASSWORD));
    }
}
