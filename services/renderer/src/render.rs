//! Rendering a template version for one contact.
//!
//! Two Handlebars registries: one HTML-escapes every value (HTML parts), one does not
//! (subject, text and SMS, which are not HTML). Both run in strict mode: a variable the
//! contact does not have is an error naming it, unless the template gave a fallback
//! (`{{default first_name "à toi"}}`) or tested it (`{{#if first_name}}`). A template
//! version is compiled once; rendering never parses.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
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
    /// Compiled versions and their registered names, oldest first.
    compiled: VecDeque<((String, u32), Vec<String>)>,
    capacity: usize,
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
    /// An engine that keeps every version it compiles.
    pub fn new() -> Self {
        Self::with_capacity(usize::MAX)
    }

    /// An engine that keeps at most `capacity` versions compiled, dropping the oldest.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut html = Handlebars::new();
        let mut plain = Handlebars::new();
        plain.register_escape_fn(handlebars::no_escape);
        for registry in [&mut html, &mut plain] {
            registry.set_strict_mode(true);
            registry.register_helper("default", Box::new(ValueHelper(default_helper)));
            registry.register_helper("number", Box::new(ValueHelper(number_helper)));
            registry.register_helper("date", Box::new(ValueHelper(date_helper)));
        }
        Engine {
            html,
            plain,
            compiled: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many versions stay compiled.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a version is compiled (rendering it needs no [`Engine::prepare`]).
    pub fn is_prepared(&self, id: &str, version: u32) -> bool {
        self.compiled
            .iter()
            .any(|((i, v), _)| i == id && *v == version)
    }

    /// Compiles a version's parts, once.
    pub fn prepare(&mut self, t: &TemplateVersion) -> Result<(), RenderFailure> {
        if self.is_prepared(&t.id, t.version) {
            return Ok(());
        }
        let mut names = Vec::new();
        let mut result = Ok(());
        'parts: for (locale, content) in &t.draft.variants {
            for (part, source) in content.parts() {
                let registry = if part == "html" {
                    &mut self.html
                } else {
                    &mut self.plain
                };
                let name = name(t, locale, part);
                if let Err(e) = registry.register_template_string(&name, source) {
                    result = Err(RenderFailure::Render(e.to_string()));
                    break 'parts;
                }
                names.push(name);
            }
            // No text part: derive one from the HTML *template*, once, rather than from
            // every rendered HTML body. Expressions are text to the converter and come
            // through unchanged; if the result does not compile (an expression the
            // conversion split), each render derives its text from its HTML instead.
            if let Content::Email {
                html, text: None, ..
            } = content
            {
                let derived = crate::text::from_html(html);
                let name = name(t, locale, "text");
                if self.plain.register_template_string(&name, derived).is_ok() {
                    names.push(name);
                }
            }
        }
        if result.is_err() {
            self.unregister(&names);
            return result;
        }
        if self.compiled.len() >= self.capacity
            && let Some((_, old)) = self.compiled.pop_front()
        {
            self.unregister(&old);
        }
        self.compiled.push_back(((t.id.clone(), t.version), names));
        Ok(())
    }

    fn unregister(&mut self, names: &[String]) {
        for name in names {
            self.html.unregister_template(name);
            self.plain.unregister_template(name);
        }
    }

    fn render(
        &self,
        t: &TemplateVersion,
        locale: &str,
        part: &str,
        data: &Context,
    ) -> Result<String, RenderFailure> {
        let registry = if part == "html" {
            &self.html
        } else {
            &self.plain
        };
        registry
            .render_with_context(&name(t, locale, part), data)
            .map_err(|e| match e.reason() {
                RenderErrorReason::MissingVariable(Some(path)) => {
                    RenderFailure::MissingField(path.clone())
                }
                _ => RenderFailure::Render(e.to_string()),
            })
    }

    /// Renders an e-mail's parts. `data` is what [`contact_data`] gives; it is wrapped
    /// once for the three parts.
    pub fn render_email(
        &self,
        t: &TemplateVersion,
        data: Value,
        locale: &str,
    ) -> Result<EmailParts, RenderFailure> {
        let locale = choose_locale(t, locale);
        let data = &Context::from(data);
        let has_text = self.plain.has_template(&name(t, &locale, "text"));
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
        data: Value,
        locale: &str,
    ) -> Result<String, RenderFailure> {
        let locale = choose_locale(t, locale);
        self.render(t, &locale, "body", &Context::from(data))
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

/// A helper that computes a value. Handlebars writes it like a variable: HTML-escaped in
/// HTML parts (a fallback or a formatted value may hold contact data), as is elsewhere.
/// A helper writing to the output itself would bypass escaping.
struct ValueHelper(fn(&Helper<'_>, &Context) -> String);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        Ok(ScopedJson::Derived(Value::String((self.0)(h, ctx))))
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// `{{default value "fallback"}}`: the value, or the fallback when it is missing or empty.
fn default_helper(h: &Helper<'_>, _: &Context) -> String {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let chosen = if is_blank(&value) {
        h.param(1).map(|p| p.value().clone()).unwrap_or(Value::Null)
    } else {
        value
    };
    match chosen {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn locale_of(ctx: &Context) -> String {
    ctx.data()["locale"].as_str().unwrap_or("fr").to_owned()
}

/// `{{number value}}` or `{{number value 2}}`: grouped by thousands in the contact's
/// locale (French: narrow no-break space and a decimal comma; English: comma and point).
fn number_helper(h: &Helper<'_>, ctx: &Context) -> String {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let n = match &value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', ".").parse::<f64>().ok(),
        _ => None,
    };
    let Some(n) = n else {
        return match value {
            Value::String(s) => s,
            _ => String::new(),
        };
    };
    let decimals = h
        .param(1)
        .and_then(|p| p.value().as_u64())
        .unwrap_or(0)
        .min(6) as usize;
    format_number(n, decimals, &locale_of(ctx))
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
fn date_helper(h: &Helper<'_>, ctx: &Context) -> String {
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
        Ok(t) => format_date(t.with_timezone(&zone), &locale_of(ctx)),
        Err(_) => raw,
    }
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
