//! The HTTP side of Izwi: cloud providers' voice webhooks and media-stream
//! WebSockets (Twilio first). One listener, one router; each stream is a call
//! in its own task.

pub mod api;
pub mod auth;
pub mod media_stream;
pub mod twilio;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::call::session::CallContext;
use crate::config::{ApiConfig, Config, HttpConfig, TwilioConfig};
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
    /// What the recorder had dropped at the last scrape.
    pub records_dropped_seen: AtomicU64,
    /// Keys the stream tokens handed out in TwiML: the auth token, or a
    /// per-process random secret when there is none.
    pub stream_secret: String,
    /// Streams (calls) in progress.
    pub active_streams: AtomicUsize,
    /// Flips to true at shutdown: every stream closes.
    pub shutdown: watch::Receiver<bool>,
}

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
}

impl Server {
    pub async fn bind(
        config: &Config,
        ctx: Arc<CallContext>,
        store: Option<Store>,
        ready: Arc<AtomicBool>,
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
        let state = Arc::new(AppState {
            ctx,
            http: http.clone(),
            twilio: twilio.clone(),
            api: api.clone(),
            auth,
            store,
            ready,
            records_dropped_seen: AtomicU64::new(0),
            stream_secret,
            active_streams: AtomicUsize::new(0),
            shutdown,
        });
        Ok(Server {
            listener,
            state,
            stop,
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
        let mut app = Router::new()
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/metrics", get(api::prometheus))
            .merge(v1);
        if state.twilio.enabled {
            app = app
                .route(&state.twilio.voice_path, post(twilio::voice))
                .route(&state.twilio.stream_path, get(twilio::stream));
        }
        let app = app.with_state(state.clone());
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, "HTTP listening");
        }
        let stopped = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
            .map_err(HttpError::Serve)?;
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
