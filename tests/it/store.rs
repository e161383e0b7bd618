//! The store against both real backends: a SQLite file in a temp dir and the local PostgreSQL
//! (127.0.0.1:5432, user postgres, trust auth), with a fresh database per test.

use crate::common;

use common::fresh_postgres_url;
use geopromo::geofence::{parse_fences, ParseOptions};
use geopromo::promo::parse_promotions;
use geopromo::store::{Backend, Eligibility, EligibilityChange, Store};

/// A fresh store on each backend; the temp dir lives as long as the returned guard.
async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!(
        "sqlite://{}",
        dir.path().join("data/geopromo.sqlite").display()
    );
    let sqlite = Store::connect(&sqlite_url).await.unwrap();
    assert_eq!(sqlite.backend(), Backend::Sqlite);

    let postgres_url = fresh_postgres_url("geopromo_test").await;
    let postgres = Store::connect(&postgres_url).await.unwrap();
    assert_eq!(postgres.backend(), Backend::Postgres);
    vec![(sqlite, Some(dir)), (postgres, None)]
}

const FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":750},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]],
    [[106.04,-6.06],[106.06,-6.06],[106.06,-6.04],[106.04,-6.04],[106.04,-6.06]]]}},
 {"type":"Feature","id":"islands","properties":{"name":"Two_Islands"},
  "geometry":{"type":"MultiPolygon","coordinates":[[[[110.0,-7.1],[110.1,-7.1],[110.1,-7.0],[110.0,-7.1]]],
    [[[111.0,-7.1],[111.1,-7.1],[111.1,-7.0],[111.0,-7.1]]]]}}]}"#;

#[tokio::test]
async fn fences_round_trip_and_every_change_bumps_the_version() {
    for (store, _guard) in stores().await {
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        assert_eq!(store.catalog_version().await.unwrap(), 0);
        let v1 = store.upsert_fences(&fences, 1000).await.unwrap();
        assert_eq!(v1, 1);
        let mut by_id = fences.clone();
        by_id.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            store.load_fences().await.unwrap(),
            by_id,
            "{:?}",
            store.backend()
        );

        let mut renamed = fences[0].clone();
        renamed.name = "Renamed".into();
        let v2 = store
            .upsert_fences(std::slice::from_ref(&renamed), 2000)
            .await
            .unwrap();
        assert_eq!(v2, 2);
        let stored = store.get_fence("square").await.unwrap().unwrap();
        assert_eq!(
            (stored.name.as_str(), stored.version, stored.updated_at_ms),
            ("Renamed", 2, 2000)
        );
        assert_eq!(stored.vertex_count, 8, "closing positions are not vertices");

        assert!(store.delete_fence("islands").await.unwrap());
        assert!(!store.delete_fence("islands").await.unwrap());
        assert_eq!(store.catalog_version().await.unwrap(), 3);
        assert!(store.get_fence("islands").await.unwrap().is_none());
    }
}

/// Followers apply what changed since their version; the result answers as a full reload does.
#[tokio::test]
async fn changes_since_a_version_rebuild_the_same_catalog() {
    use geopromo::geofence::{FenceChange, GeoPoint, IndexOptions};
    use geopromo::promo::{Catalog, RuleOptions};
    for (store, _guard) in stores().await {
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        let v1 = store.upsert_fences(&fences, 1000).await.unwrap();
        let start = store.load_catalog_parts().await.unwrap();
        let build = |fences, promotions| {
            Catalog::build(
                fences,
                promotions,
                RuleOptions::default(),
                IndexOptions::default(),
            )
            .unwrap()
        };
        let old = build(start.fences, start.promotions);

        // Move the square 1° east, delete the islands, and target the moved square with a promotion.
        let mut moved = fences[0].clone();
        for ring in &mut moved.polygons[0].rings {
            for position in ring.iter_mut() {
                position[0] += 1.0;
            }
        }
        store
            .upsert_fences(std::slice::from_ref(&moved), 2000)
            .await
            .unwrap();
        assert!(store.delete_fence("islands").await.unwrap());
        let promotions =
            parse_promotions(br#"{"promotions":[{"id":"coffee","fences":["square"]}]}"#).unwrap();
        store.upsert_promotions(&promotions, 3000).await.unwrap();

        let changes = store.catalog_changes_since(v1).await.unwrap();
        assert_eq!((changes.from, changes.to), (v1, v1 + 3));
        assert_eq!(changes.upserted.len(), 1, "{:?}", store.backend());
        assert_eq!(changes.upserted[0].id, "square");
        assert_eq!(changes.deleted, ["islands"]);
        assert_eq!(changes.promotions.len(), 1);
        assert!(changes.quarantined.is_empty());
        let nothing_new = store.catalog_changes_since(changes.to).await.unwrap();
        assert!(nothing_new.upserted.is_empty() && nothing_new.deleted.is_empty());

        let fence_changes = changes
            .deleted
            .into_iter()
            .map(FenceChange::Delete)
            .chain(changes.upserted.into_iter().map(FenceChange::Upsert))
            .collect();
        let applied = old
            .with_changes(fence_changes, Some(changes.promotions))
            .unwrap();
        let full = store.load_catalog_parts().await.unwrap();
        let reloaded = build(full.fences, full.promotions);
        assert_eq!(applied.fence_counts(), (1, 1));
        assert_eq!(applied.fence_counts(), reloaded.fence_counts());
        let at = geopromo::promo::EpochMs::from_millis(5000);
        for (lat, lon) in [
            (-6.09, 107.01),
            (-6.09, 106.01),
            (-7.05, 110.05),
            (-6.05, 107.05),
            (-6.1, 107.105),
        ] {
            let point = GeoPoint::new(lat, lon).unwrap();
            assert_eq!(
                applied.match_at(point, at),
                reloaded.match_at(point, at),
                "({lat}, {lon})"
            );
        }
        let inside = applied.match_at(GeoPoint::new(-6.09, 107.01).unwrap(), at);
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].promotions, ["coffee"]);
    }
}

/// A batch of changes big enough to need a compaction: the follower applies it at once, then swaps in a
/// compacted index in the background; a change made after that applies on top of the new base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_follower_applies_changes_and_compacts_in_the_background() {
    use geopromo::app::{catalog_from_store, follow_catalog};
    use geopromo::config::Settings;
    use geopromo::geofence::GeoPoint;
    use geopromo::promo::{EpochMs, SharedCatalog};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    for (store, _guard) in stores().await {
        let mut settings = Settings::default();
        settings.database.poll_interval_ms = 50;
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        store.upsert_fences(&fences, 1000).await.unwrap();
        let (initial, version) = catalog_from_store(&store, &settings).await.unwrap();
        let catalog = Arc::new(SharedCatalog::from_pointee(initial));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = geopromo::telemetry::PipelineMetrics::default();
        let follower = tokio::spawn(follow_catalog(
            store.clone(),
            settings.clone(),
            Arc::clone(&catalog),
            version,
            metrics.clone(),
            shutdown.clone(),
        ));
        let wait_for = |what: &'static str, done: &dyn Fn(&geopromo::promo::Catalog) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if done(&catalog.load()) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within 30 s ({:?})",
                    store.backend()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        // 600 small squares in one change: over the overlay's bound of 512 fences.
        let many: Vec<_> = (0..600)
            .map(|i| {
                let mut fence = fences[0].clone();
                fence.id = format!("shop-{i}");
                for ring in &mut fence.polygons[0].rings {
                    for position in ring.iter_mut() {
                        position[0] += 0.2 * f64::from(i % 30);
                        position[1] += 0.2 * f64::from(i / 30);
                    }
                }
                fence
            })
            .collect();
        store.upsert_fences(&many, 2000).await.unwrap();
        tokio::task::block_in_place(|| {
            wait_for("the 600 fences applied", &|c| c.fence_counts().0 == 602);
            wait_for("the overlay compacted away", &|c| {
                c.index().overlay_size().0 == 0
            });
        });

        let promotions =
            parse_promotions(br#"{"promotions":[{"id":"shop","fences":["shop-599"]}]}"#).unwrap();
        store.upsert_promotions(&promotions, 3000).await.unwrap();
        assert!(store.delete_fence("islands").await.unwrap());
        tokio::task::block_in_place(|| {
            wait_for("the next changes on the new base", &|c| {
                c.fence_counts() == (601, 1) && c.index().overlay_size().0 == 0
            });
        });
        // shop-599 is square 0 moved 29 × 0.2° east and 19 × 0.2° north.
        let inside = GeoPoint::new(-6.09 + 3.8, 106.01 + 5.8).unwrap();
        let found = catalog.load().match_at(inside, EpochMs::from_millis(5000));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].fence_id.as_str(), found[0].promotions.as_slice()),
            ("shop-599", &["shop".to_owned()][..])
        );
        // Every swap was incremental or a compaction: nothing paid a full reload.
        let exposed = geopromo::telemetry::encode_metrics(&metrics.registry());
        assert!(
            exposed.contains(r#"geopromo_catalog_updates_total{how="compacted"} 1"#),
            "{exposed}"
        );
        assert!(
            exposed.contains(r#"geopromo_catalog_updates_total{how="applied"}"#),
            "{exposed}"
        );
        assert!(!exposed.contains(r#"how="reloaded""#), "{exposed}");
        shutdown.cancel();
        follower.await.unwrap();
    }
}

#[tokio::test]
async fn fences_list_by_cursor_and_name() {
    for (store, _guard) in stores().await {
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        store.upsert_fences(&fences, 1).await.unwrap();
        let first = store.list_fences(None, None, 1).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, "islands");
        let next = store.list_fences(Some("islands"), None, 10).await.unwrap();
        assert_eq!(
            next.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["square"]
        );
        // `_` in the filter is a literal underscore, not a wildcard.
        let named = store.list_fences(None, Some("o_I"), 10).await.unwrap();
        assert_eq!(
            named.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["islands"]
        );
        assert!(store
            .list_fences(None, Some("quar_"), 10)
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn promotions_and_eligibility_round_trip() {
    for (store, _guard) in stores().await {
        let promotions = parse_promotions(
            br#"{"promotions":[{"id":"p","name":"P","fences":["square","islands"],
                "valid_from":"2026-01-01T00:00:00Z","cooldown_s":60},
                {"id":"q","fences":["square"],"active":false}]}"#,
        )
        .unwrap();
        // A promotion names stored fences only (the store keeps that invariant).
        let unknown = store.upsert_promotion(&promotions[0], 5).await.unwrap_err();
        assert!(unknown.to_string().contains("square"), "{unknown}");
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        store.upsert_fences(&fences, 4).await.unwrap();
        for promotion in &promotions {
            store.upsert_promotion(promotion, 5).await.unwrap();
        }
        assert_eq!(store.load_promotions().await.unwrap(), promotions);
        assert_eq!(
            store.get_promotion("q").await.unwrap().as_ref(),
            Some(&promotions[1])
        );
        assert!(store.get_promotion("nope").await.unwrap().is_none());

        let enter = |promotion: &str| {
            EligibilityChange::Enter(Eligibility {
                user_id: "u1".into(),
                promotion_id: promotion.into(),
                fence_id: "square".into(),
                since_ms: 10,
                event_id: format!("e-{promotion}"),
            })
        };
        store
            .record_eligibility(&[enter("p"), enter("q")], 10)
            .await
            .unwrap();
        store
            .record_eligibility(
                &[EligibilityChange::Exit {
                    user_id: "u1".into(),
                    promotion_id: "q".into(),
                }],
                11,
            )
            .await
            .unwrap();
        let current = store.eligibility_of("u1").await.unwrap();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].promotion_id, "p");
        assert!(store.eligibility_of("u2").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn seeding_happens_once_and_bad_urls_are_named() {
    for (store, _guard) in stores().await {
        let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        assert!(store.seed_if_empty(&fences, &[], 1).await.unwrap());
        assert!(!store.seed_if_empty(&fences, &[], 2).await.unwrap());
        store.ping().await.unwrap();
    }
    let err = Store::connect("mysql://x").await.unwrap_err().to_string();
    assert!(err.contains("neither sqlite: nor postgres://"), "{err}");
    let err = Store::connect("postgres://user:secret@127.0.0.1:1/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot connect") && !err.contains("secret"),
        "{err}"
    );
}
