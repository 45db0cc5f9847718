//! The planner learning from `tocsin.feedback`: exact campaign counters when events arrive
//! twice, and suppression from unsubscribes, complaints and bounces that the next blast
//! honours.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use support::{Harness, contact, email_blast, entered, now_secs};
use tocsin_bus::TraceContext;
use tocsin_contracts::v1;
use tocsin_integration_tests::stack::TopicReader;

const REDIS_DB: u8 = 3;

fn spawn(
    h: &Harness,
) -> (
    tocsin_runtime::shutdown::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = tocsin_runtime::shutdown::CancellationToken::new();
    let wait = stop.clone();
    let handle = tokio::spawn(tocsin_planner::run(h.config.clone(), async move {
        wait.cancelled().await
    }));
    (stop, handle)
}

fn event(
    id: &str,
    kind: v1::FeedbackKind,
    campaign: &str,
    contact: &str,
    channel: v1::Channel,
) -> v1::Feedback {
    v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id: id.to_owned(),
            occurred_at: tocsin_contracts::timestamp_now().into(),
            source: "tracker".into(),
        }),
        kind: kind.into(),
        contact_id: contact.to_owned(),
        campaign_id: campaign.to_owned(),
        idempotency_key: format!("{campaign}:{contact}:email"),
        channel: channel.into(),
        ..Default::default()
    }
}

async fn publish(h: &Harness, events: &[v1::Feedback]) {
    let trace = TraceContext::new_root();
    for e in events {
        let id = e
            .meta
            .as_ref()
            .map(|m| m.event_id.clone())
            .unwrap_or_default();
        h.producer
            .publish(
                &h.config.kafka.topics.feedback.name,
                &e.contact_id,
                &id,
                e,
                &trace,
            )
            .await
            .expect("publish feedback");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_stay_exact_when_events_arrive_twice_and_suppression_follows() {
    let port = tocsin_integration_tests::stack::free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = Harness::new("feedback", REDIS_DB, &[("TOCSIN__HTTP__LISTEN", &listen)]).await;
    let (stop, planner) = spawn(&h);
    let both = [v1::Channel::Email, v1::Channel::Sms];
    let people: Vec<v1::Contact> = (0..6)
        .map(|i| {
            contact(
                &format!("c-{i}"),
                &format!("person-{i}@exemple.fr"),
                &format!("+3361000000{i}"),
                &both,
                1_700_000_000,
            )
        })
        .collect();
    h.publish_segment_events(
        &people
            .iter()
            .map(|c| entered("adherents", c.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    h.wait_redis("six members", Duration::from_secs(30), async |conn| {
        let n: usize = conn.zcard("t:s:adherents").await.ok()?;
        (n == 6).then_some(())
    })
    .await;

    use v1::FeedbackKind as K;
    let e = v1::Channel::Email;
    let mut events = Vec::new();
    for c in ["c-0", "c-1", "c-2", "c-3", "c-4", "c-5"] {
        events.push(event(&format!("sent-{c}"), K::Sent, "cmp-a", c, e));
    }
    for c in ["c-0", "c-1", "c-2", "c-3"] {
        events.push(event(
            &format!("delivered-{c}"),
            K::Delivered,
            "cmp-a",
            c,
            e,
        ));
    }
    // c-0 opens three times and clicks twice; a link scanner opens c-1's message.
    for n in 0..3 {
        events.push(event(
            &format!("open-c-0-{n}"),
            K::Opened,
            "cmp-a",
            "c-0",
            e,
        ));
    }
    for n in 0..2 {
        let mut click = event(&format!("click-c-0-{n}"), K::Clicked, "cmp-a", "c-0", e);
        click.url = "https://exemple.fr/agenda".into();
        events.push(click);
    }
    let mut scanner = event("open-c-1", K::Opened, "cmp-a", "c-1", e);
    scanner.machine = true;
    events.push(scanner);
    // c-1 unsubscribes from e-mail, c-2 complains, c-3 bounces hard; c-4 bounces softly
    // in three campaigns; c-5 sends STOP then START by SMS.
    events.push(event("unsub-c-1", K::Unsubscribed, "cmp-a", "c-1", e));
    events.push(event("spam-c-2", K::Complained, "cmp-a", "c-2", e));
    let mut hard = event("bounce-c-3", K::Bounced, "cmp-a", "c-3", e);
    hard.bounce_class = v1::BounceClass::Hard.into();
    events.push(hard);
    for campaign in ["cmp-a", "cmp-b", "cmp-c"] {
        let mut soft = event(&format!("soft-{campaign}"), K::Bounced, campaign, "c-4", e);
        soft.bounce_class = v1::BounceClass::Soft.into();
        events.push(soft);
    }
    let mut stop_sms = event("stop-c-5", K::Unsubscribed, "", "c-5", v1::Channel::Sms);
    stop_sms.opt_out_scope = v1::OptOutScope::Channel.into();
    events.push(stop_sms);
    let start_sms = event("start-c-5", K::Resubscribed, "", "c-5", v1::Channel::Sms);
    // An inbound STOP from a number the tracker cannot name: suppressed by address.
    let mut stranger = event("stop-stranger", K::Unsubscribed, "", "", v1::Channel::Sms);
    stranger.address = "+33699999999".into();
    events.push(stranger);
    // Everything twice, as after a redelivery; START after STOP.
    publish(&h, &events).await;
    publish(&h, &events).await;
    publish(&h, &[start_sms]).await;

    let counters = h
        .wait_redis("counters", Duration::from_secs(60), async |conn| {
            let c: std::collections::HashMap<String, i64> =
                conn.hgetall("t:cmp:cmp-a:n").await.ok()?;
            (c.get("fb.bounced") == Some(&1) && c.get("fb.complained") == Some(&1)).then_some(c)
        })
        .await;
    // Give the duplicates time to be (not) counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters = {
        let mut c = h.counters("cmp-a").await;
        c.retain(|k, _| k.starts_with("fb."));
        assert!(counters.len() <= c.len());
        c
    };
    let expect = |k: &str| counters.get(&format!("fb.{k}")).copied().unwrap_or(0);
    assert_eq!(expect("sent"), 6);
    assert_eq!(expect("delivered"), 4);
    assert_eq!(expect("unique_opens"), 1, "three opens by one person");
    assert_eq!(expect("unique_clicks"), 1);
    assert_eq!(expect("machine_opens"), 1);
    assert_eq!(expect("unsubscribed"), 1);
    assert_eq!(expect("complained"), 1);
    assert_eq!(expect("bounced"), 1);
    assert_eq!(expect("soft_bounced"), 1);

    // The same, by channel and kind, for the deliverability dashboards: counted once like
    // the campaign counters; c-5's STOP and START and the stranger's STOP, which belong to
    // no campaign, once per consumption (the STOPs arrived twice).
    let page = support::scrape(port).await;
    let events = |channel: &str, kind: &str, class: &str| {
        support::sample(
            &page,
            "tocsin_planner_feedback_events_total",
            &[
                ("channel", channel),
                ("kind", kind),
                ("bounce_class", class),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(events("email", "sent", ""), 6.0);
    assert_eq!(events("email", "delivered", ""), 4.0);
    assert_eq!(
        events("email", "opened", ""),
        2.0,
        "c-0's first open, the scanner's"
    );
    assert_eq!(events("email", "clicked", ""), 1.0);
    assert_eq!(events("email", "unsubscribed", ""), 1.0);
    assert_eq!(events("email", "complained", ""), 1.0);
    assert_eq!(events("email", "bounced", "hard"), 1.0);
    assert_eq!(events("email", "bounced", "soft"), 3.0, "one per campaign");
    assert_eq!(events("sms", "unsubscribed", ""), 4.0);
    assert_eq!(events("sms", "resubscribed", ""), 1.0);

    // The suppression list, by reason.
    let mut conn = h.redis.clone();
    let reasons: std::collections::HashMap<String, String> =
        conn.hgetall("t:sup").await.expect("suppression");
    let mut values: Vec<&str> = reasons.values().map(String::as_str).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        [
            "complained",
            "hard_bounced",
            "soft_bounced",
            "unsubscribed",
            "unsubscribed"
        ],
        "c-5's SMS STOP was taken back by START; the stranger's number stays"
    );

    // The next blast to the segment skips them, each with its reason.
    let start = now_secs();
    h.schedule("cmp-next", email_blast("adherents", start))
        .await;
    let feedback = TopicReader::new(&h.config.kafka.topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| {
            r.iter()
                .filter(|f| {
                    f.event.campaign_id == "cmp-next"
                        && f.event.kind() == v1::FeedbackKind::Suppressed
                })
                .count()
                >= 4
        })
        .await;
    let mut suppressed: Vec<(String, v1::Reason)> = feedback
        .iter()
        .filter(|f| f.event.campaign_id == "cmp-next")
        .filter(|f| f.event.kind() == v1::FeedbackKind::Suppressed)
        .map(|f| (f.event.contact_id.clone(), f.event.reason()))
        .collect();
    suppressed.sort();
    suppressed.dedup();
    assert_eq!(
        suppressed,
        [
            ("c-1".to_owned(), v1::Reason::Unsubscribed),
            ("c-2".to_owned(), v1::Reason::Complained),
            ("c-3".to_owned(), v1::Reason::HardBounced),
            ("c-4".to_owned(), v1::Reason::RepeatedSoftBounces),
        ]
    );
    let planned = h
        .wait_redis("planned", Duration::from_secs(30), async |conn| {
            let n: Option<i64> = conn.hget("t:cmp:cmp-next:n", "planned").await.ok()?;
            n
        })
        .await;
    assert_eq!(planned, 2, "c-0 and c-5 only");
    stop.cancel();
    planner
        .await
        .expect("task")
        .expect("planner stopped cleanly");
}
