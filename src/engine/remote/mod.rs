//! What every remote engine shares: one HTTP client per backend, whose
//! keep-alive pool spares a turn a new connection (and TLS handshake), and
//! failures typed and counted by backend and kind. Nothing here logs a
//! prompt, a transcript or audio: errors carry the backend's name, the kind
//! and the transport's own message.

pub mod sse;

use std::time::Duration;

use crate::engine::{EngineError, RemoteError, RemoteFailure};

/// One server of one stage (`[llm.NAME]`, `[asr.NAME]`, `[tts.NAME]`): its
/// name, for errors, logs and metrics; its own client, whose pool keeps the
/// connections alive; the endpoint's URL; the bearer token.
pub struct Endpoint {
    pub name: String,
    client: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Endpoint {
    /// `{base_url}/{path}` of the server `[stage.name]`; `key` as its table
    /// gave it (a missing variable is an error naming the setting).
    pub fn new(
        stage: &str,
        name: &str,
        base_url: &str,
        path: &str,
        key: Result<Option<String>, String>,
        connect_timeout_ms: u64,
    ) -> Result<Endpoint, EngineError> {
        let key =
            key.map_err(|e| EngineError::Setting(format!("{stage}.{name}.api_key_env: {e}")))?;
        Ok(Endpoint {
            name: name.to_string(),
            client: client(Duration::from_millis(connect_timeout_ms))?,
            url: format!("{}/{path}", base_url.trim().trim_end_matches('/')),
            key,
        })
    }

    /// A POST to the endpoint, with the key.
    pub fn post(&self) -> reqwest::RequestBuilder {
        let request = self.client.post(&self.url);
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// A client for one backend.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, EngineError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_nodelay(true)
        // A redirect would carry the key (or a tool's secret headers and
        // arguments) to another host: refused, the 3xx is the answer.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("izwi/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EngineError::Worker(format!("HTTP client: {e}")))
}

/// A failure of `backend`, counted in `izwi_engine_failures_total`.
pub fn failure(backend: &str, kind: RemoteFailure, detail: impl Into<String>) -> EngineError {
    crate::metrics::metrics().engine_failure(backend, kind.label());
    EngineError::Remote(RemoteError {
        backend: backend.to_string(),
        kind,
        detail: detail.into(),
    })
}

/// A transport error, typed and counted. Its message with its causes (a
/// refused connection is only named in the innermost one).
pub fn transport_failure(backend: &str, e: &reqwest::Error) -> EngineError {
    let kind = if e.is_timeout() {
        RemoteFailure::Timeout
    } else if let Some(status) = e.status() {
        RemoteFailure::Status(status.as_u16())
    } else if e.is_decode() {
        RemoteFailure::Malformed
    } else {
        RemoteFailure::Connect
    };
    let mut detail = e.to_string();
    // The URL may carry a key (in its user part or query): only its origin
    // and path are shown.
    if let Some(url) = e.url() {
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        detail = detail.replace(url.as_str(), shown.as_str());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    failure(backend, kind, detail)
}

/// For unit tests of HTTP clients: reads one request (head, then the body by
/// its Content-Length) from `conn`; `None` if the peer closed first.
#[cfg(test)]
pub(crate) async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
        // Counted in bytes: a body may be binary (a WAV upload).
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if request.len() - end - 4 >= len {
                return Some(String::from_utf8_lossy(&request).to_string());
            }
        }
    }
}
