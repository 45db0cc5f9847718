//! What goes wrong: poison messages, a consumer killed with SIGKILL, a graceful stop.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tocsin_bus::TraceContext;
use tocsin_bus::producer::Outbound;
use tocsin_contracts::codec::{self, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF};
use tocsin_contracts::v1;
use tocsin_integration_tests::relay;
use tocsin_integration_tests::stack::{self, TestBus, TopicReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_partition_moves_on() {
    let bus = TestBus::new("poison", 1).await;
    let (topics, producer) = (bus.topics().clone(), bus.producer.clone());
    let trace = TraceContext::new_root();
    let send = |payload: Vec<u8>, content_type: &'static str, event_id: &'static str| {
        let producer = producer.clone();
        let topic = topics.segments.name.clone();
        async move {
            producer
                .send(Outbound {
                    topic: &topic,
                    key: b"c-1",
                    payload: &payload,
                    content_type,
                    event_id,
                    trace: &trace,
                })
                .await
                .expect("produce")
        }
    };
    // On one partition, in this order: good, garbage, wrong-shaped JSON, unknown content
    // type, good.
    let good_1 = codec::to_protobuf(&stack::segment_event("good-1", "c-1"));
    let good_2 = codec::to_json(&stack::segment_event("good-2", "c-1")).expect("json");
    let garbage = vec![0xff, 0x00, 0xde, 0xad, 0xbe, 0xef];
    let wrong_shape = br#"{"meta":{"eventId":"x"},"contactId":42}"#.to_vec();
    send(good_1, CONTENT_TYPE_PROTOBUF, "good-1").await;
    let garbage_offset = send(garbage.clone(), CONTENT_TYPE_PROTOBUF, "bad-1")
        .await
        .offset;
    let shape_offset = send(wrong_shape.clone(), CONTENT_TYPE_JSON, "bad-2")
        .await
        .offset;
    send(b"a;b".to_vec(), "text/csv", "bad-3").await;
    send(good_2, CONTENT_TYPE_JSON, "good-2").await;

    let (stop, handle) = relay::spawn(bus.config.clone());
    let outputs = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 2)
        .await;
    assert_eq!(stack::event_ids(&outputs), ["good-1", "good-2"]);

    let letters = TopicReader::new(&topics.dlq.name)
        .read_until::<v1::DeadLetter>(Duration::from_secs(30), |r| r.len() >= 3)
        .await;
    stop.cancel();
    handle.await.expect("join").expect("relay");

    let by_offset: HashMap<i64, &v1::DeadLetter> =
        letters.iter().map(|r| (r.event.offset, &r.event)).collect();
    let garbage_letter = by_offset[&garbage_offset];
    assert_eq!(garbage_letter.topic, topics.segments.name);
    assert_eq!(garbage_letter.partition, 0);
    assert_eq!(garbage_letter.payload, garbage, "original bytes kept");
    assert_eq!(garbage_letter.key, b"c-1");
    assert!(
        garbage_letter
            .reason
            .starts_with("payload is not valid protobuf for tocsin.v1.SegmentEvent"),
        "{}",
        garbage_letter.reason
    );
    assert_eq!(garbage_letter.consumer_group, bus.config.relay.group_id);
    assert!(
        garbage_letter
            .headers
            .iter()
            .any(|h| h.name == "event-id" && h.value == b"bad-1")
    );

    let shape_letter = by_offset[&shape_offset];
    assert_eq!(shape_letter.payload, wrong_shape);
    assert!(
        shape_letter
            .reason
            .contains("invalid type: integer `42`, expected a string"),
        "{}",
        shape_letter.reason
    );
    assert!(letters.iter().any(|r| {
        r.event
            .reason
            .contains("unsupported content-type \"text/csv\"")
    }));
    // The dead letters keep the original key, so they sort with the contact.
    assert!(
        letters
            .iter()
            .all(|r| r.key.as_deref() == Some(&b"c-1"[..]))
    );
}

/// The relay binary as a process, configured the way a deployment configures a service.
fn start_relay(env: &[(String, String)], instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tocsin-relay"))
        .envs(env.iter().cloned())
        .env("TOCSIN__RELAY__INSTANCE", instance)
        // Commit rarely: a kill then leaves handled messages uncommitted, which is the
        // window at-least-once must cover.
        .env("TOCSIN__KAFKA__COMMIT_INTERVAL_MS", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tocsin-relay")
}

fn count_by_event(records: &[stack::Record<v1::Feedback>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in stack::event_ids(records) {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_gets_unstored_messages_again_and_skips_nothing() {
    let bus = TestBus::new("sigkill", 3).await;
    let (env, topics, producer) = (&bus.env, bus.topics(), &bus.producer);
    let reader = TopicReader::new(&topics.feedback.name);

    // First life: handles 300 messages, then SIGKILL before any offset is committed.
    stack::publish_events(producer, &topics.segments.name, 0, 300, 50).await;
    let mut first = start_relay(env, "first");
    let mut seen = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 300)
        .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    // Second life: the same group sees the 300 again (handled, not committed), then 200 new.
    stack::publish_events(producer, &topics.segments.name, 300, 200, 50).await;
    let mut second = start_relay(env, "second");
    seen.extend(
        reader
            .read_until::<v1::Feedback>(Duration::from_secs(90), |r| {
                let counts = count_by_event(r);
                (0..500).all(|i| counts.contains_key(&format!("e-{i}")))
            })
            .await,
    );
    let counts = count_by_event(&seen);
    for i in 0..500 {
        assert!(counts.contains_key(&format!("e-{i}")), "e-{i} skipped");
    }
    let redelivered = (0..300).filter(|i| counts[&format!("e-{i}")] >= 2).count();
    assert_eq!(
        redelivered, 300,
        "handled but uncommitted messages come back after a kill"
    );

    // A graceful stop (SIGTERM) finishes and commits: a third life starts after the end.
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = second.wait().expect("reaped");
    assert!(exit.success(), "relay exited with {exit:?} on SIGTERM");
    let before_third = reader
        .read_for::<v1::Feedback>(Duration::from_secs(1))
        .await;
    assert!(before_third.is_empty());
    let mut third = start_relay(env, "third");
    stack::publish_events(producer, &topics.segments.name, 500, 10, 50).await;
    let after = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 10)
        .await;
    let late = reader
        .read_for::<v1::Feedback>(Duration::from_secs(3))
        .await;
    third.kill().expect("SIGKILL");
    third.wait().expect("reaped");
    let mut ids = stack::event_ids(&after);
    ids.extend(stack::event_ids(&late));
    ids.sort();
    let mut expected: Vec<String> = (500..510).map(|i| format!("e-{i}")).collect();
    expected.sort();
    assert_eq!(
        ids, expected,
        "after a graceful stop only new messages are handled"
    );
}
