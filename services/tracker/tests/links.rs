//! The links a message carries, as the renderer writes them, against a tracker on the
//! stack: the open pixel, the click redirect, RFC 8058 one-click unsubscribe (sent as mail
//! clients send it, in both content types) and its confirmation page; machine opens.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Tracker, event_id, feedback_exactly, key};
use redis::AsyncCommands;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE, LOCATION, USER_AGENT};
use secrecy::SecretString;
use tocsin_contracts::v1;
use tocsin_integration_tests::stack;
use tocsin_renderer::compliance::{self, SenderProfile};
use tocsin_renderer::tokens::Signer;
use tocsin_renderer::tracking::{self, Recipient};
use tocsin_runtime::ConfigLoader;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE_MAIL: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

/// The renderer's signer with the renderer's default key (the tracker's default too).
fn renderer() -> (Signer, SenderProfile) {
    let config: tocsin_renderer::Config =
        ConfigLoader::defaults_only(Some(tocsin_renderer::config::DEFAULTS))
            .load()
            .expect("renderer configuration");
    let profile = config.renderer.sender_profiles["default"].clone();
    (Signer::new(config.renderer.token_key.clone()), profile)
}

fn who<'a>(campaign: &'a str, contact: &'a str) -> Recipient<'a> {
    Recipient {
        campaign_id: campaign,
        contact_id: contact,
        channel: "email",
    }
}

/// The token of a link with one byte of its signed content changed.
fn forged(url: &str) -> String {
    let (base, token) = url.rsplit_once('/').expect("token");
    let mut raw = URL_SAFE_NO_PAD.decode(token).expect("base64url");
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    format!("{base}/{}", URL_SAFE_NO_PAD.encode(raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixel_click_and_one_click_unsubscribe() {
    let tracker = Tracker::start("tracker-links", &[]).await;
    let (signer, mut profile) = renderer();
    profile.tracker_base_url = tracker.base.clone();
    let campaign = stack::unique("cmp");
    let http = &tracker.client;

    // The pixel: a GIF that is never cached, an event; fetched again, the same event.
    let open = tracking::open_url(&tracker.base, &signer, who(&campaign, "c-1")).expect("url");
    for _ in 0..2 {
        let r = http
            .get(&open)
            .header(USER_AGENT, FIREFOX)
            .send()
            .await
            .expect("pixel");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "image/gif");
        assert!(
            r.headers()[CACHE_CONTROL]
                .to_str()
                .expect("ascii")
                .contains("no-store")
        );
        let gif = r.bytes().await.expect("body");
        assert_eq!(&gif[..6], b"GIF89a");
        assert_eq!(gif.len(), 43);
    }
    // A forged pixel still renders, publishes nothing.
    let r = http
        .get(forged(&open))
        .header(USER_AGENT, FIREFOX)
        .send()
        .await
        .expect("forged pixel");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("gif").len(), 43);

    // The click: a redirect to exactly the signed URL; a forged token, or a token of
    // another purpose, is a 404 and never a redirect.
    let destination = "https://exemple.fr/agenda?id=12&src=mail#samedi";
    let click = tracking::click_url(&tracker.base, &signer, who(&campaign, "c-1"), destination)
        .expect("url");
    let r = http
        .get(&click)
        .header(USER_AGENT, FIREFOX)
        .send()
        .await
        .expect("click");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], destination);
    for bad in [forged(&click), open.replace("/o/", "/c/")] {
        let r = http.get(&bad).send().await.expect("forged click");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
        assert!(r.headers().get(LOCATION).is_none());
    }

    // The confirmation page, in the reader's language: a form, and no unsubscribe.
    let unsubscribe =
        compliance::unsubscribe_url(&profile, &signer, &campaign, "c-1").expect("url");
    let page = |lang: &'static str| {
        let request = http.get(&unsubscribe).header(ACCEPT_LANGUAGE, lang);
        async move {
            let r = request.send().await.expect("page");
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.expect("html")
        }
    };
    let english = page("en-GB,en;q=0.9,fr;q=0.5").await;
    assert!(english.contains("<html lang=\"en\">"), "{english}");
    assert!(english.contains("<form method=\"post\">"), "{english}");
    assert!(
        english.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
        "{english}"
    );
    let french = page("fr-FR,fr;q=0.9").await;
    assert!(french.contains("Me désinscrire"), "{french}");
    let r = http
        .get(forged(&unsubscribe))
        .send()
        .await
        .expect("forged page");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // RFC 8058 one-click, as a mail client sends it: no cookie, no login, form-encoded...
    for _ in 0..2 {
        let r = http
            .post(&unsubscribe)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .expect("one-click");
        assert_eq!(r.status(), StatusCode::OK, "200, never a redirect");
    }
    // ... or multipart/form-data, written here byte for byte.
    let boundary = "----tocsin-8058-boundary";
    let multipart = format!(
        "--{boundary}\r\n\
         Content-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\
         \r\n\
         One-Click\r\n\
         --{boundary}--\r\n"
    );
    let unsubscribe_2 =
        compliance::unsubscribe_url(&profile, &signer, &campaign, "c-2").expect("url");
    let r = http
        .post(&unsubscribe_2)
        .header(
            CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart)
        .send()
        .await
        .expect("multipart one-click");
    assert_eq!(r.status(), StatusCode::OK);
    // Not the RFC 8058 body, or a forged token: nobody is unsubscribed.
    let r = http
        .post(compliance::unsubscribe_url(&profile, &signer, &campaign, "c-3").expect("url"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=Maybe")
        .send()
        .await
        .expect("wrong body");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .post(forged(&unsubscribe))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("forged one-click");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Two pixel fetches, one click, three one-click POSTs; the GETs of the page, the forged
    // tokens and the wrong body published nothing.
    let records = feedback_exactly(&tracker, 6).await;
    let mut by_kind: BTreeMap<&str, Vec<&stack::Record<v1::Feedback>>> = BTreeMap::new();
    for r in &records {
        let kind = match r.event.kind() {
            v1::FeedbackKind::Opened => "opened",
            v1::FeedbackKind::Clicked => "clicked",
            v1::FeedbackKind::Unsubscribed => "unsubscribed",
            other => panic!("unexpected {other:?}"),
        };
        by_kind.entry(kind).or_default().push(r);
    }
    let opened = &by_kind["opened"];
    assert_eq!(opened.len(), 2);
    assert_eq!(
        event_id(opened[0]),
        event_id(opened[1]),
        "a reload is the same event"
    );
    assert!(event_id(opened[0]).starts_with(&format!("tracker:opened:{campaign}:c-1:email:")));
    for r in opened {
        assert_eq!(key(r), "c-1");
        assert_eq!(r.event.campaign_id, campaign);
        assert_eq!(r.event.idempotency_key, format!("{campaign}:c-1:email"));
        assert!(!r.event.machine);
    }
    let clicked = &by_kind["clicked"];
    assert_eq!(clicked.len(), 1);
    assert_eq!(clicked[0].event.url, destination);
    assert_eq!(clicked[0].event.channel(), v1::Channel::Email);

    let unsubscribed = &by_kind["unsubscribed"];
    assert_eq!(unsubscribed.len(), 3);
    let of = |contact: &str| -> Vec<&str> {
        unsubscribed
            .iter()
            .filter(|r| r.event.contact_id == contact)
            .map(|r| event_id(r))
            .collect()
    };
    let expected = format!("tracker:unsubscribed:{campaign}:c-1:email");
    assert_eq!(
        of("c-1"),
        [expected.as_str(), expected.as_str()],
        "repeating is harmless"
    );
    assert_eq!(of("c-2").len(), 1);
    for r in unsubscribed {
        assert_eq!(key(r), r.event.contact_id);
        assert_eq!(r.event.opt_out_scope(), v1::OptOutScope::Channel);
        assert_eq!(r.event.reason(), v1::Reason::Unsubscribed);
    }

    assert_eq!(
        tracker
            .metric("tocsin_tracker_opens_total{outcome=\"bad_token\"}")
            .await,
        1
    );
    assert_eq!(
        tracker
            .metric("tocsin_tracker_clicks_total{outcome=\"bad_token\"}")
            .await,
        2
    );
    assert_eq!(
        tracker
            .metric("tocsin_tracker_unsubscribes_total{outcome=\"recorded\",source=\"link\"}")
            .await,
        3
    );
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_steps_links_name_the_step() {
    let tracker = Tracker::start("tracker-steps", &[]).await;
    let (signer, mut profile) = renderer();
    profile.tracker_base_url = tracker.base.clone();
    let http = &tracker.client;
    // The step group stands where a blast's links carry the campaign id.
    let step = tocsin_planner::sequence::StepRef {
        sequence_id: stack::unique("bienvenue"),
        enrolment: 2,
        step: 3,
    };
    let group = step.group();
    let contact = "c-1";
    let open = tracking::open_url(&tracker.base, &signer, who(&group, contact)).expect("url");
    let r = http
        .get(&open)
        .header(USER_AGENT, FIREFOX)
        .send()
        .await
        .expect("pixel");
    assert_eq!(r.status(), StatusCode::OK);
    let destination = "https://exemple.fr/bienvenue";
    let click = tracking::click_url(&tracker.base, &signer, who(&group, contact), destination)
        .expect("url");
    let r = http
        .get(&click)
        .header(USER_AGENT, FIREFOX)
        .send()
        .await
        .expect("click");
    assert_eq!(r.status(), StatusCode::FOUND);
    let unsubscribe = compliance::unsubscribe_url(&profile, &signer, &group, contact).expect("url");
    let r = http
        .post(&unsubscribe)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("one-click");
    assert_eq!(r.status(), StatusCode::OK);

    let records = feedback_exactly(&tracker, 3).await;
    let message_key = step.idempotency_key(contact, v1::Channel::Email);
    let mut kinds: Vec<v1::FeedbackKind> = records.iter().map(|r| r.event.kind()).collect();
    kinds.sort_by_key(|k| *k as i32);
    assert_eq!(
        kinds,
        [
            v1::FeedbackKind::Opened,
            v1::FeedbackKind::Clicked,
            v1::FeedbackKind::Unsubscribed
        ]
    );
    for r in &records {
        let e = &r.event;
        assert_eq!(
            (
                e.campaign_id.as_str(),
                e.sequence_id.as_str(),
                e.enrolment_id.as_str(),
                e.step,
                e.contact_id.as_str(),
                e.idempotency_key.as_str(),
            ),
            (
                "",
                step.sequence_id.as_str(),
                "e2",
                3,
                contact,
                message_key.as_str()
            ),
            "{:?}",
            e.kind()
        );
        assert_eq!(key(r), contact);
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_opens_and_clicks_are_flagged() {
    let tracker = Tracker::start("tracker-machines", &[]).await;
    let (signer, _) = renderer();
    let campaign = stack::unique("cmp");
    let mut redis = common::redis(&tracker).await;
    let now = common::now_ms();
    // What the sender's ledger says after a provider accepted each message.
    for (contact, sent_ms) in [("c-fresh", now - 1_000), ("c-old", now - 3_600_000)] {
        let key = tocsin_sender::ledger::key(&format!("{campaign}:{contact}:email"));
        let _: () = redis
            .set_ex(key, format!("sent|sendgrid|sg-1|1|{sent_ms}"), 600)
            .await
            .expect("ledger record");
    }
    let http = &tracker.client;
    let fetch = |contact: &'static str, agent: &'static str| {
        let url = tracking::open_url(&tracker.base, &signer, who(&campaign, contact)).expect("url");
        async move {
            let r = http
                .get(url)
                .header(USER_AGENT, agent)
                .send()
                .await
                .expect("pixel");
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    // A scanner at delivery, with a phone's user agent: flagged by the send time.
    fetch("c-fresh", IPHONE_MAIL).await;
    // The same user agent an hour after the send: a person.
    fetch("c-old", IPHONE_MAIL).await;
    // Apple Mail Privacy Protection's prefetch and Gmail's image proxy.
    fetch("c-mpp", "Mozilla/5.0").await;
    fetch(
        "c-gmail",
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    )
    .await;
    // A scanner checking a link with HEAD still gets the redirect.
    let click = tracking::click_url(
        &tracker.base,
        &signer,
        who(&campaign, "c-head"),
        "https://exemple.fr/",
    )
    .expect("url");
    let r = http
        .head(&click)
        .header(USER_AGENT, FIREFOX)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::FOUND);

    let records = feedback_exactly(&tracker, 5).await;
    let machine: BTreeMap<String, bool> = records
        .iter()
        .map(|r| (r.event.contact_id.clone(), r.event.machine))
        .collect();
    assert_eq!(
        machine,
        BTreeMap::from([
            ("c-fresh".to_owned(), true),
            ("c-old".to_owned(), false),
            ("c-mpp".to_owned(), true),
            ("c-gmail".to_owned(), true),
            ("c-head".to_owned(), true),
        ])
    );
    for (rule, count) in [("soon_after_send", 1), ("user_agent", 2), ("head", 1)] {
        assert_eq!(
            tracker
                .metric(&format!(
                    "tocsin_tracker_machine_flags_total{{rule=\"{rule}\"}}"
                ))
                .await,
            count,
            "{rule}"
        );
    }
    assert_eq!(
        tracker
            .metric("tocsin_tracker_opens_total{outcome=\"machine\"}")
            .await,
        3
    );
    tracker.stop().await;
}

#[test]
fn the_default_key_is_the_renderers() {
    let tracker: tocsin_tracker::Config =
        ConfigLoader::defaults_only(Some(tocsin_tracker::config::DEFAULTS))
            .load()
            .expect("tracker configuration");
    let (renderer, profile) = renderer();
    let claims = tocsin_renderer::tokens::Claims {
        purpose: tocsin_renderer::tokens::Purpose::Open,
        campaign_id: "cmp".into(),
        contact_id: "c".into(),
        channel: "email".into(),
        url: String::new(),
    };
    let token = renderer.sign(&claims).expect("sign");
    assert_eq!(
        Signer::new(tracker.tracker.token_key.clone()).verify(&token),
        Ok(claims)
    );
    assert!(
        Signer::new(SecretString::from("another"))
            .verify(&token)
            .is_err()
    );
    // The renderer's default profile links to the tracker's default address.
    assert_eq!(
        profile.tracker_base_url,
        format!("http://{}", tracker.http.listen)
    );
    assert_eq!(profile.tracker_base_url, tracker.tracker.public_base_url);
}
