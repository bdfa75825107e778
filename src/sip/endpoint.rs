//! The SIP endpoint's thin async shell: one UDP socket, the sans-IO user agent,
//! and one media reactor task per answered call.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::access::{AccessPolicy, Credentials};
use super::message::Identity;
use super::sdp::{self, Codec};
use super::ua::{CallRef, EndReason, Event, Output, Transport, UaConfig, UserAgent};
use crate::call::Agent;
use crate::call::media::{self, CallAgent, Control, Exit, MediaSettings, MediaStats, PortPool};
use crate::config::{SipConfig, TurnConfig};
use crate::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot listen for SIP on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("setting `sip.listen`: `{0}` is not an address:port")]
    Listen(String),
}

/// What a call needs to be answered.
pub struct CallContext {
    pub engine: Option<Arc<Engine>>,
    pub agent: Option<Arc<Agent>>,
    pub turn: TurnConfig,
    pub echo: bool,
}

/// A call negotiated and ringing, answered when its time comes.
struct Ringing {
    due: Instant,
    answer: String,
    socket: UdpSocket,
    guard: media::PortGuard,
    negotiated: sdp::Negotiated,
    session_id: u64,
    call_id: String,
}

/// What connection tasks tell the endpoint.
enum TcpEvent {
    Message(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// Messages waiting to be written to one TCP connection.
const TCP_QUEUE: usize = 32;

struct ActiveCall {
    /// Dropped when the SIP side ends the call, which stops its media reactor.
    control: Option<mpsc::Sender<Control>>,
    rtp_port: u16,
    sdp_version: u64,
    session_id: u64,
    call_id: String,
}

pub struct Endpoint {
    socket: Arc<UdpSocket>,
    tcp: TcpListener,
    tcp_conns: HashMap<SocketAddr, mpsc::Sender<String>>,
    tcp_tx: mpsc::Sender<TcpEvent>,
    tcp_rx: mpsc::Receiver<TcpEvent>,
    ua: UserAgent,
    cfg: SipConfig,
    media_ip: IpAddr,
    codecs: Vec<Codec>,
    ports: PortPool,
    ctx: Arc<CallContext>,
    calls: HashMap<CallRef, ActiveCall>,
    ringing: HashMap<CallRef, Ringing>,
    ended_tx: mpsc::Sender<(CallRef, Exit, MediaStats)>,
    ended_rx: mpsc::Receiver<(CallRef, Exit, MediaStats)>,
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
        let media_ip: IpAddr = match cfg.advertise.parse() {
            Ok(ip) => ip,
            Err(_) if local.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            Err(_) => local.ip(),
        };
        let host = SocketAddr::new(media_ip, local.port());
        let allow = cfg.allow.iter().filter_map(|c| c.parse().ok()).collect();
        let credentials = (!cfg.auth_user.is_empty()).then(|| Credentials {
            realm: cfg.auth_realm.clone(),
            username: cfg.auth_user.clone(),
            password: cfg.auth_password.clone(),
        });
        let access = AccessPolicy::new(allow, credentials);
        let ua = UserAgent::with_access(
            UaConfig {
                identity: Identity {
                    user_agent: concat!("Izwi/", env!("CARGO_PKG_VERSION")).into(),
                    contact: format!("sip:izwi@{host}"),
                },
                via_host: host.to_string(),
                max_calls: cfg.max_calls,
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
        let (ended_tx, ended_rx) = mpsc::channel(64);
        let (tcp_tx, tcp_rx) = mpsc::channel(256);
        tracing::info!(listen = %local, advertise = %media_ip, "SIP listening (UDP and TCP)");
        Ok(Endpoint {
            socket: Arc::new(socket),
            tcp,
            tcp_conns: HashMap::new(),
            tcp_tx,
            tcp_rx,
            ua,
            cfg: cfg.clone(),
            media_ip,
            codecs,
            ports: PortPool::new(cfg.rtp_port_min, cfg.rtp_port_max),
            ctx,
            calls: HashMap::new(),
            ringing: HashMap::new(),
            ended_tx,
            ended_rx,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then hangs up every call.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; 65_536];
        let far = Duration::from_secs(3600);
        loop {
            let wake = self
                .ua
                .poll_timeout()
                .map(Instant::from_std)
                .into_iter()
                .chain(self.ringing.values().map(|r| r.due))
                .min()
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, from)) => self.ua.handle_message(&buf[..n], from, Transport::Udp, std::time::Instant::now()),
                        Err(e) => tracing::debug!(error = %e, "SIP receive error"),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.ua.handle_timeout(std::time::Instant::now());
                    self.answer_due();
                }
                Some((call, exit, stats)) = self.ended_rx.recv() => self.media_ended(call, exit, stats),
                accepted = self.tcp.accept() => {
                    if let Ok((stream, peer)) = accepted {
                        self.connection(stream, peer);
                    }
                }
                Some(ev) = self.tcp_rx.recv() => match ev {
                    TcpEvent::Message(from, bytes) => self.ua.handle_message(&bytes, from, Transport::Tcp, std::time::Instant::now()),
                    TcpEvent::Closed(peer) => {
                        self.tcp_conns.remove(&peer);
                    }
                },
                _ = &mut shutdown => break,
            }
            self.flush().await;
        }
        let calls: Vec<CallRef> = self.calls.keys().copied().collect();
        for call in calls {
            self.ua.hangup(call, std::time::Instant::now());
        }
        self.flush().await;
        tracing::info!(stats = ?self.ua.stats(), "SIP endpoint stopped");
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
                } => match self.tcp_conns.get(&to) {
                    Some(conn) => {
                        if conn.try_send(data).is_err() {
                            tracing::debug!(%to, "TCP connection full or gone; message dropped");
                        }
                    }
                    None => {
                        // Izwi opens no TCP connections of its own yet.
                        tracing::debug!(%to, "no TCP connection to send on; message dropped");
                    }
                },
                Output::Event(e) => self.event(e).await,
            }
        }
    }

    /// One task per TCP connection: reads and frames messages for the user
    /// agent, and writes what the user agent sends back on it.
    fn connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let (out_tx, mut out_rx) = mpsc::channel::<String>(TCP_QUEUE);
        self.tcp_conns.insert(peer, out_tx);
        let events = self.tcp_tx.clone();
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let mut framer = super::stream::Framer::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    n = reader.read(&mut buf) => {
                        let n = match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        framer.push(&buf[..n]);
                        loop {
                            match framer.next_message() {
                                Ok(Some(msg)) => {
                                    if events.send(TcpEvent::Message(peer, msg)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    // A stream out of frame cannot be resynchronised: drop it.
                                    tracing::info!(%peer, error = %e, "closing SIP TCP connection");
                                    let _ = events.send(TcpEvent::Closed(peer)).await;
                                    return;
                                }
                            }
                        }
                    }
                    msg = out_rx.recv() => {
                        let Some(msg) = msg else { break };
                        if writer.write_all(msg.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = events.send(TcpEvent::Closed(peer)).await;
        });
    }

    fn media_ended(&mut self, call: CallRef, exit: Exit, stats: MediaStats) {
        let Some(active) = self.calls.remove(&call) else {
            return;
        };
        tracing::info!(
            call = %active.call_id,
            ?exit,
            packets_in = stats.packets_in,
            packets_out = stats.packets_out,
            lost = stats.lost,
            late = stats.late,
            malformed = stats.malformed,
            dtmf = stats.digits.len(),
            turns = stats.turns.len(),
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
                ..
            } => self.incoming(call, call_id, offer, peer, now).await,
            Event::Confirmed { call } => tracing::debug!(call = call.0, "call confirmed"),
            Event::Reoffer { call, offer } => self.reoffer(call, offer, now).await,
            Event::Ended { call, reason } => {
                if let Some(r) = self.ringing.remove(&call) {
                    tracing::info!(call = %r.call_id, ?reason, "call ended before answer");
                }
                if let Some(active) = self.calls.get_mut(&call) {
                    active.control = None;
                    tracing::info!(call = %active.call_id, ?reason, "call ended");
                } else if !matches!(reason, EndReason::Rejected(_) | EndReason::Cancelled) {
                    tracing::debug!(call = call.0, ?reason, "call ended");
                }
            }
        }
    }

    async fn incoming(
        &mut self,
        call: CallRef,
        call_id: String,
        offer: Option<String>,
        peer: SocketAddr,
        now: std::time::Instant,
    ) {
        let Some(offer) = offer else {
            tracing::info!(call = %call_id, "INVITE without SDP offer refused");
            self.ua.reject(call, 488, "Not Acceptable Here", now);
            return;
        };
        let negotiated = self.negotiate(&offer);
        let negotiated = match negotiated {
            Ok(n) => n,
            Err(why) => {
                tracing::info!(call = %call_id, %peer, reason = %why, "offer refused with 488");
                self.ua.reject(call, 488, "Not Acceptable Here", now);
                return;
            }
        };
        let Some((socket, guard)) = media::bind_rtp(&self.ports, self.media_ip).await else {
            tracing::warn!(call = %call_id, "no free RTP port");
            self.ua.reject(call, 503, "Service Unavailable", now);
            return;
        };
        let session_id: u64 = rand::random::<u32>() as u64;
        let answer = sdp::answer(&negotiated, self.media_ip, guard.port, session_id, 1);
        let ringing = Ringing {
            due: Instant::now() + Duration::from_millis(self.cfg.ring_ms as u64),
            answer,
            socket,
            guard,
            negotiated,
            session_id,
            call_id,
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

    /// Answers the call and starts its media reactor.
    fn start_call(&mut self, call: CallRef, r: Ringing, now: std::time::Instant) {
        let Ringing {
            answer,
            socket,
            guard,
            negotiated,
            session_id,
            call_id,
            ..
        } = r;
        self.ua.answer(call, &answer, now);
        tracing::info!(call = %call_id, codec = ?negotiated.codec, rtp_port = guard.port, "call answered");
        let (control, control_rx) = mpsc::channel(4);
        self.calls.insert(
            call,
            ActiveCall {
                control: Some(control),
                rtp_port: guard.port,
                sdp_version: 1,
                session_id,
                call_id: call_id.clone(),
            },
        );
        let ctx = self.ctx.clone();
        let ended = self.ended_tx.clone();
        let settings = MediaSettings {
            jitter_packets: self.cfg.jitter_packets,
            rtp_timeout: Duration::from_secs(self.cfg.rtp_timeout_secs as u64),
            max_duration: Duration::from_secs(self.cfg.max_call_secs as u64),
        };
        tokio::spawn(async move {
            let _port = guard;
            let agent = CallAgent::start(
                ctx.echo,
                ctx.engine.clone(),
                ctx.agent.clone(),
                &ctx.turn,
                &call_id,
            )
            .await;
            let (exit, stats) = match agent {
                Ok(agent) => {
                    media::run(socket, negotiated, agent, control_rx, settings, call_id).await
                }
                Err(e) => {
                    tracing::warn!(call = %call_id, error = %e, "cannot start the call's agent");
                    (Exit::RtpTimeout, MediaStats::default())
                }
            };
            let _ = ended.send((call, exit, stats)).await;
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
                self.media_ip,
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
                    self.media_ip,
                    active.rtp_port,
                    active.session_id,
                    active.sdp_version,
                );
                tracing::info!(call = %active.call_id, direction = ?n.direction, codec = ?n.codec, "session updated");
                if let Some(c) = &active.control {
                    let _ = c.try_send(Control::Update(n));
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
