//! One job, one message: the pinned template version rendered for the contact, tracking
//! added when the campaign asks for it, then the compliance parts no template can forget.
//!
//! A sequence step has no campaign: its signed links (unsubscribe, open, click) carry its
//! step group (`seq~<sequence>~e<n>~<step>`, [`link_group`]) where a blast's carry the
//! campaign id, so that the tracker attributes what the recipient does to the step.
//!
//! Pure apart from the compiled-template cache: the consumer ([`crate::service`]), the
//! control API's preview and test send, the golden tests and the benchmark all go through
//! [`Composer::compose`], so what a writer previews is what a recipient receives.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};
use tocsin_contracts::v1;
use tocsin_planner::sequence::StepRef;
use tocsin_templates::{Channel, TemplateVersion};

use crate::compliance::{self, SenderProfile};
use crate::config::RendererConfig;
use crate::render::{Engine, RenderFailure, contact_data};
use crate::sms::{self, Encoding};
use crate::tokens::{Signer, TokenError};
use crate::tracking::{self, Recipient};

/// The sender profile of jobs that name none.
pub const DEFAULT_PROFILE: &str = "default";

/// A message ready for a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Email(v1::RenderedEmail),
    Sms(v1::RenderedSms),
}

/// Why a job gives no message, in words its writer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("template `{id}` has no version {version}")]
    TemplateNotFound { id: String, version: u32 },
    #[error("template `{id}` is a {template} template but the job is for {job}")]
    WrongChannel {
        id: String,
        template: &'static str,
        job: &'static str,
    },
    #[error("sender profile `{0}` is not configured ([renderer.sender_profiles.{0}])")]
    UnknownSenderProfile(String),
    #[error("{0}")]
    Render(#[from] RenderFailure),
    #[error("the SMS needs {parts} parts ({encoding}) and the campaign allows {max}")]
    TooLong {
        parts: usize,
        max: u32,
        encoding: &'static str,
    },
    #[error("the contact has no {0}")]
    NoAddress(&'static str),
    #[error("signing a link: {0}")]
    Token(#[from] TokenError),
}

impl Refusal {
    /// The reason a dashboard groups by.
    pub fn reason(&self) -> v1::Reason {
        match self {
            Refusal::TemplateNotFound { .. } => v1::Reason::TemplateNotFound,
            Refusal::Render(RenderFailure::MissingField(_)) => v1::Reason::MissingField,
            Refusal::TooLong { .. } => v1::Reason::TooLong,
            Refusal::NoAddress(_) => v1::Reason::InvalidAddress,
            Refusal::WrongChannel { .. }
            | Refusal::UnknownSenderProfile(_)
            | Refusal::Render(_)
            | Refusal::Token(_) => v1::Reason::RenderError,
        }
    }

    /// Low-cardinality name for metrics and the dead-letter class.
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::TemplateNotFound { .. } => "template_not_found",
            Refusal::WrongChannel { .. } => "wrong_channel",
            Refusal::UnknownSenderProfile(_) => "unknown_sender_profile",
            Refusal::Render(RenderFailure::MissingField(_)) => "missing_field",
            Refusal::Render(_) | Refusal::Token(_) => "render_error",
            Refusal::TooLong { .. } => "too_long",
            Refusal::NoAddress(_) => "no_address",
        }
    }

    /// Whether the job also goes to the dead-letter topic. A template or configuration
    /// mistake does: an operator must see it and can replay the job once it is fixed. An
    /// SMS that is too long for this contact (a long name, a long commune) is an expected
    /// outcome of the campaign's own limit, reported by its feedback alone.
    pub fn dead_letters(&self) -> bool {
        !matches!(self, Refusal::TooLong { .. })
    }
}

/// What a job's signed links name where a blast's name its campaign: the campaign id, or
/// for a sequence step (no campaign, its sequence fields set) the step group, which the
/// tracker reads back with [`StepRef::parse_group`]. The idempotency key of such a job is
/// `<group>:<contact>:<channel>`, so the tracker rebuilds it from a token as it does a
/// blast's.
pub fn link_group(job: &v1::SendJob) -> String {
    if job.campaign_id.is_empty()
        && let Some(step) = StepRef::from_fields(&job.sequence_id, &job.enrolment_id, job.step)
    {
        return step.group();
    }
    job.campaign_id.clone()
}

fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        Channel::Sms => "sms",
    }
}

fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Gsm7 => "GSM-7",
        Encoding::Ucs2 => "UCS-2",
    }
}

/// Renders jobs. Shared by every task of a renderer (interior locks; rendering itself only
/// takes a read lock, compiling a new version a write lock).
pub struct Composer {
    engine: RwLock<Engine>,
    templates: Mutex<TemplateCache>,
    signer: Signer,
    profiles: BTreeMap<String, SenderProfile>,
    normalise_sms: bool,
    default_max_sms_parts: u32,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composer")
            .field("profiles", &self.profiles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Template versions by (id, version), bounded, oldest dropped first. Versions never
/// change once stored, so nothing here is ever stale.
#[derive(Debug, Default)]
struct TemplateCache {
    by_key: HashMap<(String, u32), Arc<TemplateVersion>>,
    order: VecDeque<(String, u32)>,
}

impl Composer {
    pub fn new(config: &RendererConfig) -> Self {
        Composer {
            engine: RwLock::new(Engine::with_capacity(config.compiled_templates)),
            templates: Mutex::new(TemplateCache::default()),
            signer: Signer::new(config.token_key.clone()),
            profiles: config.sender_profiles.clone(),
            normalise_sms: config.normalise_sms,
            default_max_sms_parts: config.default_max_sms_parts,
        }
    }

    /// A cached template version.
    pub fn cached(&self, id: &str, version: u32) -> Option<Arc<TemplateVersion>> {
        let cache = self.templates.lock().ok()?;
        cache.by_key.get(&(id.to_owned(), version)).cloned()
    }

    /// Keeps a version loaded from the store, and compiles it now (outside any render).
    pub fn remember(&self, template: TemplateVersion) -> Result<Arc<TemplateVersion>, Refusal> {
        self.prepare(&template)?;
        let template = Arc::new(template);
        let capacity = self
            .engine
            .read()
            .map(|e| e.capacity())
            .unwrap_or(usize::MAX);
        if let Ok(mut cache) = self.templates.lock() {
            let key = (template.id.clone(), template.version);
            if cache.by_key.insert(key.clone(), template.clone()).is_none() {
                cache.order.push_back(key);
            }
            while cache.order.len() > capacity {
                if let Some(old) = cache.order.pop_front() {
                    cache.by_key.remove(&old);
                }
            }
        }
        Ok(template)
    }

    fn prepare(&self, template: &TemplateVersion) -> Result<(), Refusal> {
        let prepared = self
            .engine
            .read()
            .map(|e| e.is_prepared(&template.id, template.version))
            .unwrap_or(false);
        if !prepared {
            let mut engine = self
                .engine
                .write()
                .map_err(|_| RenderFailure::Render("template engine lock poisoned".into()))?;
            engine.prepare(template)?;
        }
        Ok(())
    }

    /// The sender profile a job names (`default` when it names none).
    pub fn profile(&self, name: &str) -> Result<&SenderProfile, Refusal> {
        let name = if name.is_empty() {
            DEFAULT_PROFILE
        } else {
            name
        };
        self.profiles
            .get(name)
            .ok_or_else(|| Refusal::UnknownSenderProfile(name.to_owned()))
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Renders `job` with `template` (the version the job pins).
    pub fn compose(
        &self,
        job: &v1::SendJob,
        template: &TemplateVersion,
    ) -> Result<Message, Refusal> {
        let contact = job.contact.clone().unwrap_or_default();
        let channel = match job.channel() {
            v1::Channel::Sms => Channel::Sms,
            _ => Channel::Email,
        };
        if template.draft.channel != channel {
            return Err(Refusal::WrongChannel {
                id: template.id.clone(),
                template: channel_name(template.draft.channel),
                job: channel_name(channel),
            });
        }
        let profile = self.profile(&job.sender_profile)?;
        self.prepare(template)?;
        let group = link_group(job);
        let who = Recipient {
            campaign_id: &group,
            contact_id: &contact.id,
            channel: channel_name(channel),
        };
        let unsubscribe = compliance::unsubscribe_url(profile, &self.signer, &group, &contact.id)?;
        let extra = BTreeMap::from([
            ("campaign", json!({ "id": job.campaign_id })),
            (
                "sender",
                json!({
                    "name": profile.legal_name,
                    "from": profile.from,
                    "sms": profile.sms_sender,
                }),
            ),
            ("unsubscribe_url", Value::from(unsubscribe.as_str())),
        ]);
        let data = contact_data(&contact, &extra);
        let locale = if contact.locale.is_empty() {
            template.draft.default_locale.as_str()
        } else {
            contact.locale.as_str()
        };
        let origin = v1::Origin {
            idempotency_key: job.idempotency_key.clone(),
            campaign_id: job.campaign_id.clone(),
            contact_id: contact.id.clone(),
            template_id: job.template_id.clone(),
            template_version: job.template_version,
            lane: job.lane,
            sender_profile: job.sender_profile.clone(),
            expires_at: job.expires_at,
            sequence_id: job.sequence_id.clone(),
            enrolment_id: job.enrolment_id.clone(),
            step: job.step,
        };
        let meta = |prefix: &str| v1::EventMeta {
            event_id: format!("{prefix}:{}", job.idempotency_key),
            occurred_at: Some(tocsin_contracts::timestamp_now()),
            source: "renderer".to_owned(),
        };
        let engine = self
            .engine
            .read()
            .map_err(|_| RenderFailure::Render("template engine lock poisoned".into()))?;
        let tracking = job.tracking.unwrap_or_default();
        match channel {
            Channel::Email => {
                if contact.email.trim().is_empty() {
                    return Err(Refusal::NoAddress("e-mail address"));
                }
                let mut parts = engine.render_email(template, data, locale)?;
                drop(engine);
                // The text part keeps the real links: derived before they are rewritten
                // (templates without one get it from their HTML when compiled).
                if parts.text.is_none() {
                    parts.text = Some(crate::text::from_html(&parts.html));
                }
                if tracking.click_rewriting {
                    parts.html = tracking::rewrite_links(
                        &parts.html,
                        &profile.tracker_base_url,
                        &self.signer,
                        who,
                    )?
                    .0;
                }
                let mut email = compliance::email_with_unsubscribe(
                    parts,
                    profile,
                    unsubscribe,
                    &job.idempotency_key,
                    locale,
                );
                if tracking.open_pixel {
                    let url = tracking::open_url(&profile.tracker_base_url, &self.signer, who)?;
                    email.parts.html = tracking::add_pixel(&email.parts.html, &url);
                }
                Ok(Message::Email(v1::RenderedEmail {
                    meta: Some(meta("email")),
                    origin: Some(origin),
                    from: profile.from.clone(),
                    to: contact.email.trim().to_owned(),
                    reply_to: profile.reply_to.clone().unwrap_or_default(),
                    // A header: contact data must not start a new line in it.
                    subject: email
                        .parts
                        .subject
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect(),
                    html: email.parts.html,
                    text: email.parts.text.unwrap_or_default(),
                    message_id: email.message_id,
                    headers: email
                        .headers
                        .into_iter()
                        .map(|(name, value)| v1::Header { name, value })
                        .collect(),
                }))
            }
            Channel::Sms => {
                if contact.phone_e164.trim().is_empty() {
                    return Err(Refusal::NoAddress("mobile number"));
                }
                let body = engine.render_sms(template, data, locale)?;
                drop(engine);
                let body = compliance::sms(&body, profile);
                let body = if self.normalise_sms {
                    sms::normalise_french(&body).into_owned()
                } else {
                    body
                };
                let layout = sms::layout(&body);
                let max = if job.max_sms_parts == 0 {
                    self.default_max_sms_parts
                } else {
                    job.max_sms_parts
                };
                if layout.parts > max as usize {
                    return Err(Refusal::TooLong {
                        parts: layout.parts,
                        max,
                        encoding: encoding_name(layout.encoding),
                    });
                }
                Ok(Message::Sms(v1::RenderedSms {
                    meta: Some(meta("sms")),
                    origin: Some(origin),
                    to: contact.phone_e164.trim().to_owned(),
                    from: profile.sms_sender.clone(),
                    body,
                    encoding: match layout.encoding {
                        Encoding::Gsm7 => v1::SmsEncoding::Gsm7,
                        Encoding::Ucs2 => v1::SmsEncoding::Ucs2,
                    }
                    .into(),
                    parts: u32::try_from(layout.parts).unwrap_or(u32::MAX),
                    messaging_service: String::new(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_the_campaign_or_else_the_step() {
        let step = StepRef {
            sequence_id: "bienvenue".into(),
            enrolment: 3,
            step: 1,
        };
        let mut job = v1::SendJob {
            campaign_id: "cmp-a".into(),
            ..Default::default()
        };
        assert_eq!(link_group(&job), "cmp-a");
        job.campaign_id.clear();
        assert_eq!(link_group(&job), "", "neither: nothing to name");
        job.sequence_id = step.sequence_id.clone();
        job.enrolment_id = step.enrolment_id();
        job.step = step.step;
        assert_eq!(link_group(&job), "seq~bienvenue~e3~1");
        assert_eq!(StepRef::parse_group(&link_group(&job)), Some(step));
        // A campaign id wins when a job has both.
        job.campaign_id = "cmp-b".into();
        assert_eq!(link_group(&job), "cmp-b");
    }
}
