//! Live process metrics, exposed as Prometheus text (`GET /metrics`).
//!
//! One [`Metrics`] per process ([`metrics()`]), built on the `prometheus-client`
//! registry and encoded with its Prometheus **0.0.4 text** encoder
//! ([`Metrics::encode`], served with [`Metrics::CONTENT_TYPE`]).
//!
//! Why 0.0.4 text rather than OpenMetrics: the OpenMetrics encoder writes a
//! counter's `# TYPE` line under the family name without `_total`
//! (`# TYPE izwi_calls counter` above `izwi_calls_total{..} 1`) and ends with
//! `# EOF`. Plain Prometheus-text readers, `prometheus-parse` included, then
//! see every counter sample as untyped. The 0.0.4 encoder names `# HELP` and
//! `# TYPE` after the sample (`izwi_calls_total`), writes no `# UNIT`,
//! `_created` or `# EOF` lines, and is what every Prometheus server scrapes.
//!
//! Names: everything starts with `izwi_`; counters end in `_total`
//! (`prometheus-client` appends it to the registered name); durations are
//! histograms in seconds with a `_seconds` suffix.
//!
//! Cost on the audio path: an observation interns its label values (a read
//! lock over a vector of at most [`MAX_LABEL_VALUES`] `&'static str`, no
//! allocation for an already-seen value), then looks the series up in its
//! family (a short `parking_lot` read lock, an atomic add for counters and
//! gauges, a short mutex around the histogram's buckets). No lock is held
//! beyond the call, so none is held across an `.await`.
//!
//! Label values come from our own code, but they are still bounded: each label
//! keeps the first [`MAX_LABEL_VALUES`] distinct values it sees and folds any
//! later one into `"other"`. Values are also sanitised (`{id}` becomes `:id`,
//! other characters outside `[A-Za-z0-9_.:/-]` become `_`, at most 64 bytes,
//! empty becomes `"unknown"`) so that even naive text parsers read them back
//! unchanged.
//!
//! A labelled family writes no lines at all until its first observation; the
//! unlabelled ones (stage histograms, `izwi_ready`,
//! `izwi_call_records_dropped_total`) are always present.

use std::sync::{OnceLock, RwLock};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Distinct values one label keeps before folding the rest into [`OTHER`].
pub const MAX_LABEL_VALUES: usize = 32;
/// The value that label values beyond [`MAX_LABEL_VALUES`] are folded into.
pub const OTHER: &str = "other";
/// Longest label value kept, in bytes; longer values are truncated.
const MAX_LABEL_LEN: usize = 64;

/// Upper bounds (seconds) for voice latency histograms: a good turn answers in
/// a few hundred milliseconds, a bad one in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];
/// Upper bounds for LLM decode throughput, tokens per second.
const TOKEN_RATE_BUCKETS: [f64; 11] = [
    5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0,
];

type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type HistogramFn = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn token_rate_histogram() -> Histogram {
    Histogram::new(TOKEN_RATE_BUCKETS)
}

/// Per-turn engine timings, in milliseconds (throughput in tokens per second).
/// Each `Some` is observed into its histogram; `None` is skipped, as are
/// negative and non-finite values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnTimings {
    /// Caller's end of speech → first agent audio sent.
    pub response_ms: Option<f64>,
    /// Speech recognition of the caller's utterance.
    pub asr_ms: Option<f64>,
    /// Prompt submitted → first LLM token.
    pub llm_first_token_ms: Option<f64>,
    /// Text submitted → first synthesised audio.
    pub tts_first_audio_ms: Option<f64>,
    /// LLM decode throughput.
    pub llm_tokens_per_s: Option<f64>,
}

/// The bounded set of values one label has taken. Values are leaked once each
/// (at most [`MAX_LABEL_VALUES`] per label) so that series keys are
/// `&'static str` and observations never allocate.
#[derive(Debug, Default)]
struct LabelValues {
    seen: RwLock<Vec<&'static str>>,
}

impl LabelValues {
    fn intern(&self, raw: &str) -> &'static str {
        let cleaned;
        let value = if is_clean(raw) {
            raw
        } else {
            cleaned = sanitize(raw);
            cleaned.as_str()
        };
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = seen.iter().find(|v| **v == value) {
                return v;
            }
            if seen.len() >= MAX_LABEL_VALUES {
                return OTHER;
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = seen.iter().find(|v| **v == value) {
            return v;
        }
        if seen.len() >= MAX_LABEL_VALUES {
            return OTHER;
        }
        let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
        seen.push(leaked);
        leaked
    }
}

fn label_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
}

fn is_clean(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_LABEL_LEN && v.bytes().all(label_byte_ok)
}

fn sanitize(v: &str) -> String {
    // Route patterns read better as `/calls/:id` than `/calls/_id_`.
    let mut out: String = v
        .chars()
        .filter(|c| *c != '}')
        .map(|c| match c {
            '{' => ':',
            c if c.is_ascii() && label_byte_ok(c as u8) => c,
            _ => '_',
        })
        .collect();
    out.truncate(MAX_LABEL_LEN); // all ASCII now, so any index is a boundary
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// Decimal digits of a status code, without allocating.
fn status_digits(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Milliseconds → seconds, if the reading is usable.
fn ms_to_s(ms: Option<f64>) -> Option<f64> {
    ms.filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v / 1000.0)
}

/// The process's metrics. See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,

    transport: LabelValues,
    outcome: LabelValues,
    rtp_reason: LabelValues,
    sip_reason: LabelValues,
    stream_kind: LabelValues,
    provider: LabelValues,
    result: LabelValues,
    route: LabelValues,
    status: LabelValues,
    listener: LabelValues,
    conn_reason: LabelValues,
    backend: LabelValues,

    calls_active: Family<L1, Gauge>,
    calls_started: Family<L1, Counter>,
    calls: Family<L2, Counter>,
    response_latency: Family<L1, Histogram, HistogramFn>,
    asr_duration: Histogram,
    llm_first_token: Histogram,
    tts_first_audio: Histogram,
    llm_tokens_per_second: Histogram,
    barge_ins: Family<L1, Counter>,
    dtmf_digits: Family<L1, Counter>,
    rtp_dropped: Family<L1, Counter>,
    sip_rejected: Family<L1, Counter>,
    stream_rejected: Family<L1, Counter>,
    records_dropped: Counter,
    records_write_errors: Counter,
    records_pending: Gauge,
    webhooks: Family<L2, Counter>,
    api_requests: Family<L2, Counter>,
    accept_errors: Family<L2, Counter>,
    dialplan_reloads: Family<L1, Counter>,
    agent_actions: Family<L2, Counter>,
    engine_failures: Family<L2, Counter>,
    connections_refused: Family<L2, Counter>,
    connections_closed: Family<L2, Counter>,
    ready: Gauge,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics; created on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// `Content-Type` to serve [`Metrics::encode`] with (Prometheus text 0.0.4).
    pub const CONTENT_TYPE: &'static str = prometheus_text::CONTENT_TYPE;

    /// A fresh, independent registry. The process uses [`metrics()`]; tests
    /// make their own so they do not see each other's observations.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // `register` appends the `.` to help texts, and `_total` to counters.
        let calls_active = Family::<L1, Gauge>::default();
        registry.register(
            "izwi_calls_active",
            "Calls in progress, by transport",
            calls_active.clone(),
        );
        let calls_started = Family::<L1, Counter>::default();
        registry.register(
            "izwi_calls_started",
            "Calls started, by transport",
            calls_started.clone(),
        );
        let calls = Family::<L2, Counter>::default();
        registry.register(
            "izwi_calls",
            "Calls ended, by transport and outcome (completed, failed, interrupted, rejected)",
            calls.clone(),
        );
        let response_latency =
            Family::<L1, Histogram, HistogramFn>::new_with_constructor(latency_histogram);
        registry.register(
            "izwi_response_latency_seconds",
            "Caller end of speech to first agent audio, by transport",
            response_latency.clone(),
        );
        let asr_duration = latency_histogram();
        registry.register(
            "izwi_asr_duration_seconds",
            "Speech recognition time per caller utterance",
            asr_duration.clone(),
        );
        let llm_first_token = latency_histogram();
        registry.register(
            "izwi_llm_first_token_seconds",
            "LLM time to first token per turn",
            llm_first_token.clone(),
        );
        let tts_first_audio = latency_histogram();
        registry.register(
            "izwi_tts_first_audio_seconds",
            "Speech synthesis time to first audio per turn",
            tts_first_audio.clone(),
        );
        let llm_tokens_per_second = token_rate_histogram();
        registry.register(
            "izwi_llm_tokens_per_second",
            "LLM decode throughput per turn, in tokens per second",
            llm_tokens_per_second.clone(),
        );
        let barge_ins = Family::<L1, Counter>::default();
        registry.register(
            "izwi_barge_ins",
            "Times the caller interrupted agent speech, by transport",
            barge_ins.clone(),
        );
        let dtmf_digits = Family::<L1, Counter>::default();
        registry.register(
            "izwi_dtmf_digits",
            "DTMF digits received, by transport",
            dtmf_digits.clone(),
        );
        let rtp_dropped = Family::<L1, Counter>::default();
        registry.register(
            "izwi_rtp_packets_dropped",
            "RTP packets dropped or lost, by reason (malformed, foreign, unknown_payload, late, lost); counted while calls last",
            rtp_dropped.clone(),
        );
        let sip_rejected = Family::<L1, Counter>::default();
        registry.register(
            "izwi_sip_messages_rejected",
            "SIP messages rejected, by reason (dropped, bad_request, challenged, forbidden, rate_limited, busy, source_busy, merged, auth_blocked, auth_*)",
            sip_rejected.clone(),
        );
        let stream_rejected = Family::<L1, Counter>::default();
        registry.register(
            "izwi_stream_frames_rejected",
            "Media stream frames rejected, by kind",
            stream_rejected.clone(),
        );
        let records_dropped = Counter::default();
        registry.register(
            "izwi_call_records_dropped",
            "Call records dropped before they could be stored",
            records_dropped.clone(),
        );
        let records_write_errors = Counter::default();
        registry.register(
            "izwi_call_records_write_errors",
            "Call record writes that failed (each is kept and retried)",
            records_write_errors.clone(),
        );
        let records_pending = Gauge::default();
        registry.register(
            "izwi_call_records_pending",
            "Call records waiting to be written again after a failed write",
            records_pending.clone(),
        );
        let dialplan_reloads = Family::<L1, Counter>::default();
        registry.register(
            "izwi_dialplan_reloads",
            "Dialplan reloads, by result (loaded, refused)",
            dialplan_reloads.clone(),
        );
        let agent_actions = Family::<L2, Counter>::default();
        registry.register(
            "izwi_agent_actions",
            "What agents did besides talking, by action and result (done, refused, failed, interrupted)",
            agent_actions.clone(),
        );
        let engine_failures = Family::<L2, Counter>::default();
        registry.register(
            "izwi_engine_failures",
            "Failed requests to remote engines, by backend (its configured name) and kind (connect, timeout, status_4xx, status_5xx, malformed)",
            engine_failures.clone(),
        );
        let accept_errors = Family::<L2, Counter>::default();
        registry.register(
            "izwi_accept_errors",
            "Failed accepts of connections, by listener and kind (process_fd_limit, system_fd_limit, memory, other)",
            accept_errors.clone(),
        );
        let connections_refused = Family::<L2, Counter>::default();
        registry.register(
            "izwi_connections_refused",
            "Connections refused at accept, by listener and cap (total, per_source)",
            connections_refused.clone(),
        );
        let connections_closed = Family::<L2, Counter>::default();
        registry.register(
            "izwi_connections_closed",
            "Connections closed by Izwi, by listener and reason (idle_timeout, message_timeout, header_timeout, write_timeout)",
            connections_closed.clone(),
        );
        let webhooks = Family::<L2, Counter>::default();
        registry.register(
            "izwi_webhook_requests",
            "Provider webhook requests, by provider and result (accepted, forbidden, busy)",
            webhooks.clone(),
        );
        let api_requests = Family::<L2, Counter>::default();
        registry.register(
            "izwi_api_requests",
            "HTTP API requests, by route and status code",
            api_requests.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "izwi_ready",
            "1 when the service is ready to take calls, else 0",
            ready.clone(),
        );

        Self {
            registry,
            transport: LabelValues::default(),
            outcome: LabelValues::default(),
            rtp_reason: LabelValues::default(),
            sip_reason: LabelValues::default(),
            stream_kind: LabelValues::default(),
            provider: LabelValues::default(),
            result: LabelValues::default(),
            route: LabelValues::default(),
            status: LabelValues::default(),
            listener: LabelValues::default(),
            conn_reason: LabelValues::default(),
            backend: LabelValues::default(),
            calls_active,
            calls_started,
            calls,
            response_latency,
            asr_duration,
            llm_first_token,
            tts_first_audio,
            llm_tokens_per_second,
            barge_ins,
            dtmf_digits,
            rtp_dropped,
            sip_rejected,
            stream_rejected,
            records_dropped,
            records_write_errors,
            records_pending,
            webhooks,
            api_requests,
            accept_errors,
            dialplan_reloads,
            agent_actions,
            engine_failures,
            connections_refused,
            connections_closed,
            ready,
        }
    }

    /// A call began: `izwi_calls_active{transport}` and
    /// `izwi_calls_started_total{transport}` go up by one.
    pub fn call_started(&self, transport: &str) {
        let labels = [("transport", self.transport.intern(transport))];
        self.calls_active.get_or_create(&labels).inc();
        self.calls_started.get_or_create(&labels).inc();
    }

    /// A call ended: `izwi_calls_active{transport}` goes down by one and
    /// `izwi_calls_total{transport,outcome}` up by one. Outcomes: `completed`,
    /// `failed`, `interrupted`, `rejected`.
    pub fn call_ended(&self, transport: &str, outcome: &str) {
        let transport = self.transport.intern(transport);
        self.calls_active
            .get_or_create(&[("transport", transport)])
            .dec();
        self.calls
            .get_or_create(&[
                ("transport", transport),
                ("outcome", self.outcome.intern(outcome)),
            ])
            .inc();
    }

    /// One conversational turn's timings, each observed only when `Some`.
    pub fn turn(&self, transport: &str, t: &TurnTimings) {
        if let Some(s) = ms_to_s(t.response_ms) {
            self.response_latency
                .get_or_create(&[("transport", self.transport.intern(transport))])
                .observe(s);
        }
        if let Some(s) = ms_to_s(t.asr_ms) {
            self.asr_duration.observe(s);
        }
        if let Some(s) = ms_to_s(t.llm_first_token_ms) {
            self.llm_first_token.observe(s);
        }
        if let Some(s) = ms_to_s(t.tts_first_audio_ms) {
            self.tts_first_audio.observe(s);
        }
        if let Some(r) = t.llm_tokens_per_s.filter(|v| v.is_finite() && *v >= 0.0) {
            self.llm_tokens_per_second.observe(r);
        }
    }

    /// The caller spoke over the agent: `izwi_barge_ins_total{transport}`.
    pub fn barge_in(&self, transport: &str) {
        self.barge_ins
            .get_or_create(&[("transport", self.transport.intern(transport))])
            .inc();
    }

    /// A DTMF digit arrived: `izwi_dtmf_digits_total{transport}`.
    pub fn dtmf(&self, transport: &str) {
        self.dtmf_digits
            .get_or_create(&[("transport", self.transport.intern(transport))])
            .inc();
    }

    /// `n` RTP packets dropped: `izwi_rtp_packets_dropped_total{reason}`.
    /// Reasons: `malformed`, `foreign`, `unknown_payload`, `late`, `lost`.
    pub fn rtp_dropped(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.rtp_dropped
            .get_or_create(&[("reason", self.rtp_reason.intern(reason))])
            .inc_by(n);
    }

    /// `n` SIP messages rejected: `izwi_sip_messages_rejected_total{reason}`.
    /// Reasons: `dropped`, `bad_request`, `challenged`, `forbidden`.
    pub fn sip_rejected(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.sip_rejected
            .get_or_create(&[("reason", self.sip_reason.intern(reason))])
            .inc_by(n);
    }

    /// A media stream frame was rejected:
    /// `izwi_stream_frames_rejected_total{kind}`.
    pub fn stream_rejected(&self, kind: &str) {
        self.stream_rejected
            .get_or_create(&[("kind", self.stream_kind.intern(kind))])
            .inc();
    }

    /// `n` call records dropped: `izwi_call_records_dropped_total`.
    pub fn records_dropped(&self, n: u64) {
        self.records_dropped.inc_by(n);
    }

    /// `n` call record writes failed: `izwi_call_records_write_errors_total`.
    pub fn records_write_errors(&self, n: u64) {
        self.records_write_errors.inc_by(n);
    }

    /// Records waiting for a retry: `izwi_call_records_pending`.
    pub fn set_records_pending(&self, n: u64) {
        self.records_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A dialplan reload: `izwi_dialplan_reloads_total{result}`.
    pub fn dialplan_reload(&self, result: &str) {
        self.dialplan_reloads
            .get_or_create(&[("result", self.result.intern(result))])
            .inc();
    }

    /// An agent's action: `izwi_agent_actions_total{action,result}` (labels
    /// outside the known sets count as `unknown`).
    pub fn agent_action(&self, action: &str, result: &str) {
        let action = crate::records::action_label(action);
        let result = match result {
            "done" => "done",
            "refused" => "refused",
            "failed" => "failed",
            "interrupted" => "interrupted",
            _ => "unknown",
        };
        self.agent_actions
            .get_or_create(&[("action", action), ("result", result)])
            .inc();
    }

    /// A remote engine failed: `izwi_engine_failures_total{backend,kind}`;
    /// backends are named by the configuration, so their number is bounded.
    pub fn engine_failure(&self, backend: &str, kind: &'static str) {
        self.engine_failures
            .get_or_create(&[("backend", self.backend.intern(backend)), ("kind", kind)])
            .inc();
    }

    /// An accept failed: `izwi_accept_errors_total{listener,kind}`.
    pub fn accept_error(&self, listener: &str, kind: &str) {
        self.accept_errors
            .get_or_create(&[
                ("listener", self.listener.intern(listener)),
                ("kind", self.conn_reason.intern(kind)),
            ])
            .inc();
    }

    /// A connection was refused at accept:
    /// `izwi_connections_refused_total{listener,reason}`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .get_or_create(&[
                ("listener", self.listener.intern(listener)),
                ("reason", self.conn_reason.intern(reason)),
            ])
            .inc();
    }

    /// Izwi closed a connection: `izwi_connections_closed_total{listener,reason}`.
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.connections_closed
            .get_or_create(&[
                ("listener", self.listener.intern(listener)),
                ("reason", self.conn_reason.intern(reason)),
            ])
            .inc();
    }

    /// A provider webhook was answered:
    /// `izwi_webhook_requests_total{provider,result}`. Results: `accepted`,
    /// `forbidden`, `busy`.
    pub fn webhook(&self, provider: &str, result: &str) {
        self.webhooks
            .get_or_create(&[
                ("provider", self.provider.intern(provider)),
                ("result", self.result.intern(result)),
            ])
            .inc();
    }

    /// An HTTP API request was answered: `izwi_api_requests_total{route,status}`.
    /// Pass the route pattern (`/v1/calls/{id}`), not the concrete path.
    pub fn api_request(&self, route: &str, status: u16) {
        let mut buf = [0u8; 5];
        self.api_requests
            .get_or_create(&[
                ("route", self.route.intern(route)),
                (
                    "status",
                    self.status.intern(status_digits(status, &mut buf)),
                ),
            ])
            .inc();
    }

    /// `izwi_ready`: 1 when ready to take calls, else 0.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The whole registry in the Prometheus text exposition format 0.0.4
    /// (`# HELP`, `# TYPE`, samples; no `# EOF`). Serve it with
    /// [`Metrics::CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            // Writing into a String cannot fail; keep whatever was written.
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{LineInfo, Sample, Scrape, Value};

    fn scrape(m: &Metrics) -> Scrape {
        let text = m.encode();
        // Every line must be something a Prometheus text reader understands.
        for line in text.lines() {
            assert!(
                !matches!(LineInfo::parse(line), LineInfo::Ignored),
                "unparsable line {line:?} in\n{text}"
            );
            assert!(!line.starts_with("# EOF") && !line.starts_with("# UNIT"));
        }
        assert!(text.ends_with('\n'));
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse")
    }

    fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        s.samples.iter().find(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
    }

    fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match &find(s, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
            .value
        {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}{labels:?} is {other:?}"),
        }
    }

    fn counter(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match find(s, name, labels).map(|x| &x.value) {
            Some(Value::Counter(v)) => *v,
            other => panic!("{name}{labels:?} is not a counter: {other:?}"),
        }
    }

    fn gauge(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match find(s, name, labels).map(|x| &x.value) {
            Some(Value::Gauge(v)) => *v,
            other => panic!("{name}{labels:?} is not a gauge: {other:?}"),
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_parses() {
        let m = Metrics::new();
        // Labelled families have no series, hence no lines, until first used;
        // the unlabelled ones are there from the start.
        let s = scrape(&m);
        assert_eq!(gauge(&s, "izwi_ready", &[]), 0.0);
        assert_eq!(counter(&s, "izwi_call_records_dropped_total", &[]), 0.0);
        assert_eq!(value(&s, "izwi_asr_duration_seconds_count", &[]), 0.0);
        assert!(find(&s, "izwi_calls_active", &[("transport", "sip")]).is_none());

        m.set_ready(true);
        m.call_started("sip");
        m.call_ended("sip", "completed");
        m.turn(
            "sip",
            &TurnTimings {
                response_ms: Some(1.0),
                ..TurnTimings::default()
            },
        );
        m.barge_in("sip");
        m.dtmf("sip");
        m.rtp_dropped("late", 1);
        m.sip_rejected("forbidden", 1);
        m.stream_rejected("malformed");
        m.webhook("twilio", "accepted");
        m.api_request("/health", 200);
        let text = m.encode();
        let s = scrape(&m);
        for name in [
            "izwi_calls_active",
            "izwi_calls_started_total",
            "izwi_calls_total",
            "izwi_response_latency_seconds",
            "izwi_asr_duration_seconds",
            "izwi_llm_first_token_seconds",
            "izwi_tts_first_audio_seconds",
            "izwi_llm_tokens_per_second",
            "izwi_barge_ins_total",
            "izwi_dtmf_digits_total",
            "izwi_rtp_packets_dropped_total",
            "izwi_sip_messages_rejected_total",
            "izwi_stream_frames_rejected_total",
            "izwi_call_records_dropped_total",
            "izwi_webhook_requests_total",
            "izwi_api_requests_total",
            "izwi_ready",
        ] {
            assert!(s.docs.contains_key(name), "no HELP for {name}\n{text}");
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "TYPE for {name}\n{text}"
            );
        }
        assert_eq!(gauge(&s, "izwi_ready", &[]), 1.0);
        assert_eq!(
            counter(
                &s,
                "izwi_api_requests_total",
                &[("route", "/health"), ("status", "200")]
            ),
            1.0
        );
        assert!(text.is_ascii());
        assert!(Metrics::CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn a_call_moves_the_counters() {
        let m = Metrics::new();
        m.call_started("sip");
        let s = scrape(&m);
        assert_eq!(gauge(&s, "izwi_calls_active", &[("transport", "sip")]), 1.0);
        assert_eq!(
            counter(&s, "izwi_calls_started_total", &[("transport", "sip")]),
            1.0
        );
        assert!(
            find(
                &s,
                "izwi_calls_total",
                &[("transport", "sip"), ("outcome", "completed")]
            )
            .is_none()
        );

        m.turn(
            "sip",
            &TurnTimings {
                response_ms: Some(420.0),
                asr_ms: Some(120.0),
                llm_first_token_ms: None,
                tts_first_audio_ms: Some(80.0),
                llm_tokens_per_s: Some(42.0),
            },
        );
        m.barge_in("sip");
        m.dtmf("sip");
        m.dtmf("sip");
        m.call_ended("sip", "completed");

        let s = scrape(&m);
        let sip = [("transport", "sip")];
        assert_eq!(gauge(&s, "izwi_calls_active", &sip), 0.0);
        assert_eq!(counter(&s, "izwi_calls_started_total", &sip), 1.0);
        assert_eq!(
            counter(
                &s,
                "izwi_calls_total",
                &[("transport", "sip"), ("outcome", "completed")]
            ),
            1.0
        );
        assert_eq!(counter(&s, "izwi_barge_ins_total", &sip), 1.0);
        assert_eq!(counter(&s, "izwi_dtmf_digits_total", &sip), 2.0);

        // Response latency: one observation of 0.42 s.
        assert_eq!(value(&s, "izwi_response_latency_seconds_count", &sip), 1.0);
        let sum = value(&s, "izwi_response_latency_seconds_sum", &sip);
        assert!((sum - 0.42).abs() < 1e-9, "sum {sum}");
        match &find(&s, "izwi_response_latency_seconds", &sip)
            .unwrap()
            .value
        {
            Value::Histogram(buckets) => {
                assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
                for b in buckets {
                    let want = if b.less_than >= 0.5 { 1.0 } else { 0.0 };
                    assert_eq!(b.count, want, "bucket le={}", b.less_than);
                }
                assert!(buckets.iter().any(|b| b.less_than == f64::INFINITY));
            }
            other => panic!("not a histogram: {other:?}"),
        }

        assert_eq!(value(&s, "izwi_asr_duration_seconds_count", &[]), 1.0);
        let asr = value(&s, "izwi_asr_duration_seconds_sum", &[]);
        assert!((asr - 0.12).abs() < 1e-9, "asr {asr}");
        // `None` is not observed.
        assert_eq!(value(&s, "izwi_llm_first_token_seconds_count", &[]), 0.0);
        assert_eq!(value(&s, "izwi_tts_first_audio_seconds_count", &[]), 1.0);
        assert_eq!(value(&s, "izwi_llm_tokens_per_second_count", &[]), 1.0);
        assert_eq!(value(&s, "izwi_llm_tokens_per_second_sum", &[]), 42.0);
    }

    #[test]
    fn rtp_dropped_adds_n() {
        let m = Metrics::new();
        m.rtp_dropped("late", 3);
        m.rtp_dropped("late", 4);
        m.rtp_dropped("lost", 1);
        m.rtp_dropped("malformed", 0);
        m.sip_rejected("challenged", 2);
        m.records_dropped(5);
        let s = scrape(&m);
        let name = "izwi_rtp_packets_dropped_total";
        assert_eq!(counter(&s, name, &[("reason", "late")]), 7.0);
        assert_eq!(counter(&s, name, &[("reason", "lost")]), 1.0);
        assert!(find(&s, name, &[("reason", "malformed")]).is_none());
        assert_eq!(
            counter(
                &s,
                "izwi_sip_messages_rejected_total",
                &[("reason", "challenged")]
            ),
            2.0
        );
        assert_eq!(counter(&s, "izwi_call_records_dropped_total", &[]), 5.0);
    }

    #[test]
    fn label_cardinality_is_capped() {
        let m = Metrics::new();
        for i in 0..MAX_LABEL_VALUES + 10 {
            m.stream_rejected(&format!("kind{i}"));
        }
        // A value seen before the cap keeps its own series afterwards.
        m.stream_rejected("kind0");
        let s = scrape(&m);
        let name = "izwi_stream_frames_rejected_total";
        let series: Vec<_> = s.samples.iter().filter(|x| x.metric == name).collect();
        assert_eq!(series.len(), MAX_LABEL_VALUES + 1, "{series:?}");
        assert_eq!(counter(&s, name, &[("kind", "kind0")]), 2.0);
        assert_eq!(
            counter(
                &s,
                name,
                &[("kind", &format!("kind{}", MAX_LABEL_VALUES - 1))]
            ),
            1.0
        );
        assert!(find(&s, name, &[("kind", &format!("kind{MAX_LABEL_VALUES}"))]).is_none());
        assert_eq!(counter(&s, name, &[("kind", OTHER)]), 10.0);
    }

    #[test]
    fn gauge_stays_balanced_past_the_cap_and_odd_values_are_sanitised() {
        let m = Metrics::new();
        for i in 0..MAX_LABEL_VALUES {
            m.barge_in(&format!("t{i}"));
        }
        // "late" transport is folded into "other" for both start and end.
        m.call_started("late-transport");
        let s = scrape(&m);
        assert_eq!(gauge(&s, "izwi_calls_active", &[("transport", OTHER)]), 1.0);
        m.call_ended("late-transport", "failed");
        let s = scrape(&m);
        assert_eq!(gauge(&s, "izwi_calls_active", &[("transport", OTHER)]), 0.0);
        assert_eq!(
            counter(
                &s,
                "izwi_calls_total",
                &[("transport", OTHER), ("outcome", "failed")]
            ),
            1.0
        );

        m.webhook("twi\"lio,x=y", "accepted");
        m.api_request("/v1/calls/{id}", 404);
        m.api_request("/v1/calls/{id}", 404);
        m.api_request("", 0);
        let s = scrape(&m);
        assert_eq!(
            counter(
                &s,
                "izwi_webhook_requests_total",
                &[("provider", "twi_lio_x_y"), ("result", "accepted")]
            ),
            1.0
        );
        assert_eq!(
            counter(
                &s,
                "izwi_api_requests_total",
                &[("route", "/v1/calls/:id"), ("status", "404")]
            ),
            2.0
        );
        assert_eq!(
            counter(
                &s,
                "izwi_api_requests_total",
                &[("route", "unknown"), ("status", "0")]
            ),
            1.0
        );
    }

    #[test]
    fn helpers() {
        let mut b = [0u8; 5];
        assert_eq!(status_digits(0, &mut b), "0");
        assert_eq!(status_digits(200, &mut b), "200");
        assert_eq!(status_digits(u16::MAX, &mut b), "65535");
        assert_eq!(ms_to_s(Some(1500.0)), Some(1.5));
        assert_eq!(ms_to_s(Some(-1.0)), None);
        assert_eq!(ms_to_s(Some(f64::NAN)), None);
        assert_eq!(sanitize(&"é".repeat(100)).len(), MAX_LABEL_LEN);
        assert!(std::ptr::eq(metrics(), metrics()));
    }
}
