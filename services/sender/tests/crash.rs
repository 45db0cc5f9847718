//! A sender process killed with SIGKILL in the middle of a run, and another started: every
//! message arrives (at the real SMTP server and at the Twilio stand-in), and none twice
//! except inside the window the ledger documents (a message at the provider whose `sent`
//! record the dead process had not written yet: at most `max_in_flight` per provider),
//! which the new process reports as "possibly sent twice".

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tocsin_contracts::v1;
use tocsin_integration_tests::mail::{self, ReceivedMail};
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_renderer::compose::Message;
use tocsin_standins::{Faults, Provider as Api};

fn sender_process(env: &[(String, String)], instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tocsin-sender"))
        .envs(env.iter().cloned())
        .env("TOCSIN__SENDER__INSTANCE", instance)
        .env("TOCSIN__LOG__FILTER", "info,librdkafka=warn")
        .stderr(Stdio::null())
        .stdout(
            std::fs::File::create(std::env::temp_dir().join(format!("{instance}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("sender process")
}

fn key_of(m: &Message) -> String {
    match m {
        Message::Email(e) => e.origin.as_ref(),
        Message::Sms(s) => s.origin.as_ref(),
    }
    .map(|o| o.idempotency_key.clone())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_loses_nothing_and_repeats_nothing_outside_the_window() {
    const EACH: usize = 300;
    let mut standin_config = tocsin_standins::Config::default();
    standin_config.provider_faults.insert(
        Api::Twilio,
        Faults {
            latency_ms: 20,
            jitter_ms: 20,
            ..Default::default()
        },
    );
    let standin = support::StandIn::start(standin_config).await;
    let mut extra = support::http_provider("twilio_a", "twilio", "sms", standin.base(), None);
    extra.extend(support::smtp_provider("smtp_a", None));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "sms", providers = [{name = "twilio_a"}]},
            {channel = "email", providers = [{name = "smtp_a"}]}]"#
            .into(),
    ));
    const IN_FLIGHT: usize = 8;
    extra.push((
        "TOCSIN__SENDER__PROVIDERS__TWILIO_A__MAX_IN_FLIGHT".into(),
        IN_FLIGHT.to_string(),
    ));
    extra.push((
        "TOCSIN__SENDER__PROVIDERS__SMTP_A__MAX_IN_FLIGHT".into(),
        IN_FLIGHT.to_string(),
    ));
    let env = support::env("sender-crash", &extra);
    let config = support::config(&env);
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let run = stack::unique("crash");
    let mut messages = support::rendered(&run, v1::Channel::Sms, EACH, 3600);
    messages.extend(support::rendered(&run, v1::Channel::Email, EACH, 3600));
    let keys: HashSet<String> = messages.iter().map(key_of).collect();
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;

    let reader = TopicReader::new(&topics.feedback.name);
    let mut first = sender_process(&env, &format!("{run}-a"));
    let before = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 2 * EACH / 3)
        .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let mut second = sender_process(&env, &format!("{run}-b"));
    let mut feedback = before;
    let mut done: HashSet<String> = feedback
        .iter()
        .map(|f| f.event.idempotency_key.clone())
        .collect();
    let after = reader
        .read_until::<v1::Feedback>(Duration::from_secs(150), |r| {
            done.extend(r.iter().map(|f| f.event.idempotency_key.clone()));
            done.len() >= keys.len()
        })
        .await;
    feedback.extend(after);
    feedback.extend(
        reader
            .read_for::<v1::Feedback>(Duration::from_secs(2))
            .await,
    );
    let _ = second.kill();
    let _ = second.wait();

    // Outcomes: one per message, all sent.
    let by_key = support::by_key(&feedback);
    assert_eq!(by_key.keys().cloned().collect::<HashSet<_>>(), keys);
    let mut possibly_twice = HashSet::new();
    for (key, events) in &by_key {
        let sent: Vec<_> = events
            .iter()
            .filter(|f| f.kind() == v1::FeedbackKind::Sent)
            .collect();
        assert!(!sent.is_empty(), "{key}: {events:?}");
        if sent
            .iter()
            .any(|f| f.detail.contains("possibly sent twice"))
        {
            possibly_twice.insert(key.clone());
        }
    }

    // Arrivals: every message, and a second copy only inside the window.
    let mut arrived: HashMap<String, usize> = HashMap::new();
    for r in standin.messages(Api::Twilio).await {
        *arrived.entry(r.idempotency_key).or_default() += 1;
    }
    let message_ids: HashMap<String, String> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Email(e) => Some((e.message_id.clone(), key_of(m))),
            Message::Sms(_) => None,
        })
        .collect();
    let ours = |m: &ReceivedMail| m.header("To").is_some_and(|to| to.contains(&run));
    mail::wait_for(ours, EACH, Duration::from_secs(30)).await;
    // A second copy would be in by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in mail::received(ours) {
        let id = m.header("Message-ID").unwrap_or_default();
        let key = message_ids
            .get(id)
            .unwrap_or_else(|| panic!("unknown {id}"));
        *arrived.entry(key.clone()).or_default() += 1;
    }
    let missing: Vec<_> = keys.iter().filter(|k| !arrived.contains_key(*k)).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    let twice: Vec<_> = arrived
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    println!(
        "killed after {} outcomes: {} messages arrived twice, {} reported as possibly sent twice",
        2 * EACH / 3,
        twice.len(),
        possibly_twice.len()
    );
    assert!(
        twice.len() <= 2 * IN_FLIGHT,
        "at most max_in_flight per provider can be caught at the provider by a crash"
    );
    for key in &twice {
        assert!(
            possibly_twice.contains(*key),
            "{key} arrived twice but was not in the documented window"
        );
    }
}
