//! The OpenAPI document in the repo is the one the code generates.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let generated = tocsin_api::openapi::document();
    if std::env::var_os("TOCSIN_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "services/api/openapi.json is stale: TOCSIN_UPDATE_OPENAPI=1 cargo test -p tocsin-api --test openapi"
    );
    for path in [
        "/v1/campaigns",
        "/v1/campaigns/{id}/cancel",
        "/v1/campaigns/dry-run",
        "/v1/segments/{id}",
        "/v1/templates/{id}/preview",
        "/v1/templates/{id}/test-send",
    ] {
        assert!(generated.contains(&format!("\"{path}\"")), "{path} missing");
    }
}
