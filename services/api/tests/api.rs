//! The control API as a client sees it, served by `tocsin_api::run` on the real stack.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tocsin_api::Config;
use tocsin_contracts::v1;
use tocsin_integration_tests::stack;
use tocsin_planner::store::{self, Membership};
use tocsin_runtime::ConfigLoader;
use tocsin_runtime::shutdown::CancellationToken;

const READER: &str = "local-reader-token";
const OPERATOR: &str = "local-operator-token";
/// Shared by the template preview, test send and delete tests (and the template store's):
/// they run at the same time on it, so nothing flushes it and every id they make is unique.
const SHARED_DB: u8 = 14;
/// The sequence tests' own (the stack runs 32 databases).
const SEQUENCES_DB: u8 = 19;
const SEQUENCE_FILES_DB: u8 = 20;

struct Api {
    base: String,
    http: reqwest::Client,
    config: Config,
    stop: CancellationToken,
}

impl Api {
    /// An API on a database of the test's own, emptied first.
    async fn start(test: &str, db: u8) -> Api {
        Self::launch(test, db, true).await
    }

    /// An API on [`SHARED_DB`], not emptied.
    async fn start_shared(test: &str) -> Api {
        Self::launch(test, SHARED_DB, false).await
    }

    async fn launch(test: &str, db: u8, flush: bool) -> Api {
        Self::launch_with(test, db, flush, &[]).await
    }

    /// With more `TOCSIN__*` variables.
    async fn launch_with(test: &str, db: u8, flush: bool, extra: &[(&str, String)]) -> Api {
        let port = stack::free_port();
        let mut env = stack::service_env(test, 1, db);
        env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        for (k, v) in extra {
            env.push(((*k).to_owned(), v.clone()));
        }
        let config: Config = ConfigLoader::defaults_only(Some(tocsin_api::config::DEFAULTS))
            .env(env)
            .load()
            .expect("api configuration");
        if flush {
            stack::flush_redis(&config.redis.url).await;
        }
        let stop = CancellationToken::new();
        let wait = stop.clone();
        tokio::spawn(tocsin_api::run(config.clone(), async move {
            wait.cancelled().await
        }));
        let api = Api {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            config,
            stop,
        };
        for _ in 0..100 {
            if api.http.get(api.url("/healthz")).send().await.is_ok() {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("api did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    async fn template(&self, id: &str, channel: &str) -> Value {
        let variants = if channel == "sms" {
            json!({"fr": {"body": "{{default first_name \"Bonjour\"}}, rdv samedi. STOP au 36111"}})
        } else {
            json!({"fr": {"subject": "Bonjour {{first_name}}", "html": "<p>Bonjour {{first_name}}</p>"}})
        };
        self.upload(id, channel, variants).await
    }

    /// Uploads a template with these French variants; it must be accepted.
    async fn upload(&self, id: &str, channel: &str, variants: Value) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/templates/{id}"),
                Some(OPERATOR),
                Some(json!({"channel": channel, "variants": variants, "defaultLocale": "fr"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn redis(&self) -> redis::aio::ConnectionManager {
        let client = redis::Client::open(self.config.redis.url.as_str()).expect("url");
        redis::aio::ConnectionManager::new(client)
            .await
            .expect("redis")
    }

    /// Puts contacts in a segment through the planner's own store (as ingestion does).
    async fn seed(&self, segment: &str, contacts: &[v1::Contact]) {
        let mut conn = self.redis().await;
        for c in contacts {
            store::apply_membership(&mut conn, &c.id, Membership::Enter(segment), Some(c), false)
                .await
                .expect("seed");
        }
    }
}

fn person(i: usize, email: &str, consents: &[v1::Channel]) -> v1::Contact {
    v1::Contact {
        id: format!("c-{i:03}"),
        email: email.to_owned(),
        phone_e164: format!("+3361{i:07}"),
        locale: "fr".into(),
        time_zone: "Europe/Paris".into(),
        consents: consents
            .iter()
            .map(|c| v1::Consent {
                channel: (*c).into(),
                status: v1::ConsentStatus::Granted.into(),
                source: "form".into(),
                recorded_at: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn blast(segment: &str) -> Value {
    json!({
        "name": "Meeting Lyon",
        "segment": segment,
        "channel": "email",
        "template": "rappel-meeting",
        "startAt": "now",
        "senderProfile": "parti-exemple",
        "quietHours": { "disabled": true }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_no_access_and_roles_are_enforced() {
    let api = Api::start("api-auth", 6).await;
    let (status, body) = api
        .call(reqwest::Method::GET, "/v1/campaigns", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "missing or malformed bearer token");
    let (status, _) = api.get("/v1/campaigns", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.get("/v1/campaigns", READER).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.post("/v1/campaigns", READER, blast("x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        "this token's role may not schedule campaigns"
    );
    let (status, _) = api
        .post("/v1/campaigns/any/cancel", READER, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Health, readiness and metrics need no token; the OpenAPI document neither.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _) = api.call(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_the_problem() {
    let api = Api::start("api-validation", 7).await;
    api.seed(
        "militants",
        &[person(1, "a@exemple.fr", &[v1::Channel::Email])],
    )
    .await;
    api.template("rappel-meeting", "email").await;
    api.template("sms-only", "sms").await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"startAt": "demain"}), "startAt", "RFC 3339"),
        (
            json!({"startAt": "2020-01-01T10:00:00+01:00"}),
            "startAt",
            "is in the past",
        ),
        (
            json!({"segment": "inconnu"}),
            "segment",
            "unknown segment \"inconnu\"",
        ),
        (
            json!({"segment": "with space"}),
            "segment",
            "letters, digits",
        ),
        (
            json!({"channel": "fax"}),
            "channel",
            "unknown variant `fax`",
        ),
        (
            json!({"timeZone": "Europe/Lyon"}),
            "timeZone",
            "not an IANA time zone",
        ),
        (json!({"expiry": "2w"}), "expiry", "not a duration"),
        (
            json!({"maxSmsParts": 2}),
            "maxSmsParts",
            "SMS campaigns only",
        ),
        (
            json!({"quietHours": {"windows": [{"days": [1], "start": "8h", "end": "20:00"}]}}),
            "quietHours.windows[0].start",
            "HH:MM",
        ),
        (
            json!({"quietHours": {"windows": [{"days": [9], "start": "08:00", "end": "20:00"}]}}),
            "quietHours",
            "isoWeekday",
        ),
        (
            json!({"quietHours": {"windows": [{"days": [1], "start": "21:00", "end": "20:00"}]}}),
            "quietHours",
            "before endMinute",
        ),
        (json!({"bogus": 1}), "bogus", "unknown field `bogus`"),
        (
            json!({"template": "inconnu"}),
            "template",
            "unknown template \"inconnu\"",
        ),
        (
            json!({"template": "sms-only"}),
            "template",
            "is not for this channel",
        ),
        (
            json!({"templateVersion": 7}),
            "templateVersion",
            "has no version 7",
        ),
    ];
    for (patch, field, message) in cases {
        let mut body = blast("militants");
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, answer) = api.post("/v1/campaigns", OPERATOR, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{patch}: {answer}"
        );
        assert_eq!(answer["field"], field, "{patch}: {answer}");
        let text = answer["error"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{patch}: {text}");
    }
    let mut missing = blast("militants");
    missing.as_object_mut().expect("object").remove("segment");
    let (status, answer) = api.post("/v1/campaigns", OPERATOR, missing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("missing field `segment`"),
        "{answer}"
    );
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_are_scheduled_read_paused_resumed_and_cancelled() {
    let api = Api::start("api-lifecycle", 8).await;
    api.seed(
        "militants",
        &[person(1, "a@exemple.fr", &[v1::Channel::Email])],
    )
    .await;
    api.template("rappel-meeting", "email").await;
    // A second version: the campaign pins the latest at scheduling.
    assert_eq!(api.template("rappel-meeting", "email").await["version"], 2);
    let mut request = blast("militants");
    request["id"] = json!("cmp-lyon");
    let (status, created) = api.post("/v1/campaigns", OPERATOR, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "cmp-lyon");
    assert_eq!(created["state"], "scheduled");
    assert_eq!(created["requestedBy"], "local-operator");
    assert_eq!(created["templateVersion"], 2);
    let (status, again) = api.post("/v1/campaigns", OPERATOR, request).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let (status, listed) = api.get("/v1/campaigns", READER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["id"], "cmp-lyon");
    let (_, one) = api.get("/v1/campaigns/cmp-lyon", READER).await;
    assert_eq!(one["segment"], "militants");
    assert_eq!(one["counters"]["planned"], 0);

    let step = async |verb: &str| {
        api.post(
            &format!("/v1/campaigns/cmp-lyon/{verb}"),
            OPERATOR,
            json!({}),
        )
        .await
    };
    assert_eq!(step("pause").await.1["state"], "paused");
    assert_eq!(
        step("pause").await.0,
        StatusCode::OK,
        "pausing twice is harmless"
    );
    assert_eq!(step("resume").await.1["state"], "scheduled");
    assert_eq!(step("cancel").await.1["state"], "cancelled");
    assert_eq!(
        step("cancel").await.0,
        StatusCode::OK,
        "cancelling twice is harmless"
    );
    let (status, refused) = step("resume").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"], "cannot resume a cancelled campaign");
    let (status, _) = api
        .post("/v1/campaigns/nope/pause", OPERATOR, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The commands are on the bus for the planner, in order.
    let commands = stack::TopicReader::new(&api.config.kafka.topics.campaigns.name)
        .read_until::<v1::CampaignCommand>(Duration::from_secs(30), |r| r.len() >= 6)
        .await;
    let kinds: Vec<&str> = commands
        .iter()
        .map(|c| match &c.event.command {
            Some(v1::campaign_command::Command::Schedule(_)) => "schedule",
            Some(v1::campaign_command::Command::Pause(_)) => "pause",
            Some(v1::campaign_command::Command::Resume(_)) => "resume",
            Some(v1::campaign_command::Command::Cancel(_)) => "cancel",
            Some(v1::campaign_command::Command::DefineSequence(_)) => "define-sequence",
            Some(v1::campaign_command::Command::RetireSequence(_)) => "retire-sequence",
            None => "none",
        })
        .collect();
    assert_eq!(
        kinds,
        ["schedule", "pause", "pause", "resume", "cancel", "cancel"]
    );
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_segments_report_without_sending() {
    let api = Api::start("api-dry-run", 9).await;
    let contacts = vec![
        person(1, "a@exemple.fr", &[v1::Channel::Email]),
        person(2, "b@exemple.fr", &[v1::Channel::Email]),
        person(3, "b@exemple.fr", &[v1::Channel::Email]),
        person(4, "not-an-email", &[v1::Channel::Email]),
        person(5, "e@exemple.fr", &[v1::Channel::Sms]),
    ];
    api.seed("militants", &contacts).await;
    api.template("rappel-meeting", "email").await;
    let (status, dry) = api
        .post("/v1/campaigns/dry-run", READER, blast("militants"))
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        dry,
        json!({
            "audience": 5,
            "eligible": 2,
            "waitingForQuietHours": 0,
            "suppressed": {"already_planned": 1, "invalid_address": 1, "no_consent": 1}
        })
    );
    let (_, listed) = api.get("/v1/campaigns", READER).await;
    assert_eq!(listed, json!([]), "a dry run records nothing");

    let (_, segments) = api.get("/v1/segments", READER).await;
    assert_eq!(segments, json!([{"id": "militants", "size": 5}]));
    let (status, detail) = api.get("/v1/segments/militants?sample=2", READER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["size"], 5);
    assert_eq!(detail["sample"][0]["contactId"], "c-001");
    assert_eq!(detail["sample"][0]["email"], "a•••@exemple.fr");
    assert_eq!(detail["sample"][0]["phone"], "+3361•••••01");
    assert!(
        !detail.to_string().contains("a@exemple.fr"),
        "raw address in {detail}"
    );
    let (status, _) = api.get("/v1/segments/inconnu", READER).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, bad) = api.get("/v1/segments/militants?sample=500", READER).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["field"], "sample");
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_validated_at_upload_and_versioned() {
    let api = Api::start("api-templates", 11).await;
    let put = async |id: &str, body: Value| {
        api.call(
            reqwest::Method::PUT,
            &format!("/v1/templates/{id}"),
            Some(OPERATOR),
            Some(body),
        )
        .await
    };
    let (status, bad) = put(
        "broken",
        json!({"channel": "sms", "defaultLocale": "fr",
               "variants": {"fr": {"body": "Bonjour\n{{#if first_name}}\n{{first_name}"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["field"], "variants.fr.body");
    let message = bad["error"].as_str().unwrap_or_default();
    assert!(message.contains("line 3, column"), "{message}");
    assert!(message.contains("near `{{first_name}`"), "{message}");

    let (status, bad) = put(
        "helpers",
        json!({"channel": "sms", "defaultLocale": "fr", "variants": {"fr": {"body": "{{shout first_name}}"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown helper `shout`"),
        "{bad}"
    );

    let (status, ok) = put(
        "bienvenue",
        json!({"channel": "email", "defaultLocale": "fr",
               "variants": {"fr": {"subject": "Bienvenue {{prenom}}", "html": "<p>Salut</p>"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ok}");
    assert_eq!(ok["version"], 1);
    assert!(
        ok["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("`prenom` is not in the contact schema")
    );
    let (status, strict) = put(
        "bienvenue",
        json!({"channel": "email", "defaultLocale": "fr", "strict": true,
               "variants": {"fr": {"subject": "Bienvenue {{prenom}}", "html": "<p>Salut</p>"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{strict}");

    let (_, list) = api.get("/v1/templates", READER).await;
    assert_eq!(
        list,
        json!([{"id": "bienvenue", "latestVersion": 1, "channel": "email"}])
    );
    let (status, v1) = api.get("/v1/templates/bienvenue?version=1", READER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v1["template"]["variants"]["fr"]["subject"],
        "Bienvenue {{prenom}}"
    );
    let (status, _) = api.get("/v1/templates/bienvenue?version=9", READER).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.stop.cancel();
}

/// The e-mail most template tests preview: every contact field it reads has no fallback.
fn greeting() -> Value {
    json!({"fr": {
        "subject": "Bonjour {{first_name}}",
        "html": "<p>Bonjour {{first_name}} {{last_name}}, rendez-vous à {{attributes.commune}}.</p>",
    }})
}

/// A contact stored as the CRM's segment events store it, with an id of its own.
fn stored_contact(first_name: &str, commune: &str) -> v1::Contact {
    let id = stack::unique("c");
    v1::Contact {
        email: format!("{id}@exemple.fr"),
        phone_e164: "+33698765432".into(),
        first_name: first_name.into(),
        last_name: "Durand".into(),
        locale: "fr".into(),
        time_zone: "Europe/Paris".into(),
        attributes: [("commune".to_owned(), commune.to_owned())].into(),
        id,
        ..Default::default()
    }
}

fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_render_for_the_sample_a_stored_and_an_inline_contact() {
    let api = Api::start_shared("api-preview").await;
    let id = stack::unique("bienvenue");
    let path = format!("/v1/templates/{id}/preview");
    api.upload(&id, "email", greeting()).await;

    // No body at all: the latest version for the sample contact.
    let (status, sample) = api
        .call(reqwest::Method::POST, &path, Some(READER), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{sample}");
    assert_eq!(sample["templateId"], id.as_str());
    assert_eq!(sample["version"], 1);
    assert_eq!(sample["channel"], "email");
    assert_eq!(sample["contactId"], "sample");
    assert_eq!(sample["sms"], Value::Null);
    let email = &sample["email"];
    assert_eq!(email["to"], "camille.martin@example.org");
    assert_eq!(email["from"], "Tocsin Local <campagnes@tocsin.localhost>");
    assert_eq!(email["replyTo"], "contact@tocsin.localhost");
    assert_eq!(email["subject"], "Bonjour Camille");
    assert!(
        text_of(&email["html"]).contains("Bonjour Camille Martin, rendez-vous à Lyon."),
        "{email}"
    );
    assert!(
        text_of(&email["text"]).contains("Bonjour Camille Martin, rendez-vous à Lyon."),
        "{email}"
    );
    assert!(
        text_of(&email["messageId"]).ends_with("@tocsin.localhost>"),
        "{email}"
    );
    let headers: Vec<&str> = email["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| text_of(&h["name"]))
        .collect();
    assert!(headers.contains(&"List-Unsubscribe"), "{headers:?}");

    // A contact the planner stores.
    let lea = stored_contact("Léa", "Villeurbanne");
    api.seed(&stack::unique("seg"), std::slice::from_ref(&lea))
        .await;
    let (status, stored) = api.post(&path, READER, json!({"contactId": lea.id})).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["contactId"], lea.id.as_str());
    assert_eq!(stored["email"]["to"], lea.email.as_str());
    assert_eq!(stored["email"]["subject"], "Bonjour Léa");
    assert!(text_of(&stored["email"]["html"]).contains("Léa Durand, rendez-vous à Villeurbanne"));

    // A contact given in the request.
    let (status, inline) = api
        .post(
            &path,
            READER,
            json!({"contact": {"firstName": "Noé", "lastName": "Petit", "email": "noe@exemple.fr",
                               "attributes": {"commune": "Vénissieux"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{inline}");
    assert_eq!(inline["contactId"], "inline");
    assert_eq!(inline["email"]["to"], "noe@exemple.fr");
    assert!(text_of(&inline["email"]["html"]).contains("Noé Petit, rendez-vous à Vénissieux"));

    // Versions: the latest by default, any other on request.
    api.upload(
        &id,
        "email",
        json!({"fr": {"subject": "Rappel {{first_name}}", "html": "<p>Rappel</p>"}}),
    )
    .await;
    let (_, latest) = api.post(&path, READER, json!({})).await;
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["email"]["subject"], "Rappel Camille");
    let (_, first) = api.post(&path, READER, json!({"version": 1})).await;
    assert_eq!(first["email"]["subject"], "Bonjour Camille");

    // What is refused before rendering.
    let cases: Vec<(Value, StatusCode, Option<&str>, &str)> = vec![
        (
            json!({"contactId": lea.id, "contact": {"firstName": "Noé"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("contact"),
            "not both",
        ),
        (
            json!({"contactId": "nobody"}),
            StatusCode::NOT_FOUND,
            None,
            "no contact \"nobody\"",
        ),
        (
            json!({"contact": {"email": "pas-une-adresse"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("contact.email"),
            "exactly one '@'",
        ),
        (
            json!({"contact": {"timeZone": "Europe/Lyon"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("contact.timeZone"),
            "not an IANA time zone",
        ),
        (
            json!({"bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("bogus"),
            "unknown field `bogus`",
        ),
        (
            json!({"version": 9}),
            StatusCode::NOT_FOUND,
            None,
            "has no version 9",
        ),
    ];
    for (body, expected, field, message) in cases {
        let (status, answer) = api.post(&path, READER, body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
        assert!(
            text_of(&answer["error"]).contains(message),
            "{body}: {answer}"
        );
    }
    let (status, answer) = api
        .post("/v1/templates/inconnu/preview", READER, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"], "no template \"inconnu\"");
    let (status, _) = api
        .call(reqwest::Method::POST, &path, None, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_renderer_would_refuse_is_a_422_in_its_words_and_class() {
    let api = Api::start_shared("api-preview-refusals").await;
    let email = stack::unique("greeting");
    api.upload(&email, "email", greeting()).await;
    let preview = async |id: &str, body: Value| {
        let (status, answer) = api
            .post(&format!("/v1/templates/{id}/preview"), READER, body)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        answer
    };

    // The inline contact has no last name, and the template gives no fallback.
    let missing = preview(
        &email,
        json!({"contact": {"firstName": "Noé", "email": "noe@exemple.fr", "attributes": {"commune": "Bron"}}}),
    )
    .await;
    assert_eq!(missing["class"], "missing_field", "{missing}");
    assert!(
        text_of(&missing["error"]).contains("the contact has no `last_name`"),
        "{missing}"
    );
    let attribute = preview(
        &email,
        json!({"contact": {"firstName": "Noé", "lastName": "Petit", "email": "noe@exemple.fr"}}),
    )
    .await;
    assert_eq!(attribute["class"], "missing_field");
    assert!(
        text_of(&attribute["error"]).contains("attributes.commune"),
        "{attribute}"
    );

    let profile = preview(&email, json!({"senderProfile": "parti-inconnu"})).await;
    assert_eq!(profile["class"], "unknown_sender_profile");
    assert!(
        text_of(&profile["error"]).contains("[renderer.sender_profiles.parti-inconnu]"),
        "{profile}"
    );

    let nobody = preview(
        &email,
        json!({"contact": {"firstName": "Noé", "lastName": "Petit", "attributes": {"commune": "Bron"}}}),
    )
    .await;
    assert_eq!(nobody["class"], "no_address");
    assert_eq!(nobody["error"], "the contact has no e-mail address");

    // Four GSM-7 parts' worth of text; a campaign allows 3 unless it says otherwise.
    let sms = stack::unique("long");
    api.upload(&sms, "sms", json!({"fr": {"body": "x".repeat(500)}}))
        .await;
    let long = preview(&sms, json!({})).await;
    assert_eq!(long["class"], "too_long");
    assert_eq!(
        long["error"],
        "the SMS needs 4 parts (GSM-7) and the campaign allows 3"
    );
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_previews_report_the_exact_encoding_and_parts() {
    let api = Api::start_shared("api-preview-sms").await;
    let cases = [
        // With the sender's name and the STOP mention: 71 septets.
        (
            "Bonjour {{first_name}}, RDV samedi 10h place Bellecour.".to_owned(),
            "GSM-7",
            1,
        ),
        // 202 septets: past 160, parts hold 153.
        ("x".repeat(180), "GSM-7", 2),
        // ô is not in GSM-7: the whole message is UCS-2, 70 units alone, 67 a part.
        (
            "Rendez-vous au Rhône, {{first_name}} !".to_owned(),
            "UCS-2",
            1,
        ),
        // 82 UTF-16 units (the bell takes two).
        (
            "À bientôt {{first_name}} ! {{attributes.commune}}. 🔔 y".repeat(2),
            "UCS-2",
            2,
        ),
    ];
    for (body, encoding, parts) in cases {
        let id = stack::unique("sms");
        api.upload(&id, "sms", json!({"fr": {"body": body}})).await;
        let (status, preview) = api
            .post(&format!("/v1/templates/{id}/preview"), READER, json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}: {preview}");
        assert_eq!(preview["email"], Value::Null);
        let sms = &preview["sms"];
        assert_eq!(sms["to"], "+33612345678");
        assert_eq!(sms["from"], "Tocsin");
        let text = text_of(&sms["body"]);
        assert!(text.starts_with("Tocsin: "), "{text}");
        assert!(text.ends_with(" STOP au 36111"), "{text}");
        assert_eq!(sms["encoding"], encoding, "{text}");
        assert_eq!(sms["parts"], parts, "{text}");
        // What the renderer's own count says of the body as sent.
        let layout = tocsin_renderer::sms::layout(text);
        assert_eq!(sms["parts"], layout.parts, "{text}");
    }
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_data_never_reaches_the_html_unescaped() {
    let api = Api::start_shared("api-preview-escaping").await;
    let id = stack::unique("escape");
    api.upload(&id, "email", greeting()).await;
    let mut hostile = stored_contact(
        "<script>alert('stored')</script>",
        "<img src=x onerror=alert(1)>",
    );
    hostile.last_name = "</p><script src=//evil.example/x.js></script>".into();
    api.seed(&stack::unique("seg"), std::slice::from_ref(&hostile))
        .await;
    let bodies = [
        json!({"contactId": hostile.id}),
        json!({"contact": {"firstName": "<script>alert('inline')</script>", "lastName": "<b>Petit</b>",
                           "email": "noe@exemple.fr", "attributes": {"commune": "<script>x</script>"}}}),
    ];
    for body in bodies {
        let (status, preview) = api
            .post(&format!("/v1/templates/{id}/preview"), READER, body.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}: {preview}");
        let html = text_of(&preview["email"]["html"]);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;script"), "{html}");
        // The subject and the text part are plain text, sent and shown as text: they carry
        // the data as written (escaping them would show `&lt;` to the recipient).
        assert!(
            text_of(&preview["email"]["subject"]).starts_with("Bonjour <script>"),
            "{preview}"
        );
    }
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_send_publishes_exactly_one_job_to_the_given_address() {
    let api = Api::start_shared("api-test-send").await;
    let id = stack::unique("rappel");
    let path = format!("/v1/templates/{id}/test-send");
    api.upload(&id, "email", greeting()).await;
    api.upload(
        &id,
        "email",
        json!({"fr": {"subject": "Rappel", "html": "<p>{{attributes.bureau_de_vote}}</p>"}}),
    )
    .await;

    // Refused before anything is published.
    let (status, answer) = api
        .post(&path, READER, json!({"to": "moi@exemple.fr"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(
        answer["error"],
        "this token's role may not send test messages"
    );
    let (status, answer) = api
        .post(&path, OPERATOR, json!({"to": "+33612345678", "version": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "to");
    assert!(
        text_of(&answer["error"]).contains("this is an e-mail template"),
        "{answer}"
    );
    let (status, answer) = api.post(&path, OPERATOR, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        text_of(&answer["error"]).contains("missing field `to`"),
        "{answer}"
    );
    // Version 2 reads a field the sample contact does not have: refused as a preview is.
    let (status, answer) = api
        .post(&path, OPERATOR, json!({"to": "moi@exemple.fr"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["class"], "missing_field");
    assert!(
        text_of(&answer["error"]).contains("attributes.bureau_de_vote"),
        "{answer}"
    );
    let (status, _) = api
        .post(
            &path,
            OPERATOR,
            json!({"to": "moi@exemple.fr", "version": 1, "contactId": "nobody"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, sent) = api
        .post(
            &path,
            OPERATOR,
            json!({"to": "Moi@Exemple.FR", "version": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["channel"], "email");
    let campaign = text_of(&sent["campaignId"]).to_owned();
    let run = campaign.strip_prefix("test-").expect("test- campaign id");
    assert_eq!(run.len(), 32, "{campaign}");
    assert_eq!(sent["idempotencyKey"], format!("test:{run}:email"));

    let reader = stack::TopicReader::new(&api.config.kafka.topics.jobs_triggered.name);
    let mut jobs = reader
        .read_until::<v1::SendJob>(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    jobs.extend(reader.read_for::<v1::SendJob>(Duration::from_secs(2)).await);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let record = &jobs[0];
    let job = &record.event;
    assert_eq!(
        record.key.as_deref(),
        Some("test:sample".as_bytes()),
        "a test message is about a test contact, never a real one"
    );
    assert_eq!(job.campaign_id, campaign);
    assert_eq!(job.idempotency_key, format!("test:{run}:email"));
    assert_eq!(job.channel(), v1::Channel::Email);
    assert_eq!(job.lane(), v1::Lane::Triggered);
    assert_eq!(job.template_id, id);
    assert_eq!(job.template_version, 1, "the version asked for, pinned");
    let contact = job.contact.as_ref().expect("contact");
    assert_eq!(
        contact.email, "Moi@exemple.fr",
        "the address given, domain lower-cased"
    );
    assert_eq!(contact.first_name, "Camille", "the sample contact's data");
    let meta = job.meta.as_ref().expect("meta");
    assert_eq!(meta.event_id, format!("job:test:{run}:email"));
    assert_eq!(meta.source, "api");
    let (not_before, expires) = (
        job.not_before.as_ref().expect("not before").seconds,
        job.expires_at.as_ref().expect("expiry").seconds,
    );
    assert_eq!(expires - not_before, 3600);
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_test_send_uses_a_stored_contacts_data_and_the_given_number() {
    let api = Api::start_shared("api-test-send-sms").await;
    let id = stack::unique("rappel-sms");
    api.upload(
        &id,
        "sms",
        json!({"fr": {"body": "{{first_name}}, RDV à {{attributes.commune}} samedi."}}),
    )
    .await;
    let lea = stored_contact("Léa", "Villeurbanne");
    api.seed(&stack::unique("seg"), std::slice::from_ref(&lea))
        .await;
    let path = format!("/v1/templates/{id}/test-send");
    let (status, answer) = api
        .post(&path, OPERATOR, json!({"to": "moi@exemple.fr"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        text_of(&answer["error"]).contains("this is an SMS template"),
        "{answer}"
    );
    let (status, sent) = api
        .post(
            &path,
            OPERATOR,
            json!({"to": "+33 7 00 00 00 01", "contactId": lea.id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["channel"], "sms");
    let jobs = stack::TopicReader::new(&api.config.kafka.topics.jobs_triggered.name)
        .read_until::<v1::SendJob>(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    let record = &jobs[0];
    let test_id = format!("test:{}", lea.id);
    assert_eq!(
        record.key.as_deref(),
        Some(test_id.as_bytes()),
        "a test message is never about the real contact (its unsubscribe link included)"
    );
    let job = &record.event;
    assert_eq!(job.idempotency_key, text_of(&sent["idempotencyKey"]));
    assert_eq!(job.channel(), v1::Channel::Sms);
    assert_eq!(job.lane(), v1::Lane::Triggered);
    assert_eq!(job.template_version, 1);
    let contact = job.contact.as_ref().expect("contact");
    assert_eq!(contact.id, test_id);
    assert_eq!(contact.phone_e164, "+33700000001");
    assert_eq!(contact.first_name, "Léa");
    assert_eq!(contact.attributes["commune"], "Villeurbanne");
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_deleted_only_once_no_campaign_still_to_send_uses_it() {
    let api = Api::start_shared("api-template-delete").await;
    let id = stack::unique("adieu");
    let path = format!("/v1/templates/{id}");
    api.upload(&id, "email", greeting()).await;
    api.upload(&id, "email", greeting()).await;
    let segment = stack::unique("seg");
    api.seed(&segment, &[stored_contact("Léa", "Bron")]).await;
    let campaign = stack::unique("cmp");
    let mut request = blast(&segment);
    request["id"] = json!(campaign);
    request["template"] = json!(id);
    request["templateVersion"] = json!(1);
    let (status, created) = api.post("/v1/campaigns", OPERATOR, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let (status, _) = api.delete("/v1/templates/inconnu", OPERATOR).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = api.delete(&path, READER).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let step = async |verb: &str| {
        let (status, answer) = api
            .post(
                &format!("/v1/campaigns/{campaign}/{verb}"),
                OPERATOR,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{verb}: {answer}");
    };
    let refused = async || {
        let (status, answer) = api.delete(&path, OPERATOR).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        let expected = format!("used by campaigns still to send: {campaign} (cancel them");
        assert!(text_of(&answer["error"]).contains(&expected), "{answer}");
    };
    // Scheduled, then paused: still to send (at version 1, not the latest), so it stays.
    refused().await;
    step("pause").await;
    refused().await;

    step("cancel").await;
    let (status, body) = api.delete(&path, OPERATOR).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // Gone for the API: not shown, not listed, not previewed, not pinned again.
    let (status, _) = api.get(&path, READER).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get(&format!("{path}?version=1"), READER).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = api.get("/v1/templates", READER).await;
    assert!(
        !list
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["id"] == id.as_str()),
        "{list}"
    );
    let (status, _) = api
        .post(&format!("{path}/preview"), READER, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    request["id"] = json!(stack::unique("cmp"));
    let (status, refused) = api.post("/v1/campaigns", OPERATOR, request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["field"], "template");
    let (status, _) = api.delete(&path, OPERATOR).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted once");

    // Kept for the renderer: a job already on the bus still loads the version it pins.
    let mut conn = api.redis().await;
    let pinned = tocsin_templates::store::get(&mut conn, &id, Some(1))
        .await
        .expect("redis")
        .expect("version 1 kept");
    assert_eq!(pinned.version, 1);
    assert!(
        tocsin_templates::store::get(&mut conn, &id, None)
            .await
            .expect("redis")
            .is_none()
    );

    // Uploading the id again brings it back with the next version number.
    assert_eq!(api.upload(&id, "email", greeting()).await["version"], 3);
    let (status, shown) = api.get(&path, READER).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["version"], 3);
    api.stop.cancel();
}

/// The field a refused sequence definition names (a 422 is required).
async fn refused_field(api: &Api, body: Value) -> String {
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/sequences",
            Some(OPERATOR),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    body["field"].as_str().unwrap_or_default().to_owned()
}

fn welcome() -> Value {
    json!({
        "id": "welcome",
        "name": "Bienvenue",
        "trigger": "volunteers",
        "senderProfile": "default",
        "exit": {"onLeavingTrigger": true, "goalSegments": ["members"], "onUnsubscribe": true},
        "reEntry": {"afterDays": 90},
        "steps": [
            {"name": "welcome e-mail", "wait": "0s", "channel": "email", "template": "seq-welcome"},
            {"name": "SMS J+2", "wait": "2d", "at": "10:00", "channel": "sms", "template": "seq-sms",
             "skipIf": [{"clickedStep": 1}]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_validated_versioned_pinned_and_retired() {
    let api = Api::start("sequences", SEQUENCES_DB).await;
    assert_eq!(api.template("seq-welcome", "email").await["version"], 1);
    assert_eq!(api.template("seq-sms", "sms").await["version"], 1);

    // Refusals name the field.
    let mut bad = welcome();
    bad["steps"][1]["at"] = json!("25:00");
    assert_eq!(refused_field(&api, bad).await, "steps[1].at");
    let mut bad = welcome();
    bad["steps"][1]["skipIf"] = json!([{"clickedStep": 2}]);
    assert_eq!(refused_field(&api, bad).await, "steps[1].skipIf[0]");
    let mut bad = welcome();
    bad["steps"][1]["template"] = json!("seq-welcome");
    assert_eq!(refused_field(&api, bad).await, "steps[1].template");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/sequences",
            Some(READER),
            Some(welcome()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Version 1, templates pinned.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/sequences",
            Some(OPERATOR),
            Some(welcome()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["steps"][0]["templateVersion"], 1);
    assert_eq!(body["steps"][1]["at"], "10:00");
    assert_eq!(body["steps"][1]["waitSeconds"], 172_800);
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/sequences",
            Some(OPERATOR),
            Some(welcome()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The welcome template is edited; a new version of the sequence takes it, asking to
    // migrate running enrolments.
    assert_eq!(api.template("seq-welcome", "email").await["version"], 2);
    let mut edit = welcome();
    edit["migrate"] = json!(true);
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/v1/sequences/welcome",
            Some(OPERATOR),
            Some(edit),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["versions"], json!([1, 2]));
    assert_eq!(body["steps"][0]["templateVersion"], 2);
    let mut conn = redis::Client::open(api.config.redis.url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let floor: u32 = conn
        .hget("t:seq:welcome", "migrate_floor")
        .await
        .expect("floor");
    assert_eq!(floor, 2);
    let mut nobody = welcome();
    nobody["id"] = Value::Null;
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            "/v1/sequences/nobody",
            Some(OPERATOR),
            Some(nobody),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The planner's counters, as the funnel shows them.
    for (field, n) in [
        ("enrolled", 10),
        ("at.1", 1),
        ("at.2", 3),
        ("step.1.sent", 9),
        ("step.2.sent", 2),
        ("step.2.skipped", 2),
        ("step.1.fb.delivered", 8),
        ("step.1.fb.unique_clicks", 2),
        ("completed", 4),
        ("exited.goal", 1),
        ("exited.left_trigger", 1),
    ] {
        let _: () = conn.hset("t:seq:welcome:n", field, n).await.expect("hset");
    }
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/v1/sequences/welcome",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let funnel = &body["funnel"];
    assert_eq!(funnel["enrolled"], 10);
    assert_eq!(funnel["completed"], 4);
    assert_eq!(funnel["exited"], json!({"goal": 1, "left_trigger": 1}));
    assert_eq!(funnel["steps"][0]["waiting"], 1);
    assert_eq!(funnel["steps"][0]["delivered"], 8);
    assert_eq!(funnel["steps"][0]["clicked"], 2);
    assert_eq!(funnel["steps"][1]["waiting"], 3);
    assert_eq!(funnel["steps"][1]["skipped"], 2);
    let (_, list) = api
        .call(reqwest::Method::GET, "/v1/sequences", Some(READER), None)
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    // Retired: shown, and no new version.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/sequences/welcome/retire",
            Some(OPERATOR),
            Some(json!({"reason": "campagne terminée"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["retired"], "campagne terminée");
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            "/v1/sequences/welcome",
            Some(OPERATOR),
            Some(welcome()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The planner receives every command, keyed by the sequence, with its version.
    let commands = stack::TopicReader::new(&api.config.kafka.topics.campaigns.name)
        .read_until::<v1::CampaignCommand>(Duration::from_secs(30), |r| r.len() >= 3)
        .await;
    let seen: Vec<(String, String, u32)> = commands
        .iter()
        .map(|c| {
            let e = &c.event;
            assert_eq!(e.campaign_id, "");
            assert_eq!(c.key.as_deref(), Some(e.sequence_id.as_bytes()));
            match &e.command {
                Some(v1::campaign_command::Command::DefineSequence(d)) => {
                    ("define".to_owned(), e.sequence_id.clone(), d.version)
                }
                Some(v1::campaign_command::Command::RetireSequence(_)) => {
                    ("retire".to_owned(), e.sequence_id.clone(), 0)
                }
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("define".to_owned(), "welcome".to_owned(), 1),
            ("define".to_owned(), "welcome".to_owned(), 2),
            ("retire".to_owned(), "welcome".to_owned(), 0),
        ]
    );
    api.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequence_files_in_config_are_applied_once_their_templates_exist() {
    let dir = format!("{}/../../config/sequences", env!("CARGO_MANIFEST_DIR"));
    let files = [("TOCSIN__API__SEQUENCES_DIR", dir)];
    let api = Api::launch_with("seqfiles", SEQUENCE_FILES_DB, true, &files).await;
    // The file names templates not uploaded yet: nothing until they are.
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            "/v1/sequences/welcome",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.template("demo-invitation", "email").await;
    api.template("demo-rappel", "sms").await;
    let mut body = Value::Null;
    for _ in 0..200 {
        let (status, b) = api
            .call(
                reqwest::Method::GET,
                "/v1/sequences/welcome",
                Some(READER),
                None,
            )
            .await;
        if status == StatusCode::OK {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        body["version"], 1,
        "applied from config/sequences/welcome.toml"
    );
    assert_eq!(body["trigger"], "nouveaux-benevoles");
    assert_eq!(body["steps"].as_array().map(Vec::len), Some(3));
    api.stop.cancel();

    // Restarted with the same file: no new version.
    let again = Api::launch_with("seqfiles", SEQUENCE_FILES_DB, false, &files).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, body) = again
        .call(
            reqwest::Method::GET,
            "/v1/sequences/welcome",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(body["versions"], json!([1]), "{body}");
    again.stop.cancel();
}
