//! The durable schedule's dispatcher: due jobs become `SendJob`s on `tocsin.jobs`.
//!
//! Jobs wait in a Redis sorted set scored by their earliest send time, so a restart loses
//! none. A tick claims the due ones atomically (their score moves a claim period ahead, so
//! another instance does not take them too; a crashed instance's claims come due again),
//! re-checks each against the world as it is now, publishes, and removes what left.
//!
//! Re-checked at dispatch, because hours may have passed since planning: the campaign's
//! state (paused: held; cancelled: dropped), the profile (erased: dropped), the suppression
//! list, the expiry, and the quiet hours (a backlog reaching 20:01 waits for the morning).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use tocsin_bus::TraceContext;
use tocsin_contracts::v1;

use crate::campaign::{self, Campaign, State};
use crate::eligibility;
use crate::engine::{self, PlanError, Planner, millis, timestamp};
use crate::keys;
use crate::quiet_hours::QuietHours;
use crate::store;

/// How soon a held job (paused campaign) is looked at again.
const HOLD_MS: i64 = 2_000;

enum Action {
    Publish(v1::SendJob),
    /// Put back with this score.
    Hold(i64),
    /// Remove, with the feedback that says why.
    Drop(v1::Feedback, &'static str),
}

impl Planner {
    /// Publishes the jobs that are due. Returns how many were examined.
    pub async fn dispatch_due(self: &Arc<Self>, now: DateTime<Utc>) -> Result<usize, PlanError> {
        let mut conn = self.redis.clone();
        let now_ms = millis(now);
        let claimed = claim_due(
            &mut conn,
            keys::SCHEDULE,
            now_ms,
            self.config.batch_size,
            now_ms + i64::try_from(self.config.dispatch_claim_ms).unwrap_or(30_000),
        )
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }

        let mut campaigns: HashMap<String, Option<Campaign>> = HashMap::new();
        for (member, _) in &claimed {
            if let Some((campaign_id, _)) = keys::split_schedule_member(member)
                && !campaigns.contains_key(campaign_id)
            {
                let loaded = campaign::load(&mut conn, campaign_id).await?;
                campaigns.insert(campaign_id.to_owned(), loaded);
            }
        }
        let contact_ids: Vec<String> = claimed
            .iter()
            .map(|(m, _)| {
                keys::split_schedule_member(m)
                    .map(|(_, c)| c.to_owned())
                    .unwrap_or_default()
            })
            .collect();
        let contacts = store::load_contacts(&mut conn, &contact_ids).await?;
        let hashes: Vec<String> = claimed
            .iter()
            .zip(&contacts)
            .map(|((member, _), contact)| {
                let campaign = keys::split_schedule_member(member)
                    .and_then(|(k, _)| campaigns.get(k).and_then(Option::as_ref));
                match (campaign, contact) {
                    (Some(k), Some(c)) => {
                        eligibility::address_hash(&self.hasher, c, engine::channel_of(&k.blast))
                            .unwrap_or_default()
                    }
                    _ => String::new(),
                }
            })
            .collect();
        let suppression = store::suppression_reasons(&mut conn, &hashes).await?;

        let actions: Vec<Action> = claimed
            .iter()
            .enumerate()
            .map(|(i, (member, planned_ms))| {
                let (campaign_id, contact_id) =
                    keys::split_schedule_member(member).unwrap_or_default();
                let campaign = campaigns.get(campaign_id).and_then(Option::as_ref);
                self.decide(
                    campaign,
                    campaign_id,
                    contact_id,
                    contacts[i].as_ref(),
                    suppression.get(i).and_then(|s| s.as_deref()),
                    *planned_ms,
                    now,
                )
            })
            .collect();

        let trace = TraceContext::new_root();
        let sends = actions.iter().filter_map(|a| match a {
            Action::Publish(job) => Some((
                self.topics.jobs.name.as_str(),
                job.contact
                    .as_ref()
                    .map(|c| c.id.as_str())
                    .unwrap_or_default(),
                job.meta
                    .as_ref()
                    .map(|m| m.event_id.as_str())
                    .unwrap_or_default(),
                Outgoing::Job(job),
            )),
            Action::Drop(feedback, _) => Some((
                self.topics.feedback.name.as_str(),
                feedback.contact_id.as_str(),
                feedback
                    .meta
                    .as_ref()
                    .map(|m| m.event_id.as_str())
                    .unwrap_or_default(),
                Outgoing::Feedback(feedback),
            )),
            Action::Hold(_) => None,
        });
        try_join_all(sends.map(|(topic, key, event_id, event)| {
            let producer = self.producer.clone();
            async move {
                match event {
                    Outgoing::Job(job) => producer.publish(topic, key, event_id, job, &trace).await,
                    Outgoing::Feedback(f) => {
                        producer.publish(topic, key, event_id, f, &trace).await
                    }
                }
            }
        }))
        .await?;

        let mut tx = redis::pipe();
        let mut touched: Vec<&str> = Vec::new();
        for ((member, _), action) in claimed.iter().zip(&actions) {
            let campaign_id = keys::split_schedule_member(member)
                .map(|(k, _)| k)
                .unwrap_or_default();
            match action {
                Action::Publish(job) => {
                    remove_from_schedule(&mut tx, campaign_id, member, "dispatched");
                    let channel = v1::Channel::try_from(job.channel).unwrap_or_default();
                    self.metrics
                        .dispatched
                        .with_label_values(&[eligibility::channel_name(channel)])
                        .inc();
                }
                Action::Hold(score) => {
                    // XX: a job a cancel sweep took out meanwhile stays out.
                    tx.cmd("ZADD")
                        .arg(keys::SCHEDULE)
                        .arg("XX")
                        .arg(*score)
                        .arg(member)
                        .ignore();
                }
                Action::Drop(_, counter) => {
                    remove_from_schedule(&mut tx, campaign_id, member, counter);
                    if *counter == "expired" {
                        self.metrics.expired.inc();
                    }
                }
            }
            if !touched.contains(&campaign_id) {
                touched.push(campaign_id);
            }
        }
        tx.query_async::<()>(&mut conn).await?;
        for id in touched {
            self.complete_if_done(&mut conn, id).await?;
        }
        let waiting: i64 = redis::AsyncCommands::zcard(&mut conn, keys::SCHEDULE).await?;
        self.metrics.schedule_waiting.set(waiting);
        Ok(claimed.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        campaign: Option<&Campaign>,
        campaign_id: &str,
        contact_id: &str,
        contact: Option<&v1::Contact>,
        suppression: Option<&str>,
        planned_ms: i64,
        now: DateTime<Utc>,
    ) -> Action {
        let now_ms = millis(now);
        let give_up = |channel, kind, reason, detail, counter| {
            Action::Drop(
                self.feedback(campaign_id, contact_id, channel, kind, reason, detail),
                counter,
            )
        };
        let Some(campaign) = campaign else {
            return give_up(
                v1::Channel::Unspecified,
                v1::FeedbackKind::Cancelled,
                v1::Reason::Unspecified,
                "campaign no longer exists",
                "dropped",
            );
        };
        let channel = engine::channel_of(&campaign.blast);
        match campaign.state {
            State::Cancelled => {
                return give_up(
                    channel,
                    v1::FeedbackKind::Cancelled,
                    v1::Reason::Unspecified,
                    "campaign cancelled",
                    "dropped",
                );
            }
            State::Paused => return Action::Hold(now_ms + HOLD_MS),
            _ => {}
        }
        let Some(contact) = contact else {
            return give_up(
                channel,
                v1::FeedbackKind::Suppressed,
                v1::Reason::Erased,
                "profile erased before sending",
                "dropped",
            );
        };
        if let Some(entry) = suppression {
            let reason = if entry.starts_with("erased") {
                v1::Reason::Erased
            } else {
                v1::Reason::SuppressionList
            };
            return give_up(
                channel,
                v1::FeedbackKind::Suppressed,
                reason,
                "suppressed after planning",
                "dropped",
            );
        }
        let expiry_ms = campaign
            .blast
            .expiry
            .as_ref()
            .map(|d| d.seconds.saturating_mul(1000))
            .filter(|&ms| ms > 0)
            .unwrap_or(
                i64::try_from(self.config.default_expiry_s).unwrap_or(i64::MAX / 1000) * 1000,
            );
        let expires_ms = planned_ms.saturating_add(expiry_ms);
        if now_ms >= expires_ms {
            return give_up(
                channel,
                v1::FeedbackKind::Expired,
                v1::Reason::Unspecified,
                "could not leave before its expiry",
                "expired",
            );
        }
        let quiet = QuietHours::from_proto(campaign.blast.quiet_hours.as_ref(), channel)
            .unwrap_or_else(|_| QuietHours::default_for(channel));
        let zone = engine::recipient_zone(
            contact,
            &campaign.blast.time_zone,
            &self.config.default_time_zone,
        );
        match quiet.next_allowed(now, zone) {
            Some(at) if millis(at) > now_ms + 1000 => return Action::Hold(millis(at)),
            Some(_) => {}
            None => {
                return give_up(
                    channel,
                    v1::FeedbackKind::Expired,
                    v1::Reason::Unspecified,
                    "quiet hours never open",
                    "expired",
                );
            }
        }
        let key = engine::idempotency_key(campaign_id, contact_id, channel);
        Action::Publish(v1::SendJob {
            meta: Some(v1::EventMeta {
                event_id: format!("job:{key}"),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "planner".to_owned(),
            }),
            idempotency_key: key,
            campaign_id: campaign_id.to_owned(),
            channel: channel.into(),
            template_id: campaign.blast.template_id.clone(),
            template_version: campaign.blast.template_version,
            contact: Some(contact.clone()),
            not_before: Some(timestamp(planned_ms.max(now_ms))),
            expires_at: Some(timestamp(expires_ms)),
            sender_profile: campaign.blast.sender_profile.clone(),
            lane: v1::Lane::Bulk.into(),
            max_sms_parts: campaign.blast.max_sms_parts,
            tracking: campaign.blast.tracking,
            ..Default::default()
        })
    }

    pub(crate) fn feedback(
        &self,
        campaign_id: &str,
        contact_id: &str,
        channel: v1::Channel,
        kind: v1::FeedbackKind,
        reason: v1::Reason,
        detail: &str,
    ) -> v1::Feedback {
        v1::Feedback {
            meta: Some(v1::EventMeta {
                event_id: format!(
                    "{}:{campaign_id}:{contact_id}",
                    kind.as_str_name().to_ascii_lowercase()
                ),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "planner".to_owned(),
            }),
            kind: kind.into(),
            contact_id: contact_id.to_owned(),
            campaign_id: campaign_id.to_owned(),
            idempotency_key: engine::idempotency_key(campaign_id, contact_id, channel),
            channel: channel.into(),
            reason: reason.into(),
            detail: detail.to_owned(),
            ..Default::default()
        }
    }
}

/// Claims up to `limit` members of the sorted set `key` due at `now_ms`: their score moves
/// to `until_ms`, so that no other instance takes them meanwhile, and a crashed instance's
/// claims come due again then. Returns them with the score they had.
pub(crate) async fn claim_due(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    now_ms: i64,
    limit: usize,
    until_ms: i64,
) -> redis::RedisResult<Vec<(String, i64)>> {
    static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
            for i = 1, #due, 2 do
              redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i])
            end
            return due
            ",
        )
    });
    CLAIM
        .key(key)
        .arg(now_ms)
        .arg(limit)
        .arg(until_ms)
        .invoke_async(conn)
        .await
}

/// Adds to `pipe` the removal of a job from the schedule, counted under `counter` only if
/// this removal is the one that took it out (a cancel sweep and a dispatcher may race).
pub fn remove_from_schedule(
    pipe: &mut redis::Pipeline,
    campaign_id: &str,
    member: &str,
    counter: &str,
) {
    // EVAL (not EVALSHA): a pipeline cannot load a missing script; Redis caches it anyway.
    const SCRIPT: &str = "if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then \
                          redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end return 0";
    pipe.cmd("EVAL")
        .arg(SCRIPT)
        .arg(2)
        .arg(keys::SCHEDULE)
        .arg(keys::campaign_counters(campaign_id))
        .arg(member)
        .arg(counter)
        .ignore();
}

enum Outgoing<'a> {
    Job(&'a v1::SendJob),
    Feedback(&'a v1::Feedback),
}
