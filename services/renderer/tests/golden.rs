//! Golden messages: what recipients receive, byte for byte, for the cases that go wrong in
//! real campaigns (French and English, a missing field, a hostile name, emoji, very long
//! names, tracking). Rendering is deterministic for a given job (Message-ID, tokens and
//! event ids derive from its idempotency key), so each case is compared whole with
//! `tests/golden/<case>.txt`.
//!
//! After a deliberate change, rewrite the files with `TOCSIN_UPDATE_GOLDEN=1` and review
//! the diff like code.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use tocsin_contracts::v1;
use tocsin_renderer::compose::{Composer, Message};
use tocsin_renderer::config::{Config, DEFAULTS};
use tocsin_runtime::ConfigLoader;
use tocsin_templates::{Channel, Content, TemplateDraft, TemplateVersion};

fn composer() -> Composer {
    let config: Config = ConfigLoader::defaults_only(Some(DEFAULTS))
        .load()
        .expect("defaults load");
    Composer::new(&config.renderer)
}

fn version(id: &str, draft: TemplateDraft) -> TemplateVersion {
    TemplateVersion {
        id: id.into(),
        version: 4,
        draft,
        created_by: "golden".into(),
        created_ms: 0,
    }
}

fn email_template() -> TemplateVersion {
    let fr = Content::Email {
        subject: "{{default first_name \"Chère amie, cher ami\"}}, on se retrouve le {{date attributes.rdv}} ?"
            .into(),
        html: concat!(
            "<html><body>\n",
            "<h1>Bonjour {{default first_name \"à toi\"}} !</h1>\n",
            "<p>Grande réunion publique à {{attributes.commune}} : déjà {{number attributes.inscrits}} inscrits.</p>\n",
            "<p><a href=\"https://exemple.fr/reunion?commune={{attributes.commune}}\">Je m'inscris</a></p>\n",
            "</body></html>"
        )
        .into(),
        text: None,
    };
    let en = Content::Email {
        subject: "{{default first_name \"Friend\"}}, see you on {{date attributes.rdv}}?".into(),
        html: concat!(
            "<html><body>\n",
            "<h1>Hello {{default first_name \"friend\"}}!</h1>\n",
            "<p>Public meeting in {{attributes.commune}}: {{number attributes.inscrits}} already registered.</p>\n",
            "<p><a href=\"https://exemple.fr/meeting\">Register</a></p>\n",
            "</body></html>"
        )
        .into(),
        text: Some("Hello {{default first_name \"friend\"}}, register at https://exemple.fr/meeting".into()),
    };
    version(
        "reunion",
        TemplateDraft {
            channel: Channel::Email,
            variants: BTreeMap::from([("fr".to_owned(), fr), ("en".to_owned(), en)]),
            default_locale: "fr".into(),
        },
    )
}

fn strict_template() -> TemplateVersion {
    version(
        "strict",
        TemplateDraft {
            channel: Channel::Email,
            variants: BTreeMap::from([(
                "fr".to_owned(),
                Content::Email {
                    subject: "Bonjour {{first_name}}".into(),
                    html: "<p>Bonjour {{first_name}}</p>".into(),
                    text: None,
                },
            )]),
            default_locale: "fr".into(),
        },
    )
}

fn sms_template() -> TemplateVersion {
    version(
        "rappel",
        TemplateDraft {
            channel: Channel::Sms,
            variants: BTreeMap::from([
                (
                    "fr".to_owned(),
                    Content::Sms {
                        body: "{{default first_name \"Bonjour\"}}, on compte sur vous le {{date attributes.rdv}} à {{attributes.commune}} — l’équipe « Tocsin ».".into(),
                    },
                ),
                (
                    "en".to_owned(),
                    Content::Sms {
                        body: "{{default first_name \"Hi\"}}, see you on {{date attributes.rdv}} in {{attributes.commune}}.".into(),
                    },
                ),
            ]),
            default_locale: "fr".into(),
        },
    )
}

fn contact(id: &str, first_name: &str, locale: &str, zone: &str) -> v1::Contact {
    v1::Contact {
        id: id.into(),
        email: format!("{id}@exemple.fr"),
        phone_e164: "+33612345678".into(),
        first_name: first_name.into(),
        locale: locale.into(),
        time_zone: zone.into(),
        attributes: HashMap::from([
            ("commune".to_owned(), "Saint-Denis".to_owned()),
            ("inscrits".to_owned(), "12480".to_owned()),
            ("rdv".to_owned(), "2026-12-05T09:00:00Z".to_owned()),
        ]),
        ..Default::default()
    }
}

fn job(template: &TemplateVersion, who: v1::Contact) -> v1::SendJob {
    let channel = match template.draft.channel {
        Channel::Email => v1::Channel::Email,
        Channel::Sms => v1::Channel::Sms,
    };
    let key = format!(
        "cmp-golden:{}:{}",
        who.id,
        if channel == v1::Channel::Sms {
            "sms"
        } else {
            "email"
        }
    );
    v1::SendJob {
        idempotency_key: key,
        campaign_id: "cmp-golden".into(),
        channel: channel.into(),
        template_id: template.id.clone(),
        template_version: template.version,
        contact: Some(who),
        ..Default::default()
    }
}

/// A message as a reviewer reads it.
fn show(result: Result<Message, tocsin_renderer::compose::Refusal>) -> String {
    let mut out = String::new();
    match result {
        Ok(Message::Email(e)) => {
            let _ = writeln!(out, "From: {}", e.from);
            let _ = writeln!(out, "To: {}", e.to);
            let _ = writeln!(out, "Reply-To: {}", e.reply_to);
            let _ = writeln!(out, "Subject: {}", e.subject);
            let _ = writeln!(out, "Message-ID: {}", e.message_id);
            for h in &e.headers {
                let _ = writeln!(out, "{}: {}", h.name, h.value);
            }
            let _ = writeln!(out, "\n--- text ---\n{}", e.text);
            let _ = writeln!(out, "--- html ---\n{}", e.html);
        }
        Ok(Message::Sms(s)) => {
            let _ = writeln!(out, "From: {}", s.from);
            let _ = writeln!(out, "To: {}", s.to);
            let _ = writeln!(
                out,
                "Encoding: {}, parts: {}, characters: {}",
                s.encoding().as_str_name(),
                s.parts,
                s.body.chars().count()
            );
            let _ = writeln!(out, "\n{}", s.body);
        }
        Err(refusal) => {
            let _ = writeln!(
                out,
                "Refused ({}, {}):\n{refusal}",
                refusal.class(),
                refusal.reason().as_str_name()
            );
        }
    }
    out
}

fn check(case: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.txt"));
    if std::env::var_os("TOCSIN_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with TOCSIN_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{case} differs from {}:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn french_email() {
    let t = email_template();
    let c = composer();
    check(
        "email_fr",
        &show(c.compose(
            &job(&t, contact("c-fr", "Inès", "fr-FR", "Europe/Paris")),
            &t,
        )),
    );
}

#[test]
fn english_email_with_its_own_text_part_in_its_own_time_zone() {
    let t = email_template();
    let c = composer();
    check(
        "email_en",
        &show(c.compose(
            &job(&t, contact("c-en", "Sam", "en", "America/Martinique")),
            &t,
        )),
    );
}

#[test]
fn missing_first_name_uses_the_fallback_or_is_refused_by_name() {
    let c = composer();
    let t = email_template();
    check(
        "email_fallback",
        &show(c.compose(&job(&t, contact("c-anon", "", "fr", "Europe/Paris")), &t)),
    );
    let strict = strict_template();
    check(
        "email_missing_field",
        &show(c.compose(
            &job(&strict, contact("c-anon", "", "fr", "Europe/Paris")),
            &strict,
        )),
    );
}

#[test]
fn a_hostile_name_is_escaped_in_html_and_harmless_elsewhere() {
    let t = email_template();
    let c = composer();
    let rendered = show(c.compose(
        &job(
            &t,
            contact("c-xss", "<script>alert(1)</script>", "fr", "Europe/Paris"),
        ),
        &t,
    ));
    let html = rendered.split("--- html ---").nth(1).expect("html part");
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    check("email_hostile_name", &rendered);

    // A name that tries to add a header to the message.
    let injected = c
        .compose(
            &job(
                &t,
                contact(
                    "c-crlf",
                    "Eve\r\nBcc: victim@exemple.fr",
                    "fr",
                    "Europe/Paris",
                ),
            ),
            &t,
        )
        .expect("renders");
    let Message::Email(email) = injected else {
        panic!("an e-mail")
    };
    assert!(!email.subject.contains(['\r', '\n']), "{:?}", email.subject);
    assert!(
        email
            .subject
            .starts_with("Eve  Bcc: victim@exemple.fr, on se retrouve")
    );
}

#[test]
fn tracked_email() {
    let t = email_template();
    let c = composer();
    let mut j = job(&t, contact("c-track", "Inès", "fr", "Europe/Paris"));
    j.tracking = Some(v1::TrackingOptions {
        open_pixel: true,
        click_rewriting: true,
    });
    check("email_tracked", &show(c.compose(&j, &t)));
}

#[test]
fn french_sms_normalised_to_gsm7() {
    let t = sms_template();
    let c = composer();
    check(
        "sms_fr",
        &show(c.compose(&job(&t, contact("c-sms", "Léa", "fr", "Europe/Paris")), &t)),
    );
}

#[test]
fn an_emoji_makes_the_sms_ucs2() {
    let t = sms_template();
    let c = composer();
    check(
        "sms_emoji",
        &show(c.compose(
            &job(&t, contact("c-emoji", "Léa 🎉", "fr", "Europe/Paris")),
            &t,
        )),
    );
}

#[test]
fn very_long_names_cost_parts_and_meet_the_limit() {
    let t = sms_template();
    let c = composer();
    let long = "Marie-Bernadette-Églantine-Anne-Sophie de La Tour d'Auvergne-Lauraguais";
    check(
        "sms_long_name",
        &show(c.compose(&job(&t, contact("c-long", long, "fr", "Europe/Paris")), &t)),
    );
    let mut limited = job(&t, contact("c-long", &long.repeat(4), "fr", "Europe/Paris"));
    limited.max_sms_parts = 2;
    check("sms_too_long", &show(c.compose(&limited, &t)));
    let e = email_template();
    check(
        "email_long_name",
        &show(c.compose(
            &job(&e, contact("c-long", &long.repeat(3), "fr", "Europe/Paris")),
            &e,
        )),
    );
}

#[test]
fn english_sms() {
    let t = sms_template();
    let c = composer();
    check(
        "sms_en",
        &show(c.compose(
            &job(&t, contact("c-sms-en", "Sam", "en-GB", "Europe/London")),
            &t,
        )),
    );
}
