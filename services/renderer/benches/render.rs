//! What one core renders per second, against the ceiling of doing nothing but copy.
//!
//! - `email/render`: a realistic campaign e-mail (about 10 KB of HTML, ten personalised
//!   fields, ten links rewritten for click tracking, the open pixel, the compliance
//!   parts), composed and encoded as the protobuf the renderer publishes.
//! - `email/copy`: the same message pre-rendered, only cloned and encoded: the ceiling.
//! - `sms/render` and `sms/copy`: likewise for a 300-character SMS.
//!
//! Run: `cargo bench -p tocsin-renderer --bench render`. Criterion prints elements per
//! second (one element = one message, on one core); the ratio render / copy is the figure
//! to improve.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use tocsin_contracts::v1;
use tocsin_renderer::compose::{Composer, Message};
use tocsin_renderer::config::{Config, DEFAULTS};
use tocsin_runtime::ConfigLoader;
use tocsin_templates::{Channel, Content, TemplateDraft, TemplateVersion};

fn composer() -> Composer {
    let config: Config = ConfigLoader::defaults_only(Some(DEFAULTS))
        .load()
        .expect("defaults");
    Composer::new(&config.renderer)
}

/// About 10 KB of campaign HTML: a styled header, nine article blocks with links, a
/// personalised call to action. Ten fields: first_name, last_name, email, commune,
/// section, dons, rdv, adhesion, circonscription, and a fallback.
fn email_html() -> String {
    let mut html = String::from(
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Lettre</title>\
         <style>body{margin:0;padding:0;background:#f4f4f4;font-family:Helvetica,Arial,sans-serif}\
         .wrap{max-width:600px;margin:0 auto;background:#fff}.btn{display:inline-block;padding:12px 24px;\
         background:#c0392b;color:#fff;text-decoration:none;border-radius:4px}h1{font-size:24px;color:#222}\
         p{font-size:16px;line-height:1.5;color:#333}.foot{font-size:12px;color:#777}</style></head>\
         <body><table class=\"wrap\" role=\"presentation\" width=\"100%\"><tr><td style=\"padding:24px\">\
         <h1>{{default first_name \"Chère amie, cher ami\"}}, la rentrée se prépare à {{attributes.commune}}</h1>\
         <p>Bonjour {{first_name}} {{last_name}}, membre de la section {{attributes.section}} depuis \
         {{attributes.adhesion}}, nous comptons sur vous.</p>",
    );
    let article = "<h2 style=\"font-size:20px;color:#222;margin:24px 0 8px\">Nos actions dans la \
        {{attributes.circonscription}}e circonscription</h2><p>Lorem ipsum dolor sit amet, consectetur \
        adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad \
        minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. \
        Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla \
        pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt \
        mollit anim id est laborum. Sed ut perspiciatis unde omnis iste natus error sit voluptatem \
        accusantium doloremque laudantium, totam rem aperiam, eaque ipsa quae ab illo inventore \
        veritatis et quasi architecto beatae vitae dicta sunt explicabo.</p><p><a class=\"btn\" \
        href=\"https://exemple.fr/actions/ARTICLE?utm_source=tocsin&amp;utm_medium=email\">Lire la \
        suite</a></p>";
    for i in 1..=9 {
        html.push_str(&article.replace("ARTICLE", &i.to_string()));
    }
    html.push_str(
        "<p>Déjà {{number attributes.dons}} € collectés. Rendez-vous le {{date attributes.rdv}}.</p>\
         <p><a class=\"btn\" href=\"https://exemple.fr/don?ref={{attributes.section}}\">Je donne</a></p>\
         <p class=\"foot\">Envoyé à {{email}}.</p></td></tr></table></body></html>",
    );
    html
}

fn template(id: &str, channel: Channel, content: Content) -> TemplateVersion {
    TemplateVersion {
        id: id.into(),
        version: 1,
        draft: TemplateDraft {
            channel,
            variants: BTreeMap::from([("fr".to_owned(), content)]),
            default_locale: "fr".into(),
        },
        created_by: "bench".into(),
        created_ms: 0,
    }
}

fn job(channel: v1::Channel) -> v1::SendJob {
    v1::SendJob {
        idempotency_key: "cmp-bench:c-000042:email".into(),
        campaign_id: "cmp-bench".into(),
        channel: channel.into(),
        template_id: match channel {
            v1::Channel::Sms => "bench-sms".into(),
            _ => "bench-email".into(),
        },
        template_version: 1,
        tracking: Some(v1::TrackingOptions {
            open_pixel: true,
            click_rewriting: true,
        }),
        contact: Some(v1::Contact {
            id: "c-000042".into(),
            email: "camille.martin@exemple.fr".into(),
            phone_e164: "+33612345678".into(),
            first_name: "Camille".into(),
            last_name: "Martin".into(),
            locale: "fr-FR".into(),
            time_zone: "Europe/Paris".into(),
            attributes: HashMap::from([
                ("commune".to_owned(), "Villeurbanne".to_owned()),
                ("section".to_owned(), "Lyon-Est".to_owned()),
                ("dons".to_owned(), "48210".to_owned()),
                ("rdv".to_owned(), "2026-12-05T09:00:00Z".to_owned()),
                ("adhesion".to_owned(), "2019".to_owned()),
                ("circonscription".to_owned(), "6".to_owned()),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn encode(message: &Message) -> Vec<u8> {
    match message {
        Message::Email(e) => e.encode_to_vec(),
        Message::Sms(s) => s.encode_to_vec(),
    }
}

fn bench(c: &mut Criterion) {
    let composer = composer();
    let email = template(
        "bench-email",
        Channel::Email,
        Content::Email {
            subject:
                "{{default first_name \"Bonjour\"}}, on compte sur vous à {{attributes.commune}}"
                    .into(),
            html: email_html(),
            text: None,
        },
    );
    let email_job = job(v1::Channel::Email);
    let rendered_email = composer.compose(&email_job, &email).expect("renders");
    if let Message::Email(e) = &rendered_email {
        println!(
            "e-mail: template {} bytes of HTML; rendered {} bytes of HTML, {} of text, {} encoded",
            email_html().len(),
            e.html.len(),
            e.text.len(),
            encode(&rendered_email).len()
        );
    }

    let sms = template(
        "bench-sms",
        Channel::Sms,
        Content::Sms {
            body: "{{default first_name \"Bonjour\"}}, grande réunion publique le {{date attributes.rdv}} \
                   à {{attributes.commune}}, salle Jean Jaurès, avec les élus de la section \
                   {{attributes.section}}. Venez nombreux, amenez vos voisins et vos amis : \
                   nous parlerons des transports, du logement et des écoles. Inscription \
                   conseillée sur exemple.fr/reunion"
                .into(),
        },
    );
    let sms_job = job(v1::Channel::Sms);
    let rendered_sms = composer.compose(&sms_job, &sms).expect("renders");
    if let Message::Sms(s) = &rendered_sms {
        println!(
            "SMS: {} characters, {} parts, {:?}",
            s.body.chars().count(),
            s.parts,
            s.encoding()
        );
    }

    let mut group = c.benchmark_group("email");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render", |b| {
        b.iter(|| {
            let m = composer
                .compose(black_box(&email_job), black_box(&email))
                .expect("renders");
            black_box(encode(&m))
        })
    });
    group.bench_function("copy", |b| {
        b.iter(|| black_box(encode(&black_box(&rendered_email).clone())))
    });
    group.finish();

    let mut group = c.benchmark_group("sms");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render", |b| {
        b.iter(|| {
            let m = composer
                .compose(black_box(&sms_job), black_box(&sms))
                .expect("renders");
            black_box(encode(&m))
        })
    });
    group.bench_function("copy", |b| {
        b.iter(|| black_box(encode(&black_box(&rendered_sms).clone())))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
