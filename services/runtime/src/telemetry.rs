//! Logs: JSON lines through `tracing`, with no raw personal data.
//!
//! Typed values (`EmailAddress`, `PhoneNumber`) already print masked. As a second line of
//! defence every formatted line passes through a [`Scrubber`] that replaces anything shaped
//! like an e-mail address or a phone number with `<email:HASH>` / `<phone:HASH>`, HASH being
//! a keyed HMAC-SHA256 prefix: an operator can follow one person through the logs without
//! ever seeing the address.

use std::io::{self, Write};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use regex::{Captures, Regex};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Replaces personal data in log text with keyed hashes.
#[derive(Clone)]
pub struct Scrubber {
    key: Arc<SecretString>,
    email: Regex,
    phone: Regex,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrubber")
    }
}

impl Scrubber {
    pub fn new(key: SecretString) -> Self {
        // Local part and domain as RFC 5322 allows them in practice (no quoted forms).
        let email =
            Regex::new(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
                .expect("static regex");
        // E.164 (+ and 8-15 digits, optionally grouped by spaces, dots or dashes) and French
        // national numbers (0 then 9 digits, grouped or not).
        let phone = Regex::new(r"\+[1-9](?:[ .-]?[0-9]){7,14}|\b0[1-9](?:[ .-]?[0-9]{2}){4}\b")
            .expect("static regex");
        Scrubber {
            key: Arc::new(key),
            email,
            phone,
        }
    }

    /// A short keyed hash of a value, stable for one key.
    pub fn hash(&self, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..5].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let emails = self.email.replace_all(text, |c: &Captures<'_>| {
            format!("<email:{}>", self.hash(&c[0].to_lowercase()))
        });
        match self.phone.replace_all(&emails, |c: &Captures<'_>| {
            let digits: String = c[0]
                .chars()
                .filter(|ch| ch.is_ascii_digit() || *ch == '+')
                .collect();
            format!("<phone:{}>", self.hash(&digits))
        }) {
            std::borrow::Cow::Borrowed(_) => emails,
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s),
        }
    }
}

/// A [`MakeWriter`] that scrubs every formatted event before it reaches `inner`.
#[derive(Debug, Clone)]
pub struct ScrubbingMakeWriter<M> {
    inner: M,
    scrubber: Scrubber,
}

impl<M> ScrubbingMakeWriter<M> {
    pub fn new(inner: M, scrubber: Scrubber) -> Self {
        ScrubbingMakeWriter { inner, scrubber }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingMakeWriter<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer(),
            scrubber: self.scrubber.clone(),
        }
    }
}

/// Writes one scrubbed event. `tracing-subscriber` formats an event into one buffer and
/// writes it in one call, so a value is never split across two writes.
#[derive(Debug)]
pub struct ScrubbingWriter<W> {
    inner: W,
    scrubber: Scrubber,
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner
            .write_all(self.scrubber.scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Installs the global subscriber: JSON (or pretty) lines on stdout, scrubbed, filtered by
/// `RUST_LOG` when set, else by the configured filter.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .map_err(|e| format!("log filter {:?}: {e}", config.filter))?;
    let writer = ScrubbingMakeWriter::new(io::stdout, Scrubber::new(config.pii_key.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| e.to_string())
}
