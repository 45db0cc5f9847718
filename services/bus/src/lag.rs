//! Consumer lag per partition, from librdkafka's statistics.
//!
//! Every `statistics_interval_ms`, librdkafka hands each consumer a snapshot of its state
//! ([`Statistics`], `STATISTICS.md` in librdkafka). [`LagReporter::observe`] turns the
//! partitions this consumer owns into `tocsin_consumer_lag_messages{group, topic,
//! partition}`; a partition that leaves the assignment loses its series at once
//! ([`LagReporter::revoked`]), so the new owner's value is the only one.
//!
//! **Which lag.** librdkafka reports two: `consumer_lag`, from the group's *committed*
//! offset, and `consumer_lag_stored`, from the offset *stored* for the next commit. The
//! consume loop stores an offset only when every message below it is finished, so the
//! stored offset is the service's real progress, up to `commit_interval_ms` ahead of the
//! committed one: `consumer_lag_stored` is the meaning wanted here (messages not finished
//! yet, whether fetched or not). But librdkafka answers -1 ("unknown") for both in the
//! very cases a stuck stage produces:
//!
//! - nothing stored since the assignment (a handler stuck on its first message after a
//!   restart or a rebalance): `consumer_lag_stored` is -1, the committed offset is known;
//! - a group that never committed (a new service stuck from its first message): both are
//!   -1, yet the group reads from the earliest offset (`auto.offset.reset = earliest`), so
//!   everything from the low watermark is behind;
//! - a position past the end offset, which happens when a broker's watermarks trail its
//!   log (Tansu 0.6, see ARCHITECTURE.md): both are -1 where the lag is 0 as far as the
//!   broker says.
//!
//! So the gauge is the same difference, computed from the same fields with those
//! fallbacks ([`partition_lag`]): the end offset (last stable offset, else high watermark)
//! minus the furthest of the stored and committed offsets, else the low watermark once the
//! partition is fetching, never below 0. Where librdkafka's own figure is known, they agree
//! (`tests` check it).
//!
//! **Limits.** librdkafka learns the high watermark from its fetch responses: once its
//! prefetch queue is full (`queued.min.messages`, `queued.max.messages.kbytes`) it stops
//! fetching and the end offset it knows stops moving, so a backlog larger than the prefetch
//! window shows at least that window, not all of it. Statistics are served only inside the
//! consumer's poll: a loop that holds `max_in_flight` messages does not poll, so while its
//! handlers stall it takes one more message per statistics interval, up to twice
//! `max_in_flight` ([`crate::consumer`]); a stall longer than that many intervals freezes
//! the gauge at its last value.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::IntGaugeVec;
use rdkafka::statistics::{Partition, Statistics};

/// A topic and partition.
pub type PartitionId = (String, i32);

/// librdkafka's "no offset" (`RD_KAFKA_OFFSET_INVALID`) and every other negative offset
/// are unknown positions.
fn known(offset: i64) -> Option<i64> {
    (offset >= 0).then_some(offset)
}

/// Messages of a partition not finished by its consumer, or `None` when that cannot be
/// told (no end offset yet, or no position while the start offset is still being looked
/// up).
pub fn partition_lag(p: &Partition) -> Option<i64> {
    let end = known(p.ls_offset).or_else(|| known(p.hi_offset))?;
    let position = match (known(p.stored_offset), known(p.committed_offset)) {
        (Some(s), Some(c)) => s.max(c),
        (Some(o), None) | (None, Some(o)) => o,
        // Nothing stored nor committed: the group starts at the earliest offset. Until the
        // partition is fetching, its committed offset may simply not be known yet.
        (None, None) if p.fetch_state == "active" => known(p.lo_offset)?,
        (None, None) => return None,
    };
    Some((end - position).max(0))
}

/// The lag of each partition in `assigned` that `stats` knows, and the assigned ones whose
/// lag is unknown (`None`). Partitions librdkafka lists but this consumer does not own
/// (the internal unassigned partition -1, partitions of other members) are left out.
pub fn assigned_lags(
    stats: &Statistics,
    assigned: &BTreeSet<PartitionId>,
) -> Vec<(PartitionId, Option<i64>)> {
    assigned
        .iter()
        .map(|(topic, partition)| {
            let lag = stats
                .topics
                .get(topic)
                .and_then(|t| t.partitions.get(partition))
                .filter(|p| p.partition >= 0 && !p.unknown)
                .and_then(partition_lag);
            ((topic.clone(), *partition), lag)
        })
        .collect()
}

/// Keeps `tocsin_consumer_lag_messages` for one consumer: the partitions it owns, from the
/// rebalance callbacks, and the series it has set.
#[derive(Debug)]
pub(crate) struct LagReporter {
    gauge: IntGaugeVec,
    group: String,
    state: Mutex<Owned>,
}

#[derive(Debug, Default)]
struct Owned {
    assigned: BTreeSet<PartitionId>,
    /// Partitions with a series: removed when revoked or when their lag becomes unknown,
    /// never left at a stale value.
    reported: BTreeSet<PartitionId>,
}

impl LagReporter {
    pub(crate) fn new(gauge: IntGaugeVec, group: &str) -> Self {
        LagReporter {
            gauge,
            group: group.to_owned(),
            state: Mutex::new(Owned::default()),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, (topic, partition): &PartitionId) {
        let partition = partition.to_string();
        // Absent already is fine: the series may never have been set.
        let _ = self
            .gauge
            .remove_label_values(&[&self.group, topic, &partition]);
    }

    pub(crate) fn assigned(&self, partitions: impl IntoIterator<Item = PartitionId>) {
        self.owned().assigned.extend(partitions);
    }

    pub(crate) fn revoked(&self, partitions: impl IntoIterator<Item = PartitionId>) {
        let mut owned = self.owned();
        for tp in partitions {
            owned.assigned.remove(&tp);
            if owned.reported.remove(&tp) {
                self.remove(&tp);
            }
        }
    }

    pub(crate) fn observe(&self, stats: &Statistics) {
        let mut owned = self.owned();
        let lags = assigned_lags(stats, &owned.assigned);
        let mut reported = BTreeSet::new();
        for ((topic, partition), lag) in lags {
            if let Some(lag) = lag {
                self.gauge
                    .with_label_values(&[&self.group, &topic, &partition.to_string()])
                    .set(lag);
                reported.insert((topic, partition));
            }
        }
        for gone in owned.reported.difference(&reported) {
            self.remove(gone);
        }
        owned.reported = reported;
    }

    /// Every series of this consumer goes (it left the group).
    pub(crate) fn clear(&self) {
        let mut owned = self.owned();
        for tp in std::mem::take(&mut owned.reported) {
            self.remove(&tp);
        }
        owned.assigned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Opts, Registry};

    /// Statistics as librdkafka 2.12 emitted them against Tansu 0.6 (`tests/consumer_lag.rs`
    /// in the integration tests), for a new group of one partition holding 300 messages,
    /// its handler blocked on the first: nothing stored or committed yet.
    const BLOCKED: &str = include_str!("../tests/fixtures/statistics_blocked.json");
    /// Half a second later, the handler let through: all 300 stored, not yet committed.
    const CAUGHT_UP: &str = include_str!("../tests/fixtures/statistics_caught_up.json");

    fn parse(json: &str) -> (Statistics, String) {
        let stats: Statistics = serde_json::from_str(json).expect("librdkafka's JSON");
        let topic = stats.topics.keys().next().expect("one topic").clone();
        (stats, topic)
    }

    fn partition<'a>(stats: &'a mut Statistics, topic: &str, p: i32) -> &'a mut Partition {
        stats
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(&p))
            .expect("partition")
    }

    fn assigned(topic: &str, partitions: &[i32]) -> BTreeSet<PartitionId> {
        partitions.iter().map(|p| (topic.to_owned(), *p)).collect()
    }

    #[test]
    fn a_new_group_stuck_on_its_first_message_shows_the_whole_partition() {
        let (stats, topic) = parse(BLOCKED);
        let p = &stats.topics[&topic].partitions[&0];
        // librdkafka itself cannot tell: nothing stored, nothing committed.
        assert_eq!((p.consumer_lag, p.consumer_lag_stored), (-1, -1));
        assert_eq!(
            assigned_lags(&stats, &assigned(&topic, &[0])),
            vec![((topic.clone(), 0), Some(300))]
        );
    }

    #[test]
    fn agrees_with_librdkafka_where_it_knows() {
        let (mut stats, topic) = parse(CAUGHT_UP);
        let p = partition(&mut stats, &topic, 0);
        assert_eq!(p.consumer_lag_stored, 0);
        assert_eq!(partition_lag(p), Some(0));
        // librdkafka's formulas, on the same fields: end - stored, end - committed.
        for (stored, committed) in [(120, -1001), (120, 100), (-1001, 100), (300, 250)] {
            p.stored_offset = stored;
            p.committed_offset = committed;
            let end = p.ls_offset;
            let expected = if stored >= 0 {
                end - stored
            } else {
                end - committed
            };
            assert_eq!(partition_lag(p), Some(expected), "{stored} {committed}");
        }
    }

    #[test]
    fn committed_offset_stands_in_until_something_is_stored() {
        // After a restart or a rebalance, a handler stuck on its first message: the group's
        // committed offset is known, nothing is stored by this member.
        let (mut stats, topic) = parse(BLOCKED);
        let p = partition(&mut stats, &topic, 0);
        p.committed_offset = 180;
        assert_eq!(partition_lag(p), Some(120));
        // Another member committed further than this one stored: the further one counts.
        p.stored_offset = 150;
        assert_eq!(partition_lag(p), Some(120));
    }

    #[test]
    fn unknown_ends_and_unsettled_starts_have_no_value() {
        let (mut stats, topic) = parse(BLOCKED);
        let p = partition(&mut stats, &topic, 0);
        // Still looking its start offset up: the committed offset may be on its way.
        p.fetch_state = "offset-wait".to_owned();
        assert_eq!(partition_lag(p), None);
        p.fetch_state = "active".to_owned();
        p.hi_offset = -1001;
        p.ls_offset = -1001;
        assert_eq!(partition_lag(p), None, "no end offset yet");
        // Without a last stable offset (a broker before 0.11), the high watermark.
        p.hi_offset = 310;
        assert_eq!(partition_lag(p), Some(310));
    }

    #[test]
    fn a_watermark_behind_the_position_is_no_lag() {
        // Tansu's watermarks may trail what was consumed; librdkafka answers -1 there.
        let (mut stats, topic) = parse(CAUGHT_UP);
        let p = partition(&mut stats, &topic, 0);
        p.ls_offset = 280;
        p.hi_offset = 280;
        assert_eq!(partition_lag(p), Some(0));
    }

    #[test]
    fn only_assigned_partitions_are_reported() {
        let (mut stats, topic) = parse(BLOCKED);
        // librdkafka also lists its internal unassigned partition, -1.
        assert!(stats.topics[&topic].partitions.contains_key(&-1));
        let mut other = stats.topics[&topic].partitions[&0].clone();
        other.partition = 1;
        stats
            .topics
            .get_mut(&topic)
            .expect("topic")
            .partitions
            .insert(1, other);
        assert_eq!(
            assigned_lags(&stats, &assigned(&topic, &[0])),
            vec![((topic.clone(), 0), Some(300))],
            "partition 1 is another member's, -1 is nobody's"
        );
        // Assigned but not in the statistics yet: unknown, not 0.
        assert_eq!(
            assigned_lags(&stats, &assigned("another-topic", &[0])),
            vec![(("another-topic".to_owned(), 0), None)]
        );
    }

    fn gauge() -> (Registry, IntGaugeVec) {
        let registry = Registry::new();
        let gauge = IntGaugeVec::new(
            Opts::new("tocsin_consumer_lag_messages", "test"),
            &["group", "topic", "partition"],
        )
        .expect("gauge");
        registry
            .register(Box::new(gauge.clone()))
            .expect("register");
        (registry, gauge)
    }

    fn series(registry: &Registry) -> Vec<(String, i64)> {
        registry
            .gather()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| {
                let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
                (labels.join("/"), m.get_gauge().get_value() as i64)
            })
            .collect()
    }

    #[test]
    fn a_revoked_partition_loses_its_series_at_once() {
        let (stats, topic) = parse(BLOCKED);
        let (registry, gauge) = gauge();
        let reporter = LagReporter::new(gauge, "g");
        reporter.observe(&stats);
        assert!(series(&registry).is_empty(), "nothing assigned yet");

        reporter.assigned(assigned(&topic, &[0]));
        reporter.observe(&stats);
        assert_eq!(series(&registry), vec![(format!("g/0/{topic}"), 300)]);

        reporter.revoked(assigned(&topic, &[0]));
        assert!(
            series(&registry).is_empty(),
            "removed before the next statistics"
        );
        reporter.observe(&stats);
        assert!(series(&registry).is_empty(), "and not set again");
    }

    #[test]
    fn a_lag_that_becomes_unknown_is_removed_not_kept() {
        let (mut stats, topic) = parse(BLOCKED);
        let (registry, gauge) = gauge();
        let reporter = LagReporter::new(gauge, "g");
        reporter.assigned(assigned(&topic, &[0]));
        reporter.observe(&stats);
        assert_eq!(series(&registry).len(), 1);
        partition(&mut stats, &topic, 0).hi_offset = -1001;
        partition(&mut stats, &topic, 0).ls_offset = -1001;
        reporter.observe(&stats);
        assert!(series(&registry).is_empty());

        reporter.observe(&parse(BLOCKED).0);
        reporter.clear();
        assert!(
            series(&registry).is_empty(),
            "a consumer that left keeps nothing"
        );
    }
}
