//! The SIP endpoint's thin async shell: one UDP socket, a TCP listener, the
//! sans-IO user agent, and one media reactor task per answered call. Before
//! anything reaches the user agent, each source address is held to its
//! request rate, and TCP connections to their caps and timeouts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::access::{AccessPolicy, Cidr, Credentials, Failure};
use super::message::Identity;
use super::register::RegisterConfig;
use super::sdp;
use super::ua::{CallRef, EndReason, Event, Output, Transport, UaConfig, UserAgent};
use crate::call::agents::Routed;
use crate::call::core::{CallCore, CoreSetup};
use crate::call::ending::Ending;
use crate::call::session::CallContext;
use crate::codec::Codec;
use crate::config::SipConfig;
use crate::dialplan::CallInfo;
use crate::limits::{
    self, AcceptBackoff, ConnectionCaps, ConnectionGuard, SharedLogGate, TokenBuckets,
};
use crate::metrics::metrics;
use crate::records::{self, CallStart, Transport as CallTransport, now_ms};
use crate::rtp::session::{self as rtp, Control, MediaStats, PortGuard, PortPool};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot listen for SIP on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("setting `sip.listen`: `{0}` is not an address:port")]
    Listen(String),
    #[error("setting `sip.register_to`: cannot resolve `{0}`")]
    Registrar(String),
}

/// A call's RTP socket, held from the offer/answer until its media reactor runs.
struct CallMedia {
    socket: UdpSocket,
    guard: PortGuard,
    session_id: u64,
    /// Izwi's own id for the call (what its record and log lines carry).
    call_id: String,
    /// The SIP Call-ID, capped (two dialogs may share one).
    sip_call_id: String,
    /// The user parts of From and To: the caller's and the called number.
    caller: Option<String>,
    called: Option<String>,
    /// The SIP peer (the caller, or its proxy).
    peer: SocketAddr,
    /// The address Izwi's SDP gives for this call.
    media_ip: IpAddr,
    /// The agent the dialplan chose for the call.
    routed: Routed,
}

/// A new call as the user agent offers it, routed.
struct Offered {
    sip_call_id: String,
    caller: Option<String>,
    called: Option<String>,
    offer: Option<String>,
    peer: SocketAddr,
    routed: Routed,
}

/// A call ringing, answered when its time comes. Without `negotiated` the
/// INVITE had no offer: `sdp` is then Izwi's offer and the ACK brings the answer.
struct Ringing {
    due: Instant,
    sdp: String,
    media: CallMedia,
    negotiated: Option<sdp::Negotiated>,
}

/// A call's media reactor has finished (its record is written).
struct MediaEnded {
    call: CallRef,
    ending: Ending,
    stats: MediaStats,
}

/// The user part of a From or To (`"A" <sip:+26377…@host>;tag=x` → `+26377…`).
fn user_of(name_addr: &str) -> Option<String> {
    let uri = super::message::uri_of(name_addr);
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let user = rest.split('@').next()?.split(';').next()?;
    (!user.is_empty() && rest.contains('@') || uri.starts_with("tel:")).then(|| user.to_string())
}

/// How the SIP side ended a call, for its record.
fn ending_of(reason: EndReason) -> Ending {
    match reason {
        EndReason::RemoteBye => Ending::CallerBye,
        EndReason::LocalBye => Ending::IzwiBye,
        EndReason::NoAck => Ending::NoAck,
        EndReason::Cancelled => Ending::Cancelled,
        EndReason::Rejected(code) => Ending::Rejected(code),
    }
}

/// What connection tasks tell the endpoint.
enum TcpEvent {
    Message(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// Messages waiting to be written to one TCP connection.
const TCP_QUEUE: usize = 32;
const TCP_CONNECT: Duration = Duration::from_secs(5);
/// A message to a TCP peer that cannot be written within this closes the
/// connection: the peer has stopped reading.
const TCP_WRITE: Duration = Duration::from_secs(10);
const UNREGISTER_LIMIT: Duration = Duration::from_secs(3);
/// The SIP UDP socket's receive buffer.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// Source addresses whose request rates are tracked at most.
const MAX_TRACKED_SOURCES: usize = 65_536;
/// Lines about refused connections and dropped requests per window.
static REFUSED_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));

/// Timeouts of one SIP TCP connection.
#[derive(Debug, Clone, Copy)]
struct TcpTimeouts {
    /// `None` for Izwi's own connections: a registration's flow must stay
    /// open for the trunk to send calls down it (RFC 5626).
    idle: Option<Duration>,
    message: Duration,
}

/// The trunk registration the settings ask for, if any. `host` is Izwi's
/// advertised SIP address, put in the Contact the trunk will call.
async fn registration(
    cfg: &SipConfig,
    host: SocketAddr,
) -> Result<Option<RegisterConfig>, EndpointError> {
    if cfg.register_to.is_empty() {
        return Ok(None);
    }
    let target = if cfg.register_to.contains(':') {
        cfg.register_to.clone()
    } else {
        format!("{}:5060", cfg.register_to)
    };
    let registrar = tokio::net::lookup_host(&target)
        .await
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() == host.is_ipv4()))
        .ok_or_else(|| EndpointError::Registrar(cfg.register_to.clone()))?;
    let domain = if cfg.register_domain.is_empty() {
        cfg.register_to.clone()
    } else {
        cfg.register_domain.clone()
    };
    let tcp = cfg.register_transport == "tcp";
    let user = &cfg.register_user;
    Ok(Some(RegisterConfig {
        registrar,
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        registrar_uri: format!("sip:{domain}"),
        aor: format!("sip:{user}@{domain}"),
        contact: format!(
            "sip:{user}@{host}{}",
            if tcp { ";transport=tcp" } else { "" }
        ),
        username: if cfg.register_auth_user.is_empty() {
            user.clone()
        } else {
            cfg.register_auth_user.clone()
        },
        password: cfg.register_password.clone(),
        expires: cfg.register_expires,
        via_host: host.to_string(),
        user_agent: concat!("Izwi/", env!("CARGO_PKG_VERSION")).into(),
    }))
}

struct ActiveCall {
    /// Dropped when the SIP side ends the call, which stops its media reactor.
    control: Option<mpsc::Sender<Control>>,
    /// Whether the caller's ACK has come (media goes out only then).
    confirmed: bool,
    /// The address Izwi's SDP gives for this call.
    media_ip: IpAddr,
    /// The SIP peer (the caller, or its proxy).
    peer: SocketAddr,
    rtp_port: u16,
    sdp_version: u64,
    session_id: u64,
    call_id: String,
}

pub struct Endpoint {
    socket: Arc<UdpSocket>,
    tcp: TcpListener,
    tcp_caps: ConnectionCaps,
    tcp_timeouts: TcpTimeouts,
    accept: AcceptBackoff,
    tcp_conns: HashMap<SocketAddr, mpsc::Sender<String>>,
    /// Requests per second per source (sources in `allow` are not limited).
    rates: Option<TokenBuckets<IpAddr>>,
    trusted: Vec<Cidr>,
    tcp_tx: mpsc::Sender<TcpEvent>,
    tcp_rx: mpsc::Receiver<TcpEvent>,
    ua: UserAgent,
    cfg: SipConfig,
    /// The address in SDP and Contact, when one serves every call.
    advertise: Option<IpAddr>,
    /// Where RTP sockets are bound: the listen address.
    rtp_ip: IpAddr,
    /// The SIP port, for per-call Contacts.
    sip_port: u16,
    codecs: Vec<Codec>,
    ports: PortPool,
    ctx: Arc<CallContext>,
    calls: HashMap<CallRef, ActiveCall>,
    ringing: HashMap<CallRef, Ringing>,
    /// Answered with an offer; waiting for the answer in the ACK.
    late: HashMap<CallRef, CallMedia>,
    /// The user agent's counters as last added to the metrics.
    reported: super::ua::Stats,
    ended_tx: mpsc::Sender<MediaEnded>,
    ended_rx: mpsc::Receiver<MediaEnded>,
    /// Transfers the calls' agents ask for: the call and its target.
    transfer_tx: mpsc::Sender<(CallRef, String)>,
    transfer_rx: mpsc::Receiver<(CallRef, String)>,
}

impl Endpoint {
    pub async fn bind(cfg: &SipConfig, ctx: Arc<CallContext>) -> Result<Endpoint, EndpointError> {
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| EndpointError::Listen(cfg.listen.clone()))?;
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| EndpointError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        // Room for a burst: while one source floods, its neighbours' requests
        // wait in the kernel's buffer instead of being dropped there (the
        // kernel caps it at net.core.rmem_max).
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(UDP_RECV_BUFFER);
        let local = socket.local_addr().map_err(|source| EndpointError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
        // TCP on the same port as UDP (a port of 0 means whatever UDP got).
        let tcp = TcpListener::bind(local)
            .await
            .map_err(|source| EndpointError::Bind {
                addr: local.to_string(),
                source,
            })?;
        // What Izwi puts in SDP and Contact: `advertise` (behind NAT), the
        // listen address, or (listening on every address) per call, the local
        // address of the route towards the caller.
        let advertise: Option<IpAddr> = match cfg.advertise.parse() {
            Ok(ip) => Some(ip),
            Err(_) if local.ip().is_unspecified() => None,
            Err(_) => Some(local.ip()),
        };
        let media_ip = advertise.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let host = SocketAddr::new(media_ip, local.port());
        let trusted: Vec<Cidr> = cfg.allow.iter().filter_map(|c| c.parse().ok()).collect();
        let allow = trusted.clone();
        let credentials = (!cfg.auth_user.is_empty()).then(|| Credentials {
            realm: cfg.auth_realm.clone(),
            username: cfg.auth_user.clone(),
            password: cfg.auth_password.clone(),
        });
        let access = AccessPolicy::new(allow, credentials);
        let mut ua = UserAgent::with_access(
            UaConfig {
                identity: Identity {
                    user_agent: concat!("Izwi/", env!("CARGO_PKG_VERSION")).into(),
                    contact: format!("sip:izwi@{host}"),
                },
                via_host: host.to_string(),
                max_calls: cfg.max_calls,
                max_calls_per_source: cfg.max_calls_per_source,
            },
            access,
        );
        let codecs = cfg
            .codecs
            .iter()
            .filter_map(|c| match c.to_ascii_lowercase().as_str() {
                "pcmu" => Some(Codec::Pcmu),
                "pcma" => Some(Codec::Pcma),
                "opus" => Some(Codec::Opus),
                _ => None,
            })
            .collect();
        if let Some(reg) = registration(cfg, host).await? {
            tracing::info!(registrar = %reg.registrar, aor = %reg.aor, "registering with the trunk");
            ua.register(reg, std::time::Instant::now());
        }
        let (ended_tx, ended_rx) = mpsc::channel(64);
        let (transfer_tx, transfer_rx) = mpsc::channel(64);
        let (tcp_tx, tcp_rx) = mpsc::channel(256);
        let tcp_max = match cfg.tcp_max_connections {
            0 => limits::connection_share(cfg.max_calls),
            n => n,
        };
        let tcp_caps = ConnectionCaps::new(tcp_max, cfg.tcp_max_connections_per_source);
        let rate = f64::from(cfg.requests_per_source);
        let rates = (cfg.requests_per_source > 0)
            .then(|| TokenBuckets::new(2.0 * rate, rate, MAX_TRACKED_SOURCES));
        tracing::info!(
            listen = %local,
            advertise = %advertise.map_or("per call (the route towards each caller)".to_string(), |ip| ip.to_string()),
            tcp_max_connections = tcp_caps.max_total(),
            tcp_max_connections_per_source = tcp_caps.max_per_source(),
            requests_per_source = cfg.requests_per_source,
            max_calls_per_source = cfg.max_calls_per_source,
            "SIP listening (UDP and TCP)"
        );
        Ok(Endpoint {
            socket: Arc::new(socket),
            tcp,
            tcp_caps,
            tcp_timeouts: TcpTimeouts {
                idle: Some(Duration::from_secs(cfg.tcp_idle_secs)),
                message: Duration::from_secs(cfg.tcp_message_secs),
            },
            accept: AcceptBackoff::new("sip_tcp"),
            tcp_conns: HashMap::new(),
            rates,
            trusted,
            tcp_tx,
            tcp_rx,
            ua,
            cfg: cfg.clone(),
            advertise,
            // RTP where SIP listens: `advertise` may be a NAT's public address.
            rtp_ip: local.ip(),
            sip_port: local.port(),
            codecs,
            ports: PortPool::new(cfg.rtp_port_min, cfg.rtp_port_max),
            ctx,
            calls: HashMap::new(),
            ringing: HashMap::new(),
            late: HashMap::new(),
            reported: Default::default(),
            ended_tx,
            ended_rx,
            transfer_tx,
            transfer_rx,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then hangs up every call. Once
    /// `drain` resolves, new calls (and OPTIONS health checks) get 503 and
    /// the endpoint stops by itself when its last call has ended.
    pub async fn run(
        mut self,
        drain: impl std::future::Future<Output = ()>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(drain);
        tokio::pin!(shutdown);
        let mut draining = false;
        let mut buf = vec![0u8; 65_536];
        let far = Duration::from_secs(3600);
        loop {
            let accepting = self.accept.open(std::time::Instant::now());
            let wake = self
                .ua
                .poll_timeout()
                .map(Instant::from_std)
                .into_iter()
                .chain(self.ringing.values().map(|r| r.due))
                .chain(self.accept.resume_at().map(Instant::from_std))
                .min()
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, from)) => self.message(&buf[..n], from, Transport::Udp),
                        Err(e) => tracing::debug!(error = %e, "SIP receive error"),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.ua.handle_timeout(std::time::Instant::now());
                    self.answer_due();
                }
                Some(ended) = self.ended_rx.recv() => self.media_ended(ended),
                Some((call, target)) = self.transfer_rx.recv() => self.transfer(call, &target),
                accepted = self.tcp.accept(), if accepting => match accepted {
                    Ok((stream, peer)) => {
                        self.accept.accepted();
                        self.connection(stream, peer);
                    }
                    Err(e) => self.accept.failed(&e, std::time::Instant::now()),
                },
                Some(ev) = self.tcp_rx.recv() => match ev {
                    TcpEvent::Message(from, bytes) => self.message(&bytes, from, Transport::Tcp),
                    TcpEvent::Closed(peer) => {
                        self.tcp_conns.remove(&peer);
                    }
                },
                _ = &mut drain, if !draining => {
                    draining = true;
                    self.ua.drain();
                    tracing::info!(calls = self.ua.live_calls(), "draining: no new calls; stopping when the calls in progress have ended");
                }
                _ = &mut shutdown => break,
            }
            self.flush().await;
            self.report_stats();
            if draining && self.idle() {
                tracing::info!("drained: no calls left");
                break;
            }
        }
        let calls: Vec<CallRef> = self.calls.keys().chain(self.late.keys()).copied().collect();
        for call in calls {
            self.ua.hangup(call, std::time::Instant::now());
        }
        self.flush().await;
        self.unregister().await;
        tracing::info!(stats = ?self.ua.stats(), "SIP endpoint stopped");
    }

    /// No call is ringing, talking or still closing its media.
    fn idle(&self) -> bool {
        self.ua.live_calls() == 0
            && self.calls.is_empty()
            && self.ringing.is_empty()
            && self.late.is_empty()
    }

    /// Removes the trunk registration, answering a challenge if one comes, for
    /// at most a few seconds.
    async fn unregister(&mut self) {
        if self.ua.registration().is_none() {
            return;
        }
        self.ua.unregister(std::time::Instant::now());
        self.flush().await;
        let deadline = Instant::now() + UNREGISTER_LIMIT;
        let mut buf = vec![0u8; 65_536];
        while let Some(wake) = self.ua.registration().and_then(|r| r.poll_timeout()) {
            let wake = Instant::from_std(wake).min(deadline);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.ua.handle_message(&buf[..n], from, Transport::Udp, std::time::Instant::now());
                    }
                }
                Some(TcpEvent::Message(from, bytes)) = self.tcp_rx.recv() => {
                    self.ua.handle_message(&bytes, from, Transport::Tcp, std::time::Instant::now());
                }
                _ = tokio::time::sleep_until(wake) => self.ua.handle_timeout(std::time::Instant::now()),
            }
            self.flush().await;
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    /// Adds what the user agent refused since last time to the metrics.
    /// One message from the network: taken to the user agent unless its
    /// source is over its request rate (then dropped unanswered and counted:
    /// answering a flood would only feed it).
    fn message(&mut self, bytes: &[u8], from: SocketAddr, transport: Transport) {
        let now = std::time::Instant::now();
        if let Some(rates) = self.rates.as_mut()
            && !self.trusted.iter().any(|c| c.contains(from.ip()))
            && rates.take(&from.ip(), now).is_err()
        {
            metrics().sip_rejected("rate_limited", 1);
            if let Some(held) = REFUSED_LOG.pass() {
                tracing::info!(source = %from.ip(), held, "SIP requests over the source's rate; dropped");
            }
            return;
        }
        self.ua.handle_message(bytes, from, transport, now);
    }

    fn report_stats(&mut self) {
        let now = self.ua.stats().clone();
        let m = metrics();
        let was = &self.reported;
        m.sip_rejected("dropped", now.dropped - was.dropped);
        m.sip_rejected("bad_request", now.bad_requests - was.bad_requests);
        m.sip_rejected("challenged", now.challenged - was.challenged);
        m.sip_rejected("forbidden", now.forbidden - was.forbidden);
        m.sip_rejected("auth_blocked", now.auth_blocked - was.auth_blocked);
        m.sip_rejected("busy", now.busy - was.busy);
        m.sip_rejected("source_busy", now.source_busy - was.source_busy);
        m.sip_rejected("merged", now.merged - was.merged);
        for (i, f) in Failure::ALL.iter().enumerate() {
            m.sip_rejected(f.label(), now.auth_failures[i] - was.auth_failures[i]);
        }
        self.reported = now;
    }

    async fn flush(&mut self) {
        while let Some(out) = self.ua.poll_output() {
            match out {
                Output::Transmit {
                    to,
                    transport: Transport::Udp,
                    data,
                } => {
                    if let Err(e) = self.socket.send_to(data.as_bytes(), to).await {
                        tracing::debug!(%to, error = %e, "SIP send failed");
                    }
                }
                Output::Transmit {
                    to,
                    transport: Transport::Tcp,
                    data,
                } => {
                    let conn = match self.tcp_conns.get(&to) {
                        Some(c) if !c.is_closed() => c.clone(),
                        _ => self.dial(to),
                    };
                    if conn.try_send(data).is_err() {
                        tracing::debug!(%to, "TCP connection full or gone; message dropped");
                    }
                }
                Output::Event(e) => self.event(e).await,
            }
        }
    }

    /// A connection the peer opened, if its source and the listener have room.
    fn connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let guard = match self.tcp_caps.admit(peer.ip()) {
            Ok(g) => g,
            Err(refusal) => {
                metrics().connection_refused("sip_tcp", refusal.label());
                if let Some(held) = REFUSED_LOG.pass() {
                    tracing::info!(%peer, cap = refusal.label(), held, "SIP TCP connection refused");
                }
                return;
            }
        };
        let (out_tx, out_rx) = mpsc::channel::<String>(TCP_QUEUE);
        self.tcp_conns.insert(peer, out_tx);
        tokio::spawn(serve_tcp(
            stream,
            peer,
            out_rx,
            self.tcp_tx.clone(),
            Some(guard),
            self.tcp_timeouts,
        ));
    }

    /// A connection Izwi opens (to a registrar, or a peer whose connection
    /// closed); messages queue while it connects.
    fn dial(&mut self, peer: SocketAddr) -> mpsc::Sender<String> {
        let (out_tx, out_rx) = mpsc::channel::<String>(TCP_QUEUE);
        self.tcp_conns.insert(peer, out_tx.clone());
        let events = self.tcp_tx.clone();
        let timeouts = TcpTimeouts {
            idle: None,
            ..self.tcp_timeouts
        };
        tokio::spawn(async move {
            // Izwi's own connections (to a registrar, back to a caller) are
            // not the callers' to fill: they take no place in the caps.
            match tokio::time::timeout(TCP_CONNECT, TcpStream::connect(peer)).await {
                Ok(Ok(stream)) => serve_tcp(stream, peer, out_rx, events, None, timeouts).await,
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::info!(%peer, %error, "cannot open a SIP TCP connection");
                    let _ = events.send(TcpEvent::Closed(peer)).await;
                }
            }
        });
        out_tx
    }

    /// Blind transfer by REFER: a number goes to the caller's side (their
    /// trunk or proxy routes it); a SIP URI as it is.
    fn transfer(&mut self, call: CallRef, target: &str) {
        let Some(active) = self.calls.get(&call) else {
            return;
        };
        let uri = if target.starts_with("sip:") || target.starts_with("sips:") {
            target.to_string()
        } else {
            let peer = active.peer;
            match peer {
                SocketAddr::V6(a) => format!("sip:{target}@[{}]:{};user=phone", a.ip(), a.port()),
                SocketAddr::V4(a) => format!("sip:{target}@{a};user=phone"),
            }
        };
        tracing::info!(call = %active.call_id, "transferring by REFER");
        if !self.ua.refer(call, &uri, std::time::Instant::now())
            && let Some(c) = &active.control
        {
            send_control(c, Control::Transferred(false));
        }
    }

    fn media_ended(&mut self, ended: MediaEnded) {
        let MediaEnded {
            call,
            ending,
            stats,
        } = ended;
        let Some(active) = self.calls.remove(&call) else {
            return;
        };
        tracing::info!(
            call = %active.call_id,
            ending = %ending,
            packets_in = stats.packets_in,
            packets_out = stats.packets_out,
            lost = stats.lost,
            late = stats.late,
            malformed = stats.malformed,
            foreign = stats.foreign,
            dtmf = stats.digits,
            digits_sent = stats.digits_sent,
            turns = stats.turns,
            max_in_to_agent_ms = stats.max_in_to_agent.as_millis() as u64,
            "call media ended"
        );
        // The media side ended a call SIP still holds (RTP timeout, maximum duration).
        if active.control.is_some() {
            self.ua.hangup(call, std::time::Instant::now());
        }
    }

    async fn event(&mut self, e: Event) {
        let now = std::time::Instant::now();
        match e {
            Event::Incoming {
                call,
                call_id,
                offer,
                peer,
                from,
                to,
                request_uri,
                headers,
            } => {
                let info = CallInfo {
                    to: user_of(&to),
                    from: user_of(&from),
                    sip_user: user_of(&request_uri),
                    headers,
                    params: Default::default(),
                };
                let offered = Offered {
                    routed: self.ctx.agents.route(&info),
                    caller: info.from,
                    called: info.to,
                    sip_call_id: records::cap(&call_id, records::MAX_REMOTE_ID).to_string(),
                    offer,
                    peer,
                };
                self.incoming(call, offered, now).await
            }
            Event::Confirmed { call, answer } => self.confirmed(call, answer, now),
            Event::Reoffer { call, offer } => self.reoffer(call, offer, now).await,
            Event::Transfer { call, result } => {
                if let Some(active) = self.calls.get(&call) {
                    tracing::info!(call = %active.call_id, ?result, "transfer result");
                    if let Some(c) = &active.control {
                        send_control(c, Control::Transferred(result.is_ok()));
                    }
                }
            }
            Event::Ended { call, reason } => {
                if let Some(r) = self.ringing.remove(&call) {
                    tracing::info!(call = %r.media.call_id, ?reason, "call ended before answer");
                }
                if let Some(m) = self.late.remove(&call) {
                    tracing::info!(call = %m.call_id, ?reason, "call ended before its answer came");
                }
                if let Some(active) = self.calls.get_mut(&call) {
                    // The reactor learns how the call ended, then its channel closes.
                    if let Some(c) = active.control.take() {
                        send_control(&c, Control::Ended(ending_of(reason)));
                    }
                    tracing::info!(call = %active.call_id, ?reason, "call ended");
                } else if !matches!(reason, EndReason::Rejected(_) | EndReason::Cancelled) {
                    tracing::debug!(call = call.0, ?reason, "call ended");
                }
            }
        }
    }

    async fn incoming(&mut self, call: CallRef, offered: Offered, now: std::time::Instant) {
        let Offered {
            sip_call_id,
            caller,
            called,
            offer,
            peer,
            routed,
        } = offered;
        let call_id = records::new_call_id();
        let negotiated = match offer.as_deref().map(|o| self.negotiate(o)) {
            Some(Ok(n)) => Some(n),
            Some(Err(why)) => {
                if let Some(held) = REFUSED_LOG.pass() {
                    tracing::info!(call = %call_id, %peer, reason = %why, held, "offer refused with 488");
                }
                self.ua.reject(call, 488, "Not Acceptable Here", now);
                return;
            }
            // A late offer: Izwi offers in the 200 and the ACK answers.
            None => None,
        };
        tracing::info!(call = %call_id, sip_call_id = %sip_call_id, %peer, agent = %routed.name, rule = %routed.rule.as_deref().unwrap_or("default"), "call offered");
        let media_ip = self.advertise.unwrap_or_else(|| route_towards(peer));
        if self.advertise.is_none() {
            self.ua
                .set_local_host(call, SocketAddr::new(media_ip, self.sip_port));
        }
        let Some((socket, guard)) = rtp::bind_rtp(&self.ports, self.rtp_ip).await else {
            if let Some(held) = REFUSED_LOG.pass() {
                tracing::warn!(call = %call_id, held, "no free RTP port");
            }
            self.ua.reject(call, 503, "Service Unavailable", now);
            return;
        };
        let session_id: u64 = rand::random::<u32>() as u64;
        let sdp = match &negotiated {
            Some(n) => sdp::answer(n, media_ip, guard.port, session_id, 1),
            None => sdp::offer(&self.codecs, true, media_ip, guard.port, session_id, 1),
        };
        let ringing = Ringing {
            due: Instant::now() + Duration::from_millis(self.cfg.ring_ms as u64),
            sdp,
            media: CallMedia {
                socket,
                guard,
                session_id,
                call_id,
                sip_call_id,
                caller,
                called,
                peer,
                media_ip,
                routed,
            },
            negotiated,
        };
        if self.cfg.ring_ms == 0 {
            self.start_call(call, ringing, now);
        } else {
            self.ua.ringing(call);
            self.ringing.insert(call, ringing);
        }
    }

    /// Our answer's parameters for an offer, or why there can be none (→ 488).
    fn negotiate(&self, offer: &str) -> Result<sdp::Negotiated, String> {
        let parsed = sdp::parse(offer).map_err(|e| e.to_string())?;
        sdp::negotiate(&parsed, &self.codecs).map_err(|e| e.to_string())
    }

    fn answer_due(&mut self) {
        let now = Instant::now();
        let due: Vec<CallRef> = self
            .ringing
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(c, _)| *c)
            .collect();
        for call in due {
            if let Some(r) = self.ringing.remove(&call) {
                self.start_call(call, r, std::time::Instant::now());
            }
        }
    }

    /// Answers the call, and starts its media reactor once the session is known.
    fn start_call(&mut self, call: CallRef, r: Ringing, now: std::time::Instant) {
        self.ua.answer(call, &r.sdp, now);
        match r.negotiated {
            Some(n) => self.spawn_media(call, r.media, n, false),
            None => {
                tracing::info!(call = %r.media.call_id, "call answered with an offer (late offer)");
                self.late.insert(call, r.media);
            }
        }
    }

    /// The ACK: it completes a late offer, or updates a session re-offered by Izwi.
    fn confirmed(&mut self, call: CallRef, answer: Option<String>, now: std::time::Instant) {
        let negotiated = answer.as_deref().map(|a| self.negotiate(a));
        if let Some(m) = self.late.remove(&call) {
            match negotiated {
                Some(Ok(n)) => self.spawn_media(call, m, n, true),
                other => {
                    let why = match other {
                        Some(Err(why)) => why,
                        _ => "no answer in the ACK".to_string(),
                    };
                    tracing::info!(call = %m.call_id, reason = %why, "late offer failed; hanging up");
                    self.ua.hangup(call, now);
                }
            }
            return;
        }
        let Some(active) = self.calls.get_mut(&call) else {
            return;
        };
        if let Some(c) = &active.control {
            if !active.confirmed {
                active.confirmed = true;
                // Without it the call would never send.
                send_control(c, Control::Confirmed);
            }
            if let Some(Ok(n)) = negotiated {
                let _ = c.try_send(Control::Update(n.rtp()));
            }
        }
    }

    /// Starts the call's media reactor; `confirmed`: the ACK has come already
    /// (a late offer), so media may go out at once.
    fn spawn_media(
        &mut self,
        call: CallRef,
        m: CallMedia,
        negotiated: sdp::Negotiated,
        confirmed: bool,
    ) {
        let CallMedia {
            socket,
            guard,
            session_id,
            call_id,
            sip_call_id,
            caller,
            called,
            peer,
            media_ip,
            routed,
        } = m;
        let start = CallStart {
            id: call_id.clone(),
            remote_id: Some(sip_call_id),
            transport: CallTransport::Sip,
            started_at_ms: now_ms(),
            called,
            caller,
            agent: Some(routed.name),
            rule: routed.rule,
            codec: Some(negotiated.codec.encoding_name().to_string()),
        };
        let agent = routed.agent;
        tracing::info!(call = %call_id, codec = ?negotiated.codec, ptime = negotiated.ptime, rtp_port = guard.port, "call answered");
        let (control, control_rx) = mpsc::channel(4);
        self.calls.insert(
            call,
            ActiveCall {
                control: Some(control),
                confirmed,
                media_ip,
                peer,
                rtp_port: guard.port,
                sdp_version: 1,
                session_id,
                call_id: call_id.clone(),
            },
        );
        let ctx = self.ctx.clone();
        let ended = self.ended_tx.clone();
        let settings = rtp::Settings {
            jitter_packets: self.cfg.jitter_packets,
            rtp_timeout: Duration::from_secs(self.cfg.rtp_timeout_secs as u64),
            max_duration: Duration::from_secs(self.cfg.max_call_secs as u64),
            latch: self.cfg.rtp_latch,
            peer_ip: peer.ip(),
            confirmed,
            transfer: {
                let tx = self.transfer_tx.clone();
                Box::new(move |target| tx.try_send((call, target)).is_ok())
            },
        };
        let params = negotiated.rtp();
        let reactor = async move {
            let _port = guard;
            let setup = CoreSetup {
                start,
                agent,
                wire_rate: params.codec.clock_rate(),
                confirms_playback: false,
                continuous: true,
            };
            // The core records the call, however it ends (a failed start included).
            let Ok(mut core) = CallCore::start(&ctx, setup).await else {
                return (Ending::AgentFailed, MediaStats::default());
            };
            let (ending, mut stats) =
                rtp::run(socket, params, &mut core, control_rx, settings).await;
            stats.turns = core.end(ending).len();
            (ending, stats)
        };
        tokio::spawn(async move {
            // A reactor that panics still ends its call: BYE, record (its core
            // records `reactor_panicked` as it unwinds), port and slot.
            let (ending, stats) = crate::call::supervise(reactor)
                .await
                .unwrap_or((Ending::Panicked, MediaStats::default()));
            let _ = ended
                .send(MediaEnded {
                    call,
                    ending,
                    stats,
                })
                .await;
        });
    }

    async fn reoffer(&mut self, call: CallRef, offer: Option<String>, now: std::time::Instant) {
        let negotiated = offer.as_deref().map(|o| self.negotiate(o));
        let Some(active) = self.calls.get_mut(&call) else {
            self.ua.answer_reoffer(call, Err(481), now);
            return;
        };
        active.sdp_version += 1;
        let Some(negotiated) = negotiated else {
            // No offer: make one (the answer would come in the ACK, which keeps the session as is).
            let sdp = sdp::offer(
                &self.codecs,
                true,
                active.media_ip,
                active.rtp_port,
                active.session_id,
                active.sdp_version,
            );
            self.ua.answer_reoffer(call, Ok(&sdp), now);
            return;
        };
        match negotiated {
            Ok(n) => {
                let answer = sdp::answer(
                    &n,
                    active.media_ip,
                    active.rtp_port,
                    active.session_id,
                    active.sdp_version,
                );
                tracing::info!(call = %active.call_id, direction = ?n.direction, codec = ?n.codec, "session updated");
                if let Some(c) = &active.control {
                    let _ = c.try_send(Control::Update(n.rtp()));
                }
                self.ua.answer_reoffer(call, Ok(&answer), now);
            }
            Err(why) => {
                tracing::info!(call = %active.call_id, reason = %why, "re-INVITE refused with 488");
                self.ua.answer_reoffer(call, Err(488), now);
            }
        }
    }
}

/// The local address of the route towards `peer` (what a caller on another
/// machine must be given to reach Izwi listening on every address); the
/// loopback address if there is no route.
fn route_towards(peer: SocketAddr) -> IpAddr {
    let any: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// A control message the reactor must get: sent at once, or as soon as its
/// queue has room.
fn send_control(c: &mpsc::Sender<Control>, msg: Control) {
    if let Err(mpsc::error::TrySendError::Full(msg)) = c.try_send(msg) {
        let c = c.clone();
        tokio::spawn(async move { c.send(msg).await });
    }
}

/// Reads and frames one TCP connection's messages for the user agent, and
/// writes what the user agent sends on it. The connection closes when it
/// carries nothing for `idle`, when a message begun is not complete within
/// `message` (a trickle), or when a write cannot finish (the peer stopped
/// reading); the guard gives its place back as the task ends.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    mut out_rx: mpsc::Receiver<String>,
    events: mpsc::Sender<TcpEvent>,
    _guard: Option<ConnectionGuard>,
    timeouts: TcpTimeouts,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = super::stream::Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_read = Instant::now();
    let mut message_began: Option<Instant> = None;
    loop {
        let idle_at = last_read + timeouts.idle.unwrap_or(Duration::from_secs(86_400 * 365));
        let deadline = message_began.map_or(idle_at, |t| (t + timeouts.message).min(idle_at));
        tokio::select! {
            n = reader.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                last_read = now;
                framer.push(&buf[..n]);
                let mut whole = false;
                loop {
                    match framer.next_message() {
                        Ok(Some(msg)) => {
                            whole = true;
                            if events.send(TcpEvent::Message(peer, msg)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // A stream out of frame cannot be resynchronised: drop it.
                            if let Some(held) = REFUSED_LOG.pass() {
                                tracing::info!(%peer, error = %e, held, "closing SIP TCP connection");
                            }
                            let _ = events.send(TcpEvent::Closed(peer)).await;
                            return;
                        }
                    }
                }
                message_began = match (framer.pending(), whole) {
                    (false, _) => None,
                    (true, true) => Some(now),
                    (true, false) => message_began.or(Some(now)),
                };
            }
            msg = out_rx.recv() => {
                let Some(msg) = msg else { break };
                match tokio::time::timeout(TCP_WRITE, writer.write_all(msg.as_bytes())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        metrics().connection_closed("sip_tcp", "write_timeout");
                        break;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let why = if message_began.is_some() && deadline < idle_at { "message_timeout" } else { "idle_timeout" };
                metrics().connection_closed("sip_tcp", why);
                if let Some(held) = REFUSED_LOG.pass() {
                    tracing::info!(%peer, reason = why, held, "closing SIP TCP connection");
                }
                break;
            }
        }
    }
    let _ = events.send(TcpEvent::Closed(peer)).await;
}
