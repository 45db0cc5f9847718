//! The control API as a client sees it, served by `tocsin_api::run` on the real stack.

use std::time::Duration;

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

struct Api {
    base: String,
    http: reqwest::Client,
    config: Config,
    stop: CancellationToken,
}

impl Api {
    async fn start(test: &str, db: u8) -> Api {
        let port = stack::free_port();
        let mut env = stack::service_env(test, 1, db);
        env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        let config: Config = ConfigLoader::defaults_only(Some(tocsin_api::config::DEFAULTS))
            .env(env)
            .load()
            .expect("api configuration");
        stack::flush_redis(&config.redis.url).await;
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

    async fn template(&self, id: &str, channel: &str) -> Value {
        let variants = if channel == "sms" {
            json!({"fr": {"body": "{{default first_name \"Bonjour\"}}, rdv samedi. STOP au 36111"}})
        } else {
            json!({"fr": {"subject": "Bonjour {{first_name}}", "html": "<p>Bonjour {{first_name}}</p>"}})
        };
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

    /// Puts contacts in a segment through the planner's own store (as ingestion does).
    async fn seed(&self, segment: &str, contacts: &[v1::Contact]) {
        let client = redis::Client::open(self.config.redis.url.as_str()).expect("url");
        let mut conn = redis::aio::ConnectionManager::new(client)
            .await
            .expect("redis");
        for c in contacts {
            store::apply_membership(&mut conn, &c.id, Membership::Enter(segment), Some(c))
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
