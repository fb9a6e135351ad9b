//! Test support shared by keygate's test suites. Not part of the product.
//!
//! [`PgDatabase::create`] makes a fresh, empty PostgreSQL database for one test and drops it
//! when the test ends, passed or failed. The server comes from `KEYGATE_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, a user that may `CREATE DATABASE`).
//! An unreachable server fails the test, never skips it: a backend whose cases silently did not
//! run would look like one that passes.

#![allow(
    clippy::missing_panics_doc,
    clippy::panic,
    clippy::expect_used,
    clippy::doc_markdown
)] // test support; "PostgreSQL" is prose

use std::hash::BuildHasher as _;

use sqlx::Connection as _;

pub const POSTGRES_ENV: &str = "KEYGATE_TEST_POSTGRES";
pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A throwaway database; dropped (with `FORCE`, ending any connections) on drop.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates a new, empty database on the test server.
    pub async fn create() -> Self {
        let from_env = std::env::var(POSTGRES_ENV).ok();
        let admin_url = from_env
            .clone()
            .unwrap_or_else(|| POSTGRES_DEFAULT.to_owned());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                // The URL itself is not printed: it may hold a password.
                let which = if from_env.is_some() {
                    format!("the server {POSTGRES_ENV} names")
                } else {
                    format!("{POSTGRES_DEFAULT} ({POSTGRES_ENV} is not set)")
                };
                panic!(
                    "cannot reach PostgreSQL at {which}: {e}\n\
                     keygate's PostgreSQL tests need a server. Start one, or set \
                     {POSTGRES_ENV} to a URL whose user may CREATE DATABASE, such as \
                     {POSTGRES_DEFAULT}"
                )
            });
        let name = format!(
            "keygate_test_{:016x}",
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        );
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime cannot be blocked on from inside: a thread
        // with a runtime of its own does the work. FORCE ends the store's pooled connections.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(&sql)
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop the test database {}", self.name),
        }
    }
}

/// `url` with its database (the path) replaced by `database`, keeping any `?query`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base.get(host_start..).and_then(|rest| rest.find('/')) {
        Some(slash) => base.get(..host_start + slash).unwrap_or(base),
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_database_urls_keep_the_server_and_options() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }
}
