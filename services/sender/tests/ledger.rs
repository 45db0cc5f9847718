//! The send ledger against the real Redis: an ending never overwrites another instance's
//! outcome or claim, and records keep what a replay needs.

mod support;

use tocsin_integration_tests::stack;
use tocsin_sender::ledger::{Claim, Ending, Ledger};

async fn ledger(instance: &str) -> Ledger {
    let config = support::config(&support::env("ledger", &[]));
    let redis = redis::aio::ConnectionManager::new(
        redis::Client::open(config.redis.url.as_str()).expect("url"),
    )
    .await
    .expect("redis");
    Ledger::new(redis, instance, 120_000, 3_600_000)
}

fn cancelled() -> Ending<'static> {
    Ending {
        kind: "cancelled",
        reason: "REASON_UNSPECIFIED",
        provider: "",
        hard_bounce: false,
        detail: "the campaign was cancelled",
    }
}

#[tokio::test]
async fn an_ending_never_replaces_a_send_or_another_instances_claim() {
    let a = ledger(&stack::unique("a")).await;
    let b = ledger(&stack::unique("b")).await;
    a.heartbeat(60_000).await.expect("heartbeat");

    // Sent by A, then redelivered to B after a cancel: B must report the send.
    let key = stack::unique("sent");
    assert_eq!(a.claim(&key).await.expect("claim"), Claim::New);
    a.sent(&key, "smtp_local", "q-1", 1).await.expect("sent");
    let kept = b.failed(&key, &cancelled()).await.expect("failed");
    assert!(matches!(kept, Some(Claim::Sent { ref provider, .. }) if provider == "smtp_local"));
    assert!(matches!(
        b.peek(&key).await.expect("peek"),
        Some(Claim::Sent { .. })
    ));

    // A is sending another one: B's ending is refused and says who holds it.
    let key = stack::unique("busy");
    assert_eq!(a.claim(&key).await.expect("claim"), Claim::New);
    let kept = b.failed(&key, &cancelled()).await.expect("failed");
    assert!(matches!(kept, Some(Claim::Busy { .. })), "{kept:?}");
    // A's own ending goes over its own claim, and keeps the bounce for a replay.
    let bounce = Ending {
        kind: "bounced",
        reason: "REASON_MAILBOX_UNAVAILABLE",
        provider: "smtp_local",
        hard_bounce: true,
        detail: "550 5.1.1 no such user",
    };
    assert_eq!(a.failed(&key, &bounce).await.expect("failed"), None);
    assert_eq!(
        b.peek(&key).await.expect("peek"),
        Some(Claim::Failed {
            kind: "bounced".into(),
            reason: "REASON_MAILBOX_UNAVAILABLE".into(),
            provider: "smtp_local".into(),
            hard_bounce: true,
            detail: "550 5.1.1 no such user".into(),
        })
    );
}
