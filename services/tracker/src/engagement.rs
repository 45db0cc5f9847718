//! The open pixel (`GET /o/{token}`) and the click redirect (`GET /c/{token}`).
//!
//! Neither may ever make a message look broken, nor make the reader wait for the broker:
//! the answer goes out at once (the GIF, the redirect) and the event is published behind
//! it. A pixel whose token does not verify still gets the GIF (a forged or mangled token
//! publishes nothing and is counted); a click whose token does not verify gets 404, never a
//! redirect (the destination is only ever the one Tocsin signed).
//!
//! **Repeats.** A mail client reloading the pixel, or a browser retrying a click, must not
//! become a second event. One Redis script per request records when this client (address
//! and user agent) first fetched this token, `t:trk:seen:{hash}` kept `repeat_window_s`,
//! and the event id includes that first-seen time: repeats within the window repeat the
//! event id, a later open is a new event. The same script reads the message's send time
//! from the sender's ledger for the machine rules ([`crate::machine`]).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use redis::Script;
use tocsin_contracts::v1;
use tocsin_renderer::tokens::{Claims, Purpose};

use crate::AppState;
use crate::feedback::{self, short_hash};
use crate::machine::{Sighting, sent_at_ms};

/// A transparent 1×1 GIF (GIF89a, two-colour table, colour 0 transparent): 43 bytes.
pub const PIXEL: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

const NO_CACHE: &str = "no-cache, no-store, must-revalidate, private, max-age=0";

/// Who is asking, as far as the request tells.
#[derive(Debug, Clone)]
pub struct Client {
    /// The peer address, or the first `X-Forwarded-For` entry when trusted. Only ever
    /// hashed into a Redis key; never logged.
    pub address: String,
    pub user_agent: Option<String>,
    pub head: bool,
}

impl Client {
    pub fn of(state: &AppState, peer: SocketAddr, method: &Method, headers: &HeaderMap) -> Self {
        let forwarded = state
            .trust_forwarded_for
            .then(|| header_str(headers, "x-forwarded-for"))
            .flatten()
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        Client {
            address: forwarded.unwrap_or_else(|| peer.ip().to_string()),
            user_agent: header_str(headers, header::USER_AGENT.as_str()).map(str::to_owned),
            head: method == Method::HEAD,
        }
    }
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// KEYS[1]: the first-seen record, KEYS[2]: the sender's ledger record of the message.
/// ARGV[1]: now (ms), ARGV[2]: the repeat window (ms). Returns {first seen, ledger record}.
const SIGHTING: &str = r"
local first = redis.call('GET', KEYS[1])
if not first then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  first = ARGV[1]
end
local ledger = redis.call('GET', KEYS[2])
return {first, ledger or ''}
";

static SIGHTING_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SIGHTING));

/// When a client first fetched a token, and when the message was sent.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub first_ms: i64,
    pub sent_ms: Option<i64>,
}

/// The first-seen record of `client` fetching `token`.
pub fn seen_key(purpose: Purpose, token: &str, client: &Client) -> String {
    let purpose = match purpose {
        Purpose::Open => "o",
        Purpose::Click => "c",
        Purpose::Unsubscribe => "u",
    };
    format!(
        "t:trk:seen:{}",
        short_hash(&[
            purpose.as_bytes(),
            token.as_bytes(),
            client.address.as_bytes(),
            client.user_agent.as_deref().unwrap_or_default().as_bytes(),
        ])
    )
}

async fn sight(state: &AppState, seen: String, message_key: &str, now: i64) -> Seen {
    let mut conn = state.redis.clone();
    let answer: Result<Vec<String>, _> = SIGHTING_SCRIPT
        .key(seen)
        .key(tocsin_sender::ledger::key(message_key))
        .arg(now)
        .arg(state.repeat_window_ms)
        .invoke_async(&mut conn)
        .await;
    match answer {
        Ok(fields) => Seen {
            first_ms: fields.first().and_then(|f| f.parse().ok()).unwrap_or(now),
            sent_ms: fields.get(1).and_then(|r| sent_at_ms(r)),
        },
        Err(error) => {
            // Still counted and published; only repeat detection and the send-time rule
            // are lost for this request.
            tracing::warn!(%error, "tracker: Redis unavailable for an open or click");
            Seen {
                first_ms: now,
                sent_ms: None,
            }
        }
    }
}

/// The send times of messages (by idempotency key) from the sender's ledger, for provider
/// events; `None` where unknown or when Redis cannot be read.
pub async fn sent_times(state: &AppState, keys: &[&str]) -> Vec<Option<i64>> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut conn = state.redis.clone();
    let mut mget = redis::cmd("MGET");
    for key in keys {
        mget.arg(tocsin_sender::ledger::key(key));
    }
    match mget.query_async::<Vec<Option<String>>>(&mut conn).await {
        Ok(records) => records
            .iter()
            .map(|r| r.as_deref().and_then(sent_at_ms))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "tracker: Redis unavailable for send times");
            vec![None; keys.len()]
        }
    }
}

/// The message's idempotency key, rebuilt from its token: the campaign claim (a step
/// group for a sequence step), the contact, the channel.
fn message_key(claims: &Claims) -> String {
    tocsin_planner::engine::idempotency_key(
        &claims.campaign_id,
        &claims.contact_id,
        feedback::channel_of(&claims.channel),
    )
}

/// Publishes behind the answer; a failure is counted as `error` in `counter`.
fn publish_later(state: &Arc<AppState>, event: v1::Feedback, counter: IntCounterVec) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(error) = state.publisher.publish(&event).await {
            counter.with_label_values(&["error"]).inc();
            tracing::warn!(%error, "tracker: an open or click was not published");
        }
    });
}

/// Builds the event of an open or click and judges it.
async fn engagement_event(
    state: &AppState,
    kind: v1::FeedbackKind,
    claims: &Claims,
    token: &str,
    client: &Client,
) -> v1::Feedback {
    let key = message_key(claims);
    let now = now_ms();
    let seen = sight(state, seen_key(claims.purpose, token, client), &key, now).await;
    let verdict = state.detector.judge(&Sighting {
        head: client.head,
        user_agent: Some(client.user_agent.as_deref().unwrap_or_default()),
        at_ms: seen.first_ms,
        sent_ms: seen.sent_ms,
        provider_says_machine: false,
    });
    if let Some(rule) = verdict {
        state
            .metrics
            .machine_flags
            .with_label_values(&[rule.label()])
            .inc();
    }
    let event_id = match kind {
        v1::FeedbackKind::Clicked => format!(
            "tracker:clicked:{key}:{}:{}",
            short_hash(&[claims.url.as_bytes()]),
            seen.first_ms
        ),
        _ => format!("tracker:opened:{key}:{}", seen.first_ms),
    };
    let mut event = feedback::event(kind, event_id);
    event.idempotency_key = key;
    feedback::attribute(&mut event, &claims.campaign_id);
    event.contact_id = claims.contact_id.clone();
    event.channel = feedback::channel_of(&claims.channel).into();
    event.url = claims.url.clone();
    event.machine = verdict.is_some();
    event
}

fn outcome(event: &v1::Feedback) -> &'static str {
    if event.machine { "machine" } else { "person" }
}

fn verified(state: &AppState, token: &str, purpose: Purpose) -> Option<Claims> {
    state
        .signer
        .verify(token)
        .ok()
        .filter(|c| c.purpose == purpose && !c.contact_id.is_empty())
}

fn pixel() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE)),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
            (header::EXPIRES, HeaderValue::from_static("0")),
        ],
        PIXEL,
    )
        .into_response()
}

/// `GET /o/{token}`: the GIF, always; `Feedback(opened)` when the token verifies.
pub async fn open(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(claims) = verified(&state, &token, Purpose::Open) else {
        state.metrics.opens.with_label_values(&["bad_token"]).inc();
        return pixel();
    };
    let client = Client::of(&state, peer, &method, &headers);
    let event = engagement_event(&state, v1::FeedbackKind::Opened, &claims, &token, &client).await;
    state
        .metrics
        .opens
        .with_label_values(&[outcome(&event)])
        .inc();
    publish_later(&state, event, state.metrics.opens.clone());
    pixel()
}

/// `GET /c/{token}`: 302 to the signed destination and `Feedback(clicked)`; 404 for a token
/// that does not verify.
pub async fn click(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let destination = verified(&state, &token, Purpose::Click).and_then(|claims| {
        let lower = claims.url.to_ascii_lowercase();
        let web = lower.starts_with("https://") || lower.starts_with("http://");
        let location = HeaderValue::from_str(&claims.url).ok();
        location.filter(|_| web).map(|location| (claims, location))
    });
    let Some((claims, location)) = destination else {
        state.metrics.clicks.with_label_values(&["bad_token"]).inc();
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE))],
            "Lien inconnu. / Unknown link.\n",
        )
            .into_response();
    };
    let client = Client::of(&state, peer, &method, &headers);
    let event = engagement_event(&state, v1::FeedbackKind::Clicked, &claims, &token, &client).await;
    state
        .metrics
        .clicks
        .with_label_values(&[outcome(&event)])
        .inc();
    publish_later(&state, event, state.metrics.clicks.clone());
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE)),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_is_a_1x1_gif() {
        assert_eq!(&PIXEL[..6], b"GIF89a");
        assert_eq!(u16::from_le_bytes([PIXEL[6], PIXEL[7]]), 1);
        assert_eq!(u16::from_le_bytes([PIXEL[8], PIXEL[9]]), 1);
        assert_eq!(PIXEL[PIXEL.len() - 1], 0x3b, "trailer");
    }

    #[test]
    fn repeats_share_a_record_other_clients_do_not() {
        let a = Client {
            address: "192.0.2.1".into(),
            user_agent: Some("Firefox".into()),
            head: false,
        };
        let b = Client {
            address: "192.0.2.2".into(),
            ..a.clone()
        };
        assert_eq!(
            seen_key(Purpose::Open, "tok", &a),
            seen_key(Purpose::Open, "tok", &a)
        );
        assert_ne!(
            seen_key(Purpose::Open, "tok", &a),
            seen_key(Purpose::Open, "tok", &b)
        );
        assert_ne!(
            seen_key(Purpose::Open, "tok", &a),
            seen_key(Purpose::Click, "tok", &a)
        );
    }
}
