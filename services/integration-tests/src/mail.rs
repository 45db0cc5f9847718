//! The local stack's SMTP server as the tests see it: where it listens, its credentials and
//! CA, the mail it received (read back byte for byte from its Maildir), and an independent
//! DKIM check of that mail (dkimpy through `deploy/local/dkim_verify.py`, no DNS).
//!
//! The server (`deploy/local/smtp_server.py`, aiosmtpd) stores every message it accepts
//! unchanged in `new/` of one Maildir shared by every test and every run, so a test finds
//! its own mail by a recipient address of its own ([`crate::stack::unique`]).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The name the server's certificate is made for (it also names IP 127.0.0.1).
pub const TLS_SERVER_NAME: &str = "localhost";

/// How often [`wait_for`] looks at the Maildir again.
const POLL: Duration = Duration::from_millis(50);

fn repo_root() -> PathBuf {
    // This crate is `services/integration-tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives two levels below the repository's root")
        .to_path_buf()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn port(name: &str, default: u16) -> u16 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a port number")),
        _ => default,
    }
}

/// `TOCSIN_STACK_DIR` (the variable `stack.sh` itself reads), else `<repo>/.stack`.
pub fn stack_dir() -> PathBuf {
    match std::env::var_os("TOCSIN_STACK_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".stack"),
    }
}

/// `TOCSIN_TEST_MAILDIR`, else the stack's `mail/` (what `stack.sh mail-path` prints).
pub fn maildir() -> PathBuf {
    match std::env::var_os("TOCSIN_TEST_MAILDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => stack_dir().join("mail"),
    }
}

/// `TOCSIN_SMTP_PORT`, else 12525: SMTP on 127.0.0.1, STARTTLS required before anything
/// but EHLO, AUTH required before MAIL.
pub fn smtp_port() -> u16 {
    port("TOCSIN_SMTP_PORT", 12525)
}

/// `TOCSIN_SMTPS_PORT`, else 12465: the same server with implicit TLS.
pub fn smtps_port() -> u16 {
    port("TOCSIN_SMTPS_PORT", 12465)
}

/// `TOCSIN_SMTP_USER` and `TOCSIN_SMTP_PASSWORD`, else the stack's defaults.
pub fn smtp_credentials() -> (String, String) {
    (
        env_or("TOCSIN_SMTP_USER", "tocsin"),
        env_or("TOCSIN_SMTP_PASSWORD", "local-smtp-password"),
    )
}

/// `TOCSIN_TEST_SMTP_CA`, else the stack's `smtp/ca.pem`: the CA that signed the server's
/// certificate, which a client adds as its only root (`stack.sh ca-path` prints it).
pub fn tls_ca_pem_path() -> PathBuf {
    match std::env::var_os("TOCSIN_TEST_SMTP_CA") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => stack_dir().join("smtp").join("ca.pem"),
    }
}

/// The SMTP envelope of a message, which the server writes beside it
/// (`<maildir>/envelope/<name>.json`): what the headers cannot tell, such as the bounce
/// address and the recipients a sender really addressed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Envelope {
    /// The id the server answered with (`250 2.0.0 OK queued as <id>`), which a sender
    /// records as the provider's message id.
    pub queue_id: String,
    /// `MAIL FROM`, without the angle brackets.
    pub mail_from: String,
    /// Every `RCPT TO`, in order.
    pub rcpt_tos: Vec<String>,
    /// The user that authenticated.
    pub user: Option<String>,
    /// `starttls` or `smtps`: the port it came through.
    pub tls: String,
    /// The client's address and port: one per connection.
    pub peer: Option<(String, u16)>,
}

/// One message as the server stored it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The file in the Maildir, for [`dkim_verify`] or a look by hand.
    pub path: PathBuf,
    /// The exact bytes received after DATA: CRLF line ends, dot-stuffing removed.
    pub raw: Vec<u8>,
    /// The header fields in order: names as written, values unfolded (each CRLF before
    /// white space removed, RFC 5322 2.2.3) without the white space after the colon.
    pub headers: Vec<(String, String)>,
    /// Everything after the empty line that ends the header.
    pub body: Vec<u8>,
    /// `None` only for a file the server did not write.
    pub envelope: Option<Envelope>,
}

impl ReceivedMail {
    /// Splits a message into unfolded header fields and body (no envelope).
    pub fn parse(path: PathBuf, raw: Vec<u8>) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut body_start = raw.len();
        let mut pos = 0;
        while pos < raw.len() {
            let end = raw[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| pos + i + 1);
            let line = &raw[pos..end];
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos = end;
            if line.is_empty() {
                body_start = end;
                break;
            }
            let text = String::from_utf8_lossy(line);
            if line[0] == b' ' || line[0] == b'\t' {
                if let Some((_, value)) = headers.last_mut() {
                    value.push_str(&text);
                }
            } else if let Some((name, value)) = text.split_once(':') {
                headers.push((
                    name.to_owned(),
                    value.trim_start_matches([' ', '\t']).to_owned(),
                ));
            }
        }
        let body = raw[body_start..].to_vec();
        Self {
            path,
            raw,
            headers,
            body,
            envelope: None,
        }
    }

    /// Reads a message file and the envelope the server wrote beside it, if there is one.
    pub fn read(path: &Path) -> io::Result<Self> {
        let raw = std::fs::read(path)?;
        let mut mail = Self::parse(path.to_path_buf(), raw);
        // <maildir>/new/<name> has its envelope in <maildir>/envelope/<name>.json.
        let root = path.parent().and_then(Path::parent);
        if let (Some(root), Some(name)) = (root, mail.file_name()) {
            let sidecar = root.join("envelope").join(format!("{name}.json"));
            if let Ok(json) = std::fs::read(&sidecar) {
                let envelope = serde_json::from_slice(&json).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not an envelope: {e}", sidecar.display()),
                    )
                })?;
                mail.envelope = Some(envelope);
            }
        }
        Ok(mail)
    }

    /// The first field of that name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field of that name, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server's queue id, from the file name `<ns>.<id>.tocsin`.
    pub fn queue_id(&self) -> Option<&str> {
        self.file_name()?.split('.').nth(1)
    }

    /// The Maildir base name (a `cur/` file's `:2,<flags>` suffix dropped).
    fn file_name(&self) -> Option<&str> {
        let name = self.path.file_name()?.to_str()?;
        Some(name.split_once(':').map_or(name, |(base, _)| base))
    }
}

/// The messages in the Maildir (`new/` and `cur/`) that `predicate` accepts, read once now.
/// `seen` names files already looked at, which are skipped, and so are earlier runs' files.
fn scan(
    predicate: &impl Fn(&ReceivedMail) -> bool,
    seen: &mut HashSet<String>,
) -> Vec<ReceivedMail> {
    let root = maildir();
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let dir = root.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let base = name
                .split_once(':')
                .map_or(name, |(base, _)| base)
                .to_owned();
            if seen.contains(&base) || before_this_process(&base) {
                continue;
            }
            let mail = match ReceivedMail::read(&path) {
                Ok(mail) => mail,
                // Moved from new/ to cur/ meanwhile: found there on the next look.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", path.display()),
            };
            seen.insert(base);
            if predicate(&mail) {
                found.push(mail);
            }
        }
    }
    found
}

/// Files named before this (nanoseconds since the epoch) came before this test process and
/// are not read: the shared Maildir keeps every earlier run's mail. A minute before the
/// process started, for the coarseness of the kernel's boot time; 0 (read everything) where
/// `/proc` does not say.
static SKIP_BEFORE_NS: LazyLock<u128> = LazyLock::new(|| {
    process_start()
        .and_then(|start| start.checked_sub(Duration::from_secs(60)))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
});

/// Linux: boot time (`/proc/stat` btime) plus the process's start in clock ticks
/// (`/proc/self/stat` field 22; USER_HZ is 100).
fn process_start() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 10))
}

/// Whether a file name's arrival time (`<ns>.<id>.tocsin`) is older than this process.
fn before_this_process(name: &str) -> bool {
    name.split('.')
        .next()
        .and_then(|ns| ns.parse::<u128>().ok())
        .is_some_and(|ns| ns < *SKIP_BEFORE_NS)
}

fn arrival_order(mail: &mut [ReceivedMail]) {
    // File names begin with the time of arrival in nanoseconds, all of the same width.
    mail.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
}

/// The messages received since this process started that `predicate` accepts, in arrival
/// order; for checking that something did *not* arrive.
pub fn received(predicate: impl Fn(&ReceivedMail) -> bool) -> Vec<ReceivedMail> {
    let mut found = scan(&predicate, &mut HashSet::new());
    arrival_order(&mut found);
    found
}

/// Waits until at least `count` messages received since this process started satisfy
/// `predicate` and returns them all, in arrival order; panics after `timeout`, saying how
/// many had come.
pub async fn wait_for(
    predicate: impl Fn(&ReceivedMail) -> bool,
    count: usize,
    timeout: Duration,
) -> Vec<ReceivedMail> {
    let deadline = Instant::now() + timeout;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    loop {
        found.extend(scan(&predicate, &mut seen));
        if found.len() >= count {
            arrival_order(&mut found);
            return found;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {count} expected messages in {} after {timeout:?}",
                found.len(),
                maildir().display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, Deserialize)]
struct Verdict {
    path: String,
    ok: bool,
    error: Option<String>,
}

/// Checks the (first) DKIM signature of each file with dkimpy, `txt_record` standing for
/// the DNS record of the signature's selector and domain (`v=DKIM1; k=rsa; p=...` or
/// `k=ed25519`): nothing is looked up. One verdict per path, in order; `Err` holds dkimpy's
/// reason. Panics when the verifier cannot run (the stack's virtualenv is missing).
pub fn dkim_verify(
    paths: &[impl AsRef<Path>],
    txt_record: &str,
) -> Vec<(PathBuf, Result<(), String>)> {
    if paths.is_empty() {
        return Vec::new();
    }
    let python = stack_dir().join("venv").join("bin").join("python");
    let script = repo_root()
        .join("deploy")
        .join("local")
        .join("dkim_verify.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg("--txt")
        .arg(txt_record)
        .args(paths.iter().map(AsRef::as_ref))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} cannot run ({e}); `deploy/local/stack.sh install` makes it",
                python.display()
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "dkim_verify.py failed ({}): {stderr}",
        output.status
    );
    let verdicts: Vec<Verdict> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("dkim_verify.py printed {line:?}: {e}"))
        })
        .collect();
    assert_eq!(
        verdicts.len(),
        paths.len(),
        "dkim_verify.py gave {} verdicts for {} files: {stderr}",
        verdicts.len(),
        paths.len()
    );
    paths
        .iter()
        .zip(verdicts)
        .map(|(path, verdict)| {
            let path = path.as_ref().to_path_buf();
            assert_eq!(Path::new(&verdict.path), path, "verdicts out of order");
            let result = if verdict.ok {
                Ok(())
            } else {
                Err(verdict.error.unwrap_or_else(|| "not verified".to_owned()))
            };
            (path, result)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> ReceivedMail {
        ReceivedMail::parse(PathBuf::from("m"), raw.to_vec())
    }

    #[test]
    fn folded_headers_are_unfolded_and_the_body_kept_as_is() {
        let raw = b"From: a@example.com\r\n\
            Subject: a long\r\n \tsubject\r\n  on three lines\r\n\
            DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n\
            To:b@example.com\r\n\
            \r\n\
            body line\r\n\r\n.dot\r\n";
        let mail = parse(raw);
        assert_eq!(
            mail.headers,
            vec![
                ("From".to_owned(), "a@example.com".to_owned()),
                (
                    "Subject".to_owned(),
                    "a long \tsubject  on three lines".to_owned()
                ),
                (
                    "DKIM-Signature".to_owned(),
                    "v=1; a=rsa-sha256;\tb=abc".to_owned()
                ),
                ("To".to_owned(), "b@example.com".to_owned()),
            ]
        );
        assert_eq!(mail.body, b"body line\r\n\r\n.dot\r\n");
        assert_eq!(mail.raw, raw);
        assert_eq!(mail.header("subject"), mail.header("SUBJECT"));
        assert_eq!(mail.header("x-missing"), None);
    }

    #[test]
    fn repeated_fields_keep_their_order() {
        let mail = parse(b"Received: one\r\nX: y\r\nReceived: two\r\n\r\n");
        assert_eq!(
            mail.header_all("received").collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(mail.header("Received"), Some("one"));
        assert!(mail.body.is_empty());
    }

    #[test]
    fn bare_line_feeds_and_a_missing_body_are_read_too() {
        let mail = parse(b"A: 1\n b\nC: 2\n\nbody\n");
        assert_eq!(mail.header("a"), Some("1 b"));
        assert_eq!(mail.header("c"), Some("2"));
        assert_eq!(mail.body, b"body\n");

        let mail = parse(b"A: 1\r\nB: 2\r\n");
        assert_eq!(mail.headers.len(), 2);
        assert!(mail.body.is_empty());

        let mail = parse(b"\r\nonly a body\r\n");
        assert!(mail.headers.is_empty());
        assert_eq!(mail.body, b"only a body\r\n");
    }

    #[test]
    fn only_this_process_s_mail_is_read() {
        let start = process_start().expect("/proc tells the process's start");
        let age = SystemTime::now()
            .duration_since(start)
            .expect("started in the past");
        assert!(age < Duration::from_secs(3600), "started {age:?} ago");
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos();
        assert!(!before_this_process(&format!(
            "{now_ns}.0123456789abcdef.tocsin"
        )));
        assert!(before_this_process(
            "1796000000000000000.0123456789abcdef.tocsin"
        ));
        assert!(!before_this_process("not-a-time.tocsin"));
    }

    #[test]
    fn the_queue_id_comes_from_the_file_name() {
        let mail = ReceivedMail::parse(
            PathBuf::from("/m/cur/1796013195218567887.36b12ec3ff599eb3.tocsin:2,S"),
            Vec::new(),
        );
        assert_eq!(mail.queue_id(), Some("36b12ec3ff599eb3"));
    }
}
