//! The catalog the processor and `/v1/match` use, built from the store and kept in step with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::geofence::{FenceChange, IndexOptions, LayeredIndex};
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
            parts.fences,
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

/// Applies what changed in the store since `current` was loaded at version `from`: fence changes go into
/// the layered index (work for the changed fences only), promotions are replaced. `None` when the changes
/// need a full reload instead (an unusable row to quarantine, or a promotion naming a fence that is not
/// there): the full load sorts those out.
async fn changed_catalog(
    store: &Store,
    current: Arc<Catalog>,
    from: i64,
) -> anyhow::Result<Option<(Catalog, i64, Vec<FenceChange>)>> {
    let changes = store.catalog_changes_since(from).await?;
    if !changes.quarantined.is_empty() || !current.quarantined().is_empty() {
        return Ok(None);
    }
    let to = changes.to;
    let fence_changes: Vec<FenceChange> = changes
        .deleted
        .into_iter()
        .map(FenceChange::Delete)
        .chain(changes.upserted.into_iter().map(FenceChange::Upsert))
        .collect();
    let applied = fence_changes.clone();
    let promotions = changes.promotions;
    let built =
        tokio::task::spawn_blocking(move || current.with_changes(fence_changes, Some(promotions)))
            .await
            .context("catalog update panicked")?;
    Ok(built.ok().map(|catalog| (catalog, to, applied)))
}

/// A compaction of the catalog's index running on a blocking thread, and the fence changes applied to
/// the served catalog since the snapshot it compacts (re-applied to its result).
struct Compaction {
    task: tokio::task::JoinHandle<LayeredIndex>,
    since: Vec<FenceChange>,
}

/// Keeps `catalog` in step with the store: polls the version and, when it changes, swaps in a catalog
/// with the changes applied (readers keep matching against the old one until the swap). Fence changes
/// are applied to the layered index incrementally; when its overlay has grown, a full rebuild runs in the
/// background and is swapped in when done, with the changes made meanwhile re-applied. A change that does
/// not build is logged and the current catalog stays. Stops when `shutdown` is cancelled.
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
    let mut compaction: Option<Compaction> = None;
    loop {
        let compacted = async {
            match compaction.as_mut() {
                Some(running) => Some((&mut running.task).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            done = compacted => {
                let Some(Compaction { since, .. }) = compaction.take() else { continue };
                match done {
                    Some(Ok(index)) => {
                        let started = std::time::Instant::now();
                        let current = catalog.load_full();
                        let index = index.apply(since);
                        match current.with_index(index) {
                            Ok(fresh) => {
                                let overlay = fresh.index().overlay_size().0;
                                catalog.store(Arc::new(fresh));
                                metrics.catalog_updated("compacted", overlay);
                                tracing::info!(
                                    catalog_version = version,
                                    swap_ms = started.elapsed().as_secs_f64() * 1e3,
                                    "fence index compacted in the background; swapped in"
                                );
                            }
                            Err(error) => tracing::error!("compacted fence index does not fit the catalog: {error}"),
                        }
                    }
                    Some(Err(error)) => tracing::error!("fence index compaction failed: {error}"),
                    None => {}
                }
                continue;
            }
            _ = interval.tick() => {}
        }
        let current = match store.catalog_version().await {
            Ok(current) if current != version => current,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot poll the catalog version");
                continue;
            }
        };
        let started = std::time::Instant::now();
        match changed_catalog(&store, catalog.load_full(), version).await {
            Ok(Some((fresh, loaded, applied))) => {
                let index = Arc::clone(fresh.index());
                catalog.store(Arc::new(fresh));
                metrics.catalog_in_use(loaded, 0);
                metrics.catalog_updated("applied", index.overlay_size().0);
                tracing::info!(
                    from = version,
                    to = loaded,
                    fence_changes = applied.len(),
                    apply_ms = started.elapsed().as_secs_f64() * 1e3,
                    "catalog changed in the store; applied"
                );
                version = loaded;
                if let Some(running) = compaction.as_mut() {
                    running.since.extend(applied);
                } else if index.wants_compaction() {
                    compaction = Some(Compaction {
                        task: tokio::task::spawn_blocking(move || index.compacted()),
                        since: Vec::new(),
                    });
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!("cannot apply the catalog changes, reloading it whole: {error:#}")
            }
        }
        // A full reload supersedes any compaction in flight.
        if let Some(running) = compaction.take() {
            running.task.abort();
        }
        match catalog_from_store(&store, &settings).await {
            Ok((fresh, loaded)) => {
                metrics.catalog_in_use(loaded, fresh.quarantined().len());
                metrics.catalog_updated("reloaded", 0);
                catalog.store(Arc::new(fresh));
                tracing::info!(
                    from = version,
                    to = loaded,
                    "catalog changed in the store; reloaded and swapped in"
                );
                version = loaded;
            }
            Err(error) => {
                tracing::error!(
                    "catalog version {current} does not build, keeping {version}: {error:#}"
                );
                version = current;
            }
        }
    }
}
