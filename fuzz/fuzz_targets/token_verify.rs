//! Token parsing and verification: any bytes as a whole token, and any bytes as the claims of a
//! token correctly signed by a known key (so the claim rules run after the signature passes).
//! Nothing may panic; nothing but the one well-formed shape may verify.
#![no_main]

use std::sync::OnceLock;

use keygate_core::crypto::generate_key_pair;
use keygate_core::ids::{IssuerId, KeyId};
use keygate_core::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use keygate_core::keyset::KeyRing;
use keygate_core::policy::Policy;
use keygate_core::role::RoleCatalog;
use keygate_core::token::{Signer, TokenRules, verify};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_795_687_200;

struct Fixture {
    ring: KeyRing,
    policy: Policy,
    rules: TokenRules,
    signer: Signer,
    header: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pair = generate_key_pair(Algorithm::Es256).expect("key pair");
        let id = KeyId::parse("FUZZKEY001").expect("key id");
        let key = ApiKey {
            id,
            issuer_id: IssuerId::generate(),
            name: "fuzz".into(),
            roles: RoleCatalog::default().key_roles(&["DEVELOPER"]).expect("roles"),
            key_type: KeyType::Team,
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
            user_id: None,
        };
        let ring = KeyRing::new();
        ring.apply(&[key], 1);
        Fixture {
            ring,
            policy: Policy::open(),
            rules: TokenRules::default(),
            signer: Signer::from_pem(&pair.private).expect("signer"),
            header: format!(r#"{{"alg":"ES256","kid":"{id}","typ":"JWT"}}"#),
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
        let token = f
            .signer
            .sign_raw(f.header.as_bytes(), data)
            .expect("signing");
        let _ = verify(&token, &f.ring, &f.policy, &f.rules, NOW);
    }
});
