//! The store: fences, promotions, users and current eligibility, in SQLite (default, one file) or
//! PostgreSQL (for a fleet), through sqlx's Any driver so that one set of queries and migrations serves
//! both. Every change to fences or promotions bumps the catalog version that processors poll.

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::geofence::geojson::{fence_feature, fence_geometry};
use crate::geofence::{parse_fences, Fence, ParseOptions};
use crate::promo::{EpochMs, Promotion, PromotionSpec};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl FromStr for Backend {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }
}

/// Why a store operation failed. The database error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url {0:?} is neither sqlite: nor postgres://")]
    UnsupportedUrl(String),
    #[error("cannot connect to the database at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database directory {path}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed while {context}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("conflict: {0}")]
    Conflict(String),
    /// The catalog invariant: every fence a promotion targets exists.
    #[error("fence {fence:?} is targeted by promotion(s) {}; delete or change them first", promotions.join(", "))]
    FenceInUse {
        fence: String,
        promotions: Vec<String>,
    },
    #[error("promotion {promotion:?} targets fence(s) that do not exist: {}", missing.join(", "))]
    UnknownFences {
        promotion: String,
        missing: Vec<String>,
    },
    #[error("stored {what} {id:?} cannot be read back: {problem}")]
    Corrupt {
        what: &'static str,
        id: String,
        problem: String,
    },
}

impl StoreError {
    /// Whether the database cannot be reached now (worth retrying), rather than a bad query or data.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        let source = match self {
            StoreError::Query { source, .. } | StoreError::Connect { source, .. } => source,
            _ => return false,
        };
        matches!(
            source,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
        ) || matches!(source, sqlx::Error::Database(db)
            if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }
}

const FENCE_SELECT: &str =
    "SELECT id, name, tolerance_m, geometry, vertex_count, version, updated_at_ms FROM fences";
const PROMOTION_SELECT: &str =
    "SELECT id, name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms FROM promotions";

pub(crate) fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

/// Hides a password in a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The stored catalog, as far as it can be built, and what had to be left out.
#[derive(Debug, Clone)]
pub struct CatalogParts {
    pub fences: Vec<Fence>,
    pub promotions: Vec<Promotion>,
    /// One line per row left out, saying which and why.
    pub quarantined: Vec<String>,
}

/// A fence as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredFence {
    pub id: String,
    pub name: String,
    pub tolerance_m: f64,
    /// GeoJSON geometry text.
    pub geometry: String,
    pub vertex_count: i64,
    pub version: i64,
    pub updated_at_ms: i64,
}

/// One user's current eligibility for one promotion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eligibility {
    pub user_id: String,
    pub promotion_id: String,
    pub fence_id: String,
    pub since_ms: i64,
    pub event_id: String,
}

/// A transition to materialise: `enter` upserts the row, `exit` deletes it.
#[derive(Debug, Clone, PartialEq)]
pub enum EligibilityChange {
    Enter(Eligibility),
    Exit {
        user_id: String,
        promotion_id: String,
    },
}

/// A pooled connection to the store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Writes and transactions. On SQLite a single connection: SQLite has one writer anyway.
    pub(crate) pool: AnyPool,
    /// Reads outside transactions. On SQLite a separate pool of connections reading the WAL in
    /// parallel with the writer; on PostgreSQL the same pool.
    pub(crate) reader: AnyPool,
    pub(crate) backend: Backend,
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) when missing, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend: Backend = url.parse()?;
        let mut connect_url = url.to_owned();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if let Some(parent) = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            if !url.contains('?') {
                connect_url.push_str("?mode=rwc");
            }
        }
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; one connection avoids "database is locked" under load.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&connect_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact(url),
                source,
            })?;
        let reader = if backend == Backend::Sqlite {
            // WAL lets readers run beside the writer; the setting is stored in the database file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_optional(&pool)
                .await
                .map_err(query_error("switching SQLite to WAL"))?;
            AnyPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_lazy(&connect_url)
                .map_err(|source| StoreError::Connect {
                    url: redact(url),
                    source,
                })?
        } else {
            pool.clone()
        };
        let store = Self {
            pool,
            reader,
            backend,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The row `sql` selects with `key` as `$1`, read on the reader pool and decoded by `decode`.
    pub(crate) async fn find_by_key<T>(
        &self,
        sql: &str,
        key: &str,
        context: &'static str,
        decode: fn(&AnyRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(query_error(context))?;
        row.as_ref().map(decode).transpose()
    }

    /// Every row `sql` selects with `key` as `$1`, read on the reader pool and decoded by `decode`.
    pub(crate) async fn list_by_key<T>(
        &self,
        sql: &str,
        key: &str,
        context: &'static str,
        decode: fn(&AnyRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(key)
            .fetch_all(&self.reader)
            .await
            .map_err(query_error(context))?;
        rows.iter().map(decode).collect()
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_error("pinging"))?;
        Ok(())
    }

    /// The catalog version: it changes whenever a fence or promotion does.
    pub async fn catalog_version(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
            .fetch_one(&self.reader)
            .await
            .map_err(query_error("reading the catalog version"))?
            .try_get::<i64, _>(0)
            .map_err(query_error("reading the catalog version"))
    }

    /// Inserts or replaces fences in one transaction and bumps the catalog version once. Returns it.
    pub async fn upsert_fences(&self, fences: &[Fence], now_ms: i64) -> Result<i64, StoreError> {
        self.upsert_fences_with_progress(fences, now_ms, |_| {})
            .await
    }

    /// [`Store::upsert_fences`], calling `progress` with the number stored so far.
    pub async fn upsert_fences_with_progress(
        &self,
        fences: &[Fence],
        now_ms: i64,
        mut progress: impl FnMut(usize),
    ) -> Result<i64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        let version = bump_version(&mut tx).await?;
        for (stored, fence) in fences.iter().enumerate() {
            sqlx::query(
                "INSERT INTO fences (id, name, tolerance_m, geometry, vertex_count, version, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, tolerance_m = excluded.tolerance_m,
                   geometry = excluded.geometry, vertex_count = excluded.vertex_count,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(fence.id.as_str())
            .bind(fence.name.as_str())
            .bind(fence.tolerance_m)
            .bind(fence_geometry(fence).to_string())
            .bind(fence.vertex_count() as i64)
            .bind(version)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_error("storing a fence"))?;
            progress(stored + 1);
        }
        tx.commit()
            .await
            .map_err(query_error("committing fences"))?;
        Ok(version)
    }

    /// Fences ordered by id, after the cursor `after` (exclusive), optionally whose name contains `name`.
    pub async fn list_fences(
        &self,
        after: Option<&str>,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredFence>, StoreError> {
        let pattern = name.map(|n| format!("%{}%", n.replace('%', "\\%").replace('_', "\\_")));
        let sql = format!(
            "{FENCE_SELECT} WHERE id > $1 AND ($2 = '' OR name LIKE $3 ESCAPE '\\') ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or(""))
            .bind(pattern.as_deref().unwrap_or(""))
            .bind(pattern.as_deref().unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("listing fences"))?;
        rows.iter().map(fence_row).collect()
    }

    pub async fn get_fence(&self, id: &str) -> Result<Option<StoredFence>, StoreError> {
        let sql = format!("{FENCE_SELECT} WHERE id = $1");
        self.find_by_key(&sql, id, "reading a fence", fence_row)
            .await
    }

    /// Deletes a fence; `false` when there was none. Refused ([`StoreError::FenceInUse`]) while a
    /// promotion targets it, in the same transaction, so the stored catalog always builds.
    pub async fn delete_fence(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        // First, so that concurrent catalog changes queue behind this one (the version row is locked).
        bump_version(&mut tx).await?;
        let promotions = promotions_targeting(&mut tx, id).await?;
        if !promotions.is_empty() {
            return Err(StoreError::FenceInUse {
                fence: id.to_owned(),
                promotions,
            });
        }
        let deleted = sqlx::query("DELETE FROM fences WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("deleting a fence"))?
            .rows_affected();
        if deleted == 0 {
            // Nothing changed: do not publish a new catalog version.
            return Ok(false);
        }
        tx.commit()
            .await
            .map_err(query_error("committing a fence deletion"))?;
        Ok(true)
    }

    /// Deletes a promotion; `false` when there was none.
    pub async fn delete_promotion(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        bump_version(&mut tx).await?;
        let deleted = sqlx::query("DELETE FROM promotions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("deleting a promotion"))?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        tx.commit()
            .await
            .map_err(query_error("committing a promotion deletion"))?;
        Ok(true)
    }

    /// What the catalog is built from: every fence and promotion that can be read back and fits the
    /// rest. A row that cannot (edited by hand, written by an older version, a promotion whose fence is
    /// gone) is left out and described in `quarantined`, so one bad row never stops a service.
    pub async fn load_catalog_parts(&self) -> Result<CatalogParts, StoreError> {
        let mut quarantined = Vec::new();
        let rows = sqlx::query(&format!("{FENCE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading fences"))?;
        let mut features = Vec::with_capacity(rows.len());
        for row in &rows {
            let fence = match fence_row(row) {
                Ok(fence) => fence,
                Err(error) => {
                    quarantined.push(format!("a fence row: {error}"));
                    continue;
                }
            };
            match serde_json::from_str::<serde_json::Value>(&fence.geometry) {
                Ok(geometry) => features.push(serde_json::json!({
                    "type": "Feature", "id": fence.id,
                    "properties": {"name": fence.name, "tolerance_m": fence.tolerance_m},
                    "geometry": geometry,
                })),
                Err(error) => {
                    quarantined.push(format!(
                        "fence {:?}: geometry is not JSON: {error}",
                        fence.id
                    ));
                }
            }
        }
        let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
        let parsed = parse_fences(
            collection.to_string().as_bytes(),
            &ParseOptions::default().skip_invalid(true),
        )
        .map_err(|err| StoreError::Corrupt {
            what: "fence set",
            id: String::new(),
            problem: err.report_lines().join("; "),
        })?;
        quarantined.extend(
            crate::geofence::geojson::problem_lines(&parsed.skipped)
                .into_iter()
                .map(|line| format!("fence {line}")),
        );
        let fences = parsed.fences;
        let known: std::collections::HashSet<&str> = fences.iter().map(|f| f.id.as_str()).collect();
        let rows = sqlx::query(&format!("{PROMOTION_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading promotions"))?;
        let mut promotions = Vec::with_capacity(rows.len());
        for row in &rows {
            match promotion_row(row) {
                Ok(promotion) => {
                    let missing: Vec<&str> = promotion
                        .fence_ids
                        .iter()
                        .map(|f| &**f)
                        .filter(|f| !known.contains(f))
                        .collect();
                    if missing.is_empty() {
                        promotions.push(promotion);
                    } else {
                        quarantined.push(format!(
                            "promotion {:?}: targets missing or unreadable fence(s) {}",
                            &*promotion.id,
                            missing.join(", ")
                        ));
                    }
                }
                Err(error) => quarantined.push(format!("a promotion row: {error}")),
            }
        }
        Ok(CatalogParts {
            fences,
            promotions,
            quarantined,
        })
    }

    /// Every stored fence, validated again on the way out (a row edited by hand cannot poison the index).
    pub async fn load_fences(&self) -> Result<Vec<Fence>, StoreError> {
        let rows = sqlx::query(&format!("{FENCE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading fences"))?;
        let mut features = Vec::with_capacity(rows.len());
        for row in &rows {
            let fence = fence_row(row)?;
            let geometry: serde_json::Value =
                serde_json::from_str(&fence.geometry).map_err(|err| StoreError::Corrupt {
                    what: "fence",
                    id: fence.id.clone(),
                    problem: err.to_string(),
                })?;
            features.push(serde_json::json!({
                "type": "Feature", "id": fence.id,
                "properties": {"name": fence.name, "tolerance_m": fence.tolerance_m},
                "geometry": geometry,
            }));
        }
        let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
        parse_fences(collection.to_string().as_bytes(), &ParseOptions::default())
            .map(|parsed| parsed.fences)
            .map_err(|err| StoreError::Corrupt {
                what: "fence set",
                id: String::new(),
                problem: err.report_lines().join("; "),
            })
    }

    /// Creates or replaces a promotion (checked with the same rules as the promotions file).
    pub async fn upsert_promotion(
        &self,
        promotion: &Promotion,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.upsert_promotions(std::slice::from_ref(promotion), now_ms)
            .await
    }

    /// Creates or replaces promotions in one transaction (one catalog version): either all of them
    /// are stored or, when one targets a fence the store does not hold, none is.
    pub async fn upsert_promotions(
        &self,
        promotions: &[Promotion],
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        let version = bump_version(&mut tx).await?;
        for promotion in promotions {
            store_promotion_in(&mut tx, promotion, version, now_ms).await?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing promotions"))?;
        Ok(version)
    }

    pub async fn load_promotions(&self) -> Result<Vec<Promotion>, StoreError> {
        let rows = sqlx::query(&format!("{PROMOTION_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading promotions"))?;
        rows.iter().map(promotion_row).collect()
    }

    pub async fn get_promotion(&self, id: &str) -> Result<Option<Promotion>, StoreError> {
        let sql = format!("{PROMOTION_SELECT} WHERE id = $1");
        self.find_by_key(&sql, id, "reading a promotion", promotion_row)
            .await
    }

    /// Applies transitions in one transaction: enters upsert, exits delete.
    pub async fn record_eligibility(
        &self,
        changes: &[EligibilityChange],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        for change in changes {
            match change {
                EligibilityChange::Enter(e) => sqlx::query(
                    "INSERT INTO eligibility (user_id, promotion_id, fence_id, since_ms, event_id, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (user_id, promotion_id) DO UPDATE SET fence_id = excluded.fence_id,
                       since_ms = excluded.since_ms, event_id = excluded.event_id, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(e.user_id.as_str())
                .bind(e.promotion_id.as_str())
                .bind(e.fence_id.as_str())
                .bind(e.since_ms)
                .bind(e.event_id.as_str())
                .bind(now_ms),
                EligibilityChange::Exit { user_id, promotion_id } => {
                    sqlx::query("DELETE FROM eligibility WHERE user_id = $1 AND promotion_id = $2")
                        .bind(user_id.as_str())
                        .bind(promotion_id.as_str())
                }
            }
            .execute(&mut *tx)
            .await
            .map_err(query_error("recording eligibility"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing eligibility"))?;
        Ok(())
    }

    /// A user's current eligible promotions, by promotion id.
    pub async fn eligibility_of(&self, user_id: &str) -> Result<Vec<Eligibility>, StoreError> {
        self.list_by_key(
            "SELECT user_id, promotion_id, fence_id, since_ms, event_id FROM eligibility
             WHERE user_id = $1 ORDER BY promotion_id",
            user_id,
            "reading eligibility",
            eligibility_row,
        )
        .await
    }

    /// Seeds fences and promotions when the store has none (first run on the bundled data).
    pub async fn seed_if_empty(
        &self,
        fences: &[Fence],
        promotions: &[Promotion],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM fences")
            .fetch_one(&self.reader)
            .await
            .map_err(query_error("counting fences"))?
            .try_get(0)
            .map_err(query_error("counting fences"))?;
        if count > 0 {
            return Ok(false);
        }
        self.upsert_fences(fences, now_ms).await?;
        self.upsert_promotions(promotions, now_ms).await?;
        Ok(true)
    }

    /// The fence as a GeoJSON Feature.
    #[must_use]
    pub fn feature_of(fence: &Fence) -> serde_json::Value {
        fence_feature(fence)
    }
}

/// Ids of the promotions whose fence list names `fence` (read inside the caller's transaction).
async fn promotions_targeting(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    fence: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT id, fence_ids FROM promotions ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error("reading promotions' fences"))?;
    let mut targeting = Vec::new();
    for row in &rows {
        let id: String = row
            .try_get(0)
            .map_err(query_error("reading promotions' fences"))?;
        let fences: String = row
            .try_get(1)
            .map_err(query_error("reading promotions' fences"))?;
        // A row that cannot be read back counts as targeting: refusing is the safe side.
        let targets = serde_json::from_str::<Vec<String>>(&fences)
            .map_or(true, |list| list.iter().any(|f| f == fence));
        if targets {
            targeting.push(id);
        }
    }
    Ok(targeting)
}

async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, StoreError> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await
        .map_err(query_error("bumping the catalog version"))?;
    sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
        .fetch_one(&mut **tx)
        .await
        .map_err(query_error("reading the catalog version"))?
        .try_get::<i64, _>(0)
        .map_err(query_error("reading the catalog version"))
}

fn fence_row(row: &AnyRow) -> Result<StoredFence, StoreError> {
    let read = query_error("reading a fence row");
    (|| {
        Ok::<_, sqlx::Error>(StoredFence {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            tolerance_m: row.try_get(2)?,
            geometry: row.try_get(3)?,
            vertex_count: row.try_get(4)?,
            version: row.try_get(5)?,
            updated_at_ms: row.try_get(6)?,
        })
    })()
    .map_err(read)
}

fn eligibility_row(row: &AnyRow) -> Result<Eligibility, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(Eligibility {
            user_id: row.try_get(0)?,
            promotion_id: row.try_get(1)?,
            fence_id: row.try_get(2)?,
            since_ms: row.try_get(3)?,
            event_id: row.try_get(4)?,
        })
    })()
    .map_err(query_error("reading eligibility"))
}

fn promotion_row(row: &AnyRow) -> Result<Promotion, StoreError> {
    let id: String = row
        .try_get(0)
        .map_err(query_error("reading a promotion row"))?;
    let raw = (|| {
        Ok::<_, sqlx::Error>((
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
            row.try_get::<Option<i64>, _>(3)?,
            row.try_get::<Option<i64>, _>(4)?,
            row.try_get::<i64, _>(5)?,
            row.try_get::<i64, _>(6)?,
        ))
    })()
    .map_err(query_error("reading a promotion row"))?;
    let (name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms) = raw;
    let fence_ids: Vec<String> =
        serde_json::from_str(&fence_ids).map_err(|err| StoreError::Corrupt {
            what: "promotion",
            id: id.clone(),
            problem: err.to_string(),
        })?;
    Ok(Promotion {
        id: id.as_str().into(),
        name,
        fence_ids: fence_ids.iter().map(|f| f.as_str().into()).collect(),
        valid_from: valid_from_ms.map(EpochMs::from_millis),
        valid_until: valid_until_ms.map(EpochMs::from_millis),
        active: active != 0,
        cooldown_ms,
    })
}

/// Stores one promotion inside `tx`, refusing it when a fence it targets is not stored (the catalog
/// invariant is kept in the same transaction as the change).
async fn store_promotion_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    promotion: &Promotion,
    version: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let fence_ids: Vec<&str> = promotion.fence_ids.iter().map(|f| &**f).collect();
    let mut missing = Vec::new();
    for fence in &fence_ids {
        let found = sqlx::query("SELECT 1 FROM fences WHERE id = $1")
            .bind(*fence)
            .fetch_optional(&mut **tx)
            .await
            .map_err(query_error("checking a promotion's fences"))?;
        if found.is_none() {
            missing.push((*fence).to_owned());
        }
    }
    if !missing.is_empty() {
        return Err(StoreError::UnknownFences {
            promotion: promotion.id.to_string(),
            missing,
        });
    }
    sqlx::query(
        "INSERT INTO promotions (id, name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms, version, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, fence_ids = excluded.fence_ids,
           valid_from_ms = excluded.valid_from_ms, valid_until_ms = excluded.valid_until_ms,
           active = excluded.active, cooldown_ms = excluded.cooldown_ms, version = excluded.version,
           updated_at_ms = excluded.updated_at_ms",
    )
    .bind(&*promotion.id)
    .bind(promotion.name.as_str())
    .bind(serde_json::to_string(&fence_ids).unwrap_or_default())
    .bind(promotion.valid_from.map(EpochMs::as_millis))
    .bind(promotion.valid_until.map(EpochMs::as_millis))
    .bind(i64::from(promotion.active))
    .bind(promotion.cooldown_ms)
    .bind(version)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_error("storing a promotion"))?;
    Ok(())
}

/// Checks a promotion spec from an API body or file into a promotion.
pub fn promotion_from_spec(
    spec: &PromotionSpec,
) -> Result<Promotion, Vec<crate::promo::promotion::PromotionProblem>> {
    spec.parse(0)
}
