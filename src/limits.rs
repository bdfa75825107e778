//! Admission limits that every listener shares: token buckets per key (a
//! source address, an API principal), connection caps per source, and gates
//! that keep per-event log lines bounded under attack. All of it is sans-IO:
//! the time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// Token buckets, one per key: `capacity` deep, refilled continuously at
/// `per_sec`. Memory is bounded by `max_keys`: buckets that have refilled are
/// forgotten first (forgetting them changes nothing), then the least recently
/// seen eighth at once, so that a stream of new keys costs O(1) each on average.
#[derive(Debug)]
pub struct TokenBuckets<K> {
    capacity: f64,
    per_sec: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Refilled up to here.
    last: Instant,
}

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    pub fn new(capacity: f64, per_sec: f64, max_keys: usize) -> TokenBuckets<K> {
        TokenBuckets {
            capacity: capacity.max(1.0),
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until there is one.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.make_room(now);
        }
        let capacity = self.capacity;
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        // Instants may arrive slightly out of order: never go back.
        let elapsed = now.saturating_duration_since(bucket.last);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_sec).min(capacity);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.buckets.contains_key(key)
    }

    fn make_room(&mut self, now: Instant) {
        let full_after = Duration::from_secs_f64(self.capacity / self.per_sec);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
        if self.buckets.len() < self.max_keys {
            return;
        }
        let mut ages: Vec<(Instant, K)> = self
            .buckets
            .iter()
            .map(|(k, b)| (b.last, k.clone()))
            .collect();
        let n = (self.max_keys / 8).max(1).min(ages.len());
        ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in ages.into_iter().take(n) {
            self.buckets.remove(&k);
        }
    }
}

/// The key a source address is limited by: an IPv4 address as it is, an
/// IPv6 address by its /64 (one subscriber's network, which hands its hosts
/// as many addresses as they like).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// The soft limit on open files (1024 when it cannot be read).
pub fn file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Raises the soft limit on open files to the hard limit; returns (before, after).
pub fn raise_file_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

/// Connections one listener may hold when its setting is 0 (automatic): half
/// of what the file limit leaves once the RTP sockets of `max_calls` calls and
/// a reserve (models, the database, the listeners) are set aside; at least 4,
/// at most 1024.
pub fn connection_share(max_calls: usize) -> usize {
    let reserve = 64 + max_calls as u64;
    (file_limit().saturating_sub(reserve) / 2).clamp(4, 1024) as usize
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its maximum of connections.
    Total,
    /// This source holds its maximum.
    PerSource,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerSource => "per_source",
        }
    }
}

/// Connections of one listener, capped in all and per source address (at
/// most half of the listener's: one source never holds them all). A
/// connection counts for as long as its [`ConnectionGuard`] lives.
#[derive(Debug, Clone)]
pub struct ConnectionCaps {
    max_total: usize,
    max_per_source: usize,
    state: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl ConnectionCaps {
    pub fn new(max_total: usize, max_per_source: usize) -> ConnectionCaps {
        let max_total = max_total.max(1);
        ConnectionCaps {
            max_total,
            max_per_source: max_per_source.min(max_total / 2).max(1),
            state: Arc::default(),
        }
    }

    pub fn admit(&self, source: IpAddr) -> Result<ConnectionGuard, Refusal> {
        let source = source_key(source);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = s.by_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        *n += 1;
        s.total += 1;
        Ok(ConnectionGuard {
            caps: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_source(&self) -> usize {
        self.max_per_source
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct ConnectionGuard {
    caps: ConnectionCaps,
    source: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut s = self
            .caps
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
    }
}

/// How long accepting pauses after a failed accept (no file descriptor left),
/// doubling up to the longest, so that an accept loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
static ACCEPT_LOG: SharedLogGate = SharedLogGate::new(5, Duration::from_secs(10));

/// Pauses after accept errors that mean "no resources now" (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), so that a listener does not spin while they last, and
/// counts them. Errors about one connection (reset before accepted) pass.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    pause: Duration,
    until: Option<Instant>,
}

impl AcceptBackoff {
    pub fn new(listener: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            listener,
            pause: ACCEPT_PAUSE,
            until: None,
        }
    }

    /// Whether accepting may go on now (a pause that has run out is over).
    pub fn open(&mut self, now: Instant) -> bool {
        if self.until.is_some_and(|u| now >= u) {
            self.until = None;
        }
        self.until.is_none()
    }

    /// When accepting may resume, if paused.
    pub fn resume_at(&self) -> Option<Instant> {
        self.until
    }

    pub fn accepted(&mut self) {
        self.pause = ACCEPT_PAUSE;
        self.until = None;
    }

    pub fn failed(&mut self, e: &std::io::Error, now: Instant) {
        use std::io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        ) {
            return;
        }
        let kind = match e.raw_os_error() {
            Some(24) => "process_fd_limit",
            Some(23) => "system_fd_limit",
            Some(105) | Some(12) => "memory",
            _ => "other",
        };
        crate::metrics::metrics().accept_error(self.listener, kind);
        if let Some(held) = ACCEPT_LOG.pass() {
            tracing::warn!(listener = self.listener, error = %e, pause_ms = self.pause.as_millis() as u64, held, "cannot accept connections; pausing");
        }
        self.until = Some(now + self.pause);
        self.pause = (self.pause * 2).min(ACCEPT_PAUSE_MAX);
    }
}

/// Lets at most `per_window` lines of one kind through per window; the lines
/// held back are counted and reported with the next line let through, so a
/// flood of events leaves a bounded log that still says how many there were.
#[derive(Debug)]
pub struct LogGate {
    per_window: u32,
    window: Duration,
    started: Option<Instant>,
    passed: u32,
    held: u64,
}

impl LogGate {
    pub const fn new(per_window: u32, window: Duration) -> LogGate {
        LogGate {
            per_window,
            window,
            started: None,
            passed: 0,
            held: 0,
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were held
    /// back since the last one; `None` when it must be held back.
    pub fn pass(&mut self, now: Instant) -> Option<u64> {
        if self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.passed = 0;
        }
        if self.passed >= self.per_window {
            self.held += 1;
            return None;
        }
        self.passed += 1;
        Some(std::mem::take(&mut self.held))
    }
}

/// A [`LogGate`] shared between tasks.
#[derive(Debug)]
pub struct SharedLogGate(Mutex<LogGate>);

impl SharedLogGate {
    pub const fn new(per_window: u32, window: Duration) -> SharedLogGate {
        SharedLogGate(Mutex::new(LogGate::new(per_window, window)))
    }

    pub fn pass(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pass(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn ipa(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ipa("10.1.200.3")));
        assert!(!c.contains(ipa("10.2.0.1")));
        assert!(!c.contains(ipa("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ipa("203.0.113.9")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ipa("192.0.2.7")) && !one.contains(ipa("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ipa("2001:db8:1::5")) && !v6.contains(ipa("2001:db9::1")));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_sources_are_limited_by_their_64() {
        assert_eq!(
            source_key(ipa("2001:db8:1:2:aaaa::1")),
            source_key(ipa("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_key(ipa("2001:db8:1:2::1")),
            source_key(ipa("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(ipa("::ffff:192.0.2.1")), ipa("192.0.2.1"));
        assert_eq!(source_key(ipa("192.0.2.1")), ipa("192.0.2.1"));
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let t0 = Instant::now();
        let mut b = TokenBuckets::new(3.0, 10.0, 16);
        for _ in 0..3 {
            assert!(b.take(&"a", t0).is_ok());
        }
        let wait = b.take(&"a", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Another key has its own bucket.
        assert!(b.take(&"b", t0).is_ok());
        assert!(b.take(&"a", at(t0, 100)).is_ok());
        assert!(b.take(&"a", at(t0, 100)).is_err());
        // Never more than the capacity, however long the pause.
        for _ in 0..3 {
            assert!(b.take(&"a", at(t0, 60_000)).is_ok());
        }
        assert!(b.take(&"a", at(t0, 60_000)).is_err());
    }

    #[test]
    fn a_flood_of_keys_keeps_memory_bounded_and_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut b = TokenBuckets::new(2.0, 1.0, 64);
        // The busy key is seen last: it survives every eviction.
        for i in 0..10_000u64 {
            let _ = b.take(&i, at(t0, i));
            let _ = b.take(&u64::MAX, at(t0, i));
            assert!(b.len() <= 64);
        }
        assert!(b.contains(&u64::MAX));
        assert!(
            b.take(&u64::MAX, at(t0, 9_999)).is_err(),
            "its bucket was kept, not refilled"
        );
    }

    #[test]
    fn connection_caps_count_in_all_and_per_source() {
        let caps = ConnectionCaps::new(3, 2);
        assert_eq!(caps.max_per_source(), 1, "at most half of the total");
        let caps = ConnectionCaps::new(5, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::PerSource);
        let _b1 = caps.admit(b).unwrap();
        let _b2 = caps.admit(b).unwrap();
        let _c1 = caps.admit(c).unwrap();
        assert_eq!(caps.admit(c).unwrap_err(), Refusal::Total);
        assert_eq!(caps.open(), 5);
        drop(a1);
        assert_eq!(caps.open(), 4);
        assert!(caps.admit(c).is_ok());
    }

    #[test]
    fn a_log_gate_passes_a_few_lines_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut g = LogGate::new(2, Duration::from_secs(10));
        assert_eq!(g.pass(t0), Some(0));
        assert_eq!(g.pass(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(g.pass(at(t0, 1)), None);
        }
        assert_eq!(g.pass(at(t0, 10_000)), Some(5));
        assert_eq!(g.pass(at(t0, 10_001)), Some(0));
        assert_eq!(g.pass(at(t0, 10_002)), None);
    }

    #[test]
    fn accept_errors_pause_the_listener_doubling_and_a_success_resets() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::new("test");
        assert!(b.open(t0));
        let emfile = std::io::Error::from_raw_os_error(24);
        b.failed(&emfile, t0);
        assert!(!b.open(t0));
        assert!(b.open(at(t0, 50)));
        b.failed(&emfile, at(t0, 50));
        assert_eq!(b.resume_at(), Some(at(t0, 150)), "the pause doubles");
        for i in 0..20 {
            b.failed(&emfile, at(t0, 200 + i));
        }
        assert_eq!(b.resume_at(), Some(at(t0, 219) + ACCEPT_PAUSE_MAX));
        // An error about one connection does not pause.
        let mut c = AcceptBackoff::new("test");
        c.failed(
            &std::io::Error::from(std::io::ErrorKind::ConnectionAborted),
            t0,
        );
        assert!(c.open(t0));
        b.accepted();
        assert!(b.open(at(t0, 219)));
    }
}
