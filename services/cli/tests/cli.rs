//! `tocsin` against a real API and planner on the local stack: schedule, watch to the end,
//! read, and the errors a person sees.

use std::process::Command;
use std::time::Duration;

use tocsin_bus::TraceContext;
use tocsin_contracts::v1;
use tocsin_integration_tests::stack;
use tocsin_runtime::ConfigLoader;
use tocsin_runtime::shutdown::CancellationToken;

fn tocsin(api: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .env("TOCSIN_API_URL", api)
        .env("TOCSIN_API_TOKEN", token)
        .args(args)
        .output()
        .expect("run tocsin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CRM event: the contact (consenting to `consent`) entered `segment`.
fn entered(
    event_id: &str,
    id: &str,
    email: &str,
    consent: v1::Channel,
    segment: &str,
) -> v1::SegmentEvent {
    let contact = v1::Contact {
        id: id.to_owned(),
        email: email.to_owned(),
        first_name: "Camille".into(),
        time_zone: "Europe/Paris".into(),
        consents: vec![v1::Consent {
            channel: consent.into(),
            status: v1::ConsentStatus::Granted.into(),
            source: "form".into(),
            recorded_at: None,
        }],
        ..Default::default()
    };
    v1::SegmentEvent {
        meta: Some(v1::EventMeta {
            event_id: event_id.to_owned(),
            occurred_at: None,
            source: "crm".into(),
        }),
        contact_id: id.to_owned(),
        change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
            segment_id: segment.to_owned(),
            contact: Some(contact),
        })),
    }
}

/// An API and a planner in this process, on a Redis database and topics of the test's own.
struct Services {
    port: u16,
    api_config: tocsin_api::Config,
    stop: CancellationToken,
    api_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    planner_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Services {
    async fn start(test: &str, partitions: i32, db: u8, extra: &[(&str, &str)]) -> Services {
        let port = stack::free_port();
        let mut env = stack::service_env(test, partitions, db);
        env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push(("TOCSIN__PLANNER__GROUP_ID".into(), stack::unique("planner")));
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let api_config: tocsin_api::Config =
            ConfigLoader::defaults_only(Some(tocsin_api::config::DEFAULTS))
                .env(env.clone())
                .load()
                .expect("api config");
        let mut planner_env = env.clone();
        planner_env.retain(|(k, _)| k != "TOCSIN__HTTP__LISTEN");
        let planner_config: tocsin_planner::Config =
            ConfigLoader::defaults_only(Some(tocsin_planner::config::DEFAULTS))
                .env(planner_env)
                .load()
                .expect("planner config");
        stack::flush_redis(&api_config.redis.url).await;
        tocsin_bus::admin::ensure_topics(&api_config.kafka, &api_config.kafka.topics.all())
            .await
            .expect("topics");
        let stop = CancellationToken::new();
        let (a, b) = (stop.clone(), stop.clone());
        let api_task = tokio::spawn(tocsin_api::run(api_config.clone(), async move {
            a.cancelled().await
        }));
        let planner_task = tokio::spawn(tocsin_planner::run(planner_config, async move {
            b.cancelled().await
        }));
        Services {
            port,
            api_config,
            stop,
            api_task,
            planner_task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_watch_and_read_a_blast_from_the_command_line() {
    let Services {
        port,
        api_config,
        stop,
        api_task,
        planner_task,
    } = Services::start("cli", 2, 10, &[("TOCSIN__PLANNER__TICK_MS", "50")]).await;

    // The CRM publishes 300 volunteers, 100 of them without e-mail consent.
    let producer = stack::producer(&api_config.kafka);
    let trace = TraceContext::new_root();
    for i in 0..300 {
        let consent = if i % 3 == 0 {
            v1::Channel::Sms
        } else {
            v1::Channel::Email
        };
        let event = entered(
            &format!("e-{i}"),
            &format!("c-{i:04}"),
            &format!("benevole{i}@exemple.fr"),
            consent,
            "benevoles",
        );
        producer
            .publish(
                &api_config.kafka.topics.segments.name,
                &event.contact_id,
                &format!("e-{i}"),
                &event,
                &trace,
            )
            .await
            .expect("publish");
    }

    let api = format!("http://127.0.0.1:{port}");
    let operator = "local-operator-token";
    let mut segments = String::new();
    for _ in 0..100 {
        let (code, out, _) = tocsin(&api, operator, &["segments", "list"]);
        if code == 0 && out.contains("300") {
            segments = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(segments.contains("benevoles"), "{segments}");

    // A template with a syntax error is refused with its line; the fixed one is stored.
    let dir = std::env::temp_dir().join(stack::unique("tpl"));
    std::fs::create_dir_all(&dir).expect("dir");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"channel":"email","defaultLocale":"fr","variants":{"fr":{"subject":"Rentrée","html":"<p>\n{{first_name</p>"}}}"#).expect("write");
    let (code, _, err) = tocsin(
        &api,
        operator,
        &[
            "templates",
            "upload",
            "rentree",
            "--file",
            broken.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("variants.fr.html line 2"), "{err}");
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"channel":"email","defaultLocale":"fr","variants":{"fr":{"subject":"Rentrée","html":"<p>Bonjour {{first_name}}</p>"}}}"#).expect("write");
    let (code, out, err) = tocsin(
        &api,
        operator,
        &[
            "templates",
            "upload",
            "rentree",
            "--file",
            good.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rentree version 1"), "{out}");

    let schedule = [
        "campaigns",
        "create",
        "--id",
        "cmp-cli",
        "--name",
        "Rentrée",
        "--segment",
        "benevoles",
        "--channel",
        "email",
        "--template",
        "rentree",
        "--sender-profile",
        "parti-exemple",
        "--quiet-hours",
        "none",
    ];
    let (code, out, err) = tocsin(&api, operator, &schedule);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cmp-cli") && out.contains("scheduled"),
        "{out}"
    );

    let (code, out, err) = tocsin(
        &api,
        operator,
        &["campaigns", "watch", "cmp-cli", "--every", "0.2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("completed"), "{out}");
    assert!(out.contains("suppressed: no_consent"), "{out}");

    let (code, out, _) = tocsin(&api, operator, &["--json", "campaigns", "show", "cmp-cli"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["counters"]["planned"], 200);
    assert_eq!(shown["counters"]["dispatched"], 200);
    assert_eq!(shown["counters"]["suppressed"]["no_consent"], 100);

    let (code, out, _) = tocsin(&api, "local-reader-token", &["campaigns", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("cmp-cli") && out.contains("completed"),
        "{out}"
    );

    // Errors: the API's message and field, exit code 2; a reader cannot schedule.
    let mut bad = schedule.to_vec();
    bad[7] = "inconnu";
    bad[3] = "cmp-other";
    let (code, _, err) = tocsin(&api, operator, &bad);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown segment \"inconnu\" (field: segment)"),
        "{err}"
    );
    let (code, _, err) = tocsin(
        &api,
        "local-reader-token",
        &["campaigns", "cancel", "cmp-cli"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("may not pause, resume or cancel"), "{err}");
    let (code, _, err) = tocsin(&api, operator, &["campaigns", "pause", "cmp-cli"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot pause a completed campaign"), "{err}");
    let (code, _, err) = tocsin("http://127.0.0.1:1", operator, &["campaigns", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the API"), "{err}");

    stop.cancel();
    api_task.await.expect("join").expect("api");
    planner_task.await.expect("join").expect("planner");
}

/// Shared with the API's template tests, which run at the same time: nothing is flushed
/// and every template id here is unique.
const SHARED_DB: u8 = 14;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_test_send_and_delete_templates_from_the_command_line() {
    let port = stack::free_port();
    let mut env = stack::service_env("cli-templates", 1, SHARED_DB);
    env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
    let config: tocsin_api::Config =
        ConfigLoader::defaults_only(Some(tocsin_api::config::DEFAULTS))
            .env(env)
            .load()
            .expect("api config");
    let stop = CancellationToken::new();
    let wait = stop.clone();
    let api_task = tokio::spawn(tocsin_api::run(config.clone(), async move {
        wait.cancelled().await
    }));
    let api = format!("http://127.0.0.1:{port}");
    let (operator, reader) = ("local-operator-token", "local-reader-token");
    for _ in 0..100 {
        if tocsin(&api, reader, &["templates", "list"]).0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = std::env::temp_dir().join(stack::unique("tpl"));
    std::fs::create_dir_all(&dir).expect("dir");
    let upload = |id: &str, json: &str| {
        let file = dir.join(format!("{id}.json"));
        std::fs::write(&file, json).expect("write");
        let (code, _, err) = tocsin(
            &api,
            operator,
            &[
                "templates",
                "upload",
                id,
                "--file",
                file.to_str().expect("path"),
            ],
        );
        assert_eq!(code, 0, "{err}");
    };
    let email = stack::unique("rentree");
    upload(
        &email,
        r#"{"channel":"email","defaultLocale":"fr","variants":{"fr":{"subject":"Rentrée {{first_name}}","html":"<p>Bonjour {{first_name}}, à bientôt à <b>{{attributes.commune}}</b>.</p>"}}}"#,
    );
    let sms = stack::unique("rappel");
    upload(
        &sms,
        r#"{"channel":"sms","defaultLocale":"fr","variants":{"fr":{"body":"{{first_name}}, RDV samedi 10h à {{attributes.commune}}."}}}"#,
    );

    // Preview: the sample contact, the subject and the text part; --html; --json.
    let (code, out, err) = tocsin(&api, reader, &["templates", "preview", &email]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{email} version 1, email for contact sample")),
        "{out}"
    );
    assert!(out.contains("To: camille.martin@example.org"), "{out}");
    assert!(out.contains("Subject: Rentrée Camille"), "{out}");
    assert!(out.contains("Bonjour Camille, à bientôt à Lyon"), "{out}");
    assert!(!out.contains("<b>"), "the text part, not the HTML: {out}");
    let (code, out, err) = tocsin(&api, reader, &["templates", "preview", &email, "--html"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("<p>Bonjour Camille, à bientôt à <b>Lyon</b>.</p>"),
        "{out}"
    );
    let (code, out, err) = tocsin(&api, reader, &["--json", "templates", "preview", &sms]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["sms"]["encoding"], "GSM-7");
    assert_eq!(shown["sms"]["parts"], 1);
    let (code, out, err) = tocsin(&api, reader, &["templates", "preview", &sms]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GSM-7, 1 part\n"), "{out}");
    assert!(
        out.contains("Tocsin: Camille, RDV samedi 10h à Lyon. STOP au 36111"),
        "{out}"
    );

    // Refusals: exit code 2 with the API's words.
    let (code, _, err) = tocsin(&api, reader, &["templates", "preview", &sms, "--html"]);
    assert_eq!(code, 2);
    assert!(err.contains("is an SMS template, it has no HTML"), "{err}");
    let (code, _, err) = tocsin(
        &api,
        reader,
        &[
            "templates",
            "preview",
            &email,
            "--sender-profile",
            "inconnu",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("sender profile `inconnu` is not configured")
            && err.contains("(unknown_sender_profile)"),
        "{err}"
    );
    let (code, _, err) = tocsin(
        &api,
        reader,
        &["templates", "preview", &email, "--contact", "personne"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("no contact \"personne\""), "{err}");

    // Test send: queued for the pipeline; a reader may not; the address must fit.
    let (code, _, err) = tocsin(
        &api,
        reader,
        &["templates", "test-send", &sms, "--to", "+33700000001"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("may not send test messages"), "{err}");
    let (code, _, err) = tocsin(
        &api,
        operator,
        &["templates", "test-send", &sms, "--to", "moi@exemple.fr"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("(field: to)"), "{err}");
    let (code, out, err) = tocsin(
        &api,
        operator,
        &[
            "templates",
            "test-send",
            &sms,
            "--to",
            "+33700000001",
            "--version",
            "1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("test sms queued: campaign test-"), "{out}");
    let jobs = stack::TopicReader::new(&config.kafka.topics.jobs_triggered.name)
        .read_until::<v1::SendJob>(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    let job = &jobs[0].event;
    assert!(out.contains(&job.idempotency_key), "{out}");
    assert_eq!(
        job.contact.as_ref().map(|c| c.phone_e164.as_str()),
        Some("+33700000001")
    );

    // Delete: gone from the list; a second delete finds nothing.
    let (code, out, err) = tocsin(&api, operator, &["templates", "delete", &email]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("template {email} deleted"));
    let (_, out, _) = tocsin(&api, reader, &["templates", "list"]);
    assert!(!out.contains(&email) && out.contains(&sms), "{out}");
    let (code, _, err) = tocsin(&api, operator, &["templates", "delete", &email]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("no template \"{email}\"")), "{err}");
    let (code, _, err) = tocsin(
        "http://127.0.0.1:1",
        operator,
        &["templates", "delete", &sms],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the API"), "{err}");

    stop.cancel();
    api_task.await.expect("join").expect("api");
}

/// The welcome series of `config/sequences/` defined from the command line, volunteers
/// entering its trigger segment, and the funnel as `tocsin sequences show` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn define_a_sequence_from_its_file_and_read_its_funnel() {
    let Services {
        port,
        api_config,
        stop,
        ..
    } = Services::start(
        "cli-seq",
        1,
        21,
        &[("TOCSIN__PLANNER__SEQUENCE_INDEX_REFRESH_MS", "0")],
    )
    .await;
    let api = format!("http://127.0.0.1:{port}");
    let operator = "local-operator-token";
    let file = format!(
        "{}/../../config/sequences/welcome.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    for _ in 0..100 {
        if tocsin(&api, operator, &["sequences", "list"]).0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its templates are not there yet: refused, naming the step.
    let (code, _, err) = tocsin(&api, operator, &["sequences", "create", "--file", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("steps[0].template"), "{err}");
    let dir = std::env::temp_dir().join(stack::unique("seq"));
    std::fs::create_dir_all(&dir).expect("dir");
    for (id, body) in [
        (
            "demo-invitation",
            r#"{"channel":"email","defaultLocale":"fr","variants":{"fr":{"subject":"Bienvenue","html":"<p>Bonjour {{first_name}}</p>"}}}"#,
        ),
        (
            "demo-rappel",
            r#"{"channel":"sms","defaultLocale":"fr","variants":{"fr":{"body":"Bienvenue {{first_name}} ! STOP au 36111"}}}"#,
        ),
    ] {
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, body).expect("write");
        let (code, _, err) = tocsin(
            &api,
            operator,
            &[
                "templates",
                "upload",
                id,
                "--file",
                path.to_str().expect("path"),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = tocsin(&api, operator, &["sequences", "create", "--file", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("welcome") && out.contains("version 1"),
        "{out}"
    );

    // Five volunteers enter the trigger segment; two of them without e-mail consent.
    let producer = stack::producer(&api_config.kafka);
    let trace = TraceContext::new_root();
    for i in 0..5 {
        let channel = if i < 3 {
            v1::Channel::Email
        } else {
            v1::Channel::Sms
        };
        let event = entered(
            &format!("seq-e-{i}"),
            &format!("v-{i}"),
            &format!("v{i}@exemple.fr"),
            channel,
            "nouveaux-benevoles",
        );
        producer
            .publish(
                &api_config.kafka.topics.segments.name,
                &event.contact_id,
                &format!("seq-e-{i}"),
                &event,
                &trace,
            )
            .await
            .expect("publish");
    }
    let mut shown = serde_json::Value::Null;
    for _ in 0..150 {
        let (_, out, _) = tocsin(&api, operator, &["--json", "sequences", "show", "welcome"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let step = &v["funnel"]["steps"][0];
        if step["sent"].as_i64().unwrap_or(0) + step["suppressed"].as_i64().unwrap_or(0) == 5 {
            shown = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let funnel = &shown["funnel"];
    assert_eq!(funnel["enrolled"], 5, "{shown}");
    assert_eq!(funnel["steps"][0]["sent"], 3, "{shown}");
    assert_eq!(
        funnel["steps"][0]["suppressed"], 2,
        "no e-mail consent: {shown}"
    );
    assert_eq!(
        funnel["steps"][1]["waiting"], 5,
        "all wait for the SMS: {shown}"
    );
    let (code, table, _) = tocsin(&api, operator, &["sequences", "show", "welcome"]);
    assert_eq!(code, 0);
    assert!(table.contains("enrolled 5"), "{table}");
    assert!(table.contains("e-mail de bienvenue"), "{table}");
    let (code, out, _) = tocsin(
        &api,
        operator,
        &["sequences", "retire", "welcome", "--reason", "fin"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("retired: fin"), "{out}");
    stop.cancel();
}
