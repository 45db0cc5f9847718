//! The handler of `tocsin.jobs` and `tocsin.jobs.triggered`: each job becomes a
//! `RenderedEmail` or `RenderedSms`, or a `Feedback` saying why not.
//!
//! The job's lane, not the topic it came from, chooses the outbound topic: a
//! `LANE_TRIGGERED` job (a sequence step, a test send) goes to
//! `tocsin.outbound.{email,sms}.triggered`, served first by the sender; any other to
//! `tocsin.outbound.{email,sms}`.
//!
//! In order, for each job:
//! 1. past its expiry: `Feedback(expired)`, nothing rendered;
//! 2. its campaign cancelled: `Feedback(cancelled)`, nothing rendered (the state is read
//!    from the planner's campaign record, cached for `campaign_state_ttl_ms`; a sequence
//!    step has no campaign and is not checked);
//! 3. the pinned template version, from the cache or Redis (then compiled, once);
//! 4. rendered: the message is published to its outbound topic and acknowledged before the
//!    job's offset may be committed; refused: `Feedback(failed, reason)`, and for a
//!    template or configuration mistake the job also goes to the dead-letter topic (the
//!    consumer does that when the handler returns a permanent error) while its partition
//!    moves on.
//!
//! Every event produced is derived from the job's idempotency key (event ids, Message-ID,
//! tokens), so a job handled twice after a crash produces the same events twice, which
//! downstream consumers recognise.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound, Producer, Topics, TraceContext};
use tocsin_contracts::v1;
use tocsin_planner::campaign::{State, StateCache};

use crate::compose::{Composer, Message, Refusal};
use crate::metrics::RendererMetrics;

pub struct JobsHandler {
    pub composer: Arc<Composer>,
    pub redis: ConnectionManager,
    pub producer: Producer,
    pub topics: Topics,
    pub metrics: RendererMetrics,
    pub states: StateCache,
}

impl std::fmt::Debug for JobsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobsHandler")
    }
}

fn channel_label(channel: v1::Channel) -> &'static str {
    match channel {
        v1::Channel::Sms => "sms",
        _ => "email",
    }
}

/// `bulk` or `triggered`: the metrics label of a lane. A job that names no lane is bulk
/// (only an explicit `LANE_TRIGGERED` is served first).
pub fn lane_label(lane: v1::Lane) -> &'static str {
    match lane {
        v1::Lane::Triggered => "triggered",
        v1::Lane::Bulk | v1::Lane::Unspecified => "bulk",
    }
}

/// The feedback the renderer gives for a job it did not render.
pub fn feedback(
    job: &v1::SendJob,
    kind: v1::FeedbackKind,
    reason: v1::Reason,
    detail: String,
) -> v1::Feedback {
    let kind_name = kind
        .as_str_name()
        .trim_start_matches("FEEDBACK_KIND_")
        .to_ascii_lowercase();
    v1::Feedback {
        meta: Some(v1::EventMeta {
            event_id: format!("renderer:{kind_name}:{}", job.idempotency_key),
            occurred_at: Some(tocsin_contracts::timestamp_now()),
            source: "renderer".to_owned(),
        }),
        kind: kind.into(),
        contact_id: job
            .contact
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        campaign_id: job.campaign_id.clone(),
        idempotency_key: job.idempotency_key.clone(),
        channel: job.channel,
        reason: reason.into(),
        detail,
        sequence_id: job.sequence_id.clone(),
        enrolment_id: job.enrolment_id.clone(),
        step: job.step,
        ..Default::default()
    }
}

impl JobsHandler {
    async fn publish_feedback(
        &self,
        feedback: v1::Feedback,
        trace: &TraceContext,
    ) -> Result<(), HandleError> {
        let event_id = feedback
            .meta
            .as_ref()
            .map(|m| m.event_id.clone())
            .unwrap_or_default();
        self.producer
            .publish(
                &self.topics.feedback.name,
                &feedback.contact_id,
                &event_id,
                &feedback,
                trace,
            )
            .await
            .map_err(HandleError::transient)?;
        Ok(())
    }

    async fn template(
        &self,
        job: &v1::SendJob,
    ) -> Result<Result<Arc<tocsin_templates::TemplateVersion>, Refusal>, HandleError> {
        if let Some(t) = self.composer.cached(&job.template_id, job.template_version) {
            return Ok(Ok(t));
        }
        let mut conn = self.redis.clone();
        let stored =
            tocsin_templates::store::get(&mut conn, &job.template_id, Some(job.template_version))
                .await
                .map_err(HandleError::transient)?;
        Ok(match stored {
            Some(t) => {
                self.metrics.template_loads.inc();
                self.composer.remember(t)
            }
            None => Err(Refusal::TemplateNotFound {
                id: job.template_id.clone(),
                version: job.template_version,
            }),
        })
    }
}

impl Handler for JobsHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let job: v1::SendJob = message.decode()?;
        let trace = message.trace();
        let channel = channel_label(job.channel());
        let lane = job.lane();
        let count = |outcome: &str| {
            self.metrics
                .renders
                .with_label_values(&[channel, lane_label(lane), outcome])
                .inc();
        };
        let (email_topic, sms_topic) = match lane {
            v1::Lane::Triggered => (
                &self.topics.outbound_email_triggered.name,
                &self.topics.outbound_sms_triggered.name,
            ),
            v1::Lane::Bulk | v1::Lane::Unspecified => (
                &self.topics.outbound_email.name,
                &self.topics.outbound_sms.name,
            ),
        };

        let now = tocsin_contracts::timestamp_now();
        if let Some(expires) = job.expires_at
            && (expires.seconds, expires.nanos) < (now.seconds, now.nanos)
        {
            let detail = format!(
                "reached the renderer after its expiry ({}s late)",
                now.seconds - expires.seconds
            );
            let event = feedback(
                &job,
                v1::FeedbackKind::Expired,
                v1::Reason::Unspecified,
                detail,
            );
            self.publish_feedback(event, &trace).await?;
            count("expired");
            return Ok(());
        }

        if !job.campaign_id.is_empty() {
            let mut conn = self.redis.clone();
            let state = self
                .states
                .get(&mut conn, &job.campaign_id)
                .await
                .map_err(HandleError::transient)?;
            if state == Some(State::Cancelled) {
                let event = feedback(
                    &job,
                    v1::FeedbackKind::Cancelled,
                    v1::Reason::Unspecified,
                    "the campaign was cancelled before the message was rendered".to_owned(),
                );
                self.publish_feedback(event, &trace).await?;
                count("cancelled");
                return Ok(());
            }
        }

        let started = Instant::now();
        let composed = match self.template(&job).await? {
            Ok(template) => self.composer.compose(&job, &template),
            Err(refusal) => Err(refusal),
        };
        self.metrics
            .duration
            .with_label_values(&[channel])
            .observe(started.elapsed().as_secs_f64());

        let key = job
            .contact
            .as_ref()
            .map(|c| c.id.as_str())
            .unwrap_or_default();
        match composed {
            Ok(Message::Email(email)) => {
                let event_id = email
                    .meta
                    .as_ref()
                    .map(|m| m.event_id.as_str())
                    .unwrap_or("");
                self.producer
                    .publish(email_topic, key, event_id, &email, &trace)
                    .await
                    .map_err(HandleError::transient)?;
                count("rendered");
                Ok(())
            }
            Ok(Message::Sms(sms)) => {
                let event_id = sms.meta.as_ref().map(|m| m.event_id.as_str()).unwrap_or("");
                self.producer
                    .publish(sms_topic, key, event_id, &sms, &trace)
                    .await
                    .map_err(HandleError::transient)?;
                let encoding = match sms.encoding() {
                    v1::SmsEncoding::Ucs2 => "ucs2",
                    _ => "gsm7",
                };
                self.metrics
                    .sms_parts
                    .with_label_values(&[encoding])
                    .inc_by(u64::from(sms.parts));
                count("rendered");
                Ok(())
            }
            Err(refusal) => {
                let event = feedback(
                    &job,
                    v1::FeedbackKind::Failed,
                    refusal.reason(),
                    refusal.to_string(),
                );
                self.publish_feedback(event, &trace).await?;
                count(refusal.class());
                tracing::warn!(
                    campaign = %job.campaign_id,
                    sequence = %job.sequence_id,
                    template = %job.template_id,
                    version = job.template_version,
                    class = refusal.class(),
                    "job refused: {refusal}"
                );
                if refusal.dead_letters() {
                    Err(HandleError::permanent(refusal.class(), refusal.to_string()))
                } else {
                    Ok(())
                }
            }
        }
    }
}
