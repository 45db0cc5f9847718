//! The sender service with HTTP providers (the stand-ins of `tocsin-standins`, speaking
//! Twilio's, Brevo's and SendGrid's documented APIs) on the real broker and Redis: SMS
//! fields and part counts, three sender processes sharing one provider budget, and faults.

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tocsin_contracts::v1;
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_renderer::compose::Message;
use tocsin_standins::{Faults, Provider as Api};

async fn topics(config: &tocsin_sender::Config) -> tocsin_bus::Topics {
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    topics
}

fn sms_of(m: &Message) -> &v1::RenderedSms {
    match m {
        Message::Sms(s) => s,
        Message::Email(_) => unreachable!("SMS only"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_reach_twilio_and_brevo_with_their_fields_auth_and_parts() {
    let standin = support::StandIn::start(tocsin_standins::Config::default()).await;
    let mut extra = support::http_provider("twilio_a", "twilio", "sms", standin.base(), None);
    extra.extend(support::http_provider(
        "brevo_eu",
        "brevo",
        "sms",
        standin.base(),
        None,
    ));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "sms", sender_profile = "*", providers = [{name = "twilio_a"}]},
            {channel = "sms", sender_profile = "europe", providers = [{name = "brevo_eu"}]}]"#
            .into(),
    ));
    let config = support::config(&support::env("sender-sms", &extra));
    let topics = topics(&config).await;
    let run = stack::unique("sms");
    let mut messages = support::rendered(&run, v1::Channel::Sms, 20, 3600);
    // Half go through the European profile's route; two are long enough for two parts.
    for (i, m) in messages.iter_mut().enumerate() {
        if let Message::Sms(s) = m {
            if i % 2 == 1
                && let Some(o) = s.origin.as_mut()
            {
                o.sender_profile = "europe".into();
            }
            if i < 2 {
                s.body = format!("{} {}", s.body, "x".repeat(160));
                s.parts = 2;
            }
        }
    }
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 20)
        .await;
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");

    let twilio = standin.messages(Api::Twilio).await;
    let brevo = standin.messages(Api::BrevoSms).await;
    assert_eq!((twilio.len(), brevo.len()), (10, 10));
    for (i, m) in messages.iter().enumerate() {
        let sms = sms_of(m);
        let key = &sms.origin.as_ref().expect("origin").idempotency_key;
        let (got, provider) = if i % 2 == 1 {
            (brevo.iter().find(|r| &r.idempotency_key == key), "brevo_eu")
        } else {
            (
                twilio.iter().find(|r| &r.idempotency_key == key),
                "twilio_a",
            )
        };
        let got = got.unwrap_or_else(|| panic!("{key} at {provider}"));
        assert_eq!(got.body, sms.body);
        assert_eq!(
            got.parts,
            Some(sms.parts),
            "parts as the provider counts them"
        );
        if provider == "twilio_a" {
            assert_eq!(got.request["To"], sms.to);
            assert_eq!(got.request["From"], sms.from);
            assert!(
                got.request["StatusCallback"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("http://127.0.0.1:9/webhooks/twilio/status?k=")),
                "{}",
                got.request
            );
        } else {
            assert_eq!(got.request["recipient"], sms.to.trim_start_matches('+'));
            assert_eq!(got.request["sender"], sms.from);
            assert_eq!(got.request["tag"], key.as_str());
        }
        let f = feedback
            .iter()
            .find(|f| &f.event.idempotency_key == key)
            .expect("feedback");
        assert_eq!(f.event.kind(), v1::FeedbackKind::Sent);
        assert_eq!(f.event.provider, provider);
        assert_eq!(f.event.provider_message_id, got.id);
    }
    let parts: u64 = messages.iter().map(|m| u64::from(sms_of(m).parts)).sum();
    let counted = standin.stats(Api::Twilio).await.parts + standin.stats(Api::BrevoSms).await.parts;
    assert_eq!(counted, parts);
}

fn sender_process(env: &[(String, String)], instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tocsin-sender"))
        .envs(env.iter().cloned())
        .env("TOCSIN__SENDER__INSTANCE", instance)
        .env("TOCSIN__LOG__FORMAT", "json")
        .env("TOCSIN__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sender process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sender_processes_share_a_100_per_second_budget() {
    const N: usize = 600;
    let mut standin_config = tocsin_standins::Config {
        record: true,
        ..Default::default()
    };
    // The stand-in refuses anything above 100 parts in a second, as Twilio would.
    standin_config.provider_faults.insert(
        Api::Twilio,
        Faults {
            rate_limit: Some(100.0),
            ..Default::default()
        },
    );
    let standin = support::StandIn::start(standin_config).await;
    let mut extra =
        support::http_provider("twilio_a", "twilio", "sms", standin.base(), Some(100.0));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "sms", providers = [{name = "twilio_a"}]}]"#.into(),
    ));
    let env = support::env("sender-budget", &extra);
    let config = support::config(&env);
    let topics = topics(&config).await;
    let run = stack::unique("budget");
    let messages = support::rendered(&run, v1::Channel::Sms, N, 3600);
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;

    let mut senders: Vec<Child> = (0..3)
        .map(|i| sender_process(&env, &format!("{run}-{i}")))
        .collect();
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(120), |r| {
            r.iter()
                .map(|f| &f.event.idempotency_key)
                .collect::<HashSet<_>>()
                .len()
                >= N
        })
        .await;
    for s in &mut senders {
        let _ = s.kill();
        let _ = s.wait();
    }
    let arrivals: Vec<(i64, u32)> = standin
        .messages(Api::Twilio)
        .await
        .iter()
        .map(|r| (r.at_ms, r.parts.unwrap_or(1)))
        .collect();
    assert_eq!(arrivals.len(), N, "every message, once");
    let busiest = support::max_in_window(&arrivals, 1000);
    let first = arrivals.iter().map(|a| a.0).min().unwrap_or_default();
    let last = arrivals.iter().map(|a| a.0).max().unwrap_or_default();
    let achieved = (N - 1) as f64 / ((last - first) as f64 / 1000.0);
    println!(
        "3 senders, limit 100/s: busiest second {busiest}, achieved {achieved:.1}/s over {:.2} s",
        (last - first) as f64 / 1000.0
    );
    assert!(busiest <= 100, "the stand-in saw {busiest} in one second");
    let stats = standin.stats(Api::Twilio).await;
    assert_eq!(stats.rejected.rate_limited, 0, "never refused for rate");
    assert_eq!(stats.duplicates, 0);
    assert!(
        feedback
            .iter()
            .all(|f| f.event.kind() == v1::FeedbackKind::Sent),
        "all sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_every_message_ends_sent_or_failed_once() {
    const N: usize = 400;
    let standin_config = tocsin_standins::Config {
        faults: Faults {
            error_rate: 0.20,
            throttle_rate: 0.10,
            retry_after_s: 1,
            timeout_rate: 0.01,
            hold_ms: 5_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let standin = support::StandIn::start(standin_config).await;
    let mut extra = support::http_provider("grid", "sendgrid", "email", standin.base(), None);
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "email", providers = [{name = "grid"}]}]"#.into(),
    ));
    extra.push(("TOCSIN__SENDER__BREAKER__OPEN_MS".into(), "300".into()));
    extra.push(("TOCSIN__SENDER__MAX_ATTEMPTS".into(), "30".into()));
    let config = support::config(&support::env("sender-faults", &extra));
    let topics = topics(&config).await;
    let run = stack::unique("faults");
    let messages = support::rendered(&run, v1::Channel::Email, N, 3600);
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let reader = TopicReader::new(&topics.feedback.name);
    let mut feedback = reader
        .read_until::<v1::Feedback>(Duration::from_secs(240), |r| r.len() >= N)
        .await;
    // Anything more (a second outcome) would arrive now.
    feedback.extend(
        reader
            .read_for::<v1::Feedback>(Duration::from_secs(2))
            .await,
    );
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");

    let by_key = support::by_key(&feedback);
    assert_eq!(by_key.len(), N, "every message has an outcome");
    let mut sent = 0;
    let mut retried = 0;
    for events in by_key.values() {
        assert_eq!(events.len(), 1, "one outcome each: {events:?}");
        let f = &events[0];
        match f.kind() {
            v1::FeedbackKind::Sent => sent += 1,
            v1::FeedbackKind::Failed => {}
            other => panic!("unexpected {other:?}: {f:?}"),
        }
        if f.attempt > 1 {
            retried += 1;
        }
    }
    let stats = standin.stats(Api::SendGrid).await;
    println!(
        "faults: {sent} sent of {N}, {retried} after retries; stand-in accepted {}, 5xx {}, 429 {}, timeouts {}",
        stats.accepted,
        stats.rejected.server_error,
        stats.rejected.throttled,
        stats.rejected.timeout
    );
    assert_eq!(stats.duplicates, 0, "none sent twice");
    assert_eq!(
        stats.accepted, sent as u64,
        "every accepted message reported sent"
    );
    assert!(retried > 0 && stats.rejected.server_error > 0 && stats.rejected.throttled > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_hands_its_traffic_over_and_gets_it_back_when_healthy() {
    let standin_config = tocsin_standins::Config {
        provider_faults: [(
            Api::SendGrid,
            Faults {
                error_rate: 1.0,
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let standin = support::StandIn::start(standin_config).await;
    let mut extra = support::http_provider("grid", "sendgrid", "email", standin.base(), None);
    extra.extend(support::http_provider(
        "brevo_mail",
        "brevo",
        "email",
        standin.base(),
        None,
    ));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "email", providers = [{name = "grid", priority = 1}, {name = "brevo_mail", priority = 2}]}]"#
            .into(),
    ));
    extra.push((
        "TOCSIN__SENDER__BREAKER__FAILURE_THRESHOLD".into(),
        "3".into(),
    ));
    extra.push(("TOCSIN__SENDER__BREAKER__OPEN_MS".into(), "1000".into()));
    let config = support::config(&support::env("sender-failover", &extra));
    let topics = topics(&config).await;
    let run = stack::unique("failover");
    let producer = stack::producer(&config.kafka);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let reader = TopicReader::new(&topics.feedback.name);

    // SendGrid fails every request: after three failures its circuit opens and Brevo,
    // the next priority, takes the traffic.
    let first = support::rendered(&format!("{run}-1"), v1::Channel::Email, 50, 3600);
    support::publish(&producer, &topics, &first).await;
    let feedback = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 50)
        .await;
    assert!(
        feedback
            .iter()
            .all(|f| f.event.kind() == v1::FeedbackKind::Sent)
    );
    assert!(feedback.iter().all(|f| f.event.provider == "brevo_mail"));
    assert_eq!(standin.stats(Api::SendGrid).await.accepted, 0);
    assert!(standin.stats(Api::SendGrid).await.rejected.server_error >= 3);

    // SendGrid recovers: a probe after `open_ms` closes its circuit and the traffic
    // returns to the first priority.
    reqwest::Client::new()
        .post(format!("{}/_standin/faults/sendgrid", standin.base()))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("faults")
        .error_for_status()
        .expect("faults accepted");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // One message is the probe (messages arriving while it is out go to Brevo)...
    let probe = support::rendered(&format!("{run}-probe"), v1::Channel::Email, 1, 3600);
    support::publish(&producer, &topics, &probe).await;
    let probed = reader
        .read_until::<v1::Feedback>(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(
        probed[0].event.provider, "grid",
        "the probe goes to the open provider"
    );
    // ...its success closes the circuit: the traffic is back on the first priority.
    let second = support::rendered(&format!("{run}-2"), v1::Channel::Email, 50, 3600);
    support::publish(&producer, &topics, &second).await;
    let more = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 50)
        .await;
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");
    assert!(
        more.iter()
            .all(|f| f.event.kind() == v1::FeedbackKind::Sent)
    );
    let back = more.iter().filter(|f| f.event.provider == "grid").count();
    assert_eq!(back, 50, "the traffic returned to SendGrid");
    assert_eq!(standin.stats(Api::SendGrid).await.accepted, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reply_or_an_invalid_number_ends_at_once_and_says_why() {
    let standin = support::StandIn::start(tocsin_standins::Config::default()).await;
    let mut extra = support::http_provider("twilio_a", "twilio", "sms", standin.base(), None);
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "sms", providers = [{name = "twilio_a"}]}]"#.into(),
    ));
    let config = support::config(&support::env("sender-permanent", &extra));
    let topics = topics(&config).await;
    let run = stack::unique("permanent");
    let mut messages = support::rendered(&run, v1::Channel::Sms, 2, 3600);
    // Twilio's documented test numbers: 21610 (replied STOP) and 21211 (invalid number).
    for (m, number) in messages.iter_mut().zip(["+15005550004", "+15005550001"]) {
        if let Message::Sms(s) = m {
            s.to = number.into();
        }
    }
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 3)
        .await;
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");
    let by_key = support::by_key(&feedback);
    let stop_key = &sms_of(&messages[0])
        .origin
        .as_ref()
        .expect("origin")
        .idempotency_key;
    let invalid_key = &sms_of(&messages[1])
        .origin
        .as_ref()
        .expect("origin")
        .idempotency_key;
    let kinds = |key: &str| -> Vec<(v1::FeedbackKind, v1::Reason, u32)> {
        by_key[key]
            .iter()
            .map(|f| (f.kind(), f.reason(), f.attempt))
            .collect()
    };
    assert_eq!(
        kinds(stop_key),
        [
            (v1::FeedbackKind::Failed, v1::Reason::RecipientOptedOut, 1),
            (
                v1::FeedbackKind::Unsubscribed,
                v1::Reason::RecipientOptedOut,
                0
            ),
        ],
        "no retry; the planner is told to suppress the person"
    );
    let unsubscribed = by_key[stop_key.as_str()]
        .iter()
        .find(|f| f.kind() == v1::FeedbackKind::Unsubscribed)
        .expect("unsubscribed");
    assert_eq!(unsubscribed.opt_out_scope(), v1::OptOutScope::Channel);
    assert_eq!(unsubscribed.channel(), v1::Channel::Sms);
    assert_eq!(
        kinds(invalid_key),
        [(v1::FeedbackKind::Bounced, v1::Reason::MailboxUnavailable, 1)]
    );
    assert_eq!(
        by_key[invalid_key.as_str()][0].bounce_class(),
        v1::BounceClass::Hard
    );
    assert!(by_key[invalid_key.as_str()][0].detail.contains("21211"));
}
