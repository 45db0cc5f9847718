//! Wire codecs: protobuf for the services, the proto3 JSON mapping for people and scripts.
//!
//! The encoding of a message is named by its `content-type` header. A message without the
//! header is protobuf, which is what every Tocsin service produces.

use crate::v1;
use crate::validate::{Validate, ValidationError};

/// `content-type` of protobuf payloads.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `content-type` of proto3-JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// Reads a `content-type` header value. Parameters (`; charset=utf-8`) and case are
    /// ignored; a missing header means protobuf.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, DecodeError> {
        let Some(raw) = content_type else {
            return Ok(Encoding::Protobuf);
        };
        let essence = raw.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(DecodeError::UnsupportedContentType(raw.to_owned())),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => CONTENT_TYPE_PROTOBUF,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }
}

/// Why a payload could not be turned into an event. The message is meant for the person
/// who will read the dead-letter topic: it names the event type and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "unsupported content-type {0:?}: use \"application/x-protobuf\" or \"application/json\""
    )]
    UnsupportedContentType(String),
    #[error("payload is not valid protobuf for {event}: {source}")]
    Protobuf {
        event: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("payload is not valid JSON for {event}: {source}")]
    Json {
        event: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{event} is invalid: {source}")]
    Invalid {
        event: &'static str,
        #[source]
        source: ValidationError,
    },
}

/// A top-level event: a message that travels alone on a topic.
pub trait Event:
    prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned + Validate
{
    /// The fully qualified protobuf name, for error messages.
    const NAME: &'static str;
}

macro_rules! events {
    ($($ty:ident),* $(,)?) => {
        $(impl Event for v1::$ty {
            const NAME: &'static str = concat!("tocsin.v1.", stringify!($ty));
        })*
    };
}

events!(
    SegmentEvent,
    CampaignCommand,
    SendJob,
    RenderedEmail,
    RenderedSms,
    Feedback,
    DeadLetter
);

/// Decodes and validates an event whose encoding is named by `content_type`.
pub fn decode<T: Event>(content_type: Option<&str>, payload: &[u8]) -> Result<T, DecodeError> {
    let event: T = match Encoding::from_content_type(content_type)? {
        Encoding::Protobuf => T::decode(payload).map_err(|source| DecodeError::Protobuf {
            event: T::NAME,
            source,
        })?,
        Encoding::Json => serde_json::from_slice(payload).map_err(|source| DecodeError::Json {
            event: T::NAME,
            source,
        })?,
    };
    event.validate().map_err(|source| DecodeError::Invalid {
        event: T::NAME,
        source,
    })?;
    Ok(event)
}

/// Encodes an event as protobuf, the encoding services exchange.
pub fn to_protobuf<T: Event>(event: &T) -> Vec<u8> {
    event.encode_to_vec()
}

/// Encodes an event in the proto3 JSON mapping, for people and scripts.
pub fn to_json<T: Event>(event: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(event)
}
