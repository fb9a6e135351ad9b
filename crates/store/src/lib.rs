//! Storage backends for keygate: implementations of [`keygate_core::store::Store`], one per
//! database, each with its own migrations. [`open`] picks one by the URL scheme.
//!
//! This is the only crate that knows SQL.

pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use keygate_core::error::{Error, Result};
use keygate_core::store::Store;

/// Opens (creating and migrating if needed) the store a database URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_path(url) {
        return Ok(Arc::new(sqlite::SqliteStore::open(&path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(url).await?));
    }
    Err(Error::body(format!(
        "unsupported database URL {:?}: use sqlite://PATH or postgres://...",
        url.split("://").next().unwrap_or("")
    )))
}

/// Creates a folder readable only by its owner (0700), as the data folder must be; an existing
/// folder is left as it is.
pub fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    sqlite::create_private_dir(dir)
}

/// The file a `sqlite://PATH` (or `sqlite:PATH`) URL names; `None` for other schemes.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite://keygate-data/keygate.db"),
            Some(PathBuf::from("keygate-data/keygate.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/k.db"),
            Some(PathBuf::from("/tmp/k.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:k.db?mode=rwc"),
            Some(PathBuf::from("k.db"))
        );
        assert_eq!(sqlite_path("postgres://x"), None);
        assert_eq!(sqlite_path("sqlite://"), None);
    }
}
