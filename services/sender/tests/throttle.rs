//! Provider budgets against the real Redis, with a controlled clock: the grants that three
//! sender instances get from one shared budget never exceed the limit over any second,
//! the achieved rate is the configured one, a slow-down halves it and pauses it for the
//! `Retry-After`, and it recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tocsin_integration_tests::stack;
use tocsin_sender::throttle::{Clock, Limit, Mode, Throttle, ThrottleConfig};

const REDIS_DB: u8 = 13;

async fn redis() -> redis::aio::ConnectionManager {
    let url = stack::service_env("throttle", 1, REDIS_DB)
        .into_iter()
        .find(|(k, _)| k == "TOCSIN__REDIS__URL")
        .map(|(_, v)| v)
        .expect("redis url");
    redis::aio::ConnectionManager::new(redis::Client::open(url).expect("url"))
        .await
        .expect("redis (deploy/local/stack.sh up)")
}

fn config(mode: Mode) -> ThrottleConfig {
    ThrottleConfig {
        mode,
        headroom: 1.0,
        recovery_per_s: 0.05,
        min_factor: 0.05,
    }
}

/// The most grants (weighted by cost) inside any window of `window_us` starting at a grant.
fn max_in_window(grants: &[(u64, u32)], window_us: u64) -> u32 {
    let mut sorted = grants.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    for (i, (start, _)) in sorted.iter().enumerate() {
        let sum: u32 = sorted[i..]
            .iter()
            .take_while(|(t, _)| *t < start + window_us)
            .map(|(_, c)| c)
            .sum();
        best = best.max(sum);
    }
    best
}

#[tokio::test]
async fn three_instances_share_one_budget_exactly() {
    let conn = redis().await;
    let clock = Arc::new(AtomicU64::new(1_800_000_000_000_000));
    let instances: Vec<Throttle> = (0..3)
        .map(|_| {
            Throttle::new(
                config(Mode::Shared),
                conn.clone(),
                Clock::Manual(clock.clone()),
            )
        })
        .collect();
    let scope = stack::unique("twilio");
    let limit = Limit {
        per_second: 100.0,
        burst: 1,
    };
    // Each instance asks for a message whenever its previous grant is due: 600 messages,
    // interleaved, the clock moving on as grants fall due.
    let mut next_free = [clock.load(Ordering::SeqCst); 3];
    let mut grants = Vec::new();
    for i in 0..600 {
        let who = i % 3;
        clock.fetch_max(next_free[who], Ordering::SeqCst);
        let now = clock.load(Ordering::SeqCst);
        let r = instances[who]
            .reserve(&scope, limit, 1)
            .await
            .expect("reserve");
        let at = now + r.wait.as_micros() as u64;
        next_free[who] = at;
        grants.push((at, 1));
    }
    assert!(
        max_in_window(&grants, 1_000_000) <= 100,
        "never more than the limit over any second: {}",
        max_in_window(&grants, 1_000_000)
    );
    let first = grants.iter().map(|g| g.0).min().expect("grants");
    let last = grants.iter().map(|g| g.0).max().expect("grants");
    let achieved = 599.0 / ((last - first) as f64 / 1e6);
    assert!(
        (achieved - 100.0).abs() / 100.0 < 0.02,
        "achieved {achieved:.2}/s against 100/s"
    );
}

#[tokio::test]
async fn sms_parts_are_the_unit_and_a_burst_is_allowed_once() {
    let conn = redis().await;
    let clock = Arc::new(AtomicU64::new(1_800_000_000_000_000));
    let throttle = Throttle::new(config(Mode::Shared), conn, Clock::Manual(clock.clone()));
    let scope = stack::unique("brevo-sms");
    let limit = Limit {
        per_second: 10.0,
        burst: 5,
    };
    // Five single-part messages at once: the burst.
    for _ in 0..5 {
        let r = throttle.reserve(&scope, limit, 1).await.expect("reserve");
        assert_eq!(r.wait, Duration::ZERO);
    }
    // The budget is spent: a three-part SMS waits for three parts' worth... of which the
    // first part's slot comes due after one interval.
    let r = throttle.reserve(&scope, limit, 3).await.expect("reserve");
    assert_eq!(r.wait, Duration::from_millis(100));
    let r = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    assert_eq!(r.wait, Duration::from_millis(400), "after the 3 parts");
}

#[tokio::test]
async fn a_slow_down_halves_the_rate_pauses_it_and_it_recovers() {
    let conn = redis().await;
    let t0 = 1_800_000_000_000_000u64;
    let clock = Arc::new(AtomicU64::new(t0));
    let throttle = Throttle::new(config(Mode::Shared), conn, Clock::Manual(clock.clone()));
    let scope = stack::unique("sendgrid");
    let limit = Limit {
        per_second: 100.0,
        burst: 1,
    };
    let r = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    assert_eq!((r.wait, r.rate), (Duration::ZERO, 100.0));
    // The provider answers 429 with Retry-After: 2.
    let factor = throttle
        .slow_down(&scope, Some(Duration::from_secs(2)))
        .await
        .expect("slow down");
    assert_eq!(factor, 0.5);
    // A second 429 within the second does not halve again.
    let factor = throttle
        .slow_down(&scope, Some(Duration::from_secs(2)))
        .await
        .expect("slow down");
    assert_eq!(factor, 0.5);
    let a = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    let b = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    assert_eq!(a.wait, Duration::from_secs(2), "paused for Retry-After");
    assert_eq!(b.wait - a.wait, Duration::from_millis(20), "half the rate");
    assert_eq!(a.rate, 50.0);
    // Ten quiet seconds later, fully recovered (5 % of the rate per second).
    clock.store(t0 + 12_000_000, Ordering::SeqCst);
    let c = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    let d = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    assert_eq!(c.rate, 100.0);
    assert_eq!(d.wait - c.wait, Duration::from_millis(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_budgets_hold_the_limit_with_the_real_clock() {
    let conn = redis().await;
    let throttle = Arc::new(Throttle::new(config(Mode::Local), conn, Clock::Redis));
    let limit = Limit {
        per_second: 50.0,
        burst: 1,
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let throttle = throttle.clone();
            tokio::spawn(async move {
                let mut at = Vec::new();
                for _ in 0..25 {
                    throttle.acquire("local", limit, 1).await.expect("acquire");
                    at.push((started.elapsed().as_micros() as u64, 1));
                }
                at
            })
        })
        .collect();
    let mut grants = Vec::new();
    for t in tasks {
        grants.extend(t.await.expect("task"));
    }
    assert_eq!(grants.len(), 75);
    assert!(
        max_in_window(&grants, 1_000_000) <= 51,
        "{}",
        max_in_window(&grants, 1_000_000)
    );
}

#[tokio::test]
async fn a_burst_never_shortens_a_retry_after() {
    let conn = redis().await;
    let t0 = 1_800_000_000_000_000u64;
    let clock = Arc::new(AtomicU64::new(t0));
    let throttle = Throttle::new(config(Mode::Shared), conn, Clock::Manual(clock.clone()));
    let scope = stack::unique("burst-pause");
    let limit = Limit {
        per_second: 10.0,
        burst: 5,
    };
    throttle
        .slow_down(&scope, Some(Duration::from_secs(3)))
        .await
        .expect("slow down");
    let r = throttle.reserve(&scope, limit, 1).await.expect("reserve");
    assert_eq!(r.wait, Duration::from_secs(3), "nothing before Retry-After");
}
