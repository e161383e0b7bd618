//! The ops console at `/console`: a single page (plain ES modules, no build step) and its vendored
//! MapLibre GL JS and base map, all embedded in the binary so that the service needs no Node and no
//! internet (see docs/console.md). The page talks to the same `/v1` API with the same tokens as every
//! other client; nothing here is authenticated because nothing here is data.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, ApiPath, ApiState};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Vendored files never change within a build; the page's own files are re-checked on every load.
    immutable: bool,
}

macro_rules! asset {
    ($path:literal, $type:literal, $immutable:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $path)),
            immutable: $immutable,
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8", false),
    asset!("app.js", "text/javascript; charset=utf-8", false),
    asset!("style.css", "text/css; charset=utf-8", false),
    asset!(
        "vendor/maplibre-gl.mjs",
        "text/javascript; charset=utf-8",
        true
    ),
    asset!(
        "vendor/maplibre-gl-worker.mjs",
        "text/javascript; charset=utf-8",
        true
    ),
    asset!("vendor/maplibre-gl.css", "text/css; charset=utf-8", true),
    asset!(
        "vendor/maplibre-gl-LICENSE.txt",
        "text/plain; charset=utf-8",
        true
    ),
    asset!(
        "vendor/countries-110m.geojson",
        "application/geo+json",
        true
    ),
];

/// Tiles and scripts come from this origin only, unless a tile server is configured.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data: blob: https: http:; \
     connect-src 'self' https: http:; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { serve("index.html") }))
        .route("/console/config.json", get(console_config))
        .route("/console/{*path}", get(asset))
}

async fn asset(ApiPath(path): ApiPath<String>) -> Response {
    serve(&path)
}

fn serve(path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return ApiError::not_found(format!("no console file {path:?}")).into_response();
    };
    let cache = if asset.immutable {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The base map the console draws under the fences (`[api.console]`).
async fn console_config(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let console = &state.console;
    Json(serde_json::json!({
        "raster_tiles": console.raster_tiles,
        "attribution": console.attribution,
        "style_url": console.style_url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_names_only_embedded_files() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
        }
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for reference in page.split(['"', '\'']).filter(|s| {
            s.starts_with("./")
                && (s.ends_with(".js") || s.ends_with(".css") || s.ends_with(".mjs"))
        }) {
            let path = reference.trim_start_matches("./");
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "index.html refers to {path}, which is not embedded"
            );
        }
    }
}
