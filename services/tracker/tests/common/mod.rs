//! What the tracker's tests share: a tracker on the stack with its own topics, its feedback
//! read back, its metrics, and a Python with the providers' own libraries.

// Each test binary (links, webhooks) uses its own part of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tocsin_contracts::v1;
use tocsin_integration_tests::stack::{self, Record, TopicReader};
use tocsin_runtime::ConfigLoader;
use tocsin_tracker::Config;

/// The Redis database of the tracker's tests (tests run in parallel against one Redis).
pub const REDIS_DB: u8 = 15;

/// A tracker serving on a loopback port of its own until dropped.
pub struct Tracker {
    pub base: String,
    pub config: Config,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Tracker {
    /// Starts a tracker with its own topics; `extra` adds `TOCSIN__*` variables.
    pub async fn start(test: &str, extra: &[(&str, &str)]) -> Self {
        let port = stack::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut env = stack::service_env(test, 1, REDIS_DB);
        env.push(("TOCSIN__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push(("TOCSIN__TRACKER__PUBLIC_BASE_URL".into(), base.clone()));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config: Config = ConfigLoader::defaults_only(Some(tocsin_tracker::config::DEFAULTS))
            .env(env)
            .load()
            .expect("tracker configuration");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tocsin_tracker::run(config.clone(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(!task.is_finished(), "the tracker stopped: {:?}", task.await);
            assert!(Instant::now() < deadline, "the tracker did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Tracker {
            base,
            config,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn feedback(&self) -> TopicReader {
        TopicReader::new(&self.config.kafka.topics.feedback.name)
    }

    /// A counter's value in `/metrics` (0 when absent), `series` being its name and labels
    /// as Prometheus prints them: `tocsin_tracker_opens_total{outcome="bad_token"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Stops the tracker and waits for it to finish cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("the tracker ends cleanly");
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn event_id(record: &Record<v1::Feedback>) -> &str {
    record
        .event
        .meta
        .as_ref()
        .map(|m| m.event_id.as_str())
        .unwrap_or_default()
}

pub fn key(record: &Record<v1::Feedback>) -> String {
    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned()
}

/// Waits for `records` events on the tracker's feedback topic, then a little longer to see
/// that nothing more comes.
pub async fn feedback_exactly(tracker: &Tracker, count: usize) -> Vec<Record<v1::Feedback>> {
    let reader = tracker.feedback();
    let mut records = reader
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= count)
        .await;
    records.extend(
        reader
            .read_for::<v1::Feedback>(Duration::from_secs(2))
            .await,
    );
    assert_eq!(
        records.len(),
        count,
        "feedback: {:#?}",
        records.iter().map(|r| &r.event).collect::<Vec<_>>()
    );
    records
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A Redis connection to the tests' database.
pub async fn redis(tracker: &Tracker) -> redis::aio::MultiplexedConnection {
    redis::Client::open(tracker.config.redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis (deploy/local/stack.sh up)")
}

/// The Python packages of the tests' own virtualenv (`.stack/tracker-venv`), every one
/// pinned, the transitive ones included: Twilio's helper library (its `RequestValidator`
/// computes the signatures Twilio sends) and `cryptography` (OpenSSL's ECDSA, a second
/// implementation of SendGrid's signatures).
const REQUIREMENTS: &[&str] = &[
    "twilio==9.13.0",
    "cryptography==50.0.2",
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiohttp-retry==2.9.1",
    "aiosignal==1.4.0",
    "attrs==26.1.0",
    "certifi==2026.10.19.post1",
    "cffi==2.1.1",
    "charset-normalizer==3.5.3",
    "frozenlist==1.8.0",
    "idna==3.20",
    "multidict==7.2.1",
    "propcache==0.5.4",
    "pycparser==3.12",
    "PyJWT==2.15.1",
    "requests==2.34.2",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "yarl==1.25.1",
];

/// The virtualenv's Python, made on first use: created beside its final place, then
/// renamed into it, so that tests running at once never see half an installation.
pub fn python() -> PathBuf {
    let stack = tocsin_integration_tests::mail::stack_dir();
    let venv = stack.join("tracker-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import twilio.request_validator, cryptography"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    std::fs::create_dir_all(&stack).expect("stack directory");
    let building = stack.join(format!("tracker-venv.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&building)
        .status()
        .expect("python3 (deploy/local/stack.sh installs it)");
    assert!(made.success(), "python3 -m venv failed");
    let pip = Command::new(building.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS)
        .status()
        .expect("pip");
    assert!(pip.success(), "pip install failed");
    if std::fs::rename(&building, &venv).is_err() {
        // Another test finished first.
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(
        ready(&python),
        "{} lacks twilio or cryptography",
        python.display()
    );
    python
}

/// Runs `script` with the virtualenv's Python, `input` as JSON on its standard input,
/// and returns what it prints as JSON.
pub fn run_python(script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("python output");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python prints JSON")
}
