//! Which provider takes a message: the routes of its channel and sender profile, lowest
//! priority first, by weight among equals, skipping providers whose circuit is open. When
//! a priority's providers are all open, the next priority takes the traffic (failover);
//! when they close again, traffic comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::breaker::Breaker;
use crate::config::{ChannelName, RouteConfig, SenderConfig};
use crate::providers::Provider;
use crate::throttle::Limit;

/// A provider with what the sender keeps about it.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub channel: ChannelName,
    pub provider: Box<dyn Provider>,
    pub rate: Limit,
    pub identity_rate: Limit,
    pub breaker: Breaker,
    /// Calls in flight at once (`max_in_flight`), both lanes.
    pub in_flight: tokio::sync::Semaphore,
    /// How many of them bulk messages may hold (taken before `in_flight`): the rest,
    /// `triggered_share` of them (at least one), stay free for the triggered lane, so a
    /// welcome message never queues behind a blast's messages waiting for their budget.
    pub bulk_in_flight: tokio::sync::Semaphore,
}

/// The calls bulk messages may have in flight out of `max_in_flight`: all but
/// `triggered_share` of them (rounded up, at least one kept when the share is not 0), and
/// never fewer than one.
pub fn bulk_slots(max_in_flight: u32, triggered_share: f64) -> usize {
    let max = max_in_flight.max(1) as usize;
    let kept = if triggered_share > 0.0 {
        ((max as f64 * triggered_share).ceil() as usize).max(1)
    } else {
        0
    };
    max.saturating_sub(kept).max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("route for {channel} names provider `{name}`, which is not configured")]
    UnknownProvider { channel: &'static str, name: String },
    #[error("route for {channel} names provider `{name}`, which sends {actual}")]
    WrongChannel {
        channel: &'static str,
        name: String,
        actual: &'static str,
    },
    #[error("no route serves {0}")]
    NoRoute(&'static str),
}

#[derive(Debug)]
pub struct Router {
    entries: BTreeMap<String, Arc<Entry>>,
    routes: Vec<RouteConfig>,
}

/// Why no provider can take a message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No route for this channel and profile: a configuration problem.
    NoRoute,
    /// Every provider's circuit is open; the first may be tried again after this long.
    AllOpen(Duration),
}

impl Router {
    pub fn new(config: &SenderConfig, entries: Vec<Entry>) -> Result<Self, RoutingError> {
        let entries: BTreeMap<String, Arc<Entry>> = entries
            .into_iter()
            .map(|e| (e.name.clone(), Arc::new(e)))
            .collect();
        for route in &config.routes {
            for p in &route.providers {
                let entry = entries
                    .get(&p.name)
                    .ok_or_else(|| RoutingError::UnknownProvider {
                        channel: route.channel.as_str(),
                        name: p.name.clone(),
                    })?;
                if entry.channel != route.channel {
                    return Err(RoutingError::WrongChannel {
                        channel: route.channel.as_str(),
                        name: p.name.clone(),
                        actual: entry.channel.as_str(),
                    });
                }
            }
        }
        for channel in [ChannelName::Email, ChannelName::Sms] {
            if !config.routes.iter().any(|r| r.channel == channel) {
                tracing::warn!(
                    channel = channel.as_str(),
                    "no route: messages of this channel will fail with no_provider"
                );
            }
        }
        Ok(Router {
            entries,
            routes: config.routes.clone(),
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// The route of a channel and profile: the profile's own, else the `*` one.
    fn route(&self, channel: ChannelName, profile: &str) -> Option<&RouteConfig> {
        let profile = if profile.is_empty() {
            "default"
        } else {
            profile
        };
        self.routes
            .iter()
            .find(|r| r.channel == channel && r.sender_profile == profile)
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|r| r.channel == channel && r.sender_profile == "*")
            })
    }

    /// The provider for the next attempt.
    pub fn choose(&self, channel: ChannelName, profile: &str) -> Result<Arc<Entry>, Unavailable> {
        let route = self.route(channel, profile).ok_or(Unavailable::NoRoute)?;
        let mut priorities: Vec<u32> = route.providers.iter().map(|p| p.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut soonest: Option<Duration> = None;
        for priority in priorities {
            let mut candidates: Vec<(Arc<Entry>, u32)> = route
                .providers
                .iter()
                .filter(|p| p.priority == priority)
                .filter_map(|p| self.entries.get(&p.name).map(|e| (e.clone(), p.weight)))
                .collect();
            // Weighted order: draw one by weight, then the rest, so a refused draw (a
            // probe already in flight) falls back to the others.
            while !candidates.is_empty() {
                let total: u32 = candidates.iter().map(|(_, w)| (*w).max(1)).sum();
                let mut pick = rand::rng().random_range(0..total);
                let index = candidates
                    .iter()
                    .position(|(_, w)| {
                        let w = (*w).max(1);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                let (entry, _) = candidates.swap_remove(index);
                if entry.breaker.allow() {
                    return Ok(entry);
                }
                let wait = entry.breaker.retry_in();
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
        Err(Unavailable::AllOpen(
            soonest
                .unwrap_or(Duration::from_millis(100))
                .max(Duration::from_millis(50)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::bulk_slots;

    #[test]
    fn bulk_messages_leave_the_triggered_share_of_the_calls() {
        assert_eq!(bulk_slots(32, 0.2), 25, "7 of 32 kept (6.4 rounded up)");
        assert_eq!(bulk_slots(10, 0.0), 10, "no share: every call");
        assert_eq!(bulk_slots(4, 0.01), 3, "a share keeps at least one");
        assert_eq!(bulk_slots(2, 0.9), 1, "bulk keeps at least one");
        assert_eq!(bulk_slots(1, 0.2), 1, "one call: shared, nothing to keep");
        assert_eq!(bulk_slots(0, 0.2), 1, "0 is read as 1");
    }
}
