//! Structural rules for top-level events, checked on every decode so that a service never
//! sees, say, a `SegmentEvent` without a contact id. Protobuf is lenient (an empty payload
//! is a valid message of any type); these rules are what makes garbage recognisable.

use crate::v1;

/// A rule an event breaks, naming the field in proto3-JSON spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct ValidationError {
    pub field: &'static str,
    pub problem: &'static str,
}

/// Implemented by every top-level event.
pub trait Validate {
    fn validate(&self) -> Result<(), ValidationError>;
}

fn required(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError {
            field,
            problem: "is required",
        });
    }
    Ok(())
}

/// Identifiers travel in Redis keys and composite values: letters, digits and `._:-` only,
/// at most 128 characters.
fn identifier(field: &'static str, value: &str) -> Result<(), ValidationError> {
    required(field, value)?;
    let ok = value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(ValidationError {
            field,
            problem: "must be at most 128 letters, digits, '.', '_', ':' or '-'",
        });
    }
    Ok(())
}

fn present<T>(field: &'static str, value: Option<&T>) -> Result<(), ValidationError> {
    match value {
        Some(_) => Ok(()),
        None => Err(ValidationError {
            field,
            problem: "is required",
        }),
    }
}

fn meta(meta: Option<&v1::EventMeta>) -> Result<(), ValidationError> {
    let meta = meta.ok_or(ValidationError {
        field: "meta",
        problem: "is required",
    })?;
    required("meta.eventId", &meta.event_id)
}

fn channel(field: &'static str, value: i32) -> Result<(), ValidationError> {
    match v1::Channel::try_from(value) {
        Ok(v1::Channel::Email | v1::Channel::Sms) => Ok(()),
        _ => Err(ValidationError {
            field,
            problem: "must be CHANNEL_EMAIL or CHANNEL_SMS",
        }),
    }
}

impl Validate for v1::SegmentEvent {
    fn validate(&self) -> Result<(), ValidationError> {
        use v1::segment_event::Change;
        meta(self.meta.as_ref())?;
        identifier("contactId", &self.contact_id)?;
        match &self.change {
            Some(Change::Entered(entered)) => {
                identifier("entered.segmentId", &entered.segment_id)?;
                let contact = entered.contact.as_ref().ok_or(ValidationError {
                    field: "entered.contact",
                    problem: "is required",
                })?;
                if contact.id != self.contact_id {
                    return Err(ValidationError {
                        field: "entered.contact.id",
                        problem: "must equal contactId",
                    });
                }
                Ok(())
            }
            Some(Change::Left(left)) => {
                identifier("left.segmentId", &left.segment_id)?;
                match &left.contact {
                    Some(contact) if contact.id != self.contact_id => Err(ValidationError {
                        field: "left.contact.id",
                        problem: "must equal contactId",
                    }),
                    _ => Ok(()),
                }
            }
            Some(Change::Erased(_)) => Ok(()),
            None => Err(ValidationError {
                field: "entered|left|erased",
                problem: "one of them is required",
            }),
        }
    }
}

impl Validate for v1::CampaignCommand {
    fn validate(&self) -> Result<(), ValidationError> {
        use v1::campaign_command::Command;
        meta(self.meta.as_ref())?;
        if let Some(Command::DefineSequence(_) | Command::RetireSequence(_)) = &self.command {
            identifier("sequenceId", &self.sequence_id)?;
        } else {
            identifier("campaignId", &self.campaign_id)?;
        }
        match &self.command {
            Some(Command::DefineSequence(define)) => {
                let definition = define.definition.as_ref().ok_or(ValidationError {
                    field: "defineSequence.definition",
                    problem: "is required",
                })?;
                if define.version == 0 {
                    return Err(ValidationError {
                        field: "defineSequence.version",
                        problem: "is required (assigned by the API, from 1)",
                    });
                }
                identifier(
                    "defineSequence.definition.triggerSegmentId",
                    &definition.trigger_segment_id,
                )?;
                if definition.steps.is_empty() {
                    return Err(ValidationError {
                        field: "defineSequence.definition.steps",
                        problem: "needs at least one step",
                    });
                }
                for step in &definition.steps {
                    identifier(
                        "defineSequence.definition.steps[].templateId",
                        &step.template_id,
                    )?;
                    channel("defineSequence.definition.steps[].channel", step.channel)?;
                    if step.template_version == 0 {
                        return Err(ValidationError {
                            field: "defineSequence.definition.steps[].templateVersion",
                            problem: "is required (pinned when the version is defined)",
                        });
                    }
                }
                Ok(())
            }
            Some(Command::RetireSequence(_)) => Ok(()),
            Some(Command::Schedule(blast)) => {
                identifier("schedule.segmentId", &blast.segment_id)?;
                identifier("schedule.templateId", &blast.template_id)?;
                channel("schedule.channel", blast.channel)?;
                present("schedule.startAt", blast.start_at.as_ref())
            }
            Some(Command::Pause(_) | Command::Resume(_) | Command::Cancel(_)) => Ok(()),
            None => Err(ValidationError {
                field: "schedule|pause|resume|cancel|defineSequence|retireSequence",
                problem: "one of them is required",
            }),
        }
    }
}

impl Validate for v1::SendJob {
    fn validate(&self) -> Result<(), ValidationError> {
        meta(self.meta.as_ref())?;
        required("idempotencyKey", &self.idempotency_key)?;
        channel("channel", self.channel)?;
        required("templateId", &self.template_id)?;
        if self.template_version == 0 {
            // A job renders the version its campaign pinned, never "whatever is latest".
            return Err(ValidationError {
                field: "templateVersion",
                problem: "is required (the version pinned when the campaign was scheduled)",
            });
        }
        let contact = self.contact.as_ref().ok_or(ValidationError {
            field: "contact",
            problem: "is required",
        })?;
        required("contact.id", &contact.id)
    }
}

fn origin(origin: Option<&v1::Origin>) -> Result<(), ValidationError> {
    let origin = origin.ok_or(ValidationError {
        field: "origin",
        problem: "is required",
    })?;
    required("origin.idempotencyKey", &origin.idempotency_key)?;
    required("origin.contactId", &origin.contact_id)
}

impl Validate for v1::RenderedEmail {
    fn validate(&self) -> Result<(), ValidationError> {
        meta(self.meta.as_ref())?;
        origin(self.origin.as_ref())?;
        required("from", &self.from)?;
        required("to", &self.to)?;
        required("messageId", &self.message_id)
    }
}

impl Validate for v1::RenderedSms {
    fn validate(&self) -> Result<(), ValidationError> {
        meta(self.meta.as_ref())?;
        origin(self.origin.as_ref())?;
        required("to", &self.to)?;
        required("body", &self.body)
    }
}

impl Validate for v1::Feedback {
    fn validate(&self) -> Result<(), ValidationError> {
        meta(self.meta.as_ref())?;
        match v1::FeedbackKind::try_from(self.kind) {
            Ok(v1::FeedbackKind::Unspecified) | Err(_) => Err(ValidationError {
                field: "kind",
                problem: "must be a known FEEDBACK_KIND_*",
            }),
            Ok(_) => Ok(()),
        }
    }
}

impl Validate for v1::DeadLetter {
    fn validate(&self) -> Result<(), ValidationError> {
        required("topic", &self.topic)?;
        required("reason", &self.reason)
    }
}
