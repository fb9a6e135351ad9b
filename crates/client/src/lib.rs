//! A client library for keygate (and App Store Connect-style APIs): mint tokens from a `.p8`,
//! reusing each token until shortly before it expires, and call the management API.

pub mod management;
pub mod minter;

pub use management::{ApiKeyInfo, ClientError, ManagementClient};
pub use minter::{Identity, MintOptions, TokenMinter};
