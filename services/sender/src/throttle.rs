//! Provider budgets: how fast each provider, and each sender identity at a provider, may be
//! sent to, counted in the provider's unit (messages for e-mail, parts for SMS).
//!
//! **Shared** (the default): a GCRA in Redis, one key per scope, so every sender instance
//! draws on one budget and three senders never send three times the limit. A send
//! *reserves* its cost (one script call) and is told how long to wait: reservations are
//! spaced by `1 / rate`, so over any second at most `rate + burst - 1` units leave. The
//! rate used is `rate × headroom` (98 % by default), which keeps a provider's own window
//! counting clear of the limit when network jitter bunches requests.
//!
//! **Local**: `governor` rate limiters in the process, for a single sender instance or for
//! instances that each have their own provider account.
//!
//! **Slowing down**: a 429 or a provider's "slow down" answer halves the scope's rate (at
//! most once a second, however many requests were answered so), pauses it for the
//! `Retry-After`, and the rate then recovers linearly (`recovery_per_s` of the configured
//! rate per second).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;

/// A rate in the provider's unit per second, with a burst. `per_second == 0` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

impl Limit {
    pub const UNLIMITED: Limit = Limit {
        per_second: 0.0,
        burst: 1,
    };

    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// How budgets behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// `shared` (Redis, across instances) or `local` (this process only).
    pub mode: Mode,
    /// Fraction of each configured rate actually used.
    pub headroom: f64,
    /// After a slow-down, the rate recovers by this fraction of the configured rate per
    /// second.
    pub recovery_per_s: f64,
    /// The rate never drops below this fraction of the configured rate.
    pub min_factor: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Shared,
    Local,
}

/// Where "now" comes from. Production uses Redis's own clock (one clock for every
/// instance); tests drive a manual one.
#[derive(Debug, Clone)]
pub enum Clock {
    Redis,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now_us(&self) -> u64 {
        match self {
            Clock::Redis => 0,
            Clock::Manual(us) => us.load(Ordering::SeqCst),
        }
    }
}

/// The budgets of one sender instance.
pub struct Throttle {
    config: ThrottleConfig,
    redis: ConnectionManager,
    clock: Clock,
    local: Mutex<HashMap<String, Arc<LocalScope>>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

struct LocalScope {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
    /// Rate factor in millionths, and the moment (µs since the epoch) it was last lowered.
    factor_ppm: AtomicU64,
    lowered_at_us: AtomicU64,
    paused_until_us: AtomicU64,
}

/// Reserves `ARGV[4]` units on the GCRA of `KEYS[1]` and returns `{wait_us, factor_ppm}`.
/// `KEYS[2]` is the scope's state: `f` (rate factor), `fts` (when it was last lowered),
/// `pause` (µs until which nothing may leave).
const RESERVE: &str = r"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local recover = tonumber(ARGV[5])
local f = tonumber(redis.call('HGET', KEYS[2], 'f') or '1')
local fts = tonumber(redis.call('HGET', KEYS[2], 'fts') or '0')
local pause = tonumber(redis.call('HGET', KEYS[2], 'pause') or '0')
if f < 1 then
  f = math.min(1, f + (now - fts) / 1000000 * recover)
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now, pause)
local new_tat = start + interval / f * cost
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 60000)
-- A pause (Retry-After) is never shortened by the burst tolerance.
local wait = math.max(start - tolerance, pause) - now
if wait < 0 then wait = 0 end
return {math.floor(wait), math.floor(f * 1000000)}
";

/// Lowers the rate of `KEYS[1]` (at most once a second) and extends its pause.
/// ARGV: now_us (0: Redis time), retry_after_us, min_factor, recover_per_s.
const SLOW_DOWN: &str = r"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local f = tonumber(redis.call('HGET', KEYS[1], 'f') or '1')
local fts = tonumber(redis.call('HGET', KEYS[1], 'fts') or '0')
if f < 1 then
  f = math.min(1, f + (now - fts) / 1000000 * tonumber(ARGV[4]))
end
if now - fts >= 1000000 then
  f = math.max(f / 2, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'f', tostring(f), 'fts', string.format('%.0f', now))
end
local retry = tonumber(ARGV[2])
if retry > 0 then
  local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
  redis.call('HSET', KEYS[1], 'pause', string.format('%.0f', math.max(pause, now + retry)))
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return math.floor(f * 1000000)
";

static RESERVE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(RESERVE));
static SLOW_DOWN_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(SLOW_DOWN));

fn system_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What a reservation says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    /// How long to wait before sending.
    pub wait: Duration,
    /// The scope's current rate, units per second (after slow-downs and headroom).
    pub rate: f64,
}

impl Throttle {
    pub fn new(config: ThrottleConfig, redis: ConnectionManager, clock: Clock) -> Self {
        Throttle {
            config,
            redis,
            clock,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn keys(scope: &str) -> (String, String) {
        (format!("t:rl:{scope}"), format!("t:rl:{scope}:s"))
    }

    /// Reserves `cost` units of `scope`'s budget. The caller must wait
    /// [`Reservation::wait`] before sending, and then send: the units are spent.
    pub async fn reserve(
        &self,
        scope: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<Reservation, redis::RedisError> {
        if limit.is_unlimited() {
            return Ok(Reservation {
                wait: Duration::ZERO,
                rate: f64::INFINITY,
            });
        }
        let rate = limit.per_second * self.config.headroom.clamp(0.01, 1.0);
        match self.config.mode {
            Mode::Shared => {
                let interval_us = 1_000_000.0 / rate;
                let tolerance_us = interval_us * f64::from(limit.burst.max(1) - 1);
                let (tat, state) = Self::keys(scope);
                let mut conn = self.redis.clone();
                let (wait_us, factor_ppm): (i64, i64) = RESERVE_SCRIPT
                    .key(tat)
                    .key(state)
                    .arg(self.clock.now_us())
                    .arg(interval_us)
                    .arg(tolerance_us)
                    .arg(cost.max(1))
                    .arg(self.config.recovery_per_s)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(Reservation {
                    wait: Duration::from_micros(wait_us.max(0) as u64),
                    rate: rate * factor_ppm as f64 / 1e6,
                })
            }
            Mode::Local => Ok(self.reserve_local(scope, limit, rate, cost).await),
        }
    }

    fn local_scope(&self, scope: &str, limit: Limit, rate: f64) -> Arc<LocalScope> {
        let mut scopes = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        scopes
            .entry(scope.to_owned())
            .or_insert_with(|| {
                let burst = limit.burst.max(1);
                let period = Duration::from_secs_f64(1.0 / rate);
                let quota = Quota::with_period(period)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                Arc::new(LocalScope {
                    limiter: RateLimiter::direct(quota),
                    burst,
                    factor_ppm: AtomicU64::new(1_000_000),
                    lowered_at_us: AtomicU64::new(0),
                    paused_until_us: AtomicU64::new(0),
                })
            })
            .clone()
    }

    fn local_factor(&self, s: &LocalScope, now: u64) -> f64 {
        let f = s.factor_ppm.load(Ordering::SeqCst) as f64 / 1e6;
        let since = now.saturating_sub(s.lowered_at_us.load(Ordering::SeqCst)) as f64 / 1e6;
        (f + since * self.config.recovery_per_s).min(1.0)
    }

    async fn reserve_local(&self, scope: &str, limit: Limit, rate: f64, cost: u32) -> Reservation {
        let s = self.local_scope(scope, limit, rate);
        let now = system_now_us();
        let paused = s.paused_until_us.load(Ordering::SeqCst);
        if paused > now {
            tokio::time::sleep(Duration::from_micros(paused - now)).await;
        }
        // A lowered rate makes each unit cost more cells of the fixed quota; a cost above
        // the burst is taken in burst-sized chunks (the limiter refuses more at once).
        let factor = self.local_factor(&s, now);
        let mut cells = (f64::from(cost.max(1)) / factor).ceil() as u32;
        while cells > 0 {
            let chunk = cells.min(s.burst);
            cells -= chunk;
            let chunk = NonZeroU32::new(chunk).unwrap_or(NonZeroU32::MIN);
            // `chunk <= burst`: always granted eventually. The wait happens here.
            let _ = s.limiter.until_n_ready(chunk).await;
        }
        Reservation {
            wait: Duration::ZERO,
            rate: rate * factor,
        }
    }

    /// Waits for a reservation of `cost` units; returns how long it waited and the rate.
    pub async fn acquire(
        &self,
        scope: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<(Duration, f64), redis::RedisError> {
        let started = std::time::Instant::now();
        let reservation = self.reserve(scope, limit, cost).await?;
        if !reservation.wait.is_zero() {
            tokio::time::sleep(reservation.wait).await;
        }
        Ok((started.elapsed(), reservation.rate))
    }

    /// The provider said "slow down": lower `scope`'s rate and pause it for `retry_after`.
    /// Returns the new rate factor (1 = the configured rate).
    pub async fn slow_down(
        &self,
        scope: &str,
        retry_after: Option<Duration>,
    ) -> Result<f64, redis::RedisError> {
        let retry_us = retry_after.map_or(0, |d| d.as_micros() as u64);
        match self.config.mode {
            Mode::Shared => {
                let (_, state) = Self::keys(scope);
                let mut conn = self.redis.clone();
                let ppm: i64 = SLOW_DOWN_SCRIPT
                    .key(state)
                    .arg(self.clock.now_us())
                    .arg(retry_us)
                    .arg(self.config.min_factor)
                    .arg(self.config.recovery_per_s)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(ppm as f64 / 1e6)
            }
            Mode::Local => {
                let scopes = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(s) = scopes.get(scope).cloned() else {
                    return Ok(1.0);
                };
                drop(scopes);
                let now = system_now_us();
                let factor = self.local_factor(&s, now);
                let lowered = s.lowered_at_us.load(Ordering::SeqCst);
                let factor = if now.saturating_sub(lowered) >= 1_000_000 {
                    let f = (factor / 2.0).max(self.config.min_factor);
                    s.factor_ppm.store((f * 1e6) as u64, Ordering::SeqCst);
                    s.lowered_at_us.store(now, Ordering::SeqCst);
                    f
                } else {
                    factor
                };
                if retry_us > 0 {
                    s.paused_until_us
                        .fetch_max(now + retry_us, Ordering::SeqCst);
                }
                Ok(factor)
            }
        }
    }
}
