//! Configuration layers as a deployment uses them: compiled-in defaults, a file, then
//! `TOCSIN__*` variables; unknown keys refused, secrets never printed.

use std::io::Write;
use std::process::Command;

use secrecy::ExposeSecret;
use tocsin_integration_tests::relay::{self, RelayConfig};
use tocsin_runtime::{ConfigError, ConfigLoader};

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(contents.as_bytes()).expect("write");
    f
}

fn loader() -> ConfigLoader {
    ConfigLoader::defaults_only(Some(relay::DEFAULTS))
}

#[test]
fn defaults_alone_make_a_complete_configuration() {
    let config: RelayConfig = loader().load().expect("defaults");
    assert_eq!(config.kafka.brokers, "127.0.0.1:19092");
    assert_eq!(config.kafka.topics.segments.name, "tocsin.segments");
    assert_eq!(config.kafka.topics.dlq.name, "tocsin.dlq");
    assert_eq!(config.redis.url, "redis://127.0.0.1:16379/0");
    assert_eq!(config.relay.group_id, "tocsin-relay");
}

#[test]
fn an_unknown_key_in_a_file_is_an_error_naming_the_key() {
    let f = file("[kafka]\nbrokerz = \"10.0.0.1:9092\"\n");
    let err = loader()
        .file(f.path())
        .load::<RelayConfig>()
        .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("brokerz"), "{message}");
    assert!(
        message.contains(&f.path().display().to_string()),
        "names the file: {message}"
    );
}

#[test]
fn an_unknown_key_in_the_environment_is_an_error_naming_the_key() {
    let err = loader()
        .env([("TOCSIN__KAFKA__TOPICS__JOBS__PARTITONS", "12")])
        .load::<RelayConfig>()
        .expect_err("refused");
    assert!(err.to_string().contains("partitons"), "{err}");

    let err = loader()
        .env([("TOCSIN__NOPE__X", "1")])
        .load::<RelayConfig>()
        .expect_err("refused");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn the_environment_overrides_the_file_which_overrides_the_defaults() {
    let f = file(
        "[kafka]\nbrokers = \"from-file:9092\"\nmax_in_flight = 10\n[relay]\ninstance = \"file\"\n",
    );
    let config: RelayConfig = loader()
        .file(f.path())
        .env([
            ("TOCSIN__KAFKA__BROKERS", "from-env:9092"),
            ("OTHER__KAFKA__BROKERS", "ignored:1"),
        ])
        .load()
        .expect("layers");
    assert_eq!(config.kafka.brokers, "from-env:9092");
    assert_eq!(config.kafka.max_in_flight, 10, "file over defaults");
    assert_eq!(config.relay.instance, "file");
    assert_eq!(
        config.kafka.linger_ms, 5,
        "defaults where nobody says otherwise"
    );

    // Variables are typed like TOML values.
    let config: RelayConfig = loader()
        .env([("TOCSIN__KAFKA__MAX_IN_FLIGHT", "17")])
        .load()
        .expect("typed");
    assert_eq!(config.kafka.max_in_flight, 17);
    let err = loader()
        .env([("TOCSIN__KAFKA__MAX_IN_FLIGHT", "lots")])
        .load::<RelayConfig>()
        .expect_err("not a number");
    assert!(err.to_string().contains("max_in_flight"), "{err}");
}

#[test]
fn a_missing_environment_file_is_an_error() {
    let err = loader()
        .file("/nonexistent/tocsin.toml")
        .load::<RelayConfig>()
        .expect_err("missing");
    assert!(matches!(err, ConfigError::MissingFile(_)));
}

#[test]
fn secrets_are_never_printed() {
    let config: RelayConfig = loader()
        .env([
            ("TOCSIN__LOG__PII_KEY", "hmac-s3cret"),
            ("TOCSIN__REDIS__PASSWORD", "redis-s3cret"),
        ])
        .load()
        .expect("secrets");
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert_eq!(config.log.pii_key.expose_secret(), "hmac-s3cret");
}

#[test]
fn a_service_refuses_to_start_on_an_unknown_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_tocsin-relay"))
        .env("TOCSIN__KAFKA__BROKERZ", "127.0.0.1:1")
        .output()
        .expect("run tocsin-relay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("brokerz"), "{stderr}");
}
