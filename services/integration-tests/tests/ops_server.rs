//! `/healthz`, `/readyz` (ready only when the broker and Redis answer) and `/metrics`.

use std::time::{Duration, Instant};

use tocsin_contracts::v1;
use tocsin_integration_tests::relay;
use tocsin_integration_tests::stack::{self, TopicReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("ops server on {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_when_broker_and_redis_answer_and_metrics_count_messages() {
    let port = stack::free_port();
    let mut env = stack::relay_env("ops", 1);
    env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
    let config = stack::relay_config(&env);
    let topics = config.kafka.topics.clone();
    let (stop, handle) = relay::spawn(config.clone());

    assert_eq!(get(port, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let verdicts: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(verdicts, serde_json::json!({"broker": "ok", "redis": "ok"}));

    let producer = stack::producer(&config.kafka);
    stack::publish_events(&producer, &topics.segments.name, 0, 3, 3).await;
    TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 3)
        .await;
    let (status, metrics) = get(port, "/metrics").await;
    assert_eq!(status, 200);
    let consumed = format!(
        "tocsin_bus_messages_consumed_total{{topic=\"{}\"}} 3",
        topics.segments.name
    );
    assert!(metrics.contains(&consumed), "{metrics}");
    let produced = format!(
        "tocsin_bus_messages_produced_total{{topic=\"{}\"}} 3",
        topics.feedback.name
    );
    assert!(metrics.contains(&produced), "{metrics}");
    assert!(
        metrics.contains("tocsin_bus_handler_duration_seconds_bucket"),
        "{metrics}"
    );

    stop.cancel();
    handle.await.expect("join").expect("relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_when_redis_does_not_answer() {
    let port = stack::free_port();
    let dead_redis = stack::free_port();
    let mut env = stack::relay_env("ops-down", 1);
    env.retain(|(k, _)| k != "TOCSIN__REDIS__URL");
    env.push((
        "TOCSIN__REDIS__URL".into(),
        format!("redis://127.0.0.1:{dead_redis}/0"),
    ));
    env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
    let (stop, handle) = relay::spawn(stack::relay_config(&env));

    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let verdicts: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(verdicts["broker"], "ok");
    assert_ne!(verdicts["redis"], "ok", "{body}");
    assert_eq!(
        get(port, "/healthz").await.0,
        200,
        "alive even when not ready"
    );

    stop.cancel();
    handle.await.expect("join").expect("relay");
}
