//! The SIP user agent (server side of calls, RFC 3261) as a sans-IO state
//! machine: datagrams and the current time go in; datagrams to send, call
//! events and the next wake-up time come out. Transactions and dialogs live
//! here; sockets, media and the engine live in the shell that drives it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rsip::Method;

use super::access::{AccessPolicy, AuthRequest, Failure, Verdict};
use super::message::{self, ALLOW, Identity, ParseError, Parsed};
use super::register::{RegisterConfig, Registration};
use crate::limits::LogGate;

/// RFC 3261 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// How long a finished transaction stays to absorb retransmissions (64·T1).
pub const TIMER_H: Duration = Duration::from_secs(32);
/// Finished server transactions kept at most (and their answers' bytes); the
/// oldest go first.
const MAX_DONE: usize = 16_384;
const MAX_DONE_BYTES: usize = 16 << 20;
/// Refused calls kept (to retransmit the refusal until its ACK) at most, in
/// number and in bytes held; past this a refusal is sent once and forgotten,
/// as over TCP.
const MAX_REJECTED: usize = 4_096;
const MAX_REJECTED_BYTES: usize = 32 << 20;
/// BYEs kept for retransmission at most, in number and bytes; past this a BYE is sent once.
const MAX_CLIENTS: usize = 4_096;
const MAX_CLIENT_BYTES: usize = 8 << 20;
/// Headers of an INVITE handed on for routing at most, and their longest value.
const MAX_ROUTING_HEADERS: usize = 64;
const MAX_ROUTING_VALUE: usize = 256;
/// Lines about refused callers let through per window (the rest are counted).
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long a transfer may take to say how it went (the new call's answer,
/// which waits for the target to pick up).
const TRANSFER_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    fn reliable(self) -> bool {
        self == Transport::Tcp
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit {
        to: SocketAddr,
        transport: Transport,
        data: String,
    },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new call; answer with [`UserAgent::answer`] or [`UserAgent::reject`].
    Incoming {
        call: CallRef,
        call_id: String,
        from: String,
        to: String,
        /// The Request-URI.
        request_uri: String,
        /// The INVITE's headers, for routing (capped in number and length).
        headers: Vec<(String, String)>,
        offer: Option<String>,
        peer: SocketAddr,
    },
    /// The caller acknowledged the answer: media may flow both ways. `answer`
    /// is the ACK's SDP, which completes a late offer (an INVITE without SDP
    /// that Izwi answered with an offer). Also sent for the ACK of a re-INVITE
    /// when that ACK carries an answer.
    Confirmed {
        call: CallRef,
        answer: Option<String>,
    },
    /// A re-INVITE (hold, codec change, refresh); answer with [`UserAgent::answer_reoffer`].
    Reoffer {
        call: CallRef,
        offer: Option<String>,
    },
    Ended {
        call: CallRef,
        reason: EndReason,
    },
    /// How a transfer ([`UserAgent::refer`]) went: `Ok` once the caller's new
    /// call is up (the NOTIFY's sipfrag says 2xx), `Err(code)` when the REFER
    /// or the new call was refused, or nothing came in time (408).
    Transfer {
        call: CallRef,
        result: Result<(), u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// CANCEL before answer.
    Cancelled,
    RemoteBye,
    LocalBye,
    /// The answer was never acknowledged (timer H); Izwi sent BYE.
    NoAck,
    Rejected(u16),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    /// Messages that could not be parsed or answered, dropped.
    pub dropped: u64,
    /// Malformed requests answered with 400, 501 or 505.
    pub bad_requests: u64,
    pub retransmissions_absorbed: u64,
    pub calls: u64,
    pub challenged: u64,
    pub forbidden: u64,
    /// Credentials refused, by [`Failure`] (in [`Failure::ALL`] order).
    pub auth_failures: [u64; Failure::ALL.len()],
    /// Refused without a challenge: the source failed too often lately.
    pub auth_blocked: u64,
    /// Calls refused with 503: every call slot taken.
    pub busy: u64,
    /// Calls refused with 503: the source holds its share of call slots.
    pub source_busy: u64,
    /// Merged requests answered with 482 (RFC 3261 §8.2.2.2).
    pub merged: u64,
    /// New calls refused with 503 while draining.
    pub drained: u64,
}

/// What a draining node tells callers and health checks: try elsewhere,
/// and not here again for this long (seconds).
const DRAIN_RETRY_AFTER: u64 = 120;

#[derive(Debug, Clone)]
pub struct UaConfig {
    pub identity: Identity,
    /// host:port put in the Via of requests Izwi sends.
    pub via_host: String,
    pub max_calls: usize,
    /// Calls one source address may hold at once (sources on the allow-list
    /// are trusted trunks and only bound by `max_calls`).
    pub max_calls_per_source: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    /// INVITE received, waiting for the application.
    Offered,
    /// 2xx sent, waiting for ACK.
    Answered,
    Confirmed,
    /// Non-2xx final sent, waiting for ACK.
    Rejected,
}

struct Retransmit {
    at: Instant,
    interval: Duration,
    until: Instant,
}

struct Leg {
    call_id: String,
    remote_tag: String,
    local_tag: String,
    invite: Parsed,
    peer: SocketAddr,
    transport: Transport,
    state: LegState,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: u32,
    /// The From of their INVITE and our To (with tags): the dialog's two ends.
    remote_party: String,
    local_party: String,
    /// The request whose final response is being retransmitted (INVITE or re-INVITE).
    pending: Parsed,
    last_response: Option<String>,
    retransmit: Option<Retransmit>,
    reoffer_waiting: bool,
    /// Counted among the calls in progress (not yet refused or ended).
    live: bool,
    /// Bytes held for this leg while it is counted among the refused ones.
    rejected_bytes: Option<usize>,
    /// Izwi's own host:port for this call (Contact, Via of its requests),
    /// when it differs from the configured one.
    local_host: Option<SocketAddr>,
}

impl Leg {
    /// What the leg holds in memory, about.
    fn bytes(&self) -> usize {
        self.invite.size + self.pending.size + self.last_response.as_ref().map_or(0, String::len)
    }
}

struct DoneServerTx {
    response: String,
    to: SocketAddr,
    transport: Transport,
    expires: Instant,
}

struct ClientTx {
    request: String,
    to: SocketAddr,
    transport: Transport,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// A transfer under way: our REFER, and until when its outcome may come.
struct Referring {
    branch: String,
    /// Its CSeq: the `id` of the NOTIFYs that report on it (RFC 3515 §2.4.6).
    cseq: u32,
    until: Instant,
    /// The caller's side took it (2xx to the REFER).
    accepted: bool,
}

/// What a timer in [`UserAgent`]'s heap is for. Entries are not removed when
/// their transaction changes: a popped entry that is no longer due does nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Leg(CallRef),
    Client(String),
    Transfer(CallRef),
}

pub struct UserAgent {
    cfg: UaConfig,
    access: AccessPolicy,
    legs: HashMap<CallRef, Leg>,
    /// (Call-ID, remote tag) → call.
    by_dialog: HashMap<(String, String), CallRef>,
    /// Finished server transactions whose requests changed state (BYE): their
    /// answers absorb retransmissions. Requests that changed nothing are
    /// answered afresh instead, so a flood of them leaves nothing behind.
    done: HashMap<(String, String), DoneServerTx>,
    /// The keys of `done` in the order they expire (all live [`TIMER_H`]).
    done_order: VecDeque<(Instant, (String, String))>,
    clients: HashMap<String, ClientTx>,
    /// Our REFERs waiting for their answer, by branch, and the calls
    /// waiting for the NOTIFY that says how the transfer went.
    refers: HashMap<String, CallRef>,
    transferring: HashMap<CallRef, Referring>,
    /// Retransmission and give-up times of legs and client transactions.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Calls in progress (legs not refused or ended), in all and per source.
    live: usize,
    live_by_source: HashMap<IpAddr, usize>,
    /// Legs refused and waiting for the ACK of their refusal, and their bytes.
    rejected: usize,
    rejected_bytes: usize,
    done_bytes: usize,
    client_bytes: usize,
    refused_log: LogGate,
    /// Izwi's registration at a trunk, when configured.
    registration: Option<Registration>,
    out: VecDeque<Output>,
    stats: Stats,
    next_call: u64,
    /// Stopping: calls in progress go on, new ones are refused with 503 and
    /// OPTIONS answered 503 (a dispatcher's health check takes the node out).
    draining: bool,
}

impl UserAgent {
    pub fn new(cfg: UaConfig) -> UserAgent {
        UserAgent::with_access(cfg, AccessPolicy::open())
    }

    pub fn with_access(cfg: UaConfig, access: AccessPolicy) -> UserAgent {
        UserAgent {
            cfg,
            access,
            legs: HashMap::new(),
            by_dialog: HashMap::new(),
            done: HashMap::new(),
            done_order: VecDeque::new(),
            clients: HashMap::new(),
            refers: HashMap::new(),
            transferring: HashMap::new(),
            timers: BinaryHeap::new(),
            live: 0,
            live_by_source: HashMap::new(),
            rejected: 0,
            rejected_bytes: 0,
            done_bytes: 0,
            client_bytes: 0,
            refused_log: LogGate::new(LOG_LINES, LOG_WINDOW),
            registration: None,
            out: VecDeque::new(),
            stats: Stats::default(),
            next_call: 1,
            draining: false,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Legs held: calls in progress and refused calls waiting for an ACK.
    pub fn active_calls(&self) -> usize {
        self.legs.len()
    }

    /// Calls in progress: neither refused nor ended.
    pub fn live_calls(&self) -> usize {
        self.live
    }

    /// Takes no new calls from now on; the calls in progress go on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Finished transactions and timers held (bounded, for tests of floods).
    pub fn held(&self) -> (usize, usize) {
        (self.done.len(), self.timers.len())
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(reg) = self.registration.as_mut() {
            while let Some((to, transport, data)) = reg.poll_transmit() {
                self.out.push_back(Output::Transmit {
                    to,
                    transport,
                    data,
                });
            }
        }
        self.out.pop_front()
    }

    /// Starts registering at a trunk (and keeps the registration fresh).
    pub fn register(&mut self, cfg: RegisterConfig, now: Instant) {
        self.registration = Some(Registration::new(cfg, now));
    }

    /// Removes the registration (`Expires: 0`), for shutdown.
    pub fn unregister(&mut self, now: Instant) {
        if let Some(reg) = self.registration.as_mut() {
            reg.unregister(now);
        }
    }

    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// When [`UserAgent::handle_timeout`] must next be called: the earliest
    /// of three queues' heads, so O(1) however many transactions are held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.timers.peek().map(|Reverse((at, _))| *at);
        let done = self.done_order.front().map(|(at, _)| *at);
        let registration = self.registration.as_ref().and_then(|r| r.poll_timeout());
        [timers, done, registration].into_iter().flatten().min()
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    /// The leg no longer counts as a call in progress.
    fn release(&mut self, call: CallRef) {
        let Some(leg) = self.legs.get_mut(&call).filter(|l| l.live) else {
            return;
        };
        leg.live = false;
        let ip = crate::limits::source_key(leg.peer.ip());
        self.live = self.live.saturating_sub(1);
        if let Some(n) = self.live_by_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.live_by_source.remove(&ip);
            }
        }
    }

    fn send(&mut self, to: SocketAddr, transport: Transport, data: String) {
        self.out.push_back(Output::Transmit {
            to,
            transport,
            data,
        });
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    /// One message from the network.
    pub fn handle_message(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        transport: Transport,
        now: Instant,
    ) {
        self.stats.received += 1;
        let parsed = match message::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.malformed(bytes, from, transport, &e);
                return;
            }
        };
        match &parsed.msg {
            rsip::SipMessage::Request(req) => {
                let method = req.method;
                self.request(parsed, method, from, transport, now);
            }
            rsip::SipMessage::Response(resp) => {
                let code = resp.status_code.code();
                if let Some(reg) = self.registration.as_mut()
                    && reg.handle_response(&parsed, now)
                {
                    return;
                }
                if code >= 200
                    && let Some(call) = self.refers.remove(&parsed.branch)
                {
                    if let Some(c) = self.clients.remove(&parsed.branch) {
                        self.client_bytes -= c.request.len();
                    }
                    let current = self
                        .transferring
                        .get(&call)
                        .is_some_and(|r| r.branch == parsed.branch);
                    if current && code >= 300 {
                        self.end_transfer(call);
                        self.event(Event::Transfer {
                            call,
                            result: Err(code),
                        });
                    } else if current && let Some(r) = self.transferring.get_mut(&call) {
                        r.accepted = true;
                    }
                    return;
                }
                // Otherwise only our BYEs are client transactions.
                if code >= 200 {
                    match self.clients.remove(&parsed.branch) {
                        Some(c) => self.client_bytes -= c.request.len(),
                        None => self.stats.dropped += 1,
                    }
                }
            }
        }
    }

    /// A request that failed to parse gets 400 (or 501 for an unknown method) when
    /// the headers needed to route a response are there; otherwise it is dropped.
    fn malformed(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        transport: Transport,
        err: &ParseError,
    ) {
        // A keep-alive (RFC 5626 CRLFs, which phones send over UDP too, or an
        // empty datagram) is no message to answer or count.
        if bytes.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            return;
        }
        let Some(resp) = bad_request_response(bytes, from, err, &self.cfg.identity) else {
            tracing::debug!(%from, error = %err, "dropped unparseable SIP message");
            self.stats.dropped += 1;
            return;
        };
        tracing::debug!(%from, error = %err, "answered malformed SIP request");
        self.stats.bad_requests += 1;
        self.send(from, transport, resp);
    }

    fn request(
        &mut self,
        p: Parsed,
        method: Method,
        from: SocketAddr,
        transport: Transport,
        now: Instant,
    ) {
        if method != Method::Ack && method != Method::Invite {
            let key = (p.branch.clone(), method.to_string());
            if let Some(d) = self.done.get(&key) {
                let (to, t, r) = (d.to, d.transport, d.response.clone());
                self.stats.retransmissions_absorbed += 1;
                self.send(to, t, r);
                return;
            }
        }
        match method {
            Method::Invite => self.invite(p, from, transport, now),
            Method::Ack => self.ack(&p),
            Method::Bye => self.bye(p, from, transport, now),
            Method::Cancel => self.cancel(p, from, transport, now),
            // Out of dialog only: an OPTIONS inside a call is a keep-alive
            // of that call, which goes on.
            Method::Options if self.draining && p.to_tag.is_none() => {
                let extra = [
                    ("Allow", ALLOW.to_string()),
                    ("Retry-After", DRAIN_RETRY_AFTER.to_string()),
                ];
                self.answer_stateless(&p, from, transport, (503, "Service Unavailable"), &extra);
            }
            Method::Options => {
                let extra = [
                    ("Allow", ALLOW.to_string()),
                    ("Accept", "application/sdp".to_string()),
                ];
                self.answer_stateless(&p, from, transport, (200, "OK"), &extra);
            }
            Method::Notify => self.notify(p, from, transport, now),
            Method::Register
            | Method::Subscribe
            | Method::Message
            | Method::Info
            | Method::PRack
            | Method::Update
            | Method::Refer
            | Method::Publish => {
                let extra = [("Allow", ALLOW.to_string())];
                self.answer_stateless(&p, from, transport, (405, "Method Not Allowed"), &extra);
            }
        }
    }

    /// Answers a non-INVITE request that changed nothing: a retransmission
    /// of it is answered afresh, so nothing is kept.
    fn answer_stateless(
        &mut self,
        p: &Parsed,
        from: SocketAddr,
        transport: Transport,
        status: (u16, &str),
        extra: &[(&str, String)],
    ) -> String {
        let tag = p.to_tag.is_none().then(|| message::token("iz"));
        let r = message::response(
            p,
            from,
            status,
            tag.as_deref(),
            &self.cfg.identity,
            extra,
            None,
        );
        self.send(from, transport, r.clone());
        r
    }

    /// Answers a non-INVITE request that changed state (a BYE that ended a
    /// call) and, over UDP, keeps the answer for its retransmissions (timer J).
    fn finish_non_invite(
        &mut self,
        p: &Parsed,
        from: SocketAddr,
        transport: Transport,
        status: (u16, &str),
        now: Instant,
    ) {
        let r = self.answer_stateless(p, from, transport, status, &[]);
        if transport.reliable() {
            return;
        }
        let method = p
            .request()
            .map(|r| r.method.to_string())
            .unwrap_or_default();
        let key = (p.branch.clone(), method);
        while self.done.len() >= MAX_DONE || self.done_bytes + r.len() > MAX_DONE_BYTES {
            let Some((_, oldest)) = self.done_order.pop_front() else {
                break;
            };
            if let Some(d) = self.done.remove(&oldest) {
                self.done_bytes -= d.response.len();
            }
        }
        let expires = now + TIMER_H;
        self.done_bytes += r.len();
        self.done_order.push_back((expires, key.clone()));
        self.done.insert(
            key,
            DoneServerTx {
                response: r,
                to: from,
                transport,
                expires,
            },
        );
    }

    fn leg_of(&self, p: &Parsed) -> Option<CallRef> {
        let remote = p.from_tag.clone()?;
        let call = *self.by_dialog.get(&(p.call_id.clone(), remote))?;
        let leg = self.legs.get(&call)?;
        // An in-dialog request must carry our tag.
        match &p.to_tag {
            Some(t) if *t == leg.local_tag => Some(call),
            None => Some(call),
            Some(_) => None,
        }
    }

    fn invite(&mut self, p: Parsed, from: SocketAddr, transport: Transport, now: Instant) {
        if let Some(call) = self.leg_of(&p) {
            let leg = &self.legs[&call];
            if leg.pending.branch == p.branch {
                // A retransmitted INVITE: repeat the last response.
                self.stats.retransmissions_absorbed += 1;
                if let Some(r) = leg.last_response.clone() {
                    let (to, t) = (leg.peer, leg.transport);
                    self.send(to, t, r);
                }
                return;
            }
            if p.to_tag.is_some() {
                self.reinvite(call, p, from, transport);
                return;
            }
            // RFC 3261 §8.2.2.2: the From tag and Call-ID of a call in
            // progress, no To tag, another branch: a merged request (a fork
            // that came back by another path, or a Call-ID collision).
            self.stats.merged += 1;
            self.finish_invite_without_leg(&p, from, transport, 482, "Loop Detected");
            return;
        }
        if p.to_tag.is_some() {
            self.finish_invite_without_leg(
                &p,
                from,
                transport,
                481,
                "Call/Transaction Does Not Exist",
            );
            return;
        }
        let Some(remote_tag) = p.from_tag.clone() else {
            self.finish_invite_without_leg(&p, from, transport, 400, "Missing From tag");
            return;
        };
        if self.draining {
            self.stats.drained += 1;
            self.refuse(
                &p,
                from,
                transport,
                (503, "Service Unavailable"),
                Some(DRAIN_RETRY_AFTER),
            );
            return;
        }
        let credentials = p
            .header_value("Authorization")
            .or_else(|| p.header_value("Proxy-Authorization"));
        let request = AuthRequest {
            source: from.ip(),
            method: "INVITE",
            request_uri: &p.request_uri,
            call_id: &p.call_id,
            authorization: credentials.as_deref(),
        };
        // Trunks on the allow-list, and callers who proved the password, are
        // trusted: only `max_calls` bounds them. The per-source share is for
        // the open door.
        let trusted = self.access.trusted(from.ip());
        let trusted = match self.access.check(&request, now) {
            Verdict::Allowed => trusted || self.access.authenticates(),
            Verdict::Challenge { www, failure } => {
                self.stats.challenged += 1;
                if let Some(f) = failure {
                    self.stats.auth_failures[f as usize] += 1;
                    if let Some(held) = self.refused_log.pass(now) {
                        tracing::info!(source = %from.ip(), reason = f.label(), held, "credentials refused");
                    }
                }
                let r = message::response(
                    &p,
                    from,
                    (401, "Unauthorized"),
                    Some(&message::token("iz")),
                    &self.cfg.identity,
                    &[("WWW-Authenticate", www)],
                    None,
                );
                self.send(from, transport, r);
                return;
            }
            Verdict::Forbidden => {
                self.stats.forbidden += 1;
                if let Some(held) = self.refused_log.pass(now) {
                    tracing::info!(source = %from.ip(), held, "call from an address not allowed");
                }
                self.refuse(&p, from, transport, (403, "Forbidden"), None);
                return;
            }
            Verdict::Blocked { retry_after_secs } => {
                self.stats.auth_blocked += 1;
                if let Some(held) = self.refused_log.pass(now) {
                    tracing::info!(source = %from.ip(), retry_after_secs, held, "too many failed authentications; refused");
                }
                self.refuse(
                    &p,
                    from,
                    transport,
                    (403, "Too Many Failed Attempts"),
                    Some(retry_after_secs),
                );
                return;
            }
        };
        if self.live >= self.cfg.max_calls {
            self.stats.busy += 1;
            self.refuse(&p, from, transport, (503, "Service Unavailable"), Some(30));
            return;
        }
        let ip = crate::limits::source_key(from.ip());
        if !trusted
            && self.live_by_source.get(&ip).copied().unwrap_or(0) >= self.cfg.max_calls_per_source
        {
            self.stats.source_busy += 1;
            if let Some(held) = self.refused_log.pass(now) {
                tracing::info!(source = %ip, held, "source holds its share of call slots; refused");
            }
            self.refuse(&p, from, transport, (503, "Service Unavailable"), Some(10));
            return;
        }
        let call = CallRef(self.next_call);
        self.next_call += 1;
        self.stats.calls += 1;
        let local_tag = message::token("iz");
        let trying = message::response(
            &p,
            from,
            (100, "Trying"),
            None,
            &self.cfg.identity,
            &[],
            None,
        );
        self.send(from, transport, trying.clone());
        let contact = p.header_value("Contact").map(|c| message::uri_of(&c));
        let remote_target =
            contact.unwrap_or_else(|| message::uri_of(&p.header_value("From").unwrap_or_default()));
        let remote_party = p.header_value("From").unwrap_or_default();
        let mut local_party = p.header_value("To").unwrap_or_default();
        local_party.push_str(&format!(";tag={local_tag}"));
        let offer = (!p.body().is_empty()).then(|| String::from_utf8_lossy(p.body()).into_owned());
        let to_uri = message::uri_of(&p.header_value("To").unwrap_or_default());
        let leg = Leg {
            call_id: p.call_id.clone(),
            remote_tag: remote_tag.clone(),
            local_tag,
            peer: from,
            transport,
            state: LegState::Offered,
            remote_target,
            route_set: p.header_values("Record-Route"),
            local_cseq: 1,
            remote_cseq: p.cseq,
            remote_party: remote_party.clone(),
            local_party,
            pending: p.clone(),
            invite: p.clone(),
            last_response: Some(trying),
            retransmit: None,
            reoffer_waiting: false,
            live: true,
            rejected_bytes: None,
            local_host: None,
        };
        self.live += 1;
        *self
            .live_by_source
            .entry(crate::limits::source_key(from.ip()))
            .or_insert(0) += 1;
        self.by_dialog.insert((p.call_id.clone(), remote_tag), call);
        self.legs.insert(call, leg);
        self.event(Event::Incoming {
            call,
            headers: p.header_pairs(MAX_ROUTING_HEADERS, MAX_ROUTING_VALUE),
            request_uri: p.request_uri.clone(),
            call_id: p.call_id,
            from: message::uri_of(&remote_party),
            to: to_uri,
            offer,
            peer: from,
        });
    }

    /// A final refusal of an INVITE that made no leg, sent once.
    fn refuse(
        &mut self,
        p: &Parsed,
        from: SocketAddr,
        transport: Transport,
        status: (u16, &str),
        retry_after: Option<u64>,
    ) {
        let extra: Vec<(&str, String)> = retry_after
            .map(|s| ("Retry-After", s.to_string()))
            .into_iter()
            .collect();
        let r = message::response(
            p,
            from,
            status,
            Some(&message::token("iz")),
            &self.cfg.identity,
            &extra,
            None,
        );
        self.send(from, transport, r);
    }

    fn finish_invite_without_leg(
        &mut self,
        p: &Parsed,
        from: SocketAddr,
        transport: Transport,
        code: u16,
        reason: &str,
    ) {
        let r = message::response(
            p,
            from,
            (code, reason),
            Some(&message::token("iz")),
            &self.cfg.identity,
            &[],
            None,
        );
        self.send(from, transport, r);
    }

    fn reinvite(&mut self, call: CallRef, p: Parsed, from: SocketAddr, transport: Transport) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        if leg.state == LegState::Rejected {
            // A refused call has no dialog to modify.
            let status = (481, "Call/Transaction Does Not Exist");
            let r = message::response(&p, from, status, None, &self.cfg.identity, &[], None);
            self.send(from, transport, r);
            return;
        }
        if leg.reoffer_waiting || leg.state == LegState::Answered {
            // RFC 3261 §14.2: one INVITE at a time within a dialog.
            let r = message::response(
                &p,
                from,
                (500, "Server Internal Error"),
                None,
                &self.cfg.identity,
                &[("Retry-After", "1".into())],
                None,
            );
            self.send(from, transport, r);
            return;
        }
        if p.cseq <= leg.remote_cseq {
            let r = message::response(
                &p,
                from,
                (500, "Server Internal Error"),
                None,
                &self.cfg.identity,
                &[],
                None,
            );
            self.send(from, transport, r);
            return;
        }
        leg.remote_cseq = p.cseq;
        leg.reoffer_waiting = true;
        if let Some(c) = p.header_value("Contact") {
            leg.remote_target = message::uri_of(&c);
        }
        let trying = message::response(
            &p,
            from,
            (100, "Trying"),
            None,
            &self.cfg.identity,
            &[],
            None,
        );
        leg.last_response = Some(trying.clone());
        leg.pending = p.clone();
        let offer = (!p.body().is_empty()).then(|| String::from_utf8_lossy(p.body()).into_owned());
        self.send(from, transport, trying);
        self.event(Event::Reoffer { call, offer });
    }

    fn ack(&mut self, p: &Parsed) {
        let Some(call) = self.leg_of(p) else { return };
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        match leg.state {
            LegState::Answered => {
                leg.retransmit = None;
                leg.state = LegState::Confirmed;
                let first = leg.pending.branch == leg.invite.branch;
                let answer =
                    (!p.body().is_empty()).then(|| String::from_utf8_lossy(p.body()).into_owned());
                if first || answer.is_some() {
                    self.event(Event::Confirmed { call, answer });
                }
            }
            LegState::Rejected => {
                self.remove(call);
            }
            // The ACK of a refused re-INVITE: its refusal is no longer resent.
            LegState::Confirmed if p.cseq == leg.pending.cseq => leg.retransmit = None,
            LegState::Offered | LegState::Confirmed => {}
        }
    }

    fn bye(&mut self, p: Parsed, from: SocketAddr, transport: Transport, now: Instant) {
        let Some(call) = self.leg_of(&p).filter(|_| p.to_tag.is_some()) else {
            self.no_such_call(&p, from, transport);
            return;
        };
        self.finish_non_invite(&p, from, transport, (200, "OK"), now);
        // Many transferees hang up on the transferor once the new call is
        // up, before (or instead of) the final NOTIFY.
        let handed_on = self.transferring.get(&call).is_some_and(|r| r.accepted);
        self.remove(call);
        if handed_on {
            self.event(Event::Transfer {
                call,
                result: Ok(()),
            });
        }
        self.event(Event::Ended {
            call,
            reason: EndReason::RemoteBye,
        });
    }

    fn no_such_call(&mut self, p: &Parsed, from: SocketAddr, transport: Transport) {
        let status = (481, "Call/Transaction Does Not Exist");
        self.answer_stateless(p, from, transport, status, &[]);
    }

    fn cancel(&mut self, p: Parsed, from: SocketAddr, transport: Transport, now: Instant) {
        let call = self.leg_of(&p).filter(|c| {
            self.legs
                .get(c)
                .is_some_and(|l| l.invite.branch == p.branch)
        });
        let Some(call) = call else {
            self.no_such_call(&p, from, transport);
            return;
        };
        self.answer_stateless(&p, from, transport, (200, "OK"), &[]);
        if self
            .legs
            .get(&call)
            .is_some_and(|l| l.state == LegState::Offered)
        {
            self.final_response(call, 487, "Request Terminated", None, now);
            self.event(Event::Ended {
                call,
                reason: EndReason::Cancelled,
            });
        }
    }

    fn remove(&mut self, call: CallRef) {
        self.release(call);
        self.forget_transfer(call);
        if let Some(leg) = self.legs.remove(&call) {
            if let Some(bytes) = leg.rejected_bytes {
                self.rejected -= 1;
                self.rejected_bytes -= bytes;
            }
            self.by_dialog.remove(&(leg.call_id, leg.remote_tag));
        }
    }

    /// Sends a final response to the pending (re-)INVITE and schedules its
    /// retransmission until ACK.
    fn final_response(
        &mut self,
        call: CallRef,
        code: u16,
        reason: &str,
        sdp: Option<&str>,
        now: Instant,
    ) {
        let id = self.cfg.identity.clone();
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        let mut extra = vec![("Contact", format!("<{}>", contact_of(&id, leg.local_host)))];
        if (200..300).contains(&code) {
            extra.push(("Allow", ALLOW.to_string()));
            extra.push(("Supported", String::new()));
        }
        let r = message::response(
            &leg.pending,
            leg.peer,
            (code, reason),
            Some(&leg.local_tag),
            &id,
            &extra,
            sdp.map(|s| ("application/sdp", s)),
        );
        let success = (200..300).contains(&code);
        let initial = leg.pending.branch == leg.invite.branch;
        // 2xx is retransmitted by the UA core on every transport (RFC 3261 §13.3.1.4);
        // other finals only where the transport is unreliable (timer G), and
        // only while few refused calls are held.
        let room = self.rejected < MAX_REJECTED
            && self.rejected_bytes + leg.bytes() + r.len() <= MAX_REJECTED_BYTES;
        let retransmit = success || (!leg.transport.reliable() && (!initial || room));
        leg.retransmit = retransmit.then(|| Retransmit {
            at: now + T1,
            interval: T1,
            until: now + TIMER_H,
        });
        leg.last_response = Some(r.clone());
        leg.reoffer_waiting = false;
        let refused = initial && !success;
        if initial {
            leg.state = if success {
                LegState::Answered
            } else {
                LegState::Rejected
            };
        } else if success {
            leg.state = LegState::Answered;
        }
        let (to, t) = (leg.peer, leg.transport);
        if retransmit {
            self.schedule(now + T1, Timer::Leg(call));
        }
        if refused {
            self.release(call);
            if retransmit {
                if let Some(leg) = self.legs.get_mut(&call) {
                    let bytes = leg.bytes();
                    leg.rejected_bytes = Some(bytes);
                    self.rejected += 1;
                    self.rejected_bytes += bytes;
                }
            } else {
                self.remove(call);
            }
        }
        self.send(to, t, r);
    }

    /// The host:port this call reaches Izwi at (the local address of the
    /// route towards the caller): its Contact and the Via of Izwi's requests.
    pub fn set_local_host(&mut self, call: CallRef, host: SocketAddr) {
        if let Some(leg) = self.legs.get_mut(&call) {
            leg.local_host = Some(host);
        }
    }

    /// 180 Ringing for a call not yet answered.
    pub fn ringing(&mut self, call: CallRef) {
        let id = self.cfg.identity.clone();
        let Some(leg) = self
            .legs
            .get_mut(&call)
            .filter(|l| l.state == LegState::Offered)
        else {
            return;
        };
        let r = message::response(
            &leg.invite,
            leg.peer,
            (180, "Ringing"),
            Some(&leg.local_tag),
            &id,
            &[("Contact", format!("<{}>", contact_of(&id, leg.local_host)))],
            None,
        );
        leg.last_response = Some(r.clone());
        let (to, t) = (leg.peer, leg.transport);
        self.send(to, t, r);
    }

    /// Answers an incoming call with an SDP answer.
    pub fn answer(&mut self, call: CallRef, sdp: &str, now: Instant) {
        if self
            .legs
            .get(&call)
            .is_some_and(|l| l.state == LegState::Offered)
        {
            self.final_response(call, 200, "OK", Some(sdp), now);
        }
    }

    /// Refuses an incoming call (e.g. 488 when no codec is common).
    pub fn reject(&mut self, call: CallRef, code: u16, reason: &str, now: Instant) {
        if self
            .legs
            .get(&call)
            .is_some_and(|l| l.state == LegState::Offered)
        {
            self.final_response(call, code, reason, None, now);
            self.event(Event::Ended {
                call,
                reason: EndReason::Rejected(code),
            });
        }
    }

    /// Answers a re-INVITE: `Ok(sdp)` accepts, `Err(code)` refuses and keeps the call.
    pub fn answer_reoffer(&mut self, call: CallRef, answer: Result<&str, u16>, now: Instant) {
        if !self.legs.get(&call).is_some_and(|l| l.reoffer_waiting) {
            return;
        }
        match answer {
            Ok(sdp) => self.final_response(call, 200, "OK", Some(sdp), now),
            Err(code) => {
                self.final_response(call, code, "Not Acceptable Here", None, now);
                if let Some(l) = self.legs.get_mut(&call) {
                    l.state = LegState::Confirmed;
                }
            }
        }
    }

    /// Ends a call from Izwi's side: BYE when answered, 480 before.
    pub fn hangup(&mut self, call: CallRef, now: Instant) {
        let Some(leg) = self.legs.get(&call) else {
            return;
        };
        if leg.state == LegState::Offered {
            self.reject(call, 480, "Temporarily Unavailable", now);
            return;
        }
        self.send_bye(call, now);
        self.event(Event::Ended {
            call,
            reason: EndReason::LocalBye,
        });
    }

    fn forget_transfer(&mut self, call: CallRef) {
        self.end_transfer(call);
    }

    /// The transfer of `call` is over: its REFER is neither awaited nor
    /// retransmitted any more. `true` if there was one.
    fn end_transfer(&mut self, call: CallRef) -> bool {
        let Some(r) = self.transferring.remove(&call) else {
            return false;
        };
        self.refers.remove(&r.branch);
        if let Some(c) = self.clients.remove(&r.branch) {
            self.client_bytes -= c.request.len();
        }
        true
    }

    /// Blind transfer (RFC 3515): asks the caller's side to call `target`
    /// instead. The result comes as [`Event::Transfer`]; the call itself goes
    /// on until Izwi hangs it up. `false` when the call cannot be transferred
    /// (not confirmed, or a transfer already under way).
    pub fn refer(&mut self, call: CallRef, target: &str, now: Instant) -> bool {
        if self.transferring.contains_key(&call) {
            return false;
        }
        let Some(leg) = self.legs.get_mut(&call) else {
            return false;
        };
        if leg.state != LegState::Confirmed {
            return false;
        }
        leg.local_cseq += 1;
        let branch = message::token("z9hG4bK");
        let contact = contact_of(&self.cfg.identity, leg.local_host);
        let extra = [
            ("Refer-To", format!("<{target}>")),
            ("Referred-By", format!("<{contact}>")),
        ];
        let refer = message::in_dialog_request(
            &message::DialogRequest {
                method: "REFER",
                target: &leg.remote_target,
                route: &leg.route_set,
                via_host: &leg
                    .local_host
                    .map_or_else(|| self.cfg.via_host.clone(), |h| h.to_string()),
                transport: leg.transport.as_str(),
                branch: &branch,
                from: &leg.local_party,
                to: &leg.remote_party,
                call_id: &leg.call_id,
                cseq: leg.local_cseq,
                contact: &contact,
                extra: &extra,
            },
            &self.cfg.identity,
            None,
        );
        let (peer, transport, cseq) = (leg.peer, leg.transport, leg.local_cseq);
        self.send(peer, transport, refer.clone());
        self.refers.insert(branch.clone(), call);
        self.transferring.insert(
            call,
            Referring {
                branch: branch.clone(),
                cseq,
                until: now + TRANSFER_WAIT,
                accepted: false,
            },
        );
        self.schedule(now + TRANSFER_WAIT, Timer::Transfer(call));
        self.track_client(branch, refer, peer, transport, now);
        true
    }

    /// The referee's word on a transfer (RFC 3515 NOTIFY with a sipfrag).
    fn notify(&mut self, p: Parsed, from: SocketAddr, transport: Transport, now: Instant) {
        let Some(call) = self.leg_of(&p).filter(|_| p.to_tag.is_some()) else {
            self.no_such_call(&p, from, transport);
            return;
        };
        let event = p
            .header_value("Event")
            .or_else(|| p.header_value("o"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut parts = event.split(';').map(str::trim);
        if parts.next() != Some("refer") {
            self.answer_stateless(&p, from, transport, (489, "Bad Event"), &[]);
            return;
        }
        // Which REFER it reports on (none: the dialog's first).
        let id = parts
            .find_map(|a| a.strip_prefix("id="))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let ours = self
            .transferring
            .get(&call)
            .is_some_and(|r| id.is_none_or(|id| id == r.cseq));
        if !ours {
            // RFC 6665: no such subscription.
            self.answer_stateless(
                &p,
                from,
                transport,
                (481, "Subscription Does Not Exist"),
                &[],
            );
            return;
        }
        self.finish_non_invite(&p, from, transport, (200, "OK"), now);
        // "SIP/2.0 200 OK" (the status line of the new call's answer).
        let frag = String::from_utf8_lossy(p.body()).to_string();
        let code = frag
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        let Some(code) = code else {
            tracing::info!(call = call.0, "a transfer NOTIFY without a status line");
            return;
        };
        if code < 200 {
            return;
        }
        self.end_transfer(call);
        let result = if code < 300 { Ok(()) } else { Err(code) };
        self.event(Event::Transfer { call, result });
    }

    /// Retransmits a request over UDP until its final answer (timer F).
    fn track_client(
        &mut self,
        branch: String,
        request: String,
        to: SocketAddr,
        transport: Transport,
        now: Instant,
    ) {
        if transport.reliable()
            || self.clients.len() >= MAX_CLIENTS
            || self.client_bytes + request.len() > MAX_CLIENT_BYTES
        {
            return;
        }
        self.client_bytes += request.len();
        self.schedule(now + T1, Timer::Client(branch.clone()));
        self.clients.insert(
            branch,
            ClientTx {
                request,
                to,
                transport,
                next: now + T1,
                interval: T1,
                give_up: now + TIMER_H,
            },
        );
    }

    fn send_bye(&mut self, call: CallRef, now: Instant) {
        self.release(call);
        self.forget_transfer(call);
        let Some(mut leg) = self.legs.remove(&call) else {
            return;
        };
        self.by_dialog
            .remove(&(leg.call_id.clone(), leg.remote_tag.clone()));
        leg.local_cseq += 1;
        let branch = message::token("z9hG4bK");
        let bye = message::in_dialog_request(
            &message::DialogRequest {
                method: "BYE",
                target: &leg.remote_target,
                route: &leg.route_set,
                via_host: &leg
                    .local_host
                    .map_or_else(|| self.cfg.via_host.clone(), |h| h.to_string()),
                transport: leg.transport.as_str(),
                branch: &branch,
                from: &leg.local_party,
                to: &leg.remote_party,
                call_id: &leg.call_id,
                cseq: leg.local_cseq,
                contact: &contact_of(&self.cfg.identity, leg.local_host),
                extra: &[],
            },
            &self.cfg.identity,
            None,
        );
        self.send(leg.peer, leg.transport, bye.clone());
        self.track_client(branch, bye, leg.peer, leg.transport, now);
    }

    /// Retransmissions and give-ups that are due: each costs O(log n).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(reg) = self.registration.as_mut() {
            reg.handle_timeout(now);
        }
        while let Some(Reverse((at, _))) = self.timers.peek()
            && *at <= now
        {
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Leg(call) => self.leg_timer(call, now),
                Timer::Client(branch) => self.client_timer(branch, now),
                Timer::Transfer(call) => {
                    if self.transferring.get(&call).is_some_and(|r| r.until <= now) {
                        self.end_transfer(call);
                        tracing::info!(call = call.0, "no word on the transfer in time");
                        self.event(Event::Transfer {
                            call,
                            result: Err(408),
                        });
                    }
                }
            }
        }
        while let Some((at, _)) = self.done_order.front()
            && *at <= now
        {
            let Some((_, key)) = self.done_order.pop_front() else {
                break;
            };
            if self.done.get(&key).is_some_and(|d| d.expires <= now)
                && let Some(d) = self.done.remove(&key)
            {
                self.done_bytes -= d.response.len();
            }
        }
    }

    fn leg_timer(&mut self, call: CallRef, now: Instant) {
        let Some(leg) = self.legs.get_mut(&call) else {
            return;
        };
        let Some(r) = leg.retransmit.as_mut() else {
            return;
        };
        if now >= r.until {
            leg.retransmit = None;
            match leg.state {
                LegState::Answered => {
                    tracing::info!(call = call.0, "no ACK for the answer; hanging up");
                    self.send_bye(call, now);
                    self.event(Event::Ended {
                        call,
                        reason: EndReason::NoAck,
                    });
                }
                LegState::Rejected => self.remove(call),
                // A refused re-INVITE never acknowledged: the call goes on.
                LegState::Offered | LegState::Confirmed => {}
            }
        } else if now >= r.at {
            r.interval = (r.interval * 2).min(T2);
            r.at = now + r.interval;
            let next = r.at.min(r.until);
            let resend = leg
                .last_response
                .clone()
                .map(|resp| (leg.peer, leg.transport, resp));
            self.schedule(next, Timer::Leg(call));
            if let Some((to, t, resp)) = resend {
                self.send(to, t, resp);
            }
        }
    }

    fn client_timer(&mut self, branch: String, now: Instant) {
        let Some(c) = self.clients.get_mut(&branch) else {
            return;
        };
        if now >= c.give_up {
            if let Some(c) = self.clients.remove(&branch) {
                self.client_bytes -= c.request.len();
            }
            if let Some(call) = self.refers.remove(&branch)
                && self
                    .transferring
                    .get(&call)
                    .is_some_and(|r| r.branch == branch && !r.accepted)
                && self.end_transfer(call)
            {
                self.event(Event::Transfer {
                    call,
                    result: Err(408),
                });
            }
        } else if now >= c.next {
            c.interval = (c.interval * 2).min(T2);
            c.next = now + c.interval;
            let (next, to, t, req) = (c.next.min(c.give_up), c.to, c.transport, c.request.clone());
            self.schedule(next, Timer::Client(branch));
            self.send(to, t, req);
        }
    }
}

/// The Contact of a call: the configured one, or at the call's own local host.
fn contact_of(id: &Identity, local_host: Option<SocketAddr>) -> String {
    match local_host {
        Some(h) => format!("sip:izwi@{h}"),
        None => id.contact.clone(),
    }
}

/// A 400 (501 for an unknown method, 505 for another SIP version) built from the
/// raw header lines of a request that rsip could not take, when Via, From, To,
/// Call-ID and CSeq are all present.
fn bad_request_response(
    bytes: &[u8],
    from: SocketAddr,
    err: &ParseError,
    id: &Identity,
) -> Option<String> {
    if bytes.len() > message::MAX_MESSAGE {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let start = lines.next()?;
    let mut parts = start.split(' ');
    let method = parts.next()?;
    let _uri = parts.next()?;
    let version = parts.next()?;
    let other_version = version
        .strip_prefix("SIP/")
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if (version != "SIP/2.0" && !other_version) || method.starts_with("SIP/") {
        return None;
    }
    let mut vias = Vec::new();
    let (mut from_h, mut to_h, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => vias.push(value),
            "from" | "f" => from_h = Some(value),
            "to" | "t" => to_h = Some(value),
            "call-id" | "i" => call_id = Some(value),
            "cseq" => cseq = Some(value),
            _ => {}
        }
    }
    if vias.is_empty() || method.eq_ignore_ascii_case("ACK") {
        return None;
    }
    let (from_h, to_h, call_id, cseq) = (from_h?, to_h?, call_id?, cseq?);
    // Echoing a control character would make the response as bad as the request.
    let echoed = vias.iter().chain([&from_h, &to_h, &call_id, &cseq]);
    if echoed
        .flat_map(|v| v.chars())
        .any(|c| c.is_ascii_control() && c != '\t')
    {
        return None;
    }
    // Method names are case-sensitive (the RFC 3261 §25.1 ABNF); rsip's parse is not.
    let known = method
        .parse::<Method>()
        .is_ok_and(|m| m.to_string() == method);
    let (code, reason) = if version != "SIP/2.0" {
        (505, "Version Not Supported".to_string())
    } else if known {
        (
            400,
            match err {
                ParseError::Header(h) => format!("Bad {h} Header"),
                ParseError::ContentLength { .. } => "Bad Content-Length".to_string(),
                _ => "Bad Request".to_string(),
            },
        )
    } else {
        (501, "Not Implemented".to_string())
    };
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (i, v) in vias.iter().enumerate() {
        if i == 0 {
            out.push_str(&format!("Via: {v};received={}\r\n", from.ip()));
        } else {
            out.push_str(&format!("Via: {v}\r\n"));
        }
    }
    let tag = if to_h.contains("tag=") {
        String::new()
    } else {
        format!(";tag={}", message::token("iz"))
    };
    out.push_str(&format!(
        "From: {from_h}\r\nTo: {to_h}{tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
    ));
    if code == 501 {
        out.push_str(&format!("Allow: {ALLOW}\r\n"));
    }
    out.push_str(&format!(
        "Server: {}\r\nContent-Length: 0\r\n\r\n",
        id.user_agent
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "127.0.0.1:5061";

    fn ua() -> UserAgent {
        UserAgent::new(UaConfig {
            identity: Identity {
                user_agent: "izwi-test".into(),
                contact: "sip:izwi@127.0.0.1:5060".into(),
            },
            via_host: "127.0.0.1:5060".into(),
            max_calls: 2,
            max_calls_per_source: 2,
        })
    }

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn req(
        method: &str,
        branch: &str,
        call_id: &str,
        cseq: u32,
        to_tag: Option<&str>,
        extra: &str,
        body: &str,
    ) -> String {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        format!(
            "{method} sip:izwi@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=ct\r\nTo: <sip:izwi@127.0.0.1>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{PEER}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// One UDP datagram from the peer.
    fn feed(ua: &mut UserAgent, msg: &str, now: Instant) {
        ua.handle_message(msg.as_bytes(), peer(), Transport::Udp, now);
    }

    fn drain(ua: &mut UserAgent) -> (Vec<String>, Vec<Event>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        while let Some(o) = ua.poll_output() {
            match o {
                Output::Transmit { data, .. } => sent.push(data),
                Output::Event(e) => events.push(e),
            }
        }
        (sent, events)
    }

    fn status(msg: &str) -> u16 {
        msg.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn to_tag(msg: &str) -> String {
        message::parse(msg.as_bytes()).unwrap().to_tag.unwrap()
    }

    fn incoming(ua: &mut UserAgent, now: Instant, call_id: &str) -> (CallRef, Vec<String>) {
        feed(
            ua,
            &req(
                "INVITE",
                "z9hG4bK-i",
                call_id,
                1,
                None,
                "Content-Type: application/sdp\r\n",
                "v=0\r\n",
            ),
            now,
        );
        let (sent, events) = drain(ua);
        let call = match &events[..] {
            [
                Event::Incoming {
                    call, offer, from, ..
                },
            ] => {
                assert_eq!(offer.as_deref(), Some("v=0\r\n"));
                assert_eq!(from, "sip:caller@127.0.0.1");
                *call
            }
            other => panic!("{other:?}"),
        };
        (call, sent)
    }

    #[test]
    fn a_call_answered_acknowledged_and_ended_by_the_caller() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, sent) = incoming(&mut ua, t0, "c1");
        assert_eq!(sent.len(), 1);
        assert_eq!(status(&sent[0]), 100);

        ua.answer(call, "v=0\r\nanswer\r\n", t0);
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(
            sent[0].contains("Content-Type: application/sdp") && sent[0].ends_with("answer\r\n")
        );
        assert!(sent[0].contains("Contact: <sip:izwi@127.0.0.1:5060>"));
        let tag = to_tag(&sent[0]);

        // 200 OK is retransmitted at T1, then 2·T1, until the ACK.
        ua.handle_timeout(t0 + T1);
        ua.handle_timeout(t0 + T1 + Duration::from_millis(600));
        ua.handle_timeout(t0 + T1 * 3);
        let (sent, _) = drain(&mut ua);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|m| status(m) == 200));

        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-a", "c1", 1, Some(&tag), "", ""),
            t0 + T1 * 3,
        );
        let (_, events) = drain(&mut ua);
        assert_eq!(events, vec![Event::Confirmed { call, answer: None }]);
        ua.handle_timeout(t0 + Duration::from_secs(10));
        assert!(drain(&mut ua).0.is_empty(), "retransmission after ACK");

        let bye = req("BYE", "z9hG4bK-b", "c1", 2, Some(&tag), "", "");
        feed(&mut ua, &bye, t0 + Duration::from_secs(11));
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert_eq!(
            events,
            vec![Event::Ended {
                call,
                reason: EndReason::RemoteBye
            }]
        );
        assert_eq!(ua.active_calls(), 0);
        // The BYE again (our 200 was lost): same answer, no new event.
        feed(&mut ua, &bye, t0 + Duration::from_secs(12));
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(events.is_empty());
        assert_eq!(ua.stats().retransmissions_absorbed, 1);
    }

    /// An answered, acknowledged call; its local tag.
    fn confirmed(ua: &mut UserAgent, t0: Instant, call_id: &str) -> (CallRef, String) {
        let (call, _) = incoming(ua, t0, call_id);
        ua.answer(call, "v=0\r\n", t0);
        let (sent, _) = drain(ua);
        let tag = to_tag(&sent[0]);
        feed(
            ua,
            &req("ACK", "z9hG4bK-a", call_id, 1, Some(&tag), "", ""),
            t0,
        );
        drain(ua);
        (call, tag)
    }

    /// A response from the peer to a request Izwi sent.
    fn answer_to(request: &str, code: u16, reason: &str) -> String {
        let header = |name: &str| {
            request
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap()
                .to_string()
        };
        format!(
            "SIP/2.0 {code} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            header("Via"),
            header("From"),
            header("To"),
            header("Call-ID"),
            header("CSeq")
        )
    }

    fn notify(call_id: &str, tag: &str, cseq: u32, frag: &str, event: &str) -> String {
        req(
            "NOTIFY",
            &format!("z9hG4bK-n{cseq}"),
            call_id,
            cseq,
            Some(tag),
            &format!(
                "Event: {event}\r\nSubscription-State: active\r\nContent-Type: message/sipfrag\r\n"
            ),
            frag,
        )
    }

    #[test]
    fn a_transfer_by_refer_ends_with_the_notify_of_the_new_call() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, tag) = confirmed(&mut ua, t0, "r1");
        assert!(ua.refer(call, "sip:desk@192.0.2.7", t0));
        assert!(!ua.refer(call, "sip:desk@192.0.2.7", t0), "one at a time");
        let (sent, _) = drain(&mut ua);
        let refer = &sent[0];
        assert!(
            refer.starts_with("REFER sip:caller@127.0.0.1:5061 SIP/2.0"),
            "{refer}"
        );
        assert!(refer.contains("Refer-To: <sip:desk@192.0.2.7>"), "{refer}");
        assert!(
            refer.contains("Referred-By: <sip:izwi@127.0.0.1:5060>"),
            "{refer}"
        );
        assert!(refer.contains("CSeq: 2 REFER"), "{refer}");
        assert!(
            refer.contains(&format!("From: <sip:izwi@127.0.0.1>;tag={tag}")),
            "{refer}"
        );
        // Retransmitted over UDP until answered.
        ua.handle_timeout(t0 + T1);
        assert_eq!(drain(&mut ua).0.len(), 1);
        feed(&mut ua, &answer_to(refer, 202, "Accepted"), t0 + T1);
        ua.handle_timeout(t0 + T1 * 8);
        assert!(
            drain(&mut ua).0.is_empty(),
            "no retransmission once answered"
        );
        // Progress, then the new call's answer.
        feed(
            &mut ua,
            &notify("r1", &tag, 2, "SIP/2.0 100 Trying\r\n", "refer"),
            t0 + T1 * 8,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(events.is_empty(), "{events:?}");
        let done = notify("r1", &tag, 3, "SIP/2.0 200 OK\r\n", "refer;id=2");
        feed(&mut ua, &done, t0 + T1 * 9);
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert_eq!(
            events,
            vec![Event::Transfer {
                call,
                result: Ok(())
            }]
        );
        // Its retransmission is answered, with no second event.
        feed(&mut ua, &done, t0 + T1 * 10);
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(events.is_empty());
        // Izwi's leg ends by BYE.
        ua.hangup(call, t0 + T1 * 10);
        let (sent, _) = drain(&mut ua);
        assert!(sent[0].starts_with("BYE "), "{}", sent[0]);
        assert!(sent[0].contains("CSeq: 3 BYE"), "{}", sent[0]);
    }

    #[test]
    fn a_refused_or_silent_transfer_is_reported_and_the_call_goes_on() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, tag) = confirmed(&mut ua, t0, "r2");
        assert!(ua.refer(call, "sip:desk@192.0.2.7", t0));
        let (sent, _) = drain(&mut ua);
        feed(&mut ua, &answer_to(&sent[0], 405, "Method Not Allowed"), t0);
        let (_, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![Event::Transfer {
                call,
                result: Err(405)
            }]
        );
        assert_eq!(ua.active_calls(), 1, "the call goes on");
        // Accepted, then the new call fails.
        assert!(ua.refer(call, "sip:desk@192.0.2.7", t0));
        let (sent, _) = drain(&mut ua);
        feed(&mut ua, &answer_to(&sent[0], 202, "Accepted"), t0);
        feed(
            &mut ua,
            &notify("r2", &tag, 2, "SIP/2.0 486 Busy Here\r\n", "refer"),
            t0,
        );
        let (_, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![Event::Transfer {
                call,
                result: Err(486)
            }]
        );
        // Accepted, then nothing: 408 after the wait.
        assert!(ua.refer(call, "sip:desk@192.0.2.7", t0));
        let (sent, _) = drain(&mut ua);
        feed(&mut ua, &answer_to(&sent[0], 202, "Accepted"), t0);
        ua.handle_timeout(t0 + TRANSFER_WAIT);
        let (_, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![Event::Transfer {
                call,
                result: Err(408)
            }]
        );
        // A NOTIFY of another event, or for no dialog, is refused.
        feed(&mut ua, &notify("r2", &tag, 3, "", "presence"), t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 489);
        feed(
            &mut ua,
            &notify("nope", &tag, 1, "SIP/2.0 200 OK\r\n", "refer"),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 481);
        assert!(events.is_empty());
        // An unanswered call cannot be transferred.
        let (offered, _) = incoming(&mut ua, t0, "r3");
        assert!(!ua.refer(offered, "sip:desk@192.0.2.7", t0));
        // A NOTIFY about an earlier REFER (its id) is no word on this one;
        // a BYE once the REFER was accepted means the caller was handed on.
        assert!(ua.refer(call, "sip:desk@192.0.2.7", t0));
        let (sent, _) = drain(&mut ua);
        assert!(sent[0].contains("CSeq: 5 REFER"), "{}", sent[0]);
        feed(&mut ua, &answer_to(&sent[0], 202, "Accepted"), t0);
        feed(
            &mut ua,
            &notify("r2", &tag, 4, "SIP/2.0 200 OK\r\n", "refer;id=2"),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 481);
        assert!(events.is_empty());
        feed(
            &mut ua,
            &req("BYE", "z9hG4bK-bye", "r2", 5, Some(&tag), "", ""),
            t0,
        );
        let (_, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![
                Event::Transfer {
                    call,
                    result: Ok(())
                },
                Event::Ended {
                    call,
                    reason: EndReason::RemoteBye
                }
            ]
        );
    }

    #[test]
    fn retransmitted_invites_get_the_last_response() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "c2");
        let again = req("INVITE", "z9hG4bK-i", "c2", 1, None, "", "");
        feed(&mut ua, &again, t0);
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 100);
        assert!(events.is_empty(), "no second call for a retransmission");
        ua.ringing(call);
        ua.answer(call, "v=0\r\n", t0);
        drain(&mut ua);
        feed(&mut ua, &again, t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 200);
    }

    #[test]
    fn cancel_before_answer() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "c3");
        feed(
            &mut ua,
            &req("CANCEL", "z9hG4bK-i", "c3", 1, None, "", ""),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        let codes: Vec<u16> = sent.iter().map(|m| status(m)).collect();
        assert_eq!(codes, vec![200, 487]);
        assert!(sent[0].contains("CSeq: 1 CANCEL") && sent[1].contains("CSeq: 1 INVITE"));
        assert_eq!(
            events,
            vec![Event::Ended {
                call,
                reason: EndReason::Cancelled
            }]
        );
        // 487 is retransmitted until its ACK, which closes the call.
        ua.handle_timeout(t0 + T1);
        assert_eq!(status(&drain(&mut ua).0[0]), 487);
        let tag = to_tag(&sent[1]);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-i", "c3", 1, Some(&tag), "", ""),
            t0 + T1,
        );
        assert_eq!(ua.active_calls(), 0);
        // Answering afterwards does nothing.
        ua.answer(call, "v=0\r\n", t0 + T1);
        assert!(drain(&mut ua).0.is_empty());
        // A CANCEL for nothing.
        feed(
            &mut ua,
            &req("CANCEL", "z9hG4bK-x", "nope", 1, None, "", ""),
            t0,
        );
        assert_eq!(status(&drain(&mut ua).0[0]), 481);
    }

    #[test]
    fn options_unknown_and_disallowed_methods() {
        let mut ua = ua();
        let t0 = Instant::now();
        feed(
            &mut ua,
            &req("OPTIONS", "z9hG4bK-o", "o1", 1, None, "", ""),
            t0,
        );
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(sent[0].contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS"));
        feed(
            &mut ua,
            &req("REGISTER", "z9hG4bK-r", "r1", 1, None, "", ""),
            t0,
        );
        assert_eq!(status(&drain(&mut ua).0[0]), 405);
        let foo = req("OPTIONS", "z9hG4bK-f", "f1", 1, None, "", "").replace("OPTIONS", "FOO");
        feed(&mut ua, &foo, t0);
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 501, "{sent:?}");
        feed(
            &mut ua,
            &req("BYE", "z9hG4bK-y", "ghost", 2, Some("t"), "", ""),
            t0,
        );
        assert_eq!(status(&drain(&mut ua).0[0]), 481);
    }

    #[test]
    fn malformed_requests_get_400_or_are_dropped() {
        let mut ua = ua();
        let t0 = Instant::now();
        let bad_len = req("OPTIONS", "z9hG4bK-o", "o1", 1, None, "", "")
            .replace("Content-Length: 0", "Content-Length: 99");
        feed(&mut ua, &bad_len, t0);
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 400, "{sent:?}");
        let no_call_id: String = req("OPTIONS", "z9hG4bK-o", "o1", 1, None, "", "")
            .split("\r\n")
            .filter(|l| !l.starts_with("Call-ID"))
            .collect::<Vec<_>>()
            .join("\r\n");
        feed(&mut ua, &no_call_id, t0);
        assert!(drain(&mut ua).0.is_empty());
        ua.handle_message(&[0xff, 0x00, 0x13, 0x37], peer(), Transport::Udp, t0);
        assert!(drain(&mut ua).0.is_empty());
        assert_eq!(ua.stats().dropped, 2);
        assert_eq!(ua.stats().bad_requests, 1);
    }

    #[test]
    fn other_versions_get_505_unknown_cases_501_and_keepalives_nothing() {
        let mut ua = ua();
        let t0 = Instant::now();
        let options = req("OPTIONS", "z9hG4bK-v", "v1", 1, None, "", "");
        for (version, code) in [("SIP/3.0", 505), ("SIP/1.0", 505), ("SIP/2.0", 200)] {
            feed(&mut ua, &options.replacen("SIP/2.0", version, 1), t0);
            let (sent, _) = drain(&mut ua);
            assert_eq!(status(&sent[0]), code, "{version}: {sent:?}");
        }
        // Method names are case-sensitive: `options` is an unknown method.
        let lower = req("options", "z9hG4bK-l", "l1", 1, None, "", "");
        feed(&mut ua, &lower, t0);
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 501, "{sent:?}");
        assert!(sent[0].contains("Allow: INVITE"), "{}", sent[0]);
        // A control character is refused, and never echoed back.
        let nul = "Subject: a\0b\r\n";
        let nul = req("OPTIONS", "z9hG4bK-n", "n1", 1, None, nul, "");
        feed(&mut ua, &nul, t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 400);
        let nul_id = req("OPTIONS", "z9hG4bK-n2", "n\x012", 1, None, "", "");
        feed(&mut ua, &nul_id, t0);
        assert!(drain(&mut ua).0.is_empty());
        let before = ua.stats().clone();
        for keepalive in [&b"\r\n\r\n"[..], b"\r\n", b""] {
            ua.handle_message(keepalive, peer(), Transport::Udp, t0);
        }
        assert!(drain(&mut ua).0.is_empty());
        let after = ua.stats();
        assert_eq!(after.dropped, before.dropped, "keep-alives are not drops");
        assert_eq!(after.bad_requests, before.bad_requests);
        assert_eq!(ua.stats().bad_requests, 4);
        assert_eq!(ua.stats().dropped, 1);
    }

    #[test]
    fn no_ack_means_bye_and_bye_is_retransmitted_until_answered() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "c4");
        ua.answer(call, "v=0\r\n", t0);
        drain(&mut ua);
        let mut t = t0;
        while t < t0 + TIMER_H {
            t += Duration::from_millis(250);
            ua.handle_timeout(t);
        }
        let (sent, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![Event::Ended {
                call,
                reason: EndReason::NoAck
            }]
        );
        let bye = sent
            .iter()
            .find(|m| m.starts_with("BYE "))
            .expect("BYE sent");
        assert!(
            bye.starts_with("BYE sip:caller@127.0.0.1:5061 SIP/2.0"),
            "{bye}"
        );
        assert!(bye.contains("CSeq: 2 BYE"));
        let resent = sent.iter().filter(|m| status(m) == 200).count();
        assert!(
            (6..=12).contains(&resent),
            "{resent} retransmissions of 200"
        );
        // BYE retransmitted until a final response arrives.
        ua.handle_timeout(t + T1);
        let (sent, _) = drain(&mut ua);
        assert!(sent[0].starts_with("BYE "));
        let p = message::parse(sent[0].as_bytes()).unwrap();
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={}\r\nFrom: x;tag=a\r\nTo: y;tag=b\r\nCall-ID: c4\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            p.branch
        );
        feed(&mut ua, &ok, t + T1);
        ua.handle_timeout(t + T1 * 8);
        assert!(drain(&mut ua).0.is_empty());
        assert_eq!(ua.poll_timeout(), None);
    }

    #[test]
    fn hangup_through_a_proxy_routes_the_bye() {
        let mut ua = ua();
        let t0 = Instant::now();
        let invite = req(
            "INVITE",
            "z9hG4bK-p",
            "c5",
            1,
            None,
            "Record-Route: <sip:127.0.0.1:5070;lr>\r\n",
            "",
        );
        feed(&mut ua, &invite, t0);
        let (_, events) = drain(&mut ua);
        let Event::Incoming { call, .. } = events[0].clone() else {
            panic!()
        };
        ua.answer(call, "v=0\r\n", t0);
        let (sent, _) = drain(&mut ua);
        assert!(sent[0].contains("Record-Route: <sip:127.0.0.1:5070;lr>"));
        let tag = to_tag(&sent[0]);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-q", "c5", 1, Some(&tag), "", ""),
            t0,
        );
        drain(&mut ua);
        ua.hangup(call, t0);
        let (sent, events) = drain(&mut ua);
        assert_eq!(
            events,
            vec![Event::Ended {
                call,
                reason: EndReason::LocalBye
            }]
        );
        let bye = &sent[0];
        assert!(bye.contains("Route: <sip:127.0.0.1:5070;lr>"), "{bye}");
        let p = message::parse(bye.as_bytes()).unwrap();
        assert_eq!(p.from_tag.as_deref(), Some(tag.as_str()));
        assert_eq!(p.to_tag.as_deref(), Some("ct"));
    }

    #[test]
    fn reinvite_is_offered_to_the_application() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "c6");
        ua.answer(call, "v=0\r\n", t0);
        let tag = to_tag(&drain(&mut ua).0[0]);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-a", "c6", 1, Some(&tag), "", ""),
            t0,
        );
        drain(&mut ua);
        let re = req(
            "INVITE",
            "z9hG4bK-re",
            "c6",
            2,
            Some(&tag),
            "Content-Type: application/sdp\r\n",
            "v=0\r\na=sendonly\r\n",
        );
        feed(&mut ua, &re, t0);
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 100);
        assert_eq!(
            events,
            vec![Event::Reoffer {
                call,
                offer: Some("v=0\r\na=sendonly\r\n".into())
            }]
        );
        ua.answer_reoffer(call, Ok("v=0\r\na=recvonly\r\n"), t0);
        let (sent, _) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 200);
        assert!(sent[0].contains("CSeq: 2 INVITE"));
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-a2", "c6", 2, Some(&tag), "", ""),
            t0,
        );
        let (_, events) = drain(&mut ua);
        assert!(
            events.is_empty(),
            "a re-INVITE's ACK is not a new confirmation"
        );
        assert_eq!(ua.active_calls(), 1);
        // An old CSeq is refused.
        let stale = req("INVITE", "z9hG4bK-old", "c6", 2, Some(&tag), "", "");
        feed(&mut ua, &stale, t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 500);
    }

    #[test]
    fn strangers_are_challenged_or_forbidden() {
        use crate::sip::access::{Cidr, Credentials};
        let cfg = ua().cfg.clone();
        let allow: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut closed =
            UserAgent::with_access(cfg.clone(), AccessPolicy::new(allow.clone(), None));
        let t0 = Instant::now();
        feed(
            &mut closed,
            &req("INVITE", "z9hG4bK-s", "s1", 1, None, "", ""),
            t0,
        );
        let (sent, events) = drain(&mut closed);
        assert_eq!(status(&sent[0]), 403);
        assert!(events.is_empty());
        let creds = Credentials {
            realm: "izwi".into(),
            username: "trunk".into(),
            password: "pw".into(),
        };
        let mut auth = UserAgent::with_access(cfg, AccessPolicy::new(allow, Some(creds)));
        feed(
            &mut auth,
            &req("INVITE", "z9hG4bK-s", "s2", 1, None, "", ""),
            t0,
        );
        let (sent, _) = drain(&mut auth);
        assert_eq!(status(&sent[0]), 401);
        let www = message::parse(sent[0].as_bytes())
            .unwrap()
            .header_value("WWW-Authenticate")
            .unwrap();
        let ch = crate::sip::digest::parse_challenge(&www).unwrap();
        let answer = crate::sip::digest::respond(
            &ch,
            "INVITE",
            "sip:izwi@127.0.0.1:5060",
            "trunk",
            "pw",
            "cn",
            1,
        );
        let retry = req(
            "INVITE",
            "z9hG4bK-s2",
            "s2",
            2,
            None,
            &format!("Authorization: {answer}\r\n"),
            "",
        );
        feed(&mut auth, &retry, t0);
        let (sent, events) = drain(&mut auth);
        assert_eq!(status(&sent[0]), 100);
        assert!(matches!(events[0], Event::Incoming { .. }));
        assert_eq!(auth.stats().challenged, 1);
    }

    #[test]
    fn calls_over_the_limit_are_refused_with_503() {
        let mut ua = ua();
        let t0 = Instant::now();
        incoming(&mut ua, t0, "a");
        incoming(&mut ua, t0, "b");
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-z", "c", 1, None, "", ""),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 503);
        assert!(events.is_empty());
    }

    #[test]
    fn a_draining_agent_keeps_its_calls_and_refuses_new_ones_and_health_checks() {
        let mut ua = ua();
        let t0 = Instant::now();
        incoming(&mut ua, t0, "a");
        drain(&mut ua);
        ua.drain();
        feed(
            &mut ua,
            &req("OPTIONS", "z9hG4bK-o", "o1", 1, None, "", ""),
            t0,
        );
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-n", "n", 1, None, "", ""),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(sent.len(), 2, "{sent:?}");
        for r in &sent {
            assert_eq!(status(r), 503, "{r}");
            assert!(r.contains("Retry-After: 120"), "{r}");
        }
        assert!(events.is_empty(), "no new call: {events:?}");
        assert_eq!(ua.stats().drained, 1);
        assert_eq!(ua.live_calls(), 1, "the call in progress goes on");
    }

    #[test]
    fn reject_sends_the_code_and_ends_the_call() {
        let mut agent = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut agent, t0, "c7");
        agent.reject(call, 488, "Not Acceptable Here", t0);
        let (sent, events) = drain(&mut agent);
        assert_eq!(status(&sent[0]), 488);
        assert_eq!(
            events,
            vec![Event::Ended {
                call,
                reason: EndReason::Rejected(488)
            }]
        );
        // Over TCP the final is not retransmitted and the call is gone at once.
        let mut ua2 = super::tests::ua();
        ua2.handle_message(
            req("INVITE", "z9hG4bK-t", "t", 1, None, "", "").as_bytes(),
            peer(),
            Transport::Tcp,
            t0,
        );
        let (_, ev) = drain(&mut ua2);
        let Event::Incoming { call, .. } = ev[0].clone() else {
            panic!()
        };
        ua2.reject(call, 486, "Busy Here", t0);
        drain(&mut ua2);
        assert_eq!(ua2.active_calls(), 0);
    }

    #[test]
    fn a_merged_request_gets_482_and_leaves_the_call_alone() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "m1");
        // The same INVITE by another path: same From tag, Call-ID and CSeq, another branch.
        let merged = req("INVITE", "z9hG4bK-other", "m1", 1, None, "", "v=0\r\n");
        feed(&mut ua, &merged, t0);
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 482, "{sent:?}");
        assert!(events.is_empty());
        assert_eq!(ua.stats().merged, 1);
        ua.answer(call, "v=0\r\n", t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 200);
    }

    #[test]
    fn one_source_holds_at_most_its_share_of_calls_and_refusals_free_theirs() {
        let mut ua = UserAgent::new(UaConfig {
            max_calls: 10,
            max_calls_per_source: 2,
            ..ua().cfg.clone()
        });
        let t0 = Instant::now();
        let (a, _) = incoming(&mut ua, t0, "s1");
        incoming(&mut ua, t0, "s2");
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-3", "s3", 1, None, "", ""),
            t0,
        );
        let (sent, events) = drain(&mut ua);
        assert_eq!(status(&sent[0]), 503);
        assert!(sent[0].contains("Retry-After: 10"), "{}", sent[0]);
        assert!(events.is_empty());
        assert_eq!(ua.stats().source_busy, 1);
        // Another source is not held back.
        ua.handle_message(
            req("INVITE", "z9hG4bK-o", "o1", 1, None, "", "").as_bytes(),
            "192.0.2.7:5060".parse().unwrap(),
            Transport::Udp,
            t0,
        );
        assert!(matches!(drain(&mut ua).1[..], [Event::Incoming { .. }]));
        // A refused call (waiting only for the ACK of its refusal) is no call in progress.
        ua.reject(a, 488, "Not Acceptable Here", t0);
        drain(&mut ua);
        assert_eq!(ua.live_calls(), 2);
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-4", "s4", 1, None, "", ""),
            t0,
        );
        assert!(matches!(drain(&mut ua).1[..], [Event::Incoming { .. }]));
    }

    #[test]
    fn a_flood_of_requests_that_change_nothing_leaves_nothing_behind() {
        let mut ua = ua();
        let t0 = Instant::now();
        for i in 0..20_000 {
            let b = format!("z9hG4bK-f{i}");
            feed(
                &mut ua,
                &req("OPTIONS", &b, &format!("f{i}"), 1, None, "", ""),
                t0,
            );
            feed(
                &mut ua,
                &req("BYE", &b, &format!("g{i}"), 2, Some("x"), "", ""),
                t0,
            );
            feed(
                &mut ua,
                &req("SUBSCRIBE", &b, &format!("h{i}"), 1, None, "", ""),
                t0,
            );
            drain(&mut ua);
        }
        assert_eq!(
            ua.held(),
            (0, 0),
            "OPTIONS, 481s and 405s keep no transaction"
        );
        assert_eq!(ua.poll_timeout(), None);
        // A BYE that ended a call is kept, to absorb its retransmissions, then goes.
        let (call, _) = incoming(&mut ua, t0, "k1");
        ua.answer(call, "v=0\r\n", t0);
        let tag = to_tag(&drain(&mut ua).0[0]);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-a", "k1", 1, Some(&tag), "", ""),
            t0,
        );
        feed(
            &mut ua,
            &req("BYE", "z9hG4bK-b", "k1", 2, Some(&tag), "", ""),
            t0,
        );
        drain(&mut ua);
        assert_eq!(ua.held().0, 1);
        ua.handle_timeout(t0 + TIMER_H + Duration::from_millis(1));
        assert_eq!(ua.held().0, 0);
    }

    #[test]
    fn a_refused_reinvite_is_acknowledged_and_the_call_goes_on() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "r1");
        ua.answer(call, "v=0\r\n", t0);
        let tag = to_tag(&drain(&mut ua).0[0]);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-a", "r1", 1, Some(&tag), "", ""),
            t0,
        );
        drain(&mut ua);
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-re", "r1", 2, Some(&tag), "", "v=0\r\n"),
            t0,
        );
        drain(&mut ua);
        ua.answer_reoffer(call, Err(488), t0);
        assert_eq!(status(&drain(&mut ua).0[0]), 488);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-re", "r1", 2, Some(&tag), "", ""),
            t0,
        );
        ua.handle_timeout(t0 + T1 * 2);
        assert!(
            drain(&mut ua).0.is_empty(),
            "the 488 is not resent after its ACK"
        );
        ua.handle_timeout(t0 + TIMER_H * 2);
        let (sent, events) = drain(&mut ua);
        assert!(sent.is_empty() && events.is_empty(), "{sent:?} {events:?}");
        assert_eq!(ua.live_calls(), 1, "the call is still there, and counted");
        feed(
            &mut ua,
            &req("BYE", "z9hG4bK-b", "r1", 3, Some(&tag), "", ""),
            t0,
        );
        assert_eq!(status(&drain(&mut ua).0[0]), 200);
        assert_eq!(ua.live_calls(), 0);
    }

    #[test]
    fn a_refused_call_cannot_be_reinvited_and_its_bytes_are_counted_back() {
        let mut ua = ua();
        let t0 = Instant::now();
        let (call, _) = incoming(&mut ua, t0, "x1");
        ua.reject(call, 488, "Not Acceptable Here", t0);
        let tag = to_tag(&drain(&mut ua).0[0]);
        assert_eq!(ua.rejected, 1);
        assert!(ua.rejected_bytes > 0);
        feed(
            &mut ua,
            &req("INVITE", "z9hG4bK-re", "x1", 2, Some(&tag), "", ""),
            t0,
        );
        assert_eq!(status(&drain(&mut ua).0[0]), 481);
        feed(
            &mut ua,
            &req("ACK", "z9hG4bK-i", "x1", 1, Some(&tag), "", ""),
            t0,
        );
        assert_eq!((ua.rejected, ua.rejected_bytes), (0, 0));
        assert_eq!(ua.active_calls(), 0);
        // Over TCP a refusal is never held, and never counted.
        ua.handle_message(
            req("INVITE", "z9hG4bK-t", "x2", 1, None, "", "").as_bytes(),
            peer(),
            Transport::Tcp,
            t0,
        );
        let (_, ev) = drain(&mut ua);
        let Event::Incoming { call, .. } = ev[0].clone() else {
            panic!()
        };
        ua.reject(call, 486, "Busy Here", t0);
        drain(&mut ua);
        assert_eq!((ua.rejected, ua.rejected_bytes), (0, 0));
    }
}
