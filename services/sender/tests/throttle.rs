//! Provider budgets against the real Redis, with a controlled clock: the grants that three
//! sender instances get from one shared budget never exceed the limit over any second,
//! the achieved rate is the configured one, a slow-down halves it and pauses it for the
//! `Retry-After`, and it recovers. The lanes, in both modes: a lane alone uses the whole
//! rate, two busy lanes each get at least their part, a triggered message waits no more
//! than three slots under a saturating blast, and the whole never exceeds the rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tocsin_integration_tests::stack;
use tocsin_sender::throttle::{Budget, Clock, Lane, Limit, Mode, Share, Throttle, ThrottleConfig};

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
    with_share(mode, 0.0)
}

fn with_share(mode: Mode, share: f64) -> ThrottleConfig {
    ThrottleConfig {
        mode,
        headroom: 1.0,
        recovery_per_s: 0.05,
        min_factor: 0.05,
        triggered_share: Share::try_from(share).expect("a share"),
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

/// Grants (µs, lane) of a simulated run, and the waits of the triggered lane's messages.
#[derive(Debug, Default)]
struct Run {
    grants: Vec<(u64, Lane)>,
    triggered_waits_us: Vec<u64>,
}

impl Run {
    fn of(&self, lane: Option<Lane>) -> Vec<(u64, u32)> {
        self.grants
            .iter()
            .filter(|(_, l)| lane.is_none_or(|lane| *l == lane))
            .map(|(at, _)| (*at, 1))
            .collect()
    }

    /// Grants of `lane` in each whole second `[t0 + k s, t0 + (k + 1) s)` of the run.
    fn per_second(&self, lane: Lane, t0: u64, seconds: u64) -> Vec<usize> {
        (0..seconds)
            .map(|k| {
                let (from, to) = (t0 + k * 1_000_000, t0 + (k + 1) * 1_000_000);
                self.grants
                    .iter()
                    .filter(|(at, l)| *l == lane && (from..to).contains(at))
                    .count()
            })
            .collect()
    }
}

/// One sender task: it asks for the budgets of its lane in order, waits for each, sends
/// when the last is granted, and asks again for its next message right away (a saturating
/// demand); a triggered task with `every_us` asks only that often (a light demand).
#[derive(Debug)]
struct Task {
    lane: Lane,
    every_us: Option<u64>,
    step: usize,
    wake: u64,
    asked: u64,
}

/// Drives tasks against the shared budgets on the manual clock, in the order of their
/// wake-up times, for `seconds`.
async fn simulate_shared(
    throttle: &Throttle,
    clock: &AtomicU64,
    scope: &str,
    limit: Limit,
    mut tasks: Vec<Task>,
    seconds: u64,
) -> Run {
    let t0 = clock.load(Ordering::SeqCst);
    let end = t0 + seconds * 1_000_000;
    let mut run = Run::default();
    loop {
        let (i, wake) = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (i, t.wake))
            .min_by_key(|&(i, wake)| (wake, i))
            .expect("tasks");
        if wake >= end {
            return run;
        }
        clock.store(wake, Ordering::SeqCst);
        let task = &mut tasks[i];
        let budgets: Vec<Budget> = throttle.budgets(task.lane, &[(scope.to_owned(), limit)]);
        let r = throttle
            .reserve_budget(&budgets[task.step], 1)
            .await
            .expect("reserve");
        let at = wake + r.wait.as_micros() as u64;
        if !r.booked {
            task.wake = at;
            continue;
        }
        if task.step + 1 < budgets.len() {
            task.step += 1;
            task.wake = at;
            continue;
        }
        run.grants.push((at, task.lane));
        if task.lane == Lane::Triggered {
            run.triggered_waits_us.push(at - task.asked);
        }
        task.step = 0;
        task.wake = match task.every_us {
            Some(every) => task.asked + every,
            None => at,
        }
        .max(at);
        task.asked = task.wake;
    }
}

fn tasks(t0: u64, bulk: usize, triggered: usize, every_us: Option<u64>) -> Vec<Task> {
    let task = |lane, every_us, offset: u64| Task {
        lane,
        every_us,
        step: 0,
        wake: t0 + offset,
        asked: t0 + offset,
    };
    (0..bulk)
        .map(|_| task(Lane::Bulk, None, 0))
        // The light triggered tasks start out of step with the bulk slots.
        .chain((0..triggered).map(|i| task(Lane::Triggered, every_us, 3_700 + i as u64 * 1_000)))
        .collect()
}

const RATE: Limit = Limit {
    per_second: 100.0,
    burst: 1,
};

/// A fresh shared budget (a scope of its own, a manual clock from `t0`) at [`RATE`],
/// driven by `tasks` for 10 s.
async fn run_shared(
    conn: &redis::aio::ConnectionManager,
    share: f64,
    name: &str,
    t0: u64,
    tasks: Vec<Task>,
) -> Run {
    let clock = Arc::new(AtomicU64::new(t0));
    let throttle = Throttle::new(
        with_share(Mode::Shared, share),
        conn.clone(),
        Clock::Manual(clock.clone()),
    );
    simulate_shared(&throttle, &clock, &stack::unique(name), RATE, tasks, 10).await
}

/// Every second after the first: the whole rate used, never more, and each busy lane at
/// least its part.
fn assert_split(run: &Run, t0: u64, bulk_tasks: bool, triggered_tasks: bool) {
    let all = max_in_window(&run.of(None), 1_000_000);
    assert!(all <= 100, "never above the rate over any second: {all}");
    let bulk = run.per_second(Lane::Bulk, t0, 10);
    let triggered = run.per_second(Lane::Triggered, t0, 10);
    println!("per second: bulk {bulk:?}, triggered {triggered:?}");
    for second in 1..10 {
        let (b, t) = (bulk[second], triggered[second]);
        assert!(
            b + t >= 99,
            "second {second}: the whole rate used, {b} + {t}"
        );
        if bulk_tasks && triggered_tasks {
            assert!(t >= 20, "second {second}: triggered {t}, below its part");
            assert!(b >= 78, "second {second}: bulk {b}, below its part");
        }
    }
}

#[tokio::test]
async fn shared_a_lane_alone_uses_the_whole_rate_and_two_busy_lanes_split_it() {
    let conn = redis().await;
    let t0 = 1_800_000_000_000_000u64;
    // 32 bulk tasks (a blast's backlog, as many as a provider's calls in flight) and 2
    // triggered ones, all asking as fast as they are served, for 10 s. (Served in turn
    // from one budget, the two would get 2/34 of it.) Then each lane alone.
    for (bulk, triggered) in [(32, 2), (32, 0), (0, 2)] {
        let run = run_shared(&conn, 0.2, "lanes", t0, tasks(t0, bulk, triggered, None)).await;
        assert_split(&run, t0, bulk > 0, triggered > 0);
    }
}

#[tokio::test]
async fn shared_a_triggered_message_does_not_queue_behind_a_blast() {
    let conn = redis().await;
    let t0 = 1_800_000_000_000_000u64;
    // Under a blast of 32 tasks, one triggered message every 250 ms.
    let mut waits = Vec::new();
    for share in [0.2, 0.0] {
        let tasks = tasks(t0, 32, 1, Some(250_000));
        let run = run_shared(&conn, share, "lanes-light", t0, tasks).await;
        assert!(max_in_window(&run.of(None), 1_000_000) <= 100);
        if share > 0.0 {
            assert_eq!(
                run.triggered_waits_us.len(),
                40,
                "every 250 ms, each served"
            );
            // The blast takes what the triggered lane leaves.
            assert_split(&run, t0, true, false);
        }
        waits.push(run.triggered_waits_us.iter().copied().max().unwrap_or(0));
    }
    // With the share, at most three slots of the provider (10 ms each: the lookahead, the
    // slot a borrowing blast message booked there, and one the blast booked within its
    // part); without it, behind the blast's whole backlog of reservations (so it is also
    // served less often).
    println!(
        "longest triggered wait: {} µs with a share, {} µs without",
        waits[0], waits[1]
    );
    assert!(waits[0] <= 30_000, "with a share: {} µs", waits[0]);
    assert!(waits[1] >= 300_000, "without a share: {} µs", waits[1]);
}

#[tokio::test]
async fn shared_a_slow_down_applies_to_both_lanes() {
    let conn = redis().await;
    let t0 = 1_800_000_000_000_000u64;
    let clock = Arc::new(AtomicU64::new(t0));
    let throttle = Throttle::new(
        with_share(Mode::Shared, 0.2),
        conn,
        Clock::Manual(clock.clone()),
    );
    let scope = stack::unique("lanes-429");
    throttle
        .slow_down(&scope, Some(Duration::from_secs(2)))
        .await
        .expect("slow down");
    let bulk = throttle.budgets(Lane::Bulk, &[(scope.clone(), RATE)]);
    let triggered = throttle.budgets(Lane::Triggered, &[(scope.clone(), RATE)]);
    assert_eq!((bulk.len(), triggered.len()), (1, 1));
    // Both lanes are paused for the Retry-After, at half the rate.
    let a = throttle.reserve_budget(&bulk[0], 1).await.expect("reserve");
    assert!(a.booked);
    assert_eq!((a.wait, a.rate), (Duration::from_secs(2), 50.0));
    // The blast's part (80/s, now 40/s) is spent and the scope is booked 2 s ahead: a
    // second blast message borrows nothing, and is told to come back when its part has
    // room again.
    let b = throttle.reserve_budget(&bulk[0], 1).await.expect("reserve");
    assert!(!b.booked);
    assert_eq!(b.wait, Duration::from_micros(25_000), "40/s: half of 80/s");
    let c = throttle
        .reserve_budget(&triggered[0], 1)
        .await
        .expect("reserve");
    assert!(c.booked);
    assert_eq!(
        (c.wait, c.rate),
        (Duration::from_millis(2_020), 50.0),
        "after the blast's message, at 50/s"
    );

    // With a sender identity too: the provider, then the identity; no budget for an
    // unlimited scope.
    let scopes = [
        ("p".to_owned(), RATE),
        ("p:from@x".to_owned(), RATE),
        ("q".to_owned(), Limit::UNLIMITED),
    ];
    let order: Vec<(String, Lane)> = throttle
        .budgets(Lane::Bulk, &scopes)
        .into_iter()
        .map(|b| (b.scope, b.lane))
        .collect();
    assert_eq!(
        order,
        [
            ("p".to_owned(), Lane::Bulk),
            ("p:from@x".to_owned(), Lane::Bulk)
        ]
    );
    assert_eq!(throttle.budgets(Lane::Triggered, &scopes).len(), 2);
}

/// The local mode on tokio's paused clock: tasks sleep on it and the limiters read it.
async fn simulate_local(throttle: Arc<Throttle>, tasks: Vec<(Lane, Option<Duration>)>) -> Run {
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(10);
    let us = move |t: tokio::time::Instant| (t - start).as_micros() as u64;
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|(lane, every)| {
            let throttle = throttle.clone();
            tokio::spawn(async move {
                let budgets = throttle.budgets(lane, &[("local".to_owned(), RATE)]);
                let mut grants = Vec::new();
                let mut waits = Vec::new();
                loop {
                    let asked = tokio::time::Instant::now();
                    for budget in &budgets {
                        throttle.acquire_budget(budget, 1).await.expect("acquire");
                    }
                    let at = tokio::time::Instant::now();
                    if at >= end {
                        return (grants, waits);
                    }
                    grants.push((us(at), lane));
                    waits.push(us(at) - us(asked));
                    if let Some(every) = every {
                        tokio::time::sleep_until((asked + every).max(at)).await;
                    }
                }
            })
        })
        .collect();
    let mut run = Run::default();
    for handle in handles {
        let (grants, waits) = handle.await.expect("task");
        if grants.first().is_some_and(|(_, l)| *l == Lane::Triggered) {
            run.triggered_waits_us.extend(waits);
        }
        run.grants.extend(grants);
    }
    run
}

#[tokio::test]
async fn local_a_lane_alone_uses_the_whole_rate_and_two_busy_lanes_split_it() {
    let conn = redis().await;
    // From here on tokio's time moves only when every task waits (connected first).
    tokio::time::pause();
    for (bulk, triggered) in [(32, 2), (32, 0), (0, 2)] {
        let throttle = Arc::new(Throttle::new(
            with_share(Mode::Local, 0.2),
            conn.clone(),
            Clock::Redis,
        ));
        let tasks = std::iter::repeat_n((Lane::Bulk, None), bulk)
            .chain(std::iter::repeat_n((Lane::Triggered, None), triggered))
            .collect();
        let run = simulate_local(throttle, tasks).await;
        assert_split(&run, 0, bulk > 0, triggered > 0);
    }
}

#[tokio::test]
async fn local_a_triggered_message_does_not_queue_behind_a_blast() {
    let conn = redis().await;
    // From here on tokio's time moves only when every task waits (connected first).
    tokio::time::pause();
    let throttle = Arc::new(Throttle::new(
        with_share(Mode::Local, 0.2),
        conn,
        Clock::Redis,
    ));
    let tasks = std::iter::repeat_n((Lane::Bulk, None), 32)
        .chain([(Lane::Triggered, Some(Duration::from_millis(250)))])
        .collect();
    let run = simulate_local(throttle, tasks).await;
    assert!(max_in_window(&run.of(None), 1_000_000) <= 100);
    assert_eq!(run.triggered_waits_us.len(), 40);
    let longest = run.triggered_waits_us.iter().copied().max().unwrap_or(0);
    println!("local: longest triggered wait {longest} µs");
    // Three slots of the provider (10 ms each, as in the shared mode), and tokio's timer
    // rounds to the millisecond.
    assert!(longest <= 31_000, "a triggered message waited {longest} µs");
}
