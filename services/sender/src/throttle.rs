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
//! **Local**: the same budgets in the process, for a single sender instance or for
//! instances that each have their own provider account.
//!
//! **Slowing down**: a 429 or a provider's "slow down" answer halves the scope's rate (at
//! most once a second, however many requests were answered so), pauses it for the
//! `Retry-After`, and the rate then recovers linearly (`recovery_per_s` of the configured
//! rate per second).
//!
//! **Lanes**: each scope's rate is split into assured parts, `triggered_share` of it for
//! the triggered lane (sequence steps, test sends) and the rest for the bulk lane (blasts).
//! A lane may borrow what the other leaves unused, so a blast alone sends at the whole
//! rate; when both lanes are busy each gets at least its part; and a triggered message
//! never waits behind a blast's backlog, which is never booked more than a slot ahead
//! ([`decide`]). A 429 halves and pauses both lanes alike. With a share of 0 there are no
//! parts: one budget, served in turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Fraction of every rate (provider and sender identity) assured to the triggered
    /// lane: while it is busy, bulk messages get no more than `1 - triggered_share` of
    /// the rate, and a welcome message never waits behind a blast; while it is idle, a
    /// blast may use the whole rate. From 0 (no parts) to below 1.
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
    /// Blasts: assured `1 - triggered_share` of each budget.
    Bulk,
    /// Sequence steps and test sends: assured `triggered_share` of each budget.
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

/// One budget a message takes its units from: a scope, for a message of a lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// A provider's name, or `<provider>:<sender identity>`.
    pub scope: String,
    /// The scope's configured limit.
    pub limit: Limit,
    /// The message's lane: which part of the scope's rate it is assured of.
    pub lane: Lane,
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
    /// Local mode: each scope's state, by scope.
    local: Mutex<HashMap<String, LocalScope>>,
    /// Whose turn it is to ask, by scope, then lane (see [`Throttle::book`]).
    turns: Mutex<HashMap<String, [Turn; 2]>>,
}

/// Held by the one task of a scope and lane that is asking for its budget.
type Turn = Arc<tokio::sync::Mutex<()>>;

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// The local budgets read tokio's clock, the one their waits sleep on: a test that pauses
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

/// `lowered_at_us` of a scope never slowed down.
const NEVER: u64 = u64::MAX;

/// A borrowing message may book the scope's budget one slot ahead at most, but never less
/// than this (the borrower's next ask must not be late for its slot: tokio's timer wakes
/// up to a millisecond late)...
const LOOKAHEAD_MIN_US: f64 = 2_000.0;
/// ...nor more than this, however slow the rate: how long a borrowed booking can hold up a
/// message within its part.
const LOOKAHEAD_MAX_US: f64 = 10_000.0;

/// A scope in the local mode: its theoretical arrival times and its slow-down, in µs of
/// [`TokioClock`].
#[derive(Debug)]
struct LocalScope {
    whole: f64,
    bulk: f64,
    triggered: f64,
    factor_ppm: u64,
    lowered_at_us: u64,
    paused_until_us: u64,
}

impl Default for LocalScope {
    fn default() -> Self {
        LocalScope {
            whole: 0.0,
            bulk: 0.0,
            triggered: 0.0,
            factor_ppm: 1_000_000,
            lowered_at_us: NEVER,
            paused_until_us: 0,
        }
    }
}

/// What [`decide`] is asked, in µs.
#[derive(Debug, Clone, Copy)]
struct Ask {
    now: f64,
    /// Nothing leaves before this (a `Retry-After`).
    pause: f64,
    /// The scope's interval per unit, at its current rate.
    interval: f64,
    burst: u32,
    cost: u32,
    /// The lane's assured fraction of the rate; 0: no parts, one budget served in turn.
    fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    /// Booked: send after this wait.
    Booked(f64),
    /// Nothing taken: ask again after this wait.
    NotYet(f64),
}

/// The lanes' budget, one algorithm for both modes ([`RESERVE`] is this in Lua): a GCRA on
/// the scope's whole rate, which every message books, so the whole never exceeds the rate;
/// and a GCRA per lane on its assured part of the rate. A message whose part has room
/// books both, however far ahead the whole is booked (it waits its turn there). A message
/// whose part is spent *borrows*: it books the whole alone, but only if the whole has room
/// within one slot (2 to 10 ms); else it books nothing and is told when to ask again. So a
/// lane alone uses the whole rate, two busy lanes each get at least their part, and a
/// message within its part never waits behind the other lane's backlog: at most the
/// lookahead, the slot a borrower booked there, and the slot of one message booked
/// within its part.
fn decide(whole: &mut f64, part: &mut f64, ask: Ask) -> Decision {
    let slack = f64::from(ask.burst.max(1) - 1);
    let cost = f64::from(ask.cost.max(1));
    let start = whole.max(ask.now).max(ask.pause);
    let ready = (start - ask.interval * slack).max(ask.pause);
    if ask.fraction > 0.0 {
        let part_interval = ask.interval / ask.fraction;
        let part_start = part.max(ask.now);
        let part_ready = part_start - part_interval * slack;
        let lookahead = ask.interval.clamp(LOOKAHEAD_MIN_US, LOOKAHEAD_MAX_US);
        if part_ready <= ask.now {
            *part = part_start + part_interval * cost;
        } else if ready - ask.now > lookahead {
            let retry = part_ready.min(ready - lookahead) - ask.now;
            return Decision::NotYet(retry.max(1.0));
        }
    }
    *whole = start + ask.interval * cost;
    Decision::Booked((ready - ask.now).max(0.0))
}

/// [`decide`] on a scope's keys: `KEYS[1]` the whole's GCRA, `KEYS[2]` the scope's
/// slow-down state (`f` rate factor, `fts` when it was last lowered, `pause` µs until which
/// nothing may leave), `KEYS[3]` the lane's part's GCRA. ARGV: now_us (0: Redis time),
/// interval_us per unit at the configured rate, burst, cost, recover_per_s, fraction,
/// lookahead_min_us, lookahead_max_us. Returns `{booked (1 or 0), wait_us, factor_ppm}`.
const RESERVE: &str = r"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local f = tonumber(redis.call('HGET', KEYS[2], 'f') or '1')
local fts = tonumber(redis.call('HGET', KEYS[2], 'fts') or '0')
local pause = tonumber(redis.call('HGET', KEYS[2], 'pause') or '0')
if f < 1 then
  f = math.min(1, f + (now - fts) / 1000000 * tonumber(ARGV[5]))
end
local ppm = math.floor(f * 1000000)
local interval = tonumber(ARGV[2]) / f
local slack = math.max(tonumber(ARGV[3]), 1) - 1
local cost = math.max(tonumber(ARGV[4]), 1)
local fraction = tonumber(ARGV[6])
local start = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now, pause)
local ready = math.max(start - interval * slack, pause)
if fraction > 0 then
  local part_interval = interval / fraction
  local part_start = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
  local part_ready = part_start - part_interval * slack
  local lookahead = math.min(math.max(interval, tonumber(ARGV[7])), tonumber(ARGV[8]))
  if part_ready <= now then
    local tat = part_start + part_interval * cost
    redis.call('SET', KEYS[3], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 60000)
  elseif ready - now > lookahead then
    return {0, math.max(1, math.floor(math.min(part_ready, ready - lookahead) - now)), ppm}
  end
end
local tat = start + interval * cost
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 60000)
local wait = ready - now
if wait < 0 then wait = 0 end
return {1, math.floor(wait), ppm}
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
    /// Booked: the units are taken; wait this long, then send. Not booked: nothing was
    /// taken; ask again after this long.
    pub wait: Duration,
    /// The scope's current rate, units per second (after slow-downs and headroom).
    pub rate: f64,
    pub booked: bool,
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
            local: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// The keys of a scope: its GCRA, its slow-down state, and its lanes' parts
    /// (`t:rl-bulk:`, `t:rl-trig:`, which no scope's key can equal).
    fn keys(scope: &str, lane: Lane) -> [String; 3] {
        let part = match lane {
            Lane::Bulk => format!("t:rl-bulk:{scope}"),
            Lane::Triggered => format!("t:rl-trig:{scope}"),
        };
        [format!("t:rl:{scope}"), format!("t:rl:{scope}:s"), part]
    }

    /// The lane's assured fraction of every rate; 0 with no `triggered_share`.
    fn fraction(&self, lane: Lane) -> f64 {
        let share = self.config.triggered_share.get();
        match lane {
            _ if share <= 0.0 => 0.0,
            Lane::Bulk => 1.0 - share,
            Lane::Triggered => share,
        }
    }

    /// The budgets a message of `lane` takes from `scopes` (scope and configured limit),
    /// in order: the provider's, then the sender identity's. Unlimited scopes are left out.
    pub fn budgets(&self, lane: Lane, scopes: &[(String, Limit)]) -> Vec<Budget> {
        scopes
            .iter()
            .filter(|(_, limit)| !limit.is_unlimited())
            .map(|(scope, limit)| Budget {
                scope: scope.clone(),
                limit: *limit,
                lane,
            })
            .collect()
    }

    /// Reserves `cost` units of `scope`'s budget for a blast's message (see
    /// [`Throttle::reserve_budget`]).
    pub async fn reserve(
        &self,
        scope: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<Reservation, redis::RedisError> {
        let budget = Budget {
            scope: scope.to_owned(),
            limit,
            lane: Lane::Bulk,
        };
        self.reserve_budget(&budget, cost).await
    }

    /// Asks once for `cost` units of a budget ([`decide`]). Booked: the caller must wait
    /// [`Reservation::wait`] before sending, and then send: the units are spent.
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
                booked: true,
            });
        }
        let rate = limit.per_second * self.config.headroom.clamp(0.01, 1.0);
        let interval_us = 1_000_000.0 / rate;
        let fraction = self.fraction(budget.lane);
        match self.config.mode {
            Mode::Shared => {
                let [whole, state, part] = Self::keys(&budget.scope, budget.lane);
                let mut conn = self.redis.clone();
                let (booked, wait_us, factor_ppm): (i64, i64, i64) = RESERVE_SCRIPT
                    .key(whole)
                    .key(state)
                    .key(part)
                    .arg(self.clock.now_us())
                    .arg(interval_us)
                    .arg(limit.burst)
                    .arg(cost.max(1))
                    .arg(self.config.recovery_per_s)
                    .arg(fraction)
                    .arg(LOOKAHEAD_MIN_US)
                    .arg(LOOKAHEAD_MAX_US)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(Reservation {
                    wait: Duration::from_micros(wait_us.max(0) as u64),
                    rate: rate * factor_ppm as f64 / 1e6,
                    booked: booked == 1,
                })
            }
            Mode::Local => {
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !local.contains_key(budget.scope.as_str()) {
                    local.insert(budget.scope.clone(), LocalScope::default());
                }
                let Some(s) = local.get_mut(budget.scope.as_str()) else {
                    unreachable!("inserted above");
                };
                let now = self.local_clock.now_us();
                let factor = self.local_factor(s, now);
                let ask = Ask {
                    now: now as f64,
                    pause: s.paused_until_us as f64,
                    interval: interval_us / factor,
                    burst: limit.burst,
                    cost,
                    fraction,
                };
                let part = match budget.lane {
                    Lane::Bulk => &mut s.bulk,
                    Lane::Triggered => &mut s.triggered,
                };
                let (booked, wait_us) = match decide(&mut s.whole, part, ask) {
                    Decision::Booked(us) => (true, us),
                    Decision::NotYet(us) => (false, us),
                };
                Ok(Reservation {
                    wait: Duration::from_micros(wait_us.ceil() as u64),
                    rate: rate * factor,
                    booked,
                })
            }
        }
    }

    fn local_factor(&self, s: &LocalScope, now: u64) -> f64 {
        let f = s.factor_ppm as f64 / 1e6;
        let since = now.saturating_sub(s.lowered_at_us) as f64 / 1e6;
        (f + since * self.config.recovery_per_s).min(1.0)
    }

    fn turn(&self, budget: &Budget) -> Turn {
        let mut turns = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Looked up by `&str`: the scope is copied once, not at every message.
        if !turns.contains_key(budget.scope.as_str()) {
            turns.insert(budget.scope.clone(), Default::default());
        }
        let lane = match budget.lane {
            Lane::Bulk => 0,
            Lane::Triggered => 1,
        };
        turns[budget.scope.as_str()][lane].clone()
    }

    /// Asks for `cost` units of a budget until they are booked, and returns the booking
    /// (wait [`Reservation::wait`], then send). The tasks of one scope and lane take turns
    /// to ask, first come, first served (tokio's mutex is fair): one asks at a time, and
    /// sleeps until the budget said to ask again, instead of all of them polling.
    pub async fn book(&self, budget: &Budget, cost: u32) -> Result<Reservation, redis::RedisError> {
        let turn = self.turn(budget);
        let _turn = turn.lock().await;
        loop {
            let reservation = self.reserve_budget(budget, cost).await?;
            if reservation.booked {
                return Ok(reservation);
            }
            tokio::time::sleep(reservation.wait).await;
        }
    }

    /// Waits for `cost` units of `scope` for a blast's message; returns how long it waited
    /// and the rate.
    pub async fn acquire(
        &self,
        scope: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<(Duration, f64), redis::RedisError> {
        let budget = Budget {
            scope: scope.to_owned(),
            limit,
            lane: Lane::Bulk,
        };
        self.acquire_budget(&budget, cost).await
    }

    /// Waits for `cost` units of a budget: [`Throttle::book`], then its wait.
    pub async fn acquire_budget(
        &self,
        budget: &Budget,
        cost: u32,
    ) -> Result<(Duration, f64), redis::RedisError> {
        let started = tokio::time::Instant::now();
        let reservation = self.book(budget, cost).await?;
        if !reservation.wait.is_zero() {
            tokio::time::sleep(reservation.wait).await;
        }
        Ok((started.elapsed(), reservation.rate))
    }

    /// The provider said "slow down": lower `scope`'s rate and pause it for `retry_after`,
    /// for both lanes (the parts share the scope's state). Returns the new rate factor
    /// (1 = the configured rate).
    pub async fn slow_down(
        &self,
        scope: &str,
        retry_after: Option<Duration>,
    ) -> Result<f64, redis::RedisError> {
        let retry_us = retry_after.map_or(0, |d| d.as_micros() as u64);
        match self.config.mode {
            Mode::Shared => {
                let [_, state, _] = Self::keys(scope, Lane::Bulk);
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
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let s = local.entry(scope.to_owned()).or_default();
                let now = self.local_clock.now_us();
                let factor = self.local_factor(s, now);
                let factor = if s.lowered_at_us == NEVER
                    || now.saturating_sub(s.lowered_at_us) >= 1_000_000
                {
                    let f = (factor / 2.0).max(self.config.min_factor);
                    s.factor_ppm = (f * 1e6) as u64;
                    s.lowered_at_us = now;
                    f
                } else {
                    factor
                };
                if retry_us > 0 {
                    s.paused_until_us = s.paused_until_us.max(now + retry_us);
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

    /// Drives [`decide`] for lanes of saturating tasks on a simulated clock (each task asks
    /// again as soon as its previous message left, or when told to); returns the grants of
    /// each lane, in µs.
    fn simulate(share: f64, bulk_tasks: usize, triggered_tasks: usize) -> [Vec<f64>; 2] {
        let interval = 10_000.0; // 100/s
        let (mut whole, mut parts) = (0.0, [0.0, 0.0]);
        let mut wake: Vec<(f64, usize)> = (0..bulk_tasks)
            .map(|_| (0.0, 0))
            .chain((0..triggered_tasks).map(|_| (3_700.0, 1)))
            .collect();
        let mut grants = [Vec::new(), Vec::new()];
        loop {
            let (i, &(now, lane)) = wake
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
                .expect("tasks");
            if now >= 10e6 {
                return grants;
            }
            let fraction = if lane == 0 { 1.0 - share } else { share };
            let ask = Ask {
                now,
                pause: 0.0,
                interval,
                burst: 1,
                cost: 1,
                fraction,
            };
            wake[i].0 = match decide(&mut whole, &mut parts[lane], ask) {
                Decision::Booked(wait) => {
                    grants[lane].push(now + wait);
                    now + wait
                }
                Decision::NotYet(retry) => now + retry,
            };
        }
    }

    fn per_second(grants: &[f64]) -> Vec<usize> {
        (0..10)
            .map(|k| {
                let second = f64::from(k) * 1e6..f64::from(k + 1) * 1e6;
                grants.iter().filter(|t| second.contains(t)).count()
            })
            .collect()
    }

    #[test]
    fn a_lane_alone_uses_the_whole_rate_and_two_busy_lanes_split_it() {
        let [bulk, triggered] = simulate(0.2, 8, 0);
        assert!(triggered.is_empty());
        assert!(per_second(&bulk).iter().all(|&n| n == 100), "{bulk:?}");
        let [bulk, triggered] = simulate(0.2, 0, 3);
        assert!(bulk.is_empty());
        assert!(per_second(&triggered).iter().all(|&n| n == 100));
        let [bulk, triggered] = simulate(0.2, 8, 3);
        let (b, t) = (per_second(&bulk), per_second(&triggered));
        for second in 1..10 {
            assert_eq!(b[second] + t[second], 100, "second {second}: {b:?} {t:?}");
            assert!(t[second] >= 20, "triggered {t:?}");
            assert!(b[second] >= 78, "bulk {b:?}");
        }
    }

    #[test]
    fn a_message_within_its_part_waits_at_most_a_slot_behind_borrowers() {
        let (mut whole, mut bulk, mut triggered) = (0.0, 0.0, 0.0);
        let ask = |now: f64, fraction: f64| Ask {
            now,
            pause: 0.0,
            interval: 10_000.0,
            burst: 1,
            cost: 1,
            fraction,
        };
        // A blast asks for 50 messages at once: its part (80/s) and the lookahead let a
        // few be booked; the rest are told to come back.
        let booked = (0..50)
            .filter(|_| {
                matches!(
                    decide(&mut whole, &mut bulk, ask(0.0, 0.8)),
                    Decision::Booked(_)
                )
            })
            .count();
        assert!(booked <= 2, "{booked} booked at once");
        match decide(&mut whole, &mut triggered, ask(0.0, 0.2)) {
            Decision::Booked(wait) => assert!(wait <= 20_000.0, "waited {wait} µs"),
            other => panic!("{other:?}"),
        }
        // With no parts (share 0), everything is booked in turn.
        let (mut whole, mut none) = (0.0, 0.0);
        for k in 0..50 {
            assert_eq!(
                decide(&mut whole, &mut none, ask(0.0, 0.0)),
                Decision::Booked(f64::from(k) * 10_000.0)
            );
        }
    }

    #[test]
    fn lanes_come_from_the_contract() {
        assert_eq!(Lane::of(v1::Lane::Triggered), Lane::Triggered);
        assert_eq!(Lane::of(v1::Lane::Bulk), Lane::Bulk);
        assert_eq!(Lane::of(v1::Lane::Unspecified), Lane::Bulk);
        assert_eq!(Lane::Triggered.label(), "triggered");
    }
}
