//! Mints many distinct tokens for one key, one per line, for load tests that must present a
//! fresh token on every request (`bench/load.sh`). Each token has its own `jti`, so no two are
//! byte-identical and none can be served from a verified-token cache.
//!
//! ```sh
//! cargo run --release -p keygate-client --example mint_tokens -- KEY.p8 KEY_ID ISSUER_ID COUNT [AUDIENCE] > tokens.txt
//! ```

#![allow(clippy::print_stdout)] // the tokens are the output

use std::io::Write as _;

use keygate_core::clock::{Clock, SystemClock};
use keygate_core::crypto::PrivateKeyPem;
use keygate_core::token::{Signer, sign_jwt};

type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Fallible<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, key_id, issuer, count, rest @ ..] = args.as_slice() else {
        return Err("usage: mint_tokens KEY.p8 KEY_ID ISSUER_ID COUNT [AUDIENCE]".into());
    };
    let audience = rest.first().map_or("keygate-v1", String::as_str);
    let count: u64 = count.parse()?;
    let signer = Signer::from_pem(&PrivateKeyPem::from_pem(std::fs::read_to_string(file)?))?;
    let now = SystemClock.now();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for n in 0..count {
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "iat": now, "exp": now + 1200, "jti": n.to_string()
        });
        writeln!(out, "{}", sign_jwt(&signer, key_id, &claims)?)?;
    }
    out.flush()?;
    Ok(())
}
