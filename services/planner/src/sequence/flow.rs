//! Enrolments moving through their sequences: enrolled when a contact enters a trigger
//! segment, stepped by the sequence dispatcher, ended by a goal, a departure, an opt-out
//! or an erasure.
//!
//! A step at its due time, in this order (the first that applies wins):
//! 1. the sequence is retired, the profile erased, an exit condition holds: the enrolment
//!    exits;
//! 2. a `skip_if` condition holds: the step is skipped, the sequence goes on;
//! 3. too late (past its expiry): `Feedback(expired)`, the sequence goes on;
//! 4. suppression, consent, address, frequency cap ([`crate::eligibility`], as for a
//!    blast): `Feedback(suppressed)`, the sequence goes on;
//! 5. quiet hours closed: the enrolment waits for them to open;
//! 6. the `SendJob` is published on the triggered lane, *then* the enrolment advances
//!    (compare-and-set). A planner killed between the two publishes the same job again —
//!    same idempotency key (sequence, enrolment, step), so the sender's ledger sends it
//!    once — and never skips a step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tocsin_bus::{Producer, Topics, TraceContext};
use tocsin_contracts::v1;

use super::definition::{self, due_after, step_channel};
use super::ids::StepRef;
use super::store::{self, Change, Enrolment, Status};
use crate::config::PlannerConfig;
use crate::dispatch::claim_due;
use crate::eligibility::{self, Facts};
use crate::engine::{PlanError, millis, recipient_zone, timestamp};
use crate::keys;
use crate::metrics::PlannerMetrics;
use crate::store::{self as contacts, AddressHasher};

/// How often a compare-and-set is retried against a record that keeps changing.
const CAS_ATTEMPTS: usize = 8;

/// Versions are immutable: cached forever. The trigger and goal indexes change when a
/// sequence is defined or retired: cached for `refresh`.
pub struct Book {
    versions: Mutex<HashMap<(String, u32), Arc<v1::SequenceDefinition>>>,
    index: Mutex<Option<(Instant, Arc<Index>)>>,
    refresh: Duration,
}

/// Which sequences a segment triggers, and which it is a goal of.
#[derive(Debug, Default)]
pub struct Index {
    pub triggers: HashMap<String, Vec<String>>,
    pub goals: HashMap<String, Vec<String>>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Book")
    }
}

impl Book {
    pub fn new(refresh: Duration) -> Self {
        Book {
            versions: Mutex::new(HashMap::new()),
            index: Mutex::new(None),
            refresh,
        }
    }

    pub async fn definition(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        version: u32,
    ) -> redis::RedisResult<Option<Arc<v1::SequenceDefinition>>> {
        let key = (id.to_owned(), version);
        if let Some(d) = self.versions.lock().expect("book").get(&key) {
            return Ok(Some(d.clone()));
        }
        let Some(def) = store::load_version(conn, id, version).await? else {
            return Ok(None);
        };
        let def = Arc::new(def);
        self.versions.lock().expect("book").insert(key, def.clone());
        Ok(Some(def))
    }

    pub async fn index(&self, conn: &mut ConnectionManager) -> redis::RedisResult<Arc<Index>> {
        if let Some((at, index)) = self.index.lock().expect("book").as_ref()
            && at.elapsed() < self.refresh
        {
            return Ok(index.clone());
        }
        let split = |m: HashMap<String, String>| {
            m.into_iter()
                .map(|(seg, list)| (seg, list.split(',').map(str::to_owned).collect()))
                .collect()
        };
        let triggers: HashMap<String, String> = conn.hgetall(keys::SEQUENCE_TRIGGERS).await?;
        let goals: HashMap<String, String> = conn.hgetall(keys::SEQUENCE_GOALS).await?;
        let index = Arc::new(Index {
            triggers: split(triggers),
            goals: split(goals),
        });
        *self.index.lock().expect("book") = Some((Instant::now(), index.clone()));
        Ok(index)
    }
}

/// Everything sequences need, shared by the segment and feedback handlers and the
/// sequence dispatcher.
pub struct Sequences {
    pub redis: ConnectionManager,
    pub producer: Producer,
    pub topics: Topics,
    pub hasher: AddressHasher,
    pub config: PlannerConfig,
    pub metrics: PlannerMetrics,
    pub book: Book,
}

impl std::fmt::Debug for Sequences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sequences")
    }
}

/// What became of a due step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Skipped,
    Suppressed,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Skipped => "skipped",
            Outcome::Suppressed => "suppressed",
            Outcome::Expired => "expired",
        }
    }
}

impl Sequences {
    fn zone(&self, def: &v1::SequenceDefinition, contact: Option<&v1::Contact>) -> Tz {
        recipient_zone(
            contact.unwrap_or(&v1::Contact::default()),
            &def.time_zone,
            &self.config.default_time_zone,
        )
    }

    /// When `step` comes due, counted from `from`: its wait, its time of day, and the first
    /// moment its quiet hours allow (so that its expiry counts from when it may leave).
    fn due(&self, step: &v1::SequenceStep, from: DateTime<Utc>, zone: Tz) -> i64 {
        let after = due_after(step, from, zone);
        millis(
            definition::quiet_hours(step)
                .next_allowed(after, zone)
                .unwrap_or(after),
        )
    }

    /// A contact entered `segment`: with `enrol` (a real entry, not a repeated snapshot),
    /// enrols it in the sequences the segment triggers; ends the enrolments whose goal the
    /// segment is.
    pub async fn entered(
        &self,
        contact_id: &str,
        segment: &str,
        contact: Option<&v1::Contact>,
        enrol: bool,
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let index = self.book.index(&mut conn).await?;
        if enrol && let Some(ids) = index.triggers.get(segment) {
            for id in ids {
                self.enrol(&mut conn, id, contact_id, contact, now).await?;
            }
        }
        if let Some(ids) = index.goals.get(segment) {
            for id in ids {
                self.exit(&mut conn, id, contact_id, "goal", now, |def| {
                    def.exit
                        .as_ref()
                        .is_some_and(|e| e.goal_segment_ids.iter().any(|g| g == segment))
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Whether `segment` triggers a sequence (its entries must be marked for enrolment).
    pub async fn triggers(&self, segment: &str) -> Result<bool, PlanError> {
        let mut conn = self.redis.clone();
        let index = self.book.index(&mut conn).await?;
        Ok(index.triggers.contains_key(segment))
    }

    /// Whether the index names any sequence for `segment`, as trigger or goal.
    pub async fn concerns(&self, segment: &str) -> Result<bool, PlanError> {
        let mut conn = self.redis.clone();
        let index = self.book.index(&mut conn).await?;
        Ok(index.triggers.contains_key(segment) || index.goals.contains_key(segment))
    }

    /// A contact left `segment`: ends the enrolments that exit on leaving it.
    pub async fn left(
        &self,
        contact_id: &str,
        segment: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.hkeys(keys::enrolments(contact_id)).await?;
        for id in ids {
            self.exit(&mut conn, &id, contact_id, "left_trigger", now, |def| {
                def.trigger_segment_id == segment
                    && def.exit.as_ref().is_some_and(|e| e.on_leaving_trigger)
            })
            .await?;
        }
        Ok(())
    }

    /// The contact unsubscribed or complained: ends the enrolments that exit on it.
    pub async fn unsubscribed(
        &self,
        contact_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.hkeys(keys::enrolments(contact_id)).await?;
        for id in ids {
            self.exit(&mut conn, &id, contact_id, "unsubscribed", now, |def| {
                def.exit.as_ref().is_some_and(|e| e.on_unsubscribe)
            })
            .await?;
        }
        Ok(())
    }

    /// GDPR art. 17: every enrolment ends (counted in the funnels) and the records go.
    pub async fn erased(&self, contact_id: &str, now: DateTime<Utc>) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.hkeys(keys::enrolments(contact_id)).await?;
        for id in &ids {
            self.exit(&mut conn, id, contact_id, "erased", now, |_| true)
                .await?;
        }
        let mut pipe = redis::pipe();
        pipe.del(keys::enrolments(contact_id)).ignore();
        for id in &ids {
            pipe.zrem(
                keys::SEQUENCE_SCHEDULE,
                keys::schedule_member(id, contact_id),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The contact clicked a link of this step: remembered for `skip_if: clickedStep`.
    pub async fn clicked(&self, contact_id: &str, at: &StepRef) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        for _ in 0..CAS_ATTEMPTS {
            let raw = store::load_enrolment(&mut conn, &at.sequence_id, contact_id).await?;
            let Some(mut e) = raw.as_deref().and_then(Enrolment::decode) else {
                return Ok(());
            };
            if e.n != at.enrolment || e.clicked_step(at.step) || at.step > 64 {
                return Ok(());
            }
            e.clicked |= 1 << (at.step - 1);
            let change = Change {
                sequence_id: at.sequence_id.clone(),
                contact_id: contact_id.to_owned(),
                expected: raw,
                record: e.encode(),
                schedule_at: e.is_active().then_some(e.due_ms),
                ..Default::default()
            };
            if e.is_active() {
                // Keep the schedule's score as it is (a claim may have moved it): only the
                // record changes.
                if self.set_record_only(&mut conn, &change).await? {
                    return Ok(());
                }
            } else if change.apply(&mut conn).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn set_record_only(
        &self,
        conn: &mut ConnectionManager,
        change: &Change,
    ) -> redis::RedisResult<bool> {
        let applied: i32 = redis::Script::new(
            "if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end \
             redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1",
        )
        .key(keys::enrolments(&change.contact_id))
        .arg(&change.sequence_id)
        .arg(change.expected.as_deref().unwrap_or(""))
        .arg(&change.record)
        .invoke_async(conn)
        .await?;
        Ok(applied == 1)
    }

    /// Enrols the contact in sequence `id` unless it is running it now, or the re-entry
    /// policy refuses (once ever; or not `after_days` since the last enrolment ended).
    async fn enrol(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        contact_id: &str,
        contact: Option<&v1::Contact>,
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        for _ in 0..CAS_ATTEMPTS {
            let head = store::load_head(conn, id).await?;
            if head.current == 0 || head.retired.is_some() {
                return Ok(());
            }
            let Some(def) = self.book.definition(conn, id, head.current).await? else {
                return Ok(());
            };
            let raw = store::load_enrolment(conn, id, contact_id).await?;
            let previous = raw.as_deref().and_then(Enrolment::decode);
            if let Some(p) = &previous {
                let after_days = def.re_entry.as_ref().map_or(0, |r| r.after_days);
                let allowed_from = p
                    .ended_ms
                    .saturating_add(i64::from(after_days) * 86_400_000);
                if p.is_active() || after_days == 0 || millis(now) < allowed_from {
                    let _: () = conn
                        .hincr(keys::sequence_funnel(id), "reentry_refused", 1)
                        .await?;
                    return Ok(());
                }
            }
            let zone = self.zone(&def, contact);
            let due = self.due(&def.steps[0], now, zone);
            let e = Enrolment {
                n: previous.as_ref().map_or(1, |p| p.n + 1),
                version: head.current,
                step: 1,
                due_ms: due,
                status: Status::Active,
                started_ms: millis(now),
                ended_ms: 0,
                reason: String::new(),
                clicked: 0,
            };
            let change = Change {
                sequence_id: id.to_owned(),
                contact_id: contact_id.to_owned(),
                expected: raw,
                record: e.encode(),
                schedule_at: Some(due),
                counters: vec![("enrolled".into(), 1), ("at.1".into(), 1)],
                frequency: None,
            };
            if change.apply(conn).await? {
                self.metrics.sequence_enrolments.inc();
                tracing::debug!(sequence = id, enrolment = e.n, "contact enrolled");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Ends the contact's running enrolment in `id` with `reason`, when `applies` holds
    /// for the version it runs.
    async fn exit(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        contact_id: &str,
        reason: &str,
        now: DateTime<Utc>,
        applies: impl Fn(&v1::SequenceDefinition) -> bool,
    ) -> Result<bool, PlanError> {
        for _ in 0..CAS_ATTEMPTS {
            let raw = store::load_enrolment(conn, id, contact_id).await?;
            let Some(e) = raw.as_deref().and_then(Enrolment::decode) else {
                return Ok(false);
            };
            if !e.is_active() {
                return Ok(false);
            }
            let def = self.book.definition(conn, id, e.version).await?;
            if !def.as_deref().is_some_and(&applies) {
                return Ok(false);
            }
            if self.end(conn, id, contact_id, raw, e, reason, now).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)]
    async fn end(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        contact_id: &str,
        raw: Option<String>,
        mut e: Enrolment,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, PlanError> {
        let at = e.step;
        e.status = Status::Exited;
        e.ended_ms = millis(now);
        e.reason = reason.to_owned();
        let change = Change {
            sequence_id: id.to_owned(),
            contact_id: contact_id.to_owned(),
            expected: raw,
            record: e.encode(),
            schedule_at: None,
            counters: vec![(format!("at.{at}"), -1), (format!("exited.{reason}"), 1)],
            frequency: None,
        };
        let applied = change.apply(conn).await?;
        if applied {
            self.metrics
                .sequence_exits
                .with_label_values(&[exit_label(reason)])
                .inc();
            tracing::debug!(sequence = id, reason, "enrolment exited");
        }
        Ok(applied)
    }

    /// Runs the steps that are due. Returns how many enrolments were examined.
    pub async fn dispatch_due(&self, now: DateTime<Utc>) -> Result<usize, PlanError> {
        let mut conn = self.redis.clone();
        let now_ms = millis(now);
        let claimed = claim_due(
            &mut conn,
            keys::SEQUENCE_SCHEDULE,
            now_ms,
            self.config.batch_size,
            now_ms + i64::try_from(self.config.dispatch_claim_ms).unwrap_or(30_000),
        )
        .await?;
        let examined = claimed.len();
        let steps: Vec<_> = claimed
            .into_iter()
            .map(|(member, _)| self.run_member(member, now))
            .collect();
        let results: Vec<Result<(), PlanError>> = futures::stream::iter(steps)
            .buffer_unordered(32)
            .collect()
            .await;
        let waiting: i64 = conn.zcard(keys::SEQUENCE_SCHEDULE).await?;
        self.metrics.sequence_waiting.set(waiting);
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(examined)
    }

    async fn run_member(&self, member: String, now: DateTime<Utc>) -> Result<(), PlanError> {
        match keys::split_schedule_member(&member) {
            Some((id, contact_id)) => self.run_step(id, contact_id, now).await,
            None => Ok(()),
        }
    }

    async fn run_step(
        &self,
        id: &str,
        contact_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PlanError> {
        let mut conn = self.redis.clone();
        let member = keys::schedule_member(id, contact_id);
        let raw = store::load_enrolment(&mut conn, id, contact_id).await?;
        let Some(mut e) = raw
            .as_deref()
            .and_then(Enrolment::decode)
            .filter(Enrolment::is_active)
        else {
            // Ended meanwhile (an exit takes it out of the schedule too; this is a leftover).
            let _: () = conn.zrem(keys::SEQUENCE_SCHEDULE, &member).await?;
            return Ok(());
        };
        let head = store::load_head(&mut conn, id).await?;
        if e.version < head.migrate_floor && head.current > e.version {
            e.version = head.current;
        }
        let Some(def) = self.book.definition(&mut conn, id, e.version).await? else {
            self.end(&mut conn, id, contact_id, raw, e, "definition_missing", now)
                .await?;
            return Ok(());
        };
        if head.retired.is_some() {
            self.end(&mut conn, id, contact_id, raw, e, "retired", now)
                .await?;
            return Ok(());
        }
        let record = contacts::load_record(&mut conn, contact_id).await?;
        let Some((contact, segments)) = record.and_then(|r| Some((r.contact?, r.segments))) else {
            self.end(&mut conn, id, contact_id, raw, e, "erased", now)
                .await?;
            return Ok(());
        };
        let hashes = self.hasher.addresses(&contact);
        let suppression = contacts::suppression_reasons(&mut conn, &hashes).await?;
        let window_start = millis(now) - i64::from(self.config.frequency_window_days) * 86_400_000;
        let recent: u32 = conn
            .zcount(keys::frequency(contact_id), window_start, "+inf")
            .await?;
        let zone = self.zone(&def, Some(&contact));
        let facts = StepFacts {
            id,
            contact: &contact,
            segments: &segments,
            hashes: &hashes,
            suppression: &suppression,
            recent,
            zone,
            now,
        };
        let ctx = Advance {
            id,
            contact_id,
            seen: &e,
            def: &def,
            zone,
            now,
        };
        match self.decide(&e, &def, &facts) {
            Decision::Exit(reason) => {
                self.end(&mut conn, id, contact_id, raw, e.clone(), reason, now)
                    .await?;
            }
            Decision::Advance(outcome, feedback) => {
                if let Some(f) = feedback {
                    self.publish_feedback(&f).await?;
                }
                self.advance(&mut conn, &ctx, outcome, None).await?;
            }
            Decision::Hold(open_ms) => {
                // Closed: wait for the quiet hours to open (XX: an exit meanwhile keeps it
                // out).
                let _: () = redis::cmd("ZADD")
                    .arg(keys::SEQUENCE_SCHEDULE)
                    .arg("XX")
                    .arg(open_ms)
                    .arg(&member)
                    .query_async(&mut conn)
                    .await?;
            }
            Decision::Send(job) => {
                let key = job.idempotency_key.clone();
                self.producer
                    .publish(
                        &self.topics.jobs_triggered.name,
                        contact_id,
                        &format!("job:{key}"),
                        job.as_ref(),
                        &TraceContext::new_root(),
                    )
                    .await?;
                self.metrics
                    .dispatched
                    .with_label_values(&[eligibility::channel_name(job.channel())])
                    .inc();
                let window_ms = i64::from(self.config.frequency_window_days.max(1)) * 86_400_000;
                let frequency = (key, millis(now), millis(now) - window_ms, window_ms);
                self.advance(&mut conn, &ctx, Some(Outcome::Sent), Some(frequency))
                    .await?;
            }
        }
        Ok(())
    }

    /// What to do with the enrolment's due step (the order is the module's).
    fn decide(
        &self,
        e: &Enrolment,
        def: &v1::SequenceDefinition,
        facts: &StepFacts<'_>,
    ) -> Decision {
        let in_segment = |s: &str| facts.segments.iter().any(|m| m == s);
        let exit = def.exit.clone().unwrap_or_default();
        // An opt-out on any of the contact's addresses (an erased entry is someone else's
        // erasure of a shared number: the step's own suppression check handles it).
        let opted_out = facts
            .suppression
            .iter()
            .flatten()
            .any(|r| r.starts_with("unsubscribed") || r.starts_with("complained"));
        if exit.on_leaving_trigger && !in_segment(&def.trigger_segment_id) {
            return Decision::Exit("left_trigger");
        }
        if exit.goal_segment_ids.iter().any(|g| in_segment(g)) {
            return Decision::Exit("goal");
        }
        if exit.on_unsubscribe && opted_out {
            return Decision::Exit("unsubscribed");
        }
        let Some(step) = (e.step as usize)
            .checked_sub(1)
            .and_then(|i| def.steps.get(i))
        else {
            // A migration to a shorter version: nothing left to run.
            return Decision::Advance(None, None);
        };
        let at = StepRef {
            sequence_id: facts.id.to_owned(),
            enrolment: e.n,
            step: e.step,
        };
        let channel = step_channel(step);
        let key = at.idempotency_key(&facts.contact.id, channel);
        let skip = step.skip_if.iter().any(|c| match &c.condition {
            Some(v1::step_condition::Condition::ClickedStep(k)) => e.clicked_step(*k),
            Some(v1::step_condition::Condition::InSegment(s)) => in_segment(s),
            Some(v1::step_condition::Condition::NotInSegment(s)) => !in_segment(s),
            None => false,
        });
        if skip {
            return Decision::Advance(Some(Outcome::Skipped), None);
        }
        let feedback = |kind: v1::FeedbackKind, reason: v1::Reason, detail: &str| v1::Feedback {
            meta: Some(v1::EventMeta {
                event_id: format!("{}:{key}", kind.as_str_name().to_ascii_lowercase()),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "planner".to_owned(),
            }),
            kind: kind.into(),
            contact_id: facts.contact.id.clone(),
            idempotency_key: key.clone(),
            channel: channel.into(),
            reason: reason.into(),
            detail: detail.to_owned(),
            sequence_id: facts.id.to_owned(),
            enrolment_id: at.enrolment_id(),
            step: at.step,
            ..Default::default()
        };
        let expired = |detail: &str| {
            Decision::Advance(
                Some(Outcome::Expired),
                Some(Box::new(feedback(
                    v1::FeedbackKind::Expired,
                    v1::Reason::Unspecified,
                    detail,
                ))),
            )
        };
        let expiry_ms = def
            .expiry
            .as_ref()
            .map(|d| d.seconds.saturating_mul(1000))
            .filter(|&ms| ms > 0)
            .unwrap_or(i64::try_from(self.config.default_expiry_s).unwrap_or(21_600) * 1000);
        let expires_ms = e.due_ms.saturating_add(expiry_ms);
        let now_ms = millis(facts.now);
        if now_ms >= expires_ms {
            return expired("the step could not leave before its expiry");
        }

        let address = eligibility::address_hash(&self.hasher, facts.contact, channel);
        let channel_suppression = address.as_ref().ok().and_then(|h| {
            facts
                .hashes
                .iter()
                .position(|x| x == h)
                .and_then(|i| facts.suppression.get(i).cloned().flatten())
        });
        let verdict = eligibility::decide(
            Facts {
                contact: facts.contact,
                suppression: channel_suppression.as_deref(),
                recent_messages: facts.recent,
                frequency_cap: self.config.frequency_cap,
                already_planned: false,
            },
            channel,
            &address,
        );
        if let Err(refusal) = verdict {
            self.metrics
                .suppressed
                .with_label_values(&[
                    eligibility::channel_name(channel),
                    crate::engine::reason_name(refusal.reason),
                ])
                .inc();
            return Decision::Advance(
                Some(Outcome::Suppressed),
                Some(Box::new(feedback(
                    v1::FeedbackKind::Suppressed,
                    refusal.reason,
                    &refusal.detail,
                ))),
            );
        }
        match definition::quiet_hours(step).next_allowed(facts.now, facts.zone) {
            Some(open) if millis(open) > now_ms + 1000 => return Decision::Hold(millis(open)),
            Some(_) => {}
            None => return expired("the step's quiet hours never open"),
        }
        Decision::Send(Box::new(v1::SendJob {
            meta: Some(v1::EventMeta {
                event_id: format!("job:{key}"),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "planner".to_owned(),
            }),
            idempotency_key: key.clone(),
            campaign_id: String::new(),
            channel: channel.into(),
            template_id: step.template_id.clone(),
            template_version: step.template_version,
            contact: Some(facts.contact.clone()),
            not_before: Some(timestamp(now_ms)),
            expires_at: Some(timestamp(expires_ms)),
            sender_profile: def.sender_profile.clone(),
            lane: v1::Lane::Triggered.into(),
            max_sms_parts: step.max_sms_parts,
            tracking: def.tracking,
            sequence_id: facts.id.to_owned(),
            enrolment_id: at.enrolment_id(),
            step: at.step,
        }))
    }

    async fn publish_feedback(&self, f: &v1::Feedback) -> Result<(), PlanError> {
        let event_id = f
            .meta
            .as_ref()
            .map(|m| m.event_id.as_str())
            .unwrap_or_default();
        self.producer
            .publish(
                &self.topics.feedback.name,
                &f.contact_id,
                event_id,
                f,
                &TraceContext::new_root(),
            )
            .await?;
        Ok(())
    }

    /// Moves the enrolment past its current step: to the next one's due time, or to
    /// completed after the last. Recomputed from the stored record on a conflict (a click
    /// recorded meanwhile), abandoned if the enrolment ended or moved meanwhile.
    async fn advance(
        &self,
        conn: &mut ConnectionManager,
        ctx: &Advance<'_>,
        outcome: Option<Outcome>,
        frequency: Option<(String, i64, i64, i64)>,
    ) -> Result<(), PlanError> {
        let Advance {
            id,
            contact_id,
            seen,
            def,
            zone,
            now,
        } = *ctx;
        let done = seen.step;
        if let Some(o) = outcome {
            let channel = (done as usize)
                .checked_sub(1)
                .and_then(|i| def.steps.get(i))
                .map(step_channel)
                .unwrap_or_default();
            self.metrics
                .sequence_steps
                .with_label_values(&[eligibility::channel_name(channel), o.as_str()])
                .inc();
        }
        for _ in 0..CAS_ATTEMPTS {
            let raw = store::load_enrolment(conn, id, contact_id).await?;
            let Some(mut e) = raw.as_deref().and_then(Enrolment::decode) else {
                return Ok(());
            };
            if !e.is_active() || e.n != seen.n || e.step != done {
                return Ok(());
            }
            e.version = seen.version;
            let mut counters = vec![(format!("at.{done}"), -1)];
            if let Some(o) = outcome {
                counters.push((format!("step.{done}.{}", o.as_str()), 1));
            }
            let next = done + 1;
            let schedule_at = match def.steps.get(done as usize) {
                Some(step) => {
                    e.step = next;
                    e.due_ms = self.due(step, now, zone);
                    counters.push((format!("at.{next}"), 1));
                    Some(e.due_ms)
                }
                None => {
                    e.step = next;
                    e.status = Status::Completed;
                    e.ended_ms = millis(now);
                    counters.push(("completed".to_owned(), 1));
                    None
                }
            };
            let change = Change {
                sequence_id: id.to_owned(),
                contact_id: contact_id.to_owned(),
                expected: raw,
                record: e.encode(),
                schedule_at,
                counters,
                frequency: frequency.clone(),
            };
            if change.apply(conn).await? {
                return Ok(());
            }
        }
        tracing::warn!(
            sequence = id,
            "enrolment kept changing; its step will be looked at again"
        );
        Ok(())
    }
}

/// What the dispatcher knows of the contact when a step comes due.
struct StepFacts<'a> {
    id: &'a str,
    contact: &'a v1::Contact,
    segments: &'a [String],
    /// The contact's address hashes and their suppression entries, in the same order.
    hashes: &'a [String],
    suppression: &'a [Option<String>],
    /// Messages within the frequency cap's window.
    recent: u32,
    zone: Tz,
    now: DateTime<Utc>,
}

/// The enrolment being moved on, as it was read.
#[derive(Clone, Copy)]
struct Advance<'a> {
    id: &'a str,
    contact_id: &'a str,
    seen: &'a Enrolment,
    def: &'a v1::SequenceDefinition,
    zone: Tz,
    now: DateTime<Utc>,
}

/// A due step's fate.
enum Decision {
    Exit(&'static str),
    /// The step does not send (skipped, refused, expired): the feedback that says why,
    /// then the next step.
    Advance(Option<Outcome>, Option<Box<v1::Feedback>>),
    /// Quiet hours: come back at this moment (ms).
    Hold(i64),
    Send(Box<v1::SendJob>),
}

/// Exit reasons as metric labels (a closed set).
fn exit_label(reason: &str) -> &'static str {
    match reason {
        "left_trigger" => "left_trigger",
        "goal" => "goal",
        "unsubscribed" => "unsubscribed",
        "erased" => "erased",
        "retired" => "retired",
        _ => "other",
    }
}
