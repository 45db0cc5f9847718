//! Prometheus metrics of the bus. Labels are topics and coarse outcomes only, and the
//! consumer lag's group and partition.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct BusMetrics {
    pub(crate) consumed: IntCounterVec,
    pub(crate) produced: IntCounterVec,
    pub(crate) produce_errors: IntCounterVec,
    pub(crate) dead_letters: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) handler_seconds: HistogramVec,
    /// Per partition: the only per-partition family, bounded by the topics' partition
    /// counts (see [`crate::lag`]).
    pub(crate) consumer_lag: IntGaugeVec,
}

impl BusMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tocsin_bus_handler_duration_seconds",
                "Time a handler took for one message attempt.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["topic", "outcome"],
        )?;
        registry.register(Box::new(handler_seconds.clone()))?;
        // The name the dashboards and alert rules in deploy/ use (no `bus` in it).
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "tocsin_consumer_lag_messages",
                "Messages of a partition its consumer has not finished yet (librdkafka \
                 statistics: end offset minus stored or committed offset), for the \
                 partitions this instance owns.",
            ),
            &["group", "topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        Ok(BusMetrics {
            consumed: counter(
                "tocsin_bus_messages_consumed_total",
                "Messages received from the broker.",
                &["topic"],
            )?,
            produced: counter(
                "tocsin_bus_messages_produced_total",
                "Messages acknowledged by the broker.",
                &["topic"],
            )?,
            produce_errors: counter(
                "tocsin_bus_produce_errors_total",
                "Produce requests that failed (the caller retries).",
                &["topic"],
            )?,
            dead_letters: counter(
                "tocsin_bus_dead_letters_total",
                "Messages sent to the dead-letter topic, by source topic and reason class.",
                &["topic", "reason"],
            )?,
            retries: counter(
                "tocsin_bus_handler_retries_total",
                "Handler attempts that failed transiently and were retried.",
                &["topic"],
            )?,
            handler_seconds,
            consumer_lag,
        })
    }

    /// Starts the per-topic counters of `topics` at zero, so that a dashboard shows 0
    /// rather than no data for a topic that has had no message, error or retry yet, and
    /// so that `increase()` counts the first one (a series that appears at 1 has no
    /// earlier sample to count from).
    pub fn declare_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        for topic in topics {
            for family in [
                &self.consumed,
                &self.produced,
                &self.produce_errors,
                &self.retries,
            ] {
                family.with_label_values(&[topic]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_topics_are_exposed_at_zero() {
        let registry = Registry::new();
        let metrics = BusMetrics::register(&registry).expect("register");
        metrics.declare_topics(["tocsin.jobs"]);
        let families = registry.gather();
        for name in [
            "tocsin_bus_messages_consumed_total",
            "tocsin_bus_messages_produced_total",
            "tocsin_bus_produce_errors_total",
            "tocsin_bus_handler_retries_total",
        ] {
            let family = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} is not exposed"));
            let metric = &family.get_metric()[0];
            assert_eq!(metric.get_label()[0].value(), "tocsin.jobs");
            assert_eq!(metric.get_counter().get_value(), 0.0);
        }
    }
}
