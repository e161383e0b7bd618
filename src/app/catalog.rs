//! The catalog the processor and `/v1/match` use, built from the store and kept in step with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::geofence::IndexOptions;
use crate::promo::{Catalog, SharedCatalog};
use crate::store::Store;
use crate::telemetry::PipelineMetrics;

/// Builds the catalog from what the store holds; returns it with the version it reflects. Rows that
/// cannot be used are quarantined (left out, logged as errors, listed by `/readyz` and counted by the
/// `catalog_quarantined` metric): a service never refuses to start on stored data.
pub async fn catalog_from_store(
    store: &Store,
    settings: &Settings,
) -> anyhow::Result<(Catalog, i64)> {
    // Read the version first: a change racing with the load is then picked up by the next poll.
    let version = store.catalog_version().await?;
    let parts = store.load_catalog_parts().await?;
    for line in &parts.quarantined {
        tracing::error!(catalog_version = version, "QUARANTINED stored data: {line}");
    }
    let rules = settings.rules.to_options();
    let cells = settings.fences.cells_per_degree;
    let catalog = tokio::task::spawn_blocking(move || {
        Catalog::build(
            &parts.fences,
            parts.promotions,
            rules,
            IndexOptions::default().cells_per_degree(cells),
        )
        .map(|catalog| catalog.with_quarantined(parts.quarantined))
    })
    .await
    .context("catalog build panicked")?
    .context("the stored catalog does not build")?;
    if catalog.active_promotions() == 0 {
        tracing::warn!(
            "NO ACTIVE PROMOTION in the store: every point is matched and nobody becomes eligible. \
             Add one with POST /v1/promotions or `geopromo promotions import FILE`"
        );
    }
    Ok((catalog, version))
}

/// Keeps `catalog` in step with the store: polls the version and swaps in a rebuilt catalog when it
/// changes (readers keep matching against the old one until the swap). A change that does not build is
/// logged and the current catalog stays. Stops when `shutdown` is cancelled.
pub async fn follow_catalog(
    store: Store,
    settings: Settings,
    catalog: Arc<SharedCatalog>,
    mut version: i64,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) {
    metrics.catalog_in_use(version, catalog.load().quarantined().len());
    let mut interval = tokio::time::interval(Duration::from_millis(
        settings.database.poll_interval_ms.max(50),
    ));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store.catalog_version().await {
            Ok(current) if current != version => {
                match catalog_from_store(&store, &settings).await {
                    Ok((fresh, loaded)) => {
                        metrics.catalog_in_use(loaded, fresh.quarantined().len());
                        catalog.store(Arc::new(fresh));
                        tracing::info!(
                            from = version,
                            to = loaded,
                            "catalog changed in the store; swapped in"
                        );
                        version = loaded;
                    }
                    Err(error) => {
                        tracing::error!("catalog version {current} does not build, keeping {version}: {error:#}");
                        version = current;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot poll the catalog version"),
        }
    }
}
