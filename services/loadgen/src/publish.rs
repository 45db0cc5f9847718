//! Streams generated contacts into `tocsin.segments`, as the CRM would: one
//! `SegmentEvent` (`entered`) per contact, keyed by contact id, protobuf, each with its own
//! event id.
//!
//! Contacts are generated as the producer takes them, at most `in_flight` unacknowledged
//! at once: memory stays flat whatever the count, and librdkafka batches what is in flight
//! (`linger_ms`). The run fails on the first produce error, after the broker has had
//! `message_timeout_ms` to take it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tocsin_bus::{BusError, Producer, TraceContext};
use tocsin_contracts::v1;

use crate::contacts::{Generator, Tally};

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topic: String,
    pub segment: String,
    pub count: u64,
    /// Produces awaiting the broker's acknowledgement, at most.
    pub in_flight: usize,
    /// The share of contacts already on the opt-out list ([`Generator::opted_out`]): for
    /// each, a `Feedback(unsubscribed)` naming the address goes to `feedback_topic`, as
    /// the tracker publishes one when someone unsubscribes.
    pub opted_out_share: f64,
    pub feedback_topic: String,
}

/// How a run went.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Report {
    /// Events the broker acknowledged.
    pub published: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// What was published, as the planner will count it.
    pub tally: Tally,
}

/// Progress, reported about once a second to `on_progress`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub published: u64,
    pub count: u64,
    pub elapsed: Duration,
}

/// Publishes `plan.count` contacts of `generator` to the segment.
pub async fn contacts(
    producer: &Producer,
    generator: &Generator,
    plan: &Plan,
    mut on_progress: impl FnMut(Progress),
) -> Result<Report, BusError> {
    let trace = TraceContext::new_root();
    let started = Instant::now();
    let mut tally = Tally::default();
    let events = futures::stream::iter(0..plan.count).map(|index| {
        let now = tocsin_contracts::timestamp_now();
        let contact = generator.contact(index, now);
        tally.add(&contact);
        let opt_out = generator
            .opted_out(index, plan.opted_out_share)
            .map(|channel| {
                tally.opted_out(&contact, channel);
                opt_out_feedback(&contact, channel, now)
            });
        let event_id = uuid::Uuid::now_v7().to_string();
        let event = v1::SegmentEvent {
            meta: Some(v1::EventMeta {
                event_id: event_id.clone(),
                occurred_at: Some(now),
                source: "loadgen".to_owned(),
            }),
            contact_id: contact.id.clone(),
            change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
                segment_id: plan.segment.clone(),
                contact: Some(contact),
            })),
        };
        let trace = &trace;
        async move {
            if let Some(feedback) = opt_out {
                let id = feedback.meta.as_ref().map(|m| m.event_id.as_str());
                producer
                    .publish(
                        &plan.feedback_topic,
                        &feedback.address,
                        id.unwrap_or_default(),
                        &feedback,
                        trace,
                    )
                    .await?;
            }
            producer
                .publish(&plan.topic, &event.contact_id, &event_id, &event, trace)
                .await
        }
    });
    let mut acks = events.buffer_unordered(plan.in_flight.max(1));
    let mut published = 0u64;
    let mut last_report = Instant::now();
    while let Some(ack) = acks.next().await {
        ack?;
        published += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            on_progress(Progress {
                published,
                count: plan.count,
                elapsed: started.elapsed(),
            });
        }
    }
    drop(acks);
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        published,
        seconds,
        events_per_second: if seconds > 0.0 {
            published as f64 / seconds
        } else {
            0.0
        },
        tally,
    })
}

/// The unsubscribe `contact` made from `channel` before this run, by address (as a list of
/// opted-out addresses imported from elsewhere would carry no contact id).
fn opt_out_feedback(
    contact: &v1::Contact,
    channel: v1::Channel,
    now: tocsin_contracts::Timestamp,
) -> v1::Feedback {
    let address = match channel {
        v1::Channel::Sms => contact.phone_e164.clone(),
        _ => contact.email.clone(),
    };
    let channel_name = if channel == v1::Channel::Sms {
        "sms"
    } else {
        "email"
    };
    v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id: format!("loadgen:opted-out:{}:{channel_name}", contact.id),
            occurred_at: Some(now),
            source: "loadgen".to_owned(),
        }),
        kind: v1::FeedbackKind::Unsubscribed.into(),
        channel: channel.into(),
        reason: v1::Reason::Unsubscribed.into(),
        opt_out_scope: v1::OptOutScope::Channel.into(),
        detail: "opted out before this run (synthetic history)".to_owned(),
        address,
        ..Default::default()
    }
}
