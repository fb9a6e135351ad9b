//! The "bare" reference for `bench/load.sh`: keygate's own HTTP stack (tokio, hyper through
//! axum, the same features and release profile) answering `200` to every request without
//! checking anything. keygate's `/authz` is compared against it to show what authorization
//! costs on top of the HTTP work. So that only the checking differs, the answer carries headers
//! of the same names and sizes as an `/authz` answer (fixed values: nothing is looked at).
//!
//! ```sh
//! cargo run --release -p keygate-server --example bare -- 127.0.0.1:9090
//! ```

#![allow(clippy::print_stdout)] // an example prints where it listens

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let fixed: [(&str, &str); 7] = [
        (
            "x-keygate-issuer-id",
            "00000000-0000-4000-8000-000000000000",
        ),
        ("x-keygate-key-id", "0000000000"),
        ("x-keygate-key-type", "team"),
        ("x-keygate-roles", "ADMIN"),
        (
            "x-rate-limit",
            "user-hour-lim:4000000000;user-hour-rem:3999999999;",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ];
    let headers: Vec<(HeaderName, HeaderValue)> = fixed
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
    let app = Router::new().fallback(move || {
        let headers = headers.clone();
        async move {
            let mut resp = axum::response::IntoResponse::into_response(StatusCode::OK);
            resp.headers_mut().extend(headers);
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
