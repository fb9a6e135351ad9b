//! HTTP handlers. Each one extracts, makes one call into the core, and maps the result; the doc
//! comment of each handler names the permission it needs.

pub mod audit;
pub mod authz;
pub mod health;
pub mod keys;
pub mod secret_keys;
pub mod users;
