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

/// A contact's record: one Redis string per contact,
/// `V<version: 16 digits>|<segment>,<segment>...\n<protobuf Contact>`.
///
/// One string rather than a hash: a 250-byte protobuf is past Redis's listpack limit for
/// hash values (64 bytes by default), which turns a hash into a hashtable costing twice
/// the memory; and the memberships ride in the same key instead of a set of their own.
/// Measured: 1,109 bytes per contact in two segments with a hash and a membership set,
/// see `examples/contact_memory.rs` for the current figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactRecord {
    pub contact: Option<v1::Contact>,
    pub segments: Vec<String>,
}

/// Parses a stored record; `None` for anything malformed.
pub fn parse_record(raw: &[u8]) -> Option<ContactRecord> {
    let newline = raw.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&raw[..newline]).ok()?;
    let segments = header.get(18..).unwrap_or_default();
    let body = &raw[newline + 1..];
    Some(ContactRecord {
        contact: if body.is_empty() {
            None
        } else {
            v1::Contact::decode(body).ok()
        },
        segments: segments
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A membership change, with the snapshot that came with it.
#[derive(Debug, Clone, Copy)]
pub enum Membership<'a> {
    Enter(&'a str),
    Leave(&'a str),
}

/// Applies a membership change and stores the snapshot unless a newer one is there, in
/// one script (one round trip). Returns `false` when the snapshot was older than the
/// stored one and was ignored.
///
/// A record created or deleted moves the contact count (`t:n:contacts`) by one, once that
/// count exists (see [`crate::metrics::Refresher`]).
///
/// With `mark_entry`, a real entry (the contact was not a member) also leaves a marker in
/// `t:enrq:{C}` (segment → ms), in the same script: the sequences the segment triggers
/// enrol the contact from the marker and then delete it, so a planner killed in between
/// still enrols it when the event is processed again.
pub async fn apply_membership(
    conn: &mut ConnectionManager,
    contact_id: &str,
    change: Membership<'_>,
    snapshot: Option<&v1::Contact>,
    mark_entry: bool,
) -> RedisResult<bool> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            local cur = redis.call('GET', KEYS[1])
            local existed = cur ~= false
            local version, segments, body = 0, '', ''
            if cur then
              local nl = string.find(cur, '\n', 1, true)
              version = tonumber(string.sub(cur, 2, 17))
              segments = string.sub(cur, 19, nl - 1)
              body = string.sub(cur, nl + 1)
            end
            local list = {}
            local was_member = false
            for s in string.gmatch(segments, '[^,]+') do
              if s ~= ARGV[3] then table.insert(list, s) else was_member = true end
            end
            local entering = ARGV[4] == 'enter'
            if entering and not was_member and ARGV[6] ~= '' then
              redis.call('HSET', KEYS[4], ARGV[3], ARGV[6])
            end
            if entering then table.insert(list, ARGV[3]) end
            local fresh = 1
            if ARGV[2] ~= '' then
              if tonumber(ARGV[1]) >= version then
                version = tonumber(ARGV[1])
                body = ARGV[2]
              else
                fresh = 0
              end
            end
            local delta = 0
            if body == '' and #list == 0 then
              redis.call('DEL', KEYS[1])
              if existed then delta = -1 end
            else
              redis.call('SET', KEYS[1], string.format('V%016d|', version) .. table.concat(list, ',') .. '\n' .. body)
              if not existed then delta = 1 end
            end
            if delta ~= 0 and redis.call('EXISTS', KEYS[5]) == 1 then
              redis.call('INCRBY', KEYS[5], delta)
            end
            if entering then
              redis.call('ZADD', KEYS[2], 0, ARGV[5])
              redis.call('ZADD', KEYS[3], 0, ARGV[3])
            else
              redis.call('ZREM', KEYS[2], ARGV[5])
            end
            return fresh
            ",
        )
    });
    let (segment, verb) = match change {
        Membership::Enter(s) => (s, "enter"),
        Membership::Leave(s) => (s, "leave"),
    };
    let (version, body) = match snapshot {
        Some(c) => (snapshot_version(c), c.encode_to_vec()),
        None => (0, Vec::new()),
    };
    let fresh: i32 = SCRIPT
        .key(keys::contact(contact_id))
        .key(keys::segment(segment))
        .key(keys::SEGMENTS)
        .key(keys::pending_enrolments(contact_id))
        .key(keys::CONTACT_COUNT)
        .arg(version)
        .arg(body)
        .arg(segment)
        .arg(verb)
        .arg(contact_id)
        .arg(if mark_entry {
            chrono::Utc::now().timestamp_millis().to_string()
        } else {
            String::new()
        })
        .invoke_async(conn)
        .await?;
    Ok(fresh == 1)
}

pub async fn load_record(
    conn: &mut ConnectionManager,
    id: &str,
) -> RedisResult<Option<ContactRecord>> {
    let raw: Option<Vec<u8>> = conn.get(keys::contact(id)).await?;
    Ok(raw.as_deref().and_then(parse_record))
}

/// Adds to `pipe` the deletion of contact `id`'s record, taking it off the contact count
/// when it existed (and the count does).
pub fn delete_record(pipe: &mut redis::Pipeline, id: &str) {
    // EVAL (not EVALSHA): a pipeline cannot load a missing script; Redis caches it anyway.
    const SCRIPT: &str = "if redis.call('DEL', KEYS[1]) == 1 and \
                          redis.call('EXISTS', KEYS[2]) == 1 then \
                          redis.call('DECR', KEYS[2]) end return 0";
    pipe.cmd("EVAL")
        .arg(SCRIPT)
        .arg(2)
        .arg(keys::contact(id))
        .arg(keys::CONTACT_COUNT)
        .ignore();
}

/// Loads many contacts in one round trip; `None` for the missing ones.
pub async fn load_contacts(
    conn: &mut ConnectionManager,
    ids: &[String],
) -> RedisResult<Vec<Option<v1::Contact>>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.get(keys::contact(id));
    }
    let raws: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
    Ok(raws
        .into_iter()
        .map(|r| r.as_deref().and_then(parse_record).and_then(|r| r.contact))
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
