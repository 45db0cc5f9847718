//! A campaign's record and state machine in Redis.
//!
//! ```text
//! scheduled ──start──▶ running ──fan-out done, all dispatched──▶ completed
//!     │  ▲               │  ▲
//!   pause│resume       pause│resume
//!     ▼  │               ▼  │
//!      paused ◀──────────┘
//! any state but completed ──cancel──▶ cancelled
//! ```
//! Transitions are checked and applied by one Lua script, so the API and every planner
//! instance agree on the state at every moment. Cancel takes effect when the script
//! returns: the dispatcher checks the state before publishing each job.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tocsin_contracts::v1;

use crate::keys;
use crate::store::RedisResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Paused => "paused",
            State::Completed => "completed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => State::Scheduled,
            "running" => State::Running,
            "paused" => State::Paused,
            "completed" => State::Completed,
            "cancelled" => State::Cancelled,
            _ => return None,
        })
    }
}

/// What is stored of a campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: String,
    pub blast: v1::ScheduleBlast,
    pub state: State,
    /// State before a pause, to resume into.
    pub resume_to: Option<State>,
    /// Last segment member examined by the fan-out.
    pub cursor: Option<String>,
    pub fanned_out: bool,
    pub requested_by: String,
    pub created_ms: i64,
}

/// Records a scheduled blast. Idempotent: a second schedule of the same id changes nothing
/// and returns `false`.
pub async fn create(
    conn: &mut ConnectionManager,
    id: &str,
    blast: &v1::ScheduleBlast,
    requested_by: &str,
    now_ms: i64,
) -> RedisResult<bool> {
    let key = keys::campaign(id);
    let created: bool = conn.hset_nx(&key, "def", blast.encode_to_vec()).await?;
    if !created {
        return Ok(false);
    }
    let start_ms = blast
        .start_at
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1000))
        .unwrap_or(now_ms);
    redis::pipe()
        .atomic()
        .hset_multiple(
            &key,
            &[
                ("state", State::Scheduled.as_str().to_owned()),
                ("requested_by", requested_by.to_owned()),
                ("created_ms", now_ms.to_string()),
            ],
        )
        .ignore()
        .zadd(keys::DUE_CAMPAIGNS, id, start_ms)
        .ignore()
        .zadd(keys::CAMPAIGNS, id, now_ms)
        .ignore()
        .sadd(keys::ACTIVE_CAMPAIGNS, id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(true)
}

pub async fn load(conn: &mut ConnectionManager, id: &str) -> RedisResult<Option<Campaign>> {
    let fields: std::collections::HashMap<String, Vec<u8>> =
        conn.hgetall(keys::campaign(id)).await?;
    let Some(def) = fields.get("def") else {
        return Ok(None);
    };
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Ok(Some(Campaign {
        id: id.to_owned(),
        blast: v1::ScheduleBlast::decode(def.as_slice()).unwrap_or_default(),
        state: text("state")
            .as_deref()
            .and_then(State::parse)
            .unwrap_or(State::Scheduled),
        resume_to: text("resume_to").as_deref().and_then(State::parse),
        cursor: text("cursor"),
        fanned_out: text("fanned_out").is_some(),
        requested_by: text("requested_by").unwrap_or_default(),
        created_ms: text("created_ms").and_then(|s| s.parse().ok()).unwrap_or(0),
    }))
}

/// The state alone: what the dispatcher (and later the renderer and sender) ask.
pub async fn state(conn: &mut ConnectionManager, id: &str) -> RedisResult<Option<State>> {
    let s: Option<String> = conn.hget(keys::campaign(id), "state").await?;
    Ok(s.as_deref().and_then(State::parse))
}

/// Campaign states, read through a short cache: what the renderer and the sender ask of
/// every message. A cancel or a pause reaches them within the TTL, and a million messages
/// of one campaign cost one Redis read per TTL, not a million.
#[derive(Debug)]
pub struct StateCache {
    ttl: Duration,
    known: Mutex<HashMap<String, (Instant, Option<State>)>>,
}

impl StateCache {
    pub fn new(ttl: Duration) -> Self {
        StateCache {
            ttl,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
    ) -> redis::RedisResult<Option<State>> {
        if let Ok(known) = self.known.lock()
            && let Some((at, state)) = known.get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(*state);
        }
        let state = state(conn, id).await?;
        if let Ok(mut known) = self.known.lock() {
            if known.len() > 10_000 {
                let ttl = self.ttl;
                known.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            known.insert(id.to_owned(), (Instant::now(), state));
        }
        Ok(state)
    }
}

/// A requested transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Cancel,
}

/// The outcome of a transition request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Applied (or already in the target state): the state now.
    Done(State),
    /// Not allowed from the current state.
    Refused(State),
    NotFound,
}

pub async fn apply(
    conn: &mut ConnectionManager,
    id: &str,
    command: Command,
) -> RedisResult<Transition> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            local state = redis.call('HGET', KEYS[1], 'state')
            if not state then return {'missing', ''} end
            local cmd = ARGV[1]
            if cmd == 'pause' then
              if state == 'paused' then return {'done', state} end
              if state == 'scheduled' or state == 'running' then
                redis.call('HSET', KEYS[1], 'state', 'paused', 'resume_to', state)
                return {'done', 'paused'}
              end
            elseif cmd == 'resume' then
              if state == 'running' or state == 'scheduled' then return {'done', state} end
              if state == 'paused' then
                local to = redis.call('HGET', KEYS[1], 'resume_to') or 'running'
                redis.call('HSET', KEYS[1], 'state', to)
                return {'done', to}
              end
            elseif cmd == 'cancel' then
              if state == 'cancelled' then return {'done', state} end
              if state ~= 'completed' then
                redis.call('HSET', KEYS[1], 'state', 'cancelled')
                redis.call('ZREM', KEYS[2], ARGV[2])
                return {'done', 'cancelled'}
              end
            end
            return {'refused', state}
            ",
        )
    });
    let cmd = match command {
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Cancel => "cancel",
    };
    let (verdict, state): (String, String) = SCRIPT
        .key(keys::campaign(id))
        .key(keys::DUE_CAMPAIGNS)
        .arg(cmd)
        .arg(id)
        .invoke_async(conn)
        .await?;
    let state = State::parse(&state);
    Ok(match (verdict.as_str(), state) {
        ("done", Some(s)) => Transition::Done(s),
        ("refused", Some(s)) => Transition::Refused(s),
        _ => Transition::NotFound,
    })
}
