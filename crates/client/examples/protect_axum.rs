//! keygate as a library, both halves in one program:
//!
//! - an axum service whose routes are protected in-process by [`KeygateLayer`], with a policy
//!   that lets `DEVELOPER` keys read `/v1/apps/**` only;
//! - a client that mints tokens from a `.p8` with [`TokenMinter`] (one token, reused until
//!   shortly before it expires) and calls the service over real HTTP.
//!
//! ```sh
//! cargo run -p keygate-client --example protect_axum                       # throwaway key
//! cargo run -p keygate-client --example protect_axum -- AuthKey_X.p8 KEYID ISSUER_ID
//! ```

#![allow(clippy::print_stdout)] // an example prints what it does

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use keygate_client::layer::{KeygateLayer, Verification};
use keygate_client::{Identity, MintOptions, TokenMinter};
use keygate_core::crypto::{PrivateKeyPem, generate_key_pair, public_key_pem};
use keygate_core::key::Algorithm;
use keygate_core::policy::{Policy, RolePolicy, RoutePattern};
use keygate_core::role::Role;
use keygate_core::token::{Signer, VerifiedToken};

type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Fallible<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (pem, key_id, issuer_id) = match args.as_slice() {
        [file, key_id, issuer] => (
            PrivateKeyPem::from_pem(std::fs::read_to_string(file)?),
            key_id.clone(),
            issuer.clone(),
        ),
        [] => {
            println!("no .p8 given: using a throwaway P-256 key");
            (
                generate_key_pair(Algorithm::Es256)?.private,
                "EXAMPLE001".to_owned(),
                "57246542-96fe-1a63-e053-0824d011072a".to_owned(),
            )
        }
        _ => return Err("usage: protect_axum [KEY.p8 KEY_ID ISSUER_ID]".into()),
    };

    // The service side: the key's public half and a policy, verified in-process.
    let signer = Signer::from_pem(&pem)?;
    let public = public_key_pem(&signer.public_key(), signer.algorithm());
    let mut roles = BTreeMap::new();
    roles.insert(
        Role::parse_name("DEVELOPER").ok_or("role name")?,
        RolePolicy {
            allow: vec![RoutePattern::parse("GET /v1/apps/**")?],
            long_lived: vec![],
            rate_limit_per_hour: Some(100),
        },
    );
    let verification = Verification::new().policy(Policy::new(roles));
    verification.add_team_key(&key_id, &issuer_id, &public, &["DEVELOPER"])?;
    let app = Router::new()
        .route(
            "/v1/apps",
            get(
                |Extension(token): Extension<Arc<VerifiedToken>>| async move {
                    format!(
                        "{{\"data\":[],\"meta\":{{\"caller\":\"{}\"}}}}",
                        token.key.id
                    )
                },
            ),
        )
        .route("/v1/builds", get(|| async { "builds" }))
        .layer(KeygateLayer::new(verification.gate()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("service protected by keygate on {base}");

    // The client side: one minter, one reused token.
    let minter = Arc::new(TokenMinter::new(
        &pem,
        key_id,
        Identity::Team { issuer_id },
        MintOptions::default(),
    )?);
    let http = reqwest::Client::new();
    for path in ["/v1/apps", "/v1/apps", "/v1/builds"] {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(minter.token()?)
            .send()
            .await?;
        let rate = resp
            .headers()
            .get("x-rate-limit")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        println!(
            "GET {path} -> {} [{rate}] {}",
            resp.status(),
            resp.text().await?
        );
    }
    let resp = http.get(format!("{base}/v1/apps")).send().await?;
    println!("GET /v1/apps without a token -> {}", resp.status());
    Ok(())
}
