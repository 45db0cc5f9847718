//! Injected misbehaviour: latency, the rate limit, and one random draw per request between
//! "held until the client gives up", 500, 429 and a normal answer.

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use rand::Rng;

use crate::config::{Faults, Provider};
use crate::state::{Reject, State};

/// What the injected faults decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Above `rate_limit`: 429, retry after this many seconds.
    RateLimited { retry_after_s: u64 },
    /// The `throttle_rate` draw: 429.
    Throttled { retry_after_s: u64 },
    /// The `error_rate` draw: 500.
    ServerError,
    /// The `timeout_rate` draw: held, then 504.
    Timeout { hold: Duration },
}

impl Fault {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Fault::RateLimited { .. } | Fault::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Fault::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Fault::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub(crate) fn retry_after_s(self) -> Option<u64> {
        match self {
            Fault::RateLimited { retry_after_s } | Fault::Throttled { retry_after_s } => {
                Some(retry_after_s)
            }
            Fault::ServerError | Fault::Timeout { .. } => None,
        }
    }

    fn reject(self) -> Reject {
        match self {
            Fault::RateLimited { .. } => Reject::RateLimited,
            Fault::Throttled { .. } => Reject::Throttled,
            Fault::ServerError => Reject::ServerError,
            Fault::Timeout { .. } => Reject::Timeout,
        }
    }
}

/// The configured latency plus jitter, slept before any answer.
pub(crate) async fn delay(faults: &Faults) {
    let jitter = if faults.jitter_ms > 0 {
        rand::rng().random_range(0..=faults.jitter_ms)
    } else {
        0
    };
    let total = faults.latency_ms.saturating_add(jitter);
    if total > 0 {
        tokio::time::sleep(Duration::from_millis(total)).await;
    }
}

/// Decides the fault for one request costing `cost` (requests, or SMS parts).
pub(crate) fn decide(
    state: &State,
    provider: Provider,
    faults: &Faults,
    cost: u32,
) -> Option<Fault> {
    if let Some(rate) = faults.rate_limit
        && let Err(retry_after_s) = state.take_rate(provider, rate, cost, Instant::now())
    {
        return Some(Fault::RateLimited { retry_after_s });
    }
    let draw: f64 = rand::rng().random();
    let mut threshold = faults.timeout_rate;
    if draw < threshold {
        return Some(Fault::Timeout {
            hold: Duration::from_millis(faults.hold_ms),
        });
    }
    threshold += faults.error_rate;
    if draw < threshold {
        return Some(Fault::ServerError);
    }
    threshold += faults.throttle_rate;
    if draw < threshold {
        return Some(Fault::Throttled {
            retry_after_s: faults.retry_after_s,
        });
    }
    None
}

/// Applies the faults for one request: counts the rejection, holds a "timed out" request,
/// and returns the answer `render` builds in the provider's own format (to which the
/// `Retry-After` of a 429 is added here). `None`: go on and answer normally.
pub(crate) async fn gate(
    state: &State,
    provider: Provider,
    faults: &Faults,
    cost: u32,
    render: impl FnOnce(Fault) -> Response,
) -> Option<Response> {
    let fault = decide(state, provider, faults, cost)?;
    state.reject(provider, fault.reject());
    if let Fault::Timeout { hold } = fault {
        tokio::time::sleep(hold).await;
    }
    let mut response = render(fault);
    if let Some(seconds) = fault.retry_after_s() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_draw_follows_the_configured_shares() {
        let state = State::new(&Config::default()).expect("client");
        let faults = Faults {
            error_rate: 0.2,
            throttle_rate: 0.1,
            timeout_rate: 0.05,
            ..Faults::default()
        };
        let (mut errors, mut throttles, mut timeouts) = (0, 0, 0);
        let n = 20_000;
        for _ in 0..n {
            match decide(&state, Provider::Webhook, &faults, 1) {
                Some(Fault::ServerError) => errors += 1,
                Some(Fault::Throttled { retry_after_s: 1 }) => throttles += 1,
                Some(Fault::Timeout { .. }) => timeouts += 1,
                None => {}
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        let share = |k: i32| f64::from(k) / f64::from(n);
        assert!((share(errors) - 0.2).abs() < 0.02, "{errors}");
        assert!((share(throttles) - 0.1).abs() < 0.02, "{throttles}");
        assert!((share(timeouts) - 0.05).abs() < 0.02, "{timeouts}");
    }

    #[test]
    fn no_faults_means_no_fault() {
        let state = State::new(&Config::default()).expect("client");
        for _ in 0..1000 {
            assert_eq!(
                decide(&state, Provider::Twilio, &Faults::default(), 3),
                None
            );
        }
    }
}
