//! What the planner tests share: a planner configured on its own topics and Redis
//! database, and builders of CRM events.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tocsin_bus::{Producer, TraceContext};
use tocsin_contracts::{Timestamp, v1};
use tocsin_integration_tests::stack;
use tocsin_planner::Config;
use tocsin_runtime::ConfigLoader;

/// The planner binary, in a process of its own on the harness's configuration (so that a
/// test can SIGKILL it).
pub fn start_process(h: &Harness, instance: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tocsin-planner"))
        .envs(h.env.iter().cloned())
        .env("TOCSIN__PLANNER__INSTANCE", instance)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start tocsin-planner")
}

pub struct Harness {
    pub env: Vec<(String, String)>,
    pub config: Config,
    pub producer: Producer,
    pub redis: redis::aio::MultiplexedConnection,
}

impl Harness {
    /// A planner configuration on fresh topics and on Redis database `db`, emptied.
    pub async fn new(test: &str, db: u8, extra: &[(&str, &str)]) -> Self {
        let mut env = stack::service_env(test, 3, db);
        env.push(("TOCSIN__PLANNER__GROUP_ID".into(), stack::unique("planner")));
        env.push(("TOCSIN__PLANNER__TICK_MS".into(), "50".into()));
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let config: Config = ConfigLoader::defaults_only(Some(tocsin_planner::config::DEFAULTS))
            .env(env.iter().cloned())
            .load()
            .expect("planner configuration");
        stack::flush_redis(&config.redis.url).await;
        tocsin_bus::admin::ensure_topics(&config.kafka, &config.kafka.topics.all())
            .await
            .expect("topics");
        let producer = stack::producer(&config.kafka);
        let redis = redis::Client::open(config.redis.url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        Harness {
            env,
            config,
            producer,
            redis,
        }
    }

    pub async fn publish_segment_events(&self, events: &[v1::SegmentEvent]) {
        let trace = TraceContext::new_root();
        let topic = &self.config.kafka.topics.segments.name;
        for chunk in events.chunks(2000) {
            futures::future::try_join_all(chunk.iter().map(|e| {
                let id = e
                    .meta
                    .as_ref()
                    .map(|m| m.event_id.as_str())
                    .unwrap_or_default();
                self.producer.publish(topic, &e.contact_id, id, e, &trace)
            }))
            .await
            .expect("publish segment events");
        }
    }

    pub async fn schedule(&self, campaign_id: &str, blast: v1::ScheduleBlast) {
        self.command(campaign_id, v1::campaign_command::Command::Schedule(blast))
            .await;
    }

    pub async fn command(&self, campaign_id: &str, command: v1::campaign_command::Command) {
        let event_id = stack::unique("cmd");
        let event = v1::CampaignCommand {
            meta: Some(v1::EventMeta {
                event_id: event_id.clone(),
                occurred_at: None,
                source: "test".into(),
            }),
            campaign_id: campaign_id.to_owned(),
            sequence_id: String::new(),
            requested_by: "test".into(),
            command: Some(command),
        };
        self.producer
            .publish(
                &self.config.kafka.topics.campaigns.name,
                campaign_id,
                &event_id,
                &event,
                &TraceContext::new_root(),
            )
            .await
            .expect("publish command");
    }

    /// Waits until `check` holds on the planner's Redis, or panics after `timeout`.
    pub async fn wait_redis<T, F>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: AsyncFnMut(&mut redis::aio::MultiplexedConnection) -> Option<T>,
    {
        let deadline = Instant::now() + timeout;
        let mut conn = self.redis.clone();
        loop {
            if let Some(v) = check(&mut conn).await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn campaign_state(&self, id: &str) -> Option<String> {
        let mut conn = self.redis.clone();
        conn.hget(format!("t:cmp:{id}"), "state")
            .await
            .expect("state")
    }

    pub async fn counters(&self, id: &str) -> std::collections::HashMap<String, i64> {
        let mut conn = self.redis.clone();
        conn.hgetall(format!("t:cmp:{id}:n"))
            .await
            .expect("counters")
    }
}

pub fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

pub fn consent(channel: v1::Channel) -> v1::Consent {
    v1::Consent {
        channel: channel.into(),
        status: v1::ConsentStatus::Granted.into(),
        source: "test-form".into(),
        recorded_at: ts(1_700_000_000),
    }
}

pub fn contact(
    id: &str,
    email: &str,
    phone: &str,
    consents: &[v1::Channel],
    version: i64,
) -> v1::Contact {
    v1::Contact {
        id: id.to_owned(),
        email: email.to_owned(),
        phone_e164: phone.to_owned(),
        first_name: "Camille".into(),
        last_name: "Durand".into(),
        locale: "fr".into(),
        time_zone: "Europe/Paris".into(),
        consents: consents.iter().map(|c| consent(*c)).collect(),
        updated_at: ts(version),
        ..Default::default()
    }
}

fn meta(event_id: String) -> Option<v1::EventMeta> {
    Some(v1::EventMeta {
        event_id,
        occurred_at: None,
        source: "crm".into(),
    })
}

pub fn entered(segment: &str, contact: v1::Contact) -> v1::SegmentEvent {
    v1::SegmentEvent {
        meta: meta(stack::unique("ev")),
        contact_id: contact.id.clone(),
        change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
            segment_id: segment.to_owned(),
            contact: Some(contact),
        })),
    }
}

pub fn erased(contact_id: &str) -> v1::SegmentEvent {
    v1::SegmentEvent {
        meta: meta(stack::unique("ev")),
        contact_id: contact_id.to_owned(),
        change: Some(v1::segment_event::Change::Erased(
            v1::ContactErased::default(),
        )),
    }
}

pub fn email_blast(segment: &str, start_secs: i64) -> v1::ScheduleBlast {
    v1::ScheduleBlast {
        name: "test blast".into(),
        segment_id: segment.to_owned(),
        channel: v1::Channel::Email.into(),
        template_id: "newsletter".into(),
        template_version: 1,
        start_at: ts(start_secs),
        time_zone: "Europe/Paris".into(),
        quiet_hours: Some(v1::QuietHours {
            disabled: true,
            ..Default::default()
        }),
        sender_profile: "parti-exemple".into(),
        ..Default::default()
    }
}

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `/metrics` of a planner whose ops server listens on `port`, once it answers.
pub async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("ops server on {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the series `name` with exactly these labels in a Prometheus text page.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    page.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let mut have: Vec<String> = rest
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        have.sort();
        (have == want).then(|| value.parse().ok()).flatten()
    })
}

/// Scrapes until `done` holds for the page, or panics after `timeout` with the last page.
pub async fn scrape_until(port: u16, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let page = scrape(port).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "metrics not as expected after {timeout:?}:\n{}",
            page.lines()
                .filter(|l| l.starts_with("tocsin_planner"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
