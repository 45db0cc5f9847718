//! Reads and writes of the planner's Redis state (layout in [`crate::keys`]).

use hmac::{Hmac, Mac};
use prost::Message;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_contracts::v1;

use crate::keys;

pub type RedisResult<T> = Result<T, redis::RedisError>;

/// Keyed hashes of addresses: what the suppression list and the per-campaign dedup hold,
/// so that an erased person's addresses are never stored in clear.
#[derive(Clone)]
pub struct AddressHasher {
    key: SecretString,
}

impl std::fmt::Debug for AddressHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressHasher")
    }
}

impl AddressHasher {
    pub fn new(key: SecretString) -> Self {
        AddressHasher { key }
    }

    fn hash(&self, prefix: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(prefix.len() + 33);
        out.push_str(prefix);
        out.push(':');
        for b in &digest[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// `e:<hex>` of an e-mail address (compared case-insensitively).
    pub fn email(&self, email: &EmailAddress) -> String {
        self.hash("e", &email.expose().to_lowercase())
    }

    /// `p:<hex>` of an E.164 number.
    pub fn phone(&self, phone: &PhoneNumber) -> String {
        self.hash("p", phone.expose())
    }

    /// The hash of whichever of the contact's addresses parse.
    pub fn addresses(&self, contact: &v1::Contact) -> Vec<String> {
        let mut out = Vec::with_capacity(2);
        if let Ok(email) = EmailAddress::parse(&contact.email) {
            out.push(self.email(&email));
        }
        if let Ok(phone) = PhoneNumber::parse(&contact.phone_e164) {
            out.push(self.phone(&phone));
        }
        out
    }
}

/// Milliseconds since the epoch of a snapshot's `updated_at` (0 when absent).
pub fn snapshot_version(contact: &v1::Contact) -> i64 {
    contact
        .updated_at
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}

/// Stores a snapshot unless a newer one is already there. Returns whether it was stored.
pub async fn store_contact(
    conn: &mut ConnectionManager,
    contact: &v1::Contact,
) -> RedisResult<bool> {
    // The profile is a hash of two fields: `v` (the snapshot's version, ms) and `p` (the
    // protobuf). The script keeps the newer of the two snapshots.
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
            if tonumber(ARGV[1]) >= current then
              redis.call('HSET', KEYS[1], 'v', ARGV[1], 'p', ARGV[2])
              return 1
            end
            return 0
            ",
        )
    });
    let stored: i32 = SCRIPT
        .key(keys::contact(&contact.id))
        .arg(snapshot_version(contact))
        .arg(contact.encode_to_vec())
        .invoke_async(conn)
        .await?;
    Ok(stored == 1)
}

pub async fn load_contact(
    conn: &mut ConnectionManager,
    id: &str,
) -> RedisResult<Option<v1::Contact>> {
    let bytes: Option<Vec<u8>> = conn.hget(keys::contact(id), "p").await?;
    Ok(bytes.and_then(|b| v1::Contact::decode(b.as_slice()).ok()))
}

/// Loads many contacts in one round trip; `None` for the missing ones.
pub async fn load_contacts(
    conn: &mut ConnectionManager,
    ids: &[String],
) -> RedisResult<Vec<Option<v1::Contact>>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hget(keys::contact(id), "p");
    }
    let blobs: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
    Ok(blobs
        .into_iter()
        .map(|b| b.and_then(|b| v1::Contact::decode(b.as_slice()).ok()))
        .collect())
}

/// The suppression reasons of these address hashes (`None` where not suppressed).
pub async fn suppression_reasons(
    conn: &mut ConnectionManager,
    hashes: &[String],
) -> RedisResult<Vec<Option<String>>> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(keys::SUPPRESSION).arg(hashes);
    cmd.query_async(conn).await
}
