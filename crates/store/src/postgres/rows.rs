//! `PostgreSQL`'s error mapping; rows map to domain types in [`crate::mapping`], shared by every
//! backend.

use keygate_core::error::Error;

/// Error codes (`SQLSTATE`) that mean "the server cannot take this right now; try again": lock and
/// serialization conflicts, a standby refusing writes (after a failover), and the session
/// timeouts the store sets (statement cancelled, idle transaction ended).
const BUSY_STATES: &[&str] = &["40001", "40P01", "55P03", "25006", "57014", "25P03"];

/// Error codes (or, ending in `*`, classes of codes) that mean the server is going away or
/// cannot be reached: connection exceptions, shutdown, too many connections.
const UNREACHABLE_STATES: &[&str] = &["08*", "57P01", "57P02", "57P03", "53300"];

/// Maps a database error to the domain, as the `SQLite` store does: unreachable and busy
/// conditions are `Unavailable` (the caller may retry); unique violations and the schema's
/// "irreversible" / "only once" triggers are `Conflict`; anything else is `Internal`. The text
/// goes to logs only.
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
        sqlx::Error::Database(db) if sqlstate_in(db.code().as_deref(), BUSY_STATES) => {
            Error::Unavailable(format!("database busy: {db}"))
        }
        sqlx::Error::Database(db) if sqlstate_in(db.code().as_deref(), UNREACHABLE_STATES) => {
            Error::Unavailable(format!("database unreachable: {db}"))
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Error::Unavailable(format!("database unreachable: {e}")),
        _ => Error::Internal(format!("database error: {e}")),
    }
}

fn sqlstate_in(code: Option<&str>, states: &[&str]) -> bool {
    code.is_some_and(|code| {
        states.iter().any(|s| match s.strip_suffix('*') {
            Some(class) => code.starts_with(class),
            None => code == *s,
        })
    })
}

pub use crate::mapping::{audit_from_row, key_from_row, private_key_state_columns};
