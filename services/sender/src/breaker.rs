//! A circuit breaker per provider: after `failure_threshold` transient failures in a row
//! the provider is *open* (skipped) for `open_ms`; then one probe message is let through
//! (*half-open*): its success closes the circuit, its failure opens it again.
//!
//! Only transient failures count: a permanent one (an unknown address) says nothing about
//! the provider's health, and a "slow down" is the throttle's business.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_ms: u64,
}

/// What a dashboard shows (`tocsin_sender_circuit_state`: 0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn state(&self) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if Instant::now() >= until => State::HalfOpen,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Whether a message may go to this provider now. In half-open, only one probe at a
    /// time is let through.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } if Instant::now() >= until => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::Open { .. } => false,
            Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing: true } => false,
        }
    }

    /// When the provider may next be tried (now if it may).
    pub fn retry_in(&self) -> Duration {
        match *self.lock() {
            Inner::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    pub fn success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// A transient failure. Returns true when this failure opened the circuit.
    pub fn failure(&self) -> bool {
        let mut inner = self.lock();
        let open = Inner::Open {
            until: Instant::now() + Duration::from_millis(self.config.open_ms),
        };
        match *inner {
            Inner::Closed { failures } if failures + 1 >= self.config.failure_threshold => {
                *inner = open;
                true
            }
            Inner::Closed { failures } => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                };
                false
            }
            Inner::HalfOpen { .. } => {
                *inner = open;
                true
            }
            Inner::Open { .. } => false,
        }
    }

    /// A probe ended without telling anything (a permanent failure of that message).
    pub fn neutral(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { .. } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_then_closes() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_ms: 50,
        });
        assert!(!b.failure() && !b.failure());
        assert_eq!(b.state(), State::Closed);
        b.success();
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "third failure in a row opens");
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "one probe after open_ms");
        assert!(!b.allow(), "only one probe at a time");
        assert!(b.failure(), "a failed probe opens again");
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow() && b.allow());
    }
}
