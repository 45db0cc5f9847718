//! E-mail through the real SMTP server of the local stack (aiosmtpd, STARTTLS, AUTH): each
//! message received exactly once, its headers as the renderer wrote them, and every DKIM
//! signature verified by an independent verifier (dkimpy) with the published key.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tocsin_contracts::v1;
use tocsin_integration_tests::mail::{self, ReceivedMail};
use tocsin_integration_tests::stack::{self, TopicReader};
use tocsin_renderer::compose::Message;

async fn deliver(test: &str, n: usize, key: &support::DkimKey) {
    let run = stack::unique(test);
    let mut extra = support::smtp_provider("smtp_test", Some(key));
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "email", providers = [{name = "smtp_test"}]}]"#.into(),
    ));
    let env = support::env(test, &extra);
    let config = support::config(&env);
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let messages = support::rendered(&run, v1::Channel::Email, n, 3600);
    let producer = stack::producer(&config.kafka);
    support::publish(&producer, &topics, &messages).await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = std::time::Instant::now();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));

    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(180), |r| r.len() >= n)
        .await;
    // Sender start (consumer group join included) to the last feedback.
    let elapsed = started.elapsed();
    println!(
        "{test}: {n} e-mails sent in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let received = mail::wait_for(
        |m: &ReceivedMail| m.header("To").is_some_and(|to| to.contains(&run)),
        n,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(());
    sender
        .await
        .expect("sender task")
        .expect("sender ran and stopped cleanly");

    // Exactly once each.
    let all = mail::received(|m: &ReceivedMail| m.header("To").is_some_and(|to| to.contains(&run)));
    assert_eq!(all.len(), n, "no message twice, none missing");
    assert_eq!(received.len(), n);
    let expected: HashMap<String, &v1::RenderedEmail> = messages
        .iter()
        .map(|m| match m {
            Message::Email(e) => (e.message_id.clone(), e),
            Message::Sms(_) => unreachable!("e-mails only"),
        })
        .collect();
    let mut seen = HashSet::new();
    for mail in &all {
        let id = mail.header("Message-ID").expect("Message-ID").to_owned();
        assert!(seen.insert(id.clone()), "{id} twice");
        let sent = expected
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was not rendered"));
        // Headers as rendered.
        for h in &sent.headers {
            assert_eq!(mail.header(&h.name), Some(h.value.as_str()), "{}", h.name);
        }
        assert_eq!(mail.header("Subject"), Some(sent.subject.as_str()));
        assert!(
            mail.header("From")
                .is_some_and(|f| f.contains("campagnes@tocsin.localhost"))
        );
        assert!(mail.header("Date").is_some());
        let signature = mail.header("DKIM-Signature").expect("signed");
        let signed: Vec<String> = signature
            .split(';')
            .map(str::trim)
            .find_map(|tag| tag.strip_prefix("h="))
            .expect("h= tag")
            .split(':')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for header in tocsin_sender::providers::smtp::SIGNED_HEADERS {
            assert!(
                signed.contains(&header.to_ascii_lowercase()),
                "{header} signed: {signature}"
            );
        }
        let envelope = mail.envelope.as_ref().expect("envelope");
        assert_eq!(envelope.tls, "starttls");
        assert_eq!(envelope.rcpt_tos, std::slice::from_ref(&sent.to));
    }

    // Every signature verifies with the published key; a changed byte does not.
    let paths: Vec<_> = all.iter().map(|m| m.path.clone()).collect();
    let verdicts = mail::dkim_verify(&paths, &key.txt);
    let failed: Vec<_> = verdicts.iter().filter(|(_, v)| v.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} fail: {:?}",
        failed.len(),
        failed.first()
    );
    let tampered = std::env::temp_dir().join(format!("{run}.eml"));
    let mut raw = all[0].raw.clone();
    let at = raw.len() - 10;
    raw[at] = if raw[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&tampered, raw).expect("write tampered copy");
    let verdict = mail::dkim_verify(&[&tampered], &key.txt);
    assert!(verdict[0].1.is_err(), "a changed body byte must not verify");
    let _ = std::fs::remove_file(tampered);

    // One Feedback(sent) each, with the server's queue id.
    let by_key = support::by_key(&feedback);
    assert_eq!(by_key.len(), n);
    let queue_ids: HashSet<String> = all
        .iter()
        .filter_map(|m| m.envelope.as_ref().map(|e| e.queue_id.clone()))
        .collect();
    for events in by_key.values() {
        assert_eq!(events.len(), 1, "{events:?}");
        let f = &events[0];
        assert_eq!(f.kind(), v1::FeedbackKind::Sent);
        assert_eq!(f.provider, "smtp_test");
        assert_eq!(f.attempt, 1);
        assert!(
            queue_ids.contains(&f.provider_message_id),
            "provider id {} is the server's queue id",
            f.provider_message_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_emails_arrive_once_each_as_rendered_and_rsa_signed() {
    deliver("smtp-rsa", 1000, &support::rsa_key()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signatures_verify_too() {
    deliver("smtp-ed25519", 20, &support::ed25519_key()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_holds_messages_instead_of_failing_them() {
    let run = stack::unique("smtp-auth");
    let mut extra = support::smtp_provider("smtp_test", None);
    for (k, v) in extra.iter_mut() {
        if k.ends_with("__API__PASSWORD") {
            *v = "not-the-password".into();
        }
    }
    extra.push((
        "TOCSIN__SENDER__ROUTES".into(),
        r#"[{channel = "email", providers = [{name = "smtp_test"}]}]"#.into(),
    ));
    let config = support::config(&support::env("smtp-auth", &extra));
    let topics = config.kafka.topics.clone();
    tocsin_bus::admin::ensure_topics(&config.kafka, &topics.all())
        .await
        .expect("topics");
    let messages = support::rendered(&run, v1::Channel::Email, 3, 30);
    support::publish(&stack::producer(&config.kafka), &topics, &messages).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(tocsin_sender::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let feedback = TopicReader::new(&topics.feedback.name)
        .read_until::<v1::Feedback>(Duration::from_secs(60), |r| r.len() >= 3)
        .await;
    let _ = stop.send(());
    sender.await.expect("task").expect("sender stopped cleanly");
    for f in &feedback {
        let f = &f.event;
        assert_eq!(
            f.kind(),
            v1::FeedbackKind::Expired,
            "held until its expiry, never failed for a credentials problem: {f:?}"
        );
    }
    // Messages that came while the circuit was open never reached the server; the others
    // say why they could not leave.
    assert!(
        feedback
            .iter()
            .any(|f| f.event.detail.contains("SMTP credentials refused")),
        "{feedback:?}"
    );
    assert!(
        mail::received(|m: &ReceivedMail| m.header("To").is_some_and(|to| to.contains(&run)))
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_delivers_on_one_reused_connection() {
    use tocsin_sender::providers::smtp::{SmtpConfig, SmtpProvider, TlsMode};
    use tocsin_sender::providers::{Outgoing, Provider};

    let run = stack::unique("smtp-smtps");
    let (user, password) = mail::smtp_credentials();
    let provider = SmtpProvider::new(
        "smtps_test",
        &SmtpConfig {
            host: "127.0.0.1".into(),
            port: mail::smtps_port(),
            tls: TlsMode::Tls,
            username: Some(user),
            password: Some(password.into()),
            ca_file: Some(mail::tls_ca_pem_path()),
            pool_size: 2,
            timeout_ms: 20_000,
            dkim: None,
        },
    )
    .expect("provider");
    let messages = support::rendered(&run, v1::Channel::Email, 3, 3600);
    let mut ids = Vec::new();
    for m in &messages {
        let Message::Email(email) = m else {
            unreachable!("e-mails only")
        };
        // One after the other: the same connection each time.
        let accepted = provider
            .send(Outgoing::Email(email))
            .await
            .expect("accepted");
        ids.push(accepted.provider_message_id);
    }
    let received = mail::wait_for(
        |m: &ReceivedMail| m.header("To").is_some_and(|to| to.contains(&run)),
        3,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(received.len(), 3);
    let envelopes: Vec<_> = received
        .iter()
        .map(|m| m.envelope.clone().expect("envelope"))
        .collect();
    assert!(envelopes.iter().all(|e| e.tls == "smtps"), "{envelopes:?}");
    let peers: HashSet<_> = envelopes.iter().map(|e| e.peer.clone()).collect();
    assert_eq!(peers.len(), 1, "one connection for all three: {peers:?}");
    let queue_ids: HashSet<_> = envelopes.iter().map(|e| e.queue_id.clone()).collect();
    for id in &ids {
        assert!(queue_ids.contains(id), "{id} is a queue id of the server");
    }
}
