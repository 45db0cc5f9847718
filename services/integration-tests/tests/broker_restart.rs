//! The broker stops and starts again in the middle of a run (Tansu on SQLite storage, its
//! own instance on a free port): the producer buffers and delivers, the consumer resumes
//! from its committed offsets, nothing is lost.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tocsin_bus::TraceContext;
use tocsin_contracts::v1;
use tocsin_integration_tests::relay;
use tocsin_integration_tests::stack::{self, TestBus, TopicReader};

fn start_tansu(dir: &Path, port: u16) -> Child {
    let child = Command::new("tansu")
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu on PATH (deploy/local/stack.sh install)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut broker: Child) {
    // Tansu 0.6 does not always stop on SIGTERM; a crash is the harder case anyway.
    broker.kill().expect("kill tansu");
    broker.wait().expect("reap tansu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_broker_restarts() {
    const N: usize = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = stack::free_port();
    let brokers = format!("127.0.0.1:{port}");
    let mut broker = start_tansu(dir.path(), port);

    let mut env = stack::relay_env("restart", 2);
    env.retain(|(k, _)| k != "TOCSIN__KAFKA__BROKERS");
    env.push(("TOCSIN__KAFKA__BROKERS".into(), brokers.clone()));
    let bus = TestBus::from_env(env).await;
    let topics = bus.topics().clone();
    let (stop_relay, relay) = relay::spawn(bus.config.clone());
    let producer = bus.producer.clone();

    // A steady stream of events; the broker goes away in the middle of it.
    let trace = TraceContext::new_root();
    let publisher = {
        let producer = producer.clone();
        let topic = topics.segments.name.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..N {
                let event_id = format!("e-{i}");
                let contact = format!("c-{}", i % 37);
                let event = stack::segment_event(&event_id, &contact);
                let producer = producer.clone();
                let topic = topic.clone();
                pending.push(tokio::spawn(async move {
                    producer
                        .publish(&topic, &contact, &event_id, &event, &trace)
                        .await
                        .map(|_| ())
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut failed = 0;
            for p in pending {
                if !matches!(p.await, Ok(Ok(()))) {
                    failed += 1;
                }
            }
            failed
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(broker);
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker = start_tansu(dir.path(), port);

    let failed = publisher.await.expect("publisher");
    assert_eq!(
        failed, 0,
        "every produce is delivered once the broker is back"
    );

    let reader = TopicReader::with_brokers(&brokers, &topics.feedback.name);
    let records = reader
        .read_until::<v1::Feedback>(Duration::from_secs(120), |r| {
            stack::event_ids(r)
                .into_iter()
                .collect::<HashSet<_>>()
                .len()
                >= N
        })
        .await;
    let ids: HashSet<String> = stack::event_ids(&records).into_iter().collect();
    for i in 0..N {
        assert!(ids.contains(&format!("e-{i}")), "e-{i} lost");
    }
    let late = reader
        .read_for::<v1::Feedback>(Duration::from_secs(2))
        .await;
    let duplicates = records.len() + late.len() - N;
    // About 200 events were handled before the broker went away: a consumer that started
    // over instead of resuming from its offsets would repeat them all.
    assert!(
        duplicates < 100,
        "{duplicates} events handled twice: the consumer did not resume"
    );

    stop_relay.cancel();
    relay.await.expect("join").expect("relay");
    stop(broker);
}
