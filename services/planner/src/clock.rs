//! The planner's idea of "now": the system clock, or a manual one that tests move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// Cheap to clone; every clone of a manual clock shows the same instant.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock showing `at` until it is moved.
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(at.timestamp_millis())))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(ms) => {
                DateTime::from_timestamp_millis(ms.load(Ordering::SeqCst)).unwrap_or_else(Utc::now)
            }
        }
    }

    /// Moves a manual clock to `at` (the system clock cannot be moved).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Clock::Manual(ms) = self {
            ms.store(at.timestamp_millis(), Ordering::SeqCst);
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.set(self.now() + by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        let clock = Clock::manual(t0);
        let other = clock.clone();
        assert_eq!(other.now(), t0);
        clock.advance(chrono::Duration::hours(49));
        assert_eq!(other.now(), t0 + chrono::Duration::hours(49));
    }
}
