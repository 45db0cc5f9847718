//! Fan-out against the real stack: exactly one job per eligible member, every refusal
//! accounted for by reason.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::AsyncCommands;
use support::{Harness, contact, email_blast, entered, erased, now_secs};
use tocsin_contracts::v1;
use tocsin_integration_tests::stack::TopicReader;

const N: usize = 10_000;

/// Contact `i` of the mix, by `i % 10`:
/// 0 erased, then re-sent by the CRM (suppressed: erased); 1 no e-mail consent;
/// 2 invalid e-mail; 3 frequency cap reached; 5 shares its address with contact i-1
/// (already planned); 4, 6, 7, 8, 9 eligible.
fn mix(i: usize) -> v1::Contact {
    let id = format!("c-{i:05}");
    let email = match i % 10 {
        2 => "not-an-email".to_owned(),
        5 => format!("person-{:05}@exemple.fr", i - 1),
        _ => format!("person-{i:05}@exemple.fr"),
    };
    let consents: &[v1::Channel] = match i % 10 {
        1 => &[v1::Channel::Sms],
        _ => &[v1::Channel::Email, v1::Channel::Sms],
    };
    contact(
        &id,
        &email,
        &format!("+3361{i:07}"),
        consents,
        1_700_000_100,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_mix_gives_one_job_per_eligible_contact_and_exact_refusals() {
    let h = Harness::new("mix", 1, &[]).await;
    let (stop, planner) = spawn(&h);

    // Every contact enters twice (a duplicate delivery), then an older snapshot of each
    // arrives and must not replace the newer one.
    let mut events = Vec::new();
    for i in 0..N {
        events.push(entered("adherents", mix(i)));
        events.push(entered("adherents", mix(i)));
        let mut stale = mix(i);
        stale.email = format!("old-{i}@exemple.fr");
        stale.updated_at = support::ts(1_600_000_000);
        events.push(entered("adherents", stale));
    }
    // Erasure of every `i % 10 == 0`, then the CRM re-imports them.
    for i in (0..N).step_by(10) {
        events.push(erased(&format!("c-{i:05}")));
        events.push(entered("adherents", mix(i)));
    }
    h.publish_segment_events(&events).await;

    // Contacts at the cap: 3 messages planned in the last days by other campaigns.
    h.wait_redis("segment loaded", Duration::from_secs(120), async |c| {
        let size: usize = c.zcard("t:s:adherents").await.ok()?;
        let erased: usize = c.hlen("t:sup").await.ok()?;
        // An e-mail and a phone hash per erased person.
        (size == N && erased == 2 * N / 10).then_some(())
    })
    .await;
    let mut conn = h.redis.clone();
    let recent = chrono::Utc::now().timestamp_millis() - 3_600_000;
    for i in (3..N).step_by(10) {
        let key = format!("t:fq:{{c-{i:05}}}");
        for k in 0..3 {
            let _: () = conn
                .zadd(&key, format!("older-{k}"), recent)
                .await
                .expect("zadd");
        }
    }

    h.schedule("cmp-mix", email_blast("adherents", now_secs()))
        .await;
    h.wait_redis("campaign completed", Duration::from_secs(180), async |c| {
        let state: Option<String> = c.hget("t:cmp:cmp-mix", "state").await.ok()?;
        (state.as_deref() == Some("completed")).then_some(())
    })
    .await;

    let eligible: HashSet<String> = (0..N)
        .filter(|i| matches!(i % 10, 4 | 6 | 7 | 8 | 9))
        .map(|i| format!("cmp-mix:c-{i:05}:email"))
        .collect();
    let reader = TopicReader::new(&h.config.kafka.topics.jobs.name);
    let mut jobs = reader
        .read_until::<v1::SendJob>(Duration::from_secs(60), |r| r.len() >= eligible.len())
        .await;
    jobs.extend(reader.read_for::<v1::SendJob>(Duration::from_secs(2)).await);
    let keys: Vec<&str> = jobs
        .iter()
        .map(|j| j.event.idempotency_key.as_str())
        .collect();
    let distinct: HashSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(keys.len(), distinct.len(), "a job was published twice");
    assert_eq!(distinct, eligible);
    // Jobs carry the newest snapshot, never the stale one.
    assert!(jobs.iter().all(|j| {
        j.event
            .contact
            .as_ref()
            .is_some_and(|c| c.email.starts_with("person-"))
    }));
    assert!(
        jobs.iter()
            .all(|j| j.key.as_deref() == j.event.contact.as_ref().map(|c| c.id.as_bytes()))
    );

    let feedback = TopicReader::new(&h.config.kafka.topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 5 * N / 10)
        .await;
    let mut by_reason: HashMap<i32, HashSet<String>> = HashMap::new();
    for f in &feedback {
        assert_eq!(f.event.kind, v1::FeedbackKind::Suppressed as i32);
        by_reason
            .entry(f.event.reason)
            .or_default()
            .insert(f.event.contact_id.clone());
    }
    let expect = |reason: v1::Reason, rest: usize| {
        let ids: HashSet<String> = (0..N)
            .filter(|i| i % 10 == rest)
            .map(|i| format!("c-{i:05}"))
            .collect();
        assert_eq!(by_reason.get(&(reason as i32)), Some(&ids), "{reason:?}");
    };
    expect(v1::Reason::Erased, 0);
    expect(v1::Reason::NoConsent, 1);
    expect(v1::Reason::InvalidAddress, 2);
    expect(v1::Reason::FrequencyCap, 3);
    expect(v1::Reason::AlreadyPlanned, 5);

    let counters = h.counters("cmp-mix").await;
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    assert_eq!(c("planned"), 5000);
    assert_eq!(c("dispatched"), 5000);
    for reason in [
        "erased",
        "no_consent",
        "invalid_address",
        "frequency_cap",
        "already_planned",
    ] {
        assert_eq!(c(&format!("suppressed.{reason}")), 1000, "{reason}");
    }

    stop.cancel();
    planner.await.expect("join").expect("planner");
}

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
