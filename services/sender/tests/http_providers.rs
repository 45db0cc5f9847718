//! The HTTP providers against the in-process stand-ins (`tocsin-standins`): every field
//! each client sends, every error mapping, and the stand-ins' own duplicate counting,
//! fault rates and Twilio status-callback signatures. Loopback only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use tocsin_contracts::v1;
use tocsin_sender::providers::brevo::{BrevoConfig, BrevoProvider, SmsType, idempotency_uuid};
use tocsin_sender::providers::sendgrid::{SendGridConfig, SendGridProvider};
use tocsin_sender::providers::twilio::{TwilioConfig, TwilioProvider};
use tocsin_sender::providers::webhook::{WebhookConfig, WebhookProvider};
use tocsin_sender::providers::{Outgoing, Permanent, Provider, SendError};
use tocsin_standins::{
    Config, DEFAULT_BREVO_API_KEY, DEFAULT_SENDGRID_API_KEY, DEFAULT_TWILIO_ACCOUNT_SID,
    DEFAULT_TWILIO_AUTH_TOKEN, DEFAULT_WEBHOOK_SECRET, Faults, Provider as Api, ProviderStats,
    Recorded,
};

/// A stand-in server for one test, with the providers pointed at it.
struct StandIn(tocsin_standins::client::Running);

impl std::ops::Deref for StandIn {
    type Target = tocsin_standins::client::Running;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl StandIn {
    async fn start() -> Self {
        Self::with(Config::default()).await
    }

    async fn with(config: Config) -> Self {
        StandIn(
            tocsin_standins::client::Running::start(config)
                .await
                .expect("stand-in starts"),
        )
    }

    async fn messages(&self, api: Api) -> Vec<Recorded> {
        self.0.messages(api).await.expect("messages")
    }

    async fn stats(&self, api: Api) -> ProviderStats {
        self.0.stats(api).await.expect("stats")
    }

    async fn faults(&self, api: Api, faults: Value) {
        self.0.set_faults(api, &faults).await.expect("faults");
    }

    fn sendgrid(&self, key: &str, timeout_ms: u64) -> SendGridProvider {
        SendGridProvider::new(
            "sendgrid-main",
            &SendGridConfig {
                api_key: SecretString::from(key),
                base_url: self.base.clone(),
                timeout_ms,
            },
        )
        .expect("sendgrid config")
    }

    fn brevo(&self, key: &str, timeout_ms: u64) -> BrevoProvider {
        BrevoProvider::new(
            "brevo-main",
            &BrevoConfig {
                api_key: SecretString::from(key),
                base_url: self.base.clone(),
                timeout_ms,
                sms_type: SmsType::Marketing,
                sms_web_url: Some("https://tracker.example.org/brevo/sms".into()),
                sms_organisation_prefix: None,
            },
        )
        .expect("brevo config")
    }

    fn twilio(&self, token: &str, timeout_ms: u64, callback: &str) -> TwilioProvider {
        TwilioProvider::new(
            "twilio-main",
            &TwilioConfig {
                account_sid: DEFAULT_TWILIO_ACCOUNT_SID.into(),
                auth_token: SecretString::from(token),
                base_url: self.base.clone(),
                timeout_ms,
                status_callback: Some(callback.into()),
                messaging_service_sid: None,
            },
        )
        .expect("twilio config")
    }

    fn webhook(&self, secret: &str, timeout_ms: u64) -> WebhookProvider {
        WebhookProvider::new(
            "webhook-main",
            &WebhookConfig {
                url: format!("{}/webhook", self.base),
                secret: SecretString::from(secret),
                timeout_ms,
            },
        )
        .expect("webhook config")
    }
}

const CALLBACK: &str = "https://tracker.example.org/twilio/status";

fn origin(key: &str) -> v1::Origin {
    v1::Origin {
        idempotency_key: key.into(),
        campaign_id: "cmp-42".into(),
        contact_id: "ctc-7".into(),
        template_id: "tpl-1".into(),
        template_version: 3,
        ..v1::Origin::default()
    }
}

fn email(key: &str) -> v1::RenderedEmail {
    v1::RenderedEmail {
        from: "Parti Exemple <news@example.org>".into(),
        to: "ada@example.net".into(),
        reply_to: "\"Équipe, campagne\" <team@example.org>".into(),
        subject: "Réunion publique jeudi".into(),
        html: "<p>Bonjour Ada</p>".into(),
        text: "Bonjour Ada".into(),
        message_id: "<0123456789abcdef@mail.example.org>".into(),
        headers: vec![
            v1::Header {
                name: "List-Unsubscribe".into(),
                value: "<https://t.example.org/u/TOKEN>, <mailto:unsub@example.org?subject=unsubscribe-TOKEN>"
                    .into(),
            },
            v1::Header {
                name: "List-Unsubscribe-Post".into(),
                value: "List-Unsubscribe=One-Click".into(),
            },
        ],
        origin: Some(origin(key)),
        ..v1::RenderedEmail::default()
    }
}

fn sms(to: &str, key: &str) -> v1::RenderedSms {
    v1::RenderedSms {
        to: to.into(),
        from: "+33700000001".into(),
        body: "Parti Exemple : réunion jeudi 18h. STOP au 36111".into(),
        encoding: v1::SmsEncoding::Ucs2 as i32,
        parts: 1,
        origin: Some(origin(key)),
        ..v1::RenderedSms::default()
    }
}

fn hex_hmac_sha256(secret: &[u8], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("key");
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Successful sends, every field checked on the stand-in side.

#[tokio::test]
async fn sendgrid_sends_every_documented_field() {
    let standin = StandIn::start().await;
    let provider = standin.sendgrid(DEFAULT_SENDGRID_API_KEY, 5_000);
    let message = email("cmp-42:ctc-7:email");
    let accepted = provider
        .send(Outgoing::Email(&message))
        .await
        .expect("accepted");

    let got = standin.messages(Api::SendGrid).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(accepted.provider_message_id, m.id);
    assert_eq!(m.id.len(), 22);
    assert_eq!(m.idempotency_key, "cmp-42:ctc-7:email");
    assert_eq!(m.headers["content-type"], "application/json");
    assert!(m.headers["user-agent"].starts_with("tocsin-sender/"));
    let r = &m.request;
    assert_eq!(
        r["personalizations"],
        json!([{"to": [{"email": "ada@example.net"}]}])
    );
    assert_eq!(
        r["from"],
        json!({"email": "news@example.org", "name": "Parti Exemple"})
    );
    assert_eq!(
        r["reply_to"],
        json!({"email": "team@example.org", "name": "Équipe, campagne"})
    );
    assert_eq!(r["subject"], "Réunion publique jeudi");
    assert_eq!(
        r["content"],
        json!([
            {"type": "text/plain", "value": "Bonjour Ada"},
            {"type": "text/html", "value": "<p>Bonjour Ada</p>"}
        ])
    );
    assert_eq!(
        r["headers"],
        json!({
            "List-Unsubscribe": "<https://t.example.org/u/TOKEN>, <mailto:unsub@example.org?subject=unsubscribe-TOKEN>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-ID": "<0123456789abcdef@mail.example.org>",
        })
    );
    assert_eq!(
        r["custom_args"],
        json!({
            "idempotency_key": "cmp-42:ctc-7:email",
            "campaign_id": "cmp-42",
            "contact_id": "ctc-7",
        })
    );
}

#[tokio::test]
async fn brevo_email_sends_every_documented_field() {
    let standin = StandIn::start().await;
    let provider = standin.brevo(DEFAULT_BREVO_API_KEY, 5_000);
    let message = email("cmp-42:ctc-7:email");
    let accepted = provider
        .send(Outgoing::Email(&message))
        .await
        .expect("accepted");

    let got = standin.messages(Api::BrevoEmail).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(accepted.provider_message_id, m.id);
    assert!(m.id.starts_with('<') && m.id.ends_with("@smtp-relay.mailin.fr>"));
    assert_eq!(m.idempotency_key, "cmp-42:ctc-7:email");
    assert_eq!(m.headers["accept"], "application/json");
    let r = &m.request;
    assert_eq!(
        r["sender"],
        json!({"email": "news@example.org", "name": "Parti Exemple"})
    );
    assert_eq!(r["to"], json!([{"email": "ada@example.net"}]));
    assert_eq!(
        r["replyTo"],
        json!({"email": "team@example.org", "name": "Équipe, campagne"})
    );
    assert_eq!(r["subject"], "Réunion publique jeudi");
    assert_eq!(r["htmlContent"], "<p>Bonjour Ada</p>");
    assert_eq!(r["textContent"], "Bonjour Ada");
    assert_eq!(r["tags"], json!(["cmp-42"]));
    assert_eq!(
        r["headers"],
        json!({
            "List-Unsubscribe": "<https://t.example.org/u/TOKEN>, <mailto:unsub@example.org?subject=unsubscribe-TOKEN>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-Id": "<0123456789abcdef@mail.example.org>",
            "X-Mailin-custom": "cmp-42:ctc-7:email",
            "idempotencyKey": idempotency_uuid("cmp-42:ctc-7:email"),
        })
    );
}

#[tokio::test]
async fn brevo_sms_sends_every_documented_field() {
    let standin = StandIn::start().await;
    let provider = standin.brevo(DEFAULT_BREVO_API_KEY, 5_000);
    let message = sms("+33612345678", "cmp-42:ctc-7:sms");
    let accepted = provider
        .send(Outgoing::Sms(&message))
        .await
        .expect("accepted");

    let got = standin.messages(Api::BrevoSms).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(accepted.provider_message_id, m.id);
    assert!(m.id.parse::<u64>().is_ok(), "a numeric messageId: {}", m.id);
    assert_eq!(m.idempotency_key, "cmp-42:ctc-7:sms");
    assert_eq!(m.parts, Some(1));
    assert_eq!(
        m.request,
        json!({
            "sender": "33700000001",
            "recipient": "33612345678",
            "content": "Parti Exemple : réunion jeudi 18h. STOP au 36111",
            "type": "marketing",
            "tag": "cmp-42:ctc-7:sms",
            "unicodeEnabled": true,
            "webUrl": "https://tracker.example.org/brevo/sms",
        })
    );
}

#[tokio::test]
async fn twilio_sends_every_documented_field() {
    let standin = StandIn::start().await;
    let provider = standin.twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK);
    let mut message = sms("+33612345678", "cmp-42:ctc-7:sms");
    let in_ten_minutes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    if let Some(origin) = message.origin.as_mut() {
        origin.expires_at = Some(tocsin_contracts::Timestamp {
            seconds: i64::try_from(in_ten_minutes).expect("seconds"),
            nanos: 0,
        });
    }
    let accepted = provider
        .send(Outgoing::Sms(&message))
        .await
        .expect("accepted with the documented Basic auth");

    let got = standin.messages(Api::Twilio).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(accepted.provider_message_id, m.id);
    assert!(m.id.starts_with("SM") && m.id.len() == 34);
    assert_eq!(m.idempotency_key, "cmp-42:ctc-7:sms");
    assert_eq!(m.parts, Some(1));
    assert_eq!(
        m.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let r = &m.request;
    assert_eq!(r["To"], "+33612345678");
    assert_eq!(r["From"], "+33700000001");
    assert!(r.get("MessagingServiceSid").is_none());
    assert_eq!(
        r["Body"],
        "Parti Exemple : réunion jeudi 18h. STOP au 36111"
    );
    assert_eq!(
        r["StatusCallback"],
        format!("{CALLBACK}?k=cmp-42%3Actc-7%3Asms")
    );
    let validity: u64 = r["ValidityPeriod"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("ValidityPeriod");
    assert!((590..=600).contains(&validity), "{validity}");
}

#[tokio::test]
async fn webhook_sends_a_signed_message() {
    let standin = StandIn::start().await;
    let provider = standin.webhook(DEFAULT_WEBHOOK_SECRET, 5_000);
    let message = email("cmp-42:ctc-7:email");
    let accepted = provider
        .send(Outgoing::Email(&message))
        .await
        .expect("accepted: the stand-in verified the signature");

    let got = standin.messages(Api::Webhook).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(accepted.provider_message_id, m.id);
    assert_eq!(m.headers["idempotency-key"], "cmp-42:ctc-7:email");
    assert_eq!(m.headers["content-type"], "application/json");
    // Recompute the signature over the bytes the receiver got.
    let timestamp = &m.headers["x-tocsin-timestamp"];
    let expected = hex_hmac_sha256(
        DEFAULT_WEBHOOK_SECRET.as_bytes(),
        format!("{timestamp}.{}", m.raw_body).as_bytes(),
    );
    assert_eq!(m.headers["x-tocsin-signature"], format!("v1={expected}"));
    let r = &m.request;
    assert_eq!(r["channel"], "email");
    assert_eq!(r["to"], "ada@example.net");
    assert_eq!(r["from"], "Parti Exemple <news@example.org>");
    assert_eq!(r["subject"], "Réunion publique jeudi");
    assert_eq!(r["html"], "<p>Bonjour Ada</p>");
    assert_eq!(r["text"], "Bonjour Ada");
    assert_eq!(r["messageId"], "<0123456789abcdef@mail.example.org>");
    assert_eq!(r["headers"][1]["value"], "List-Unsubscribe=One-Click");
    assert_eq!(r["origin"]["idempotencyKey"], "cmp-42:ctc-7:email");
    assert_eq!(r["origin"]["campaignId"], "cmp-42");
    assert_eq!(r["origin"]["contactId"], "ctc-7");

    let text = sms("+33612345678", "cmp-42:ctc-7:sms");
    provider.send(Outgoing::Sms(&text)).await.expect("sms");
    let got = standin.messages(Api::Webhook).await;
    assert_eq!(got[1].request["channel"], "sms");
    assert_eq!(got[1].request["encoding"], "SMS_ENCODING_UCS2");
    assert_eq!(got[1].parts, Some(1));
}

#[tokio::test]
async fn a_webhook_with_the_wrong_secret_is_refused() {
    let standin = StandIn::start().await;
    let provider = standin.webhook("not-the-secret", 5_000);
    let err = provider
        .send(Outgoing::Email(&email("k")))
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("authentication refused by webhook-main: check its credentials"),
        "{err}"
    );
    assert_eq!(standin.stats(Api::Webhook).await.rejected.auth, 1);
}

// ---------------------------------------------------------------------------------------
// Error mappings.

#[tokio::test]
async fn a_400_is_permanent_with_the_providers_message() {
    let standin = StandIn::start().await;
    let mut no_subject = email("k");
    no_subject.subject.clear();

    let err = standin
        .sendgrid(DEFAULT_SENDGRID_API_KEY, 5_000)
        .send(Outgoing::Email(&no_subject))
        .await
        .expect_err("SendGrid refuses");
    match err {
        SendError::Permanent {
            kind: Permanent::Rejected,
            reason,
        } => assert!(
            reason.starts_with(
                "sendgrid-main refused the message (HTTP 400): The subject is required."
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }

    let err = standin
        .brevo(DEFAULT_BREVO_API_KEY, 5_000)
        .send(Outgoing::Email(&no_subject))
        .await
        .expect_err("Brevo refuses");
    assert_eq!(
        err,
        SendError::permanent(
            Permanent::Rejected,
            "brevo-main refused the message (HTTP 400): subject is missing (missing_parameter)"
        )
    );

    let mut long_sender = sms("+33612345678", "k");
    long_sender.from = "Parti Exemple National".into();
    let err = standin
        .brevo(DEFAULT_BREVO_API_KEY, 5_000)
        .send(Outgoing::Sms(&long_sender))
        .await
        .expect_err("Brevo refuses");
    assert!(
        matches!(&err, SendError::Permanent { kind: Permanent::Rejected, reason } if reason.contains("sender is invalid") && reason.contains("(invalid_parameter)")),
        "{err:?}"
    );

    let mut empty = sms("+33612345678", "k");
    empty.body.clear();
    let err = standin
        .twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK)
        .send(Outgoing::Sms(&empty))
        .await
        .expect_err("Twilio refuses");
    assert_eq!(
        err,
        SendError::permanent(
            Permanent::Rejected,
            "twilio-main refused the message (HTTP 400): Message body is required. (Twilio error 21602)"
        )
    );
}

#[tokio::test]
async fn twilio_21610_is_an_opt_out() {
    let standin = StandIn::start().await;
    let err = standin
        .twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK)
        .send(Outgoing::Sms(&sms("+15005550004", "k")))
        .await
        .expect_err("unsubscribed");
    assert!(
        matches!(&err, SendError::Permanent { kind: Permanent::OptedOut, reason } if reason.contains("21610")),
        "{err:?}"
    );
    assert_eq!(standin.stats(Api::Twilio).await.rejected.refused, 1);
}

#[tokio::test]
async fn twilio_invalid_and_non_mobile_numbers_are_hard_bounces() {
    let standin = StandIn::start().await;
    let provider = standin.twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK);
    for (to, code) in [
        ("+15005550001", "21211"),
        ("+15005550009", "21614"),
        ("+3361234", "21211"),
    ] {
        let err = provider
            .send(Outgoing::Sms(&sms(to, "k")))
            .await
            .expect_err("bounces");
        match &err {
            SendError::Permanent {
                kind: Permanent::HardBounce,
                reason,
            } => {
                assert!(reason.contains(code), "{reason}");
                assert!(!reason.contains(to), "the number stays out: {reason}");
            }
            other => panic!("{to}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn twilio_full_queue_slows_down() {
    let standin = StandIn::start().await;
    let mut message = sms("+33612345678", "k");
    message.from = "+15005550008".into();
    let err = standin
        .twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK)
        .send(Outgoing::Sms(&message))
        .await
        .expect_err("queue full");
    assert!(
        matches!(&err, SendError::Transient { slow_down: true, reason, .. } if reason.contains("21611")),
        "{err:?}"
    );
}

/// One message each provider can take, with a sender for it.
async fn send_one(standin: &StandIn, api: Api, credential: &str, timeout_ms: u64) -> SendError {
    let message = email("cmp-42:ctc-7:email");
    let text = sms("+33612345678", "cmp-42:ctc-7:sms");
    let result = match api {
        Api::SendGrid => {
            standin
                .sendgrid(credential, timeout_ms)
                .send(Outgoing::Email(&message))
                .await
        }
        Api::BrevoEmail => {
            standin
                .brevo(credential, timeout_ms)
                .send(Outgoing::Email(&message))
                .await
        }
        Api::BrevoSms => {
            standin
                .brevo(credential, timeout_ms)
                .send(Outgoing::Sms(&text))
                .await
        }
        Api::Twilio => {
            standin
                .twilio(credential, timeout_ms, CALLBACK)
                .send(Outgoing::Sms(&text))
                .await
        }
        Api::Webhook => {
            standin
                .webhook(credential, timeout_ms)
                .send(Outgoing::Email(&message))
                .await
        }
    };
    result.expect_err("the fault answers")
}

fn credential(api: Api) -> &'static str {
    match api {
        Api::SendGrid => DEFAULT_SENDGRID_API_KEY,
        Api::BrevoEmail | Api::BrevoSms => DEFAULT_BREVO_API_KEY,
        Api::Twilio => DEFAULT_TWILIO_AUTH_TOKEN,
        Api::Webhook => DEFAULT_WEBHOOK_SECRET,
    }
}

#[tokio::test]
async fn a_429_slows_down_for_the_retry_after() {
    let standin = StandIn::start().await;
    for api in Api::ALL {
        standin
            .faults(api, json!({"throttle_rate": 1.0, "retry_after_s": 7}))
            .await;
        let err = send_one(&standin, api, credential(api), 5_000).await;
        match err {
            SendError::Transient {
                slow_down: true,
                retry_after,
                ..
            } => assert_eq!(retry_after, Some(Duration::from_secs(7)), "{api}"),
            other => panic!("{api}: {other:?}"),
        }
        assert_eq!(standin.stats(api).await.rejected.throttled, 1, "{api}");
    }
}

#[tokio::test]
async fn the_rate_limit_counts_sms_parts() {
    let standin = StandIn::start().await;
    // 4 parts per second: two 2-part messages pass, the third is refused.
    standin
        .faults(Api::Twilio, json!({"rate_limit": 4.0}))
        .await;
    let provider = standin.twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK);
    let mut long = sms("+33612345678", "k");
    long.body = "ê".repeat(100);
    for _ in 0..2 {
        provider
            .send(Outgoing::Sms(&long))
            .await
            .expect("within the limit");
    }
    let err = provider
        .send(Outgoing::Sms(&long))
        .await
        .expect_err("above the limit");
    assert!(
        matches!(err, SendError::Transient { slow_down: true, retry_after: Some(d), .. } if d >= Duration::from_secs(1)),
        "{err:?}"
    );
    let stats = standin.stats(Api::Twilio).await;
    assert_eq!(
        (stats.accepted, stats.parts, stats.rejected.rate_limited),
        (2, 4, 1)
    );
}

#[tokio::test]
async fn a_500_is_transient() {
    let standin = StandIn::start().await;
    for api in Api::ALL {
        standin.faults(api, json!({"error_rate": 1.0})).await;
        let err = send_one(&standin, api, credential(api), 5_000).await;
        assert!(
            matches!(
                &err,
                SendError::Transient {
                    slow_down: false,
                    ..
                }
            ),
            "{api}: {err:?}"
        );
        assert!(err.to_string().contains("(HTTP 500)"), "{api}: {err}");
    }
}

#[tokio::test]
async fn a_timeout_is_transient() {
    let standin = StandIn::start().await;
    for api in Api::ALL {
        standin
            .faults(api, json!({"timeout_rate": 1.0, "hold_ms": 10_000}))
            .await;
        let err = send_one(&standin, api, credential(api), 300).await;
        assert!(
            matches!(&err, SendError::Transient { slow_down: false, reason, .. } if reason.contains("timed out")),
            "{api}: {err:?}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_transient_and_say_so() {
    let standin = StandIn::start().await;
    for api in Api::ALL {
        let err = send_one(&standin, api, "wrong-credential", 5_000).await;
        assert!(
            matches!(
                &err,
                SendError::Transient {
                    slow_down: false,
                    ..
                }
            ),
            "{api}: {err:?}"
        );
        assert!(
            err.to_string().contains(": check its credentials (")
                && err.to_string().starts_with("authentication refused by "),
            "{api}: {err}"
        );
        assert_eq!(standin.stats(api).await.rejected.auth, 1, "{api}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // Bind then drop: nothing listens on this loopback port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let provider = SendGridProvider::new(
        "sendgrid-main",
        &SendGridConfig {
            api_key: SecretString::from("k"),
            base_url: format!("http://127.0.0.1:{port}"),
            timeout_ms: 2_000,
        },
    )
    .expect("config");
    let err = provider
        .send(Outgoing::Email(&email("k")))
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(&err, SendError::Transient { reason, .. } if reason.starts_with("request to sendgrid-main could not connect")),
        "{err:?}"
    );
}

#[tokio::test]
async fn brevo_refusing_a_reused_idempotency_key_means_already_sent() {
    let standin = StandIn::start().await;
    let provider = standin.brevo(DEFAULT_BREVO_API_KEY, 5_000);
    let message = email("cmp-42:ctc-7:email");
    let first = provider
        .send(Outgoing::Email(&message))
        .await
        .expect("sent");
    assert!(!first.provider_message_id.is_empty());
    let again = provider
        .send(Outgoing::Email(&message))
        .await
        .expect("Brevo's refusal of the replay is an acceptance");
    assert_eq!(again.provider_message_id, "");
    let stats = standin.stats(Api::BrevoEmail).await;
    assert_eq!(
        (
            stats.accepted,
            stats.duplicates,
            stats.rejected.idempotency_replay
        ),
        (1, 0, 1)
    );
}

// ---------------------------------------------------------------------------------------
// The stand-ins themselves.

#[tokio::test]
async fn the_standin_counts_duplicates() {
    let standin = StandIn::start().await;
    let twilio = standin.twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, CALLBACK);
    let webhook = standin.webhook(DEFAULT_WEBHOOK_SECRET, 5_000);
    let sendgrid = standin.sendgrid(DEFAULT_SENDGRID_API_KEY, 5_000);
    for key in ["a", "b", "a", "a"] {
        let text = sms("+33612345678", key);
        twilio.send(Outgoing::Sms(&text)).await.expect("twilio");
        webhook.send(Outgoing::Sms(&text)).await.expect("webhook");
        sendgrid
            .send(Outgoing::Email(&email(key)))
            .await
            .expect("sendgrid");
    }
    for api in [Api::Twilio, Api::Webhook, Api::SendGrid] {
        let stats = standin.stats(api).await;
        assert_eq!((stats.accepted, stats.duplicates), (4, 2), "{api}");
    }
    let reset = standin
        .http
        .post(format!("{}/_standin/reset", standin.base))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status(), 204);
    assert_eq!(standin.stats(Api::Twilio).await, ProviderStats::default());
    assert!(standin.messages(Api::Twilio).await.is_empty());
}

#[tokio::test]
async fn twenty_percent_of_5xx_fail_about_twenty_percent_of_2000_requests() {
    let standin = StandIn::with(Config {
        record: false,
        faults: Faults {
            error_rate: 0.2,
            ..Faults::default()
        },
        ..Config::default()
    })
    .await;
    let provider = standin.webhook(DEFAULT_WEBHOOK_SECRET, 5_000);
    let messages: Vec<v1::RenderedSms> = (0..2000)
        .map(|i| sms("+33612345678", &format!("key-{i}")))
        .collect();
    let failed = futures::stream::iter(&messages)
        .map(|m| provider.send(Outgoing::Sms(m)))
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    // Binomial(2000, 0.2): sd ≈ 18, so ±100 is more than 5 sd.
    assert!((300..=500).contains(&failed), "{failed} failures");
    let stats = standin.stats(Api::Webhook).await;
    assert_eq!(stats.rejected.server_error, failed as u64);
    assert_eq!(stats.accepted + stats.rejected.total(), 2000);
    assert_eq!(stats.duplicates, 0);
    assert!(
        standin.messages(Api::Webhook).await.is_empty(),
        "record off"
    );
}

#[tokio::test]
async fn a_hand_built_twilio_request_is_judged_like_twilio() {
    let standin = StandIn::start().await;
    let url = format!(
        "{}/2010-04-01/Accounts/{DEFAULT_TWILIO_ACCOUNT_SID}/Messages.json",
        standin.base
    );
    let form = [
        ("To", "+33612345678"),
        ("From", "Tocsin"),
        ("Body", "Bonjour"),
    ];
    let ok = standin
        .http
        .post(&url)
        .basic_auth(DEFAULT_TWILIO_ACCOUNT_SID, Some(DEFAULT_TWILIO_AUTH_TOKEN))
        .form(&form)
        .send()
        .await
        .expect("sent");
    assert_eq!(ok.status(), 201);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["num_segments"], "1");
    assert_eq!(body["account_sid"], DEFAULT_TWILIO_ACCOUNT_SID);

    let refused = standin
        .http
        .post(&url)
        .basic_auth(DEFAULT_TWILIO_ACCOUNT_SID, Some("wrong"))
        .form(&form)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], 20003);

    let unsigned = standin
        .http
        .post(&url)
        .form(&form)
        .send()
        .await
        .expect("sent");
    assert_eq!(unsigned.status(), 401);
}

#[tokio::test]
async fn twilio_status_callbacks_are_signed_as_twilio_signs_them() {
    // A tracker stand-in on loopback that keeps what it receives.
    type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/twilio/status",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let signature = headers
                        .get("x-twilio-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let params = form_pairs(&body);
                    seen.lock().expect("lock").push((signature, params));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tracker = format!(
        "http://{}/twilio/status",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let standin = StandIn::with(Config {
        twilio_status_callbacks: true,
        ..Config::default()
    })
    .await;
    let accepted = standin
        .twilio(DEFAULT_TWILIO_AUTH_TOKEN, 5_000, &tracker)
        .send(Outgoing::Sms(&sms("+33612345678", "cmp-42:ctc-7:sms")))
        .await
        .expect("accepted");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().expect("lock").len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "sent then delivered");
    let callback_url = format!("{tracker}?k=cmp-42%3Actc-7%3Asms");
    for ((signature, params), status) in seen.iter().zip(["sent", "delivered"]) {
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("MessageSid"),
            Some(accepted.provider_message_id.as_str())
        );
        assert_eq!(get("MessageStatus"), Some(status));
        assert_eq!(get("AccountSid"), Some(DEFAULT_TWILIO_ACCOUNT_SID));
        assert_eq!(get("To"), Some("+33612345678"));
        assert_eq!(
            signature,
            &tocsin_standins::twilio_signature(DEFAULT_TWILIO_AUTH_TOKEN, &callback_url, params)
        );
        assert_ne!(
            signature,
            &tocsin_standins::twilio_signature("another-token", &callback_url, params)
        );
    }
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn the_control_api_refuses_impossible_faults() {
    let standin = StandIn::start().await;
    let bad = standin
        .http
        .post(format!("{}/_standin/faults", standin.base))
        .json(&json!({"error_rate": 0.8, "throttle_rate": 0.5}))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 422);
    let unknown = standin
        .http
        .post(format!("{}/_standin/faults/mailgun", standin.base))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
    let typo = standin
        .http
        .post(format!("{}/_standin/faults", standin.base))
        .json(&json!({"eror_rate": 0.1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(typo.status(), 422);
}
