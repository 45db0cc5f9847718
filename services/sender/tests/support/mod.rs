//! What the sender's stack tests share: a sender configuration on a test's own topics,
//! rendered messages made by the real renderer, DKIM keys made with openssl.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use tocsin_bus::{Producer, TraceContext};
use tocsin_contracts::v1;
use tocsin_integration_tests::stack;
use tocsin_renderer::compose::{Composer, Message};
use tocsin_runtime::ConfigLoader;
use tocsin_templates::{Channel, Content, TemplateDraft, TemplateVersion};

/// Redis database of the sender tests (they never flush it: every key is unique).
pub const REDIS_DB: u8 = 13;

/// The variables of a sender on fresh topics, plus `extra`.
pub fn env(test: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = stack::service_env(test, 3, REDIS_DB);
    env.push(("TOCSIN__SENDER__GROUP_ID".into(), stack::unique("sender")));
    env.push(("TOCSIN__SENDER__BACKOFF_INITIAL_MS".into(), "50".into()));
    env.push(("TOCSIN__SENDER__BACKOFF_MAX_MS".into(), "1000".into()));
    env.push(("TOCSIN__SENDER__HEARTBEAT_MS".into(), "300".into()));
    env.extend(extra.iter().cloned());
    env
}

pub fn config(env: &[(String, String)]) -> tocsin_sender::Config {
    ConfigLoader::defaults_only(Some(tocsin_sender::config::DEFAULTS))
        .env(env.iter().cloned())
        .load()
        .expect("sender configuration")
}

/// `TOCSIN__SENDER__PROVIDERS__<NAME>__...` for an SMTP provider on the stack's server.
pub fn smtp_provider(name: &str, dkim: Option<&DkimKey>) -> Vec<(String, String)> {
    use tocsin_integration_tests::mail;
    let (user, password) = mail::smtp_credentials();
    let p = |field: &str| {
        format!(
            "TOCSIN__SENDER__PROVIDERS__{}__{field}",
            name.to_ascii_uppercase()
        )
    };
    let mut vars = vec![
        (p("CHANNEL"), "email".to_owned()),
        (p("API__KIND"), "smtp".to_owned()),
        (p("API__HOST"), "127.0.0.1".to_owned()),
        (p("API__PORT"), mail::smtp_port().to_string()),
        (p("API__TLS"), "starttls".to_owned()),
        (p("API__USERNAME"), user),
        (p("API__PASSWORD"), password),
        (
            p("API__CA_FILE"),
            mail::tls_ca_pem_path().display().to_string(),
        ),
        (p("API__POOL_SIZE"), "8".to_owned()),
        (p("API__TIMEOUT_MS"), "20000".to_owned()),
    ];
    if let Some(key) = dkim {
        vars.extend([
            (p("API__DKIM__SELECTOR"), key.selector.clone()),
            (p("API__DKIM__DOMAIN"), "tocsin.localhost".to_owned()),
            (p("API__DKIM__ALGORITHM"), key.algorithm.to_owned()),
            (p("API__DKIM__PRIVATE_KEY"), key.private.clone()),
        ]);
    }
    vars
}

/// A DKIM key pair and the DNS record that publishes it.
#[derive(Debug, Clone)]
pub struct DkimKey {
    pub selector: String,
    pub algorithm: &'static str,
    /// What lettre takes: PKCS#1 PEM (RSA) or the base64 32-byte secret (Ed25519).
    pub private: String,
    pub txt: String,
}

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn rsa_key() -> DkimKey {
    let private = openssl(&["genrsa", "-traditional", "2048"], None);
    let public = openssl(&["rsa", "-pubout", "-outform", "DER"], Some(&private));
    DkimKey {
        selector: "rsa2026".into(),
        algorithm: "rsa",
        private: String::from_utf8(private).expect("PEM"),
        txt: format!("v=DKIM1; k=rsa; p={}", b64(&public)),
    }
}

pub fn ed25519_key() -> DkimKey {
    let pem = openssl(&["genpkey", "-algorithm", "ed25519"], None);
    let der = openssl(&["pkey", "-outform", "DER"], Some(&pem));
    let public = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&pem));
    DkimKey {
        selector: "ed2026".into(),
        algorithm: "ed25519",
        private: b64(&der[der.len() - 32..]),
        txt: format!(
            "v=DKIM1; k=ed25519; p={}",
            b64(&public[public.len() - 32..])
        ),
    }
}

fn composer() -> Composer {
    let config: tocsin_renderer::Config =
        ConfigLoader::defaults_only(Some(tocsin_renderer::config::DEFAULTS))
            .load()
            .expect("renderer defaults");
    Composer::new(&config.renderer)
}

fn template(channel: Channel) -> TemplateVersion {
    let content = match channel {
        Channel::Email => Content::Email {
            subject: "Invitation for {{first_name}}".into(),
            html: "<html><body><p>Bonjour {{first_name}},</p><p>Rendez-vous samedi à \
                   {{attributes.commune}}.</p><p><a href=\"https://exemple.fr/agenda\">\
                   L'agenda</a></p></body></html>"
                .into(),
            text: None,
        },
        Channel::Sms => Content::Sms {
            body: "{{first_name}}, rdv samedi 10h a {{attributes.commune}}".into(),
        },
    };
    TemplateVersion {
        id: "invitation".into(),
        version: 1,
        draft: TemplateDraft {
            channel,
            variants: BTreeMap::from([("fr".to_owned(), content)]),
            default_locale: "fr".into(),
        },
        created_by: "test".into(),
        created_ms: 0,
    }
}

/// `n` e-mails or SMS rendered by the real renderer, to `run`-tagged recipients.
pub fn rendered(run: &str, channel: v1::Channel, n: usize, expires_in_s: i64) -> Vec<Message> {
    rendered_with(run, channel, n, expires_in_s, |_| {})
}

/// [`rendered`], each job changed by `edit` first (a sequence step's, say).
pub fn rendered_with(
    run: &str,
    channel: v1::Channel,
    n: usize,
    expires_in_s: i64,
    edit: impl Fn(&mut v1::SendJob),
) -> Vec<Message> {
    let composer = composer();
    let t = template(if channel == v1::Channel::Sms {
        Channel::Sms
    } else {
        Channel::Email
    });
    let now = tocsin_contracts::timestamp_now();
    (0..n)
        .map(|i| {
            let contact = v1::Contact {
                id: format!("{run}-{i:05}"),
                email: format!("{run}-{i:05}@exemple.fr"),
                phone_e164: format!("+336{:08}", i),
                first_name: format!("Camille{i}"),
                locale: "fr".into(),
                time_zone: "Europe/Paris".into(),
                attributes: HashMap::from([("commune".to_owned(), "Lyon".to_owned())]),
                ..Default::default()
            };
            let suffix = if channel == v1::Channel::Sms {
                "sms"
            } else {
                "email"
            };
            let mut job = v1::SendJob {
                idempotency_key: format!("cmp-{run}:{}:{suffix}", contact.id),
                campaign_id: format!("cmp-{run}"),
                channel: channel.into(),
                template_id: t.id.clone(),
                template_version: 1,
                contact: Some(contact),
                expires_at: Some(tocsin_contracts::Timestamp {
                    seconds: now.seconds + expires_in_s,
                    nanos: 0,
                }),
                ..Default::default()
            };
            edit(&mut job);
            composer.compose(&job, &t).expect("renders")
        })
        .collect()
}

/// Publishes rendered messages on their lane's outbound topics, as the renderer does.
pub async fn publish(producer: &Producer, topics: &tocsin_bus::Topics, messages: &[Message]) {
    let trace = TraceContext::new_root();
    let triggered =
        |origin: Option<&v1::Origin>| origin.is_some_and(|o| o.lane() == v1::Lane::Triggered);
    for chunk in messages.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|m| {
            let (topic, key, id, payload) = match m {
                Message::Email(e) => (
                    if triggered(e.origin.as_ref()) {
                        &topics.outbound_email_triggered.name
                    } else {
                        &topics.outbound_email.name
                    },
                    e.origin
                        .as_ref()
                        .map(|o| o.contact_id.clone())
                        .unwrap_or_default(),
                    e.meta
                        .as_ref()
                        .map(|m| m.event_id.clone())
                        .unwrap_or_default(),
                    tocsin_contracts::codec::to_protobuf(e),
                ),
                Message::Sms(s) => (
                    if triggered(s.origin.as_ref()) {
                        &topics.outbound_sms_triggered.name
                    } else {
                        &topics.outbound_sms.name
                    },
                    s.origin
                        .as_ref()
                        .map(|o| o.contact_id.clone())
                        .unwrap_or_default(),
                    s.meta
                        .as_ref()
                        .map(|m| m.event_id.clone())
                        .unwrap_or_default(),
                    tocsin_contracts::codec::to_protobuf(s),
                ),
            };
            let trace = &trace;
            async move {
                producer
                    .send(tocsin_bus::Outbound {
                        topic,
                        key: key.as_bytes(),
                        payload: &payload,
                        content_type: tocsin_contracts::codec::CONTENT_TYPE_PROTOBUF,
                        event_id: &id,
                        trace,
                    })
                    .await
            }
        }))
        .await
        .expect("publish rendered messages");
    }
}

/// The feedback events per idempotency key; an event delivered twice (same event id:
/// at-least-once) counts once.
pub fn by_key(records: &[stack::Record<v1::Feedback>]) -> HashMap<String, Vec<v1::Feedback>> {
    let mut map: HashMap<String, Vec<v1::Feedback>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in records {
        let id = r
            .event
            .meta
            .as_ref()
            .map(|m| m.event_id.clone())
            .unwrap_or_default();
        if !seen.insert(id) {
            continue;
        }
        map.entry(r.event.idempotency_key.clone())
            .or_default()
            .push(r.event.clone());
    }
    map
}

/// `TOCSIN__SENDER__PROVIDERS__<NAME>__...` for an HTTP provider of the stand-in at
/// `base`: `kind` is `twilio`, `brevo`, `sendgrid` or `webhook`.
pub fn http_provider(
    name: &str,
    kind: &str,
    channel: &str,
    base: &str,
    rate: Option<f64>,
) -> Vec<(String, String)> {
    use tocsin_standins::*;
    let p = |field: &str| {
        format!(
            "TOCSIN__SENDER__PROVIDERS__{}__{field}",
            name.to_ascii_uppercase()
        )
    };
    let mut vars = vec![
        (p("CHANNEL"), channel.to_owned()),
        (p("API__KIND"), kind.to_owned()),
        (p("API__BASE_URL"), base.to_owned()),
        (p("API__TIMEOUT_MS"), "2000".to_owned()),
    ];
    match kind {
        "twilio" => vars.extend([
            (p("API__ACCOUNT_SID"), DEFAULT_TWILIO_ACCOUNT_SID.to_owned()),
            (p("API__AUTH_TOKEN"), DEFAULT_TWILIO_AUTH_TOKEN.to_owned()),
            (
                p("API__STATUS_CALLBACK"),
                "http://127.0.0.1:9/webhooks/twilio/status".to_owned(),
            ),
        ]),
        "brevo" => vars.push((p("API__API_KEY"), DEFAULT_BREVO_API_KEY.to_owned())),
        "sendgrid" => vars.push((p("API__API_KEY"), DEFAULT_SENDGRID_API_KEY.to_owned())),
        _ => {}
    }
    if let Some(rate) = rate {
        vars.push((p("RATE"), format!("{{per_second = {rate}, burst = 1}}")));
    }
    vars
}

/// A stand-in server for one test, and its read-back API.
pub struct StandIn(tocsin_standins::client::Running);

impl StandIn {
    pub async fn start(config: tocsin_standins::Config) -> Self {
        StandIn(
            tocsin_standins::client::Running::start(config)
                .await
                .expect("stand-in starts"),
        )
    }

    pub fn base(&self) -> &str {
        &self.0.base
    }

    pub async fn messages(&self, api: tocsin_standins::Provider) -> Vec<tocsin_standins::Recorded> {
        self.0.messages(api).await.expect("messages")
    }

    pub async fn stats(&self, api: tocsin_standins::Provider) -> tocsin_standins::ProviderStats {
        self.0.stats(api).await.expect("stats")
    }
}

/// The most units inside any window of `window_ms` starting at an arrival.
pub fn max_in_window(arrivals_ms: &[(i64, u32)], window_ms: i64) -> u32 {
    let mut sorted = arrivals_ms.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    for (i, (start, _)) in sorted.iter().enumerate() {
        let sum: u32 = sorted[i..]
            .iter()
            .take_while(|(t, _)| *t < start + window_ms)
            .map(|(_, c)| c)
            .sum();
        best = best.max(sum);
    }
    best
}
