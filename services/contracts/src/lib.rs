//! The event contracts of the Tocsin bus.
//!
//! `proto/tocsin/v1/*.proto` is the only source of truth; this crate compiles it at build
//! time (prost through protox, serde impls following the proto3 JSON mapping through
//! pbjson) and adds what every service needs around the generated types.
//!
//! # Layout
//! - [`v1`]: the generated message types (`SegmentEvent`, `SendJob`, `Feedback`, ...).
//! - [`codec`]: decoding from protobuf or JSON chosen by the `content-type` header, and
//!   encoding; every decoded top-level event is validated before a service sees it.
//! - [`validate`]: the structural rules each top-level event must satisfy.
//! - [`domain`]: newtypes that validate personal data once at the edge
//!   (`EmailAddress`, `PhoneNumber`) and never print it in full.

pub mod codec;
pub mod domain;
pub mod validate;

/// Generated from `proto/tocsin/v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tocsin.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/tocsin.v1.serde.rs"));
}

pub use codec::{DecodeError, Encoding, Event};
pub use pbjson_types::{Duration, Timestamp};

/// The current time as a protobuf timestamp.
pub fn timestamp_now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}
