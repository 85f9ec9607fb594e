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
    modifiers(&ApiKeyScheme, &IdLinks)
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

/// The document as served at `/openapi.json`, made once. utoipa 5.5 writes a link's fields in
/// snake case (`operation_id`, `request_body`, `operation_ref`) where OpenAPI spells them in
/// camel case, so they are renamed here; the rest is utoipa's own output.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(make);
    &DOCUMENT
}

fn make() -> serde_json::Value {
    // Cannot fail: every map in the document has string keys.
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let links = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links").and_then(|l| l.as_object_mut()))
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
    doc
}

/// OpenAPI links from the answers that name catalogue items (a page of the catalogue, a text
/// search's hits) to the operations that take an item's id. Clients can follow them, and the
/// contract fuzzer's stateful phase does: without them it only ever sends ids it made up, which
/// are never indexed (404), so the id-taking operations' success paths go unfuzzed.
struct IdLinks;

/// (source path, its JSON pointer to an id, a second id for the two-item operations).
const ID_SOURCES: [(&str, &str, &str); 2] = [
    ("/v1/images", "/items/0/id", "/items/1/id"),
    ("/v1/search", "/hits/0/id", "/hits/1/id"),
];

/// A link's parameters: (name, whether it takes the second id).
type LinkParams = &'static [(&'static str, bool)];

/// (link name, target operation id, its parameters).
const ID_TARGETS: [(&str, &str, LinkParams); 4] = [
    ("GetImage", "get_image", &[("id", false)]),
    ("Similar", "similar", &[("id", false)]),
    ("Recommend", "recommend", &[("like", false)]),
    ("Compare", "compare_items", &[("a", false), ("b", true)]),
];

impl utoipa::Modify for IdLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::link::LinkBuilder;
        for (path, first, second) in ID_SOURCES {
            let Some(ok) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.get.as_mut())
                .and_then(|op| op.responses.responses.get_mut("200"))
            else {
                continue;
            };
            let RefOr::T(response) = ok else { continue };
            for (name, operation, params) in ID_TARGETS {
                let link = params.iter().fold(
                    LinkBuilder::new().operation_id(operation),
                    |link, (param, use_second)| {
                        let pointer = if *use_second { second } else { first };
                        link.parameter(*param, format!("$response.body#{pointer}"))
                    },
                );
                response.links.insert(name.to_owned(), link.build().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema of the value at a JSON pointer into a document of `schema`: follows `$ref`,
    /// `allOf` (flattened fields), object properties and array items.
    fn schema_at<'a>(
        spec: &'a serde_json::Value,
        schema: &'a serde_json::Value,
        pointer: &str,
    ) -> Option<&'a serde_json::Value> {
        let mut schema = schema;
        while let Some(name) = schema["$ref"].as_str() {
            schema = &spec["components"]["schemas"][name.rsplit('/').next()?];
        }
        let Some(path) = pointer.strip_prefix('/') else {
            return Some(schema);
        };
        if let Some(parts) = schema["allOf"].as_array() {
            return parts.iter().find_map(|part| schema_at(spec, part, pointer));
        }
        let (segment, rest) = path.split_once('/').map_or((path, ""), |(a, b)| (a, b));
        let next = if segment.parse::<usize>().is_ok() {
            &schema["items"]
        } else {
            &schema["properties"][segment]
        };
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!("/{rest}")
        };
        (!next.is_null())
            .then(|| schema_at(spec, next, &rest))
            .flatten()
    }

    /// Every link names an operation of the document and one of its parameters, so a renamed
    /// handler or parameter breaks this test, not the clients following the links.
    #[test]
    fn the_id_links_lead_to_operations_that_take_ids() {
        let spec = document();
        let operations: Vec<&serde_json::Value> = spec["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("path item").values())
            .collect();
        for (path, ..) in ID_SOURCES {
            let links = spec["paths"][path]["get"]["responses"]["200"]["links"]
                .as_object()
                .unwrap_or_else(|| panic!("GET {path} has no links"));
            assert_eq!(links.len(), ID_TARGETS.len(), "{path}");
            for (name, link) in links {
                let target = operations
                    .iter()
                    .find(|op| op["operationId"] == link["operationId"])
                    .unwrap_or_else(|| {
                        panic!("{path} {name}: no operation {}", link["operationId"])
                    });
                let names: Vec<&str> = target["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let body = &spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
                    ["schema"];
                for (param, value) in link["parameters"].as_object().expect("link parameters") {
                    assert!(
                        names.contains(&param.as_str()),
                        "{path} {name}: {param} not in {names:?}"
                    );
                    let expression = value.as_str().expect("expression");
                    let pointer = expression
                        .strip_prefix("$response.body#")
                        .unwrap_or_else(|| panic!("{expression}"));
                    let field = schema_at(spec, body, pointer)
                        .unwrap_or_else(|| panic!("{path} {name}: no {pointer} in the answer"));
                    assert_eq!(
                        field["format"], "uuid",
                        "{path} {name}: {pointer} is {field}"
                    );
                }
            }
        }
    }

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
