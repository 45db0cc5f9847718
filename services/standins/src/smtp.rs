//! An SMTP sink for load tests of the SMTP provider: it accepts whatever a client sends,
//! counts it, and spots messages sent twice by their `Message-ID`.
//!
//! It speaks the ESMTP of RFC 5321 that lettre (and a person typing into `nc`) uses: the
//! greeting `220 <host> ESMTP tocsin-standins`; `EHLO` (advertising `PIPELINING`,
//! `8BITMIME`, `SMTPUTF8`, `ENHANCEDSTATUSCODES`, `SIZE 52428800` and `AUTH PLAIN LOGIN`)
//! and `HELO`; `AUTH PLAIN` and `AUTH LOGIN`, any credentials accepted (`235`); `MAIL FROM`,
//! `RCPT TO`, `DATA` (`354`, then lines until `.`, dot-stuffing undone, then
//! `250 2.0.0 OK queued as <id>`); `RSET`, `NOOP`, `VRFY` (`252`), `QUIT` (`221`). An
//! unknown command gets `500`, one out of sequence (`DATA` before `RCPT TO`, `MAIL` before
//! `EHLO`...) `503`, bad syntax `501`. Commands are case-insensitive.
//!
//! There is no TLS: the sink runs on loopback next to a sender configured with
//! `tls = "none"`, and encryption would only measure the sink's CPU, not the sender.
//!
//! Per accepted message it counts the message, its recipients and its bytes (as the client
//! meant them: after undoing dot-stuffing, line ends included), and reads the `Message-ID`
//! header (name in any case, value possibly folded, header block only). A Message-ID
//! already accepted makes the message a duplicate; a message without one is counted in
//! `without_message_id`. No message is kept: a seen Message-ID costs 16 bytes (the first
//! half of its SHA-256), so a million of them stay small.
//!
//! Built not to be the bottleneck of a load test of tens of thousands of messages a second
//! over a few connections: one task per connection; one reused buffer per connection for
//! lines and one for replies (no allocation per line); replies written only once no
//! complete command waits in the read buffer, so a pipelined group gets its replies in one
//! write while a client that waits for each reply gets it at once; counters are atomics,
//! and the set of seen ids is behind a mutex held for one insert. With `smtp_quick_ack`,
//! each message's data is acknowledged at once (`TCP_QUICKACK`, see [`acknowledge_now`]):
//! a client that sends the final `.` in a second write without `TCP_NODELAY` (lettre
//! 0.11) would otherwise wait 40 ms for a delayed ACK, capping each connection at 25
//! messages a second. Off by default, so that a load test meets what a real relay does.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::state::{State, fingerprint, lock};

/// The largest message accepted, as `EHLO` advertises it with `SIZE`: 50 MiB.
pub const MAX_MESSAGE_BYTES: u64 = 52_428_800;

/// The longest line read. A longer one ends the connection, so that a client that never
/// sends a line end cannot make the sink buffer for ever. Far above SMTP's 1,000 bytes
/// (RFC 5321 §4.5.3.1.6) so that a sloppy client's long lines still pass.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// The name the sink greets with.
const HOST: &str = "localhost";

const EHLO_REPLY: &str = "250-localhost\r\n\
    250-PIPELINING\r\n\
    250-8BITMIME\r\n\
    250-SMTPUTF8\r\n\
    250-ENHANCEDSTATUSCODES\r\n\
    250-SIZE 52428800\r\n\
    250 AUTH PLAIN LOGIN\r\n";

/// The SMTP sink's counters, as `GET /_standin/stats` shows them under `smtp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpStats {
    /// Messages accepted (`250` after `DATA`), duplicates included.
    pub accepted: u64,
    /// Recipients (`RCPT TO`) of the accepted messages.
    pub recipients: u64,
    /// Bytes of the accepted messages, after undoing dot-stuffing, line ends included.
    pub bytes: u64,
    /// Accepted messages whose Message-ID had already been accepted: each one is a message
    /// sent twice.
    pub duplicates: u64,
    /// Accepted messages without a `Message-ID` header (never counted as duplicates).
    pub without_message_id: u64,
    /// Connections accepted.
    pub connections: u64,
}

/// What the sink has received since it started or was last reset.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    accepted: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    duplicates: AtomicU64,
    without_message_id: AtomicU64,
    connections: AtomicU64,
    /// The last queue id handed out. Not reset, so that no two answers of a process share
    /// an id.
    queue_ids: AtomicU64,
    seen: Mutex<HashSet<u128>>,
}

impl Sink {
    fn connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted message and returns its queue id.
    fn accept(&self, recipients: u64, bytes: u64, message_id: Option<&[u8]>) -> u64 {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.recipients.fetch_add(recipients, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        match message_id {
            None => {
                self.without_message_id.fetch_add(1, Ordering::Relaxed);
            }
            Some(id) => {
                // Hashed before taking the lock, which is then held for one insert.
                let print = fingerprint(id);
                if !lock(&self.seen).insert(print) {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.queue_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn stats(&self) -> SmtpStats {
        SmtpStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            recipients: self.recipients.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            without_message_id: self.without_message_id.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// Forgets the counters and the seen Message-IDs.
    pub(crate) fn reset(&self) {
        for counter in [
            &self.accepted,
            &self.recipients,
            &self.bytes,
            &self.duplicates,
            &self.without_message_id,
            &self.connections,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        lock(&self.seen).clear();
    }
}

/// `line` without its line end: CRLF, or a bare LF from a lenient client.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One line of `DATA` as the client meant it: `None` for the line `.` that ends the
/// message, else the line without the dot that dot-stuffing put before any line starting
/// with a dot (RFC 5321 §4.5.2).
fn unstuff(line: &[u8]) -> Option<&[u8]> {
    if strip_eol(line) == b"." {
        return None;
    }
    Some(line.strip_prefix(b".").unwrap_or(line))
}

/// The value of header line `line` when its name is `name` (in any case), else `None`.
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = line.split_at_checked(name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    // RFC 5322's obsolete syntax allows white space before the colon.
    rest.trim_ascii_start().strip_prefix(b":")
}

/// Finds the `Message-ID` of a message read line by line, without keeping the message.
#[derive(Debug, Default)]
struct MessageIdScan {
    /// The first empty line has gone by: what follows is the body.
    past_headers: bool,
    /// The last header line was the Message-ID's, so a folded continuation belongs to it.
    in_message_id: bool,
    found: bool,
    /// The Message-ID's value, unfolded (RFC 5322 §2.2.3: the line ends removed).
    value: Vec<u8>,
}

impl MessageIdScan {
    /// Takes the next line of the message (dot-stuffing undone).
    fn line(&mut self, line: &[u8]) {
        if self.past_headers {
            return;
        }
        let line = strip_eol(line);
        match line.first() {
            None => {
                self.past_headers = true;
                self.in_message_id = false;
            }
            Some(b' ' | b'\t') => {
                if self.in_message_id {
                    self.value.extend_from_slice(line);
                }
            }
            Some(_) => {
                self.in_message_id = false;
                // The first Message-ID counts; a second one is ignored.
                if !self.found
                    && let Some(value) = header_value(line, b"message-id")
                {
                    self.found = true;
                    self.in_message_id = true;
                    self.value.extend_from_slice(value);
                }
            }
        }
    }

    /// The Message-ID, unfolded and trimmed; `None` when there was none, or an empty one.
    fn message_id(&self) -> Option<&[u8]> {
        let id = self.value.trim_ascii();
        (self.found && !id.is_empty()).then_some(id)
    }

    /// Ready for the next message; keeps the buffer's allocation.
    fn clear(&mut self) {
        self.past_headers = false;
        self.in_message_id = false;
        self.found = false;
        self.value.clear();
    }
}

/// What the connection does after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Read,
    Close,
}

/// Where a session is in RFC 5321's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `HELO` / `EHLO`.
    Connected,
    /// Greeted, no mail transaction.
    Greeted,
    /// After `MAIL FROM`, before any `RCPT TO`.
    Mail,
    /// After at least one `RCPT TO`.
    Rcpt,
    /// After `354`: message lines until the line `.`.
    Data,
    /// `AUTH PLAIN` without an initial response: the next line is the credentials.
    AuthPlain,
    /// `AUTH LOGIN`: the next line is the user name...
    AuthLoginUser,
    /// ...then the password.
    AuthLoginPassword,
}

/// One client's SMTP session: takes its lines, writes the replies into `out`, counts the
/// accepted messages in the sink. It knows nothing of sockets, so that a whole
/// conversation can be tested without one.
#[derive(Debug)]
struct Session<'a> {
    sink: &'a Sink,
    max_bytes: u64,
    phase: Phase,
    authenticated: bool,
    /// Recipients of the current transaction.
    recipients: u64,
    /// Bytes of the message being received.
    bytes: u64,
    message_id: MessageIdScan,
}

fn reply(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

const EHLO_FIRST: &str = "503 5.5.1 Send HELO or EHLO first";
const MAIL_FIRST: &str = "503 5.5.1 Send MAIL FROM first";
const OK: &str = "250 2.0.0 OK";
const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds the fixed maximum of 52428800 bytes";

impl<'a> Session<'a> {
    fn new(sink: &'a Sink, max_bytes: u64) -> Self {
        Session {
            sink,
            max_bytes,
            phase: Phase::Connected,
            authenticated: false,
            recipients: 0,
            bytes: 0,
            message_id: MessageIdScan::default(),
        }
    }

    fn greet(out: &mut Vec<u8>) {
        reply(out, &format!("220 {HOST} ESMTP tocsin-standins"));
    }

    /// Takes one line, line end included, and writes its reply (if any) into `out`.
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Next {
        match self.phase {
            Phase::Data => self.data_line(line, out),
            Phase::AuthPlain | Phase::AuthLoginPassword => {
                self.phase = Phase::Greeted;
                if strip_eol(line) == b"*" {
                    reply(out, AUTH_CANCELLED);
                } else {
                    self.authenticated = true;
                    reply(out, AUTH_OK);
                }
            }
            Phase::AuthLoginUser => {
                if strip_eol(line) == b"*" {
                    self.phase = Phase::Greeted;
                    reply(out, AUTH_CANCELLED);
                } else {
                    self.phase = Phase::AuthLoginPassword;
                    // "Password:" in base64.
                    reply(out, "334 UGFzc3dvcmQ6");
                }
            }
            Phase::Connected | Phase::Greeted | Phase::Mail | Phase::Rcpt => {
                return self.command(strip_eol(line), out);
            }
        }
        Next::Read
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Next {
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(at) => (&line[..at], line[at + 1..].trim_ascii()),
            None => (line, &b""[..]),
        };
        // Every verb the sink knows has four letters: compare them upper-cased, without
        // allocating.
        let mut upper = [0u8; 4];
        if let Ok(four) = <[u8; 4]>::try_from(verb) {
            upper = four;
            upper.make_ascii_uppercase();
        }
        match &upper {
            b"EHLO" | b"HELO" => {
                if arg.is_empty() {
                    reply(out, "501 5.5.4 Syntax: EHLO hostname");
                } else {
                    // A greeting also ends any transaction (RFC 5321 §4.1.4).
                    self.phase = Phase::Greeted;
                    self.recipients = 0;
                    if &upper == b"EHLO" {
                        out.extend_from_slice(EHLO_REPLY.as_bytes());
                    } else {
                        reply(out, &format!("250 {HOST}"));
                    }
                }
            }
            b"AUTH" => self.auth(arg, out),
            b"MAIL" => self.mail(arg, out),
            b"RCPT" => match self.phase {
                Phase::Connected => reply(out, EHLO_FIRST),
                Phase::Greeted => reply(out, MAIL_FIRST),
                _ if strip_prefix_ignore_case(arg, b"TO:").is_none() => {
                    reply(out, "501 5.5.4 Syntax: RCPT TO:<address>");
                }
                _ => {
                    self.phase = Phase::Rcpt;
                    self.recipients += 1;
                    reply(out, "250 2.1.5 OK");
                }
            },
            b"DATA" => match self.phase {
                Phase::Connected => reply(out, EHLO_FIRST),
                Phase::Greeted => reply(out, MAIL_FIRST),
                Phase::Mail => reply(out, "503 5.5.1 Send RCPT TO first"),
                _ => {
                    self.phase = Phase::Data;
                    self.bytes = 0;
                    self.message_id.clear();
                    reply(out, "354 End data with <CR><LF>.<CR><LF>");
                }
            },
            b"RSET" => {
                if matches!(self.phase, Phase::Mail | Phase::Rcpt) {
                    self.phase = Phase::Greeted;
                }
                self.recipients = 0;
                reply(out, OK);
            }
            b"NOOP" => reply(out, OK),
            b"VRFY" => reply(
                out,
                "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
            ),
            b"QUIT" => {
                reply(out, "221 2.0.0 Bye");
                return Next::Close;
            }
            _ => reply(out, "500 5.5.2 Command not recognized"),
        }
        Next::Read
    }

    fn auth(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        match self.phase {
            Phase::Connected => return reply(out, EHLO_FIRST),
            Phase::Greeted => {}
            _ => {
                return reply(
                    out,
                    "503 5.5.1 AUTH is not allowed during a mail transaction",
                );
            }
        }
        if self.authenticated {
            return reply(out, "503 5.5.1 Already authenticated");
        }
        let (mechanism, initial) = match arg.iter().position(|&b| b == b' ') {
            Some(at) => (&arg[..at], arg[at + 1..].trim_ascii()),
            None => (arg, &b""[..]),
        };
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            if initial.is_empty() {
                self.phase = Phase::AuthPlain;
                reply(out, "334 ");
            } else {
                self.authenticated = true;
                reply(out, AUTH_OK);
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            if initial.is_empty() {
                self.phase = Phase::AuthLoginUser;
                // "Username:" in base64.
                reply(out, "334 VXNlcm5hbWU6");
            } else {
                self.phase = Phase::AuthLoginPassword;
                reply(out, "334 UGFzc3dvcmQ6");
            }
        } else {
            reply(out, "504 5.5.4 Unrecognized authentication type");
        }
    }

    fn mail(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        match self.phase {
            Phase::Connected => return reply(out, EHLO_FIRST),
            Phase::Greeted => {}
            _ => return reply(out, "503 5.5.1 Nested MAIL command"),
        }
        let Some(rest) = strip_prefix_ignore_case(arg, b"FROM:") else {
            return reply(out, "501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        // A client that announces a message above the limit is refused before sending it.
        let announced = rest
            .split(|&b| b == b' ')
            .filter_map(|param| strip_prefix_ignore_case(param, b"SIZE="))
            .find_map(|size| std::str::from_utf8(size).ok()?.parse::<u64>().ok());
        if announced.is_some_and(|size| size > self.max_bytes) {
            return reply(out, TOO_BIG);
        }
        self.phase = Phase::Mail;
        self.recipients = 0;
        reply(out, "250 2.1.0 OK");
    }

    fn data_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(content) = unstuff(line) else {
            return self.end_of_data(out);
        };
        self.bytes += content.len() as u64;
        // Past the limit the message will be refused: no need to look at it.
        if self.bytes <= self.max_bytes {
            self.message_id.line(content);
        }
    }

    fn end_of_data(&mut self, out: &mut Vec<u8>) {
        let recipients = std::mem::take(&mut self.recipients);
        self.phase = Phase::Greeted;
        if self.bytes > self.max_bytes {
            reply(out, TOO_BIG);
        } else {
            let id = self
                .sink
                .accept(recipients, self.bytes, self.message_id.message_id());
            // Writing into a Vec cannot fail.
            let _ = write!(out, "250 2.0.0 OK queued as {id:016X}\r\n");
        }
        self.message_id.clear();
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = text.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// Serves one connection until the client quits or goes away.
async fn connection(stream: TcpStream, sink: &Sink, quick_ack: bool) -> std::io::Result<()> {
    // Every reply unblocks the client's next command: do not let Nagle hold it back.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut session = Session::new(sink, MAX_MESSAGE_BYTES);
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    Session::greet(&mut out);
    write.write_all(&out).await?;
    out.clear();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .await?;
        if line.last() != Some(&b'\n') {
            // The end of the stream (perhaps within a line), or a line too long to be one.
            if read as u64 >= MAX_LINE_BYTES {
                reply(&mut out, "500 5.5.6 Line too long");
            }
            if !out.is_empty() {
                write.write_all(&out).await?;
            }
            return Ok(());
        }
        let next = session.line(&line, &mut out);
        // Whether the next line is still to come from the socket.
        let drained = !reader.buffer().contains(&b'\n');
        // Answer once no complete command is waiting: a pipelined group gets its replies in
        // one write, a client that waits for each reply gets it at once.
        if !out.is_empty() && (next == Next::Close || drained) {
            write.write_all(&out).await?;
            out.clear();
        }
        if next == Next::Close {
            return Ok(());
        }
        if quick_ack && drained && session.phase == Phase::Data {
            acknowledge_now(reader.get_ref().as_ref());
        }
    }
}

/// Acknowledges the data received so far at once, instead of after the kernel's delayed-ACK
/// timer (40 ms on Linux).
///
/// lettre writes a message and then its final `\r\n.\r\n` in two writes, on a socket
/// without `TCP_NODELAY`: Nagle's algorithm holds the second write until the first is
/// acknowledged, and a server with nothing to answer yet delays that acknowledgement. Each
/// message then waits 40 ms, and 16 connections carry at most 400 messages a second,
/// whatever the server. `TCP_QUICKACK` sends the pending acknowledgement now (the flag is
/// not sticky, hence once per message, when the sink has read all it was sent of it).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn acknowledge_now(stream: &TcpStream) {
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_quickack(true) {
        tracing::debug!(error = %err, "cannot set TCP_QUICKACK");
    }
}

/// Elsewhere there is no portable way: a client that writes twice before reading waits
/// for the delayed acknowledgement.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn acknowledge_now(_stream: &TcpStream) {}

/// Accepts SMTP connections on `listener` for ever, one task each, counting into the
/// state's sink. Dropping the future ends every connection with it.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) -> Infallible {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    state.smtp.connected();
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        if let Err(err) = connection(stream, &state.smtp, state.smtp_quick_ack).await {
                            tracing::debug!(%peer, error = %err, "SMTP connection ended");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors, most likely: let connections close rather
                    // than spin on the error.
                    tracing::warn!(error = %err, "the SMTP sink cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = done {
                    tracing::error!(error = %err, "an SMTP connection task failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to `session` line by line and returns the replies.
    fn talk(session: &mut Session<'_>, input: &str) -> String {
        let mut out = Vec::new();
        for line in input.as_bytes().split_inclusive(|&b| b == b'\n') {
            session.line(line, &mut out);
        }
        String::from_utf8(out).expect("replies are ASCII")
    }

    fn codes(replies: &str) -> Vec<&str> {
        replies
            .lines()
            .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
            .map(|l| &l[..3])
            .collect()
    }

    fn message_id_of(message: &str) -> Option<String> {
        let mut scan = MessageIdScan::default();
        for line in message.as_bytes().split_inclusive(|&b| b == b'\n') {
            scan.line(line);
        }
        scan.message_id()
            .map(|id| String::from_utf8_lossy(id).into_owned())
    }

    #[test]
    fn unstuffing_removes_one_leading_dot_and_spots_the_end() {
        assert_eq!(unstuff(b".\r\n"), None);
        assert_eq!(unstuff(b".\n"), None);
        assert_eq!(unstuff(b"..\r\n"), Some(&b".\r\n"[..]));
        assert_eq!(unstuff(b"..dot first\r\n"), Some(&b".dot first\r\n"[..]));
        assert_eq!(unstuff(b"...\r\n"), Some(&b"..\r\n"[..]));
        assert_eq!(unstuff(b". \r\n"), Some(&b" \r\n"[..]));
        assert_eq!(unstuff(b"a. b.\r\n"), Some(&b"a. b.\r\n"[..]));
        assert_eq!(unstuff(b"\r\n"), Some(&b"\r\n"[..]));
    }

    #[test]
    fn the_message_id_is_found_in_any_case_folded_and_only_in_the_headers() {
        assert_eq!(
            message_id_of("From: a@x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n").as_deref(),
            Some("<1@x>")
        );
        assert_eq!(
            message_id_of("message-id:<2@x>  \r\nSubject: s\r\n\r\n").as_deref(),
            Some("<2@x>")
        );
        assert_eq!(
            message_id_of("MESSAGE-ID : <3@x>\r\n\r\n").as_deref(),
            Some("<3@x>")
        );
        // Folded onto the next line, or over two.
        assert_eq!(
            message_id_of("Message-Id:\r\n <4@x>\r\nSubject: s\r\n\r\n").as_deref(),
            Some("<4@x>")
        );
        assert_eq!(
            message_id_of("Message-Id: <5\r\n\t@x>\r\n\r\n").as_deref(),
            Some("<5\t@x>")
        );
        // A continuation of another header is not the Message-ID's.
        assert_eq!(
            message_id_of("Message-ID: <6@x>\r\nSubject: a\r\n long subject\r\n\r\n").as_deref(),
            Some("<6@x>")
        );
        // The first one counts.
        assert_eq!(
            message_id_of("Message-ID: <7@x>\r\nMessage-ID: <8@x>\r\n\r\n").as_deref(),
            Some("<7@x>")
        );
        // In the body, after the empty line, it is text.
        assert_eq!(
            message_id_of("Subject: s\r\n\r\nMessage-ID: <9@x>\r\n"),
            None
        );
        assert_eq!(message_id_of("Message-IDs: <10@x>\r\n\r\n"), None);
        assert_eq!(message_id_of("X-Message-ID: <11@x>\r\n\r\n"), None);
        assert_eq!(message_id_of("Message-ID:   \r\n\r\n"), None);
        // Bare LF line ends work too.
        assert_eq!(
            message_id_of("Message-ID: <12@x>\n\n").as_deref(),
            Some("<12@x>")
        );
    }

    #[test]
    fn a_session_counts_messages_recipients_bytes_and_duplicates() {
        let sink = Sink::default();
        let mut session = Session::new(&sink, MAX_MESSAGE_BYTES);
        let message = "Message-ID: <a@x>\r\nSubject: s\r\n\r\n..starts with a dot\r\nbye\r\n";
        let sent = "Message-ID: <a@x>\r\nSubject: s\r\n\r\n.starts with a dot\r\nbye\r\n";
        let replies = talk(
            &mut session,
            &format!(
                "EHLO client\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n\
                 {message}.\r\n\
                 MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n{message}.\r\n\
                 MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<b@x>\r\nDATA\r\nSubject: none\r\n\r\nhi\r\n.\r\n"
            ),
        );
        assert_eq!(
            codes(&replies),
            [
                "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "250", "250",
                "354", "250"
            ]
        );
        assert!(replies.contains("250 2.0.0 OK queued as "), "{replies}");
        let stats = sink.stats();
        assert_eq!(stats.accepted, 3);
        assert_eq!(stats.recipients, 4);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.without_message_id, 1);
        let expected = 2 * sent.len() + "Subject: none\r\n\r\nhi\r\n".len();
        assert_eq!(stats.bytes, expected as u64);
    }

    #[test]
    fn commands_out_of_sequence_get_503_bad_syntax_501_unknown_500() {
        let sink = Sink::default();
        let mut session = Session::new(&sink, MAX_MESSAGE_BYTES);
        let replies = talk(
            &mut session,
            "MAIL FROM:<a@x>\r\nDATA\r\nEHLO\r\nhelo client\r\nRCPT TO:<b@x>\r\nDATA\r\n\
             mail from:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\nRCPT <b@x>\r\nrcpt to:<b@x>\r\n\
             RSET\r\nDATA\r\nMAIL <a@x>\r\nFROB\r\n\r\nSTARTTLS\r\nvrfy someone\r\nnoop\r\n\
             QUIT\r\n",
        );
        assert_eq!(
            codes(&replies),
            [
                "503", "503", "501", "250", "503", "503", "250", "503", "503", "501", "250", "250",
                "503", "501", "500", "500", "500", "252", "250", "221"
            ]
        );
        assert_eq!(sink.stats(), SmtpStats::default());
        let mut out = Vec::new();
        assert_eq!(session.line(b"QUIT\r\n", &mut out), Next::Close);
    }

    #[test]
    fn auth_plain_and_login_accept_any_credentials() {
        let sink = Sink::default();
        let plain = talk(
            &mut Session::new(&sink, MAX_MESSAGE_BYTES),
            "AUTH PLAIN AGEAYg==\r\nEHLO c\r\nauth plain AGEAYg==\r\nAUTH PLAIN AGEAYg==\r\n",
        );
        assert_eq!(codes(&plain), ["503", "250", "235", "503"]);
        let plain_asked = talk(
            &mut Session::new(&sink, MAX_MESSAGE_BYTES),
            "EHLO c\r\nAUTH PLAIN\r\nAGEAYg==\r\n",
        );
        assert_eq!(codes(&plain_asked), ["250", "334", "235"]);
        let login = talk(
            &mut Session::new(&sink, MAX_MESSAGE_BYTES),
            "EHLO c\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n",
        );
        assert_eq!(codes(&login), ["250", "334", "334", "235"]);
        let login_initial = talk(
            &mut Session::new(&sink, MAX_MESSAGE_BYTES),
            "EHLO c\r\nAUTH LOGIN dXNlcg==\r\ncGFzcw==\r\n",
        );
        assert_eq!(codes(&login_initial), ["250", "334", "235"]);
        let cancelled = talk(
            &mut Session::new(&sink, MAX_MESSAGE_BYTES),
            "EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\nMAIL FROM:<a@x>\r\nAUTH PLAIN x\r\n",
        );
        assert_eq!(
            codes(&cancelled),
            ["250", "334", "501", "504", "250", "503"]
        );
    }

    #[test]
    fn a_message_above_the_size_limit_is_refused_and_not_counted() {
        let sink = Sink::default();
        let mut session = Session::new(&sink, 20);
        let replies = talk(
            &mut session,
            "EHLO c\r\nMAIL FROM:<a@x> SIZE=21\r\nMAIL FROM:<a@x> SIZE=20\r\nRCPT TO:<b@x>\r\n\
             DATA\r\nMessage-ID: <big@x>\r\n\r\n.\r\n\
             MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nSubject: small\r\n.\r\n",
        );
        assert_eq!(
            codes(&replies),
            [
                "250", "552", "250", "250", "354", "552", "250", "250", "354", "250"
            ]
        );
        let stats = sink.stats();
        assert_eq!((stats.accepted, stats.recipients), (1, 1));
        assert_eq!(stats.bytes, "Subject: small\r\n".len() as u64);
    }

    #[test]
    fn reset_forgets_the_counts_and_the_seen_ids() {
        let sink = Sink::default();
        sink.connected();
        sink.accept(2, 10, Some(b"<a@x>"));
        sink.accept(1, 10, Some(b"<a@x>"));
        assert_eq!(sink.stats().duplicates, 1);
        sink.reset();
        assert_eq!(sink.stats(), SmtpStats::default());
        sink.accept(1, 10, Some(b"<a@x>"));
        assert_eq!(sink.stats().duplicates, 0);
        // Queue ids are never reused.
        assert_eq!(sink.accept(1, 10, None), 4);
    }
}
