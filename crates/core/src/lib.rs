//! keygate's domain, with no IO of its own.
//!
//! Everything that decides something lives here: key identifiers and roles, key creation and the
//! once-only private-key download (as operations over the [`store`] traits), token verification
//! (a pure function of token bytes, key set and time), scope and policy matching, and the
//! authorization proofs that gate every management write. The HTTP layer (`keygate-server`) only
//! adapts requests to these calls; the SQL layer (`keygate-store`) only implements [`store`].

pub mod audit;
pub mod authz;
pub mod clock;
pub mod credential;
pub mod crypto;
pub mod error;
pub mod error_body;
pub mod gate;
pub mod ids;
pub mod key;
pub mod keyset;
pub mod meter;
pub mod people;
pub mod policy;
pub mod role;
pub mod scope;
pub mod secret;
pub mod secret_key;
pub mod service;
pub mod store;
pub mod throttle;
pub mod time_fmt;
pub mod token;
pub mod token_cache;
pub mod user;

pub use error::{AuthFailure, AuthReason, Error, ForbiddenReason, Result};
