//! Rendering a template version for one contact.
//!
//! Two Handlebars registries: one HTML-escapes every value (HTML parts), one does not
//! (subject, text and SMS, which are not HTML). Both run in strict mode: a variable the
//! contact does not have is an error naming it, unless the template gave a fallback
//! (`{{default first_name "à toi"}}`) or tested it (`{{#if first_name}}`). A template
//! version is compiled once; rendering never parses.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::{Map, Value};
use tocsin_contracts::v1;
use tocsin_templates::{Content, TemplateVersion};

/// Why a message could not be rendered, for `Feedback(failed, reason)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderFailure {
    /// The template reads a field this contact does not have, without a fallback.
    #[error(
        "the contact has no `{0}` and the template gives no fallback (use {{{{default {0} \"...\"}}}})"
    )]
    MissingField(String),
    #[error("{0}")]
    Render(String),
}

/// A rendered e-mail's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailParts {
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
}

/// Compiled templates, and the helpers they may use.
pub struct Engine {
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
    compiled: HashSet<(String, u32)>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({} template versions)", self.compiled.len())
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

fn name(t: &TemplateVersion, locale: &str, part: &str) -> String {
    format!("{}@{}/{locale}/{part}", t.id, t.version)
}

impl Engine {
    pub fn new() -> Self {
        let mut html = Handlebars::new();
        let mut plain = Handlebars::new();
        plain.register_escape_fn(handlebars::no_escape);
        for registry in [&mut html, &mut plain] {
            registry.set_strict_mode(true);
            registry.register_helper("default", Box::new(default_helper));
            registry.register_helper("number", Box::new(number_helper));
            registry.register_helper("date", Box::new(date_helper));
        }
        Engine {
            html,
            plain,
            compiled: HashSet::new(),
        }
    }

    /// Compiles a version's parts, once.
    pub fn prepare(&mut self, t: &TemplateVersion) -> Result<(), RenderFailure> {
        if self.compiled.contains(&(t.id.clone(), t.version)) {
            return Ok(());
        }
        for (locale, content) in &t.draft.variants {
            for (part, source) in content.parts() {
                let registry = if part == "html" {
                    &mut self.html
                } else {
                    &mut self.plain
                };
                registry
                    .register_template_string(&name(t, locale, part), source)
                    .map_err(|e| RenderFailure::Render(e.to_string()))?;
            }
        }
        self.compiled.insert((t.id.clone(), t.version));
        Ok(())
    }

    fn render(
        &self,
        t: &TemplateVersion,
        locale: &str,
        part: &str,
        data: &Value,
    ) -> Result<String, RenderFailure> {
        let registry = if part == "html" {
            &self.html
        } else {
            &self.plain
        };
        registry
            .render(&name(t, locale, part), data)
            .map_err(|e| match e.reason() {
                RenderErrorReason::MissingVariable(Some(path)) => {
                    RenderFailure::MissingField(path.clone())
                }
                _ => RenderFailure::Render(e.to_string()),
            })
    }

    pub fn render_email(
        &self,
        t: &TemplateVersion,
        data: &Value,
        locale: &str,
    ) -> Result<EmailParts, RenderFailure> {
        let locale = choose_locale(t, locale);
        let has_text = matches!(
            t.draft.variants.get(&locale),
            Some(Content::Email { text: Some(_), .. })
        );
        Ok(EmailParts {
            subject: self.render(t, &locale, "subject", data)?,
            html: self.render(t, &locale, "html", data)?,
            text: if has_text {
                Some(self.render(t, &locale, "text", data)?)
            } else {
                None
            },
        })
    }

    pub fn render_sms(
        &self,
        t: &TemplateVersion,
        data: &Value,
        locale: &str,
    ) -> Result<String, RenderFailure> {
        let locale = choose_locale(t, locale);
        self.render(t, &locale, "body", data)
    }
}

/// The variant for a contact's locale: exact (`fr-CA`), then the language (`fr`), then the
/// template's default.
pub fn choose_locale(t: &TemplateVersion, wanted: &str) -> String {
    let variants = &t.draft.variants;
    if variants.contains_key(wanted) {
        return wanted.to_owned();
    }
    let language = wanted.split(['-', '_']).next().unwrap_or_default();
    if variants.contains_key(language) {
        return language.to_owned();
    }
    t.draft.default_locale.clone()
}

/// What a template sees of a contact. Empty fields are left out, so that strict mode
/// reports them as missing rather than rendering an empty name.
pub fn contact_data(contact: &v1::Contact, extra: &BTreeMap<&str, Value>) -> Value {
    let mut map = Map::new();
    for (key, value) in [
        ("first_name", &contact.first_name),
        ("last_name", &contact.last_name),
        ("email", &contact.email),
        ("phone", &contact.phone_e164),
        ("locale", &contact.locale),
        ("time_zone", &contact.time_zone),
    ] {
        if !value.trim().is_empty() {
            map.insert(key.to_owned(), Value::from(value.clone()));
        }
    }
    let attributes: Map<String, Value> = contact
        .attributes
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
        .collect();
    map.insert("attributes".to_owned(), Value::Object(attributes));
    for (k, v) in extra {
        map.insert((*k).to_owned(), v.clone());
    }
    Value::Object(map)
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// `{{default value "fallback"}}`: the value, or the fallback when it is missing or empty.
fn default_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let chosen = if is_blank(&value) {
        h.param(1).map(|p| p.value().clone()).unwrap_or(Value::Null)
    } else {
        value
    };
    let text = match chosen {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    out.write(&text)?;
    Ok(())
}

fn locale_of(ctx: &Context) -> String {
    ctx.data()["locale"].as_str().unwrap_or("fr").to_owned()
}

/// `{{number value}}` or `{{number value 2}}`: grouped by thousands in the contact's
/// locale (French: narrow no-break space and a decimal comma; English: comma and point).
fn number_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let n = match &value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', ".").parse::<f64>().ok(),
        _ => None,
    };
    let Some(n) = n else {
        out.write(&match value {
            Value::String(s) => s,
            _ => String::new(),
        })?;
        return Ok(());
    };
    let decimals = h
        .param(1)
        .and_then(|p| p.value().as_u64())
        .unwrap_or(0)
        .min(6) as usize;
    out.write(&format_number(n, decimals, &locale_of(ctx)))?;
    Ok(())
}

pub fn format_number(n: f64, decimals: usize, locale: &str) -> String {
    let (group, point) = if locale.starts_with("fr") {
        ('\u{202f}', ',')
    } else {
        (',', '.')
    };
    let formatted = format!("{:.*}", decimals, n.abs());
    let (int, frac) = formatted.split_once('.').unwrap_or((&formatted, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(c);
    }
    let sign = if n < 0.0 && formatted.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}{point}{frac}")
    }
}

/// `{{date value}}`: an RFC 3339 instant as a date and time in the contact's time zone and
/// language (`samedi 5 décembre 2026 à 10h00`, `Saturday 5 December 2026 at 10:00`).
fn date_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let raw = h
        .param(0)
        .and_then(|p| p.value().as_str())
        .unwrap_or_default()
        .to_owned();
    let zone: Tz = ctx.data()["time_zone"]
        .as_str()
        .and_then(|z| z.parse().ok())
        .unwrap_or(chrono_tz::Europe::Paris);
    match DateTime::parse_from_rfc3339(&raw) {
        Ok(t) => out.write(&format_date(t.with_timezone(&zone), &locale_of(ctx)))?,
        Err(_) => out.write(&raw)?,
    }
    Ok(())
}

pub fn format_date(t: DateTime<Tz>, locale: &str) -> String {
    const FR_DAYS: [&str; 7] = [
        "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
    ];
    const FR_MONTHS: [&str; 12] = [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ];
    const EN_DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const EN_MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let day = t.weekday().num_days_from_monday() as usize;
    let month = t.month0() as usize;
    if locale.starts_with("fr") {
        format!(
            "{} {} {} {} à {}h{:02}",
            FR_DAYS[day],
            t.day(),
            FR_MONTHS[month],
            t.year(),
            t.hour(),
            t.minute()
        )
    } else {
        format!(
            "{} {} {} {} at {:02}:{:02}",
            EN_DAYS[day],
            t.day(),
            EN_MONTHS[month],
            t.year(),
            t.hour(),
            t.minute()
        )
    }
}
