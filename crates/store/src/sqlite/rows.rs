//! `SQLite`'s error mapping; rows map to domain types in [`crate::mapping`], shared by every
//! backend.

use keygate_core::error::Error;

/// Maps a database error to the domain. Busy and I/O conditions are `Unavailable` (the caller
/// may retry); constraint violations are `Conflict`; anything else is `Internal`. The text goes
/// to logs only.
#[allow(clippy::needless_pass_by_value)] // used as `map_err(db_err)`
pub fn db_err(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::Conflict("an object with this ID already exists".into())
        }
        sqlx::Error::Database(db)
            if db.message().contains("irreversible") || db.message().contains("only once") =>
        {
            Error::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db)
            if db.message().contains("locked") || db.message().contains("busy") =>
        {
            Error::Unavailable(format!("database busy: {db}"))
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Error::Unavailable(format!("database unavailable: {e}"))
        }
        _ => Error::Internal(format!("database error: {e}")),
    }
}

pub use crate::mapping::{audit_from_row, key_from_row, private_key_state_columns};
