//! Rendering golden cases: French and English, missing fields, hostile names, emoji,
//! very long names.

use std::collections::BTreeMap;

use chrono::TimeZone;
use serde_json::json;
use tocsin_contracts::v1;
use tocsin_renderer::render::{Engine, RenderFailure, contact_data, format_date, format_number};
use tocsin_templates::{Channel, Content, TemplateDraft, TemplateVersion};

fn email_template() -> TemplateVersion {
    TemplateVersion {
        id: "rentree".into(),
        version: 3,
        draft: TemplateDraft {
            channel: Channel::Email,
            variants: BTreeMap::from([
                (
                    "fr".to_owned(),
                    Content::Email {
                        subject: "{{default first_name \"Bonjour\"}}, on compte sur vous".into(),
                        html: "<p>Bonjour {{first_name}} ({{attributes.commune}})</p><p>{{number attributes.dons}} € collectés</p>".into(),
                        text: Some("Bonjour {{first_name}}".into()),
                    },
                ),
                (
                    "en".to_owned(),
                    Content::Email {
                        subject: "{{default first_name \"Hello\"}}, we count on you".into(),
                        html: "<p>Hello {{first_name}}</p><p>{{number attributes.dons}} raised</p>".into(),
                        text: None,
                    },
                ),
            ]),
            default_locale: "fr".into(),
        },
        created_by: "test".into(),
        created_ms: 0,
    }
}

fn contact(first_name: &str, locale: &str) -> v1::Contact {
    v1::Contact {
        id: "c-1".into(),
        first_name: first_name.into(),
        locale: locale.into(),
        time_zone: "Europe/Paris".into(),
        attributes: [
            ("commune".to_owned(), "Lyon 7e".to_owned()),
            ("dons".to_owned(), "1234567.5".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn engine() -> Engine {
    let mut e = Engine::new();
    e.prepare(&email_template()).expect("compiles");
    e.prepare(&email_template())
        .expect("second prepare is a no-op");
    e
}

#[test]
fn french_and_english_variants_with_locale_formatting() {
    let e = engine();
    let t = email_template();
    let fr = e
        .render_email(
            &t,
            contact_data(&contact("Camille", "fr-FR"), &BTreeMap::new()),
            "fr-FR",
        )
        .expect("fr");
    assert_eq!(fr.subject, "Camille, on compte sur vous");
    assert_eq!(
        fr.html,
        "<p>Bonjour Camille (Lyon 7e)</p><p>1\u{202f}234\u{202f}568 € collectés</p>"
    );
    assert_eq!(fr.text.as_deref(), Some("Bonjour Camille"));
    let en = e
        .render_email(
            &t,
            contact_data(&contact("Sam", "en-GB"), &BTreeMap::new()),
            "en-GB",
        )
        .expect("en");
    assert_eq!(en.subject, "Sam, we count on you");
    assert_eq!(en.html, "<p>Hello Sam</p><p>1,234,568 raised</p>");
    assert_eq!(
        en.text.as_deref(),
        Some("Hello Sam\n\n1,234,568 raised"),
        "no text part in the template: derived from its HTML when compiled"
    );
    // An unknown language gets the default variant.
    let de = e
        .render_email(
            &t,
            contact_data(&contact("Jonas", "de"), &BTreeMap::new()),
            "de",
        )
        .expect("de");
    assert!(de.subject.starts_with("Jonas, on compte"));
}

#[test]
fn contact_data_is_escaped_in_html_and_plain_elsewhere() {
    let e = engine();
    let hostile = contact("<script>alert(1)</script>", "fr");
    let parts = e
        .render_email(
            &email_template(),
            contact_data(&hostile, &BTreeMap::new()),
            "fr",
        )
        .expect("renders");
    assert!(
        parts.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        parts.html
    );
    assert!(!parts.html.contains("<script>"));
    // The subject is not HTML: escaping it would show "&lt;" to the reader.
    assert_eq!(
        parts.subject,
        "<script>alert(1)</script>, on compte sur vous"
    );
}

#[test]
fn a_missing_field_without_fallback_is_named() {
    let e = engine();
    let nameless = contact("", "fr");
    let failure = e
        .render_email(
            &email_template(),
            contact_data(&nameless, &BTreeMap::new()),
            "fr",
        )
        .expect_err("first_name is required in the html part");
    assert_eq!(failure, RenderFailure::MissingField("first_name".into()));
    assert!(
        failure
            .to_string()
            .contains("{{default first_name \"...\"}}"),
        "{failure}"
    );
}

#[test]
fn emoji_and_very_long_names_render_whole() {
    let e = engine();
    let long = "Marie-Thérèse-Bernadette-Geneviève ".repeat(20);
    let parts = e
        .render_email(
            &email_template(),
            contact_data(&contact(&format!("{long}🎉"), "fr"), &BTreeMap::new()),
            "fr",
        )
        .expect("renders");
    assert!(parts.subject.ends_with("🎉, on compte sur vous"));
    assert!(parts.html.contains(&long));
}

#[test]
fn numbers_and_dates_follow_the_contact() {
    assert_eq!(format_number(1234.5, 2, "fr"), "1\u{202f}234,50");
    assert_eq!(format_number(-1234.5, 1, "en"), "-1,234.5");
    assert_eq!(format_number(999.0, 0, "fr"), "999");
    let noumea = chrono_tz::Pacific::Noumea;
    let t = chrono::Utc
        .with_ymd_and_hms(2026, 12, 4, 23, 0, 0)
        .single()
        .expect("utc")
        .with_timezone(&noumea);
    assert_eq!(format_date(t, "fr"), "samedi 5 décembre 2026 à 10h00");
    assert_eq!(format_date(t, "en"), "Saturday 5 December 2026 at 10:00");

    // Through a template, in the contact's own zone.
    let mut t = email_template();
    t.id = "dates".into();
    t.draft.variants = BTreeMap::from([(
        "fr".to_owned(),
        Content::Sms {
            body: "Meeting {{date campaign.start}}".into(),
        },
    )]);
    t.draft.channel = Channel::Sms;
    let mut e = Engine::new();
    e.prepare(&t).expect("compiles");
    let mut c = contact("Léa", "fr");
    c.time_zone = "Indian/Reunion".into();
    let extra = BTreeMap::from([("campaign", json!({"start": "2026-12-05T06:00:00Z"}))]);
    let body = e
        .render_sms(&t, contact_data(&c, &extra), "fr")
        .expect("renders");
    assert_eq!(body, "Meeting samedi 5 décembre 2026 à 10h00");
}
