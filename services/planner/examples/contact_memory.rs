//! What one contact costs in Redis: loads N realistic contacts (profile, two segment
//! memberships) into an empty Redis database through the planner's own store code, and
//! prints `used_memory` per contact.
//!
//! ```sh
//! deploy/local/stack.sh up
//! cargo run --release -p tocsin-planner --example contact_memory -- 200000 redis://127.0.0.1:16379/9
//! ```

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use tocsin_contracts::{Timestamp, v1};
use tocsin_planner::keys;
use tocsin_planner::store;

fn used_memory(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn contact(i: usize) -> v1::Contact {
    let consent = |channel: v1::Channel| v1::Consent {
        channel: channel.into(),
        status: v1::ConsentStatus::Granted.into(),
        source: "petition-retraites-2026".into(),
        recorded_at: Some(Timestamp {
            seconds: 1_770_000_000 + i as i64,
            nanos: 0,
        }),
    };
    v1::Contact {
        id: format!("crm-{i:08}"),
        email: format!("camille.durand{i}@exemple-fournisseur.fr"),
        phone_e164: format!("+336{:08}", i % 100_000_000),
        first_name: "Camille".into(),
        last_name: "Durand-Lefèvre".into(),
        locale: "fr-FR".into(),
        time_zone: "Europe/Paris".into(),
        attributes: HashMap::from([
            ("commune".to_owned(), "Villeurbanne".to_owned()),
            ("code_postal".to_owned(), "69100".to_owned()),
            ("section".to_owned(), "Rhône-Nord".to_owned()),
        ]),
        consents: vec![consent(v1::Channel::Email), consent(v1::Channel::Sms)],
        updated_at: Some(Timestamp {
            seconds: 1_780_000_000,
            nanos: 0,
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:16379/9".to_owned());
    let client = redis::Client::open(url.as_str())?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    let before: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;

    // Through the planner's own code path, 64 scripts in flight on one connection.
    futures::stream::iter(0..n)
        .map(|i| {
            let mut conn = conn.clone();
            async move {
                let c = contact(i);
                for segment in ["adherents-69", "newsletter"] {
                    store::apply_membership(
                        &mut conn,
                        &c.id,
                        store::Membership::Enter(segment),
                        Some(&c),
                        false,
                    )
                    .await?;
                }
                Ok::<_, redis::RedisError>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let after: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let profile_len = prost::Message::encoded_len(&contact(0));
    let per_contact = (used_memory(&after) - used_memory(&before)) as f64 / n as f64;
    println!("contacts:            {n}");
    println!("protobuf profile:    {profile_len} bytes");
    println!("redis per contact:   {per_contact:.0} bytes (record, entries in 2 segments)");
    println!(
        "for 3 million:       {:.2} GiB",
        per_contact * 3e6 / (1u64 << 30) as f64
    );
    let usage = |key: String| {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .clone()
    };
    let profile: u64 = usage(keys::contact("crm-00000001"))
        .query_async(&mut conn)
        .await?;
    let segment: u64 = usage(keys::segment("newsletter"))
        .query_async(&mut conn)
        .await?;
    println!("  contact record:    {profile} bytes (profile and memberships, one string)");
    println!(
        "  segment entry:     {:.0} bytes each",
        segment as f64 / n as f64
    );
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(())
}
