//! No log line carries a raw e-mail address or phone number, wherever it appears: in the
//! message, in a field, in a Debug-printed struct, in an error.

use std::io::Write;
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use tocsin_runtime::telemetry::{Scrubber, ScrubbingMakeWriter};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
#[allow(dead_code)]
struct Profile {
    email: String,
    phone: String,
}

#[test]
fn log_lines_never_carry_raw_addresses() {
    let capture = Capture::default();
    let sink = capture.clone();
    let scrubber = Scrubber::new(SecretString::from("test-key"));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(ScrubbingMakeWriter::new(
            move || sink.clone(),
            scrubber.clone(),
        ))
        .finish();

    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("sending to camille.durand+tag@exemple.fr now");
        tracing::info!(
            to = "Camille.Durand+tag@Exemple.fr",
            phone = "+33 6 12 34 56 78",
            "field values"
        );
        tracing::warn!(
            profile = ?Profile { email: "lea@outre-mer.re".into(), phone: "+262692000001".into() },
            "debug-printed struct"
        );
        tracing::error!(error = %"550 5.1.1 <jo@x.org>: mailbox unknown", "provider error");
        tracing::info!("rappel au 06 12 34 56 78 ou 0712345678");
    });

    let out = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf-8");
    assert_eq!(out.lines().count(), 5, "{out}");
    for raw in [
        "camille.durand",
        "Camille.Durand",
        "lea@",
        "jo@x.org",
        "12 34 56 78",
        "+33612345678",
        "+262692000001",
        "0712345678",
    ] {
        assert!(!out.contains(raw), "raw {raw:?} leaked into logs:\n{out}");
    }
    // The same address, however it is spelt, hashes alike: lines about one person correlate.
    let hash = scrubber.hash("camille.durand+tag@exemple.fr");
    assert_eq!(out.matches(&format!("<email:{hash}>")).count(), 2, "{out}");
    assert!(
        out.contains(&format!("<phone:{}>", scrubber.hash("+33612345678"))),
        "{out}"
    );
    // Every line is still valid JSON after scrubbing.
    for line in out.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON line");
    }
}

#[test]
fn the_hash_depends_on_the_key() {
    let a = Scrubber::new(SecretString::from("key-a"));
    let b = Scrubber::new(SecretString::from("key-b"));
    assert_ne!(a.hash("x@y.fr"), b.hash("x@y.fr"));
    assert_eq!(a.hash("x@y.fr"), a.hash("x@y.fr"));
}

#[test]
fn text_without_personal_data_is_untouched() {
    let s = Scrubber::new(SecretString::from("k"));
    let line = r#"{"msg":"offset 1234567890 stored","partition":3,"at":"2026-11-30T10:00:00Z"}"#;
    assert_eq!(s.scrub(line), line);
}
