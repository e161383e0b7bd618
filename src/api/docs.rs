//! The OpenAPI 3.1 document (generated from the handlers' annotations) and a human docs page rendered
//! from it on the server, so it works offline and without JavaScript.

use std::sync::OnceLock;

use axum::response::{Html, IntoResponse};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;

/// What the document says besides its paths: title, tags, the bearer scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "geopromo",
        description = "Location-based promotions: fences, promotions, locations and eligibility. Errors are RFC 9457 problem+json with stable `type` URIs. Authenticate with `POST /v1/auth/login`, then send `Authorization: Bearer <access_token>`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "fences", description = "City polygons (ops)"),
        (name = "promotions", description = "Promotions and their rules (ops; consumers read)"),
        (name = "locations", description = "GPS points from mobile clients"),
        (name = "results", description = "Eligibility and point matches"),
        (name = "auth", description = "Sessions and tokens"),
        (name = "admin", description = "Users, sessions and signing keys (admin)"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("EdDSA access token from /v1/auth/login"))
                    .build(),
            ),
        );
    }
}

/// The document of every route as JSON (the paths come from each resource's routes; see `api::router`).
#[must_use]
pub fn openapi() -> serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::to_value(super::openapi()).unwrap_or_default())
        .clone()
}

/// The document and the docs page.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
pub(super) async fn openapi_json() -> impl IntoResponse {
    Json(openapi())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /docs`: every operation with its description and responses (rendered from the OpenAPI document).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "This API, for humans", body = String, content_type = "text/html")))]
pub(super) async fn docs_page() -> Html<String> {
    Html(render(&openapi()))
}

fn render(doc: &serde_json::Value) -> String {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>geopromo API</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}\
         code{background:#f3f3f3;padding:0 .2em}.op{border-top:1px solid #ddd;padding:.6rem 0}\
         .m{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}</style></head><body>",
    );
    let info = &doc["info"];
    html.push_str(&format!(
        "<h1>{} <small>{}</small></h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        escape(info["title"].as_str().unwrap_or("")),
        escape(info["version"].as_str().unwrap_or("")),
        escape(info["description"].as_str().unwrap_or("")),
        escape(doc["openapi"].as_str().unwrap_or("")),
    ));
    if let Some(paths) = doc["paths"].as_object() {
        for (path, operations) in paths {
            let Some(operations) = operations.as_object() else {
                continue;
            };
            for (method, operation) in operations {
                html.push_str(&format!(
                    "<div class=\"op\"><span class=\"m\">{}</span><code>{}</code>{}<p>{}</p>",
                    escape(&method.to_uppercase()),
                    escape(path),
                    if operation.get("security").is_some() {
                        " &#128274;"
                    } else {
                        ""
                    },
                    escape(
                        operation["description"]
                            .as_str()
                            .or(operation["summary"].as_str())
                            .unwrap_or("")
                    ),
                ));
                if let Some(responses) = operation["responses"].as_object() {
                    html.push_str("<ul>");
                    for (status, response) in responses {
                        html.push_str(&format!(
                            "<li><b>{}</b> {}</li>",
                            escape(status),
                            escape(response["description"].as_str().unwrap_or(""))
                        ));
                    }
                    html.push_str("</ul>");
                }
                html.push_str("</div>");
            }
        }
    }
    html.push_str("</body></html>");
    html
}

/// JSON Schema of a GeoJSON fence Feature, for the OpenAPI document (request bodies are parsed by
/// `geofence::geojson`, which reports every problem; this types the shape so clients can be generated).
fn fence_feature_schema() -> serde_json::Value {
    let position = serde_json::json!({
        "type": "array", "minItems": 2, "maxItems": 3,
        "prefixItems": [
            {"type": "number", "minimum": -180, "maximum": 180, "description": "longitude"},
            {"type": "number", "minimum": -90, "maximum": 90, "description": "latitude"}
        ],
        "items": {"type": "number"}
    });
    let ring = serde_json::json!({"type": "array", "minItems": 4, "items": position,
        "description": "closed ring: the first and last positions are equal"});
    let polygon = serde_json::json!({"type": "array", "minItems": 1, "items": ring,
        "description": "outer ring, then holes"});
    serde_json::json!({
        "type": "object",
        "required": ["type", "geometry"],
        "properties": {
            "type": {"type": "string", "enum": ["Feature"]},
            "id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 128}, {"type": "integer"}],
                   "description": "fence id (or properties.id)"},
            "properties": {
                "type": ["object", "null"],
                "properties": {
                    "id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 128}, {"type": "integer"}]},
                    "name": {"type": "string"},
                    "tolerance_m": {"type": "number", "minimum": 0,
                                    "maximum": crate::geofence::metric::MAX_TOLERANCE_M},
                    "radius_m": {"type": "number", "exclusiveMinimum": 0,
                                 "maximum": crate::geofence::geojson::MAX_RADIUS_M,
                                 "description": "radius of a circular fence (Point geometry)"}
                }
            },
            "geometry": {"oneOf": [
                {"type": "object", "required": ["type", "coordinates"], "properties": {
                    "type": {"type": "string", "enum": ["Polygon"]}, "coordinates": polygon}},
                {"type": "object", "required": ["type", "coordinates"], "properties": {
                    "type": {"type": "string", "enum": ["MultiPolygon"]},
                    "coordinates": {"type": "array", "minItems": 1, "items": polygon}}},
                {"type": "object", "required": ["type", "coordinates"], "properties": {
                    "type": {"type": "string", "enum": ["Point"]}, "coordinates": position},
                 "description": "a circle around this centre, of properties.radius_m metres"}
            ]}
        }
    })
}

fn schema_from(
    value: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(value).unwrap_or_else(|_| {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(Default::default()))
    })
}

/// One GeoJSON Feature with a Polygon or MultiPolygon geometry, or a Point with `properties.radius_m`.
pub struct FenceFeature;

impl utoipa::PartialSchema for FenceFeature {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        schema_from(fence_feature_schema())
    }
}

impl utoipa::ToSchema for FenceFeature {}

/// A GeoJSON Feature or a FeatureCollection of them.
pub struct FenceUpload;

impl utoipa::PartialSchema for FenceUpload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        schema_from(serde_json::json!({"oneOf": [
            fence_feature_schema(),
            {"type": "object", "required": ["type", "features"], "properties": {
                "type": {"type": "string", "enum": ["FeatureCollection"]},
                "features": {"type": "array", "items": fence_feature_schema()}}}
        ]}))
    }
}

impl utoipa::ToSchema for FenceUpload {}

/// A timestamp as the API accepts it: RFC 3339 text or epoch milliseconds.
pub(super) fn timestamp_input_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(serde_json::json!({"oneOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "description": "epoch milliseconds"},
        {"type": "null"}
    ], "description": "RFC 3339 string or epoch milliseconds; default: now. Not more than rules.max_future_skew_s ahead of the server clock."}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_bearer_security() {
        let doc = openapi();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/fences",
            "/v1/locations",
            "/v1/auth/login",
            "/oauth/introspect",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let page = render(&doc);
        assert!(page.contains("<code>/v1/match</code>"));
        assert!(!page.contains("<script"));
    }
}
