//! Template versions in Redis: `t:tpl:ID` is a hash with `latest` (the last version
//! number), `v1`, `v2`, ... (each version as JSON) and, once the template is deleted,
//! `deleted` (when, in ms); `t:tpls` lists the ids of the templates not deleted.
//!
//! A delete is soft: the versions stay, because jobs already on the bus pin one and must
//! still render. What disappears is the template as a thing to choose: its latest version,
//! its place in the list, and (in the API) every version of it. Uploading the same id
//! again brings it back with the next version number, never reusing one: a version, once
//! stored, means one content for as long as the store lives.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::model::{TemplateDraft, TemplateVersion};

pub const INDEX: &str = "t:tpls";

/// The field of `t:tpl:ID` that marks a deleted template.
pub const DELETED: &str = "deleted";

pub fn key(id: &str) -> String {
    format!("t:tpl:{id}")
}

/// Stores a new version and returns it: version numbers are given by Redis (`HINCRBY`),
/// so two concurrent uploads get two versions, never one overwriting the other. A deleted
/// template is undeleted by its next upload.
pub async fn put(
    conn: &mut ConnectionManager,
    id: &str,
    draft: TemplateDraft,
    created_by: &str,
    now_ms: i64,
) -> redis::RedisResult<TemplateVersion> {
    let version: u32 = conn.hincr(key(id), "latest", 1).await?;
    let stored = TemplateVersion {
        id: id.to_owned(),
        version,
        draft,
        created_by: created_by.to_owned(),
        created_ms: now_ms,
    };
    let json = serde_json::to_string(&stored).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::IoError,
            "template encoding",
            e.to_string(),
        ))
    })?;
    redis::pipe()
        .atomic()
        .hset(key(id), format!("v{version}"), json)
        .ignore()
        .hdel(key(id), DELETED)
        .ignore()
        .zadd(INDEX, id, 0)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(stored)
}

/// A version, for rendering: `Some(v)` is returned even after the template was deleted
/// (a job pins it); `None` asks for the latest, which a deleted template no longer has.
pub async fn get(
    conn: &mut ConnectionManager,
    id: &str,
    version: Option<u32>,
) -> redis::RedisResult<Option<TemplateVersion>> {
    let version = match version {
        Some(v) => v,
        None => match live_latest(conn, id).await? {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    let json: Option<String> = conn.hget(key(id), format!("v{version}")).await?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "stored template does not decode",
                e.to_string(),
            ))
        })
    })
    .transpose()
}

/// A version of a template that is not deleted (`None`: the latest): what people may
/// look at, preview and pin in a new campaign.
pub async fn get_live(
    conn: &mut ConnectionManager,
    id: &str,
    version: Option<u32>,
) -> redis::RedisResult<Option<TemplateVersion>> {
    let Some(latest) = live_latest(conn, id).await? else {
        return Ok(None);
    };
    get(conn, id, Some(version.unwrap_or(latest))).await
}

/// The latest version number, unless the template is unknown or deleted.
async fn live_latest(conn: &mut ConnectionManager, id: &str) -> redis::RedisResult<Option<u32>> {
    let (latest, deleted): (Option<u32>, Option<i64>) = redis::cmd("HMGET")
        .arg(key(id))
        .arg("latest")
        .arg(DELETED)
        .query_async(conn)
        .await?;
    Ok(if deleted.is_some() { None } else { latest })
}

/// Deletes a template softly (see the module documentation): marks it deleted at
/// `now_ms` and takes it out of the list, in one step. `false` when there was no such
/// template, or it was already deleted.
pub async fn delete(
    conn: &mut ConnectionManager,
    id: &str,
    now_ms: i64,
) -> redis::RedisResult<bool> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            if redis.call('HEXISTS', KEYS[1], 'latest') == 0
              or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
              return 0
            end
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
            redis.call('ZREM', KEYS[2], ARGV[3])
            return 1
            ",
        )
    });
    let deleted: i32 = SCRIPT
        .key(key(id))
        .key(INDEX)
        .arg(DELETED)
        .arg(now_ms)
        .arg(id)
        .invoke_async(conn)
        .await?;
    Ok(deleted == 1)
}

/// The ids of the templates not deleted.
pub async fn list(conn: &mut ConnectionManager) -> redis::RedisResult<Vec<String>> {
    conn.zrange(INDEX, 0, -1).await
}
