//! Storage backends for keygate: implementations of [`keygate_core::store::Store`], one per
//! database, each with its own migrations. [`open`] picks one by the URL scheme.
//!
//! This is the only crate that knows SQL.

mod mapping;
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

/// Opens a database that must already exist, for commands that read or repair one (`audit
/// verify`, `admin reset-password`): a mistyped `SQLite` path is an error naming it, never a new,
/// empty database.
pub async fn open_existing(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_path(url)
        && !path.is_file()
    {
        return Err(Error::NotFound(format!(
            "there is no keygate database at {}; name the one the server uses (--database or KEYGATE_DATABASE)",
            path.display()
        )));
    }
    open(url).await
}

/// How long the change listener may be quiet before its connection must prove it is alive.
pub const LISTEN_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long that proof may take.
pub const LISTEN_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Longest wait to connect the change listener.
pub const LISTEN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What woke a node that follows a database's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEvent {
    /// Another process committed a change: read the feed.
    Changed,
    /// The listening connection was (re)established, and changes may have been missed while it
    /// was down: reload everything.
    Resync,
    /// Nothing changed, and the listening connection proved it is alive (it answered a ping
    /// after [`LISTEN_HEARTBEAT`] of quiet): the node is still following the feed.
    Alive,
}

/// Pushes change announcements to a node, for databases that have them (`PostgreSQL`
/// `LISTEN`/`NOTIFY`; each change's `NOTIFY` is sent in the transaction that makes it). `SQLite`
/// has none: nodes on a shared file poll the feed.
#[derive(Debug)]
pub struct ChangeNotifier {
    url: String,
    listener: Option<sqlx::postgres::PgListener>,
}

impl ChangeNotifier {
    /// A notifier for `url`, or `None` if that database cannot announce changes.
    pub fn for_url(url: &str) -> Option<Self> {
        (url.starts_with("postgres://") || url.starts_with("postgresql://")).then(|| Self {
            url: url.to_owned(),
            listener: None,
        })
    }

    /// Waits for the next event. An error means the database is unreachable; call again (after
    /// a pause) to reconnect, which then reports [`ChangeEvent::Resync`].
    ///
    /// A connection can die without closing (a frozen host, a failover, lost firewall or NAT
    /// state): then no notification and no error ever arrive. So after
    /// [`LISTEN_HEARTBEAT`] of quiet the connection must answer a query within
    /// [`LISTEN_PING_TIMEOUT`], or it is dropped and the next call connects anew.
    pub async fn next(&mut self) -> Result<ChangeEvent> {
        let Some(listener) = self.listener.as_mut() else {
            let connected =
                tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, postgres::listen_changes(&self.url))
                    .await
                    .map_err(|_| {
                        Error::Unavailable("change listener: connecting timed out".into())
                    })??;
            self.listener = Some(connected);
            return Ok(ChangeEvent::Resync);
        };
        match tokio::time::timeout(LISTEN_HEARTBEAT, listener.try_recv()).await {
            Ok(Ok(Some(_))) => Ok(ChangeEvent::Changed),
            // The connection dropped and was re-established: notifications in between are lost.
            Ok(Ok(None)) => Ok(ChangeEvent::Resync),
            Ok(Err(e)) => {
                self.listener = None;
                Err(Error::Unavailable(format!("change listener: {e}")))
            }
            Err(_quiet) => {
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                if matches!(
                    tokio::time::timeout(LISTEN_PING_TIMEOUT, ping).await,
                    Ok(Ok(_))
                ) {
                    Ok(ChangeEvent::Alive)
                } else {
                    self.listener = None;
                    Err(Error::Unavailable(
                        "change listener: the connection stopped answering".into(),
                    ))
                }
            }
        }
    }
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
