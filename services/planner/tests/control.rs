//! Pause, resume and cancel; jobs held by quiet hours in the durable schedule across a
//! planner restart.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Timelike, Utc};
use redis::AsyncCommands;
use support::{Harness, contact, email_blast, entered, now_secs};
use tocsin_contracts::v1;
use tocsin_contracts::v1::campaign_command::Command;
use tocsin_integration_tests::stack::TopicReader;
use tocsin_runtime::shutdown::CancellationToken;

fn spawn(
    h: &Harness,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let wait = stop.clone();
    let handle = tokio::spawn(tocsin_planner::run(h.config.clone(), async move {
        wait.cancelled().await
    }));
    (stop, handle)
}

async fn planned(h: &Harness, id: &str) -> i64 {
    h.counters(id).await.get("planned").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_everything_and_resume_finishes_the_campaign() {
    const N: usize = 20_000;
    let h = Harness::new("pause", 4, &[("TOCSIN__PLANNER__BATCH_SIZE", "10")]).await;
    let (stop, planner) = spawn(&h);
    let events: Vec<_> = (0..N)
        .map(|i| {
            let c = contact(
                &format!("c-{i:05}"),
                &format!("p{i}@exemple.fr"),
                "",
                &[v1::Channel::Email],
                1,
            );
            entered("tous", c)
        })
        .collect();
    h.publish_segment_events(&events).await;
    h.wait_redis("segment loaded", Duration::from_secs(60), async |c| {
        let n: usize = c.zcard("t:s:tous").await.ok()?;
        (n == N).then_some(())
    })
    .await;
    h.schedule("cmp-pause", email_blast("tous", now_secs()))
        .await;
    h.wait_redis("fan-out under way", Duration::from_secs(60), async |c| {
        let p: Option<i64> = c.hget("t:cmp:cmp-pause:n", "planned").await.ok()?;
        p.filter(|&p| p >= 200)
    })
    .await;

    h.command("cmp-pause", Command::Pause(v1::PauseCampaign {}))
        .await;
    h.wait_redis("paused", Duration::from_secs(30), async |c| {
        let s: Option<String> = c.hget("t:cmp:cmp-pause", "state").await.ok()?;
        (s.as_deref() == Some("paused")).then_some(())
    })
    .await;
    let jobs = TopicReader::new(&h.config.kafka.topics.jobs.name);
    // Let the step and the dispatch that were running finish, then nothing may move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let planned_at_pause = planned(&h, "cmp-pause").await;
    let mut seen = jobs.read_for::<v1::SendJob>(Duration::from_secs(2)).await;
    let jobs_at_pause = seen.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        planned(&h, "cmp-pause").await,
        planned_at_pause,
        "fan-out went on while paused"
    );
    let during_pause = jobs.read_for::<v1::SendJob>(Duration::from_secs(1)).await;
    assert!(
        during_pause.is_empty(),
        "{} jobs left while paused",
        during_pause.len()
    );
    assert!(
        planned_at_pause < N as i64,
        "paused too late to test anything"
    );
    assert!(jobs_at_pause < N);

    h.command("cmp-pause", Command::Resume(v1::ResumeCampaign {}))
        .await;
    h.wait_redis("completed", Duration::from_secs(120), async |c| {
        let s: Option<String> = c.hget("t:cmp:cmp-pause", "state").await.ok()?;
        (s.as_deref() == Some("completed")).then_some(())
    })
    .await;
    seen.extend(
        jobs.read_until::<v1::SendJob>(Duration::from_secs(60), |r| r.len() + jobs_at_pause >= N)
            .await,
    );
    let keys: HashSet<&str> = seen
        .iter()
        .map(|j| j.event.idempotency_key.as_str())
        .collect();
    assert_eq!(keys.len(), N);
    assert_eq!(seen.len(), N, "a job was published twice");

    stop.cancel();
    planner.await.expect("join").expect("planner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_jobs_durably_and_cancel_sweeps_them() {
    let h = Harness::new("quiet", 5, &[]).await;
    let paris = chrono_tz::Europe::Paris;
    let cayenne = chrono_tz::America::Cayenne;

    // A window of one minute, opening at the first whole minute at least 75 s from now in
    // Paris, on that day only: Paris recipients get their SMS then, Cayenne's (4 hours
    // behind) only when that wall-clock minute comes there.
    let opening_paris = {
        let t = Utc::now().with_timezone(&paris) + chrono::Duration::seconds(75);
        let minute = t
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .expect("minute");
        minute + chrono::Duration::minutes(1)
    };
    let minute_of_day = opening_paris.hour() * 60 + opening_paris.minute();
    let policy = v1::QuietHours {
        disabled: false,
        windows: vec![v1::SendingWindow {
            iso_weekday: opening_paris.weekday().number_from_monday(),
            start_minute: minute_of_day,
            end_minute: minute_of_day + 1,
        }],
        skip_french_public_holidays: false,
    };
    let opening_cayenne = cayenne
        .from_local_datetime(&opening_paris.naive_local())
        .single()
        .expect("cayenne has no DST");

    let events: Vec<_> = (0..100)
        .map(|i| {
            let mut c = contact(
                &format!("c-{i:03}"),
                "",
                &format!("+3361{i:07}"),
                &[v1::Channel::Sms],
                1,
            );
            c.time_zone = if i < 50 {
                "Europe/Paris"
            } else {
                "America/Cayenne"
            }
            .to_owned();
            entered("sms", c)
        })
        .collect();
    let (stop, planner) = spawn(&h);
    h.publish_segment_events(&events).await;
    h.wait_redis("segment loaded", Duration::from_secs(60), async |c| {
        let n: usize = c.zcard("t:s:sms").await.ok()?;
        (n == 100).then_some(())
    })
    .await;
    let mut blast = email_blast("sms", now_secs());
    blast.channel = v1::Channel::Sms.into();
    blast.quiet_hours = Some(policy);
    blast.expiry = Some(tocsin_contracts::Duration {
        seconds: 86_400,
        nanos: 0,
    });
    h.schedule("cmp-quiet", blast).await;
    h.wait_redis("fanned out", Duration::from_secs(60), async |c| {
        let done: Option<String> = c.hget("t:cmp:cmp-quiet", "fanned_out").await.ok()?;
        done.map(|_| ())
    })
    .await;

    // Everyone waits in the schedule, at their own local opening time.
    let mut conn = h.redis.clone();
    let paris_score: i64 = conn
        .zscore("t:sched", "cmp-quiet\u{1f}c-007")
        .await
        .expect("scheduled");
    let cayenne_score: i64 = conn
        .zscore("t:sched", "cmp-quiet\u{1f}c-077")
        .await
        .expect("scheduled");
    assert_eq!(paris_score, opening_paris.timestamp_millis());
    assert_eq!(cayenne_score, opening_cayenne.timestamp_millis());
    let jobs = TopicReader::new(&h.config.kafka.topics.jobs.name);
    assert!(
        jobs.read_for::<v1::SendJob>(Duration::from_secs(1))
            .await
            .is_empty(),
        "sent in quiet hours"
    );

    // A restart loses nothing: the schedule is in Redis.
    stop.cancel();
    planner.await.expect("join").expect("planner");
    let waiting: usize = conn.zcard("t:sched").await.expect("zcard");
    assert_eq!(waiting, 100);
    let (stop, planner) = spawn(&h);

    let sent = jobs
        .read_until::<v1::SendJob>(Duration::from_secs(180), |r| r.len() >= 50)
        .await;
    let ids: HashSet<String> = sent
        .iter()
        .filter_map(|j| j.event.contact.as_ref().map(|c| c.id.clone()))
        .collect();
    let paris_ids: HashSet<String> = (0..50).map(|i| format!("c-{i:03}")).collect();
    assert_eq!(ids, paris_ids, "only Paris recipients are in their window");
    assert!(
        Utc::now() >= opening_paris.with_timezone(&Utc),
        "sent before the window opened"
    );

    // Cancel: Cayenne's jobs leave the schedule now, each with Feedback(cancelled).
    h.command(
        "cmp-quiet",
        Command::Cancel(v1::CancelCampaign {
            reason: "test".into(),
        }),
    )
    .await;
    h.wait_redis("schedule emptied", Duration::from_secs(30), async |c| {
        let n: usize = c.zcard("t:sched").await.ok()?;
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(
        h.campaign_state("cmp-quiet").await.as_deref(),
        Some("cancelled")
    );
    let cancelled = TopicReader::new(&h.config.kafka.topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(30), |r| {
            r.iter()
                .filter(|f| f.event.kind == v1::FeedbackKind::Cancelled as i32)
                .count()
                >= 50
        })
        .await;
    let cancelled_ids: HashSet<String> = cancelled
        .iter()
        .filter(|f| f.event.kind == v1::FeedbackKind::Cancelled as i32)
        .map(|f| f.event.contact_id.clone())
        .collect();
    assert_eq!(
        cancelled_ids,
        (50..100).map(|i| format!("c-{i:03}")).collect()
    );
    let counters = h.counters("cmp-quiet").await;
    assert_eq!(counters.get("planned"), Some(&100));
    assert_eq!(counters.get("dispatched"), Some(&50));
    assert_eq!(counters.get("dropped"), Some(&50));
    assert!(
        jobs.read_for::<v1::SendJob>(Duration::from_secs(1))
            .await
            .is_empty(),
        "a job left after cancel"
    );

    stop.cancel();
    planner.await.expect("join").expect("planner");
}
