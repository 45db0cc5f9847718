//! The planner's gauges on `/metrics`: contacts (a count started from what Redis already
//! holds, then kept by ingestion and erasure), segments and the largest ones' sizes, the
//! schedule, and the progress of running and paused campaigns only.

mod support;

use std::time::Duration;

use chrono::{Datelike, Utc};
use redis::AsyncCommands;
use support::{Harness, contact, email_blast, entered, erased, now_secs, sample, scrape_until};
use tocsin_contracts::v1;

const REDIS_DB: u8 = 27;

fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    sample(page, name, labels).map(|v| v as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_contacts_segments_and_running_campaigns() {
    let port = tocsin_integration_tests::stack::free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = Harness::new(
        "metrics",
        REDIS_DB,
        &[
            ("TOCSIN__HTTP__LISTEN", &listen),
            ("TOCSIN__PLANNER__METRICS_REFRESH_MS", "200"),
            ("TOCSIN__PLANNER__METRICS_TOP_SEGMENTS", "2"),
        ],
    )
    .await;
    // Two records from before the count existed: the first refresh counts them.
    let mut conn = h.redis.clone();
    for id in ["old-1", "old-2"] {
        let _: () = conn
            .set(format!("t:c:{{{id}}}"), "V0000000000000000|\n")
            .await
            .expect("redis");
    }
    let stop = tocsin_runtime::shutdown::CancellationToken::new();
    let wait = stop.clone();
    let planner = tokio::spawn(tocsin_planner::run(h.config.clone(), async move {
        wait.cancelled().await
    }));
    scrape_until(port, Duration::from_secs(30), |p| {
        value(p, "tocsin_planner_contacts", &[]) == Some(2)
    })
    .await;

    // Five people in `a`, three of them in `b`, one in `c`; then one of `a` erased.
    let person = |i: usize| {
        contact(
            &format!("c-{i}"),
            &format!("person-{i}@exemple.fr"),
            "",
            &[v1::Channel::Email],
            1_700_000_000,
        )
    };
    let mut events: Vec<v1::SegmentEvent> = (0..5).map(|i| entered("a", person(i))).collect();
    events.extend((0..3).map(|i| entered("b", person(i))));
    events.push(entered("c", person(4)));
    h.publish_segment_events(&events).await;
    let page = scrape_until(port, Duration::from_secs(60), |p| {
        value(p, "tocsin_planner_contacts", &[]) == Some(7)
            && value(p, "tocsin_planner_segment_contacts", &[("segment", "a")]) == Some(5)
    })
    .await;
    assert_eq!(value(&page, "tocsin_planner_segments", &[]), Some(3));
    assert_eq!(
        value(
            &page,
            "tocsin_planner_segment_contacts",
            &[("segment", "b")]
        ),
        Some(3)
    );
    assert_eq!(
        value(
            &page,
            "tocsin_planner_segment_contacts",
            &[("segment", "c")]
        ),
        None,
        "only the two largest segments have a series"
    );

    h.publish_segment_events(&[erased("c-3")]).await;
    scrape_until(port, Duration::from_secs(60), |p| {
        value(p, "tocsin_planner_contacts", &[]) == Some(6)
            && value(p, "tocsin_planner_segment_contacts", &[("segment", "a")]) == Some(4)
    })
    .await;

    // A blast to `b` whose only sending window is tomorrow: planned, waiting, running.
    let tomorrow = (Utc::now().with_timezone(&chrono_tz::Europe::Paris)
        + chrono::Duration::days(1))
    .weekday()
    .number_from_monday();
    let mut held = email_blast("b", now_secs());
    held.quiet_hours = Some(v1::QuietHours {
        disabled: false,
        windows: vec![v1::SendingWindow {
            iso_weekday: tomorrow,
            start_minute: 0,
            end_minute: 1,
        }],
        skip_french_public_holidays: false,
    });
    h.schedule("held", held).await;
    // A blast to `c`, sent at once: it completes and never keeps a series.
    h.schedule("quick", email_blast("c", now_secs())).await;
    let progress = |p: &str, campaign: &str, state: &str| {
        value(
            p,
            "tocsin_planner_campaign_recipients",
            &[("campaign", campaign), ("state", state)],
        )
    };
    let page = scrape_until(port, Duration::from_secs(60), |p| {
        progress(p, "held", "planned") == Some(3)
    })
    .await;
    assert_eq!(progress(&page, "held", "total"), Some(3));
    assert_eq!(progress(&page, "held", "suppressed"), Some(0));
    assert_eq!(progress(&page, "held", "dispatched"), Some(0));
    assert_eq!(
        value(&page, "tocsin_planner_schedule_due_jobs", &[]),
        Some(0)
    );
    h.wait_redis("quick completed", Duration::from_secs(60), async |c| {
        let state: Option<String> = c.hget("t:cmp:quick", "state").await.ok()?;
        (state.as_deref() == Some("completed")).then_some(())
    })
    .await;
    let page = scrape_until(port, Duration::from_secs(30), |p| {
        value(p, "tocsin_planner_schedule_jobs", &[]) == Some(3)
    })
    .await;
    assert_eq!(progress(&page, "quick", "planned"), None, "completed");

    // Paused: still shown. Cancelled: gone.
    h.command(
        "held",
        v1::campaign_command::Command::Pause(Default::default()),
    )
    .await;
    h.wait_redis("held paused", Duration::from_secs(30), async |c| {
        let state: Option<String> = c.hget("t:cmp:held", "state").await.ok()?;
        (state.as_deref() == Some("paused")).then_some(())
    })
    .await;
    let page = scrape_until(port, Duration::from_secs(5), |p| {
        progress(p, "held", "planned") == Some(3)
    })
    .await;
    assert_eq!(progress(&page, "held", "total"), Some(3));
    h.command(
        "held",
        v1::campaign_command::Command::Cancel(Default::default()),
    )
    .await;
    scrape_until(port, Duration::from_secs(30), |p| {
        progress(p, "held", "planned").is_none() && progress(p, "held", "total").is_none()
    })
    .await;

    stop.cancel();
    planner.await.expect("join").expect("planner");
}
