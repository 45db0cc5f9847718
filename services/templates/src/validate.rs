//! Validation at upload.

use handlebars::Path;
use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};

use crate::model::{Channel, Content, TemplateDraft};

/// Helpers a template may use: Handlebars' own, and those the renderer provides.
pub const KNOWN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and",
    "or", "not", "len", "default", "date", "number",
];

/// Top-level names a template can read (the contact schema, plus what the renderer adds).
pub const SCHEMA: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "locale",
    "time_zone",
    "attributes",
    "campaign",
    "sender",
    "unsubscribe_url",
    "this",
];

/// Fields that `{{{raw}}}` may print unescaped: the campaign's and the sender's own,
/// never the contact's.
pub const TRUSTED_RAW: &[&str] = &["campaign", "sender"];

/// One thing wrong, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `variants.fr.html`
    pub part: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.part)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " line {line}, column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What validation found: `errors` refuse the upload, `warnings` do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Checks a draft. In strict mode a variable outside the schema is an error.
pub fn validate(draft: &TemplateDraft, strict: bool) -> Report {
    let mut report = Report::default();
    if draft.variants.is_empty() {
        report.errors.push(problem(
            "variants",
            "at least one locale variant is required",
        ));
    }
    if !draft.variants.contains_key(&draft.default_locale) {
        report.errors.push(problem(
            "defaultLocale",
            &format!("{:?} has no variant", draft.default_locale),
        ));
    }
    for (locale, content) in &draft.variants {
        let matches = matches!(
            (draft.channel, content),
            (Channel::Email, Content::Email { .. }) | (Channel::Sms, Content::Sms { .. })
        );
        if !matches {
            report.errors.push(problem(
                &format!("variants.{locale}"),
                match draft.channel {
                    Channel::Email => "an e-mail variant needs subject and html (text optional)",
                    Channel::Sms => "an SMS variant needs a body",
                },
            ));
            continue;
        }
        for (name, source) in content.parts() {
            let part = format!("variants.{locale}.{name}");
            if source.trim().is_empty() && name != "text" {
                report.errors.push(problem(&part, "is empty"));
                continue;
            }
            match Template::compile(source) {
                Err(e) => {
                    let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
                    let excerpt = line
                        .and_then(|l| source.lines().nth(l.saturating_sub(1)))
                        .map(|text| format!(" near `{}`", text.trim()))
                        .unwrap_or_default();
                    report.errors.push(Problem {
                        part,
                        line,
                        column,
                        message: format!("{}{excerpt}", e.reason()),
                    });
                }
                Ok(template) => walk(&template, &part, strict, true, &mut report),
            }
        }
    }
    report
}

fn problem(part: &str, message: &str) -> Problem {
    Problem {
        part: part.to_owned(),
        line: None,
        column: None,
        message: message.to_owned(),
    }
}

/// Checks helpers, partials and (at the top context) variables.
fn walk(template: &Template, part: &str, strict: bool, top_context: bool, report: &mut Report) {
    for (i, element) in template.elements.iter().enumerate() {
        let at = template.mapping.get(i).map(|m| (m.0, m.1));
        let locate = |message: String| Problem {
            part: part.to_owned(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            message,
        };
        match element {
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => {
                if let TemplateElement::HtmlExpression(_) = element
                    && let Some(name) = path_name(path_of(&h.name))
                    && !TRUSTED_RAW
                        .iter()
                        .any(|t| name.split('.').next() == Some(*t))
                {
                    report.errors.push(locate(format!(
                        "`{{{{{{{name}}}}}}}` would print unescaped contact data: use `{{{{{name}}}}}`"
                    )));
                }
                let is_helper = matches!(element, TemplateElement::HelperBlock(_))
                    || !h.params.is_empty()
                    || !h.hash.is_empty();
                match (&h.name, is_helper) {
                    (Parameter::Name(name), true) if !KNOWN_HELPERS.contains(&name.as_str()) => {
                        report
                            .errors
                            .push(locate(format!("unknown helper `{name}`")));
                    }
                    (name, false) if top_context => {
                        check_variable(name, path_name(path_of(name)), strict, &locate, report);
                    }
                    _ => {}
                }
                for p in &h.params {
                    if top_context && let Parameter::Path(path) = p {
                        check_variable(p, path_name(Some(path)), strict, &locate, report);
                    }
                }
                // `each` and `with` change the context: names inside are relative to it.
                let inner_top = top_context
                    && !matches!(&h.name, Parameter::Name(n) if n == "each" || n == "with");
                walk_children(h, part, strict, inner_top, report);
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                report.errors.push(locate(
                    "partials are not supported: templates are self-contained".to_owned(),
                ));
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                report
                    .errors
                    .push(locate("decorators are not supported".to_owned()));
            }
            // Raw text and comments (and elements later versions of Handlebars add).
            _ => {}
        }
    }
}

fn walk_children(h: &HelperTemplate, part: &str, strict: bool, top: bool, report: &mut Report) {
    for t in [&h.template, &h.inverse].into_iter().flatten() {
        walk(t, part, strict, top, report);
    }
}

fn path_of(p: &Parameter) -> Option<&Path> {
    match p {
        Parameter::Path(path) => Some(path),
        _ => None,
    }
}

fn path_name(path: Option<&Path>) -> Option<String> {
    match path? {
        Path::Relative((_, raw)) => Some(raw.clone()),
        Path::Local(_) => None,
    }
}

fn check_variable(
    param: &Parameter,
    name: Option<String>,
    strict: bool,
    locate: &dyn Fn(String) -> Problem,
    report: &mut Report,
) {
    let name = match (param, name) {
        (Parameter::Name(n), _) => n.clone(),
        (_, Some(n)) => n,
        _ => return,
    };
    let first = name.split(['.', '/']).next().unwrap_or_default();
    if first.is_empty() || first.starts_with('@') || SCHEMA.contains(&first) {
        return;
    }
    let message = format!(
        "`{name}` is not in the contact schema ({})",
        SCHEMA.join(", ")
    );
    if strict {
        report.errors.push(locate(message));
    } else {
        report.warnings.push(locate(message));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sms(body: &str) -> TemplateDraft {
        TemplateDraft {
            channel: Channel::Sms,
            variants: BTreeMap::from([(
                "fr".to_owned(),
                Content::Sms {
                    body: body.to_owned(),
                },
            )]),
            default_locale: "fr".to_owned(),
        }
    }

    #[test]
    fn a_good_template_passes() {
        let r = validate(
            &sms(
                "Bonjour {{default first_name \"à toi\"}}, rdv {{attributes.commune}} {{#if first_name}}!{{/if}}",
            ),
            true,
        );
        assert_eq!(r, Report::default());
    }

    #[test]
    fn syntax_errors_give_line_column_and_text() {
        let r = validate(
            &sms("Bonjour\n{{#if first_name}}\nà bientôt {{first_name}"),
            false,
        );
        assert_eq!(r.errors.len(), 1, "{r:?}");
        let e = &r.errors[0];
        assert_eq!(e.part, "variants.fr.body");
        assert_eq!(e.line, Some(3));
        assert!(e.column.is_some());
        assert!(e.message.contains("near `à bientôt {{first_name}`"), "{e}");
    }

    #[test]
    fn unknown_helpers_and_partials_are_errors() {
        let r = validate(&sms("{{shout first_name}} {{> footer}}"), false);
        let messages: Vec<String> = r.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("unknown helper `shout`")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("partials are not supported")),
            "{messages:?}"
        );
    }

    #[test]
    fn unknown_variables_warn_or_refuse_in_strict_mode() {
        let lenient = validate(&sms("Bonjour {{prenom}}"), false);
        assert!(lenient.errors.is_empty());
        assert!(
            lenient.warnings[0]
                .message
                .contains("`prenom` is not in the contact schema")
        );
        let strict = validate(&sms("Bonjour {{prenom}}"), true);
        assert_eq!(strict.errors.len(), 1);
        // Inside `each`, names are relative to the item: not checked against the schema.
        let each = validate(
            &sms("{{#each attributes}}{{@key}}={{this}} {{nom}}{{/each}}"),
            true,
        );
        assert!(each.errors.is_empty(), "{each:?}");
    }

    #[test]
    fn raw_output_of_contact_data_is_refused() {
        let r = validate(&sms("{{{first_name}}} {{{sender.footer_html}}}"), false);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(
            r.errors[0]
                .message
                .contains("`{{{first_name}}}` would print unescaped contact data"),
            "{r:?}"
        );
    }

    #[test]
    fn variants_must_fit_the_channel() {
        let mut draft = sms("x");
        draft.channel = Channel::Email;
        assert!(
            validate(&draft, false).errors[0]
                .message
                .contains("subject and html")
        );
        draft.default_locale = "en".into();
        assert!(
            validate(&draft, false)
                .errors
                .iter()
                .any(|e| e.part == "defaultLocale")
        );
    }
}
