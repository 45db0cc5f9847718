//! The renderer service against the real stack: jobs from `tocsin.jobs` become rendered
//! messages, or feedback saying why not, and template mistakes reach the dead-letter topic
//! while the partition goes on. Triggered jobs (sequence steps, test sends) go to the
//! triggered lane's outbound topics, their links naming the step.
//!
//! The tests share Redis database 12 and run at once: every template id is unique to a
//! run, and nothing flushes the database.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::AsyncCommands;
use tocsin_bus::TraceContext;
use tocsin_contracts::{Timestamp, codec, v1};
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_planner::sequence::StepRef;
use tocsin_renderer::Config;
use tocsin_renderer::tokens::{Purpose, Signer};
use tocsin_runtime::ConfigLoader;
use tocsin_templates::{Channel, Content, TemplateDraft};

const REDIS_DB: u8 = 12;

fn ts(offset_s: i64) -> Timestamp {
    let now = tocsin_contracts::timestamp_now();
    Timestamp {
        seconds: now.seconds + offset_s,
        nanos: 0,
    }
}

fn contact(id: &str, first_name: &str, locale: &str) -> v1::Contact {
    v1::Contact {
        id: id.into(),
        email: format!("{id}@exemple.fr"),
        phone_e164: "+33612345678".into(),
        first_name: first_name.into(),
        locale: locale.into(),
        time_zone: "Europe/Paris".into(),
        attributes: HashMap::from([("commune".to_owned(), "Saint-Denis".to_owned())]),
        ..Default::default()
    }
}

fn job(campaign: &str, template: &str, channel: v1::Channel, who: v1::Contact) -> v1::SendJob {
    let suffix = match channel {
        v1::Channel::Sms => "sms",
        _ => "email",
    };
    let key = format!("{campaign}:{}:{suffix}", who.id);
    v1::SendJob {
        meta: Some(v1::EventMeta {
            event_id: format!("job:{key}"),
            occurred_at: Some(ts(0)),
            source: "test".into(),
        }),
        idempotency_key: key,
        campaign_id: campaign.into(),
        channel: channel.into(),
        template_id: template.into(),
        template_version: 1,
        contact: Some(who),
        not_before: Some(ts(0)),
        expires_at: Some(ts(3600)),
        lane: v1::Lane::Bulk.into(),
        ..Default::default()
    }
}

fn email_draft() -> TemplateDraft {
    TemplateDraft {
        channel: Channel::Email,
        variants: BTreeMap::from([
            (
                "fr".to_owned(),
                Content::Email {
                    subject: "{{first_name}}, rendez-vous samedi".into(),
                    html: "<html><body><p>Bonjour {{first_name}} de {{attributes.commune}},</p>\
                           <p><a href=\"https://exemple.fr/agenda?id=12&amp;src=mail\">L'agenda</a></p>\
                           </body></html>"
                        .into(),
                    text: None,
                },
            ),
            (
                "en".to_owned(),
                Content::Email {
                    subject: "{{first_name}}, see you on Saturday".into(),
                    html: "<p>Hello {{first_name}}</p>".into(),
                    text: None,
                },
            ),
        ]),
        default_locale: "fr".into(),
    }
}

fn sms_draft() -> TemplateDraft {
    TemplateDraft {
        channel: Channel::Sms,
        variants: BTreeMap::from([(
            "fr".to_owned(),
            Content::Sms {
                body: "{{default first_name \"Bonjour\"}}, rdv samedi 10h à {{attributes.commune}} « place du marché ».".into(),
            },
        )]),
        default_locale: "fr".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_become_messages_feedback_or_dead_letters() {
    let mut env = stack::service_env("renderer", 3, REDIS_DB);
    env.push((
        "TOCSIN__RENDERER__GROUP_ID".into(),
        stack::unique("renderer"),
    ));
    let config: Config = ConfigLoader::defaults_only(Some(tocsin_renderer::config::DEFAULTS))
        .env(env.iter().cloned())
        .load()
        .expect("renderer configuration");
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let client = redis::Client::open(config.redis.url.as_str()).expect("url");
    let mut conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    let rentree = stack::unique("rentree");
    let rappel = stack::unique("rappel");
    tocsin_templates::store::put(&mut conn, &rentree, email_draft(), "test", 0)
        .await
        .expect("store");
    tocsin_templates::store::put(&mut conn, &rappel, sms_draft(), "test", 0)
        .await
        .expect("store");
    let _: () = conn
        .hset(
            tocsin_planner::keys::campaign("cmp-annule"),
            "state",
            "cancelled",
        )
        .await
        .expect("cancelled campaign");

    let mut tracked = job(
        "cmp-a",
        &rentree,
        v1::Channel::Email,
        contact("c-1", "Inès", "fr-FR"),
    );
    tracked.tracking = Some(v1::TrackingOptions {
        open_pixel: true,
        click_rewriting: true,
    });
    let english = job(
        "cmp-a",
        &rentree,
        v1::Channel::Email,
        contact("c-2", "Sam", "en"),
    );
    let sms = job(
        "cmp-a",
        &rappel,
        v1::Channel::Sms,
        contact("c-3", "Léa", "fr"),
    );
    // c-4 has no first name: the e-mail template gives no fallback.
    let missing = job(
        "cmp-a",
        &rentree,
        v1::Channel::Email,
        contact("c-4", "", "fr"),
    );
    // The same contact's next job, on the same partition, must still go out.
    let after_missing = job("cmp-b", &rappel, v1::Channel::Sms, contact("c-4", "", "fr"));
    let mut unknown = job(
        "cmp-a",
        "absent",
        v1::Channel::Email,
        contact("c-5", "Jo", "fr"),
    );
    unknown.template_id = "absent".into();
    let mut expired = job(
        "cmp-a",
        &rentree,
        v1::Channel::Email,
        contact("c-6", "Max", "fr"),
    );
    expired.expires_at = Some(ts(-60));
    let cancelled = job(
        "cmp-annule",
        &rentree,
        v1::Channel::Email,
        contact("c-7", "Zoé", "fr"),
    );
    let mut too_long = job(
        "cmp-a",
        &rappel,
        v1::Channel::Sms,
        contact("c-8", &"Marie-".repeat(40), "fr"),
    );
    too_long.max_sms_parts = 1;

    let trace = TraceContext::new_root();
    let producer = stack::producer(&config.kafka);
    for j in [
        &tracked,
        &english,
        &sms,
        &missing,
        &after_missing,
        &unknown,
        &expired,
        &cancelled,
        &too_long,
        // Delivered twice, as after a crash before the commit.
        &tracked,
    ] {
        let who = &j.contact.as_ref().expect("contact").id;
        producer
            .publish(
                &topics.jobs.name,
                who,
                &format!("job:{}", j.idempotency_key),
                j,
                &trace,
            )
            .await
            .expect("publish job");
    }
    let garbage = b"not a protobuf";
    producer
        .send(tocsin_bus::Outbound {
            topic: &topics.jobs.name,
            key: b"c-9",
            payload: garbage,
            content_type: tocsin_contracts::codec::CONTENT_TYPE_PROTOBUF,
            event_id: "garbage",
            trace: &trace,
        })
        .await
        .expect("publish garbage");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(tocsin_renderer::run(config.clone(), async {
        let _ = stopped.await;
    }));

    let wait = Duration::from_secs(60);
    let emails = TopicReader::new(&topics.outbound_email.name)
        .read_until::<v1::RenderedEmail>(wait, |r| r.len() >= 3)
        .await;
    let smses = TopicReader::new(&topics.outbound_sms.name)
        .read_until::<v1::RenderedSms>(wait, |r| r.len() >= 2)
        .await;
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(wait, |r| r.len() >= 5)
        .await;
    let dead = TopicReader::new(&topics.dlq.name)
        .read_until::<v1::DeadLetter>(wait, |r| r.len() >= 3)
        .await;
    // Nothing more arrives.
    let late_feedback = TopicReader::new(&topics.feedback.name)
        .read_for::<v1::Feedback>(Duration::from_secs(2))
        .await;
    let _ = stop.send(());
    service
        .await
        .expect("renderer task")
        .expect("renderer ran and stopped cleanly");

    // E-mails: the tracked one twice (redelivered), identical ids; the English one.
    let by_contact = |id: &str| -> Vec<&v1::RenderedEmail> {
        emails
            .iter()
            .map(|r| &r.event)
            .filter(|e| e.origin.as_ref().is_some_and(|o| o.contact_id == id))
            .collect()
    };
    assert_eq!(emails.len(), 3, "no other e-mail");
    let twice = by_contact("c-1");
    assert_eq!(twice.len(), 2);
    assert_eq!(twice[0].message_id, twice[1].message_id);
    let event_id = |e: &v1::RenderedEmail| e.meta.as_ref().map(|m| m.event_id.clone());
    assert_eq!(event_id(twice[0]), event_id(twice[1]));
    assert_eq!(event_id(twice[0]).as_deref(), Some("email:cmp-a:c-1:email"));
    let fr = twice[0];
    assert_eq!(fr.to, "c-1@exemple.fr");
    assert_eq!(fr.subject, "Inès, rendez-vous samedi");
    assert!(
        fr.from.contains("campagnes@tocsin.localhost"),
        "{}",
        fr.from
    );
    let header = |name: &str| {
        fr.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
            .unwrap_or_default()
    };
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert!(header("List-Unsubscribe").starts_with("<http://127.0.0.1:8090/u/"));
    assert!(fr.html.contains("Saint-Denis"));
    assert!(fr.html.contains("/o/"), "open pixel");
    assert!(
        !fr.html.contains("href=\"https://exemple.fr/agenda"),
        "links rewritten"
    );
    let signer = Signer::new(secrecy::SecretString::from("local-development-only"));
    let click = fr
        .html
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|u| u.contains("/c/"))
        .expect("a click link");
    let claims = signer
        .verify(click.rsplit('/').next().expect("token"))
        .expect("the click token verifies");
    assert_eq!(claims.purpose, Purpose::Click);
    assert_eq!(claims.url, "https://exemple.fr/agenda?id=12&src=mail");
    assert!(
        fr.text.contains("https://exemple.fr/agenda?id=12&src=mail"),
        "the text part keeps the real link: {}",
        fr.text
    );
    assert!(fr.html.contains("Association Tocsin Locale"), "CNIL footer");
    let en = by_contact("c-2")[0];
    assert_eq!(en.subject, "Sam, see you on Saturday");
    assert!(en.html.contains("Unsubscribe</a>"));
    assert!(
        !en.html.contains("/o/"),
        "no tracking unless the campaign asks"
    );

    // SMS: sender named, STOP added, French kept in GSM-7, parts counted.
    assert_eq!(smses.len(), 2);
    for s in &smses {
        let s = &s.event;
        assert!(s.body.starts_with("Tocsin: "), "{}", s.body);
        assert!(s.body.ends_with("STOP au 36111"), "{}", s.body);
        assert!(
            s.body.contains("\"place du marché\""),
            "« » normalised: {}",
            s.body
        );
        assert_eq!(s.encoding(), v1::SmsEncoding::Gsm7);
        assert_eq!(s.parts, 1);
    }
    assert!(
        smses
            .iter()
            .any(|s| s.event.body.starts_with("Tocsin: Bonjour, rdv")),
        "fallback used for c-4"
    );

    // Feedback: one per job not rendered, with a reason a writer can act on.
    assert!(late_feedback.len() <= feedback.len());
    let mut kinds: Vec<(String, v1::FeedbackKind, v1::Reason)> = feedback
        .iter()
        .map(|r| (r.event.contact_id.clone(), r.event.kind(), r.event.reason()))
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        kinds,
        [
            (
                "c-4".to_owned(),
                v1::FeedbackKind::Failed,
                v1::Reason::MissingField
            ),
            (
                "c-5".to_owned(),
                v1::FeedbackKind::Failed,
                v1::Reason::TemplateNotFound
            ),
            (
                "c-6".to_owned(),
                v1::FeedbackKind::Expired,
                v1::Reason::Unspecified
            ),
            (
                "c-7".to_owned(),
                v1::FeedbackKind::Cancelled,
                v1::Reason::Unspecified
            ),
            (
                "c-8".to_owned(),
                v1::FeedbackKind::Failed,
                v1::Reason::TooLong
            ),
        ]
    );
    let detail = |id: &str| {
        feedback
            .iter()
            .find(|r| r.event.contact_id == id)
            .map(|r| r.event.detail.clone())
            .unwrap_or_default()
    };
    assert!(detail("c-4").contains("`first_name`"), "{}", detail("c-4"));
    assert!(detail("c-5").contains("`absent`"), "{}", detail("c-5"));
    assert!(
        detail("c-8").contains("the campaign allows 1"),
        "{}",
        detail("c-8")
    );

    // Dead letters: the two template mistakes and the undecodable message; not too_long.
    assert_eq!(
        dead.len(),
        3,
        "{:?}",
        dead.iter().map(|d| &d.event.reason).collect::<Vec<_>>()
    );
    let keys: Vec<String> = dead
        .iter()
        .map(|d| String::from_utf8_lossy(&d.event.key).into_owned())
        .collect();
    for key in ["c-4", "c-5", "c-9"] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
    let missing_letter = dead
        .iter()
        .find(|d| d.event.key == b"c-4")
        .expect("c-4 dead-lettered");
    let original: v1::SendJob = codec::decode(
        Some(codec::CONTENT_TYPE_PROTOBUF),
        &missing_letter.event.payload,
    )
    .expect("the original job is kept whole");
    assert_eq!(original.idempotency_key, missing.idempotency_key);
}

/// A sequence step's job, as the planner publishes it on the triggered lane: no campaign,
/// the step group in the key.
fn step_job(step: &StepRef, template: &str, channel: v1::Channel, who: v1::Contact) -> v1::SendJob {
    let key = step.idempotency_key(&who.id, channel);
    v1::SendJob {
        meta: Some(v1::EventMeta {
            event_id: format!("job:{key}"),
            occurred_at: Some(ts(0)),
            source: "test".into(),
        }),
        idempotency_key: key,
        channel: channel.into(),
        template_id: template.into(),
        template_version: 1,
        contact: Some(who),
        not_before: Some(ts(0)),
        expires_at: Some(ts(3600)),
        lane: v1::Lane::Triggered.into(),
        tracking: Some(v1::TrackingOptions {
            open_pixel: true,
            click_rewriting: true,
        }),
        sequence_id: step.sequence_id.clone(),
        enrolment_id: step.enrolment_id(),
        step: step.step,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggered_jobs_take_the_triggered_lane_and_name_their_step() {
    let mut env = stack::service_env("renderer-lane", 3, REDIS_DB);
    env.push((
        "TOCSIN__RENDERER__GROUP_ID".into(),
        stack::unique("renderer"),
    ));
    let config: Config = ConfigLoader::defaults_only(Some(tocsin_renderer::config::DEFAULTS))
        .env(env.iter().cloned())
        .load()
        .expect("renderer configuration");
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let client = redis::Client::open(config.redis.url.as_str()).expect("url");
    let mut conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    let bienvenue = stack::unique("bienvenue");
    let rappel = stack::unique("rappel");
    tocsin_templates::store::put(&mut conn, &bienvenue, email_draft(), "test", 0)
        .await
        .expect("store");
    tocsin_templates::store::put(&mut conn, &rappel, sms_draft(), "test", 0)
        .await
        .expect("store");

    let step = StepRef {
        sequence_id: "bienvenue-2026".into(),
        enrolment: 1,
        step: 2,
    };
    let welcome = step_job(
        &step,
        &bienvenue,
        v1::Channel::Email,
        contact("s-1", "Inès", "fr"),
    );
    let welcome_sms = step_job(
        &step,
        &rappel,
        v1::Channel::Sms,
        contact("s-2", "Léa", "fr"),
    );
    let mut late = step_job(
        &step,
        &bienvenue,
        v1::Channel::Email,
        contact("s-3", "Max", "fr"),
    );
    late.expires_at = Some(ts(-60));
    // A blast's job and a test send: both on tocsin.jobs; the lane decides.
    let blast = job(
        "cmp-lane",
        &bienvenue,
        v1::Channel::Email,
        contact("b-1", "Sam", "fr"),
    );
    let mut test_send = job(
        "test-lane",
        &bienvenue,
        v1::Channel::Email,
        contact("t-1", "Jo", "fr"),
    );
    test_send.lane = v1::Lane::Triggered.into();

    let trace = TraceContext::new_root();
    let producer = stack::producer(&config.kafka);
    for (topic, j) in [
        (&topics.jobs_triggered.name, &welcome),
        (&topics.jobs_triggered.name, &welcome_sms),
        (&topics.jobs_triggered.name, &late),
        (&topics.jobs.name, &blast),
        (&topics.jobs.name, &test_send),
    ] {
        let who = &j.contact.as_ref().expect("contact").id;
        producer
            .publish(topic, who, &format!("job:{}", j.idempotency_key), j, &trace)
            .await
            .expect("publish job");
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(tocsin_renderer::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let wait = Duration::from_secs(60);
    let contact_of = |o: Option<&v1::Origin>| o.map(|o| o.contact_id.clone()).unwrap_or_default();
    let triggered = TopicReader::new(&topics.outbound_email_triggered.name)
        .read_until::<v1::RenderedEmail>(wait, |r| {
            let ids: Vec<String> = r
                .iter()
                .map(|e| contact_of(e.event.origin.as_ref()))
                .collect();
            ids.contains(&"s-1".to_owned()) && ids.contains(&"t-1".to_owned())
        })
        .await;
    let bulk = TopicReader::new(&topics.outbound_email.name)
        .read_until::<v1::RenderedEmail>(wait, |r| !r.is_empty())
        .await;
    let sms = TopicReader::new(&topics.outbound_sms_triggered.name)
        .read_until::<v1::RenderedSms>(wait, |r| !r.is_empty())
        .await;
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(wait, |r| !r.is_empty())
        .await;
    let _ = stop.send(());
    service
        .await
        .expect("renderer task")
        .expect("renderer ran and stopped cleanly");

    // Only the blast's job on the bulk lane; the step and the test send on the triggered.
    let bulk_ids: Vec<String> = bulk
        .iter()
        .map(|e| contact_of(e.event.origin.as_ref()))
        .collect();
    assert_eq!(bulk_ids, ["b-1"]);
    assert!(
        triggered
            .iter()
            .all(|e| ["s-1", "t-1"].contains(&contact_of(e.event.origin.as_ref()).as_str())),
        "nothing else on the triggered lane"
    );

    // The step's e-mail: its origin names the step and no campaign.
    let email = &triggered
        .iter()
        .find(|e| contact_of(e.event.origin.as_ref()) == "s-1")
        .expect("the step's e-mail")
        .event;
    let origin = email.origin.as_ref().expect("origin");
    assert_eq!(
        (
            origin.campaign_id.as_str(),
            origin.sequence_id.as_str(),
            origin.enrolment_id.as_str(),
            origin.step,
            origin.lane(),
            origin.idempotency_key.as_str(),
        ),
        (
            "",
            "bienvenue-2026",
            "e1",
            2,
            v1::Lane::Triggered,
            welcome.idempotency_key.as_str(),
        )
    );
    // Every signed link carries the step group where a blast's carries the campaign.
    let signer = Signer::new(secrecy::SecretString::from("local-development-only"));
    let token_after = |text: &str, route: &str| -> String {
        let at = text
            .find(route)
            .unwrap_or_else(|| panic!("{route} in {text}"))
            + route.len();
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    };
    let unsubscribe = email
        .headers
        .iter()
        .find(|h| h.name == "List-Unsubscribe")
        .map(|h| h.value.clone())
        .expect("List-Unsubscribe");
    for (token, purpose) in [
        (token_after(&unsubscribe, "/u/"), Purpose::Unsubscribe),
        (token_after(&email.html, "/o/"), Purpose::Open),
        (token_after(&email.html, "/c/"), Purpose::Click),
    ] {
        let claims = signer.verify(&token).expect("the token verifies");
        assert_eq!(claims.purpose, purpose);
        assert_eq!(claims.campaign_id, step.group(), "{purpose:?}");
        assert_eq!(claims.contact_id, "s-1");
    }
    let test_origin = triggered
        .iter()
        .find(|e| contact_of(e.event.origin.as_ref()) == "t-1")
        .and_then(|e| e.event.origin.clone())
        .expect("the test send");
    assert_eq!(test_origin.campaign_id, "test-lane");

    // The step's SMS on the SMS triggered topic.
    let sms_origin = sms[0].event.origin.as_ref().expect("origin");
    assert_eq!(
        (
            sms_origin.contact_id.as_str(),
            sms_origin.sequence_id.as_str(),
            sms_origin.step,
            sms_origin.lane(),
        ),
        ("s-2", "bienvenue-2026", 2, v1::Lane::Triggered)
    );

    // The expired step's feedback names the step.
    let expired = &feedback[0].event;
    assert_eq!(
        (
            expired.kind(),
            expired.contact_id.as_str(),
            expired.campaign_id.as_str(),
            expired.sequence_id.as_str(),
            expired.enrolment_id.as_str(),
            expired.step,
        ),
        (
            v1::FeedbackKind::Expired,
            "s-3",
            "",
            "bienvenue-2026",
            "e1",
            2
        )
    );
}
