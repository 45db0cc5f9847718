//! A scripted SMTP server on 127.0.0.1 for the provider's unit tests: plaintext, AUTH PLAIN
//! accepted or refused, replies chosen by the test, and counts of what it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// The reply to AUTH.
    pub auth: &'static str,
    /// The reply to every RCPT.
    pub rcpt: &'static str,
    /// The message (counted over all connections, from 1) after whose final `.` the server
    /// closes the connection without answering.
    pub vanish_after_message: Option<usize>,
    /// Each connection is closed after this many messages answered on it, as a server
    /// drops an idle client.
    pub messages_per_connection: Option<usize>,
    /// A wait before answering a message's final `.`.
    pub slow_data: Duration,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            auth: "235 2.7.0 Authentication successful",
            rcpt: "250 2.1.5 OK",
            vanish_after_message: None,
            messages_per_connection: None,
            slow_data: Duration::ZERO,
        }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    open: AtomicUsize,
    /// The most connections open at once.
    pub max_open: AtomicUsize,
    pub auths: AtomicUsize,
    pub mails: AtomicUsize,
    /// Messages received whole (final `.` included), answered or not.
    pub messages: AtomicUsize,
    pub quits: AtomicUsize,
}

impl Seen {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(SeqCst)
    }
}

#[derive(Debug)]
pub struct FakeServer {
    pub port: u16,
    pub seen: Arc<Seen>,
}

pub async fn start(script: Script) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = Arc::new(Seen::default());
    let script = Arc::new(script);
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (script, seen) = (Arc::clone(&script), Arc::clone(&counts));
            tokio::spawn(async move {
                seen.connections.fetch_add(1, SeqCst);
                let open = seen.open.fetch_add(1, SeqCst) + 1;
                seen.max_open.fetch_max(open, SeqCst);
                let _ = session(socket, &script, &seen).await;
                seen.open.fetch_sub(1, SeqCst);
            });
        }
    });
    FakeServer { port, seen }
}

/// One connection; returning closes it.
async fn session(socket: TcpStream, script: &Script, seen: &Seen) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let mut answered = 0;
    write.write_all(b"220 fake.test ESMTP\r\n").await?;
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => "250-fake.test\r\n250-AUTH PLAIN\r\n250 8BITMIME".to_owned(),
            "AUTH" => {
                seen.auths.fetch_add(1, SeqCst);
                script.auth.to_owned()
            }
            "MAIL" => {
                seen.mails.fetch_add(1, SeqCst);
                "250 2.1.0 OK".to_owned()
            }
            "RCPT" => script.rcpt.to_owned(),
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                loop {
                    line.clear();
                    if read.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                let n = seen.messages.fetch_add(1, SeqCst) + 1;
                if script.vanish_after_message == Some(n) {
                    return Ok(());
                }
                tokio::time::sleep(script.slow_data).await;
                write
                    .write_all(format!("250 2.0.0 Ok: queued as Q{n}\r\n").as_bytes())
                    .await?;
                answered += 1;
                if script.messages_per_connection == Some(answered) {
                    return Ok(());
                }
                continue;
            }
            "QUIT" => {
                seen.quits.fetch_add(1, SeqCst);
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            "RSET" | "NOOP" => "250 2.0.0 OK".to_owned(),
            _ => "502 5.5.2 Command not recognized".to_owned(),
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
