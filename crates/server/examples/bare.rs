//! The "bare" reference for `bench/load.sh`: keygate's own HTTP stack (tokio, hyper through
//! axum, the same features and release profile) answering `200` to every request without
//! checking anything. keygate's `/authz` is compared against it to show what authorization
//! costs on top of the HTTP work.
//!
//! ```sh
//! cargo run --release -p keygate-server --example bare -- 127.0.0.1:9090
//! ```

#![allow(clippy::print_stdout)] // an example prints where it listens

use axum::Router;
use axum::http::StatusCode;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let app = Router::new().fallback(|| async { StatusCode::OK });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
