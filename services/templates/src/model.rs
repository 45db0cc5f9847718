//! A template and its versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

/// One locale's parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Content {
    Email {
        subject: String,
        html: String,
        /// Derived from the HTML when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Sms {
        body: String,
    },
}

impl Content {
    /// The parts and their names, for validation messages.
    pub fn parts(&self) -> Vec<(&'static str, &str)> {
        match self {
            Content::Email {
                subject,
                html,
                text,
            } => {
                let mut parts = vec![("subject", subject.as_str()), ("html", html.as_str())];
                if let Some(text) = text {
                    parts.push(("text", text.as_str()));
                }
                parts
            }
            Content::Sms { body } => vec![("body", body.as_str())],
        }
    }
}

/// What an upload carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateDraft {
    pub channel: Channel,
    /// Variants by locale (`fr`, `en`, `fr-FR`).
    pub variants: BTreeMap<String, Content>,
    /// Used when no variant matches the contact's locale.
    pub default_locale: String,
}

/// A stored version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVersion {
    pub id: String,
    pub version: u32,
    /// Nested, not flattened: the draft refuses unknown fields.
    pub draft: TemplateDraft,
    pub created_by: String,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
}
