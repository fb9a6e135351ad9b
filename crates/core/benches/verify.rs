//! The hot path, in-process on one core, with its references measured in the same run:
//!
//! - raw signature verification of the crypto library (ring), P-256 and Ed25519: the floor;
//! - first-time full verification (token cache off): base64, strict JSON, key lookup, every
//!   claim rule, and the signature;
//! - cached verification: the verified-token cache hit, with the key's current state checked;
//! - the whole data-plane decision for a reused token (cache, role policy, scope, rate meter);
//! - scope matching and the policy decision alone.
//!
//! ```sh
//! cargo bench -p keygate-core --bench verify
//! ```
//!
//! After criterion's report it prints the SPEC §10 ratios from this run's own estimates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::missing_panics_doc,
    clippy::cast_precision_loss,
    clippy::indexing_slicing,
    clippy::semicolon_if_nothing_returned
)] // a benchmark program

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::Criterion;
use keygate_core::clock::{Clock, SystemClock};
use keygate_core::crypto::generate_key_pair;
use keygate_core::gate::Gate;
use keygate_core::ids::{IssuerId, KeyId};
use keygate_core::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use keygate_core::keyset::KeyRing;
use keygate_core::meter::Meter;
use keygate_core::policy::{Policy, RolePolicy, RoutePattern};
use keygate_core::role::{Role, RoleCatalog};
use keygate_core::scope::{RequestTarget, ScopeEntry};
use keygate_core::service::Verifier;
use keygate_core::token::{Signer, TokenRules, sign_jwt};
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

/// A realistic ring: 1 000 keys, the benchmarked one among them.
const RING_KEYS: usize = 1000;

struct Setup {
    ring: Arc<KeyRing>,
    policy: Arc<Policy>,
    token: String,
    public: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn policy() -> Policy {
    let mut roles = BTreeMap::new();
    roles.insert(
        Role::parse_name("DEVELOPER").unwrap(),
        RolePolicy {
            allow: [
                "GET /v1/apps/**",
                "POST /v1/builds",
                "GET /v1/builds/*",
                "GET /v1/betaGroups/**",
                "* /v1/profiles/**",
            ]
            .iter()
            .map(|p| RoutePattern::parse(p).unwrap())
            .collect(),
            long_lived: vec![],
            rate_limit_per_hour: Some(u32::MAX),
        },
    );
    Policy::new(roles)
}

fn setup(alg: Algorithm) -> Setup {
    let issuer = IssuerId::generate();
    let ring = Arc::new(KeyRing::new());
    let mut keys = Vec::new();
    let mut signer = None;
    for i in 0..RING_KEYS {
        let pair = generate_key_pair(alg).unwrap();
        if i == RING_KEYS / 2 {
            signer = Some((
                Signer::from_pem(&pair.private).unwrap(),
                pair.public.clone(),
            ));
        }
        keys.push(ApiKey {
            id: KeyId::generate().unwrap(),
            issuer_id: issuer,
            name: "bench".into(),
            roles: RoleCatalog::default().key_roles(&["DEVELOPER"]).unwrap(),
            key_type: KeyType::Team,
            algorithm: alg,
            public_key: pair.public,
            private_key: PrivateKeyState::Downloaded(0),
            created_by: "bench".into(),
            created_at: 0,
            last_used_at: None,
            request_count: 0,
            revoked_at: None,
            revoke_reason: None,
            expires_at: None,
            user_id: None,
        });
    }
    ring.replace_all(&keys, 1);
    let (signer, public) = signer.unwrap();
    let kid = keys[RING_KEYS / 2].id;
    let now = SystemClock.now();
    // App Store Connect's shape, with a scope.
    let token = sign_jwt(
        &signer,
        kid.as_str(),
        &serde_json::json!({
            "iss": issuer.to_string(), "aud": "keygate-v1", "iat": now, "exp": now + 1200,
            "scope": ["GET /v1/apps?filter[platform]=IOS"]
        }),
    )
    .unwrap();
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    Setup {
        ring,
        policy: Arc::new(policy()),
        message: signing_input.as_bytes().to_vec(),
        signature: URL_SAFE_NO_PAD.decode(sig).unwrap(),
        token,
        public,
    }
}

fn verifier(s: &Setup, cache: usize) -> Verifier {
    Verifier::new(
        Arc::clone(&s.ring),
        Arc::clone(&s.policy),
        TokenRules::default(),
        Arc::new(SystemClock),
    )
    .with_token_cache(cache)
}

const TARGET: RequestTarget<'static> = RequestTarget {
    method: "GET",
    path: "/v1/apps",
    query: "filter%5Bplatform%5D=IOS&limit=50",
};

fn benches(c: &mut Criterion) {
    for (alg, name) in [(Algorithm::Es256, "es256"), (Algorithm::EdDsa, "eddsa")] {
        let s = setup(alg);
        let mut g = c.benchmark_group(name);
        let raw = UnparsedPublicKey::new(
            match alg {
                Algorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
                Algorithm::EdDsa => &ED25519,
            },
            s.public.clone(),
        );
        g.bench_function("raw_signature_verify", |b| {
            b.iter(|| raw.verify(black_box(&s.message), black_box(&s.signature)))
        });
        let cold = verifier(&s, 0);
        assert!(cold.verify(&s.token).is_ok());
        g.bench_function("first_time_verify", |b| {
            b.iter(|| cold.verify(black_box(&s.token)).unwrap())
        });
        let warm = verifier(&s, 65_536);
        assert!(warm.verify(&s.token).is_ok());
        g.bench_function("cached_verify", |b| {
            b.iter(|| warm.verify(black_box(&s.token)).unwrap())
        });
        let gate = Gate::new(
            Arc::new(verifier(&s, 65_536)),
            Arc::new(Meter::new(Arc::new(SystemClock))),
        );
        assert!(gate.check(&s.token, &TARGET).is_ok());
        g.bench_function("decision_reused_token", |b| {
            b.iter(|| gate.check(black_box(&s.token), black_box(&TARGET)).is_ok())
        });
        g.finish();
    }

    let mut g = c.benchmark_group("matching");
    let entry = ScopeEntry::parse("GET /v1/apps?filter[platform]=IOS").unwrap();
    g.bench_function("scope_match", |b| {
        b.iter(|| entry.matches(black_box(&TARGET)))
    });
    let policy = policy();
    let dev = RoleCatalog::default().key_roles(&["DEVELOPER"]).unwrap();
    let deep = RequestTarget {
        method: "GET",
        path: "/v1/betaGroups/123/relationships/builds",
        query: "",
    };
    g.bench_function("policy_decision", |b| {
        b.iter(|| policy.allows(black_box(&dev), black_box(&deep)))
    });
    g.finish();
}

fn criterion_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion")
}

/// This run's mean time for one benchmark, in nanoseconds.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&criterion_dir())
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    println!(
        "\nSPEC §10 ratios, from this run (throughput ratios: reference time / measured time)"
    );
    for group in ["es256", "eddsa"] {
        let (Some(raw), Some(first), Some(cached), Some(decision)) = (
            mean_ns(group, "raw_signature_verify"),
            mean_ns(group, "first_time_verify"),
            mean_ns(group, "cached_verify"),
            mean_ns(group, "decision_reused_token"),
        ) else {
            println!("{group}: estimates missing (run without a filter)");
            continue;
        };
        println!(
            "{group}: raw {:.2} µs, first-time {:.2} µs, cached {:.0} ns, decision {:.0} ns",
            raw / 1e3,
            first / 1e3,
            cached,
            decision
        );
        println!(
            "  first-time vs raw {:.3} (target >= 0.95); cached vs raw {:.0}x (target >= 50x); decision vs raw {:.0}x",
            raw / first,
            raw / cached,
            raw / decision
        );
    }
    if let (Some(p), Some(e)) = (
        mean_ns("es256", "raw_signature_verify"),
        mean_ns("eddsa", "raw_signature_verify"),
    ) {
        println!("Ed25519 raw verify is {:.2}x P-256's speed", p / e);
    }
}
