//! `/v1/sequences`: define (a new version each time), list, read with the funnel, retire;
//! and the definitions kept as files in `config/sequences/`, applied at start.
//!
//! A definition names templates; each step's template version is pinned when the version
//! is created, so a later template edit changes no running sequence. Versions are
//! immutable: an edit is a new version, which running enrolments take only when the edit
//! asks to migrate them.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tocsin_contracts::v1;
use tocsin_planner::sequence::definition::{self, DefinitionError};
use tocsin_planner::sequence::store::{self, Defined, Head};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::campaigns::{
    Channel, QuietHoursRequest, Target, Tracking, identifier, parse_body, parse_duration, pin,
    publish, quiet_hours,
};
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};

/// A sequence: who enters it, what they receive and when, when they leave it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SequenceRequest {
    /// Letters, digits, `.`, `_`, `:`, `-`. Required on creation; on update, when given,
    /// it must be the path's.
    pub id: Option<String>,
    pub name: String,
    /// Contacts entering this segment are enrolled.
    pub trigger: String,
    pub steps: Vec<StepRequest>,
    #[serde(default)]
    pub exit: ExitRequest,
    #[serde(default)]
    pub re_entry: ReEntryRequest,
    /// IANA zone for contacts who have none; the planner's default otherwise.
    pub time_zone: Option<String>,
    pub sender_profile: String,
    /// How long after its due time a step may still leave: `90m`, `6h`, `1d`.
    pub expiry: Option<String>,
    #[serde(default)]
    pub tracking: Tracking,
    /// On update: move running enrolments to the new version at their next step.
    #[serde(default)]
    pub migrate: bool,
}

/// One step: wait, then send a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepRequest {
    pub name: String,
    /// After the previous step (the enrolment for the first): `0s`, `90m`, `2d`, `1w`.
    pub wait: String,
    /// Then until this local time of day, `HH:MM`, in the contact's time zone.
    pub at: Option<String>,
    pub channel: Channel,
    pub template: String,
    /// 0 or absent: the latest version, pinned now.
    #[serde(default)]
    pub template_version: u32,
    /// Skip the step (the sequence goes on) when any of these holds.
    #[serde(default)]
    pub skip_if: Vec<ConditionRequest>,
    /// Absent: the channel's default (SMS: Monday-Saturday 08:00-20:00).
    pub quiet_hours: Option<QuietHoursRequest>,
    /// SMS only: most parts (1-10); default 3.
    pub max_sms_parts: Option<u32>,
}

/// Exactly one of the fields.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum ConditionRequest {
    /// The contact clicked a link of this earlier step (1-based).
    ClickedStep(u32),
    InSegment(String),
    NotInSegment(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExitRequest {
    #[serde(default)]
    pub on_leaving_trigger: bool,
    #[serde(default)]
    pub goal_segments: Vec<String>,
    #[serde(default)]
    pub on_unsubscribe: bool,
}

/// 0: once ever. N: again, N days after the previous enrolment ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReEntryRequest {
    #[serde(default)]
    pub after_days: u32,
}

/// A sequence as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequenceView {
    pub id: String,
    pub name: String,
    pub trigger: String,
    /// The version new enrolments take.
    pub version: u32,
    pub versions: Vec<u32>,
    /// Why it was retired; absent while it runs.
    pub retired: Option<String>,
    pub created_at: Option<String>,
    pub steps: Vec<StepView>,
    pub funnel: Funnel,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub number: u32,
    pub name: String,
    pub channel: Channel,
    pub template: String,
    pub template_version: u32,
    pub wait_seconds: i64,
    pub at: Option<String>,
}

/// Where the enrolments are: all versions together.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Funnel {
    pub enrolled: i64,
    pub completed: i64,
    /// Re-entries the policy refused.
    pub reentry_refused: i64,
    /// Ended early, by reason (`left_trigger`, `goal`, `unsubscribed`, `erased`,
    /// `retired`).
    pub exited: BTreeMap<String, i64>,
    pub steps: Vec<StepFunnel>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepFunnel {
    pub step: u32,
    /// Enrolments waiting for this step now.
    pub waiting: i64,
    pub sent: i64,
    pub skipped: i64,
    pub suppressed: i64,
    pub expired: i64,
    /// From feedback: delivered, unique opens, unique clicks.
    pub delivered: i64,
    pub opened: i64,
    pub clicked: i64,
}

/// `0s`, `90m`, `6h`, `2d`, `1w`.
fn wait_seconds(field: &str, text: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            format!("{text:?} is not a wait like 0s, 90m, 6h, 2d or 1w"),
        )
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

fn time_of_day(field: &str, hhmm: &str) -> Result<u32, ApiError> {
    let bad = || ApiError::invalid(field, format!("{hhmm:?} is not a time of day HH:MM"));
    let (h, m) = hhmm.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h >= 24 || m >= 60 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn to_proto_channel(c: Channel) -> v1::Channel {
    match c {
        Channel::Email => v1::Channel::Email,
        Channel::Sms => v1::Channel::Sms,
    }
}

impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl SequenceRequest {
    /// Checks every field and builds the definition (template versions not yet pinned).
    pub fn validate(
        &self,
        default_zone: &str,
        default_expiry_s: u64,
    ) -> Result<v1::SequenceDefinition, ApiError> {
        if let Some(id) = &self.id {
            identifier("id", id)?;
        }
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
        }
        identifier("trigger", &self.trigger)?;
        identifier("senderProfile", &self.sender_profile)?;
        for (i, g) in self.exit.goal_segments.iter().enumerate() {
            identifier(&format!("exit.goalSegments[{i}]"), g)?;
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let at = |f: &str| format!("steps[{i}].{f}");
            if s.name.trim().is_empty() || s.name.len() > 200 {
                return Err(ApiError::invalid(at("name"), "must be 1 to 200 characters"));
            }
            identifier(&at("template"), &s.template)?;
            let channel = to_proto_channel(s.channel);
            let max_sms_parts = match (s.channel, s.max_sms_parts) {
                (Channel::Email, Some(_)) => {
                    return Err(ApiError::invalid(
                        at("maxSmsParts"),
                        "applies to SMS steps only",
                    ));
                }
                (Channel::Sms, n) => n.unwrap_or(3),
                (Channel::Email, None) => 0,
            };
            let local_minute =
                s.at.as_deref()
                    .map(|t| time_of_day(&at("at"), t))
                    .transpose()?;
            let mut skip_if = Vec::new();
            for (j, c) in s.skip_if.iter().enumerate() {
                use v1::step_condition::Condition;
                let condition = match c {
                    ConditionRequest::ClickedStep(k) => Condition::ClickedStep(*k),
                    ConditionRequest::InSegment(seg) => {
                        identifier(&format!("steps[{i}].skipIf[{j}].inSegment"), seg)?;
                        Condition::InSegment(seg.clone())
                    }
                    ConditionRequest::NotInSegment(seg) => {
                        identifier(&format!("steps[{i}].skipIf[{j}].notInSegment"), seg)?;
                        Condition::NotInSegment(seg.clone())
                    }
                };
                skip_if.push(v1::StepCondition {
                    condition: Some(condition),
                });
            }
            steps.push(v1::SequenceStep {
                name: s.name.trim().to_owned(),
                wait: Some(tocsin_contracts::Duration {
                    seconds: wait_seconds(&at("wait"), &s.wait)?,
                    nanos: 0,
                }),
                wait_until_local: local_minute.is_some(),
                local_minute: local_minute.unwrap_or(0),
                channel: channel.into(),
                template_id: s.template.clone(),
                template_version: s.template_version,
                skip_if,
                quiet_hours: s
                    .quiet_hours
                    .as_ref()
                    .map(|q| quiet_hours(&at("quietHours"), q, channel))
                    .transpose()?,
                max_sms_parts,
            });
        }
        let expiry = match &self.expiry {
            Some(text) => parse_duration("expiry", text)?,
            None => i64::try_from(default_expiry_s).unwrap_or(21_600),
        };
        let def = v1::SequenceDefinition {
            name: self.name.trim().to_owned(),
            trigger_segment_id: self.trigger.clone(),
            steps,
            exit: Some(v1::SequenceExit {
                on_leaving_trigger: self.exit.on_leaving_trigger,
                goal_segment_ids: self.exit.goal_segments.clone(),
                on_unsubscribe: self.exit.on_unsubscribe,
            }),
            re_entry: Some(v1::ReEntryPolicy {
                after_days: self.re_entry.after_days,
            }),
            time_zone: self
                .time_zone
                .clone()
                .unwrap_or_else(|| default_zone.to_owned()),
            sender_profile: self.sender_profile.clone(),
            tracking: Some(v1::TrackingOptions {
                open_pixel: self.tracking.open_pixel,
                click_rewriting: self.tracking.click_rewriting,
            }),
            expiry: Some(tocsin_contracts::Duration {
                seconds: expiry,
                nanos: 0,
            }),
        };
        definition::check(&def)?;
        Ok(def)
    }

    /// What identifies this request's content: a file applied at every start defines a
    /// new version only when it changed.
    fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let hash = Sha256::digest(&canonical);
        hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// Validates, pins the templates, publishes the command, writes the version. The command
/// goes first: if Redis fails after it, the planner writes the same version from it.
async fn apply(
    state: &AppState,
    id: &str,
    request: &SequenceRequest,
    who: &str,
    creating: bool,
) -> Result<u32, ApiError> {
    let planner = &state.config.planner;
    let mut def = request.validate(&planner.default_time_zone, planner.default_expiry_s)?;
    for (i, step) in def.steps.iter_mut().enumerate() {
        step.template_version = pin(
            state,
            (
                &format!("steps[{i}].template"),
                &format!("steps[{i}].templateVersion"),
            ),
            &step.template_id,
            step.template_version,
            definition::step_channel(step),
        )
        .await?;
    }
    let mut conn = state.redis.clone();
    let head = store::load_head(&mut conn, id).await?;
    if creating && head.current > 0 {
        return Err(ApiError::Conflict(format!(
            "sequence {id:?} already exists"
        )));
    }
    if !creating && head.current == 0 {
        return Err(ApiError::NotFound(format!("no sequence {id:?}")));
    }
    if let Some(reason) = &head.retired {
        return Err(ApiError::Conflict(format!(
            "sequence {id:?} is retired ({reason}); define a new id"
        )));
    }
    let version = head.current + 1;
    publish(
        state,
        Target::Sequence(id),
        who,
        v1::campaign_command::Command::DefineSequence(v1::DefineSequence {
            definition: Some(def.clone()),
            migrate_enrolments: request.migrate,
            version,
        }),
    )
    .await?;
    let now = Utc::now().timestamp_millis();
    match store::define(
        &mut conn,
        id,
        version,
        &def,
        request.migrate,
        &request.digest(),
        now,
    )
    .await?
    {
        Defined::Created(v) | Defined::Existing(v) => Ok(v),
        Defined::Retired => Err(ApiError::Conflict(format!("sequence {id:?} is retired"))),
    }
}

fn format_ms(ms: i64) -> Option<String> {
    (ms > 0)
        .then(|| DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339()))
        .flatten()
}

async fn view(state: &AppState, id: &str) -> Result<SequenceView, ApiError> {
    let mut conn = state.redis.clone();
    let head: Head = store::load_head(&mut conn, id).await?;
    if head.current == 0 {
        return Err(ApiError::NotFound(format!("no sequence {id:?}")));
    }
    let def = store::load_version(&mut conn, id, head.current)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("sequence {id:?} has no current version")))?;
    let raw = store::funnel(&mut conn, id).await?;
    let get = |k: &str| raw.get(k).copied().unwrap_or(0);
    let steps: Vec<StepView> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepView {
            number: i as u32 + 1,
            name: s.name.clone(),
            channel: if definition::step_channel(s) == v1::Channel::Sms {
                Channel::Sms
            } else {
                Channel::Email
            },
            template: s.template_id.clone(),
            template_version: s.template_version,
            wait_seconds: s.wait.as_ref().map_or(0, |d| d.seconds),
            at: s
                .wait_until_local
                .then(|| format!("{:02}:{:02}", s.local_minute / 60, s.local_minute % 60)),
        })
        .collect();
    // Steps of every version: an older, longer version may still have enrolments.
    let last_step = raw
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("at.").or_else(|| k.strip_prefix("step."))?;
            rest.split('.').next()?.parse::<u32>().ok()
        })
        .chain(std::iter::once(def.steps.len() as u32))
        .max()
        .unwrap_or(0);
    let funnel = Funnel {
        enrolled: get("enrolled"),
        completed: get("completed"),
        reentry_refused: get("reentry_refused"),
        exited: raw
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("exited.")?.to_owned(), *v)))
            .collect(),
        steps: (1..=last_step)
            .map(|k| StepFunnel {
                step: k,
                waiting: get(&format!("at.{k}")),
                sent: get(&format!("step.{k}.sent")),
                skipped: get(&format!("step.{k}.skipped")),
                suppressed: get(&format!("step.{k}.suppressed")),
                expired: get(&format!("step.{k}.expired")),
                delivered: get(&format!("step.{k}.fb.delivered")),
                opened: get(&format!("step.{k}.fb.unique_opens")),
                clicked: get(&format!("step.{k}.fb.unique_clicks")),
            })
            .collect(),
    };
    Ok(SequenceView {
        id: id.to_owned(),
        name: def.name.clone(),
        trigger: def.trigger_segment_id.clone(),
        version: head.current,
        versions: store::versions(&mut conn, id).await?,
        retired: head.retired,
        created_at: format_ms(head.created_ms),
        steps,
        funnel,
    })
}

/// Define a sequence (version 1).
#[utoipa::path(post, path = "/v1/sequences", tag = "sequences",
    request_body = SequenceRequest,
    responses(
        (status = 201, body = SequenceView, description = "Defined"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A sequence with this id exists"),
        (status = 422, body = ErrorBody, description = "A field is invalid; `field` names it"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<SequenceView>), ApiError> {
    caller.require(Role::Operator, "define sequences")?;
    let request: SequenceRequest = parse_body(&body)?;
    let id = request
        .id
        .clone()
        .ok_or_else(|| ApiError::invalid("id", "a new sequence needs an id"))?;
    apply(&state, &id, &request, &caller.name, true).await?;
    tracing::info!(sequence = %id, by = %caller.name, "sequence defined");
    Ok((StatusCode::CREATED, Json(view(&state, &id).await?)))
}

/// Define a new version of a sequence; with `migrate`, running enrolments move to it.
#[utoipa::path(put, path = "/v1/sequences/{id}", tag = "sequences",
    params(("id" = String, Path, description = "Sequence id")),
    request_body = SequenceRequest,
    responses(
        (status = 200, body = SequenceView, description = "New version defined"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The sequence is retired"),
        (status = 422, body = ErrorBody, description = "A field is invalid; `field` names it"),
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SequenceView>, ApiError> {
    caller.require(Role::Operator, "define sequences")?;
    let request: SequenceRequest = parse_body(&body)?;
    if request.id.as_deref().is_some_and(|given| given != id) {
        return Err(ApiError::invalid("id", "differs from the path's"));
    }
    let version = apply(&state, &id, &request, &caller.name, false).await?;
    tracing::info!(sequence = %id, version, migrate = request.migrate, by = %caller.name, "sequence version defined");
    Ok(Json(view(&state, &id).await?))
}

/// Sequences, newest first, with their funnels.
#[utoipa::path(get, path = "/v1/sequences", tag = "sequences",
    responses((status = 200, body = [SequenceView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<SequenceView>>, ApiError> {
    caller.require(Role::Reader, "read sequences")?;
    let mut conn = state.redis.clone();
    let mut out = Vec::new();
    for id in store::list(&mut conn).await? {
        out.push(view(&state, &id).await?);
    }
    Ok(Json(out))
}

/// One sequence with its funnel.
#[utoipa::path(get, path = "/v1/sequences/{id}", tag = "sequences",
    params(("id" = String, Path, description = "Sequence id")),
    responses((status = 200, body = SequenceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SequenceView>, ApiError> {
    caller.require(Role::Reader, "read sequences")?;
    Ok(Json(view(&state, &id).await?))
}

/// Why a sequence is retired.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    #[serde(default)]
    pub reason: String,
}

/// Retire a sequence: no new enrolment; running enrolments exit at their next step.
#[utoipa::path(post, path = "/v1/sequences/{id}/retire", tag = "sequences",
    params(("id" = String, Path, description = "Sequence id")),
    request_body = RetireRequest,
    responses((status = 200, body = SequenceView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retire(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SequenceView>, ApiError> {
    caller.require(Role::Operator, "retire sequences")?;
    let request: RetireRequest = if body.is_empty() {
        RetireRequest::default()
    } else {
        parse_body(&body)?
    };
    let mut conn = state.redis.clone();
    if store::load_head(&mut conn, &id).await?.current == 0 {
        return Err(ApiError::NotFound(format!("no sequence {id:?}")));
    }
    publish(
        &state,
        Target::Sequence(&id),
        &caller.name,
        v1::campaign_command::Command::RetireSequence(v1::RetireSequence {
            reason: request.reason.clone(),
        }),
    )
    .await?;
    store::retire(&mut conn, &id, &request.reason).await?;
    tracing::info!(sequence = %id, by = %caller.name, "sequence retired");
    Ok(Json(view(&state, &id).await?))
}

/// A definition file refused at start.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct FileError {
    pub file: String,
    pub message: String,
}

/// Applies every `*.toml` of `dir` (the same fields as the API's JSON; the file name,
/// without `.toml`, is the id unless the file gives one): a sequence that does not exist
/// is created; one whose current version came from a different text gets a new version;
/// an unchanged file changes nothing. One result per file: a bad file does not stop the
/// others.
pub async fn apply_dir(
    state: &AppState,
    dir: &FsPath,
) -> Result<Vec<Result<(String, u32), FileError>>, FileError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| FileError {
            file: dir.display().to_string(),
            message: e.to_string(),
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        out.push(apply_file(state, &path).await);
    }
    Ok(out)
}

async fn apply_file(state: &AppState, path: &FsPath) -> Result<(String, u32), FileError> {
    let file = path.display().to_string();
    let fail = |message: String| FileError {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut request: SequenceRequest = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = request.id.clone().unwrap_or(stem);
    request.id = Some(id.clone());
    let mut conn = state.redis.clone();
    let head = store::load_head(&mut conn, &id)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Some(reason) = head.retired {
        return Err(fail(format!("sequence {id:?} is retired ({reason})")));
    }
    if head.current > 0 && head.source == request.digest() {
        return Ok((id, head.current));
    }
    let version = apply(state, &id, &request, "config", head.current == 0)
        .await
        .map_err(|e| match e {
            ApiError::Invalid { field, message } => fail(format!("{field}: {message}")),
            other => fail(other.to_string()),
        })?;
    tracing::info!(sequence = %id, version, %file, "sequence defined from its file");
    Ok((id, version))
}

/// Applies the files of `dir` until each is applied or refused for good: a file naming a
/// template not uploaded yet is tried again every `every` (the templates usually arrive
/// after the API starts).
pub async fn keep_applying(
    state: Arc<AppState>,
    dir: std::path::PathBuf,
    every: std::time::Duration,
    shutdown: tocsin_runtime::shutdown::CancellationToken,
) {
    loop {
        let pending = match apply_dir(&state, &dir).await {
            Ok(results) => results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| {
                    tracing::warn!(error = %e, "sequence file not applied; trying again");
                })
                .count(),
            Err(e) => {
                tracing::error!(error = %e, "sequence files unreadable");
                return;
            }
        };
        if pending == 0 {
            tracing::info!(dir = %dir.display(), "every sequence file applied");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SequenceRequest {
        serde_json::from_value(serde_json::json!({
            "id": "welcome",
            "name": "Welcome",
            "trigger": "volunteers",
            "senderProfile": "default",
            "exit": {"onLeavingTrigger": true, "goalSegments": ["members"], "onUnsubscribe": true},
            "reEntry": {"afterDays": 30},
            "steps": [
                {"name": "welcome", "wait": "0s", "channel": "email", "template": "welcome"},
                {"name": "SMS", "wait": "2d", "at": "10:00", "channel": "sms", "template": "sms",
                 "skipIf": [{"clickedStep": 1}]},
                {"name": "invitation", "wait": "1w", "channel": "email", "template": "inv",
                 "skipIf": [{"inSegment": "came"}]}
            ]
        }))
        .expect("parses")
    }

    #[test]
    fn a_request_becomes_a_definition() {
        let def = request().validate("Europe/Paris", 21_600).expect("valid");
        assert_eq!(def.steps.len(), 3);
        assert_eq!(def.steps[1].wait.as_ref().map(|d| d.seconds), Some(172_800));
        assert!(def.steps[1].wait_until_local);
        assert_eq!(def.steps[1].local_minute, 600);
        assert_eq!(def.steps[1].max_sms_parts, 3);
        assert_eq!(def.steps[2].wait.as_ref().map(|d| d.seconds), Some(604_800));
        assert_eq!(def.re_entry.map(|r| r.after_days), Some(30));
        assert_eq!(def.time_zone, "Europe/Paris");
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |r: SequenceRequest| match r.validate("Europe/Paris", 21_600) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut r = request();
        r.steps[1].wait = "2 days".into();
        assert_eq!(field(r), "steps[1].wait");
        let mut r = request();
        r.steps[1].at = Some("25:00".into());
        assert_eq!(field(r), "steps[1].at");
        let mut r = request();
        r.steps[1].skip_if = vec![ConditionRequest::ClickedStep(3)];
        assert_eq!(field(r), "steps[1].skipIf[0]");
        let mut r = request();
        r.steps.clear();
        assert_eq!(field(r), "steps");
        let mut r = request();
        r.exit.goal_segments = vec!["volunteers".into()];
        assert_eq!(field(r), "exit.goalSegments");
        let mut r = request();
        r.steps[0].max_sms_parts = Some(2);
        assert_eq!(field(r), "steps[0].maxSmsParts");
    }

    #[test]
    fn a_file_reads_like_the_json() {
        let text = r#"
            name = "Welcome"
            trigger = "volunteers"
            senderProfile = "default"
            [exit]
            onLeavingTrigger = true
            [[steps]]
            name = "welcome"
            wait = "0s"
            channel = "email"
            template = "welcome"
            [[steps]]
            name = "SMS"
            wait = "2d"
            at = "10:00"
            channel = "sms"
            template = "sms"
            skipIf = [{ clickedStep = 1 }]
        "#;
        let r: SequenceRequest = toml::from_str(text).expect("parses");
        let def = r.validate("Europe/Paris", 21_600).expect("valid");
        assert_eq!(def.steps[1].skip_if.len(), 1);
        let same: SequenceRequest = toml::from_str(text).expect("parses");
        assert_eq!(r.digest(), same.digest());
    }
}
