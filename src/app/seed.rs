//! Seed data: the fence and promotion files (or the copies built into the binary), and the store seeded
//! from them when it is empty.

use std::borrow::Cow;
use std::path::Path;

use anyhow::Context as _;

use crate::config::Settings;
use crate::geofence::{parse_fences, Fence, IndexOptions, ParseOptions};
use crate::promo::{parse_promotions, Catalog, EpochMs, Promotion};
use crate::store::Store;

/// The seed data built into the binary, so that `geopromo serve` runs from any directory: used when
/// `fences.path` / `promotions.path` are left empty (the default).
const BUILTIN_FENCES: &[u8] = include_bytes!("../../geodata/cities.geojson");
const BUILTIN_PROMOTIONS: &[u8] = include_bytes!("../../config/promotions.json");

/// Where seed data came from, for messages: the configured file or the built-in copy.
fn seed_source(path: &Path, builtin: &str) -> String {
    if path.as_os_str().is_empty() {
        format!("built-in {builtin}")
    } else {
        path.display().to_string()
    }
}

fn read_seed(
    path: &Path,
    builtin: &'static [u8],
    what: &str,
) -> anyhow::Result<Cow<'static, [u8]>> {
    if path.as_os_str().is_empty() {
        return Ok(Cow::Borrowed(builtin));
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    Ok(Cow::Owned(bytes))
}

/// Reads and validates the fence file named in the settings (the built-in cities when none is named).
pub fn load_fence_file(settings: &Settings) -> anyhow::Result<Vec<Fence>> {
    let path = &seed_source(&settings.fences.path, "geodata/cities.geojson");
    let bytes = read_seed(&settings.fences.path, BUILTIN_FENCES, "fences")?;
    let options = ParseOptions::default()
        .default_tolerance_m(settings.fences.default_tolerance_m)
        .skip_invalid(settings.fences.skip_invalid);
    let parsed = parse_fences(&bytes, &options).map_err(|err| {
        let details = match &err {
            crate::geofence::GeoJsonError::Invalid { .. } => err.report_lines().join("\n  "),
            _ => String::new(),
        };
        anyhow::anyhow!("{path}: {err}\n  {details}")
    })?;
    for line in crate::geofence::geojson::problem_lines(&parsed.skipped) {
        tracing::warn!(file = %path, "skipped: {line}");
    }
    Ok(parsed.fences)
}

/// Builds the catalog (fences × promotions × rules) from the files named in the settings.
pub fn load_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    let fences = load_fence_file(settings)?;
    let promotions = load_promotion_file(settings)?;
    let catalog = Catalog::build(
        fences,
        promotions,
        settings.rules.to_options(),
        IndexOptions::default().cells_per_degree(settings.fences.cells_per_degree),
    )
    .with_context(|| {
        format!(
            "{} does not fit {}",
            seed_source(&settings.promotions.path, "config/promotions.json"),
            seed_source(&settings.fences.path, "geodata/cities.geojson"),
        )
    })?;
    Ok(catalog)
}

/// Reads the promotions file named in the settings (the built-in sample when none is named).
pub fn load_promotion_file(settings: &Settings) -> anyhow::Result<Vec<Promotion>> {
    let bytes = read_seed(&settings.promotions.path, BUILTIN_PROMOTIONS, "promotions")?;
    parse_promotions(&bytes).with_context(|| {
        format!(
            "in {}",
            seed_source(&settings.promotions.path, "config/promotions.json")
        )
    })
}

/// Connects to the store and, when it holds no fences yet, seeds it from the fence and promotion files.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database.url).await?;
    if store.catalog_version().await? == 0 {
        let fences = load_fence_file(settings)?;
        let promotions = load_promotion_file(settings)?;
        if store
            .seed_if_empty(&fences, &promotions, EpochMs::now().as_millis())
            .await?
        {
            tracing::info!(
                fences = fences.len(),
                promotions = promotions.len(),
                "empty store seeded from {} and {}",
                seed_source(&settings.fences.path, "geodata/cities.geojson"),
                seed_source(&settings.promotions.path, "config/promotions.json")
            );
        }
    }
    Ok(store)
}
