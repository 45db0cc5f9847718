//! A contact unsubscribes from blast A with the one-click POST a mail client sends, and
//! blast B to the same segment skips them: the tracker and the planner on one bus.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tocsin_bus::TraceContext;
use tocsin_contracts::{Timestamp, v1};
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_renderer::compliance;
use tocsin_renderer::tokens::Signer;
use tocsin_runtime::ConfigLoader;

const REDIS_DB: u8 = 15;

fn contact(id: &str) -> v1::Contact {
    v1::Contact {
        id: id.to_owned(),
        email: format!("{id}@exemple.fr"),
        first_name: "Camille".into(),
        locale: "fr".into(),
        time_zone: "Europe/Paris".into(),
        consents: vec![v1::Consent {
            channel: v1::Channel::Email.into(),
            status: v1::ConsentStatus::Granted.into(),
            source: "petition".into(),
            recorded_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }],
        updated_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn blast(segment: &str) -> v1::ScheduleBlast {
    v1::ScheduleBlast {
        name: "B".into(),
        segment_id: segment.to_owned(),
        channel: v1::Channel::Email.into(),
        template_id: "newsletter".into(),
        template_version: 1,
        start_at: Some(tocsin_contracts::timestamp_now()),
        time_zone: "Europe/Paris".into(),
        quiet_hours: Some(v1::QuietHours {
            disabled: true,
            ..Default::default()
        }),
        sender_profile: "default".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_from_blast_a_is_honoured_by_blast_b() {
    let port = stack::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = stack::service_env("tracker-e2e", 1, REDIS_DB);
    env.push(("TOCSIN__PLANNER__GROUP_ID".into(), stack::unique("planner")));
    env.push(("TOCSIN__PLANNER__TICK_MS".into(), "50".into()));
    let planner_config: tocsin_planner::Config =
        ConfigLoader::defaults_only(Some(tocsin_planner::config::DEFAULTS))
            .env(env.iter().cloned())
            .load()
            .expect("planner configuration");
    let mut tracker_env = env.clone();
    tracker_env.retain(|(k, _)| !k.starts_with("TOCSIN__PLANNER__"));
    tracker_env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
    tracker_env.push(("TOCSIN__TRACKER__PUBLIC_BASE_URL".into(), base.clone()));
    let tracker_config: tocsin_tracker::Config =
        ConfigLoader::defaults_only(Some(tocsin_tracker::config::DEFAULTS))
            .env(tracker_env)
            .load()
            .expect("tracker configuration");
    let topics = planner_config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&planner_config.kafka, &topics.all())
        .await
        .expect("topics");
    let stop = tocsin_runtime::shutdown::CancellationToken::new();
    let planner = tokio::spawn(tocsin_planner::run(planner_config.clone(), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    let tracker = tokio::spawn(tocsin_tracker::run(tracker_config, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    // Three people in a segment.
    let run = stack::unique("e2e");
    let segment = format!("seg-{run}");
    let ids: Vec<String> = (0..3).map(|i| format!("{run}-c{i}")).collect();
    let producer = stack::producer(&planner_config.kafka);
    let trace = TraceContext::new_root();
    for id in &ids {
        let event = v1::SegmentEvent {
            meta: Some(v1::EventMeta {
                event_id: stack::unique("ev"),
                occurred_at: None,
                source: "crm".into(),
            }),
            contact_id: id.clone(),
            change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
                segment_id: segment.clone(),
                contact: Some(contact(id)),
            })),
        };
        let event_id = event
            .meta
            .as_ref()
            .map(|m| m.event_id.clone())
            .unwrap_or_default();
        producer
            .publish(&topics.segments.name, id, &event_id, &event, &trace)
            .await
            .expect("segment event");
    }
    let redis_url = planner_config.redis.url.clone();
    let mut conn = redis::Client::open(redis_url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members: usize = conn.zcard(format!("t:s:{segment}")).await.expect("zcard");
        if members == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "segment not ingested");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The first person clicks "unsubscribe" in their mail client on a message of blast A:
    // the one-click POST of RFC 8058, to the link the renderer wrote.
    let renderer: tocsin_renderer::Config =
        ConfigLoader::defaults_only(Some(tocsin_renderer::config::DEFAULTS))
            .load()
            .expect("renderer configuration");
    let mut profile = renderer.renderer.sender_profiles["default"].clone();
    profile.tracker_base_url = base.clone();
    let signer = Signer::new(renderer.renderer.token_key.clone());
    let campaign_a = format!("cmp-a-{run}");
    let url = compliance::unsubscribe_url(&profile, &signer, &campaign_a, &ids[0]).expect("url");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(compliance::ONE_CLICK)
            .send()
            .await
        {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("tracker unreachable: {e}"),
        }
    };
    assert_eq!(answer.status(), 200);

    // Once the planner has learnt it, blast B to the same segment skips them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reasons: Vec<String> = conn.hvals("t:sup").await.expect("suppression");
        if reasons.iter().any(|r| r == "unsubscribed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unsubscribe never reached the planner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let campaign_b = format!("cmp-b-{run}");
    let command = v1::CampaignCommand {
        meta: Some(v1::EventMeta {
            event_id: stack::unique("cmd"),
            occurred_at: None,
            source: "api".into(),
        }),
        campaign_id: campaign_b.clone(),
        sequence_id: String::new(),
        requested_by: "test".into(),
        command: Some(v1::campaign_command::Command::Schedule(blast(&segment))),
    };
    let command_id = command
        .meta
        .as_ref()
        .map(|m| m.event_id.clone())
        .unwrap_or_default();
    producer
        .publish(
            &topics.campaigns.name,
            &campaign_b,
            &command_id,
            &command,
            &trace,
        )
        .await
        .expect("schedule B");
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| {
            r.iter().any(|f| {
                f.event.campaign_id == campaign_b && f.event.kind() == v1::FeedbackKind::Suppressed
            })
        })
        .await;
    stop.cancel();
    let _ = planner.await;
    let _ = tracker.await;

    let unsubscribed: Vec<&v1::Feedback> = feedback
        .iter()
        .map(|r| &r.event)
        .filter(|f| f.kind() == v1::FeedbackKind::Unsubscribed)
        .collect();
    assert_eq!(unsubscribed.len(), 1);
    assert_eq!(
        (
            unsubscribed[0].contact_id.as_str(),
            unsubscribed[0].campaign_id.as_str()
        ),
        (ids[0].as_str(), campaign_a.as_str())
    );
    let suppressed: Vec<(String, v1::Reason)> = feedback
        .iter()
        .map(|r| &r.event)
        .filter(|f| f.campaign_id == campaign_b && f.kind() == v1::FeedbackKind::Suppressed)
        .map(|f| (f.contact_id.clone(), f.reason()))
        .collect();
    assert_eq!(suppressed, [(ids[0].clone(), v1::Reason::Unsubscribed)]);
}
