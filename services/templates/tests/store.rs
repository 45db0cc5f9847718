//! The template store against the local stack's Redis: versions, the list, the soft delete.
//!
//! Redis database 14 is shared with the API's template tests running at the same time, so
//! nothing is flushed: every template id here is unique to its run.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use tocsin_integration_tests::stack;
use tocsin_templates::{Channel, Content, TemplateDraft, store};

const REDIS_DB: u8 = 14;

async fn connect() -> ConnectionManager {
    let url = stack::redis_url();
    let url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{REDIS_DB}"),
        None => url,
    };
    let client = redis::Client::open(url).expect("redis url");
    ConnectionManager::new(client)
        .await
        .expect("redis (deploy/local/stack.sh up)")
}

fn sms(body: &str) -> TemplateDraft {
    TemplateDraft {
        channel: Channel::Sms,
        variants: BTreeMap::from([(
            "fr".to_owned(),
            Content::Sms {
                body: body.to_owned(),
            },
        )]),
        default_locale: "fr".to_owned(),
    }
}

fn body(draft: &TemplateDraft) -> &str {
    match draft.variants.get("fr") {
        Some(Content::Sms { body }) => body,
        other => panic!("not an SMS variant: {other:?}"),
    }
}

#[tokio::test]
async fn every_upload_is_a_new_version_and_the_latest_is_read_by_default() {
    let mut conn = connect().await;
    let id = stack::unique("tpl-versions");
    assert!(
        store::get(&mut conn, &id, None)
            .await
            .expect("get")
            .is_none()
    );
    let first = store::put(&mut conn, &id, sms("un"), "test", 1)
        .await
        .expect("put");
    let second = store::put(&mut conn, &id, sms("deux"), "test", 2)
        .await
        .expect("put");
    assert_eq!((first.version, second.version), (1, 2));
    let latest = store::get(&mut conn, &id, None)
        .await
        .expect("get")
        .expect("latest");
    assert_eq!(latest.version, 2);
    assert_eq!(body(&latest.draft), "deux");
    let old = store::get(&mut conn, &id, Some(1))
        .await
        .expect("get")
        .expect("v1");
    assert_eq!(body(&old.draft), "un");
    assert!(
        store::get(&mut conn, &id, Some(3))
            .await
            .expect("get")
            .is_none()
    );
    assert!(store::list(&mut conn).await.expect("list").contains(&id));
}

#[tokio::test]
async fn a_deleted_template_keeps_its_versions_for_pinned_jobs_only() {
    let mut conn = connect().await;
    let id = stack::unique("tpl-deleted");
    store::put(&mut conn, &id, sms("un"), "test", 1)
        .await
        .expect("put");
    store::put(&mut conn, &id, sms("deux"), "test", 2)
        .await
        .expect("put");

    assert!(store::delete(&mut conn, &id, 10).await.expect("delete"));
    assert!(
        !store::delete(&mut conn, &id, 11).await.expect("delete"),
        "a second delete finds nothing to delete"
    );
    assert!(
        store::get(&mut conn, &id, None)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store::get_live(&mut conn, &id, Some(1))
            .await
            .expect("get")
            .is_none()
    );
    assert!(!store::list(&mut conn).await.expect("list").contains(&id));
    // A job already on the bus pins a version: it still renders.
    let pinned = store::get(&mut conn, &id, Some(1))
        .await
        .expect("get")
        .expect("v1 kept");
    assert_eq!(body(&pinned.draft), "un");
    let deleted: Option<i64> =
        redis::AsyncCommands::hget(&mut conn, store::key(&id), store::DELETED)
            .await
            .expect("hget");
    assert_eq!(deleted, Some(10));

    // Uploading again brings it back with the next number, never reusing one.
    let again = store::put(&mut conn, &id, sms("trois"), "test", 20)
        .await
        .expect("put");
    assert_eq!(again.version, 3);
    let latest = store::get_live(&mut conn, &id, None)
        .await
        .expect("get")
        .expect("live again");
    assert_eq!(body(&latest.draft), "trois");
    assert!(store::list(&mut conn).await.expect("list").contains(&id));
    let old = store::get_live(&mut conn, &id, Some(1))
        .await
        .expect("get")
        .expect("v1 visible again");
    assert_eq!(body(&old.draft), "un");
}

#[tokio::test]
async fn deleting_an_unknown_template_does_nothing() {
    let mut conn = connect().await;
    let id = stack::unique("tpl-unknown");
    assert!(!store::delete(&mut conn, &id, 1).await.expect("delete"));
    let exists: bool = redis::AsyncCommands::exists(&mut conn, store::key(&id))
        .await
        .expect("exists");
    assert!(!exists, "no record is created for an unknown id");
}
