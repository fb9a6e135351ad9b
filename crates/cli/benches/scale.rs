//! Scale: one node over 1 000 and over 1 000 000 active keys on PostgreSQL. For each size it
//! prints the start-up time of a real `keygate serve` (process start to listening, the key ring
//! loaded), that process's resident memory, and the single-core first-time verification rate
//! against a ring of that size (the token cache off, so every call checks a signature).
//! Targets (SPEC §8/§10): start-up under 5 s, under 1 GiB, and the 1M-key verify rate within 10%
//! of the 1k-key rate.
//!
//! ```sh
//! cargo bench -p keygate --bench scale                # KEYGATE_TEST_POSTGRES picks the server
//! KEYGATE_SCALE_KEYS=100000 cargo bench -p keygate --bench scale   # a smaller large size
//! ```
//!
//! The keys are written straight into the database with one `INSERT ... SELECT
//! generate_series` (creating a million keys through the API would measure key creation, which
//! has its own benchmark); they share one public key, which changes nothing for loading or
//! lookup.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    clippy::doc_markdown,
    clippy::wildcard_imports,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a benchmark program: it reports, and stops on the first surprise

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keygate_core::clock::SystemClock;
use keygate_core::crypto::generate_key_pair;
use keygate_core::key::Algorithm;
use keygate_core::keyset::KeyRing;
use keygate_core::policy::Policy;
use keygate_core::service::Verifier;
use keygate_core::token::{Signer, TokenRules, sign_jwt};

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

struct Row {
    keys: usize,
    startup: Duration,
    rss_mib: f64,
    peak_mib: f64,
    load: Duration,
    verify_per_s: f64,
}

async fn measure(keys: usize, master: &str) -> Row {
    let db = keygate_testkit::PgDatabase::create().await;
    let env = [("KEYGATE_MASTER_KEY", master), ("KEYGATE_LOG", "warn")];
    // The first start migrates the schema and creates the issuer.
    let (first, _) = Server::start_on(db.url(), &[], &env);
    drop(first);
    let pair = generate_key_pair(Algorithm::Es256).unwrap();
    let (issuer, took) = insert_bench_keys(db.url(), keys, &pair.public).await;
    eprintln!("inserted {keys} keys in {took:?}");

    // A real node: process start to listening, with every key loaded.
    let started = Instant::now();
    let (node, _) = Server::start_on(db.url(), &[], &env);
    let startup = started.elapsed();
    let pid = node.child.id();
    let (rss, peak) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let ready: serde_json::Value = http()
        .get(node.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["keys"], keys, "every key loaded: {ready}");
    drop(node);

    // The same load in this process, then first-time verification against that ring.
    let store = keygate_store::open(db.url()).await.unwrap();
    let ring = Arc::new(KeyRing::new());
    let loading = Instant::now();
    ring.reload_from(store.as_ref()).await.unwrap();
    let load = loading.elapsed();
    let verifier = Verifier::new(
        Arc::clone(&ring),
        Arc::new(Policy::open()),
        TokenRules::default(),
        Arc::new(SystemClock),
    )
    .with_token_cache(0);
    // Tokens for 2 000 keys spread over the whole ring (they share one public key), so the
    // lookups touch many shards and entries, not one that stays in the CPU cache.
    let signer = Signer::from_pem(&pair.private).unwrap();
    let now = keygate_core::clock::Clock::now(&SystemClock);
    let tokens: Vec<String> = (0..2000u64)
        .map(|i| {
            let kid = format!("K{:09}", (i * 7_919_993) % keys as u64 + 1);
            sign_jwt(
                &signer,
                &kid,
                &serde_json::json!({"iss": issuer, "aud": "keygate-v1", "exp": now + 1200, "iat": now}),
            )
            .unwrap()
        })
        .collect();
    assert!(tokens.iter().all(|t| verifier.verify(t).is_ok()));
    let verify_per_s = tokio::task::spawn_blocking(move || {
        let mut best = 0.0f64;
        for _ in 0..5 {
            let t = Instant::now();
            let mut n = 0u32;
            while t.elapsed() < Duration::from_millis(400) {
                for token in tokens.iter().skip((n as usize) % tokens.len()).take(100) {
                    std::hint::black_box(verifier.verify(std::hint::black_box(token)).is_ok());
                }
                n += 100;
            }
            best = best.max(f64::from(n) / t.elapsed().as_secs_f64());
        }
        best
    })
    .await
    .unwrap();
    Row {
        keys,
        startup,
        rss_mib: rss as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
        load,
        verify_per_s,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let large: usize = std::env::var("KEYGATE_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let master = keygate_core::crypto::MasterKey::generate()
        .unwrap()
        .to_base64()
        .to_string();
    let small = measure(1_000, &master).await;
    let big = measure(large, &master).await;
    println!(
        "keys       start-up   RSS (peak)            in-process load   first-time verify/s (1 core)"
    );
    for r in [&small, &big] {
        println!(
            "{:>9}  {:>7.2} s   {:>6.0} MiB ({:>6.0} MiB)   {:>8.2} s        {:>9.0}",
            r.keys,
            r.startup.as_secs_f64(),
            r.rss_mib,
            r.peak_mib,
            r.load.as_secs_f64(),
            r.verify_per_s
        );
    }
    println!(
        "verify rate at {} keys / at 1 000 keys: {:.3} (target >= 0.90); start-up target < 5 s; memory target < 1024 MiB",
        big.keys,
        big.verify_per_s / small.verify_per_s
    );
}
