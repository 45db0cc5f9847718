//! Template versions in Redis: `t:tpl:ID` is a hash with `latest` (the last version
//! number) and `v1`, `v2`, ... (each version as JSON); `t:tpls` lists the ids.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::model::{TemplateDraft, TemplateVersion};

pub const INDEX: &str = "t:tpls";

pub fn key(id: &str) -> String {
    format!("t:tpl:{id}")
}

/// Stores a new version and returns it: version numbers are given by Redis (`HINCRBY`),
/// so two concurrent uploads get two versions, never one overwriting the other.
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
        .zadd(INDEX, id, 0)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(stored)
}

/// A version (`None`: the latest).
pub async fn get(
    conn: &mut ConnectionManager,
    id: &str,
    version: Option<u32>,
) -> redis::RedisResult<Option<TemplateVersion>> {
    let version = match version {
        Some(v) => v,
        None => match conn.hget::<_, _, Option<u32>>(key(id), "latest").await? {
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

/// Every template id.
pub async fn list(conn: &mut ConnectionManager) -> redis::RedisResult<Vec<String>> {
    conn.zrange(INDEX, 0, -1).await
}
