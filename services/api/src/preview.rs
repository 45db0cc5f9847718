//! `/v1/templates/{id}/preview` and `/v1/templates/{id}/test-send`: a template rendered for
//! one contact, before any campaign uses it.
//!
//! Both build a `SendJob` as the planner would and hand it to the renderer's own
//! [`Composer`](tocsin_renderer::compose::Composer) with the renderer's configuration: what
//! a preview shows is what the renderer produces, byte for byte (links signed with the
//! same key, the same compliance footer, the same SMS parts), and whatever the renderer
//! would refuse is refused here with the same words.
//!
//! A preview stops there. A test send publishes the job to `tocsin.jobs` under a campaign
//! id of its own (`test-…`), addressed to the `to` it was given: the renderer renders it
//! and the sender sends it like any other job, so it also tests the pipeline.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tocsin_bus::TraceContext;
use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_contracts::v1;
use tocsin_planner::engine::timestamp;
use tocsin_planner::store;
use tocsin_renderer::compose::Message;
use tocsin_templates::{Channel, TemplateVersion};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::campaigns::{Tracking, parse_body};
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};
use crate::templates::find;

/// The contact id of the built-in sample contact.
pub const SAMPLE_CONTACT_ID: &str = "sample";
/// The contact id given to a contact passed in the request.
pub const INLINE_CONTACT_ID: &str = "inline";
/// The campaign id of every preview's job (a preview publishes nothing).
pub const PREVIEW_CAMPAIGN_ID: &str = "preview";
/// How long a test send may wait in the pipeline before it is dropped as expired.
const TEST_SEND_EXPIRY_MS: i64 = 3_600_000;

/// What to preview. Every field is optional; an empty body previews the latest version for
/// the sample contact.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PreviewRequest {
    /// A version number; absent means the latest.
    pub version: Option<u32>,
    /// A contact stored by the planner (as the CRM published it). Not with `contact`.
    pub contact_id: Option<String>,
    /// A contact given here, for trying data the CRM does not have. Not with `contactId`.
    pub contact: Option<ContactRequest>,
    /// A profile of `[renderer.sender_profiles]`; absent means `default`.
    pub sender_profile: Option<String>,
    /// Render as a campaign with these tracking options would.
    #[serde(default)]
    pub tracking: Tracking,
}

/// A contact for a preview. Absent fields are absent for the template too: a template that
/// reads one without a fallback is refused, as it would be for a real contact.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContactRequest {
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub email: String,
    /// E.164 (`+33612345678`).
    #[serde(default)]
    pub phone: String,
    /// Chooses the template variant (`fr`, `en`, `fr-FR`).
    #[serde(default)]
    pub locale: String,
    /// IANA time zone, for dates the template prints.
    #[serde(default)]
    pub time_zone: String,
    /// The CRM's custom fields (`commune`, `section`, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A test send: the message a contact would receive, sent to `to` instead.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSendRequest {
    /// An e-mail address for an e-mail template, an E.164 number for an SMS template.
    pub to: String,
    /// A version number; absent means the latest.
    pub version: Option<u32>,
    /// Whose data fills the template: a contact stored by the planner; absent means the
    /// sample contact.
    pub contact_id: Option<String>,
    /// A profile of `[renderer.sender_profiles]`; absent means `default`.
    pub sender_profile: Option<String>,
}

/// A rendered message, as the provider would receive it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewView {
    pub template_id: String,
    pub version: u32,
    /// `email` or `sms`.
    pub channel: String,
    /// `sample`, `inline` or the stored contact's id.
    pub contact_id: String,
    /// The e-mail, for an e-mail template; `null` otherwise.
    pub email: Option<EmailPreview>,
    /// The SMS, for an SMS template; `null` otherwise.
    pub sms: Option<SmsPreview>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailPreview {
    pub from: String,
    pub to: String,
    pub reply_to: Option<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub message_id: String,
    /// The headers the sender adds (`List-Unsubscribe`, `List-Unsubscribe-Post`, ...).
    pub headers: Vec<HeaderView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderView {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SmsPreview {
    pub from: String,
    pub to: String,
    /// With the sender's name and the STOP mention, as it leaves.
    pub body: String,
    /// `GSM-7` or `UCS-2`: UCS-2 parts hold 70 characters instead of 160.
    pub encoding: String,
    /// Parts the operator bills.
    pub parts: u32,
}

/// Where a test send went.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSendView {
    /// `test-…`: the feedback of the message carries it.
    pub campaign_id: String,
    pub idempotency_key: String,
    pub channel: String,
}

/// The contact a preview uses when it names none: every field filled, so that a template
/// reading any of them renders.
pub fn sample_contact() -> v1::Contact {
    v1::Contact {
        id: SAMPLE_CONTACT_ID.to_owned(),
        email: "camille.martin@example.org".to_owned(),
        phone_e164: "+33612345678".to_owned(),
        first_name: "Camille".to_owned(),
        last_name: "Martin".to_owned(),
        locale: "fr".to_owned(),
        time_zone: "Europe/Paris".to_owned(),
        attributes: [
            ("commune", "Lyon"),
            ("departement", "Rhône"),
            ("circonscription", "3e circonscription du Rhône"),
            ("section", "Lyon 7e"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    }
}

fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        Channel::Sms => "sms",
    }
}

impl ContactRequest {
    /// Checks the addresses and the time zone as the CRM's would be, and makes the contact.
    fn into_contact(self) -> Result<v1::Contact, ApiError> {
        let email = if self.email.trim().is_empty() {
            String::new()
        } else {
            EmailAddress::parse(&self.email)
                .map_err(|e| ApiError::invalid("contact.email", e.to_string()))?
                .expose()
                .to_owned()
        };
        let phone = if self.phone.trim().is_empty() {
            String::new()
        } else {
            PhoneNumber::parse(&self.phone)
                .map_err(|e| ApiError::invalid("contact.phone", e.to_string()))?
                .expose()
                .to_owned()
        };
        let time_zone = self.time_zone.trim().to_owned();
        if !time_zone.is_empty() && time_zone.parse::<Tz>().is_err() {
            return Err(ApiError::invalid(
                "contact.timeZone",
                format!("{time_zone:?} is not an IANA time zone"),
            ));
        }
        Ok(v1::Contact {
            id: INLINE_CONTACT_ID.to_owned(),
            email,
            phone_e164: phone,
            first_name: self.first_name,
            last_name: self.last_name,
            locale: self.locale.trim().to_owned(),
            time_zone,
            attributes: self.attributes.into_iter().collect(),
            ..Default::default()
        })
    }
}

/// A contact the planner stores, or a 404.
async fn stored_contact(state: &AppState, id: &str) -> Result<v1::Contact, ApiError> {
    let mut conn = state.redis.clone();
    store::load_record(&mut conn, id)
        .await?
        .and_then(|record| record.contact)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no contact {id:?} (contacts are those the CRM published in a segment)"
            ))
        })
}

/// The stored contact named, else the sample.
async fn contact_or_sample(
    state: &AppState,
    contact_id: Option<&str>,
) -> Result<v1::Contact, ApiError> {
    match contact_id {
        Some(id) => stored_contact(state, id).await,
        None => Ok(sample_contact()),
    }
}

/// The job the planner would publish for this contact and this version.
struct JobSpec<'a> {
    template: &'a TemplateVersion,
    contact: v1::Contact,
    campaign_id: String,
    idempotency_key: String,
    sender_profile: Option<String>,
    tracking: Option<v1::TrackingOptions>,
}

impl JobSpec<'_> {
    fn job(self, now_ms: i64) -> v1::SendJob {
        let channel = match self.template.draft.channel {
            Channel::Email => v1::Channel::Email,
            Channel::Sms => v1::Channel::Sms,
        };
        v1::SendJob {
            meta: Some(v1::EventMeta {
                event_id: format!("job:{}", self.idempotency_key),
                occurred_at: Some(tocsin_contracts::timestamp_now()),
                source: "api".to_owned(),
            }),
            idempotency_key: self.idempotency_key,
            campaign_id: self.campaign_id,
            channel: channel.into(),
            template_id: self.template.id.clone(),
            template_version: self.template.version,
            contact: Some(self.contact),
            not_before: Some(timestamp(now_ms)),
            expires_at: Some(timestamp(now_ms + TEST_SEND_EXPIRY_MS)),
            sender_profile: self.sender_profile.unwrap_or_default(),
            lane: v1::Lane::Triggered.into(),
            // 0: the renderer's default, as for a campaign that sets none.
            max_sms_parts: 0,
            tracking: self.tracking,
            ..Default::default()
        }
    }
}

/// Renders a job as the renderer would; a refusal is a 422 in the renderer's words.
fn compose(
    state: &AppState,
    job: &v1::SendJob,
    template: &TemplateVersion,
) -> Result<Message, ApiError> {
    state
        .composer
        .compose(job, template)
        .map_err(|refusal| ApiError::Refused {
            class: refusal.class(),
            message: refusal.to_string(),
        })
}

fn view(template: &TemplateVersion, contact_id: String, message: Message) -> PreviewView {
    let (email, sms) = match message {
        Message::Email(e) => (
            Some(EmailPreview {
                from: e.from,
                to: e.to,
                reply_to: (!e.reply_to.is_empty()).then_some(e.reply_to),
                subject: e.subject,
                html: e.html,
                text: e.text,
                message_id: e.message_id,
                headers: e
                    .headers
                    .into_iter()
                    .map(|h| HeaderView {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
            }),
            None,
        ),
        Message::Sms(s) => {
            let encoding = match s.encoding() {
                v1::SmsEncoding::Ucs2 => "UCS-2",
                _ => "GSM-7",
            };
            (
                None,
                Some(SmsPreview {
                    from: s.from,
                    to: s.to,
                    body: s.body,
                    encoding: encoding.to_owned(),
                    parts: s.parts,
                }),
            )
        }
    };
    PreviewView {
        template_id: template.id.clone(),
        version: template.version,
        channel: channel_name(template.draft.channel).to_owned(),
        contact_id,
        email,
        sms,
    }
}

/// Preview a template for one contact: the message exactly as the renderer would make it.
#[utoipa::path(post, path = "/v1/templates/{id}/preview", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    request_body = PreviewRequest,
    responses(
        (status = 200, body = PreviewView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such template, version or contact"),
        (status = 422, body = ErrorBody, description = "A field is invalid (`field`), or the renderer refuses the message (`class`: missing_field, too_long, unknown_sender_profile, ...)"),
    ),
    security(("bearer" = [])))]
pub async fn preview(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<PreviewView>, ApiError> {
    caller.require(Role::Reader, "preview templates")?;
    let request: PreviewRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PreviewRequest::default()
    } else {
        parse_body(&body)?
    };
    let template = find(&state, &id, request.version).await?;
    let contact = match (request.contact_id.as_deref(), request.contact) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "contact",
                "give contactId or contact, not both",
            ));
        }
        (None, Some(inline)) => inline.into_contact()?,
        (contact_id, None) => contact_or_sample(&state, contact_id).await?,
    };
    let channel = channel_name(template.draft.channel);
    let contact_id = contact.id.clone();
    let job = JobSpec {
        template: &template,
        idempotency_key: format!("preview:{contact_id}:{channel}"),
        campaign_id: PREVIEW_CAMPAIGN_ID.to_owned(),
        contact,
        sender_profile: request.sender_profile,
        tracking: Some(v1::TrackingOptions {
            open_pixel: request.tracking.open_pixel,
            click_rewriting: request.tracking.click_rewriting,
        }),
    }
    .job(chrono::Utc::now().timestamp_millis());
    let message = compose(&state, &job, &template)?;
    Ok(Json(view(&template, contact_id, message)))
}

/// A test recipient's address, checked for the template's channel.
enum Recipient {
    Email(EmailAddress),
    Phone(PhoneNumber),
}

impl Recipient {
    fn parse(channel: Channel, to: &str) -> Result<Self, ApiError> {
        match channel {
            Channel::Email => EmailAddress::parse(to).map(Recipient::Email).map_err(|e| {
                ApiError::invalid(
                    "to",
                    format!("this is an e-mail template: `to` must be an e-mail address ({e})"),
                )
            }),
            Channel::Sms => PhoneNumber::parse(to).map(Recipient::Phone).map_err(|e| {
                ApiError::invalid(
                    "to",
                    format!("this is an SMS template: `to` must be a mobile number ({e})"),
                )
            }),
        }
    }

    /// The contact, addressed to this recipient instead.
    fn readdress(&self, contact: &mut v1::Contact) {
        match self {
            Recipient::Email(e) => contact.email = e.expose().to_owned(),
            Recipient::Phone(p) => contact.phone_e164 = p.expose().to_owned(),
        }
    }

    /// Masked, for logs.
    fn masked(&self) -> String {
        match self {
            Recipient::Email(e) => e.to_string(),
            Recipient::Phone(p) => p.to_string(),
        }
    }
}

/// Send one message through the real pipeline: rendered for a contact, delivered to `to`.
#[utoipa::path(post, path = "/v1/templates/{id}/test-send", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    request_body = TestSendRequest,
    responses(
        (status = 202, body = TestSendView, description = "The job is on `tocsin.jobs`"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such template, version or contact"),
        (status = 422, body = ErrorBody, description = "`to` is not an address for the template's channel, or the renderer refuses the message (as a preview would)"),
    ),
    security(("bearer" = [])))]
pub async fn test_send(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<TestSendView>), ApiError> {
    caller.require(Role::Operator, "send test messages")?;
    let request: TestSendRequest = parse_body(&body)?;
    let template = find(&state, &id, request.version).await?;
    let recipient = Recipient::parse(template.draft.channel, &request.to)?;
    let mut contact = contact_or_sample(&state, request.contact_id.as_deref()).await?;
    recipient.readdress(&mut contact);
    // The message goes to the operator, not to the contact whose data fills it: its
    // unsubscribe link, and any feedback about it, must never touch the real contact.
    contact.id = format!("test:{}", contact.id);
    let channel = channel_name(template.draft.channel);
    let run = uuid::Uuid::now_v7().simple().to_string();
    let campaign_id = format!("test-{run}");
    let idempotency_key = format!("test:{run}:{channel}");
    let job = JobSpec {
        template: &template,
        contact,
        campaign_id: campaign_id.clone(),
        idempotency_key: idempotency_key.clone(),
        sender_profile: request.sender_profile,
        tracking: None,
    }
    .job(chrono::Utc::now().timestamp_millis());
    // Refused here rather than by the renderer, where it would only be a feedback event.
    compose(&state, &job, &template)?;
    let contact_id = job
        .contact
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let event_id = job
        .meta
        .as_ref()
        .map(|m| m.event_id.clone())
        .unwrap_or_default();
    state
        .producer
        .publish(
            &state.config.kafka.topics.jobs_triggered.name,
            &contact_id,
            &event_id,
            &job,
            &TraceContext::new_root(),
        )
        .await?;
    tracing::info!(
        template = %id,
        version = template.version,
        campaign = %campaign_id,
        to = %recipient.masked(),
        by = %caller.name,
        "test send published"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(TestSendView {
            campaign_id,
            idempotency_key,
            channel: channel.to_owned(),
        }),
    ))
}
