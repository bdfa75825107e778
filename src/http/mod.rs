//! The HTTP side of Izwi: cloud providers' voice webhooks and media-stream
//! WebSockets (Twilio first), health, metrics and the operator API. One
//! listener, one router; each stream is a call in its own task.
//!
//! The accept loop is Izwi's own (on hyper), so that it holds under attack:
//! connections are capped in all and per source (a refused one gets a short
//! 503), a request's headers must arrive within `http.header_timeout_secs`
//! (which also closes idle keep-alive connections), a request must be
//! answered within `http.request_timeout_secs`, and accept errors (no file
//! descriptor left) pause accepting instead of spinning, counted.

pub mod api;
pub mod auth;
pub mod console;
pub mod media_stream;
pub mod twilio;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::call::session::CallContext;
use crate::config::{ApiConfig, Config, HttpConfig, TwilioConfig};
use crate::limits::{AcceptBackoff, Cidr, ConnectionCaps, ConnectionGuard, SharedLogGate};
use crate::metrics::metrics;
use crate::records::Store;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("setting `api.jwt_public_key`: cannot read {path}")]
    PublicKey {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
}

/// What every handler shares.
pub struct AppState {
    pub ctx: Arc<CallContext>,
    pub http: HttpConfig,
    pub twilio: TwilioConfig,
    pub api: ApiConfig,
    pub auth: auth::Authenticator,
    /// The call records, when kept.
    pub store: Option<Store>,
    /// Models loaded and warmed.
    pub ready: Arc<AtomicBool>,
    /// Stopping: no new calls (SIGTERM).
    pub draining: Arc<AtomicBool>,
    /// What the recorder had dropped at the last scrape.
    pub records_dropped_seen: AtomicU64,
    /// The recorder's failed writes at the last scrape.
    pub records_errors_seen: AtomicU64,
    /// Who may read `/metrics` (empty: anyone).
    pub metrics_allow: Vec<Cidr>,
    /// Stream tokens already used (each starts one stream only), with the
    /// time they stop being valid anyway.
    pub used_tokens: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Keys the stream tokens handed out in TwiML: the auth token, or a
    /// per-process random secret when there is none.
    pub stream_secret: String,
    /// Streams (calls) in progress.
    pub active_streams: AtomicUsize,
    /// Calls whose agent transferred them, by CallSid: the target the
    /// `<Connect action>` callback dials, and when the entry lapses.
    pub transfers: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
    /// Flips to true at shutdown: every stream closes.
    pub shutdown: watch::Receiver<bool>,
    /// Operators signed in to the console.
    pub console: console::Sessions,
    /// Where the model files are, for the console's view of them.
    pub models: crate::config::ModelsConfig,
    /// The model files' states as last checked for the console, and when.
    pub model_states: tokio::sync::Mutex<Option<(std::time::Instant, Vec<serde_json::Value>)>>,
}

/// Lines about refused connections per window.
static REFUSED_LOG: SharedLogGate = SharedLogGate::new(10, Duration::from_secs(10));

/// Counts a stream for as long as it lives.
pub struct StreamSlot(Arc<AppState>);

impl StreamSlot {
    /// A slot, unless `max` streams are already running.
    pub fn take(state: &Arc<AppState>, max: usize) -> Option<StreamSlot> {
        let taken = state
            .active_streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| StreamSlot(state.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    caps: ConnectionCaps,
}

impl Server {
    /// How many media streams are open, for a drain to wait on.
    pub fn live_streams(&self) -> impl Fn() -> usize + Send + 'static {
        let state = self.state.clone();
        move || state.active_streams.load(Ordering::SeqCst)
    }

    pub async fn bind(
        config: &Config,
        ctx: Arc<CallContext>,
        store: Option<Store>,
        ready: Arc<AtomicBool>,
        draining: Arc<AtomicBool>,
    ) -> Result<Server, HttpError> {
        let (http, twilio, api) = (&config.http, &config.twilio, &config.api);
        let jwt_public_key_pem = if api.jwt_public_key.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(&api.jwt_public_key).map_err(|source| HttpError::PublicKey {
                path: api.jwt_public_key.clone(),
                source,
            })?
        };
        let auth = auth::Authenticator::new(&auth::AuthSettings {
            jwt_secret: api.jwt_secret.clone(),
            jwt_public_key_pem,
            audience: api.jwt_audience.clone(),
            api_keys: api.api_keys.clone(),
            rate_per_minute: api.rate_per_minute,
        })?;
        if !auth.configured() {
            tracing::info!(
                "no API credentials configured (api.jwt_secret, api.jwt_public_key, api.api_keys): /v1 answers 401"
            );
        }
        let listener = TcpListener::bind(&http.listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: http.listen.clone(),
                source,
            })?;
        let (stop, shutdown) = watch::channel(false);
        let stream_secret = if twilio.auth_token.is_empty() {
            hex::encode(rand::random::<[u8; 32]>())
        } else {
            twilio.auth_token.clone()
        };
        if twilio.enabled && twilio.validate_signature && twilio.auth_token.is_empty() {
            tracing::warn!(
                "twilio.auth_token is not set: the voice webhook refuses every request (403)"
            );
        }
        let max = match http.max_connections {
            0 => crate::limits::connection_share(config.sip.max_calls),
            n => n,
        };
        let caps = ConnectionCaps::new(max, http.max_connections_per_source);
        let metrics_allow = http
            .metrics_allow
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let state = Arc::new(AppState {
            ctx,
            http: http.clone(),
            twilio: twilio.clone(),
            api: api.clone(),
            auth,
            store,
            ready,
            draining,
            records_dropped_seen: AtomicU64::new(0),
            records_errors_seen: AtomicU64::new(0),
            metrics_allow,
            used_tokens: Default::default(),
            transfers: Default::default(),
            stream_secret,
            active_streams: AtomicUsize::new(0),
            shutdown,
            console: Default::default(),
            models: config.models.clone(),
            model_states: Default::default(),
        });
        Ok(Server {
            listener,
            state,
            stop,
            caps,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then closes every stream (each writes
    /// its record) and waits a little for them.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let Server {
            listener,
            state,
            stop,
            caps,
        } = self;
        let v1 = Router::new()
            .route("/v1/calls", get(api::list_calls))
            .route("/v1/calls/{id}", get(api::get_call))
            .route("/v1/admin/warmup", post(api::warmup))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                api::authenticate,
            ))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                api::cors,
            ));
        let metrics_route = Router::new()
            .route("/metrics", get(api::prometheus))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                api::metrics_allowed,
            ));
        let console_api = Router::new()
            .route("/console/api/sign-out", post(console::sign_out))
            .route("/console/api/me", get(console::me))
            .route("/console/api/live", get(console::live))
            .route("/console/api/calls", get(api::list_calls))
            .route("/console/api/calls/{id}", get(api::get_call))
            .route("/console/api/calls/{id}/hangup", post(console::hang_up))
            .route("/console/api/latency", get(console::latency))
            .route("/console/api/agents", get(console::agents))
            .route("/console/talk", get(console::browser::talk))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                console::signed_in,
            ));
        let console_routes = Router::new()
            .route("/console", get(console::index))
            .route("/console/", get(console::index))
            .route("/console/app.js", get(console::app_js))
            .route("/console/app.css", get(console::app_css))
            .route("/console/worklet.js", get(console::worklet_js))
            .route("/console/api/session", post(console::sign_in))
            .merge(console_api)
            .layer(axum::middleware::from_fn(console::headers));
        let mut app = Router::new()
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .merge(metrics_route)
            .merge(v1)
            .merge(console_routes);
        if state.twilio.enabled {
            app = app
                .route(&state.twilio.voice_path, post(twilio::voice))
                .route(&state.twilio.stream_path, get(twilio::stream))
                .route(&state.twilio.action_path, post(twilio::stream_ended));
        }
        let request_timeout = Duration::from_secs(state.http.request_timeout_secs);
        let app = app
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                    match tokio::time::timeout(request_timeout, next.run(req)).await {
                        Ok(r) => r,
                        Err(_) => {
                            metrics().connection_closed("http", "request_timeout");
                            axum::http::StatusCode::REQUEST_TIMEOUT.into_response()
                        }
                    }
                },
            ))
            .with_state(state.clone());
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(
                listen = %addr,
                max_connections = caps.max_total(),
                max_connections_per_source = caps.max_per_source(),
                "HTTP listening"
            );
        }
        let header_timeout = Duration::from_secs(state.http.header_timeout_secs);
        let (closing, _) = watch::channel(false);
        let mut accept = AcceptBackoff::new("http");
        tokio::pin!(shutdown);
        loop {
            if let Some(at) = accept
                .resume_at()
                .filter(|_| !accept.open(std::time::Instant::now()))
            {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = &mut shutdown => break,
                }
            }
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => {
                        accept.accepted();
                        c
                    }
                    Err(e) => {
                        accept.failed(&e, std::time::Instant::now());
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let guard = match caps.admit(peer.ip()) {
                Ok(g) => g,
                Err(refusal) => {
                    metrics().connection_refused("http", refusal.label());
                    if let Some(held) = REFUSED_LOG.pass() {
                        tracing::info!(%peer, cap = refusal.label(), held, "HTTP connection refused");
                    }
                    // A short answer, written only if the socket takes it at once.
                    let _ = stream.try_write(BUSY);
                    continue;
                }
            };
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
            tokio::spawn(serve_connection(
                Guarded::new(stream, guard),
                peer,
                app.clone(),
                header_timeout,
                closing.subscribe(),
            ));
        }
        let _ = stop.send(true);
        let _ = closing.send(true);
        // Upgraded connections outlive the server: give the streams a moment to close.
        for _ in 0..50 {
            if state.active_streams.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The kernel's send buffer of each HTTP connection. A media stream is real
/// time: audio queued deeper than this is audio a `clear` cannot take back,
/// and a client that has stopped reading must block Izwi's writes within
/// seconds (then its stream is closed), not after megabytes of autotuned
/// buffer. Twilio's outbound audio is about 17 KB/s; API answers take a few
/// more round trips.
const SEND_BUFFER: usize = 32 * 1024;

/// What a connection over the cap is told before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

use axum::response::IntoResponse as _;

/// One connection: HTTP/1.1 (upgrades to WebSocket included), with the peer's
/// address given to handlers as [`ConnectInfo`]. Its header-read timeout runs
/// from the connection's first moment and again while it waits for the next
/// request, so a silent or trickling client is closed.
async fn serve_connection(
    io: Guarded,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics().connection_closed("http", "header_timeout");
                }
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = async { let _ = closing.wait_for(|c| *c).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// How long a connection's writes may make no progress (the client reads
/// nothing) before it is closed.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// A connection that counts against its caps for as long as it is open,
/// upgraded (a WebSocket) or not, and that fails its writes once they have
/// made no progress for [`WRITE_STALL`]: a client that sends requests and
/// never reads the answers does not hold its connection forever.
struct Guarded {
    io: TcpStream,
    _guard: ConnectionGuard,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    fn new(io: TcpStream, guard: ConnectionGuard) -> Guarded {
        Guarded {
            io,
            _guard: guard,
            stall: None,
        }
    }

    /// Pending writes start (or keep running) the stall timer; a write that
    /// goes through stops it.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => {
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                if stall.as_mut().poll(cx).is_ready() {
                    metrics().connection_closed("http", "write_timeout");
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
            ready => {
                self.stall = None;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
