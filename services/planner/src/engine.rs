//! Fan-out: a due campaign's segment walked in steps, each member decided, the eligible
//! ones put in the durable schedule.
//!
//! One step = one batch of members after the checkpointed cursor:
//! 1. load profiles, suppression entries, campaign dedup and frequency counts (pipelined);
//! 2. decide each member ([`crate::eligibility`]);
//! 3. publish `Feedback(suppressed)` for the refusals and await the acks (event ids are
//!    derived from campaign and contact, so a redone step repeats the same events);
//! 4. in one Redis transaction: the eligible members into the schedule, their addresses
//!    into the campaign's dedup set, the frequency counters, the campaign's counters and
//!    the new cursor.
//!
//! A planner killed anywhere redoes at most the step it was in, and step 4 is atomic, so
//! nobody is planned twice and nobody is skipped. A lease per campaign keeps two instances
//! from fanning the same campaign out at once.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use futures::future::try_join_all;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tocsin_bus::{BusError, Producer, Topics, TraceContext};
use tocsin_contracts::v1;

use crate::campaign::{self, Campaign, State};
use crate::config::PlannerConfig;
use crate::eligibility::{self, Facts, Refusal};
use crate::keys;
use crate::metrics::PlannerMetrics;
use crate::quiet_hours::QuietHours;
use crate::store::{self, AddressHasher};

/// Why a planning step failed. All of these are worth retrying on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// Everything the fan-out and the dispatcher share.
pub struct Planner {
    pub redis: ConnectionManager,
    pub producer: Producer,
    pub topics: Topics,
    pub hasher: AddressHasher,
    pub config: PlannerConfig,
    pub metrics: PlannerMetrics,
    /// This instance's name in campaign leases.
    pub instance: String,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Planner({})", self.instance)
    }
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn timestamp(ms: i64) -> tocsin_contracts::Timestamp {
    tocsin_contracts::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The time zone a member is reached in: theirs when valid, else the campaign's, else the
/// planner's default.
pub fn recipient_zone(contact: &v1::Contact, campaign_zone: &str, default_zone: &str) -> Tz {
    [contact.time_zone.as_str(), campaign_zone, default_zone]
        .iter()
        .find_map(|z| z.parse::<Tz>().ok())
        .unwrap_or(chrono_tz::Europe::Paris)
}

pub fn channel_of(blast: &v1::ScheduleBlast) -> v1::Channel {
    v1::Channel::try_from(blast.channel).unwrap_or(v1::Channel::Unspecified)
}

/// The idempotency key of a blast's message to a contact: (campaign, contact, channel).
pub fn idempotency_key(campaign_id: &str, contact_id: &str, channel: v1::Channel) -> String {
    format!(
        "{campaign_id}:{contact_id}:{}",
        eligibility::channel_name(channel)
    )
}

/// A member's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Plan {
        address_hash: String,
        not_before_ms: i64,
    },
    Refuse(Refusal),
}

/// Decides a batch of members of `blast` exactly as the fan-out does, without writing
/// anything: the fan-out records the verdicts, the API's dry run counts them. `seen` holds
/// the address hashes already decided in this run (the dry run keeps it across batches;
/// the fan-out's memory across steps is the campaign's address set in Redis).
#[allow(clippy::too_many_arguments)]
pub async fn evaluate(
    conn: &mut ConnectionManager,
    hasher: &AddressHasher,
    config: &PlannerConfig,
    campaign_id: &str,
    blast: &v1::ScheduleBlast,
    members: &[String],
    now: DateTime<Utc>,
    seen: &mut HashSet<String>,
) -> Result<Vec<Verdict>, redis::RedisError> {
    let channel = channel_of(blast);
    let quiet = QuietHours::from_proto(blast.quiet_hours.as_ref(), channel)
        .unwrap_or_else(|_| QuietHours::default_for(channel));
    let start = blast
        .start_at
        .as_ref()
        .and_then(|t| Utc.timestamp_opt(t.seconds, 0).single())
        .map_or(now, |s| s.max(now));
    let window_start = millis(now) - i64::from(config.frequency_window_days) * 24 * 3600 * 1000;

    let contacts = store::load_contacts(conn, members).await?;
    let addresses: Vec<Option<Result<String, Refusal>>> = contacts
        .iter()
        .map(|c| {
            c.as_ref()
                .map(|c| eligibility::address_hash(hasher, c, channel))
        })
        .collect();
    let hashes: Vec<String> = addresses
        .iter()
        .map(|a| match a {
            Some(Ok(h)) => h.clone(),
            _ => String::new(),
        })
        .collect();
    let mut lookups = redis::pipe();
    lookups.cmd("HMGET").arg(keys::SUPPRESSION).arg(&hashes);
    lookups
        .cmd("SMISMEMBER")
        .arg(keys::campaign_addresses(campaign_id))
        .arg(&hashes);
    for member in members {
        lookups.zcount(keys::frequency(member), window_start, "+inf");
    }
    let mut replies: Vec<redis::Value> = lookups.query_async(conn).await?;
    let counts: Vec<u32> = replies
        .split_off(2)
        .into_iter()
        .map(|v| redis::from_redis_value(&v).unwrap_or(0))
        .collect();
    let planned_flags: Vec<bool> = redis::from_redis_value(&replies[1])?;
    let suppression: Vec<Option<String>> = redis::from_redis_value(&replies[0])?;

    Ok(members
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let Some(contact) = &contacts[i] else {
                return Verdict::Refuse(Refusal {
                    reason: v1::Reason::Erased,
                    detail: "no profile for this member".to_owned(),
                });
            };
            let address = addresses[i].clone().unwrap_or_else(|| {
                Err(Refusal {
                    reason: v1::Reason::InvalidAddress,
                    detail: "no profile".to_owned(),
                })
            });
            let already = planned_flags.get(i).copied().unwrap_or(false)
                || (!hashes[i].is_empty() && !seen.insert(hashes[i].clone()));
            let facts = Facts {
                contact,
                suppression: suppression.get(i).and_then(|s| s.as_deref()),
                recent_messages: counts.get(i).copied().unwrap_or(0),
                frequency_cap: config.frequency_cap,
                already_planned: already,
            };
            match eligibility::decide(facts, channel, &address) {
                Ok(recipient) => {
                    let zone = recipient_zone(contact, &blast.time_zone, &config.default_time_zone);
                    match quiet.next_allowed(start, zone) {
                        Some(at) => Verdict::Plan {
                            address_hash: recipient.address_hash,
                            not_before_ms: millis(at),
                        },
                        None => Verdict::Refuse(Refusal {
                            reason: v1::Reason::Unspecified,
                            detail: "the campaign's quiet hours never open".to_owned(),
                        }),
                    }
                }
                Err(refusal) => Verdict::Refuse(refusal),
            }
        })
        .collect())
}

impl Planner {
    /// Looks for due campaigns and fans each out as far as it can.
    pub async fn fan_out_due(self: &Arc<Self>, now: DateTime<Utc>) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::DUE_CAMPAIGNS)
            .arg("-inf")
            .arg(millis(now))
            .arg("LIMIT")
            .arg(0)
            .arg(16)
            .query_async(&mut conn)
            .await?;
        for id in due {
            self.fan_out(&id).await?;
        }
        Ok(())
    }

    /// Takes (or renews) the campaign's lease. `false` when another instance holds it.
    async fn lease(&self, conn: &mut ConnectionManager, id: &str) -> Result<bool, PlanError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
                local holder = redis.call('GET', KEYS[1])
                if holder == false or holder == ARGV[1] then
                  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                  return 1
                end
                return 0
                ",
            )
        });
        let held: i32 = SCRIPT
            .key(keys::campaign_lease(id))
            .arg(&self.instance)
            .arg(self.config.lease_ms)
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }

    async fn fan_out(self: &Arc<Self>, id: &str) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        if !self.lease(&mut conn, id).await? {
            return Ok(());
        }
        let Some(mut campaign) = campaign::load(&mut conn, id).await? else {
            let _: () = conn.zrem(keys::DUE_CAMPAIGNS, id).await?;
            return Ok(());
        };
        match campaign.state {
            State::Scheduled => {
                // Only a scheduled campaign starts; a concurrent pause or cancel wins.
                let started: i32 = redis::Script::new(
                    "if redis.call('HGET', KEYS[1], 'state') == 'scheduled' then \
                     redis.call('HSET', KEYS[1], 'state', 'running') return 1 end return 0",
                )
                .key(keys::campaign(id))
                .invoke_async(&mut conn)
                .await?;
                if started == 0 {
                    return Ok(());
                }
                tracing::info!(campaign = id, "fan-out started");
            }
            State::Running => {}
            State::Paused => return Ok(()),
            State::Cancelled | State::Completed => {
                let _: () = conn.zrem(keys::DUE_CAMPAIGNS, id).await?;
                return Ok(());
            }
        }
        loop {
            if !self.lease(&mut conn, id).await? {
                return Ok(());
            }
            if campaign::state(&mut conn, id).await? != Some(State::Running) {
                return Ok(());
            }
            let from = match &campaign.cursor {
                Some(c) => format!("({c}"),
                None => "-".to_owned(),
            };
            let members: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(keys::segment(&campaign.blast.segment_id))
                .arg(&from)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(self.config.batch_size)
                .query_async(&mut conn)
                .await?;
            let Some(last) = members.last().cloned() else {
                redis::pipe()
                    .atomic()
                    .hset(keys::campaign(id), "fanned_out", "1")
                    .ignore()
                    .zrem(keys::DUE_CAMPAIGNS, id)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await?;
                tracing::info!(campaign = id, "fan-out finished");
                self.complete_if_done(&mut conn, id).await?;
                return Ok(());
            };
            self.plan_step(&mut conn, &campaign, &members, Utc::now())
                .await?;
            campaign.cursor = Some(last);
        }
    }

    async fn plan_step(
        &self,
        conn: &mut ConnectionManager,
        campaign: &Campaign,
        members: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        let blast = &campaign.blast;
        let channel = channel_of(blast);
        let channel_name = eligibility::channel_name(channel);
        let window_start =
            millis(now) - i64::from(self.config.frequency_window_days) * 24 * 3600 * 1000;
        let mut seen = HashSet::new();
        let verdicts = evaluate(
            conn,
            &self.hasher,
            &self.config,
            &campaign.id,
            blast,
            members,
            now,
            &mut seen,
        )
        .await?;

        // 3. Feedback for the refusals, acknowledged before the step is recorded.
        let trace = TraceContext::new_root();
        let refusals = members
            .iter()
            .zip(&verdicts)
            .filter_map(|(member, v)| match v {
                Verdict::Refuse(r) => Some((member, r)),
                Verdict::Plan { .. } => None,
            });
        try_join_all(refusals.clone().map(|(member, refusal)| {
            let feedback = v1::Feedback {
                meta: Some(v1::EventMeta {
                    event_id: format!("suppressed:{}:{member}", campaign.id),
                    occurred_at: Some(tocsin_contracts::timestamp_now()),
                    source: "planner".to_owned(),
                }),
                kind: v1::FeedbackKind::Suppressed.into(),
                contact_id: member.clone(),
                campaign_id: campaign.id.clone(),
                idempotency_key: idempotency_key(&campaign.id, member, channel),
                channel: channel.into(),
                reason: refusal.reason.into(),
                detail: refusal.detail.clone(),
                ..Default::default()
            };
            let producer = self.producer.clone();
            let topic = self.topics.feedback.name.clone();
            async move {
                let event_id = feedback
                    .meta
                    .as_ref()
                    .map(|m| m.event_id.clone())
                    .unwrap_or_default();
                producer
                    .publish(&topic, &feedback.contact_id, &event_id, &feedback, &trace)
                    .await
            }
        }))
        .await?;

        // 4. The step, atomically.
        let mut tx = redis::pipe();
        tx.atomic();
        let mut planned = 0i64;
        for (member, verdict) in members.iter().zip(&verdicts) {
            if let Verdict::Plan {
                address_hash,
                not_before_ms,
            } = verdict
            {
                planned += 1;
                tx.zadd(
                    keys::SCHEDULE,
                    keys::schedule_member(&campaign.id, member),
                    *not_before_ms,
                )
                .ignore();
                tx.sadd(keys::campaign_addresses(&campaign.id), address_hash)
                    .ignore();
                let fq = keys::frequency(member);
                tx.zadd(
                    &fq,
                    idempotency_key(&campaign.id, member, channel),
                    millis(now),
                )
                .ignore();
                tx.zrembyscore(&fq, "-inf", window_start).ignore();
                tx.pexpire(
                    &fq,
                    i64::from(self.config.frequency_window_days.max(1)) * 86_400_000,
                )
                .ignore();
            }
        }
        let counters = keys::campaign_counters(&campaign.id);
        if planned > 0 {
            tx.hincr(&counters, "planned", planned).ignore();
            self.metrics
                .planned
                .with_label_values(&[channel_name])
                .inc_by(planned as u64);
        }
        for (_, refusal) in refusals {
            let reason = reason_name(refusal.reason);
            tx.hincr(&counters, format!("suppressed.{reason}"), 1)
                .ignore();
            self.metrics
                .suppressed
                .with_label_values(&[channel_name, reason])
                .inc();
        }
        if let Some(last) = members.last() {
            tx.hset(keys::campaign(&campaign.id), "cursor", last)
                .ignore();
        }
        tx.query_async::<()>(conn).await?;
        Ok(())
    }

    /// Marks a running campaign completed once its fan-out is finished and every planned
    /// job has left the schedule (dispatched, expired, cancelled or dropped).
    pub async fn complete_if_done(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
    ) -> Result<(), PlanError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
                if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
                if not redis.call('HGET', KEYS[1], 'fanned_out') then return 0 end
                local n = function(f) return tonumber(redis.call('HGET', KEYS[2], f) or '0') end
                if n('planned') == n('dispatched') + n('expired') + n('dropped') then
                  redis.call('HSET', KEYS[1], 'state', 'completed')
                  redis.call('DEL', KEYS[3])
                  return 1
                end
                return 0
                ",
            )
        });
        let done: i32 = SCRIPT
            .key(keys::campaign(id))
            .key(keys::campaign_counters(id))
            .key(keys::campaign_addresses(id))
            .invoke_async(conn)
            .await?;
        if done == 1 {
            tracing::info!(campaign = id, "campaign completed");
        }
        Ok(())
    }
}

/// The low-cardinality name of a reason, for counters and metrics.
pub fn reason_name(reason: v1::Reason) -> &'static str {
    match reason {
        v1::Reason::SuppressionList => "suppression_list",
        v1::Reason::NoConsent => "no_consent",
        v1::Reason::InvalidAddress => "invalid_address",
        v1::Reason::FrequencyCap => "frequency_cap",
        v1::Reason::AlreadyPlanned => "already_planned",
        v1::Reason::Erased => "erased",
        v1::Reason::Unsubscribed => "unsubscribed",
        v1::Reason::Complained => "complained",
        v1::Reason::HardBounced => "hard_bounced",
        v1::Reason::RepeatedSoftBounces => "repeated_soft_bounces",
        _ => "other",
    }
}
