//! The store: fences, promotions, users and current eligibility, in SQLite (default, one file) or
//! PostgreSQL (for a fleet), through sqlx's Any driver so that one set of queries and migrations serves
//! both. Every change to fences or promotions bumps the catalog version that processors poll.

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod audit;
mod catalog;
mod eligibility;
mod fences;
mod promotions;

pub use audit::AuditEntry;
pub use catalog::{CatalogChanges, CatalogParts};
pub use eligibility::{Eligibility, EligibilityChange};
pub use fences::StoredFence;
pub use promotions::promotion_from_spec;

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
}

pub(super) async fn bump_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<i64, StoreError> {
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
