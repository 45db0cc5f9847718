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
//!
//! **Lanes**: `triggered_share` of every scope's rate is kept for the triggered lane
//! (sequence steps, test sends). A bulk message takes its units first from the scope's
//! *bulk part*, a budget of `rate × (1 − triggered_share)` of its own, then from the
//! scope itself; a triggered message only from the scope. So the whole never exceeds the
//! rate, a blast alone never exceeds its part, and a triggered message finds at least
//! `triggered_share` of the rate free however long the blast's backlog (it never queues
//! behind the blast's reservations, which wait in the bulk part). The bulk part shares the
//! scope's slow-down state: a 429 halves and pauses both lanes alike. [`Throttle::budgets`]
//! says which budgets a message takes, in order; the sender waits for each in turn.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tocsin_contracts::v1;

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
    /// Fraction of every rate (provider and sender identity) kept for the triggered lane:
    /// bulk messages never use more than `1 - triggered_share` of it, so a welcome
    /// message never waits behind a blast. From 0 (no reservation) to below 1.
    pub triggered_share: Share,
}

/// A fraction in `[0, 1)`: refused when the configuration is read, with the key named.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Share(f64);

impl Share {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Share {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if (0.0..1.0).contains(&value) {
            Ok(Share(value))
        } else {
            Err(format!(
                "must be at least 0 and below 1 (the fraction of each rate kept for the \
                 triggered lane; 1 would leave nothing for blasts), not {value}"
            ))
        }
    }
}

/// Which lane a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Blasts: from the bulk part of each budget.
    Bulk,
    /// Sequence steps and test sends: from the whole of each budget.
    Triggered,
}

impl Lane {
    /// A message that names no lane is bulk: only an explicit `LANE_TRIGGERED` is served
    /// first.
    pub fn of(lane: v1::Lane) -> Self {
        match lane {
            v1::Lane::Triggered => Lane::Triggered,
            v1::Lane::Bulk | v1::Lane::Unspecified => Lane::Bulk,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Lane::Bulk => "bulk",
            Lane::Triggered => "triggered",
        }
    }
}

/// One budget a message takes its units from.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// A provider's name, or `<provider>:<sender identity>`.
    pub scope: String,
    /// The scope's configured limit (the bulk part is derived from it).
    pub limit: Limit,
    /// The bulk lane's part of the scope rather than the whole scope.
    pub bulk_part: bool,
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
    local_clock: TokioClock,
    local: Mutex<LocalBudgets>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// The local limiters read tokio's clock, the one their waits sleep on: a test that pauses
/// tokio's time drives them exactly.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

type LocalLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// `lowered_at_us` of a scope never slowed down.
const NEVER: u64 = u64::MAX;

#[derive(Default)]
struct LocalBudgets {
    /// By scope and bulk part.
    limiters: HashMap<(String, bool), Arc<LocalLimit>>,
    /// By scope: shared by the scope and its bulk part.
    states: HashMap<String, Arc<LocalState>>,
}

struct LocalLimit {
    limiter: LocalLimiter,
    burst: u32,
    state: Arc<LocalState>,
    /// Whose turn it is: the limiter only says "not yet", so the waiting messages take
    /// their turns first come, first served (tokio's mutex is fair), as the shared GCRA's
    /// reservations do. Without it the tasks that check most often win: a steady
    /// triggered demand starved the bulk messages queued behind their bulk part.
    turn: tokio::sync::Mutex<()>,
}

/// A scope's slow-down, in µs of [`TokioClock`].
struct LocalState {
    /// Rate factor in millionths, and the moment it was last lowered.
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
            local_clock: TokioClock {
                origin: tokio::time::Instant::now(),
            },
            local: Mutex::new(LocalBudgets::default()),
        }
    }

    /// The GCRA key and the slow-down state key of a budget. The bulk part has a GCRA of
    /// its own (`t:rl-bulk:`, which no scope's key can equal) and the scope's state.
    fn keys(scope: &str, bulk_part: bool) -> (String, String) {
        let tat = if bulk_part {
            format!("t:rl-bulk:{scope}")
        } else {
            format!("t:rl:{scope}")
        };
        (tat, format!("t:rl:{scope}:s"))
    }

    /// The budgets a message of `lane` takes from `scopes` (scope and configured limit),
    /// in the order it must take them: a bulk message first from every scope's bulk part,
    /// then, as a triggered message, from every scope itself. Unlimited scopes are left
    /// out; with a `triggered_share` of 0 there are no bulk parts.
    pub fn budgets(&self, lane: Lane, scopes: &[(String, Limit)]) -> Vec<Budget> {
        let limited = scopes.iter().filter(|(_, limit)| !limit.is_unlimited());
        let parts = (lane == Lane::Bulk && self.config.triggered_share.get() > 0.0)
            .then(|| limited.clone())
            .into_iter()
            .flatten()
            .map(|(scope, limit)| Budget {
                scope: scope.clone(),
                limit: *limit,
                bulk_part: true,
            });
        let wholes = limited.map(|(scope, limit)| Budget {
            scope: scope.clone(),
            limit: *limit,
            bulk_part: false,
        });
        parts.chain(wholes).collect()
    }

    /// Reserves `cost` units of `scope`'s budget. The caller must wait
    /// [`Reservation::wait`] before sending, and then send: the units are spent.
    pub async fn reserve(
        &self,
        scope: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<Reservation, redis::RedisError> {
        self.reserve_budget(
            &Budget {
                scope: scope.to_owned(),
                limit,
                bulk_part: false,
            },
            cost,
        )
        .await
    }

    /// Reserves `cost` units of a budget (see [`Throttle::reserve`]).
    pub async fn reserve_budget(
        &self,
        budget: &Budget,
        cost: u32,
    ) -> Result<Reservation, redis::RedisError> {
        let limit = budget.limit;
        if limit.is_unlimited() {
            return Ok(Reservation {
                wait: Duration::ZERO,
                rate: f64::INFINITY,
            });
        }
        let mut rate = limit.per_second * self.config.headroom.clamp(0.01, 1.0);
        if budget.bulk_part {
            rate *= 1.0 - self.config.triggered_share.get();
        }
        match self.config.mode {
            Mode::Shared => {
                let interval_us = 1_000_000.0 / rate;
                let tolerance_us = interval_us * f64::from(limit.burst.max(1) - 1);
                let (tat, state) = Self::keys(&budget.scope, budget.bulk_part);
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
            Mode::Local => Ok(self.reserve_local(budget, rate, cost).await),
        }
    }

    fn local_limit(&self, budget: &Budget, rate: f64) -> Arc<LocalLimit> {
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (budget.scope.clone(), budget.bulk_part);
        if let Some(limit) = local.limiters.get(&key) {
            return limit.clone();
        }
        let state = local
            .states
            .entry(budget.scope.clone())
            .or_insert_with(|| {
                Arc::new(LocalState {
                    factor_ppm: AtomicU64::new(1_000_000),
                    lowered_at_us: AtomicU64::new(NEVER),
                    paused_until_us: AtomicU64::new(0),
                })
            })
            .clone();
        let burst = budget.limit.burst.max(1);
        let period = Duration::from_secs_f64(1.0 / rate);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let limit = Arc::new(LocalLimit {
            limiter: RateLimiter::direct_with_clock(quota, self.local_clock.clone()),
            burst,
            state,
            turn: tokio::sync::Mutex::new(()),
        });
        local.limiters.insert(key, limit.clone());
        limit
    }

    fn local_factor(&self, s: &LocalState, now: u64) -> f64 {
        let f = s.factor_ppm.load(Ordering::SeqCst) as f64 / 1e6;
        let since = now.saturating_sub(s.lowered_at_us.load(Ordering::SeqCst)) as f64 / 1e6;
        (f + since * self.config.recovery_per_s).min(1.0)
    }

    async fn reserve_local(&self, budget: &Budget, rate: f64, cost: u32) -> Reservation {
        let l = self.local_limit(budget, rate);
        let _turn = l.turn.lock().await;
        let now = self.local_clock.now_us();
        let paused = l.state.paused_until_us.load(Ordering::SeqCst);
        if paused > now {
            tokio::time::sleep(Duration::from_micros(paused - now)).await;
        }
        // A lowered rate makes each unit cost more cells of the fixed quota; a cost above
        // the burst is taken in burst-sized chunks (the limiter refuses more at once).
        let factor = self.local_factor(&l.state, self.local_clock.now_us());
        let mut cells = (f64::from(cost.max(1)) / factor).ceil() as u32;
        while cells > 0 {
            let chunk = cells.min(l.burst);
            cells -= chunk;
            let chunk = NonZeroU32::new(chunk).unwrap_or(NonZeroU32::MIN);
            // `chunk <= burst`: always granted eventually. The wait happens here, on
            // tokio's clock.
            while let Ok(Err(not_until)) = l.limiter.check_n(chunk) {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.local_clock));
                tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
            }
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
        self.acquire_budget(
            &Budget {
                scope: scope.to_owned(),
                limit,
                bulk_part: false,
            },
            cost,
        )
        .await
    }

    /// Waits for a reservation of `cost` units of a budget (see [`Throttle::acquire`]).
    pub async fn acquire_budget(
        &self,
        budget: &Budget,
        cost: u32,
    ) -> Result<(Duration, f64), redis::RedisError> {
        let started = tokio::time::Instant::now();
        let reservation = self.reserve_budget(budget, cost).await?;
        if !reservation.wait.is_zero() {
            tokio::time::sleep(reservation.wait).await;
        }
        Ok((started.elapsed(), reservation.rate))
    }

    /// The provider said "slow down": lower `scope`'s rate and pause it for `retry_after`,
    /// for both lanes (the bulk part shares the scope's state). Returns the new rate
    /// factor (1 = the configured rate).
    pub async fn slow_down(
        &self,
        scope: &str,
        retry_after: Option<Duration>,
    ) -> Result<f64, redis::RedisError> {
        let retry_us = retry_after.map_or(0, |d| d.as_micros() as u64);
        match self.config.mode {
            Mode::Shared => {
                let (_, state) = Self::keys(scope, false);
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
                let local = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(s) = local.states.get(scope).cloned() else {
                    return Ok(1.0);
                };
                drop(local);
                let now = self.local_clock.now_us();
                let factor = self.local_factor(&s, now);
                let lowered = s.lowered_at_us.load(Ordering::SeqCst);
                let factor = if lowered == NEVER || now.saturating_sub(lowered) >= 1_000_000 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_a_fraction_below_one() {
        assert_eq!(Share::try_from(0.0).map(Share::get), Ok(0.0));
        assert_eq!(Share::try_from(0.25).map(Share::get), Ok(0.25));
        for bad in [1.0, 1.5, -0.1, f64::NAN] {
            let error = Share::try_from(bad).expect_err("refused");
            assert!(error.contains("below 1"), "{error}");
        }
    }

    #[test]
    fn a_bad_share_stops_the_sender_at_load_naming_the_key() {
        let load = |value: &str| {
            tocsin_runtime::ConfigLoader::defaults_only(Some(crate::config::DEFAULTS))
                .env([(
                    "TOCSIN__SENDER__THROTTLE__TRIGGERED_SHARE".to_owned(),
                    value.to_owned(),
                )])
                .load::<crate::Config>()
        };
        let config = load("0.3").expect("a good share loads");
        assert_eq!(config.sender.throttle.triggered_share.get(), 0.3);
        let error = load("1.2").expect_err("refused").to_string();
        assert!(
            error.contains("triggered_share") && error.contains("not 1.2"),
            "{error}"
        );
    }

    #[test]
    fn lanes_come_from_the_contract() {
        assert_eq!(Lane::of(v1::Lane::Triggered), Lane::Triggered);
        assert_eq!(Lane::of(v1::Lane::Bulk), Lane::Bulk);
        assert_eq!(Lane::of(v1::Lane::Unspecified), Lane::Bulk);
        assert_eq!(Lane::Triggered.label(), "triggered");
    }
}
