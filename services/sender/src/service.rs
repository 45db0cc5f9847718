//! The `tocsin.outbound.*` handler: one rendered message, at most one successful hand-off
//! to a provider, and exactly one final `Feedback` (repeated identically if the message is
//! redelivered).
//!
//! For each message:
//! 1. its campaign cancelled: `Feedback(cancelled)`; paused: wait (re-reading the state)
//!    until resumed, cancelled or expired;
//! 2. past its expiry: `Feedback(expired)`;
//! 3. attempts until one ends it: choose a provider ([`crate::routing`]), take a call
//!    slot (a bulk message one of the slots bulk may hold first), wait for its budget and
//!    the sender identity's, in its lane ([`crate::throttle`]), then claim the message in
//!    the ledger ([`crate::ledger`]) right before the call: already sent → re-emit
//!    `Feedback(sent)`, already ended → re-emit its feedback, claimed by a live instance →
//!    retry later (the consumer backs off); then send.
//!    - accepted: the ledger records it first (the end of the duplicate window), then
//!      `Feedback(sent)` with the provider, its message id and the attempt count;
//!    - transient: the claim is released, the circuit breaker counts it (a "slow down" lowers the provider's rate
//!      instead), then exponential backoff with full jitter (at least the provider's
//!      `Retry-After`), within the message's expiry and `max_attempts`;
//!    - permanent: `Feedback(bounced)` for a hard bounce, `Feedback(failed)` otherwise,
//!      and for an opt-out at the provider (Twilio 21610) also `Feedback(unsubscribed)`
//!      so that the planner suppresses the person.
//!
//! Waiting (pause, budget, backoff) happens inside the handler: other keys keep flowing
//! (the consumer runs up to `max_in_flight` messages at once) and offsets are still
//! committed in order. A shutdown during a wait gives the claim back and leaves the
//! message uncommitted, for whoever gets it next.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound, Producer, Topics, TraceContext};
use tocsin_contracts::{Timestamp, v1};
use tocsin_planner::campaign::{State, StateCache};
use tocsin_runtime::shutdown::CancellationToken;

use crate::config::{ChannelName, SenderConfig};
use crate::ledger::{Claim, Ledger};
use crate::metrics::SenderMetrics;
use crate::providers::{Outgoing, Permanent, SendError};
use crate::routing::{Router, Unavailable};
use crate::throttle::{Lane, Throttle};

/// A decoded outbound message.
#[derive(Debug, Clone)]
pub enum Rendered {
    Email(v1::RenderedEmail),
    Sms(v1::RenderedSms),
}

impl Rendered {
    pub fn outgoing(&self) -> Outgoing<'_> {
        match self {
            Rendered::Email(e) => Outgoing::Email(e),
            Rendered::Sms(s) => Outgoing::Sms(s),
        }
    }

    fn channel(&self) -> ChannelName {
        match self {
            Rendered::Email(_) => ChannelName::Email,
            Rendered::Sms(_) => ChannelName::Sms,
        }
    }

    /// The lane it travels on (from its origin; none is bulk).
    pub fn lane(&self) -> Lane {
        Lane::of(
            self.outgoing()
                .origin()
                .map_or(v1::Lane::Unspecified, v1::Origin::lane),
        )
    }

    /// What the provider counts: one message, or the SMS's parts.
    fn cost(&self) -> u32 {
        match self {
            Rendered::Email(_) => 1,
            Rendered::Sms(s) => s.parts.max(1),
        }
    }

    /// The sender identity whose own limit applies: the From address, the SMS sender.
    fn identity(&self) -> String {
        match self {
            Rendered::Email(e) => {
                let from = e.from.as_str();
                match (from.rfind('<'), from.rfind('>')) {
                    (Some(a), Some(b)) if a < b => from[a + 1..b].to_ascii_lowercase(),
                    _ => from.trim().to_ascii_lowercase(),
                }
            }
            Rendered::Sms(s) => s.from.clone(),
        }
    }
}

/// Everything the handler shares.
pub struct Sender {
    pub config: SenderConfig,
    pub router: Router,
    pub throttle: Throttle,
    pub ledger: Ledger,
    pub redis: ConnectionManager,
    pub states: StateCache,
    pub producer: Producer,
    pub topics: Topics,
    pub metrics: SenderMetrics,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sender({})", self.ledger.instance())
    }
}

fn millis(t: &Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

fn now_ms() -> i64 {
    millis(&tocsin_contracts::timestamp_now())
}

/// How a message ended, for its feedback and the ledger.
#[derive(Debug, Clone)]
struct Ending {
    kind: v1::FeedbackKind,
    reason: v1::Reason,
    detail: String,
    provider: String,
    provider_message_id: String,
    attempt: u32,
    bounce: v1::BounceClass,
    /// Whether the ledger keeps this ending (not for "no provider": a configuration
    /// mistake, and the message must send when replayed from the DLQ once fixed).
    record: bool,
}

impl Ending {
    fn new(kind: v1::FeedbackKind, reason: v1::Reason, detail: impl Into<String>) -> Self {
        Ending {
            kind,
            reason,
            detail: detail.into(),
            provider: String::new(),
            provider_message_id: String::new(),
            attempt: 0,
            bounce: v1::BounceClass::Unspecified,
            record: true,
        }
    }

    fn kind_name(&self) -> String {
        self.kind
            .as_str_name()
            .trim_start_matches("FEEDBACK_KIND_")
            .to_ascii_lowercase()
    }
}

/// The message could not be handled now; the consumer redelivers it later.
struct Retry(String);

impl Sender {
    fn feedback(&self, rendered: &Rendered, ending: &Ending) -> v1::Feedback {
        let origin = rendered.outgoing().origin().cloned().unwrap_or_default();
        v1::Feedback {
            meta: Some(v1::EventMeta {
                event_id: format!("sender:{}:{}", ending.kind_name(), origin.idempotency_key),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "sender".to_owned(),
            }),
            kind: ending.kind.into(),
            contact_id: origin.contact_id.clone(),
            campaign_id: origin.campaign_id.clone(),
            idempotency_key: origin.idempotency_key.clone(),
            channel: match rendered.channel() {
                ChannelName::Email => v1::Channel::Email,
                ChannelName::Sms => v1::Channel::Sms,
            }
            .into(),
            reason: ending.reason.into(),
            detail: ending.detail.clone(),
            provider: ending.provider.clone(),
            provider_message_id: ending.provider_message_id.clone(),
            attempt: ending.attempt,
            bounce_class: ending.bounce.into(),
            opt_out_scope: if ending.kind == v1::FeedbackKind::Unsubscribed {
                v1::OptOutScope::Channel.into()
            } else {
                v1::OptOutScope::Unspecified.into()
            },
            sequence_id: origin.sequence_id.clone(),
            enrolment_id: origin.enrolment_id.clone(),
            step: origin.step,
            ..Default::default()
        }
    }

    async fn publish(
        &self,
        rendered: &Rendered,
        ending: &Ending,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        let event = self.feedback(rendered, ending);
        let id = event
            .meta
            .as_ref()
            .map(|m| m.event_id.clone())
            .unwrap_or_default();
        self.producer
            .publish(
                &self.topics.feedback.name,
                &event.contact_id,
                &id,
                &event,
                trace,
            )
            .await
            .map_err(HandleError::transient)?;
        let outcome = match (ending.kind, ending.reason) {
            (v1::FeedbackKind::Unsubscribed, _) => return Ok(()),
            (v1::FeedbackKind::Failed, v1::Reason::RecipientOptedOut) => "opted_out",
            (v1::FeedbackKind::Failed, v1::Reason::NoProvider) => "no_provider",
            _ => &ending.kind_name(),
        };
        let provider = if ending.provider.is_empty() {
            "none"
        } else {
            ending.provider.as_str()
        };
        self.metrics
            .messages
            .with_label_values(&[
                provider,
                rendered.channel().as_str(),
                rendered.lane().label(),
                outcome,
            ])
            .inc();
        Ok(())
    }

    /// Ends a message: the ledger first (unless it was sent: `sent` is written at once
    /// after the provider's answer), then its feedback.
    async fn end(
        &self,
        rendered: &Rendered,
        ending: Ending,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        let key = rendered.outgoing().idempotency_key().to_owned();
        if ending.kind != v1::FeedbackKind::Sent && ending.record {
            let kind = ending.kind_name();
            let recorded = self
                .ledger
                .failed(
                    &key,
                    &crate::ledger::Ending {
                        kind: &kind,
                        reason: ending.reason.as_str_name(),
                        provider: &ending.provider,
                        hard_bounce: ending.bounce == v1::BounceClass::Hard,
                        detail: &ending.detail,
                    },
                )
                .await
                .map_err(HandleError::transient)?;
            // Another instance sent it, or ended it, or is sending it now: its outcome
            // is the message's, not this one.
            match recorded {
                None => {}
                Some(Claim::Busy { owner }) => {
                    return Err(HandleError::transient(format!(
                        "instance {owner} is sending it"
                    )));
                }
                Some(done) => return self.replay(rendered, done, trace).await,
            }
        }
        self.announce(rendered, &ending, trace).await
    }

    /// Publishes an ending, and for an opt-out at the provider the `unsubscribed` the
    /// planner needs too.
    async fn announce(
        &self,
        rendered: &Rendered,
        ending: &Ending,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        self.publish(rendered, ending, trace).await?;
        if ending.reason == v1::Reason::RecipientOptedOut
            && ending.kind != v1::FeedbackKind::Unsubscribed
        {
            let mut unsubscribed = Ending::new(
                v1::FeedbackKind::Unsubscribed,
                v1::Reason::RecipientOptedOut,
                ending.detail.clone(),
            );
            unsubscribed.provider = ending.provider.clone();
            self.publish(rendered, &unsubscribed, trace).await?;
        }
        Ok(())
    }

    /// Sleeps, unless the process is shutting down.
    async fn sleep(&self, how_long: Duration) -> Result<(), Retry> {
        tokio::select! {
            _ = tokio::time::sleep(how_long) => Ok(()),
            _ = self.shutdown.cancelled() => Err(Retry("shutting down".to_owned())),
        }
    }

    /// Holds a paused campaign's message; `Some` when the campaign ended it.
    async fn campaign_gate(&self, rendered: &Rendered) -> Result<Option<Ending>, Retry> {
        let Some(origin) = rendered.outgoing().origin() else {
            return Ok(None);
        };
        if origin.campaign_id.is_empty() {
            return Ok(None);
        }
        loop {
            let mut conn = self.redis.clone();
            let state = self
                .states
                .get(&mut conn, &origin.campaign_id)
                .await
                .map_err(|e| Retry(format!("campaign state: {e}")))?;
            match state {
                Some(State::Cancelled) => {
                    return Ok(Some(Ending::new(
                        v1::FeedbackKind::Cancelled,
                        v1::Reason::Unspecified,
                        "the campaign was cancelled before the message left",
                    )));
                }
                Some(State::Paused) => {
                    if self.expired(rendered) {
                        return Ok(None);
                    }
                    self.sleep(Duration::from_millis(
                        self.config.campaign_state_ttl_ms.max(200),
                    ))
                    .await?;
                }
                _ => return Ok(None),
            }
        }
    }

    fn expires_ms(rendered: &Rendered) -> Option<i64> {
        rendered
            .outgoing()
            .origin()
            .and_then(|o| o.expires_at.as_ref())
            .map(millis)
    }

    fn expired(&self, rendered: &Rendered) -> bool {
        Self::expires_ms(rendered).is_some_and(|at| at <= now_ms())
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .config
            .backoff_initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.config.backoff_max_ms);
        let jittered = Duration::from_millis(rand::rng().random_range(0..=exp.max(1)));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// Handles one message to its end (or to a [`Retry`]).
    pub async fn deliver(
        &self,
        rendered: &Rendered,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        match self.deliver_inner(rendered, trace).await {
            Ok(result) => result,
            Err(Retry(reason)) => {
                let key = rendered.outgoing().idempotency_key();
                // Best effort: a claim left behind only delays the next try by
                // `claim_stale_ms` (or until this instance's heartbeat lapses).
                let _ = self.ledger.release(key).await;
                Err(HandleError::transient(reason))
            }
        }
    }

    async fn deliver_inner(
        &self,
        rendered: &Rendered,
        trace: &TraceContext,
    ) -> Result<Result<(), HandleError>, Retry> {
        // A redelivered message that already ended: its outcome again, nothing sent, no
        // budget spent, whatever happened to its campaign or its expiry since.
        let key = rendered.outgoing().idempotency_key();
        if let Some(done) = self
            .ledger
            .peek(key)
            .await
            .map_err(|e| Retry(format!("ledger: {e}")))?
        {
            return Ok(self.replay(rendered, done, trace).await);
        }
        if let Some(ending) = self.campaign_gate(rendered).await? {
            return Ok(self.end(rendered, ending, trace).await);
        }
        if self.expired(rendered) {
            let ending = Ending::new(
                v1::FeedbackKind::Expired,
                v1::Reason::Unspecified,
                "reached the sender after its expiry",
            );
            return Ok(self.end(rendered, ending, trace).await);
        }
        self.attempts(rendered, trace).await
    }

    /// Publishes again the outcome the ledger recorded for a message.
    async fn replay(
        &self,
        rendered: &Rendered,
        record: Claim,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        let ending = match record {
            Claim::Sent {
                provider,
                provider_message_id,
                attempt,
            } => {
                let mut ending = Ending::new(
                    v1::FeedbackKind::Sent,
                    v1::Reason::Unspecified,
                    "already sent (redelivered message)",
                );
                ending.provider = provider;
                ending.provider_message_id = provider_message_id;
                ending.attempt = attempt;
                self.metrics
                    .messages
                    .with_label_values(&[
                        "none",
                        rendered.channel().as_str(),
                        rendered.lane().label(),
                        "already_sent",
                    ])
                    .inc();
                ending
            }
            Claim::Failed {
                kind,
                reason,
                provider,
                hard_bounce,
                detail,
            } => {
                let kind = v1::FeedbackKind::from_str_name(&format!(
                    "FEEDBACK_KIND_{}",
                    kind.to_ascii_uppercase()
                ))
                .unwrap_or(v1::FeedbackKind::Failed);
                let reason = v1::Reason::from_str_name(&reason).unwrap_or(v1::Reason::Unspecified);
                let mut ending = Ending::new(kind, reason, detail);
                ending.provider = provider;
                if hard_bounce {
                    ending.bounce = v1::BounceClass::Hard;
                }
                return self.announce(rendered, &ending, trace).await;
            }
            Claim::New | Claim::TakenOver { .. } | Claim::Busy { .. } => return Ok(()),
        };
        self.publish(rendered, &ending, trace).await
    }

    /// Claims the message right before a provider call. `Some` when the ledger says it
    /// already ended: its outcome is published again and nothing is sent.
    async fn claim(
        &self,
        rendered: &Rendered,
        trace: &TraceContext,
        possibly_sent: &mut bool,
    ) -> Result<Option<Result<(), HandleError>>, Retry> {
        let key = rendered.outgoing().idempotency_key();
        let claim = self
            .ledger
            .claim(key)
            .await
            .map_err(|e| Retry(format!("ledger: {e}")))?;
        match claim {
            Claim::New => Ok(None),
            Claim::TakenOver { previous } => {
                self.metrics.takeovers.inc();
                tracing::warn!(
                    previous,
                    "taking over a claim of a dead instance: this message may have been sent already"
                );
                *possibly_sent = true;
                Ok(None)
            }
            Claim::Busy { owner } => Err(Retry(format!("instance {owner} is sending it"))),
            done @ (Claim::Sent { .. } | Claim::Failed { .. }) => {
                Ok(Some(self.replay(rendered, done, trace).await))
            }
        }
    }

    async fn attempts(
        &self,
        rendered: &Rendered,
        trace: &TraceContext,
    ) -> Result<Result<(), HandleError>, Retry> {
        let mut possibly_sent = false;
        let key = rendered.outgoing().idempotency_key().to_owned();
        let profile = rendered
            .outgoing()
            .origin()
            .map(|o| o.sender_profile.clone())
            .unwrap_or_default();
        let channel = rendered.channel();
        let mut attempt = 0u32;
        let mut last_error = String::new();
        let mut last_provider = String::new();
        loop {
            if self.expired(rendered) {
                let mut ending = Ending::new(
                    v1::FeedbackKind::Expired,
                    v1::Reason::RetriesExhausted,
                    format!("expired after {attempt} attempts; last error: {last_error}"),
                );
                ending.attempt = attempt;
                ending.provider = last_provider;
                return Ok(self.end(rendered, ending, trace).await);
            }
            if attempt >= self.config.max_attempts {
                let mut ending = Ending::new(
                    v1::FeedbackKind::Failed,
                    v1::Reason::RetriesExhausted,
                    format!("gave up after {attempt} attempts; last error: {last_error}"),
                );
                ending.attempt = attempt;
                ending.provider = last_provider;
                return Ok(self.end(rendered, ending, trace).await);
            }
            let entry = match self.router.choose(channel, &profile) {
                Ok(entry) => entry,
                Err(Unavailable::NoRoute) => {
                    let mut ending = Ending::new(
                        v1::FeedbackKind::Failed,
                        v1::Reason::NoProvider,
                        format!(
                            "no provider is configured for {} (sender profile `{profile}`)",
                            channel.as_str()
                        ),
                    );
                    ending.record = false;
                    let ended = self.end(rendered, ending, trace).await;
                    // A configuration mistake: the message also goes to the DLQ, to be
                    // replayed once a route exists.
                    return Ok(ended.and(Err(HandleError::permanent(
                        "no_provider",
                        format!("no route for {} / {profile}", channel.as_str()),
                    ))));
                }
                Err(Unavailable::AllOpen(wait)) => {
                    self.sleep(wait).await?;
                    continue;
                }
            };
            let name = entry.name.clone();
            // A slot among the provider's calls in flight first (waiting for it must not
            // eat into a budget slot), then the budgets, then the claim: a crash while
            // waiting for a slot, a budget or a backoff leaves nothing to take over, and at
            // most `max_in_flight` claims per provider are ever open.
            // A bulk message first takes one of the slots bulk may hold, so that
            // `triggered_share` of them stay free for the triggered lane.
            let bulk_slot = match rendered.lane() {
                Lane::Bulk => Some(tokio::select! {
                    slot = entry.bulk_in_flight.acquire() => {
                        slot.map_err(|_| Retry("closing".into()))?
                    }
                    _ = self.shutdown.cancelled() => {
                        return Err(Retry("shutting down".into()));
                    }
                }),
                Lane::Triggered => None,
            };
            let slot = tokio::select! {
                slot = entry.in_flight.acquire() => slot.map_err(|_| Retry("closing".into()))?,
                _ = self.shutdown.cancelled() => return Err(Retry("shutting down".into())),
            };
            let slot = (slot, bulk_slot);
            let waited = self.wait_for_budgets(rendered, &entry).await?;
            self.metrics
                .throttle_wait
                .with_label_values(&[&name, rendered.lane().label()])
                .observe(waited.as_secs_f64());
            if self.expired(rendered) {
                continue;
            }
            if let Some(done) = self.claim(rendered, trace, &mut possibly_sent).await? {
                return Ok(done);
            }
            attempt += 1;
            let started = std::time::Instant::now();
            let result = entry.provider.send(rendered.outgoing()).await;
            self.metrics
                .latency
                .with_label_values(&[&name])
                .observe(started.elapsed().as_secs_f64());
            last_provider = name.clone();
            let result = match result {
                Ok(accepted) => {
                    // The end of the window: recorded before the slot is given back.
                    let recorded = self
                        .record_sent(&key, &name, &accepted.provider_message_id, attempt)
                        .await;
                    drop(slot);
                    if let Err(Retry(reason)) = recorded {
                        // Sent but not recorded: keep the claim (never release it), so
                        // that a redelivery is reported as possibly sent twice.
                        return Ok(Err(HandleError::transient(reason)));
                    }
                    Ok(accepted)
                }
                Err(error) => {
                    drop(slot);
                    Err(error)
                }
            };
            match result {
                Ok(accepted) => {
                    entry.breaker.success();
                    self.circuit_gauge(&entry);
                    self.metrics
                        .attempts
                        .with_label_values(&[&name, "accepted"])
                        .inc();
                    let mut ending = Ending::new(
                        v1::FeedbackKind::Sent,
                        v1::Reason::Unspecified,
                        if possibly_sent {
                            "possibly sent twice: taken over from an instance that died while sending"
                        } else {
                            ""
                        },
                    );
                    ending.provider = name;
                    ending.provider_message_id = accepted.provider_message_id;
                    ending.attempt = attempt;
                    return Ok(self.publish(rendered, &ending, trace).await);
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                    slow_down,
                }) => {
                    let why = if slow_down {
                        let factor = self
                            .throttle
                            .slow_down(&name, retry_after)
                            .await
                            .map_err(|e| Retry(format!("budget: {e}")))?;
                        tracing::info!(provider = %name, factor, "provider asked to slow down");
                        "slow_down"
                    } else {
                        if entry.breaker.failure() {
                            tracing::warn!(provider = %name, %reason, "circuit opened");
                        }
                        "transient"
                    };
                    self.circuit_gauge(&entry);
                    // Not sent: nothing to take over if this process dies while waiting.
                    self.ledger
                        .release(&key)
                        .await
                        .map_err(|e| Retry(format!("ledger: {e}")))?;
                    self.metrics.attempts.with_label_values(&[&name, why]).inc();
                    self.metrics.retries.with_label_values(&[&name, why]).inc();
                    last_error = reason;
                    let pause = self.backoff(attempt, retry_after);
                    let pause = match Self::expires_ms(rendered) {
                        Some(at) => {
                            pause.min(Duration::from_millis((at - now_ms()).max(0) as u64 + 1))
                        }
                        None => pause,
                    };
                    self.sleep(pause).await?;
                }
                Err(SendError::Permanent { reason, kind }) => {
                    entry.breaker.neutral();
                    self.metrics
                        .attempts
                        .with_label_values(&[&name, "permanent"])
                        .inc();
                    let mut ending = match kind {
                        Permanent::HardBounce => {
                            let mut e = Ending::new(
                                v1::FeedbackKind::Bounced,
                                v1::Reason::MailboxUnavailable,
                                reason,
                            );
                            e.bounce = v1::BounceClass::Hard;
                            e
                        }
                        Permanent::OptedOut => Ending::new(
                            v1::FeedbackKind::Failed,
                            v1::Reason::RecipientOptedOut,
                            reason,
                        ),
                        Permanent::Rejected => Ending::new(
                            v1::FeedbackKind::Failed,
                            v1::Reason::ProviderRejected,
                            reason,
                        ),
                    };
                    ending.provider = name;
                    ending.attempt = attempt;
                    return Ok(self.end(rendered, ending, trace).await);
                }
            }
        }
    }

    /// Waits for the provider's budget and the sender identity's at it, in the message's
    /// lane ([`Throttle::budgets`]). A reservation is only good on time:
    /// a task that wakes more than `(1 - headroom)` of a second after its slot (a busy
    /// machine) takes a new one, so that late sends never bunch up beyond the limit over
    /// any second. Returns the time spent waiting.
    async fn wait_for_budgets(
        &self,
        rendered: &Rendered,
        entry: &crate::routing::Entry,
    ) -> Result<Duration, Retry> {
        let started = std::time::Instant::now();
        let tolerance = Duration::from_secs_f64(
            ((1.0 - self.config.throttle.headroom) * 0.75).clamp(0.002, 0.2),
        );
        let cost = rendered.cost();
        let budgets = self.throttle.budgets(
            rendered.lane(),
            &[
                (entry.name.clone(), entry.rate),
                (
                    format!("{}:{}", entry.name, rendered.identity()),
                    entry.identity_rate,
                ),
            ],
        );
        for budget in &budgets {
            loop {
                let reservation = tokio::select! {
                    booked = self.throttle.book(budget, cost) => {
                        booked.map_err(|e| Retry(format!("budget: {e}")))?
                    }
                    _ = self.shutdown.cancelled() => {
                        return Err(Retry("shutting down".to_owned()));
                    }
                };
                if budget.scope == entry.name {
                    self.metrics
                        .rate_limit
                        .with_label_values(&[&entry.name])
                        .set(reservation.rate);
                }
                let due = std::time::Instant::now() + reservation.wait;
                if !reservation.wait.is_zero() {
                    self.sleep(reservation.wait).await?;
                }
                if std::time::Instant::now().saturating_duration_since(due) <= tolerance {
                    break;
                }
                self.metrics
                    .late_reservations
                    .with_label_values(&[&entry.name])
                    .inc();
            }
        }
        Ok(started.elapsed())
    }

    /// Writes `sent` to the ledger, insisting: until it is written, a redelivery would send
    /// the message again.
    async fn record_sent(
        &self,
        key: &str,
        provider: &str,
        provider_message_id: &str,
        attempt: u32,
    ) -> Result<(), Retry> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self
                .ledger
                .sent(key, provider, provider_message_id, attempt)
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::error!(%error, "cannot record a sent message in the ledger; retrying");
                    if self.shutdown.is_cancelled() {
                        return Err(Retry(format!("ledger: {error}")));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn circuit_gauge(&self, entry: &crate::routing::Entry) {
        self.metrics
            .circuit
            .with_label_values(&[&entry.name])
            .set(entry.breaker.state().gauge());
    }
}

/// The consumers' handler (both channels, both lanes): decodes by topic, then
/// [`Sender::deliver`].
#[derive(Debug, Clone)]
pub struct OutboundHandler {
    pub sender: Arc<Sender>,
}

impl Handler for OutboundHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let topics = &self.sender.topics;
        let topic = &*message.topic;
        let rendered =
            if topic == topics.outbound_sms.name || topic == topics.outbound_sms_triggered.name {
                Rendered::Sms(message.decode()?)
            } else {
                Rendered::Email(message.decode()?)
            };
        self.sender.deliver(&rendered, &message.trace()).await
    }
}
