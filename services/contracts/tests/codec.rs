//! The wire codecs: both encodings of one event decode to equal values, and bad input is
//! refused with a reason a person can act on.

use std::collections::HashMap;

use pbjson_types::Timestamp;
use tocsin_contracts::codec::{self, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, DecodeError};
use tocsin_contracts::v1;

fn entered_event() -> v1::SegmentEvent {
    let contact = v1::Contact {
        id: "c-7".into(),
        email: "lea@exemple.fr".into(),
        phone_e164: "+262692000001".into(),
        first_name: "Léa".into(),
        last_name: "Hoarau".into(),
        locale: "fr".into(),
        time_zone: "Indian/Reunion".into(),
        attributes: HashMap::from([("commune".to_owned(), "Saint-Denis".to_owned())]),
        consents: vec![v1::Consent {
            channel: v1::Channel::Sms.into(),
            status: v1::ConsentStatus::Granted.into(),
            source: "meeting".into(),
            recorded_at: Some(Timestamp {
                seconds: 1_780_000_000,
                nanos: 0,
            }),
        }],
        updated_at: Some(Timestamp {
            seconds: 1_780_000_100,
            nanos: 500,
        }),
    };
    v1::SegmentEvent {
        meta: Some(v1::EventMeta {
            event_id: "e-1".into(),
            occurred_at: None,
            source: "crm".into(),
        }),
        contact_id: "c-7".into(),
        change: Some(v1::segment_event::Change::Entered(v1::SegmentEntered {
            segment_id: "s".into(),
            contact: Some(contact),
        })),
    }
}

#[test]
fn json_and_protobuf_of_the_same_event_decode_to_equal_values() {
    let event = entered_event();
    let json = codec::to_json(&event).expect("json");
    let proto = codec::to_protobuf(&event);
    let from_json: v1::SegmentEvent = codec::decode(Some(CONTENT_TYPE_JSON), &json).expect("json");
    let from_proto: v1::SegmentEvent =
        codec::decode(Some(CONTENT_TYPE_PROTOBUF), &proto).expect("proto");
    assert_eq!(from_json, from_proto);
    assert_eq!(from_json, event);
    // JSON really is the proto3 mapping: camelCase names, enum names, RFC 3339 timestamps
    // (pbjson writes the UTC offset as `+00:00`; readers accept it and `Z`).
    let text = String::from_utf8(json).expect("utf-8");
    assert!(text.contains(r#""phoneE164":"+262692000001""#), "{text}");
    assert!(text.contains(r#""channel":"CHANNEL_SMS""#), "{text}");
    assert!(
        text.contains(r#""updatedAt":"2026-05-28T20:28:20.000000500+00:00""#),
        "{text}"
    );
}

#[test]
fn content_type_parameters_and_absence_are_understood() {
    let event = entered_event();
    let json = codec::to_json(&event).expect("json");
    let decoded: v1::SegmentEvent =
        codec::decode(Some("Application/JSON; charset=utf-8"), &json).expect("json");
    assert_eq!(decoded, event);
    let decoded: v1::SegmentEvent = codec::decode(None, &codec::to_protobuf(&event)).expect("pb");
    assert_eq!(decoded, event);
}

fn reason<T: tocsin_contracts::Event + std::fmt::Debug>(
    content_type: Option<&str>,
    payload: &[u8],
) -> String {
    codec::decode::<T>(content_type, payload)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn garbage_is_refused_with_a_reason() {
    let r = reason::<v1::SegmentEvent>(Some(CONTENT_TYPE_PROTOBUF), &[0xff, 0xff, 0xff, 0x01]);
    assert!(
        r.starts_with("payload is not valid protobuf for tocsin.v1.SegmentEvent"),
        "{r}"
    );

    // An empty payload is a valid protobuf message of every type: validation catches it.
    let r = reason::<v1::SegmentEvent>(None, b"");
    assert_eq!(
        r,
        "tocsin.v1.SegmentEvent is invalid: field `meta` is required"
    );

    let r = reason::<v1::SegmentEvent>(Some(CONTENT_TYPE_JSON), br#"{"contactId": 42}"#);
    assert!(
        r.contains("invalid type: integer `42`, expected a string"),
        "{r}"
    );

    let r = reason::<v1::SegmentEvent>(Some(CONTENT_TYPE_JSON), br#"{"contactID": "c-1"}"#);
    assert!(r.contains("unknown field `contactID`"), "{r}");

    let r = reason::<v1::SegmentEvent>(Some("text/csv"), b"a,b");
    assert!(r.contains("unsupported content-type \"text/csv\""), "{r}");

    let mut event = entered_event();
    event.contact_id = "c-8".into();
    let r = reason::<v1::SegmentEvent>(None, &codec::to_protobuf(&event));
    assert_eq!(
        r,
        "tocsin.v1.SegmentEvent is invalid: field `entered.contact.id` must equal contactId"
    );
}

#[test]
fn decode_errors_name_the_event_type() {
    let err = codec::decode::<v1::SendJob>(None, b"").expect_err("invalid");
    assert!(matches!(
        err,
        DecodeError::Invalid {
            event: "tocsin.v1.SendJob",
            ..
        }
    ));
}
