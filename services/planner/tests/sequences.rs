//! Sequences on a controlled clock: a three-step welcome series (right messages at the
//! right local times, quiet hours, a skipped step, exits), the re-entry policy, and a
//! planner killed again and again mid-sequence.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::Paris;
use chrono_tz::Pacific::Noumea;
use chrono_tz::Tz;
use redis::AsyncCommands;
use support::{Harness, contact, entered, erased, start_process};
use tocsin_bus::TraceContext;
use tocsin_contracts::v1;
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_planner::clock::Clock;

/// Redis databases of their own (the stack runs 32): these tests read global keys.
const WELCOME_DB: u8 = 16;
const REENTRY_DB: u8 = 17;
const CRASH_DB: u8 = 18;
const VERSIONS_DB: u8 = 22;
const EXITS_DB: u8 = 23;

fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    tz.from_local_datetime(
        &NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|x| x.and_hms_opt(h, mi, 0))
            .expect("valid"),
    )
    .single()
    .expect("unambiguous")
    .with_timezone(&Utc)
}

fn seconds(s: i64) -> Option<tocsin_contracts::Duration> {
    Some(tocsin_contracts::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn step(name: &str, wait_s: i64, channel: v1::Channel, template: &str) -> v1::SequenceStep {
    v1::SequenceStep {
        name: name.into(),
        wait: seconds(wait_s),
        channel: channel.into(),
        template_id: template.into(),
        template_version: 1,
        max_sms_parts: if channel == v1::Channel::Sms { 2 } else { 0 },
        ..Default::default()
    }
}

async fn define(h: &Harness, id: &str, version: u32, definition: v1::SequenceDefinition) {
    define_migrating(h, id, version, definition, false).await;
}

async fn define_migrating(
    h: &Harness,
    id: &str,
    version: u32,
    definition: v1::SequenceDefinition,
    migrate: bool,
) {
    let event_id = stack::unique("cmd");
    let command = v1::CampaignCommand {
        meta: Some(v1::EventMeta {
            event_id: event_id.clone(),
            occurred_at: None,
            source: "test".into(),
        }),
        campaign_id: String::new(),
        sequence_id: id.to_owned(),
        requested_by: "test".into(),
        command: Some(v1::campaign_command::Command::DefineSequence(
            v1::DefineSequence {
                definition: Some(definition),
                migrate_enrolments: migrate,
                version,
            },
        )),
    };
    h.producer
        .publish(
            &h.config.kafka.topics.campaigns.name,
            id,
            &event_id,
            &command,
            &TraceContext::new_root(),
        )
        .await
        .expect("publish command");
    h.wait_redis("sequence defined", Duration::from_secs(30), async |c| {
        let current: Option<u32> = c.hget(format!("t:seq:{id}"), "current").await.ok()?;
        (current == Some(version)).then_some(())
    })
    .await;
}

fn left(segment: &str, contact_id: &str) -> v1::SegmentEvent {
    v1::SegmentEvent {
        meta: Some(v1::EventMeta {
            event_id: stack::unique("ev"),
            occurred_at: None,
            source: "crm".into(),
        }),
        contact_id: contact_id.to_owned(),
        change: Some(v1::segment_event::Change::Left(v1::SegmentLeft {
            segment_id: segment.to_owned(),
            contact: None,
        })),
    }
}

fn volunteer(id: &str, zone: &str) -> v1::Contact {
    // A mobile number of one's own, derived from the id.
    let n = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let mut c = contact(
        id,
        &format!("{id}@exemple.fr"),
        &format!("+336{:08}", n % 100_000_000),
        &[v1::Channel::Email, v1::Channel::Sms],
        1_700_000_000,
    );
    c.time_zone = zone.to_owned();
    c
}

/// Every job read from the triggered lane so far.
struct Lane {
    reader: TopicReader,
    jobs: Vec<v1::SendJob>,
}

impl Lane {
    fn new(h: &Harness) -> Self {
        Lane {
            reader: TopicReader::new(&h.config.kafka.topics.jobs_triggered.name),
            jobs: Vec::new(),
        }
    }

    /// Reads until `n` jobs in all have arrived.
    async fn until(&mut self, n: usize) -> &[v1::SendJob] {
        let have = self.jobs.len();
        if have < n {
            let more = self
                .reader
                .read_until::<v1::SendJob>(Duration::from_secs(60), |r| have + r.len() >= n)
                .await;
            self.jobs.extend(more.into_iter().map(|r| r.event));
        }
        &self.jobs
    }

    /// The keys of the jobs read so far, with the time each may leave from.
    fn keys(&self) -> BTreeMap<String, i64> {
        self.jobs
            .iter()
            .map(|j| {
                let nb = j.not_before.as_ref().map_or(0, |t| t.seconds);
                (j.idempotency_key.clone(), nb)
            })
            .collect()
    }
}

fn start_in_process(
    h: &Harness,
    clock: &Clock,
) -> (
    tocsin_runtime::shutdown::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = tocsin_runtime::shutdown::CancellationToken::new();
    let wait = stop.clone();
    let handle = tokio::spawn(tocsin_planner::run_with_clock(
        h.config.clone(),
        clock.clone(),
        async move { wait.cancelled().await },
    ));
    (stop, handle)
}

async fn funnel(h: &Harness, id: &str) -> HashMap<String, i64> {
    let mut conn = h.redis.clone();
    conn.hgetall(format!("t:seq:{id}:n")).await.expect("funnel")
}

async fn due_ms(h: &Harness, id: &str, contact: &str) -> Option<i64> {
    let mut conn = h.redis.clone();
    conn.zscore("t:seqsched", format!("{id}\u{1f}{contact}"))
        .await
        .expect("zscore")
}

fn key(step: u32, contact: &str, channel: &str) -> String {
    format!("seq~welcome~e1~{step}:{contact}:{channel}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_series_on_a_controlled_clock() {
    let h = Harness::new(
        "welcome",
        WELCOME_DB,
        &[
            ("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "0"),
            ("TOCSIN__PLANNER__FREQUENCY_CAP", "0"),
        ],
    )
    .await;
    // Friday 4 December 2026, 21:00 in Paris (Saturday 07:00 in Nouméa).
    let t0 = local(Paris, 2026, 12, 4, 21, 0);
    let clock = Clock::manual(t0);
    let (stop, planner) = start_in_process(&h, &clock);

    let mut sms = step("SMS J+2", 2 * 86_400, v1::Channel::Sms, "welcome-sms");
    // Skipped for those who clicked the welcome e-mail.
    sms.skip_if.push(v1::StepCondition {
        condition: Some(v1::step_condition::Condition::ClickedStep(1)),
    });
    let mut invitation = step("invitation", 5 * 86_400, v1::Channel::Email, "invitation");
    invitation.wait_until_local = true;
    invitation.local_minute = 18 * 60;
    // Skipped for those already in the "came" segment.
    invitation.skip_if.push(v1::StepCondition {
        condition: Some(v1::step_condition::Condition::InSegment("came".into())),
    });
    define(
        &h,
        "welcome",
        1,
        v1::SequenceDefinition {
            name: "Welcome".into(),
            trigger_segment_id: "volunteers".into(),
            steps: vec![
                step("welcome e-mail", 0, v1::Channel::Email, "welcome"),
                sms,
                invitation,
            ],
            exit: Some(v1::SequenceExit {
                on_leaving_trigger: true,
                goal_segment_ids: vec!["members".into()],
                on_unsubscribe: true,
            }),
            time_zone: "Europe/Paris".into(),
            sender_profile: "parti-exemple".into(),
            ..Default::default()
        },
    )
    .await;

    // a: the whole series; b: clicks the welcome e-mail; c: comes to a meeting; d: leaves
    // the segment; e: lives in Nouméa; f: was already a volunteer (snapshot repeated).
    let people = [
        volunteer("a", "Europe/Paris"),
        volunteer("b", "Europe/Paris"),
        volunteer("c", "Europe/Paris"),
        volunteer("d", "Europe/Paris"),
        volunteer("e", "Pacific/Noumea"),
        volunteer("f", "Europe/Paris"),
    ];
    let mut events: Vec<v1::SegmentEvent> = people
        .iter()
        .map(|c| entered("volunteers", c.clone()))
        .collect();
    events.push(entered("volunteers", people[5].clone()));
    h.publish_segment_events(&events).await;

    let mut lane = Lane::new(&h);
    lane.until(6).await;
    let first: BTreeSet<String> = lane.keys().into_keys().collect();
    let expected: BTreeSet<String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|c| key(1, c, "email"))
        .collect();
    assert_eq!(first, expected, "one welcome e-mail each, at once");
    let job = &lane.jobs[0];
    assert_eq!(job.lane(), v1::Lane::Triggered);
    assert_eq!(job.campaign_id, "");
    assert_eq!(job.sequence_id, "welcome");
    assert_eq!(job.enrolment_id, "e1");
    assert_eq!(job.step, 1);
    assert_eq!(job.template_id, "welcome");
    assert_eq!(job.sender_profile, "parti-exemple");
    assert_eq!(
        job.not_before.as_ref().map(|t| t.seconds),
        Some(t0.timestamp())
    );

    // The SMS is due two days later, Sunday 21:00, when SMS may not be sent: Monday
    // 08:00 in each contact's own time zone.
    let monday_paris = local(Paris, 2026, 12, 7, 8, 0).timestamp_millis();
    let monday_noumea = local(Noumea, 2026, 12, 7, 8, 0).timestamp_millis();
    for c in ["a", "b", "c", "d", "f"] {
        let due = h
            .wait_redis("step 2 scheduled", Duration::from_secs(30), async |_| {
                due_ms(&h, "welcome", c)
                    .await
                    .filter(|&d| d > t0.timestamp_millis() + 60_000)
            })
            .await;
        assert_eq!(due, monday_paris, "{c}'s SMS");
    }
    assert_eq!(due_ms(&h, "welcome", "e").await, Some(monday_noumea));

    // b clicks the welcome e-mail (through the tracker's feedback), c comes to a meeting,
    // d leaves the volunteers.
    let click = v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id: stack::unique("click"),
            occurred_at: None,
            source: "tracker".into(),
        }),
        kind: v1::FeedbackKind::Clicked.into(),
        contact_id: "b".into(),
        idempotency_key: key(1, "b", "email"),
        channel: v1::Channel::Email.into(),
        sequence_id: "welcome".into(),
        enrolment_id: "e1".into(),
        step: 1,
        ..Default::default()
    };
    h.producer
        .publish(
            &h.config.kafka.topics.feedback.name,
            "b",
            "click-b",
            &click,
            &TraceContext::new_root(),
        )
        .await
        .expect("click");
    h.publish_segment_events(&[entered("came", people[2].clone()), left("volunteers", "d")])
        .await;
    h.wait_redis(
        "d exits, b's click is known",
        Duration::from_secs(30),
        async |c| {
            let record: String = c.hget("t:enr:{b}", "welcome").await.ok()?;
            let clicked = record.ends_with("|1");
            let f: HashMap<String, i64> = c.hgetall("t:seq:welcome:n").await.ok()?;
            (clicked && f.get("exited.left_trigger") == Some(&1)).then_some(())
        },
    )
    .await;
    assert_eq!(
        due_ms(&h, "welcome", "d").await,
        None,
        "d is out of the schedule"
    );

    // Saturday noon and Sunday evening: nothing is due yet.
    clock.set(local(Paris, 2026, 12, 6, 21, 30));
    assert_eq!(
        lane.reader
            .read_for::<v1::SendJob>(Duration::from_millis(500))
            .await
            .len(),
        0
    );

    // Monday 08:00 in Nouméa (Sunday 22:00 in Paris): e's SMS, and no one else's.
    clock.set(DateTime::from_timestamp_millis(monday_noumea).expect("valid"));
    lane.until(7).await;
    assert!(lane.keys().contains_key(&key(2, "e", "sms")));
    // Monday 08:00 in Paris: a, c and f; b is skipped (clicked), d has left.
    clock.set(DateTime::from_timestamp_millis(monday_paris).expect("valid"));
    lane.until(10).await;
    let sms: BTreeSet<String> = lane
        .keys()
        .into_iter()
        .filter(|(k, _)| k.contains("~2:"))
        .map(|(k, nb)| {
            assert!(
                nb * 1000 >= monday_noumea,
                "{k} not before Monday 08:00 local"
            );
            k
        })
        .collect();
    assert_eq!(
        sms,
        ["a", "c", "e", "f"]
            .iter()
            .map(|c| key(2, c, "sms"))
            .collect()
    );

    // The invitation: five days after the SMS, then 18:00 local: Saturday 12 December.
    // c came to the meeting: skipped.
    let saturday_paris = local(Paris, 2026, 12, 12, 18, 0);
    let saturday_noumea = local(Noumea, 2026, 12, 12, 18, 0);
    h.wait_redis(
        "b waits for the invitation",
        Duration::from_secs(30),
        async |_| {
            due_ms(&h, "welcome", "b")
                .await
                .filter(|&d| d == saturday_paris.timestamp_millis())
        },
    )
    .await;
    assert_eq!(
        due_ms(&h, "welcome", "e").await,
        Some(saturday_noumea.timestamp_millis())
    );
    // Each at its own 18:00 (jumping straight to Paris's would be ten hours past Nouméa's
    // due time: past the step's six-hour expiry).
    clock.set(saturday_noumea);
    lane.until(11).await;
    assert!(
        lane.keys().contains_key(&key(3, "e", "email")),
        "Nouméa's 18:00 comes first"
    );
    clock.set(saturday_paris);
    lane.until(14).await;
    let invitations: BTreeSet<String> = lane
        .keys()
        .into_keys()
        .filter(|k| k.contains("~3:"))
        .collect();
    assert_eq!(
        invitations,
        ["a", "b", "e", "f"]
            .iter()
            .map(|c| key(3, c, "email"))
            .collect()
    );

    // Everyone finished; the funnel adds up; nothing more arrives.
    h.wait_redis("all completed", Duration::from_secs(30), async |_| {
        (funnel(&h, "welcome").await.get("completed") == Some(&5)).then_some(())
    })
    .await;
    clock.advance(chrono::Duration::days(30));
    let late = lane
        .reader
        .read_for::<v1::SendJob>(Duration::from_secs(1))
        .await;
    assert!(late.is_empty(), "nothing after the last step: {late:?}");
    assert_eq!(lane.jobs.len(), 14, "no job twice");
    let f = funnel(&h, "welcome").await;
    let expect = [
        ("enrolled", 6),
        ("completed", 5),
        ("exited.left_trigger", 1),
        ("step.1.sent", 6),
        ("step.2.sent", 4),
        ("step.2.skipped", 1),
        ("step.3.sent", 4),
        ("step.3.skipped", 1),
        ("at.1", 0),
        ("at.2", 0),
        ("at.3", 0),
        ("reentry_refused", 0),
    ];
    for (field, n) in expect {
        assert_eq!(
            f.get(field).copied().unwrap_or(0),
            n,
            "funnel {field}: {f:?}"
        );
    }
    stop.cancel();
    planner.await.expect("join").expect("planner");
}

/// One e-mail at enrolment, an exit on leaving the segment.
fn one_step(name: &str, trigger: &str, after_days: u32) -> v1::SequenceDefinition {
    v1::SequenceDefinition {
        name: name.into(),
        trigger_segment_id: trigger.into(),
        steps: vec![step("hello", 0, v1::Channel::Email, "hello")],
        exit: Some(v1::SequenceExit {
            on_leaving_trigger: true,
            ..Default::default()
        }),
        re_entry: Some(v1::ReEntryPolicy { after_days }),
        sender_profile: "parti-exemple".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_follows_the_policy() {
    let h = Harness::new(
        "reentry",
        REENTRY_DB,
        &[
            ("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "0"),
            ("TOCSIN__PLANNER__FREQUENCY_CAP", "0"),
        ],
    )
    .await;
    let clock = Clock::manual(local(Paris, 2026, 12, 1, 10, 0));
    let (stop, planner) = start_in_process(&h, &clock);
    // Both triggered by the same segment: "once" never again, "monthly" after 30 days.
    define(&h, "once", 1, one_step("once", "donors", 0)).await;
    define(&h, "monthly", 1, one_step("monthly", "donors", 30)).await;
    let mut lane = Lane::new(&h);
    let who = volunteer("g", "Europe/Paris");

    let cycle = async |lane: &mut Lane, expect: usize| {
        h.publish_segment_events(&[entered("donors", who.clone())])
            .await;
        lane.until(expect).await;
        h.wait_redis("enrolments completed", Duration::from_secs(30), async |c| {
            let once: Option<String> = c.hget("t:enr:{g}", "once").await.ok()?;
            let monthly: Option<String> = c.hget("t:enr:{g}", "monthly").await.ok()?;
            let ended = |r: &Option<String>| r.as_deref().is_some_and(|r| r.contains("|c|"));
            (ended(&once) && ended(&monthly)).then_some(())
        })
        .await;
        h.publish_segment_events(&[left("donors", "g")]).await;
        h.wait_redis("left", Duration::from_secs(30), async |c| {
            let segments: Vec<String> = c.zrange("t:s:donors", 0, -1).await.ok()?;
            segments.is_empty().then_some(())
        })
        .await;
    };

    // First entry: both sequences.
    cycle(&mut lane, 2).await;
    // Back ten days later: neither (once is once; monthly needs 30 days).
    clock.advance(chrono::Duration::days(10));
    h.publish_segment_events(&[entered("donors", who.clone())])
        .await;
    h.wait_redis("both refused", Duration::from_secs(30), async |_| {
        let once = funnel(&h, "once").await.get("reentry_refused").copied();
        let monthly = funnel(&h, "monthly").await.get("reentry_refused").copied();
        (once == Some(1) && monthly == Some(1)).then_some(())
    })
    .await;
    h.publish_segment_events(&[left("donors", "g")]).await;
    // Back 31 days after the first enrolment ended: monthly again, as enrolment 2.
    clock.advance(chrono::Duration::days(21));
    cycle(&mut lane, 3).await;
    let keys: BTreeSet<String> = lane.keys().into_keys().collect();
    assert_eq!(
        keys,
        [
            "seq~once~e1~1:g:email",
            "seq~monthly~e1~1:g:email",
            "seq~monthly~e2~1:g:email"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    // A definition the API would have refused (a condition on a later step) goes to the
    // dead-letter topic with the field at fault, and defines nothing.
    let mut bad = one_step("broken", "donors", 0);
    bad.steps[0].skip_if.push(v1::StepCondition {
        condition: Some(v1::step_condition::Condition::ClickedStep(2)),
    });
    let event_id = stack::unique("cmd");
    let command = v1::CampaignCommand {
        meta: Some(v1::EventMeta {
            event_id: event_id.clone(),
            occurred_at: None,
            source: "test".into(),
        }),
        sequence_id: "broken".into(),
        requested_by: "test".into(),
        command: Some(v1::campaign_command::Command::DefineSequence(
            v1::DefineSequence {
                definition: Some(bad),
                migrate_enrolments: false,
                version: 1,
            },
        )),
        ..Default::default()
    };
    h.producer
        .publish(
            &h.config.kafka.topics.campaigns.name,
            "broken",
            &event_id,
            &command,
            &TraceContext::new_root(),
        )
        .await
        .expect("publish");
    let dead = TopicReader::new(&h.config.kafka.topics.dlq.name)
        .read_until::<v1::DeadLetter>(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert!(
        dead[0].event.reason.contains("steps[0].skipIf[0]"),
        "{:?}",
        dead[0].event.reason
    );
    let mut conn = h.redis.clone();
    let defined: bool = conn.exists("t:seq:broken").await.expect("exists");
    assert!(!defined);
    assert_eq!(funnel(&h, "once").await.get("enrolled"), Some(&1));
    assert_eq!(funnel(&h, "monthly").await.get("enrolled"), Some(&2));
    let extra = lane
        .reader
        .read_for::<v1::SendJob>(Duration::from_secs(1))
        .await;
    assert!(extra.is_empty(), "{extra:?}");
    stop.cancel();
    planner.await.expect("join").expect("planner");
}

/// Real time here (the planner is another process): steps a few seconds apart, the
/// planner killed with SIGKILL five times while they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_killed_mid_sequence_sends_every_step_once() {
    const N: usize = 300;
    let h = Harness::new(
        "seqcrash",
        CRASH_DB,
        &[
            ("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "100"),
            ("TOCSIN__PLANNER__FREQUENCY_CAP", "0"),
            ("TOCSIN__PLANNER__DISPATCH_CLAIM_MS", "1500"),
            ("TOCSIN__PLANNER__BATCH_SIZE", "20"),
        ],
    )
    .await;
    let mut planner = start_process(&h, "seq-1");
    let mut definition = one_step("drip", "drip", 0);
    definition.steps = vec![
        step("one", 0, v1::Channel::Email, "one"),
        step("two", 2, v1::Channel::Email, "two"),
        step("three", 3, v1::Channel::Email, "three"),
    ];
    define(&h, "drip", 1, definition).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<v1::SegmentEvent> = (0..N)
        .map(|i| entered("drip", volunteer(&format!("k{i:03}"), "Europe/Paris")))
        .collect();
    h.publish_segment_events(&events).await;

    let mut kills = 0;
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(900 + 300 * round)).await;
        planner.kill().expect("SIGKILL");
        planner.wait().expect("reaped");
        kills += 1;
        planner = start_process(&h, &format!("seq-{}", round + 2));
    }
    h.wait_redis(
        "every enrolment completed",
        Duration::from_secs(120),
        async |_| {
            let f = funnel(&h, "drip").await;
            (f.get("completed") == Some(&(N as i64))).then_some(())
        },
    )
    .await;
    let f = funnel(&h, "drip").await;
    assert_eq!(f.get("enrolled"), Some(&(N as i64)), "{f:?}");
    for step in 1..=3 {
        assert_eq!(
            f.get(&format!("step.{step}.sent")),
            Some(&(N as i64)),
            "{f:?}"
        );
        assert_eq!(
            f.get(&format!("at.{step}")).copied().unwrap_or(0),
            0,
            "{f:?}"
        );
    }

    let mut lane = Lane::new(&h);
    lane.until(3 * N).await;
    let extra = lane
        .reader
        .read_for::<v1::SendJob>(Duration::from_secs(2))
        .await;
    lane.jobs.extend(extra.into_iter().map(|r| r.event));
    let mut by_key: HashMap<String, Vec<&v1::SendJob>> = HashMap::new();
    for job in &lane.jobs {
        by_key
            .entry(job.idempotency_key.clone())
            .or_default()
            .push(job);
    }
    let expected: BTreeSet<String> = (0..N)
        .flat_map(|i| (1..=3).map(move |s| format!("seq~drip~e1~{s}:k{i:03}:email")))
        .collect();
    assert_eq!(
        by_key.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every step of every enrolment, none missing, none invented"
    );
    // A kill between publishing a step and recording it publishes that step again, with
    // the same key and event id: the sender's ledger sends it once.
    for (k, jobs) in &by_key {
        let ids: BTreeSet<String> = jobs
            .iter()
            .map(|j| {
                j.meta
                    .as_ref()
                    .map(|m| m.event_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(ids.len(), 1, "{k}: one event id however often published");
        assert!(jobs.len() <= 2, "{k} published {} times", jobs.len());
    }
    let republished = lane.jobs.len() - expected.len();
    println!("{kills} kills; {republished} step(s) published again (same key)");
    planner.kill().expect("stop");
    planner.wait().expect("reaped");
}

/// Two e-mails a day apart; the second's template names the version.
fn two_steps(second_template: &str) -> v1::SequenceDefinition {
    let mut d = one_step("news", "news", 0);
    d.steps
        .push(step("day two", 86_400, v1::Channel::Email, second_template));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_enrolments_keep_their_version_unless_the_edit_migrates_them() {
    let h = Harness::new(
        "versions",
        VERSIONS_DB,
        &[
            ("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "0"),
            ("TOCSIN__PLANNER__FREQUENCY_CAP", "0"),
        ],
    )
    .await;
    let t0 = local(Paris, 2026, 12, 1, 10, 0);
    let clock = Clock::manual(t0);
    let (stop, planner) = start_in_process(&h, &clock);
    let mut lane = Lane::new(&h);

    // x enrols on version 1; version 2 (not migrating) arrives; y enrols on it.
    define(&h, "news", 1, two_steps("v1-day-two")).await;
    h.publish_segment_events(&[entered("news", volunteer("x", "Europe/Paris"))])
        .await;
    lane.until(1).await;
    define(&h, "news", 2, two_steps("v2-day-two")).await;
    h.publish_segment_events(&[entered("news", volunteer("y", "Europe/Paris"))])
        .await;
    lane.until(2).await;
    clock.advance(chrono::Duration::days(1));
    lane.until(4).await;
    let template_of = |lane: &Lane, contact: &str, step: u32| {
        lane.jobs
            .iter()
            .find(|j| j.contact.as_ref().is_some_and(|c| c.id == contact) && j.step == step)
            .map(|j| j.template_id.clone())
    };
    assert_eq!(template_of(&lane, "x", 2).as_deref(), Some("v1-day-two"));
    assert_eq!(template_of(&lane, "y", 2).as_deref(), Some("v2-day-two"));

    // z enrols on version 2; version 3 migrates running enrolments: z's second step is
    // version 3's.
    h.publish_segment_events(&[entered("news", volunteer("z", "Europe/Paris"))])
        .await;
    lane.until(5).await;
    define_migrating(&h, "news", 3, two_steps("v3-day-two"), true).await;
    clock.advance(chrono::Duration::days(1));
    lane.until(6).await;
    assert_eq!(template_of(&lane, "z", 2).as_deref(), Some("v3-day-two"));
    let mut conn = h.redis.clone();
    let record: String = conn.hget("t:enr:{z}", "news").await.expect("record");
    assert!(
        record.starts_with("1|3|3|"),
        "finished on version 3: {record}"
    );
    let record: String = conn.hget("t:enr:{x}", "news").await.expect("record");
    assert!(
        record.starts_with("1|1|3|"),
        "x finished on version 1: {record}"
    );
    stop.cancel();
    planner.await.expect("join").expect("planner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_opt_outs_and_erasure_end_enrolments_at_once() {
    let h = Harness::new(
        "exits",
        EXITS_DB,
        &[
            ("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "0"),
            ("TOCSIN__PLANNER__FREQUENCY_CAP", "0"),
        ],
    )
    .await;
    let clock = Clock::manual(local(Paris, 2026, 12, 1, 10, 0));
    let (stop, planner) = start_in_process(&h, &clock);
    let mut definition = two_steps("second");
    definition.exit = Some(v1::SequenceExit {
        on_leaving_trigger: true,
        goal_segment_ids: vec!["members".into()],
        on_unsubscribe: true,
    });
    define(&h, "news", 1, definition).await;
    let mut lane = Lane::new(&h);
    let people: Vec<v1::SegmentEvent> = ["keeps", "joins", "stops", "erased"]
        .iter()
        .map(|c| entered("news", volunteer(c, "Europe/Paris")))
        .collect();
    h.publish_segment_events(&people).await;
    lane.until(4).await;

    // "joins" reaches the goal, "stops" unsubscribes (from any message), "erased" is erased.
    h.publish_segment_events(&[
        entered("members", volunteer("joins", "Europe/Paris")),
        erased("erased"),
    ])
    .await;
    let unsubscribe = v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id: stack::unique("unsub"),
            occurred_at: None,
            source: "tracker".into(),
        }),
        kind: v1::FeedbackKind::Unsubscribed.into(),
        contact_id: "stops".into(),
        campaign_id: "some-blast".into(),
        idempotency_key: "some-blast:stops:email".into(),
        channel: v1::Channel::Email.into(),
        ..Default::default()
    };
    h.producer
        .publish(
            &h.config.kafka.topics.feedback.name,
            "stops",
            "unsub-stops",
            &unsubscribe,
            &TraceContext::new_root(),
        )
        .await
        .expect("unsubscribe");
    h.wait_redis("three exits", Duration::from_secs(30), async |_| {
        let f = funnel(&h, "news").await;
        let exits = ["goal", "unsubscribed", "erased"]
            .iter()
            .all(|r| f.get(&format!("exited.{r}")) == Some(&1));
        exits.then_some(())
    })
    .await;
    let mut conn = h.redis.clone();
    let erased_records: bool = conn.exists("t:enr:{erased}").await.expect("exists");
    assert!(!erased_records, "an erased person's enrolments are deleted");
    for c in ["joins", "stops", "erased"] {
        assert_eq!(due_ms(&h, "news", c).await, None, "{c} left the schedule");
    }

    clock.advance(chrono::Duration::days(1));
    lane.until(5).await;
    let extra = lane
        .reader
        .read_for::<v1::SendJob>(Duration::from_secs(1))
        .await;
    assert!(extra.is_empty(), "{extra:?}");
    assert!(lane.keys().contains_key("seq~news~e1~2:keeps:email"));
    let f = funnel(&h, "news").await;
    assert_eq!(f.get("completed"), Some(&1), "{f:?}");
    assert_eq!(f.get("at.2").copied().unwrap_or(0), 0, "{f:?}");
    stop.cancel();
    planner.await.expect("join").expect("planner");
}
