//! keygate as a Rust library: mint tokens from a `.p8` (reusing each token until shortly before
//! it expires), call the management API, and verify requests in-process with a `tower` layer
//! for axum ([`layer`]).

pub mod layer;
pub mod management;
pub mod minter;

pub use management::{ApiKeyInfo, ClientError, Invited, ManagementClient, SecretKeyInfo, UserInfo};
pub use minter::{Identity, MintOptions, TokenMinter};
