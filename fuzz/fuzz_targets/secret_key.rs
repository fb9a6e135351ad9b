//! The secret-key format and restrictions: any text as a secret key (and, given a valid
//! prefix and body, with its correct checksum appended, so the accepting path runs too); any
//! JSON as restrictions, checked against a request; single referrer patterns and IP ranges.
//! Nothing may panic.
#![no_main]

use keygate_core::scope::RequestTarget;
use keygate_core::secret_key::{Caller, IpRange, ReferrerPattern, Restrictions, SecretKeyText, crc32};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secret) = SecretKeyText::parse(text) {
        let _ = (secret.hash(), secret.hint());
    }
    if let Some(signed) = text.get(..48) {
        const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut n = crc32(signed.as_bytes());
        let mut check = [b'0'; 6];
        for slot in check.iter_mut().rev() {
            *slot = BASE62[(n % 62) as usize];
            n /= 62;
        }
        let full = format!("{signed}_{}", String::from_utf8_lossy(&check));
        if text.starts_with("kgsk_") && signed.bytes().skip(5).all(|b| b.is_ascii_alphanumeric()) {
            assert!(SecretKeyText::parse(&full).is_ok(), "a correct checksum is accepted");
        }
    }
    let mut lines = text.splitn(3, '\n');
    let first = lines.next().unwrap_or("");
    let second = lines.next().unwrap_or("");
    if let Ok(p) = ReferrerPattern::parse(first) {
        let _ = p.matches(second);
    }
    if let (Ok(range), Ok(ip)) = (IpRange::parse(first), second.trim().parse()) {
        let _ = range.contains(ip);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Ok(r) = Restrictions::from_json(&v) {
            let caller = Caller {
                referer: Some("https://app.example.com/page"),
                origin: None,
                ip: "192.0.2.1".parse().ok(),
            };
            let _ = r.check(&caller, &RequestTarget::from_uri("GET", "/v1/maps/x?y=1"));
            let _ = Restrictions::from_json(&r.to_json()).map(|back| assert_eq!(back, r));
        }
    }
});
