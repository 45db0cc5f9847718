//! The generator's events on the local stack's broker (`deploy/local/stack.sh up`): every
//! contact arrives once, keyed by its id, valid (decoding validates), entering the segment,
//! exactly the contact the generator makes for its index.

use std::collections::HashSet;
use std::time::Duration;

use tocsin_contracts::v1;
use tocsin_contracts::v1::segment_event::Change;
use tocsin_integration_tests::stack::{TestBus, TopicReader};
use tocsin_loadgen::{Generator, Options, Plan, publish};

const COUNT: u64 = 2_000;

#[tokio::test]
async fn every_contact_arrives_once_keyed_by_its_id() {
    let bus = TestBus::new("loadgen", 3).await;
    let generator = Generator::new(Options {
        seed: 9,
        id_prefix: "lg".into(),
        email_tag: Some("test".into()),
    })
    .expect("valid options");
    let plan = Plan {
        topic: bus.topics().segments.name.clone(),
        segment: "benevoles-test".into(),
        count: COUNT,
        // Far below the count: the bound is exercised.
        in_flight: 64,
        opted_out_share: 0.0,
        feedback_topic: bus.topics().feedback.name.clone(),
    };
    let report = publish::contacts(&bus.producer, &generator, &plan, |_| {})
        .await
        .expect("published");
    assert_eq!(report.published, COUNT);
    assert_eq!(report.tally.contacts, COUNT);
    assert!(report.events_per_second > 0.0);

    let records = TopicReader::new(&plan.topic)
        .read_until::<v1::SegmentEvent>(Duration::from_secs(60), |r| r.len() as u64 >= COUNT)
        .await;
    assert_eq!(records.len() as u64, COUNT, "nothing more than the count");
    let mut ids = HashSet::new();
    let mut event_ids = HashSet::new();
    for record in &records {
        let event = &record.event;
        assert_eq!(record.key.as_deref(), Some(event.contact_id.as_bytes()));
        let meta = event.meta.as_ref().expect("meta");
        assert_eq!(meta.source, "loadgen");
        assert!(event_ids.insert(meta.event_id.clone()), "one event id each");
        let Some(Change::Entered(entered)) = &event.change else {
            panic!("{}: not an entered event", event.contact_id);
        };
        assert_eq!(entered.segment_id, "benevoles-test");
        let contact = entered.contact.as_ref().expect("snapshot");
        let index: u64 = contact
            .id
            .strip_prefix("lg-")
            .and_then(|i| i.parse().ok())
            .expect("lg-<index>");
        let updated_at = contact.updated_at.expect("dated");
        assert_eq!(*contact, generator.contact(index, updated_at));
        assert!(ids.insert(contact.id.clone()), "{} twice", contact.id);
    }
    assert_eq!(ids.len() as u64, COUNT);
}
