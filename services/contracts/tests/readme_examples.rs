//! Every JSON example in `proto/README.md` decodes (and validates) as the type it names,
//! and survives a round trip through protobuf unchanged.

use tocsin_contracts::codec::{self, CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF};
use tocsin_contracts::{Event, v1};

fn examples() -> Vec<(String, String)> {
    let readme = include_str!("../../../proto/README.md");
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if let Some(ty) = line.strip_prefix("```json ") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((ty.trim().to_owned(), body.join("\n")));
        }
    }
    out
}

fn check<T: Event + PartialEq + std::fmt::Debug>(json: &str) {
    let from_json: T = codec::decode(Some(CONTENT_TYPE_JSON), json.as_bytes())
        .unwrap_or_else(|e| panic!("{} example does not decode: {e}\n{json}", T::NAME));
    let bytes = codec::to_protobuf(&from_json);
    let from_proto: T = codec::decode(Some(CONTENT_TYPE_PROTOBUF), &bytes).expect("protobuf");
    assert_eq!(from_json, from_proto);
}

#[test]
fn every_readme_example_decodes() {
    let examples = examples();
    assert!(
        examples.len() >= 10,
        "found only {} examples",
        examples.len()
    );
    for (ty, json) in &examples {
        match ty.as_str() {
            "tocsin.v1.SegmentEvent" => check::<v1::SegmentEvent>(json),
            "tocsin.v1.CampaignCommand" => check::<v1::CampaignCommand>(json),
            "tocsin.v1.SendJob" => check::<v1::SendJob>(json),
            "tocsin.v1.RenderedEmail" => check::<v1::RenderedEmail>(json),
            "tocsin.v1.RenderedSms" => check::<v1::RenderedSms>(json),
            "tocsin.v1.Feedback" => check::<v1::Feedback>(json),
            "tocsin.v1.DeadLetter" => check::<v1::DeadLetter>(json),
            other => panic!("example names unknown type {other}"),
        }
    }
}
