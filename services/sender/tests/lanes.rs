//! The triggered lane through the sender on the real broker and Redis, with the Twilio and
//! Brevo stand-ins: sequence steps published on the triggered outbound topics are
//! consumed there and sent, their feedback naming the step; published behind a blast's
//! backlog on the same provider, they go out long before the backlog ends, and the blast
//! uses the rest of the provider's rate, no more.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use tocsin_contracts::v1;
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_planner::sequence::StepRef;
use tocsin_renderer::compose::Message;
use tocsin_standins::Provider as Api;

fn step(n: u32) -> StepRef {
    StepRef {
        sequence_id: "bienvenue".into(),
        enrolment: 1,
        step: n,
    }
}

/// Makes a rendered job a sequence step's: triggered lane, no campaign, the step's key.
fn as_step(job: &mut v1::SendJob) {
    let contact = job
        .contact
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let step = step(1);
    job.idempotency_key = step.idempotency_key(&contact, job.channel());
    job.campaign_id.clear();
    job.lane = v1::Lane::Triggered.into();
    job.sequence_id = step.sequence_id.clone();
    job.enrolment_id = step.enrolment_id();
    job.step = step.step;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_messages_are_sent_first_and_name_their_step() {
    const BLAST: usize = 300;
    let standin = support::StandIn::start(tocsin_standins::Config {
        record: true,
        ..Default::default()
    })
    .await;
    // 50 parts a second at Twilio: the blast is assured 80 % of it (the default share), and
    // may use all of it while no step is waiting.
    let mut extra =
        support::http_provider("twilio_lanes", "twilio", "sms", standin.base(), Some(50.0));
    extra.extend(support::http_provider(
        "brevo_mail",
        "brevo",
        "email",
        standin.base(),
        None,
    ));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "sms", providers = [{name = "twilio_lanes"}]},
            {channel = "email", providers = [{name = "brevo_mail"}]}]"#
            .into(),
    ));
    let config = support::config(&support::env("sender-lanes", &extra));
    assert_eq!(config.sender.throttle.triggered_share.get(), 0.2);
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = stack::producer(&config.kafka);
    let run = stack::unique("lanes");
    let blast = support::rendered(&format!("{run}-b"), v1::Channel::Sms, BLAST, 3600);
    let steps_sms = support::rendered_with(&format!("{run}-s"), v1::Channel::Sms, 5, 3600, as_step);
    let steps_email =
        support::rendered_with(&format!("{run}-e"), v1::Channel::Email, 3, 3600, as_step);
    support::publish(&producer, &topics, &blast).await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    // The blast is flowing: its backlog is in the sender's hands.
    for _ in 0..600 {
        if standin.stats(Api::Twilio).await.accepted >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        standin.stats(Api::Twilio).await.accepted >= 20,
        "the blast started"
    );
    support::publish(&producer, &topics, &steps_sms).await;
    support::publish(&producer, &topics, &steps_email).await;

    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(120), |r| {
            r.iter()
                .map(|f| &f.event.idempotency_key)
                .collect::<HashSet<_>>()
                .len()
                >= BLAST + 8
        })
        .await;
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");

    // Every message sent once.
    let feedback = support::by_key(&feedback);
    assert_eq!(feedback.len(), BLAST + 8);
    assert!(
        feedback
            .values()
            .all(|f| f.len() == 1 && f[0].kind() == v1::FeedbackKind::Sent),
        "each sent, once"
    );
    // The steps' feedback names the step and no campaign.
    for m in steps_sms.iter().chain(&steps_email) {
        let origin = match m {
            Message::Email(e) => e.origin.as_ref(),
            Message::Sms(s) => s.origin.as_ref(),
        }
        .expect("origin");
        let f = &feedback[&origin.idempotency_key][0];
        assert_eq!(
            (
                f.campaign_id.as_str(),
                f.sequence_id.as_str(),
                f.enrolment_id.as_str(),
                f.step,
                f.contact_id.as_str(),
            ),
            ("", "bienvenue", "e1", 1, origin.contact_id.as_str())
        );
    }
    let mails = standin.messages(Api::BrevoEmail).await;
    assert_eq!(mails.len(), 3, "the steps' e-mails reached Brevo");

    // At Twilio, the steps' SMS went out while the blast still had most of its way to go.
    let mut arrivals: Vec<(i64, bool)> = standin
        .messages(Api::Twilio)
        .await
        .iter()
        .map(|r| (r.at_ms, r.idempotency_key.starts_with("seq~")))
        .collect();
    arrivals.sort_unstable();
    assert_eq!(arrivals.len(), BLAST + 5);
    let last_step = arrivals
        .iter()
        .rposition(|(_, is_step)| *is_step)
        .expect("the steps' SMS");
    let blast_after = arrivals[last_step..].iter().filter(|(_, s)| !s).count();
    assert!(
        blast_after >= 100,
        "only {blast_after} of the blast's {BLAST} SMS were sent after the last step's"
    );
    // The whole keeps to the rate (50/s, with the 98 % headroom: 49/s), and the blast,
    // alone most of the time, uses nearly all of it, not just its part (39.2/s). Arrival
    // times at the stand-in (in this process, on a busy machine) bunch up by a few
    // messages; the exact budgets are `throttle.rs`'s tests.
    let blast_ms: Vec<(i64, u32)> = arrivals
        .iter()
        .filter(|(_, s)| !s)
        .map(|(at, _)| (*at, 1))
        .collect();
    let all_ms: Vec<(i64, u32)> = arrivals.iter().map(|(at, _)| (*at, 1)).collect();
    let blast_busiest = support::max_in_window(&blast_ms, 1000);
    let busiest = support::max_in_window(&all_ms, 1000);
    let (first, last) = (blast_ms[0].0, blast_ms[blast_ms.len() - 1].0);
    let blast_rate = (blast_ms.len() - 1) as f64 / ((last - first) as f64 / 1000.0);
    println!(
        "the blast at {blast_rate:.1}/s (busiest second {blast_busiest}), busiest second of all {busiest}"
    );
    assert!(
        (44.0..=49.5).contains(&blast_rate),
        "the blast went at {blast_rate:.1}/s"
    );
    assert!(busiest <= 50, "{busiest} in one second");
}
