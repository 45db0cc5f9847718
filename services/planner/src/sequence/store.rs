//! A sequence's versions and a contact's enrolments in Redis (layout in [`crate::keys`]).
//!
//! Versions are immutable once written, so every process may cache them forever. An
//! enrolment is one field of the contact's `t:enr:{C}` hash; every change to it is a
//! compare-and-set ([`Change::apply`]) that also moves it in the sequence schedule and
//! adjusts the funnel, in one script: an enrolment is never in two places at once.

use std::collections::BTreeMap;

use prost::Message;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tocsin_contracts::v1;

use crate::keys;

pub type RedisResult<T> = Result<T, redis::RedisError>;

/// What is known of a sequence apart from its versions' contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The version new enrolments take; 0 when the sequence does not exist.
    pub current: u32,
    /// Enrolments on a version below this one move to `current` at their next step.
    pub migrate_floor: u32,
    pub retired: Option<String>,
    pub created_ms: i64,
    /// The digest of the request or file `current` came from.
    pub source: String,
}

pub async fn load_head(conn: &mut ConnectionManager, id: &str) -> RedisResult<Head> {
    let (current, floor, retired, created): (
        Option<u32>,
        Option<u32>,
        Option<String>,
        Option<i64>,
    ) = redis::cmd("HMGET")
        .arg(keys::sequence(id))
        .arg(&["current", "migrate_floor", "retired", "created_ms"])
        .query_async(conn)
        .await?;
    let current = current.unwrap_or(0);
    let source: Option<String> = conn
        .hget(keys::sequence(id), format!("src.v{current}"))
        .await?;
    Ok(Head {
        current,
        migrate_floor: floor.unwrap_or(0),
        retired,
        created_ms: created.unwrap_or(0),
        source: source.unwrap_or_default(),
    })
}

pub async fn load_version(
    conn: &mut ConnectionManager,
    id: &str,
    version: u32,
) -> RedisResult<Option<v1::SequenceDefinition>> {
    let raw: Option<Vec<u8>> = conn.hget(keys::sequence(id), format!("v{version}")).await?;
    Ok(raw.and_then(|r| v1::SequenceDefinition::decode(r.as_slice()).ok()))
}

/// The outcome of [`define`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defined {
    /// This version was written (and is current unless a newer one exists).
    Created(u32),
    /// It existed already: the command was applied before.
    Existing(u32),
    /// The sequence is retired; nothing was written.
    Retired,
}

/// Writes a version of sequence `id`. `version` 0 takes the next number (the API's
/// path); a given number (the planner applying the API's command) is written once, so
/// applying the same command twice changes nothing. With `migrate`, running enrolments
/// move to this version at their next step.
pub async fn define(
    conn: &mut ConnectionManager,
    id: &str,
    version: u32,
    def: &v1::SequenceDefinition,
    migrate: bool,
    source: &str,
    now_ms: i64,
) -> RedisResult<Defined> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            if redis.call('HEXISTS', KEYS[1], 'retired') == 1 then return -1 end
            local current = tonumber(redis.call('HGET', KEYS[1], 'current') or '0')
            local v = tonumber(ARGV[1])
            if v == 0 then v = current + 1 end
            if redis.call('HEXISTS', KEYS[1], 'v' .. v) == 1 then return -v end
            redis.call('HSET', KEYS[1], 'v' .. v, ARGV[2], 'src.v' .. v, ARGV[4])
            if redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[5]) == 1 then
              redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
            end
            if v > current then
              redis.call('HSET', KEYS[1], 'current', v)
              if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'migrate_floor', v) end
              -- The indexes follow the current version.
              local function unindex(key, seg)
                local list = redis.call('HGET', key, seg)
                if not list then return end
                local kept = {}
                for s in string.gmatch(list, '[^,]+') do
                  if s ~= ARGV[6] then table.insert(kept, s) end
                end
                if #kept == 0 then redis.call('HDEL', key, seg)
                else redis.call('HSET', key, seg, table.concat(kept, ',')) end
              end
              local function index(key, seg)
                unindex(key, seg)
                local list = redis.call('HGET', key, seg)
                if list then list = list .. ',' .. ARGV[6] else list = ARGV[6] end
                redis.call('HSET', key, seg, list)
              end
              local old_trigger = redis.call('HGET', KEYS[1], 'trigger')
              if old_trigger then unindex(KEYS[3], old_trigger) end
              local old_goals = redis.call('HGET', KEYS[1], 'goals')
              if old_goals then
                for g in string.gmatch(old_goals, '[^,]+') do unindex(KEYS[4], g) end
              end
              index(KEYS[3], ARGV[7])
              for g in string.gmatch(ARGV[8], '[^,]+') do index(KEYS[4], g) end
              redis.call('HSET', KEYS[1], 'trigger', ARGV[7], 'goals', ARGV[8])
            end
            return v
            ",
        )
    });
    let goals = def
        .exit
        .as_ref()
        .map(|e| e.goal_segment_ids.join(","))
        .unwrap_or_default();
    let v: i64 = SCRIPT
        .key(keys::sequence(id))
        .key(keys::SEQUENCES)
        .key(keys::SEQUENCE_TRIGGERS)
        .key(keys::SEQUENCE_GOALS)
        .arg(version)
        .arg(def.encode_to_vec())
        .arg(if migrate { "1" } else { "0" })
        .arg(source)
        .arg(now_ms)
        .arg(id)
        .arg(&def.trigger_segment_id)
        .arg(goals)
        .invoke_async(conn)
        .await?;
    Ok(match v {
        -1 => Defined::Retired,
        v if v < 0 => Defined::Existing(u32::try_from(-v).unwrap_or(0)),
        v => Defined::Created(u32::try_from(v).unwrap_or(0)),
    })
}

/// Retires sequence `id`: no new enrolments; running ones exit at their next step.
/// `false` when there is no such sequence.
pub async fn retire(conn: &mut ConnectionManager, id: &str, reason: &str) -> RedisResult<bool> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            if redis.call('HEXISTS', KEYS[1], 'current') == 0 then return 0 end
            if redis.call('HSETNX', KEYS[1], 'retired', ARGV[1]) == 0 then return 1 end
            for _, pair in ipairs({{KEYS[2], 'trigger'}, {KEYS[3], 'goals'}}) do
              local segs = redis.call('HGET', KEYS[1], pair[2]) or ''
              for seg in string.gmatch(segs, '[^,]+') do
                local list = redis.call('HGET', pair[1], seg)
                if list then
                  local kept = {}
                  for s in string.gmatch(list, '[^,]+') do
                    if s ~= ARGV[2] then table.insert(kept, s) end
                  end
                  if #kept == 0 then redis.call('HDEL', pair[1], seg)
                  else redis.call('HSET', pair[1], seg, table.concat(kept, ',')) end
                end
              end
            end
            return 1
            ",
        )
    });
    let reason = if reason.trim().is_empty() {
        "retired"
    } else {
        reason
    };
    let found: i32 = SCRIPT
        .key(keys::sequence(id))
        .key(keys::SEQUENCE_TRIGGERS)
        .key(keys::SEQUENCE_GOALS)
        .arg(reason)
        .arg(id)
        .invoke_async(conn)
        .await?;
    Ok(found == 1)
}

/// Every sequence id, newest first.
pub async fn list(conn: &mut ConnectionManager) -> RedisResult<Vec<String>> {
    conn.zrevrange(keys::SEQUENCES, 0, -1).await
}

/// Every version number of sequence `id`, oldest first.
pub async fn versions(conn: &mut ConnectionManager, id: &str) -> RedisResult<Vec<u32>> {
    let fields: Vec<String> = conn.hkeys(keys::sequence(id)).await?;
    let mut out: Vec<u32> = fields
        .iter()
        .filter_map(|f| f.strip_prefix('v')?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The funnel's raw counters (see [`crate::keys`]).
pub async fn funnel(conn: &mut ConnectionManager, id: &str) -> RedisResult<BTreeMap<String, i64>> {
    conn.hgetall(keys::sequence_funnel(id)).await
}

/// Where an enrolment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Completed,
    Exited,
}

/// One contact's n-th pass through one sequence, stored as
/// `n|version|step|due_ms|status|started_ms|ended_ms|reason|clicked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// 1 for the first enrolment, 2 after a re-entry...
    pub n: u32,
    pub version: u32,
    /// The next step to run, from 1; past the last once completed.
    pub step: u32,
    pub due_ms: i64,
    pub status: Status,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Why it ended early (`left_trigger`, `goal`, `unsubscribed`, `erased`, `retired`).
    pub reason: String,
    /// Bit K-1 set: the contact clicked a link of step K.
    pub clicked: u64,
}

impl Enrolment {
    pub fn encode(&self) -> String {
        let status = match self.status {
            Status::Active => "a",
            Status::Completed => "c",
            Status::Exited => "x",
        };
        format!(
            "{}|{}|{}|{}|{status}|{}|{}|{}|{}",
            self.n,
            self.version,
            self.step,
            self.due_ms,
            self.started_ms,
            self.ended_ms,
            self.reason,
            self.clicked
        )
    }

    pub fn decode(raw: &str) -> Option<Enrolment> {
        let f: Vec<&str> = raw.split('|').collect();
        if f.len() != 9 {
            return None;
        }
        Some(Enrolment {
            n: f[0].parse().ok()?,
            version: f[1].parse().ok()?,
            step: f[2].parse().ok()?,
            due_ms: f[3].parse().ok()?,
            status: match f[4] {
                "a" => Status::Active,
                "c" => Status::Completed,
                "x" => Status::Exited,
                _ => return None,
            },
            started_ms: f[5].parse().ok()?,
            ended_ms: f[6].parse().ok()?,
            reason: f[7].to_owned(),
            clicked: f[8].parse().ok()?,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    pub fn clicked_step(&self, step: u32) -> bool {
        (1..=64).contains(&step) && self.clicked & (1 << (step - 1)) != 0
    }
}

/// A contact's enrolment in a sequence, raw (the compare-and-set compares the raw text).
pub async fn load_enrolment(
    conn: &mut ConnectionManager,
    sequence_id: &str,
    contact_id: &str,
) -> RedisResult<Option<String>> {
    conn.hget(keys::enrolments(contact_id), sequence_id).await
}

/// A compare-and-set of one enrolment, with what goes with it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub sequence_id: String,
    pub contact_id: String,
    /// The raw record this change was computed from; `None`: there was none.
    pub expected: Option<String>,
    /// The new record.
    pub record: String,
    /// The enrolment's score in the schedule; `None` takes it out.
    pub schedule_at: Option<i64>,
    /// Funnel counters to adjust.
    pub counters: Vec<(String, i64)>,
    /// A message to count against the frequency cap: (idempotency key, now, window start,
    /// key lifetime ms).
    pub frequency: Option<(String, i64, i64, i64)>,
}

impl Change {
    /// Applies the change if the record is still `expected`. `false`: it changed meanwhile
    /// (recompute from the new record, or leave it to whoever changed it).
    pub async fn apply(&self, conn: &mut ConnectionManager) -> RedisResult<bool> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                r"
                local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
                if cur ~= ARGV[2] then return 0 end
                redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
                if ARGV[5] == '' then
                  redis.call('ZREM', KEYS[2], ARGV[4])
                else
                  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
                end
                if ARGV[6] ~= '' then
                  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
                  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8])
                  redis.call('PEXPIRE', KEYS[4], ARGV[9])
                end
                for i = 10, #ARGV, 2 do
                  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
                end
                return 1
                ",
            )
        });
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(keys::enrolments(&self.contact_id))
            .key(keys::SEQUENCE_SCHEDULE)
            .key(keys::sequence_funnel(&self.sequence_id))
            .key(keys::frequency(&self.contact_id))
            .arg(&self.sequence_id)
            .arg(self.expected.as_deref().unwrap_or(""))
            .arg(&self.record)
            .arg(keys::schedule_member(&self.sequence_id, &self.contact_id))
            .arg(self.schedule_at.map(|s| s.to_string()).unwrap_or_default());
        match &self.frequency {
            Some((key, at, window_start, ttl)) => {
                invocation.arg(key).arg(at).arg(window_start).arg(ttl);
            }
            None => {
                invocation.arg("").arg(0).arg(0).arg(0);
            }
        }
        for (field, delta) in &self.counters {
            invocation.arg(field).arg(delta);
        }
        let applied: i32 = invocation.invoke_async(conn).await?;
        Ok(applied == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrolment_reads_back() {
        let e = Enrolment {
            n: 2,
            version: 3,
            step: 2,
            due_ms: 1_800_000_000_000,
            status: Status::Active,
            started_ms: 1_799_999_000_000,
            ended_ms: 0,
            reason: String::new(),
            clicked: 0b101,
        };
        assert_eq!(Enrolment::decode(&e.encode()), Some(e.clone()));
        assert!(e.clicked_step(1) && !e.clicked_step(2) && e.clicked_step(3));
        assert!(!e.clicked_step(0));
        assert_eq!(Enrolment::decode("1|2|3"), None);
    }
}
