//! What a running stand-in keeps: the faults in force, the counters, the set of idempotency
//! keys already accepted, (when recording) every accepted message, and the SMTP sink's
//! counters.
//!
//! Sized for load tests of a million messages: counters are atomics, a seen key costs 16
//! bytes (the first half of its SHA-256), and records can be switched off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Credentials, Faults, Provider};
use crate::smtp::Sink;

/// Why a request was not accepted; one counter each in [`ProviderStats::rejected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Wrong or missing credentials (401).
    Auth,
    /// The request is malformed or misses a required field (400 and the like).
    Invalid,
    /// Well-formed, but refused by the provider's rules: Twilio's magic numbers
    /// (opted out, invalid, not mobile...).
    Refused,
    /// Above the configured `rate_limit` (429).
    RateLimited,
    /// The random `throttle_rate` fault (429).
    Throttled,
    /// The random `error_rate` fault (500).
    ServerError,
    /// The random `timeout_rate` fault (held, then 504).
    Timeout,
    /// Brevo refused an `idempotencyKey` it had accepted within 30 minutes.
    IdempotencyReplay,
}

const REJECTS: usize = 8;

impl Reject {
    fn index(self) -> usize {
        match self {
            Reject::Auth => 0,
            Reject::Invalid => 1,
            Reject::Refused => 2,
            Reject::RateLimited => 3,
            Reject::Throttled => 4,
            Reject::ServerError => 5,
            Reject::Timeout => 6,
            Reject::IdempotencyReplay => 7,
        }
    }
}

/// One accepted message, as `GET /_standin/messages` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub provider: Provider,
    /// The id the stand-in answered with (`SM...`, `X-Message-Id`, Brevo's `messageId`...).
    pub id: String,
    /// Arrival time, Unix milliseconds.
    pub at_ms: i64,
    pub to: String,
    pub from: String,
    pub subject: Option<String>,
    /// The SMS body, or the e-mail's text part.
    pub body: String,
    pub html: Option<String>,
    /// The key the client sent: SendGrid `custom_args.idempotency_key`, Brevo e-mail
    /// `X-Mailin-custom` header (else its `Message-Id`), Brevo SMS `tag`, Twilio the `k` of
    /// `StatusCallback`, the webhook's `Idempotency-Key`. Empty when the client sent none.
    pub idempotency_key: String,
    /// SMS parts, as the provider would count them.
    pub parts: Option<u32>,
    /// The request's headers, credentials left out.
    pub headers: BTreeMap<String, String>,
    /// The request body as JSON (Twilio's form fields as an object of strings).
    pub request: serde_json::Value,
    /// The request body exactly as received (the webhook signature covers these bytes).
    pub raw_body: String,
}

/// The counters of one provider, as `GET /_standin/stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    pub accepted: u64,
    /// Accepted messages whose idempotency key had already been accepted: each one is a
    /// message sent twice.
    pub duplicates: u64,
    /// SMS parts accepted (zero for e-mail).
    pub parts: u64,
    pub rejected: RejectedStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedStats {
    pub auth: u64,
    pub invalid: u64,
    pub refused: u64,
    pub rate_limited: u64,
    pub throttled: u64,
    pub server_error: u64,
    pub timeout: u64,
    pub idempotency_replay: u64,
}

impl RejectedStats {
    pub fn total(&self) -> u64 {
        self.auth
            + self.invalid
            + self.refused
            + self.rate_limited
            + self.throttled
            + self.server_error
            + self.timeout
            + self.idempotency_replay
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    parts: AtomicU64,
    rejected: [AtomicU64; REJECTS],
}

impl Counters {
    fn snapshot(&self) -> ProviderStats {
        let r = |kind: Reject| self.rejected[kind.index()].load(Ordering::Relaxed);
        ProviderStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            parts: self.parts.load(Ordering::Relaxed),
            rejected: RejectedStats {
                auth: r(Reject::Auth),
                invalid: r(Reject::Invalid),
                refused: r(Reject::Refused),
                rate_limited: r(Reject::RateLimited),
                throttled: r(Reject::Throttled),
                server_error: r(Reject::ServerError),
                timeout: r(Reject::Timeout),
                idempotency_replay: r(Reject::IdempotencyReplay),
            },
        }
    }

    fn reset(&self) {
        self.accepted.store(0, Ordering::Relaxed);
        self.duplicates.store(0, Ordering::Relaxed);
        self.parts.store(0, Ordering::Relaxed);
        for c in &self.rejected {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A token bucket holding one second of the provider's rate: bursts up to the limit pass,
/// a sustained rate above it gets 429s.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    const fn new() -> Self {
        Bucket {
            tokens: 0.0,
            last: None,
        }
    }

    /// Takes `cost` tokens at `rate` per second, or says in how many whole seconds there
    /// will be enough. A message costing more than a full bucket passes when the bucket is
    /// full and leaves a debt, so a long SMS is slowed down, never refused for ever.
    pub(crate) fn take(&mut self, rate: f64, cost: f64, now: Instant) -> Result<(), u64> {
        let capacity = rate.max(1.0);
        self.tokens = match self.last {
            None => capacity,
            Some(last) => (self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate)
                .min(capacity),
        };
        self.last = Some(now);
        let needed = cost.min(capacity);
        if self.tokens + 1e-9 >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            let wait = ((needed - self.tokens) / rate).ceil();
            Err((wait as u64).max(1))
        }
    }
}

/// Brevo forgets an `idempotencyKey` after this long (its documented TTL).
pub(crate) const BREVO_IDEMPOTENCY_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) credentials: Credentials,
    pub(crate) record: bool,
    pub(crate) twilio_status_callbacks: bool,
    pub(crate) twilio_undelivered_rate: f64,
    pub(crate) webhook_tolerance_s: u64,
    pub(crate) callbacks: reqwest::Client,
    faults: RwLock<[Faults; 5]>,
    buckets: [Mutex<Bucket>; 5],
    counters: [Counters; 5],
    seen: [Mutex<HashSet<u128>>; 5],
    brevo_keys: Mutex<HashMap<u128, Instant>>,
    records: Mutex<Vec<Recorded>>,
    /// The SMTP sink's counters and seen Message-IDs, here so that the control API shows
    /// and resets them with the rest.
    pub(crate) smtp: Sink,
    /// Acknowledge each message's data at once (`TCP_QUICKACK`), see `smtp`.
    pub(crate) smtp_quick_ack: bool,
}

/// A poisoned lock only means a handler panicked while holding it; the data (counters,
/// sets, a list) is still consistent enough for a test double, so keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The 16 bytes a seen key (or an SMTP Message-ID) is kept as.
pub(crate) fn fingerprint(key: impl AsRef<[u8]>) -> u128 {
    let digest = Sha256::digest(key.as_ref());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

impl State {
    pub(crate) fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let callbacks = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(State {
            credentials: config.credentials.clone(),
            record: config.record,
            twilio_status_callbacks: config.twilio_status_callbacks,
            twilio_undelivered_rate: config.twilio_undelivered_rate,
            webhook_tolerance_s: config.webhook_tolerance_s,
            callbacks,
            faults: RwLock::new(Provider::ALL.map(|p| config.faults_for(p).clone())),
            buckets: Provider::ALL.map(|_| Mutex::new(Bucket::new())),
            counters: Provider::ALL.map(|_| Counters::default()),
            seen: Provider::ALL.map(|_| Mutex::new(HashSet::new())),
            brevo_keys: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            smtp: Sink::default(),
            smtp_quick_ack: config.smtp_quick_ack,
        })
    }

    pub(crate) fn faults(&self, provider: Provider) -> Faults {
        let all = self.faults.read().unwrap_or_else(PoisonError::into_inner);
        all[provider.index()].clone()
    }

    pub(crate) fn all_faults(&self) -> BTreeMap<Provider, Faults> {
        let all = self.faults.read().unwrap_or_else(PoisonError::into_inner);
        Provider::ALL
            .into_iter()
            .map(|p| (p, all[p.index()].clone()))
            .collect()
    }

    /// Replaces the faults of `provider` (or of all), and restarts its rate limit.
    pub(crate) fn set_faults(&self, provider: Option<Provider>, faults: &Faults) {
        let mut all = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        for p in Provider::ALL {
            if provider.is_none_or(|only| only == p) {
                all[p.index()] = faults.clone();
                *lock(&self.buckets[p.index()]) = Bucket::new();
            }
        }
    }

    pub(crate) fn take_rate(
        &self,
        provider: Provider,
        rate: f64,
        cost: u32,
        now: Instant,
    ) -> Result<(), u64> {
        lock(&self.buckets[provider.index()]).take(rate, f64::from(cost.max(1)), now)
    }

    pub(crate) fn reject(&self, provider: Provider, why: Reject) {
        self.counters[provider.index()].rejected[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted message (and a duplicate when its key was seen), and keeps it when
    /// recording. `make` is only called when recording, so load tests pay nothing for it.
    pub(crate) fn accept(
        &self,
        provider: Provider,
        key: &str,
        parts: u32,
        make: impl FnOnce() -> Recorded,
    ) {
        let counters = &self.counters[provider.index()];
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters
            .parts
            .fetch_add(u64::from(parts), Ordering::Relaxed);
        if !key.is_empty() && !lock(&self.seen[provider.index()]).insert(fingerprint(key)) {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if self.record {
            let recorded = make();
            lock(&self.records).push(recorded);
        }
    }

    /// Brevo's own idempotency: `true` when `key` was not used in the last 30 minutes (and
    /// is now remembered), `false` when Brevo would refuse the request as a replay.
    pub(crate) fn brevo_first_use(&self, key: &str, now: Instant) -> bool {
        let mut keys = lock(&self.brevo_keys);
        let print = fingerprint(key);
        match keys.get(&print) {
            Some(at) if now.saturating_duration_since(*at) < BREVO_IDEMPOTENCY_TTL => false,
            _ => {
                keys.insert(print, now);
                true
            }
        }
    }

    pub(crate) fn stats(&self) -> BTreeMap<Provider, ProviderStats> {
        Provider::ALL
            .into_iter()
            .map(|p| (p, self.counters[p.index()].snapshot()))
            .collect()
    }

    pub(crate) fn messages(&self, provider: Option<Provider>, key: Option<&str>) -> Vec<Recorded> {
        lock(&self.records)
            .iter()
            .filter(|r| provider.is_none_or(|p| r.provider == p))
            .filter(|r| key.is_none_or(|k| r.idempotency_key == k))
            .cloned()
            .collect()
    }

    /// Forgets messages, counters, seen keys and rate-limit state, the SMTP sink's
    /// included; the faults stay.
    pub(crate) fn reset(&self) {
        for p in Provider::ALL {
            self.counters[p.index()].reset();
            lock(&self.seen[p.index()]).clear();
            *lock(&self.buckets[p.index()]) = Bucket::new();
        }
        lock(&self.brevo_keys).clear();
        lock(&self.records).clear();
        self.smtp.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_of_one_second_through_then_paces() {
        let mut bucket = Bucket::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(bucket.take(10.0, 1.0, t0), Ok(()));
        }
        assert_eq!(bucket.take(10.0, 1.0, t0), Err(1));
        // 100 ms later one token has come back.
        assert_eq!(
            bucket.take(10.0, 1.0, t0 + Duration::from_millis(100)),
            Ok(())
        );
        assert!(
            bucket
                .take(10.0, 1.0, t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn a_message_dearer_than_the_bucket_passes_when_full_and_leaves_a_debt() {
        let mut bucket = Bucket::new();
        let t0 = Instant::now();
        // 1 part per second, a 3-part SMS.
        assert_eq!(bucket.take(1.0, 3.0, t0), Ok(()));
        // Two seconds of debt plus one token for the next message.
        assert_eq!(bucket.take(1.0, 1.0, t0), Err(3));
        assert_eq!(bucket.take(1.0, 1.0, t0 + Duration::from_secs(3)), Ok(()));
    }

    #[test]
    fn duplicates_are_counted_per_provider_and_reset_forgets_them() {
        let state = State::new(&Config::default()).expect("client");
        let rec = |provider| Recorded {
            provider,
            id: "x".into(),
            at_ms: 0,
            to: String::new(),
            from: String::new(),
            subject: None,
            body: String::new(),
            html: None,
            idempotency_key: "k1".into(),
            parts: None,
            headers: BTreeMap::new(),
            request: serde_json::Value::Null,
            raw_body: String::new(),
        };
        state.accept(Provider::Webhook, "k1", 0, || rec(Provider::Webhook));
        state.accept(Provider::Webhook, "k1", 0, || rec(Provider::Webhook));
        state.accept(Provider::SendGrid, "k1", 0, || rec(Provider::SendGrid));
        let stats = state.stats();
        assert_eq!(stats[&Provider::Webhook].accepted, 2);
        assert_eq!(stats[&Provider::Webhook].duplicates, 1);
        assert_eq!(stats[&Provider::SendGrid].duplicates, 0);
        assert_eq!(state.messages(Some(Provider::Webhook), None).len(), 2);
        state.reset();
        assert_eq!(state.stats()[&Provider::Webhook], ProviderStats::default());
        assert!(state.messages(None, None).is_empty());
    }

    #[test]
    fn brevo_refuses_a_key_reused_within_its_ttl() {
        let state = State::new(&Config::default()).expect("client");
        let t0 = Instant::now();
        assert!(state.brevo_first_use("k", t0));
        assert!(!state.brevo_first_use("k", t0 + Duration::from_secs(60)));
        assert!(state.brevo_first_use("k", t0 + BREVO_IDEMPOTENCY_TTL));
    }
}
