//! The send ledger: what happened to each idempotency key, in Redis, so that a message
//! redelivered after a crash is never sent twice.
//!
//! `t:led:KEY` holds one of:
//! - `claim|INSTANCE|MS`: INSTANCE is sending it (since MS; renewed at every attempt);
//! - `sent|PROVIDER|PROVIDER_ID|ATTEMPT|MS`: a provider accepted it;
//! - `failed|KIND|REASON|PROVIDER|h or -|DETAIL`: it ended without being sent (permanent
//!   failure, expiry, cancellation), written only over no record or the writer's own
//!   claim, never over another instance's claim or outcome.
//!
//! A claim is taken with one script: a key already `sent` or `failed` is not sent again
//! (the sender re-emits its feedback); a claim held by a live instance (its `t:snd:live:I`
//! heartbeat exists) makes the redelivery wait; a claim whose instance is dead, or that is
//! older than `stale_ms`, is taken over.
//!
//! **The one window.** A message is claimed right before its provider call and recorded
//! `sent` as soon as the provider answers. If the instance dies while the message is at
//! the provider (sent, accepted, answer not yet recorded), the key stays claimed by a dead
//! instance; the redelivered message is then taken over and sent again: a duplicate. The
//! window is the provider call itself (its latency plus one Redis round trip), and the
//! number of messages it can hold is bounded: at most `max_in_flight` calls per provider
//! and instance are ever open. Measured with a SIGKILL in the middle of 600 messages
//! (`tests/crash.rs`, 8 calls in flight per provider, 20–40 ms provider latency): 9
//! duplicates, all among the 16 reported. Nothing on Tocsin's side can close it for SMTP
//! or Twilio, which take no idempotency key; Brevo and the generic webhook receive one and
//! drop the second copy. Takeovers are counted (`tocsin_sender_ledger_takeovers_total`)
//! and the feedback of such a message says "possibly sent twice". A crash anywhere else
//! (waiting for a budget, a slot or a backoff) leaves no claim behind: no duplicate.

use redis::Script;
use redis::aio::ConnectionManager;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it: send it.
    New,
    /// A dead or silent instance had it and may have sent it already (the window above).
    TakenOver { previous: String },
    /// A live instance is sending it now: try again later.
    Busy { owner: String },
    /// Already sent: do not send, re-emit `Feedback(sent)`.
    Sent {
        provider: String,
        provider_message_id: String,
        attempt: u32,
    },
    /// Already ended without being sent: re-emit its feedback.
    Failed {
        /// The feedback kind (`failed`, `bounced`, `expired`, `cancelled`).
        kind: String,
        /// The `Reason` name.
        reason: String,
        provider: String,
        hard_bounce: bool,
        detail: String,
    },
}

const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
local mine = 'claim|' .. ARGV[1] .. '|' .. ARGV[2]
if not current then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
  return {'new'}
end
local kind, owner, since = string.match(current, '^(%a+)|([^|]*)|(%d+)')
if kind == 'claim' then
  if owner == ARGV[1] then
    redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
    return {'new'}
  end
  local alive = redis.call('EXISTS', 't:snd:live:' .. owner) == 1
  if alive and tonumber(ARGV[2]) - tonumber(since) < tonumber(ARGV[3]) then
    return {'busy', owner}
  end
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
  return {'takeover', owner}
end
return {'done', current}
";

static CLAIM_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(CLAIM));

/// Sets the record only while `ARGV[1]` still holds the claim (a takeover wins).
const RELEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

static RELEASE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(RELEASE));

/// Writes `ARGV[2]` over no record or over the claim prefixed `ARGV[1]`; otherwise returns
/// the record that stays.
const FAIL: &str = r"
local current = redis.call('GET', KEYS[1])
if (not current) or string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return false
end
return current
";

static FAIL_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(FAIL));

/// How a message ended without being sent, as the ledger keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub kind: &'a str,
    pub reason: &'a str,
    pub provider: &'a str,
    pub hard_bounce: bool,
    pub detail: &'a str,
}

/// The ledger of one sender instance.
#[derive(Clone)]
pub struct Ledger {
    redis: ConnectionManager,
    instance: String,
    /// A claim older than this is taken over even if its instance looks alive.
    stale_ms: u64,
    /// How long records are kept (longer than any message's expiry).
    ttl_ms: u64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ledger({})", self.instance)
    }
}

pub fn key(idempotency_key: &str) -> String {
    format!("t:led:{idempotency_key}")
}

/// The heartbeat key of a sender instance.
pub fn liveness_key(instance: &str) -> String {
    format!("t:snd:live:{instance}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ledger {
    pub fn new(redis: ConnectionManager, instance: &str, stale_ms: u64, ttl_ms: u64) -> Self {
        Ledger {
            redis,
            instance: instance.replace('|', "_"),
            stale_ms,
            ttl_ms,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Marks this instance alive for `ttl_ms`; called periodically.
    pub async fn heartbeat(&self, ttl_ms: u64) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(liveness_key(&self.instance))
            .arg(now_ms())
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
    }

    /// Marks this instance gone (a clean shutdown), so its claims can be taken over at once.
    pub async fn leave(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("DEL")
            .arg(liveness_key(&self.instance))
            .query_async(&mut conn)
            .await
    }

    /// Claims a key before sending (and renews the claim before each new attempt).
    pub async fn claim(&self, idempotency_key: &str) -> redis::RedisResult<Claim> {
        let mut conn = self.redis.clone();
        let answer: Vec<String> = CLAIM_SCRIPT
            .key(key(idempotency_key))
            .arg(&self.instance)
            .arg(now_ms())
            .arg(self.stale_ms)
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| answer.get(i).cloned().unwrap_or_default();
        Ok(match field(0).as_str() {
            "new" => Claim::New,
            "busy" => Claim::Busy { owner: field(1) },
            "takeover" => Claim::TakenOver { previous: field(1) },
            _ => parse_done(&field(1)),
        })
    }

    /// What the ledger already knows of a key, without claiming it: `Sent` or `Failed`
    /// when the message ended, `None` otherwise (unknown, or claimed). A redelivered
    /// message that ended is answered from this, without waiting for a budget.
    pub async fn peek(&self, idempotency_key: &str) -> redis::RedisResult<Option<Claim>> {
        let mut conn = self.redis.clone();
        let record: Option<String> = redis::cmd("GET")
            .arg(key(idempotency_key))
            .query_async(&mut conn)
            .await?;
        Ok(record
            .filter(|r| r.starts_with("sent|") || r.starts_with("failed|"))
            .map(|r| parse_done(&r)))
    }

    /// Records that a provider accepted the message. Called before anything else once the
    /// provider answered: this write is the end of the duplicate window.
    pub async fn sent(
        &self,
        idempotency_key: &str,
        provider: &str,
        provider_message_id: &str,
        attempt: u32,
    ) -> redis::RedisResult<()> {
        let value = format!(
            "sent|{}|{}|{attempt}|{}",
            provider.replace('|', "_"),
            provider_message_id.replace('|', "_"),
            now_ms()
        );
        self.set(idempotency_key, value).await
    }

    /// Records that the message ended without being sent, unless the ledger already says
    /// otherwise: a record is written only over no record or this instance's own claim.
    /// Returns what the ledger holds instead (another instance's outcome, or its claim
    /// while it sends): the caller then reports that, not its own ending.
    pub async fn failed(
        &self,
        idempotency_key: &str,
        ending: &Ending<'_>,
    ) -> redis::RedisResult<Option<Claim>> {
        let clean = |s: &str| s.replace('|', "/");
        let value = format!(
            "failed|{}|{}|{}|{}|{}",
            clean(ending.kind),
            clean(ending.reason),
            clean(ending.provider),
            if ending.hard_bounce { "h" } else { "-" },
            clean(ending.detail)
        );
        let mut conn = self.redis.clone();
        let current: Option<String> = FAIL_SCRIPT
            .key(key(idempotency_key))
            .arg(format!("claim|{}|", self.instance))
            .arg(value)
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(current.map(|c| {
            if c.starts_with("claim|") {
                let owner = c.split('|').nth(1).unwrap_or_default().to_owned();
                Claim::Busy { owner }
            } else {
                parse_done(&c)
            }
        }))
    }

    async fn set(&self, idempotency_key: &str, value: String) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(key(idempotency_key))
            .arg(value)
            .arg("PX")
            .arg(self.ttl_ms)
            .query_async(&mut conn)
            .await
    }

    /// Gives a claim back (shutdown in the middle of retries): the redelivered message is
    /// handled at once by whoever gets it, without waiting for the claim to go stale.
    pub async fn release(&self, idempotency_key: &str) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let released: i64 = RELEASE_SCRIPT
            .key(key(idempotency_key))
            .arg(format!("claim|{}|", self.instance))
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }
}

fn parse_done(record: &str) -> Claim {
    let mut fields = record.split('|');
    match fields.next() {
        Some("sent") => Claim::Sent {
            provider: fields.next().unwrap_or_default().to_owned(),
            provider_message_id: fields.next().unwrap_or_default().to_owned(),
            attempt: fields.next().and_then(|a| a.parse().ok()).unwrap_or(1),
        },
        _ => Claim::Failed {
            kind: fields.next().unwrap_or_default().to_owned(),
            reason: fields.next().unwrap_or_default().to_owned(),
            provider: fields.next().unwrap_or_default().to_owned(),
            hard_bounce: fields.next() == Some("h"),
            detail: fields.collect::<Vec<_>>().join("|"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back() {
        assert_eq!(
            parse_done("sent|smtp_local|q-123|2|1700000000000"),
            Claim::Sent {
                provider: "smtp_local".into(),
                provider_message_id: "q-123".into(),
                attempt: 2
            }
        );
        assert_eq!(
            parse_done(
                "failed|bounced|REASON_MAILBOX_UNAVAILABLE|smtp_local|h|550 5.1.1 no such user"
            ),
            Claim::Failed {
                kind: "bounced".into(),
                reason: "REASON_MAILBOX_UNAVAILABLE".into(),
                provider: "smtp_local".into(),
                hard_bounce: true,
                detail: "550 5.1.1 no such user".into()
            }
        );
    }
}
