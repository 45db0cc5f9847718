//! `/v1/campaigns`: schedule, list, read, pause, resume, cancel, dry run.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tocsin_bus::TraceContext;
use tocsin_contracts::v1;
use tocsin_planner::campaign::{self, Campaign, Command, Transition};
use tocsin_planner::engine::{self, Verdict};
use tocsin_planner::keys;
use tocsin_planner::quiet_hours::QuietHours;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};

/// A blast to schedule: this segment, this template, this channel, at this time.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CampaignRequest {
    /// Letters, digits, `.`, `_`, `:`, `-`; generated when absent.
    pub id: Option<String>,
    pub name: String,
    /// An existing segment id.
    pub segment: String,
    pub channel: Channel,
    /// Template id.
    pub template: String,
    /// Template version to use; 0 or absent means the latest at scheduling.
    #[serde(default)]
    pub template_version: u32,
    /// RFC 3339 with an offset (`2026-12-04T18:00:00+01:00`), or `now`.
    pub start_at: String,
    /// IANA time zone for recipients who have none; defaults to the planner's.
    pub time_zone: Option<String>,
    /// Absent: the channel's default (SMS: Monday-Saturday 08:00-20:00, no public
    /// holidays; e-mail: none).
    pub quiet_hours: Option<QuietHoursRequest>,
    /// How long after its planned time a message may still leave: `90m`, `6h`, `1d`.
    pub expiry: Option<String>,
    /// Sender identity (From, SMS sender id, legal footer).
    pub sender_profile: String,
    /// SMS only: most parts a message may take (1-10); default 3.
    pub max_sms_parts: Option<u32>,
    #[serde(default)]
    pub tracking: Tracking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracking {
    #[serde(default)]
    pub open_pixel: bool,
    #[serde(default)]
    pub click_rewriting: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuietHoursRequest {
    /// No restriction at all.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub windows: Vec<WindowRequest>,
    #[serde(default)]
    pub skip_french_public_holidays: bool,
}

/// Sending allowed on these ISO weekdays (1 = Monday) between `start` and `end`, local time.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowRequest {
    pub days: Vec<u32>,
    /// `HH:MM`
    pub start: String,
    /// `HH:MM` (`24:00` for midnight at the end of the day)
    pub end: String,
}

/// A campaign as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub segment: String,
    pub channel: Channel,
    pub template: String,
    pub template_version: u32,
    /// scheduled, running, paused, completed or cancelled.
    pub state: String,
    pub start_at: Option<String>,
    pub time_zone: String,
    pub requested_by: String,
    pub created_at: Option<String>,
    pub counters: Counters,
}

/// Live counters.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Recipients put in the schedule.
    pub planned: i64,
    /// Jobs published to the renderer.
    pub dispatched: i64,
    /// Jobs that could not leave before their expiry.
    pub expired: i64,
    /// Jobs dropped at dispatch (cancelled campaign, erased or suppressed since planning).
    pub dropped: i64,
    /// Recipients not messaged, by reason.
    pub suppressed: BTreeMap<String, i64>,
    /// What happened after the messages left, from `tocsin.feedback`: each recipient
    /// counts once per outcome, however many times an event arrives or a person opens.
    pub outcomes: Outcomes,
    /// Outcomes over messages sent; absent until something was sent.
    pub rates: Rates,
}

/// Recipients per outcome.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcomes {
    /// Accepted by a provider.
    pub sent: i64,
    pub delivered: i64,
    /// Hard bounces (and bounces of unknown class).
    pub bounced: i64,
    pub soft_bounced: i64,
    /// Ended without being sent (the reason is in each feedback event).
    pub failed: i64,
    pub expired: i64,
    pub cancelled: i64,
    pub deferred: i64,
    /// Opens and clicks by people; machines (privacy proxies, link scanners) apart.
    pub unique_opens: i64,
    pub unique_clicks: i64,
    pub machine_opens: i64,
    pub machine_clicks: i64,
    pub unsubscribed: i64,
    pub complained: i64,
}

/// Fractions of the messages sent.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub delivery: Option<f64>,
    pub bounce: Option<f64>,
    pub open: Option<f64>,
    pub click: Option<f64>,
    pub unsubscribe: Option<f64>,
    pub complaint: Option<f64>,
}

impl Outcomes {
    fn set(&mut self, name: &str, v: i64) {
        let field = match name {
            "sent" => &mut self.sent,
            "delivered" => &mut self.delivered,
            "bounced" => &mut self.bounced,
            "soft_bounced" => &mut self.soft_bounced,
            "failed" => &mut self.failed,
            "expired" => &mut self.expired,
            "cancelled" => &mut self.cancelled,
            "deferred" => &mut self.deferred,
            "unique_opens" => &mut self.unique_opens,
            "unique_clicks" => &mut self.unique_clicks,
            "machine_opens" => &mut self.machine_opens,
            "machine_clicks" => &mut self.machine_clicks,
            "unsubscribed" => &mut self.unsubscribed,
            "complained" => &mut self.complained,
            _ => return,
        };
        *field = v;
    }

    fn rates(&self) -> Rates {
        let over_sent = |n: i64| (self.sent > 0).then(|| n as f64 / self.sent as f64);
        Rates {
            delivery: over_sent(self.delivered),
            bounce: over_sent(self.bounced + self.soft_bounced),
            open: over_sent(self.unique_opens),
            click: over_sent(self.unique_clicks),
            unsubscribe: over_sent(self.unsubscribed),
            complaint: over_sent(self.complained),
        }
    }
}

/// What a dry run found.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// Members of the segment.
    pub audience: usize,
    /// Would receive the message.
    pub eligible: usize,
    /// Of the eligible, how many would wait for their quiet hours to end.
    pub waiting_for_quiet_hours: usize,
    pub suppressed: BTreeMap<String, usize>,
}

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(field, e.inner().to_string())
    })
}

pub(crate) fn identifier(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

fn minutes(field: &str, hhmm: &str) -> Result<u32, ApiError> {
    let bad = || ApiError::invalid(field, format!("{hhmm:?} is not a time of day HH:MM"));
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `90m`, `6h`, `1d`, `3600s`.
pub fn parse_duration(field: &str, text: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            format!("{text:?} is not a duration like 90m, 6h or 1d"),
        )
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    if !(60..=7 * 86_400).contains(&seconds) {
        return Err(ApiError::invalid(
            field,
            "must be between 1 minute and 7 days",
        ));
    }
    Ok(seconds)
}

impl CampaignRequest {
    /// Checks every field and builds the blast. Names the first field at fault.
    pub fn validate(
        &self,
        default_zone: &str,
        default_expiry_s: u64,
        now: DateTime<Utc>,
    ) -> Result<v1::ScheduleBlast, ApiError> {
        if let Some(id) = &self.id {
            identifier("id", id)?;
        }
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
        }
        identifier("segment", &self.segment)?;
        identifier("template", &self.template)?;
        identifier("senderProfile", &self.sender_profile)?;
        let channel = match self.channel {
            Channel::Email => v1::Channel::Email,
            Channel::Sms => v1::Channel::Sms,
        };
        let start = if self.start_at.trim() == "now" {
            now
        } else {
            DateTime::parse_from_rfc3339(self.start_at.trim())
                .map_err(|e| {
                    ApiError::invalid(
                        "startAt",
                        format!("must be RFC 3339 with an offset or \"now\": {e}"),
                    )
                })?
                .with_timezone(&Utc)
        };
        if start < now - chrono::Duration::minutes(5) {
            return Err(ApiError::invalid("startAt", "is in the past"));
        }
        if start > now + chrono::Duration::days(366) {
            return Err(ApiError::invalid("startAt", "is more than a year ahead"));
        }
        let zone = self
            .time_zone
            .clone()
            .unwrap_or_else(|| default_zone.to_owned());
        zone.parse::<Tz>().map_err(|_| {
            ApiError::invalid("timeZone", format!("{zone:?} is not an IANA time zone"))
        })?;
        let quiet_hours = self
            .quiet_hours
            .as_ref()
            .map(|q| quiet_hours("quietHours", q, channel))
            .transpose()?;
        let expiry = match &self.expiry {
            Some(text) => parse_duration("expiry", text)?,
            None => i64::try_from(default_expiry_s).unwrap_or(21_600),
        };
        let max_sms_parts = match (self.channel, self.max_sms_parts) {
            (Channel::Email, Some(_)) => {
                return Err(ApiError::invalid(
                    "maxSmsParts",
                    "applies to SMS campaigns only",
                ));
            }
            (Channel::Sms, Some(n)) if !(1..=10).contains(&n) => {
                return Err(ApiError::invalid("maxSmsParts", "must be between 1 and 10"));
            }
            (Channel::Sms, n) => n.unwrap_or(3),
            (Channel::Email, None) => 0,
        };
        Ok(v1::ScheduleBlast {
            name: self.name.trim().to_owned(),
            segment_id: self.segment.clone(),
            channel: channel.into(),
            template_id: self.template.clone(),
            template_version: self.template_version,
            start_at: Some(engine::timestamp(start.timestamp_millis())),
            time_zone: zone,
            quiet_hours,
            expiry: Some(tocsin_contracts::Duration {
                seconds: expiry,
                nanos: 0,
            }),
            sender_profile: self.sender_profile.clone(),
            max_sms_parts,
            tracking: Some(v1::TrackingOptions {
                open_pixel: self.tracking.open_pixel,
                click_rewriting: self.tracking.click_rewriting,
            }),
        })
    }
}

/// A quiet-hours request as the wire format has it, checked (`field` prefixes the error's
/// field name).
pub(crate) fn quiet_hours(
    field: &str,
    q: &QuietHoursRequest,
    channel: v1::Channel,
) -> Result<v1::QuietHours, ApiError> {
    let mut windows = Vec::new();
    for (i, w) in q.windows.iter().enumerate() {
        let start = minutes(&format!("{field}.windows[{i}].start"), &w.start)?;
        let end = minutes(&format!("{field}.windows[{i}].end"), &w.end)?;
        if w.days.is_empty() {
            return Err(ApiError::invalid(
                format!("{field}.windows[{i}].days"),
                "names no day",
            ));
        }
        for &day in &w.days {
            windows.push(v1::SendingWindow {
                iso_weekday: day,
                start_minute: start,
                end_minute: end,
            });
        }
    }
    let policy = v1::QuietHours {
        disabled: q.disabled,
        windows,
        skip_french_public_holidays: q.skip_french_public_holidays,
    };
    QuietHours::from_proto(Some(&policy), channel)
        .map_err(|e| ApiError::invalid(field, e.to_string()))?;
    Ok(policy)
}

async fn segment_exists(state: &AppState, segment: &str) -> Result<(), ApiError> {
    let mut conn = state.redis.clone();
    let score: Option<f64> = conn.zscore(keys::SEGMENTS, segment).await?;
    match score {
        Some(_) => Ok(()),
        None => Err(ApiError::invalid(
            "segment",
            format!("unknown segment {segment:?}"),
        )),
    }
}

/// The template must exist (and not be deleted), at the requested version (0: the latest,
/// which the campaign then keeps even if the template is edited), for the campaign's
/// channel.
async fn pin_template(state: &AppState, blast: &v1::ScheduleBlast) -> Result<u32, ApiError> {
    pin(
        state,
        ("template", "templateVersion"),
        &blast.template_id,
        blast.template_version,
        engine::channel_of(blast),
    )
    .await
}

/// The version of template `id` to keep: `version`, or the latest when 0. Refused (naming
/// `fields`) when it does not exist, is deleted, or is for another channel.
pub(crate) async fn pin(
    state: &AppState,
    fields: (&str, &str),
    id: &str,
    version: u32,
    channel: v1::Channel,
) -> Result<u32, ApiError> {
    let mut conn = state.redis.clone();
    let wanted = (version > 0).then_some(version);
    let Some(template) = tocsin_templates::store::get_live(&mut conn, id, wanted).await? else {
        let known = tocsin_templates::store::get_live(&mut conn, id, None)
            .await?
            .is_some();
        return Err(match wanted {
            Some(v) if known => {
                ApiError::invalid(fields.1, format!("template {id:?} has no version {v}"))
            }
            _ => ApiError::invalid(fields.0, format!("unknown template {id:?}")),
        });
    };
    let channel_matches = matches!(
        (template.draft.channel, channel),
        (tocsin_templates::Channel::Email, v1::Channel::Email)
            | (tocsin_templates::Channel::Sms, v1::Channel::Sms)
    );
    if !channel_matches {
        return Err(ApiError::invalid(
            fields.0,
            format!("template {id:?} is not for this channel"),
        ));
    }
    Ok(template.version)
}

fn format_ms(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

async fn view(state: &AppState, campaign: Campaign) -> Result<CampaignView, ApiError> {
    let mut conn = state.redis.clone();
    let raw: BTreeMap<String, i64> = conn.hgetall(keys::campaign_counters(&campaign.id)).await?;
    let mut counters = Counters::default();
    for (k, v) in raw {
        match k.as_str() {
            "planned" => counters.planned = v,
            "dispatched" => counters.dispatched = v,
            "expired" => counters.expired = v,
            "dropped" => counters.dropped = v,
            other => {
                if let Some(reason) = other.strip_prefix("suppressed.") {
                    counters.suppressed.insert(reason.to_owned(), v);
                } else if let Some(outcome) = other.strip_prefix("fb.") {
                    counters.outcomes.set(outcome, v);
                }
            }
        }
    }
    counters.rates = counters.outcomes.rates();
    let blast = &campaign.blast;
    Ok(CampaignView {
        id: campaign.id.clone(),
        name: blast.name.clone(),
        segment: blast.segment_id.clone(),
        channel: if engine::channel_of(blast) == v1::Channel::Sms {
            Channel::Sms
        } else {
            Channel::Email
        },
        template: blast.template_id.clone(),
        template_version: blast.template_version,
        state: campaign.state.as_str().to_owned(),
        start_at: blast
            .start_at
            .as_ref()
            .and_then(|t| format_ms(t.seconds * 1000)),
        time_zone: blast.time_zone.clone(),
        requested_by: campaign.requested_by.clone(),
        created_at: format_ms(campaign.created_ms),
        counters,
    })
}

/// What a command is about: its Kafka key and the id field it fills.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Campaign(&'a str),
    Sequence(&'a str),
}

pub(crate) async fn publish(
    state: &AppState,
    target: Target<'_>,
    who: &str,
    command: v1::campaign_command::Command,
) -> Result<(), ApiError> {
    let (campaign_id, sequence_id, id) = match target {
        Target::Campaign(id) => (id, "", id),
        Target::Sequence(id) => ("", id, id),
    };
    let event_id = uuid::Uuid::now_v7().to_string();
    let event = v1::CampaignCommand {
        meta: Some(v1::EventMeta {
            event_id: event_id.clone(),
            occurred_at: Some(tocsin_contracts::timestamp_now()),
            source: "api".to_owned(),
        }),
        campaign_id: campaign_id.to_owned(),
        sequence_id: sequence_id.to_owned(),
        requested_by: who.to_owned(),
        command: Some(command),
    };
    state
        .producer
        .publish(
            &state.config.kafka.topics.campaigns.name,
            id,
            &event_id,
            &event,
            &TraceContext::new_root(),
        )
        .await?;
    Ok(())
}

/// Schedule a blast.
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns",
    request_body = CampaignRequest,
    responses(
        (status = 201, body = CampaignView, description = "Scheduled"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A campaign with this id exists"),
        (status = 422, body = ErrorBody, description = "A field is invalid; `field` names it"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    caller.require(Role::Operator, "schedule campaigns")?;
    let request: CampaignRequest = parse_body(&body)?;
    let now = Utc::now();
    let planner = &state.config.planner;
    let mut blast = request.validate(&planner.default_time_zone, planner.default_expiry_s, now)?;
    segment_exists(&state, &blast.segment_id).await?;
    blast.template_version = pin_template(&state, &blast).await?;
    let id = request
        .id
        .clone()
        .unwrap_or_else(|| format!("cmp-{}", uuid::Uuid::now_v7().simple()));
    let mut conn = state.redis.clone();
    if campaign::load(&mut conn, &id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "campaign {id:?} already exists"
        )));
    }
    // The command first: if Redis fails after it, the planner still creates the campaign
    // from the command (both paths are the same idempotent `campaign::create`).
    publish(
        &state,
        Target::Campaign(&id),
        &caller.name,
        v1::campaign_command::Command::Schedule(blast.clone()),
    )
    .await?;
    campaign::create(&mut conn, &id, &blast, &caller.name, now.timestamp_millis()).await?;
    tracing::info!(campaign = %id, by = %caller.name, "campaign scheduled");
    let stored = campaign::load(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::Internal("campaign vanished after creation".to_owned()))?;
    Ok((StatusCode::CREATED, Json(view(&state, stored).await?)))
}

/// List campaigns, newest first (at most 200).
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns",
    responses((status = 200, body = [CampaignView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<CampaignView>>, ApiError> {
    caller.require(Role::Reader, "read campaigns")?;
    let mut conn = state.redis.clone();
    let ids: Vec<String> = conn.zrevrange(keys::CAMPAIGNS, 0, 199).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(c) = campaign::load(&mut conn, &id).await? {
            out.push(view(&state, c).await?);
        }
    }
    Ok(Json(out))
}

/// One campaign with its live counters.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "Campaign id")),
    responses((status = 200, body = CampaignView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    caller.require(Role::Reader, "read campaigns")?;
    let mut conn = state.redis.clone();
    let c = campaign::load(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no campaign {id:?}")))?;
    Ok(Json(view(&state, c).await?))
}

async fn transition(
    state: Arc<AppState>,
    caller: Caller,
    id: String,
    command: Command,
) -> Result<Json<CampaignView>, ApiError> {
    let (verb, proto) = match command {
        Command::Pause => (
            "pause",
            v1::campaign_command::Command::Pause(v1::PauseCampaign {}),
        ),
        Command::Resume => (
            "resume",
            v1::campaign_command::Command::Resume(v1::ResumeCampaign {}),
        ),
        Command::Cancel => (
            "cancel",
            v1::campaign_command::Command::Cancel(v1::CancelCampaign {
                reason: format!("cancelled by {}", caller.name),
            }),
        ),
    };
    caller.require(Role::Operator, "pause, resume or cancel campaigns")?;
    let mut conn = state.redis.clone();
    // Applied in Redis before answering: once the answer is sent, the dispatcher (and the
    // services downstream) see the new state.
    match campaign::apply(&mut conn, &id, command).await? {
        Transition::Done(_) => {}
        Transition::Refused(current) => {
            return Err(ApiError::Conflict(format!(
                "cannot {verb} a {} campaign",
                current.as_str()
            )));
        }
        Transition::NotFound => return Err(ApiError::NotFound(format!("no campaign {id:?}"))),
    }
    publish(&state, Target::Campaign(&id), &caller.name, proto).await?;
    tracing::info!(campaign = %id, by = %caller.name, verb, "campaign command");
    let c = campaign::load(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no campaign {id:?}")))?;
    Ok(Json(view(&state, c).await?))
}

/// Pause: the fan-out stops and waiting jobs are held.
#[utoipa::path(post, path = "/v1/campaigns/{id}/pause", tag = "campaigns",
    params(("id" = String, Path, description = "Campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(state, caller, id, Command::Pause).await
}

/// Resume a paused campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/resume", tag = "campaigns",
    params(("id" = String, Path, description = "Campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(state, caller, id, Command::Resume).await
}

/// Cancel: once this answers, no message of the campaign is published by the planner.
#[utoipa::path(post, path = "/v1/campaigns/{id}/cancel", tag = "campaigns",
    params(("id" = String, Path, description = "Campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(state, caller, id, Command::Cancel).await
}

/// Audience size and suppression breakdown, without sending or recording anything.
#[utoipa::path(post, path = "/v1/campaigns/dry-run", tag = "campaigns",
    request_body = CampaignRequest,
    responses((status = 200, body = DryRun), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn dry_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<DryRun>, ApiError> {
    caller.require(Role::Reader, "run dry runs")?;
    let request: CampaignRequest = parse_body(&body)?;
    let now = Utc::now();
    let planner = &state.config.planner;
    let blast = request.validate(&planner.default_time_zone, planner.default_expiry_s, now)?;
    segment_exists(&state, &blast.segment_id).await?;
    pin_template(&state, &blast).await?;
    let mut conn = state.redis.clone();
    let mut result = DryRun {
        audience: 0,
        eligible: 0,
        waiting_for_quiet_hours: 0,
        suppressed: BTreeMap::new(),
    };
    let start_ms = blast.start_at.as_ref().map_or(0, |t| t.seconds * 1000);
    let mut seen = HashSet::new();
    let mut from = "-".to_owned();
    loop {
        let members: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(keys::segment(&blast.segment_id))
            .arg(&from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(planner.batch_size.max(1))
            .query_async(&mut conn)
            .await?;
        let Some(last) = members.last() else { break };
        from = format!("({last}");
        let verdicts = engine::evaluate(
            &mut conn,
            &state.hasher,
            planner,
            "",
            &blast,
            &members,
            now,
            &mut seen,
        )
        .await?;
        for verdict in verdicts {
            match verdict {
                Verdict::Plan { not_before_ms, .. } => {
                    result.eligible += 1;
                    if not_before_ms > start_ms.max(now.timestamp_millis()) + 60_000 {
                        result.waiting_for_quiet_hours += 1;
                    }
                }
                Verdict::Refuse(r) => {
                    *result
                        .suppressed
                        .entry(engine::reason_name(r.reason).to_owned())
                        .or_default() += 1;
                }
            }
        }
        result.audience += members.len();
        if result.audience >= state.config.api.dry_run_limit {
            return Err(ApiError::invalid(
                "segment",
                "is larger than api.dry_run_limit",
            ));
        }
    }
    Ok(Json(result))
}
