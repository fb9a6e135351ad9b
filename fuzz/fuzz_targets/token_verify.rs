//! Token parsing and verification: any bytes as a whole token, and any bytes as the claims of a
//! token correctly signed by a known team key and by a known individual key (so the claim rules
//! run after the signature passes: issuer, subject, audience, times, lifetime, scope, policy).
//! The issuer is fixed, so the seeds' claims reach every rule and a crash replays. Nothing may
//! panic, and a signed token verifies only with the claims its key type requires.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use keygate_core::crypto::generate_key_pair;
use keygate_core::ids::{IssuerId, KeyId, UserId};
use keygate_core::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use keygate_core::keyset::KeyRing;
use keygate_core::policy::{Policy, RoleTable};
use keygate_core::role::RoleCatalog;
use keygate_core::token::{Signer, TokenRules, verify};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_795_687_200;
/// The issuer the seed corpus's claims name.
const ISSUER: &str = "57246542-96fe-1a63-e053-0824d011072a";

struct Signed {
    signer: Signer,
    header: String,
}

struct Fixture {
    ring: KeyRing,
    policy: Policy,
    rules: TokenRules,
    team: Signed,
    individual: Signed,
}

fn key(id: &str, key_type: KeyType) -> (ApiKey, Signed) {
    let pair = generate_key_pair(Algorithm::Es256).expect("key pair");
    let id = KeyId::parse(id).expect("key id");
    let key = ApiKey {
        id,
        issuer_id: ISSUER.parse::<IssuerId>().expect("issuer"),
        name: "fuzz".into(),
        roles: RoleCatalog::default().key_roles(&["DEVELOPER"]).expect("roles"),
        key_type,
        algorithm: Algorithm::Es256,
        public_key: pair.public,
        private_key: PrivateKeyState::Downloaded(NOW),
        created_by: "fuzz".into(),
        created_at: NOW,
        last_used_at: None,
        request_count: 0,
        revoked_at: None,
        revoke_reason: None,
        expires_at: None,
        user_id: (key_type == KeyType::Individual).then(UserId::generate),
    };
    let signed = Signed {
        signer: Signer::from_pem(&pair.private).expect("signer"),
        header: format!(r#"{{"alg":"ES256","kid":"{id}","typ":"JWT"}}"#),
    };
    (key, signed)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (team_key, team) = key("FUZZKEY001", KeyType::Team);
        let (individual_key, individual) = key("FUZZKEY002", KeyType::Individual);
        let ring = KeyRing::new();
        ring.apply(&[team_key, individual_key], 1);
        let policy = Policy::from_role_tables(BTreeMap::from([(
            "DEVELOPER".to_owned(),
            RoleTable {
                allow: vec!["GET /v1/apps/**".into(), "* /v1/builds/*".into()],
                long_lived: vec!["GET /v1/apps/*".into()],
                rate_limit_per_hour: None,
            },
        )]))
        .expect("policy");
        Fixture {
            ring,
            policy,
            rules: TokenRules::default(),
            team,
            individual,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verify(text, &f.ring, &f.policy, &f.rules, NOW);
        let _ = keygate_core::credential::credential(
            keygate_core::credential::HeaderValues::of([data].into_iter()),
            keygate_core::credential::HeaderValues::default(),
        );
    }
    if data.len() <= 4096 {
        // A team key's token names the issuer; an individual key's says `sub: "user"`.
        for (signed, member, required) in [(&f.team, "iss", ISSUER), (&f.individual, "sub", "user")] {
            let token = signed
                .signer
                .sign_raw(signed.header.as_bytes(), data)
                .expect("signing");
            if verify(&token, &f.ring, &f.policy, &f.rules, NOW).is_ok() {
                let claims: serde_json::Value =
                    serde_json::from_slice(data).expect("verified claims are JSON");
                assert_eq!(claims[member], required, "verified: {claims}");
            }
        }
    }
});
