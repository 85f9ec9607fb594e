//! The OpenAPI document: every route with its parameters, bounds and error statuses.

use backend_api::{
    DeleteResponse, ErrorBody, ErrorDetail, ExistsRequest, ExistsResponse, FacetsResponse,
    ImageAttributes, ImageItem, IngestBatchRequest, IngestBatchResponse, ListResponse,
    SearchResponse, StatsResponse, TextSearchRequest,
};
use utoipa::OpenApi;

use super::{images, search};

#[derive(OpenApi)]
#[openapi(
    info(title = "fashion search", description = "Text and image search over a fashion catalogue."),
    paths(
        search::search_text, search::search_image, search::search_reference, search::similar,
        images::get_image, images::delete_image, images::list_images, search::stats,
        search::facets, images::ingest_batch, images::exists, images::add_image,
        search::query_summary, search::start_reindex, search::reindex_status, search::recommend,
        search::compare_items, search::compare_photos, search::points_page, search::models
    ),
    components(schemas(
        SearchResponse, backend_api::SearchHit, ImageItem, ImageAttributes, ListResponse,
        StatsResponse, FacetsResponse, backend_api::FacetValue, IngestBatchRequest,
        backend_api::IngestItem, IngestBatchResponse, ExistsRequest, ExistsResponse, ErrorBody,
        ErrorDetail, TextSearchRequest, images::AddImageUrl, DeleteResponse, backend_api::SearchMode,
        backend_api::QuerySummaryResponse, backend_api::QueryCount, backend_api::ReindexRequest,
        backend_api::ReindexModel, backend_api::ReindexStatus, backend_api::ReindexState,
        backend_api::CompareResponse, search::CompareUpload, backend_api::PointsPage,
        backend_api::StoredPoint, backend_api::ModelsResponse, backend_api::ServedModel,
        backend_api::ModelRole
    )),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds and error statuses the handlers enforce are in the document.
    #[test]
    fn the_openapi_document_states_bounds_and_errors() {
        let spec = serde_json::to_value(ApiDoc::openapi()).expect("spec");
        let param = |path: &str, method: &str, name: &str| {
            spec["paths"][path][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
        };
        let k = param("/v1/search", "get", "k");
        assert_eq!(
            (
                k["schema"]["minimum"].as_f64(),
                k["schema"]["maximum"].as_f64()
            ),
            (Some(1.0), Some(100.0)),
            "{k}"
        );
        let offset = param("/v1/images/{id}/similar", "get", "offset");
        assert_eq!(
            offset["schema"]["maximum"].as_f64(),
            Some(999.0),
            "{offset}"
        );
        let q = param("/v1/search", "get", "q");
        assert_eq!(q["required"], true, "{q}");
        assert_eq!(q["schema"]["minLength"], 1, "{q}");
        assert_eq!(q["schema"]["maxLength"], 500, "{q}");
        for (path, method) in [
            ("/v1/search", "get"),
            ("/v1/search/image", "post"),
            ("/v1/images/{id}/similar", "get"),
            ("/v1/images", "get"),
        ] {
            for field in backend_api::Filters::FIELDS {
                param(path, method, field);
            }
        }
        let min_score = param("/v1/search", "get", "min_score");
        assert_eq!(
            min_score["schema"]["minimum"].as_f64(),
            Some(-1.0),
            "{min_score}"
        );
        let limit = param("/v1/images", "get", "limit");
        assert_eq!(limit["schema"]["maximum"].as_f64(), Some(100.0), "{limit}");
        let statuses = |path: &str, method: &str| -> Vec<String> {
            spec["paths"][path][method]["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        for (path, method, expected) in [
            ("/v1/search", "get", &["200", "400", "429", "503"][..]),
            ("/v1/images/{id}", "get", &["200", "400", "404", "503"]),
            ("/v1/images/{id}/similar", "get", &["200", "400", "404"]),
            (
                "/v1/images/{id}",
                "delete",
                &["200", "400", "401", "403", "404"],
            ),
            (
                "/v1/images:batch",
                "post",
                &["200", "400", "401", "403", "413", "415"],
            ),
            (
                "/v1/images",
                "post",
                &["200", "400", "401", "413", "415", "429", "503"],
            ),
            (
                "/v1/search/image",
                "post",
                &["200", "400", "408", "413", "415", "503"],
            ),
        ] {
            let got = statuses(path, method);
            for status in expected {
                assert!(
                    got.iter().any(|s| s == status),
                    "{method} {path} does not document {status}: {got:?}"
                );
            }
        }
        let retry = &spec["paths"]["/v1/search"]["get"]["responses"]["503"]["headers"];
        assert!(retry["Retry-After"].is_object(), "{retry}");
    }
}
