//! Through a consumer group on the real broker: every message handled once and committed;
//! a second member takes partitions over on rebalance.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tocsin_contracts::v1;
use tocsin_integration_tests::relay;
use tocsin_integration_tests::stack::{self, TestBus, TopicReader};

/// The group's committed offset of each partition. (Tansu 0.6's high watermarks lag the
/// real end of a partition, so the tests compare with what was consumed instead.)
fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack::brokers())
        .set("group.id", group)
        .create()
        .expect("probe");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = probe
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                other => panic!("partition {p}: no committed offset ({other:?})"),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_are_handled_once_and_committed() {
    const N: usize = 10_000;
    const PARTITIONS: i32 = 6;
    let bus = TestBus::new("roundtrip", PARTITIONS).await;
    let topics = bus.topics().clone();
    let group = bus.config.relay.group_id.clone();

    let (stop, relay) = relay::spawn(bus.config.clone());
    stack::publish_events(&bus.producer, &topics.segments.name, 0, N, 997).await;

    let reader = TopicReader::new(&topics.feedback.name);
    let records = reader
        .read_until::<v1::Feedback>(Duration::from_secs(180), |r| r.len() >= N)
        .await;
    // A little longer, to see a duplicate if there is one.
    let extra = reader
        .read_for::<v1::Feedback>(Duration::from_secs(3))
        .await;
    assert!(extra.is_empty(), "{} duplicates", extra.len());

    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in stack::event_ids(&records) {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "distinct events handled");
    assert!(seen.values().all(|&n| n == 1), "an event was handled twice");
    // Outputs keep the input's key: the contact.
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref() == Some(r.event.contact_id.as_bytes()))
    );

    // The relay records the input's partition:offset; the next offset of each partition is
    // what the group must have committed.
    let mut next_offsets = vec![0i64; PARTITIONS as usize];
    for r in &records {
        let (p, o) = r.event.detail.split_once(':').expect("partition:offset");
        let (p, o): (usize, i64) = (p.parse().expect("partition"), o.parse().expect("offset"));
        next_offsets[p] = next_offsets[p].max(o + 1);
    }
    assert_eq!(next_offsets.iter().sum::<i64>(), N as i64);
    stop.cancel();
    relay.await.expect("join").expect("relay");
    let committed = committed_offsets(&group, &topics.segments.name, PARTITIONS);
    assert_eq!(
        committed, next_offsets,
        "committed offsets are not the ends of the partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_partitions_over_on_rebalance() {
    const PARTITIONS: i32 = 4;
    let bus = TestBus::new("rebalance", PARTITIONS).await;
    let mut config_a = bus.config.clone();
    config_a.relay.instance = "member-a".into();
    let mut config_b = config_a.clone();
    config_b.relay.instance = "member-b".into();
    let (topics, producer) = (bus.topics().clone(), bus.producer.clone());
    let reader = TopicReader::new(&topics.feedback.name);

    // A alone handles the first batch.
    let (stop_a, relay_a) = relay::spawn(config_a);
    stack::publish_events(&producer, &topics.segments.name, 0, 400, 101).await;
    let mut all = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 400)
        .await;
    assert!(
        all.iter()
            .all(|r| r.event.meta.as_ref().map(|m| m.source.as_str()) == Some("member-a"))
    );

    // B joins: the group rebalances and B gets partitions of its own.
    let (stop_b, relay_b) = relay::spawn(config_b);
    let mut round = 0;
    loop {
        round += 1;
        stack::publish_events(&producer, &topics.segments.name, 400 * round, 400, 101).await;
        let batch = reader
            .read_until::<v1::Feedback>(Duration::from_secs(60), |r| {
                let ids = stack::event_ids(r);
                (400 * round..400 * (round + 1)).all(|i| ids.contains(&format!("e-{i}")))
            })
            .await;
        let by_b = batch
            .iter()
            .filter(|r| {
                r.event
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.source == "member-b")
            })
            .count();
        all.extend(batch);
        if by_b > 0 {
            break;
        }
        assert!(round < 20, "member B never received a partition");
    }

    // A leaves: B takes every partition over and nothing is lost.
    stop_a.cancel();
    relay_a.await.expect("join").expect("relay a");
    let start = 400 * (round + 1);
    stack::publish_events(&producer, &topics.segments.name, start, 400, 101).await;
    let batch = reader
        .read_until::<v1::Feedback>(Duration::from_secs(90), |r| {
            let ids = stack::event_ids(r);
            (start..start + 400).all(|i| ids.contains(&format!("e-{i}")))
        })
        .await;
    let late_by_a: Vec<_> = batch
        .iter()
        .filter(|r| {
            r.event
                .meta
                .as_ref()
                .is_some_and(|m| m.source == "member-a")
        })
        .filter(|r| {
            r.event.meta.as_ref().is_some_and(|m| {
                m.event_id
                    .trim_start_matches("e-")
                    .parse::<usize>()
                    .unwrap_or(0)
                    >= start
            })
        })
        .collect();
    assert!(
        late_by_a.is_empty(),
        "member A handled messages after it left"
    );
    all.extend(batch);
    let ids = stack::event_ids(&all);
    for i in 0..start + 400 {
        assert!(ids.contains(&format!("e-{i}")), "e-{i} was never handled");
    }
    stop_b.cancel();
    relay_b.await.expect("join").expect("relay b");
}
