//! The OpenAPI document, generated from the handlers and types. A copy is kept in the repo
//! (`services/api/openapi.json`); a test fails when the two differ (regenerate with
//! `TOCSIN_UPDATE_OPENAPI=1 cargo test -p tocsin-api --test openapi`).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{campaigns, error, preview, segments, sequences, templates};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tocsin control API", description = "Schedule and steer blasts; define automated sequences and read their funnels; read segments; upload, preview, test-send and delete templates."),
    paths(
        campaigns::create, campaigns::list, campaigns::get, campaigns::pause,
        campaigns::resume, campaigns::cancel, campaigns::dry_run,
        segments::list, segments::get,
        sequences::create, sequences::update, sequences::list, sequences::get,
        sequences::retire,
        templates::put, templates::list, templates::get, templates::delete,
        preview::preview, preview::test_send,
    ),
    components(schemas(
        campaigns::CampaignRequest, campaigns::CampaignView, campaigns::Counters,
        campaigns::Outcomes, campaigns::Rates,
        campaigns::DryRun, campaigns::Channel, campaigns::Tracking,
        campaigns::QuietHoursRequest, campaigns::WindowRequest,
        sequences::SequenceRequest, sequences::StepRequest, sequences::ConditionRequest,
        sequences::ExitRequest, sequences::ReEntryRequest, sequences::SequenceView,
        sequences::StepView, sequences::Funnel, sequences::StepFunnel,
        sequences::RetireRequest,
        segments::SegmentSummary, segments::SegmentDetail, segments::MemberSample,
        templates::TemplateUpload, templates::TemplateView, templates::TemplateSummary,
        preview::PreviewRequest, preview::ContactRequest, preview::PreviewView,
        preview::EmailPreview, preview::SmsPreview, preview::HeaderView,
        preview::TestSendRequest, preview::TestSendView,
        error::ErrorBody,
    )),
    modifiers(&Bearer),
)]
#[derive(Debug)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON, pretty-printed (what the repo keeps).
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
