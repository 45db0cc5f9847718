//! Provider webhooks against a tracker on the stack: signatures made by the providers' own
//! library (Twilio's Python `RequestValidator`) or an independent implementation
//! (SendGrid's ECDSA by RustCrypto's p256 and by OpenSSL through Python's `cryptography`)
//! verify; any change to the URL, a parameter, the body or the key is refused and counted;
//! every accepted event becomes its feedback, a retry the same event id.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Tracker, event_id, feedback_exactly, key, run_python};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tocsin_contracts::v1;
use tocsin_integration_tests::stack::{self, Record};

const TWILIO_TOKEN: &str = "tw-test-auth-token";

/// Twilio's helper library computes each signature exactly as Twilio does when it calls.
const TWILIO_SIGN: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
requests = json.load(sys.stdin)
print(json.dumps([
    RequestValidator(r["token"]).compute_signature(r["url"], r["params"])
    for r in requests
]))
"#;

struct TwilioCall {
    url: String,
    params: Vec<(&'static str, String)>,
}

fn status_url(tracker: &Tracker, key: &str) -> String {
    // Built as the sender builds its StatusCallback (`k` appended, percent-encoded).
    let mut url = reqwest::Url::parse(&tracker.url("/webhooks/twilio/status")).expect("url");
    url.query_pairs_mut().append_pair("k", key);
    url.to_string()
}

fn status(tracker: &Tracker, key: &str, sid: &str, status: &str, code: Option<&str>) -> TwilioCall {
    let mut params = vec![
        (
            "AccountSid",
            "AC0123456789abcdef0123456789abcdef".to_owned(),
        ),
        ("ApiVersion", "2010-04-01".to_owned()),
        ("From", "+33700000000".to_owned()),
        ("To", "+33612345678".to_owned()),
        ("MessageSid", sid.to_owned()),
        ("SmsSid", sid.to_owned()),
        ("MessageStatus", status.to_owned()),
        ("SmsStatus", status.to_owned()),
    ];
    if let Some(code) = code {
        params.push(("ErrorCode", code.to_owned()));
    }
    TwilioCall {
        url: status_url(tracker, key),
        params,
    }
}

fn inbound(tracker: &Tracker, sid: &str, from: &str, body: &str) -> TwilioCall {
    TwilioCall {
        url: tracker.url("/webhooks/twilio/inbound"),
        params: vec![
            (
                "AccountSid",
                "AC0123456789abcdef0123456789abcdef".to_owned(),
            ),
            ("ApiVersion", "2010-04-01".to_owned()),
            ("MessageSid", sid.to_owned()),
            ("SmsMessageSid", sid.to_owned()),
            ("From", from.to_owned()),
            ("To", "+33700000000".to_owned()),
            ("Body", body.to_owned()),
            ("NumMedia", "0".to_owned()),
            ("NumSegments", "1".to_owned()),
            ("FromCountry", "FR".to_owned()),
        ],
    }
}

/// Signatures of `calls` by Twilio's library, each with its token.
fn twilio_signatures(calls: &[(&TwilioCall, &str)]) -> Vec<String> {
    let input: Vec<Value> = calls
        .iter()
        .map(|(call, token)| {
            let params: serde_json::Map<String, Value> = call
                .params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
                .collect();
            json!({"token": token, "url": call.url, "params": params})
        })
        .collect();
    serde_json::from_value(run_python(TWILIO_SIGN, &Value::from(input))).expect("signatures")
}

async fn post_twilio(
    tracker: &Tracker,
    url: &str,
    params: &[(&'static str, String)],
    signature: Option<&str>,
) -> reqwest::Response {
    let mut request = tracker.client.post(url).form(params);
    if let Some(signature) = signature {
        request = request.header("X-Twilio-Signature", signature);
    }
    request.send().await.expect("twilio webhook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_signatures_made_by_twilios_library() {
    let tracker = Tracker::start(
        "tracker-twilio",
        &[("TOCSIN__TRACKER__TWILIO__AUTH_TOKEN", TWILIO_TOKEN)],
    )
    .await;
    let campaign = stack::unique("cmp");
    let message = |contact: &str| format!("{campaign}:{contact}:sms");
    let sid = |n: u8| format!("SMin{n:028}");

    let delivered = status(
        &tracker,
        &message("c-1"),
        "SM00000000000000000000000000000001",
        "delivered",
        None,
    );
    let undelivered = status(
        &tracker,
        &message("c-2"),
        "SM00000000000000000000000000000002",
        "undelivered",
        Some("30005"),
    );
    let sent = status(
        &tracker,
        &message("c-1"),
        "SM00000000000000000000000000000001",
        "sent",
        None,
    );
    let stop = inbound(&tracker, &sid(1), "+33612345678", "STOP");
    let arret = inbound(&tracker, &sid(2), "+33698765432", " Arrêt \n");
    let start = inbound(&tracker, &sid(3), "+33612345678", "start");
    let stopall = inbound(&tracker, &sid(4), "+33611223344", "STOPALL");
    let chat = inbound(
        &tracker,
        &sid(5),
        "+33612345678",
        "Bonjour, à quelle heure samedi ?",
    );
    let valid = [
        &delivered,
        &undelivered,
        &sent,
        &stop,
        &arret,
        &start,
        &stopall,
        &chat,
    ];
    let mut to_sign: Vec<(&TwilioCall, &str)> = valid.iter().map(|c| (*c, TWILIO_TOKEN)).collect();
    to_sign.push((&delivered, "another-accounts-token"));
    let signatures = twilio_signatures(&to_sign);
    let (good, wrong_token) = signatures.split_at(valid.len());

    // Forgeries first: none may publish anything.
    let other_key = status_url(&tracker, &message("c-3"));
    let r = post_twilio(&tracker, &other_key, &delivered.params, Some(&good[0])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another URL");
    let mut changed = delivered.params.clone();
    changed[6].1 = "undelivered".into();
    let r = post_twilio(&tracker, &delivered.url, &changed, Some(&good[0])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a changed parameter");
    let mut added = delivered.params.clone();
    added.push(("ErrorCode", "30003".into()));
    let r = post_twilio(&tracker, &delivered.url, &added, Some(&good[0])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "an added parameter");
    let r = post_twilio(
        &tracker,
        &delivered.url,
        &delivered.params,
        Some(&wrong_token[0]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another token");
    let r = post_twilio(&tracker, &delivered.url, &delivered.params, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "unsigned");
    let mut start_instead = stop.params.clone();
    start_instead[6].1 = "START".into();
    let r = post_twilio(&tracker, &stop.url, &start_instead, Some(&good[3])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a changed SMS body");

    // Twilio's own signatures verify.
    for (call, signature) in valid.iter().zip(good) {
        let r = post_twilio(&tracker, &call.url, &call.params, Some(signature)).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", call.url);
        if call.url.ends_with("/inbound") {
            assert!(
                r.headers()[CONTENT_TYPE]
                    .to_str()
                    .expect("ascii")
                    .starts_with("text/xml")
            );
            assert!(r.text().await.expect("twiml").contains("<Response>"));
        }
    }
    // Twilio calling again: the same event.
    let r = post_twilio(&tracker, &delivered.url, &delivered.params, Some(&good[0])).await;
    assert_eq!(r.status(), StatusCode::OK);

    let records = feedback_exactly(&tracker, 7).await;
    let of = |kind: v1::FeedbackKind| -> Vec<&Record<v1::Feedback>> {
        records.iter().filter(|r| r.event.kind() == kind).collect()
    };
    let delivered = of(v1::FeedbackKind::Delivered);
    assert_eq!(delivered.len(), 2);
    assert_eq!(event_id(delivered[0]), event_id(delivered[1]));
    assert_eq!(
        event_id(delivered[0]),
        "tracker:twilio:SM00000000000000000000000000000001:delivered"
    );
    assert_eq!(key(delivered[0]), "c-1");
    assert_eq!(delivered[0].event.campaign_id, campaign);
    assert_eq!(
        delivered[0].event.idempotency_key,
        format!("{campaign}:c-1:sms")
    );
    assert_eq!(delivered[0].event.channel(), v1::Channel::Sms);
    assert_eq!(delivered[0].event.provider, "twilio");

    let bounced = of(v1::FeedbackKind::Bounced);
    assert_eq!(bounced.len(), 1);
    assert_eq!(bounced[0].event.contact_id, "c-2");
    assert_eq!(bounced[0].event.bounce_class(), v1::BounceClass::Hard);
    assert_eq!(bounced[0].event.detail, "Twilio error 30005");

    let by_address: BTreeMap<(String, String), (v1::FeedbackKind, v1::OptOutScope)> = records
        .iter()
        .filter(|r| !r.event.address.is_empty())
        .map(|r| {
            assert!(r.event.contact_id.is_empty() && r.event.campaign_id.is_empty());
            assert_eq!(key(r), r.event.address, "keyed by the number");
            assert_eq!(r.event.channel(), v1::Channel::Sms);
            (
                (r.event.address.clone(), r.event.provider_message_id.clone()),
                (r.event.kind(), r.event.opt_out_scope()),
            )
        })
        .collect();
    use v1::{FeedbackKind as K, OptOutScope as S};
    assert_eq!(
        by_address,
        BTreeMap::from([
            (
                ("+33612345678".into(), sid(1)),
                (K::Unsubscribed, S::Channel)
            ),
            (
                ("+33698765432".into(), sid(2)),
                (K::Unsubscribed, S::Channel)
            ),
            (
                ("+33612345678".into(), sid(3)),
                (K::Resubscribed, S::Unspecified)
            ),
            (("+33611223344".into(), sid(4)), (K::Unsubscribed, S::All)),
        ])
    );

    for (provider, count) in [("twilio_status", 5), ("twilio_inbound", 1)] {
        assert_eq!(
            tracker
                .metric(&format!(
                    "tocsin_tracker_webhooks_total{{provider=\"{provider}\",verdict=\"bad_signature\"}}"
                ))
                .await,
            count,
            "{provider}"
        );
    }
    assert_eq!(
        tracker
            .metric(
                "tocsin_tracker_webhooks_total{provider=\"twilio_inbound\",verdict=\"accepted\"}"
            )
            .await,
        5
    );
    assert_eq!(
        tracker
            .metric("tocsin_tracker_inbound_sms_total{keyword=\"other\"}")
            .await,
        1
    );
    // Providers without a configured secret are refused.
    let r = tracker
        .client
        .post(tracker.url("/webhooks/sendgrid"))
        .body("[]")
        .send()
        .await
        .expect("sendgrid");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    tracker.stop().await;
}

/// Signs like SendGrid: ECDSA P-256 / SHA-256 over the timestamp string then the body.
fn sendgrid_sign(key: &SigningKey, timestamp: &str, body: &str) -> String {
    let signature: Signature = key.sign(format!("{timestamp}{body}").as_bytes());
    STANDARD.encode(signature.to_der().as_bytes())
}

/// OpenSSL (through `cryptography`) signs with the same key; both the low-S and the
/// high-S form of its signature are sent, as either can come from SendGrid.
const OPENSSL_SIGN: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
r = json.load(sys.stdin)
key = ec.derive_private_key(int(r["scalar"], 16), ec.SECP256R1())
out = []
for item in r["items"]:
    der = key.sign((item["timestamp"] + item["body"]).encode(), ec.ECDSA(hashes.SHA256()))
    rr, s = decode_dss_signature(der)
    s = min(s, N - s) if item["form"] == "low" else max(s, N - s)
    out.append(base64.b64encode(encode_dss_signature(rr, s)).decode())
print(json.dumps(out))
"#;

async fn post_sendgrid(
    tracker: &Tracker,
    body: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> StatusCode {
    let mut request = tracker
        .client
        .post(tracker.url("/webhooks/sendgrid"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(timestamp) = timestamp {
        request = request.header("X-Twilio-Email-Event-Webhook-Timestamp", timestamp);
    }
    if let Some(signature) = signature {
        request = request.header("X-Twilio-Email-Event-Webhook-Signature", signature);
    }
    request.send().await.expect("sendgrid webhook").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_signed_event_webhook() {
    let seed = Sha256::digest(stack::unique("sendgrid-key").as_bytes());
    let signing = SigningKey::from_slice(&seed).expect("P-256 key");
    let public = STANDARD.encode(
        signing
            .verifying_key()
            .to_public_key_der()
            .expect("SPKI")
            .as_bytes(),
    );
    let tracker = Tracker::start(
        "tracker-sendgrid",
        &[("TOCSIN__TRACKER__SENDGRID__PUBLIC_KEY", &public)],
    )
    .await;
    let campaign = stack::unique("cmp");
    let now = common::now_ms() / 1000;
    let event = |contact: &str, id: &str, extra: Value| {
        let mut e = json!({
            "email": format!("{contact}@exemple.fr"),
            "timestamp": now,
            "sg_event_id": id,
            "sg_message_id": format!("msg-{contact}.filterdrecv-1"),
            "smtp-id": format!("<{contact}@tocsin.localhost>"),
            "idempotency_key": format!("{campaign}:{contact}:email"),
            "campaign_id": campaign,
            "contact_id": contact,
        });
        for (k, v) in extra.as_object().expect("object") {
            e[k] = v.clone();
        }
        e
    };
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let mut foreign = event("x", "ev-foreign", json!({"event": "delivered"}));
    for field in ["idempotency_key", "campaign_id", "contact_id"] {
        foreign.as_object_mut().expect("object").remove(field);
    }
    let batch = Value::from(vec![
        event("c-1", "ev-processed", json!({"event": "processed"})),
        event("c-1", "ev-delivered", json!({"event": "delivered", "response": "250 OK"})),
        event("c-2", "ev-bounce", json!({"event": "bounce", "type": "bounce", "status": "5.1.1",
            "reason": "550 5.1.1 <c-2@exemple.fr>: Recipient address rejected"})),
        event("c-3", "ev-blocked", json!({"event": "bounce", "type": "blocked", "reason": "421 try later"})),
        event("c-4", "ev-deferred", json!({"event": "deferred", "response": "451 greylisted", "attempt": "1"})),
        event("c-1", "ev-mpp", json!({"event": "open", "sg_machine_open": true, "useragent": "Mozilla/5.0", "ip": "17.58.0.1"})),
        event("c-5", "ev-open", json!({"event": "open", "sg_machine_open": false, "useragent": firefox, "ip": "192.0.2.7"})),
        event("c-1", "ev-click", json!({"event": "click", "url": "https://exemple.fr/agenda", "url_offset": {"index": 0, "type": "html"}, "useragent": firefox})),
        event("c-6", "ev-spam", json!({"event": "spamreport"})),
        event("c-7", "ev-unsub", json!({"event": "unsubscribe"})),
        event("c-8", "ev-group-unsub", json!({"event": "group_unsubscribe", "asm_group_id": 10})),
        event("c-9", "ev-dropped", json!({"event": "dropped", "reason": "Bounced Address"})),
        foreign,
    ])
    .to_string();
    let ts = now.to_string();
    let signature = sendgrid_sign(&signing, &ts, &batch);

    // Forgeries and stale requests: refused, nothing published.
    let changed = batch.replacen("ev-delivered", "ev-delivereD", 1);
    assert_eq!(changed.len(), batch.len());
    assert_eq!(
        post_sendgrid(&tracker, &changed, Some(&ts), Some(&signature)).await,
        StatusCode::FORBIDDEN,
        "a changed body byte"
    );
    let later = (now + 1).to_string();
    assert_eq!(
        post_sendgrid(&tracker, &batch, Some(&later), Some(&signature)).await,
        StatusCode::FORBIDDEN,
        "another timestamp"
    );
    let other = SigningKey::from_slice(&Sha256::digest(b"another key")).expect("key");
    assert_eq!(
        post_sendgrid(
            &tracker,
            &batch,
            Some(&ts),
            Some(&sendgrid_sign(&other, &ts, &batch))
        )
        .await,
        StatusCode::FORBIDDEN,
        "another key"
    );
    assert_eq!(
        post_sendgrid(&tracker, &batch, None, None).await,
        StatusCode::FORBIDDEN,
        "unsigned"
    );
    let old = (now - 3_600).to_string();
    assert_eq!(
        post_sendgrid(
            &tracker,
            &batch,
            Some(&old),
            Some(&sendgrid_sign(&signing, &old, &batch))
        )
        .await,
        StatusCode::FORBIDDEN,
        "an hour old"
    );

    // Signed: accepted, and accepted again when SendGrid retries.
    for _ in 0..2 {
        assert_eq!(
            post_sendgrid(&tracker, &batch, Some(&ts), Some(&signature)).await,
            StatusCode::OK
        );
    }
    // Signed by OpenSSL, both forms of S.
    let single = |contact: &str, id: &str| {
        Value::from(vec![event(contact, id, json!({"event": "delivered"}))]).to_string()
    };
    let openssl_batches = [single("c-10", "ev-low-s"), single("c-11", "ev-high-s")];
    let signatures: Vec<String> = serde_json::from_value(run_python(
        OPENSSL_SIGN,
        &json!({
            "scalar": seed.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "items": [
                {"timestamp": ts, "body": openssl_batches[0], "form": "low"},
                {"timestamp": ts, "body": openssl_batches[1], "form": "high"},
            ],
        }),
    ))
    .expect("signatures");
    for (body, signature) in openssl_batches.iter().zip(&signatures) {
        assert_eq!(
            post_sendgrid(&tracker, body, Some(&ts), Some(signature)).await,
            StatusCode::OK,
            "OpenSSL's signature"
        );
    }

    // 11 of the 13 events are Tocsin's and say something new; twice; then the two others.
    let records = feedback_exactly(&tracker, 24).await;
    let mut seen: BTreeMap<String, Vec<&Record<v1::Feedback>>> = BTreeMap::new();
    for r in &records {
        seen.entry(event_id(r).to_owned()).or_default().push(r);
    }
    assert_eq!(seen.len(), 13);
    let one = |id: &str| -> &v1::Feedback {
        let found = &seen[&format!("tracker:sendgrid:{id}")];
        &found[0].event
    };
    for id in [
        "ev-delivered",
        "ev-bounce",
        "ev-mpp",
        "ev-click",
        "ev-unsub",
    ] {
        assert_eq!(
            seen[&format!("tracker:sendgrid:{id}")].len(),
            2,
            "{id} retried"
        );
    }
    use v1::{BounceClass as B, FeedbackKind as K};
    let delivered = one("ev-delivered");
    assert_eq!(
        (delivered.kind(), delivered.contact_id.as_str()),
        (K::Delivered, "c-1")
    );
    assert_eq!(delivered.campaign_id, campaign);
    assert_eq!(delivered.provider_message_id, "msg-c-1.filterdrecv-1");
    assert_eq!(
        delivered.provider_timestamp.as_ref().map(|t| t.seconds),
        Some(now)
    );
    let bounce = one("ev-bounce");
    assert_eq!(
        (bounce.kind(), bounce.bounce_class()),
        (K::Bounced, B::Hard)
    );
    assert!(
        !bounce.detail.contains("c-2@exemple.fr"),
        "{}",
        bounce.detail
    );
    assert_eq!(one("ev-blocked").bounce_class(), B::Soft);
    assert_eq!(one("ev-deferred").kind(), K::Deferred);
    assert!(one("ev-mpp").machine, "Apple's proxy open");
    assert_eq!(one("ev-open").kind(), K::Opened);
    assert!(!one("ev-open").machine);
    assert_eq!(one("ev-click").url, "https://exemple.fr/agenda");
    assert_eq!(one("ev-spam").kind(), K::Complained);
    assert_eq!(one("ev-spam").opt_out_scope(), v1::OptOutScope::All);
    assert_eq!(one("ev-unsub").kind(), K::Unsubscribed);
    assert_eq!(one("ev-group-unsub").kind(), K::Unsubscribed);
    assert_eq!(
        (one("ev-dropped").kind(), one("ev-dropped").bounce_class()),
        (K::Bounced, B::Hard)
    );
    assert_eq!(one("ev-low-s").contact_id, "c-10");
    assert_eq!(one("ev-high-s").contact_id, "c-11");
    for r in &records {
        assert_eq!(key(r), r.event.contact_id);
        assert_eq!(r.event.channel(), v1::Channel::Email);
    }

    let verdict = |v: &'static str| {
        let tracker = &tracker;
        async move {
            tracker
                .metric(&format!(
                    "tocsin_tracker_webhooks_total{{provider=\"sendgrid\",verdict=\"{v}\"}}"
                ))
                .await
        }
    };
    assert_eq!(verdict("bad_signature").await, 4);
    assert_eq!(verdict("stale").await, 1);
    assert_eq!(verdict("accepted").await, 4);
    assert_eq!(
        tracker
            .metric("tocsin_tracker_webhook_events_total{kind=\"ignored\",provider=\"sendgrid\"}")
            .await,
        4
    );
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brevo_webhook_with_a_bearer_token() {
    let tracker = Tracker::start(
        "tracker-brevo",
        &[("TOCSIN__TRACKER__BREVO__BEARER_TOKEN", "brevo-test-token")],
    )
    .await;
    let campaign = stack::unique("cmp");
    let event = |contact: &str, name: &str, ts: i64, extra: Value| {
        let mut e = json!({
            "event": name,
            "email": format!("{contact}@exemple.fr"),
            "id": 123456,
            "date": "2026-12-04 18:00:02",
            "ts": ts,
            "ts_event": ts,
            "message-id": format!("<20261204170002.{contact}@smtp-relay.mailin.fr>"),
            "subject": "Rendez-vous samedi",
            "X-Mailin-custom": format!("{campaign}:{contact}:email"),
            "tags": [campaign],
        });
        for (k, v) in extra.as_object().expect("object") {
            e[k] = v.clone();
        }
        e
    };
    let post = |body: String, authorization: Option<&'static str>| {
        let mut request = tracker
            .client
            .post(tracker.url("/webhooks/brevo"))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        async move { request.send().await.expect("brevo webhook").status() }
    };
    let single = event(
        "c-1",
        "hard_bounce",
        1_800_000_000,
        json!({"reason": "c-1@exemple.fr: 550 user unknown"}),
    )
    .to_string();
    for authorization in [
        None,
        Some("Bearer wrong-token"),
        Some("Basic YnJldm86YnJldm8="),
    ] {
        assert_eq!(
            post(single.clone(), authorization).await,
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
    }
    assert_eq!(
        post(single, Some("Bearer brevo-test-token")).await,
        StatusCode::OK
    );
    let batch = Value::from(vec![
        event("c-2", "delivered", 1_800_000_001, json!({})),
        event("c-3", "opened", 1_800_000_100, json!({})),
        event("c-3", "unique_opened", 1_800_000_100, json!({})),
        event("c-4", "proxy_open", 1_800_000_002, json!({})),
        event(
            "c-5",
            "click",
            1_800_000_200,
            json!({"link": "https://exemple.fr/agenda"}),
        ),
        event("c-6", "spam", 1_800_000_300, json!({})),
        event("c-7", "unsubscribed", 1_800_000_400, json!({})),
        event("c-8", "request", 1_800_000_000, json!({})),
        event(
            "c-9",
            "soft_bounce",
            1_800_000_005,
            json!({"reason": "mailbox full"}),
        ),
    ])
    .to_string();
    assert_eq!(
        post(batch, Some("Bearer brevo-test-token")).await,
        StatusCode::OK
    );

    let records = feedback_exactly(&tracker, 9).await;
    let by_contact: BTreeMap<&str, Vec<&v1::Feedback>> =
        records.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.event.contact_id.as_str())
                .or_default()
                .push(&r.event);
            m
        });
    use v1::{BounceClass as B, FeedbackKind as K};
    assert_eq!(by_contact["c-1"][0].kind(), K::Bounced);
    assert_eq!(by_contact["c-1"][0].bounce_class(), B::Hard);
    assert_eq!(by_contact["c-1"][0].detail, "<recipient>: 550 user unknown");
    assert_eq!(by_contact["c-2"][0].kind(), K::Delivered);
    let opens = &by_contact["c-3"];
    assert_eq!(opens.len(), 2);
    assert_eq!(
        opens[0].meta.as_ref().map(|m| &m.event_id),
        opens[1].meta.as_ref().map(|m| &m.event_id),
        "opened and unique_opened of one open are one event"
    );
    assert!(by_contact["c-4"][0].machine, "Brevo's proxy open");
    assert_eq!(by_contact["c-5"][0].url, "https://exemple.fr/agenda");
    assert_eq!(by_contact["c-6"][0].kind(), K::Complained);
    assert_eq!(by_contact["c-7"][0].kind(), K::Unsubscribed);
    assert!(
        !by_contact.contains_key("c-8"),
        "request is the sender's sent"
    );
    assert_eq!(by_contact["c-9"][0].bounce_class(), B::Soft);
    for r in &records {
        assert_eq!(r.event.campaign_id, campaign);
        assert_eq!(r.event.provider, "brevo");
        assert_eq!(key(r), r.event.contact_id);
    }
    assert_eq!(
        tracker
            .metric("tocsin_tracker_webhooks_total{provider=\"brevo\",verdict=\"bad_signature\"}")
            .await,
        3
    );
    tracker.stop().await;
}
