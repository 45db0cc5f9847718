//! The SMTP sink through lettre, as the sender uses it (plain SMTP on loopback, a pool of
//! connections, one command at a time), and through a raw TCP client for what lettre never
//! sends: commands out of sequence, a pipelined batch, a folded Message-ID.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tocsin_standins::client::Running;
use tocsin_standins::{Config, SmtpStats};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinSet;

/// The sink acknowledges each message at once (lettre 0.11 would otherwise wait 40 ms per
/// message for a delayed ACK, and these tests would measure that instead of the sink).
async fn start() -> (Running, SocketAddr) {
    let running = Running::start(Config {
        smtp_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        smtp_quick_ack: true,
        record: false,
        ..Config::default()
    })
    .await
    .expect("the stand-ins start");
    let smtp = running.smtp.expect("the SMTP sink was asked for");
    assert!(smtp.ip().is_loopback());
    (running, smtp)
}

fn transport(
    smtp: SocketAddr,
    pool: u32,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .credentials(Credentials::new("anyone".into(), "any password".into()))
        .authentication(vec![mechanism])
        .pool_config(PoolConfig::new().max_size(pool))
        .build()
}

fn mailbox(text: &str) -> Mailbox {
    text.parse().expect("a valid address")
}

/// Message `n`: Message-ID `<n@tocsin.test>`; every tenth one also has a Cc recipient.
fn message(n: usize, body: &str) -> Message {
    let mut builder = Message::builder()
        .from(mailbox("Tocsin <noreply@tocsin.test>"))
        .to(mailbox(&format!("contact{n}@example.test")))
        .subject(format!("Message {n}"))
        .message_id(Some(format!("<{n}@tocsin.test>")));
    if n.is_multiple_of(10) {
        builder = builder.cc(mailbox(&format!("copy{n}@example.test")));
    }
    builder.body(body.to_owned()).expect("a valid message")
}

/// The bytes the sink should count for `message`: lettre sends it and then `\r\n.\r\n`, of
/// which the first line end is the message's last one (RFC 5321 §4.1.1.4).
fn sink_bytes(message: &Message) -> u64 {
    message.formatted().len() as u64 + 2
}

/// Sends `messages` from `workers` tasks at once over one pooled transport.
async fn send_all(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    messages: Vec<Message>,
    workers: usize,
) {
    let mut shares: Vec<Vec<Message>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, message) in messages.into_iter().enumerate() {
        shares[i % workers].push(message);
    }
    let mut tasks = JoinSet::new();
    for share in shares {
        let transport = transport.clone();
        tasks.spawn(async move {
            for message in share {
                let response = transport.send(message).await.expect("the sink accepts");
                let text = response.message().collect::<Vec<_>>().join(" ");
                assert!(text.contains("queued as "), "{text}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("no sending task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_through_a_pool_counts_messages_recipients_bytes_and_one_duplicate() {
    let (standin, smtp) = start().await;
    let plain = "Hello,\r\nthis is a load test.\r\n";
    let dotted = "Hello,\r\n.this line starts with a dot\r\n..and this one with two\r\n";
    let mut messages: Vec<Message> = (0..200)
        .map(|n| message(n, if n == 7 { dotted } else { plain }))
        .collect();
    let formatted = String::from_utf8(messages[7].formatted()).expect("ASCII");
    assert!(
        formatted.contains("\r\n.this line starts with a dot\r\n..and this one"),
        "lettre must send the dotted lines as they are, else they test nothing: {formatted}"
    );
    // Message 42 sent twice, as a sender that retries after a lost answer would.
    messages.push(message(42, plain));
    let expected_bytes: u64 = messages.iter().map(sink_bytes).sum();

    send_all(&transport(smtp, 16, Mechanism::Plain), messages, 16).await;

    let stats = standin.smtp_stats().await.expect("stats");
    assert_eq!(stats.accepted, 201);
    assert_eq!(stats.duplicates, 1);
    // 200 To, 20 Cc, and the second message 42.
    assert_eq!(stats.recipients, 221);
    assert_eq!(stats.without_message_id, 0);
    // Exactly what lettre meant to send: a dot added by dot-stuffing and left in would
    // count one byte too many.
    assert!(stats.bytes > 0);
    assert_eq!(stats.bytes, expected_bytes);
    assert!(stats.connections >= 1, "{stats:?}");

    // The other providers' counters keep their shape next to `smtp`.
    let twilio = standin
        .stats(tocsin_standins::Provider::Twilio)
        .await
        .expect("stats");
    assert_eq!(twilio.accepted, 0);

    standin.reset().await.expect("reset");
    assert_eq!(
        standin.smtp_stats().await.expect("stats"),
        SmtpStats::default()
    );
    // Reset forgot the seen Message-IDs: message 42 is new again.
    send_all(
        &transport(smtp, 1, Mechanism::Login),
        vec![message(42, plain)],
        1,
    )
    .await;
    let after = standin.smtp_stats().await.expect("stats");
    assert_eq!((after.accepted, after.duplicates), (1, 0));
}

/// Not a check of speed (no test asserts a time): prints what the sink takes from lettre
/// in this build, for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_2000_messages_over_16_connections() {
    let (standin, smtp) = start().await;
    let body = "Hello,\r\nthis is a load test of the SMTP sink.\r\n".repeat(10);
    let messages: Vec<Message> = (0..2000).map(|n| message(n, &body)).collect();
    let transport = transport(smtp, 16, Mechanism::Login);

    let started = Instant::now();
    send_all(&transport, messages, 16).await;
    let elapsed = started.elapsed();

    let stats = standin.smtp_stats().await.expect("stats");
    assert_eq!(stats.accepted, 2000);
    assert_eq!(stats.duplicates, 0);
    println!(
        "SMTP sink: 2000 messages from 16 lettre senders in {:.0} ms, {:.0} messages/s \
         ({} connections opened, {} bytes)",
        elapsed.as_secs_f64() * 1000.0,
        2000.0 / elapsed.as_secs_f64(),
        stats.connections,
        stats.bytes,
    );
}

/// A line-oriented SMTP client over a raw TCP connection.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(smtp: SocketAddr) -> Self {
        let stream = TcpStream::connect(smtp).await.expect("connects");
        let (read, writer) = stream.into_split();
        Raw {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .await
            .expect("the sink reads");
    }

    /// One line, empty at the end of the stream. A sink that never answers fails the test
    /// instead of hanging it.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), self.reader.read_line(&mut line))
            .await
            .expect("the sink answers")
            .expect("a readable reply");
        line
    }

    /// One reply, all its lines.
    async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let line = self.line().await;
            assert!(
                !line.is_empty(),
                "the sink hung up in the middle of {reply:?}"
            );
            reply.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return reply;
            }
        }
    }

    /// Sends one command and returns the code of its reply.
    async fn code(&mut self, command: &str) -> String {
        self.send(&format!("{command}\r\n")).await;
        self.reply().await[..3].to_owned()
    }
}

#[tokio::test]
async fn raw_commands_out_of_sequence_and_pipelined_get_the_right_replies() {
    let (standin, smtp) = start().await;
    let mut raw = Raw::connect(smtp).await;
    let greeting = raw.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(
        greeting.ends_with(" ESMTP tocsin-standins\r\n"),
        "{greeting}"
    );

    assert_eq!(raw.code("DATA").await, "503");
    raw.send("ehlo raw.test\r\n").await;
    let ehlo = raw.reply().await;
    for extension in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 52428800",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            ehlo.contains(&format!("250-{extension}\r\n"))
                || ehlo.contains(&format!("250 {extension}\r\n")),
            "{extension} in {ehlo}"
        );
    }
    assert_eq!(raw.code("DATA").await, "503");
    assert_eq!(raw.code("MAIL FROM:<a@raw.test>").await, "250");
    // DATA before RCPT TO.
    assert_eq!(raw.code("DATA").await, "503");
    assert_eq!(raw.code("MAIL FROM:<a@raw.test>").await, "503");
    assert_eq!(raw.code("RCPT TO:<b@raw.test>").await, "250");
    assert_eq!(raw.code("BOGUS").await, "500");
    assert_eq!(raw.code("vrfy b@raw.test").await, "252");
    assert_eq!(raw.code("Rset").await, "250");
    assert_eq!(raw.code("DATA").await, "503");
    assert_eq!(raw.code("AUTH LOGIN").await, "334");
    assert_eq!(raw.code("dXNlcg==").await, "334");
    assert_eq!(raw.code("cGFzcw==").await, "235");
    assert_eq!(standin.smtp_stats().await.expect("stats").accepted, 0);

    // Two transactions and QUIT in one write: each command still gets its own reply, in
    // order.
    let first = "message-id:\r\n <folded@raw.test>\r\nSubject: pipelined\r\n\r\n\
                 ..a line starting with a dot\r\n";
    let second = "Subject: no id\r\n\r\nhello\r\n";
    raw.send(&format!(
        "MAIL FROM:<a@raw.test>\r\nRCPT TO:<b@raw.test>\r\nRCPT TO:<c@raw.test>\r\nDATA\r\n\
         {first}.\r\n\
         MAIL FROM:<a@raw.test>\r\nRCPT TO:<b@raw.test>\r\nDATA\r\n{second}.\r\nNOOP\r\nQUIT\r\n"
    ))
    .await;
    let mut codes = Vec::new();
    for _ in 0..11 {
        let reply = raw.reply().await;
        if codes.len() == 4 {
            assert!(reply.starts_with("250 2.0.0 OK queued as "), "{reply}");
        }
        codes.push(reply[..3].to_owned());
    }
    assert_eq!(
        codes,
        [
            "250", "250", "250", "354", "250", "250", "250", "354", "250", "250", "221"
        ]
    );
    assert_eq!(raw.line().await, "", "the sink hangs up after QUIT");

    let stats = standin.smtp_stats().await.expect("stats");
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.recipients, 3);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.without_message_id, 1);
    let unstuffed = first.replacen("\r\n..a line", "\r\n.a line", 1);
    assert_eq!(stats.bytes, (unstuffed.len() + second.len()) as u64);
    assert_eq!(stats.connections, 1);

    // The same Message-ID, unfolded this time, on another connection: a duplicate.
    let mut again = Raw::connect(smtp).await;
    again.reply().await;
    assert_eq!(again.code("HELO raw.test").await, "250");
    assert_eq!(again.code("MAIL FROM:<a@raw.test>").await, "250");
    assert_eq!(again.code("RCPT TO:<b@raw.test>").await, "250");
    assert_eq!(again.code("DATA").await, "354");
    assert_eq!(
        again
            .code("Message-ID: <folded@raw.test>\r\nSubject: again\r\n\r\nhi\r\n.")
            .await,
        "250"
    );
    let stats = standin.smtp_stats().await.expect("stats");
    assert_eq!((stats.accepted, stats.duplicates), (3, 1));
    assert_eq!(stats.connections, 2);
}
