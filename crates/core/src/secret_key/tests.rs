use super::*;
use crate::error::ForbiddenReason;

#[test]
fn crc32_is_ieee() {
    // The standard check value of CRC-32/ISO-HDLC.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    assert_eq!(base62_u32(0), "000000");
    assert_eq!(base62_u32(61), "00000z");
    assert_eq!(base62_u32(u32::MAX), "4gfFC3");
}

#[test]
fn format_table() {
    let key = SecretKeyText::generate().unwrap();
    let text = key.expose().to_owned();
    assert_eq!(text.len(), SECRET_KEY_LEN);
    assert!(text.starts_with("kgsk_"));
    assert_eq!(SecretKeyText::parse(&text).unwrap().hash(), key.hash());
    assert_ne!(SecretKeyText::generate().unwrap().expose(), text);
    assert!(!format!("{key:?}").contains(&text));
    let hint = key.hint();
    assert!(
        hint.starts_with("kgsk_") && hint.chars().count() < 16,
        "{hint}"
    );

    // (input, expected error)
    let body = text.get(5..48).unwrap();
    let check = text.get(49..).unwrap();
    let cases: Vec<(String, FormatError)> = vec![
        (String::new(), FormatError::Malformed),
        ("kgsk_".into(), FormatError::Malformed),
        (format!("kgsk-{body}_{check}"), FormatError::Malformed),
        (format!("KGSK_{body}_{check}"), FormatError::Malformed),
        (format!("kgsk_{body}{check}"), FormatError::Malformed),
        (
            format!("kgsk_{}_{check}", &body[1..]),
            FormatError::Malformed,
        ),
        (format!("kgsk_{body}x_{check}"), FormatError::Malformed),
        (
            format!("kgsk_{body}_{}", &check[1..]),
            FormatError::Malformed,
        ),
        (format!("kgsk_{body}_{check}0"), FormatError::Malformed),
        (
            format!("kgsk_{}-_{check}", &body[1..]),
            FormatError::Malformed,
        ),
        (
            format!("kgsk_{}é_{check}", &body[2..]),
            FormatError::Malformed,
        ),
        (format!("{text} "), FormatError::Malformed),
        (format!("kgsk_{body}__{check}"), FormatError::Malformed),
    ];
    for (input, want) in cases {
        assert_eq!(SecretKeyText::parse(&input).err(), Some(want), "{input:?}");
    }
}

#[test]
fn a_one_character_typo_fails_the_checksum() {
    let key = SecretKeyText::generate().unwrap();
    let text = key.expose();
    // Every position of the random part and of the checksum, changed to another base62 char.
    for i in 5..text.len() {
        if i == 48 {
            continue; // the separator
        }
        let original = text.as_bytes()[i];
        let replacement = if original == b'A' { b'B' } else { b'A' };
        let mut typo = text.as_bytes().to_vec();
        typo[i] = replacement;
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            SecretKeyText::parse(&typo).err(),
            Some(FormatError::Checksum),
            "position {i}"
        );
    }
    // Two swapped neighbours too.
    let mut swapped = text.as_bytes().to_vec();
    let (a, b) = (10, 11);
    if swapped[a] != swapped[b] {
        swapped.swap(a, b);
        let swapped = String::from_utf8(swapped).unwrap();
        assert_eq!(
            SecretKeyText::parse(&swapped).err(),
            Some(FormatError::Checksum)
        );
    }
}

#[test]
fn referrer_pattern_table() {
    // (pattern, url, matches)
    let table = [
        (
            "https://*.example.com/*",
            "https://www.example.com/maps?x=1",
            true,
        ),
        ("https://*.example.com/*", "https://a.b.example.com/", true),
        ("https://*.example.com/*", "https://example.com/", false),
        ("https://*.example.com/*", "https://badexample.com/", false),
        (
            "https://*.example.com/*",
            "https://example.com.evil.test/",
            false,
        ),
        ("https://*.example.com/*", "http://www.example.com/", false),
        ("*.example.com/*", "http://www.example.com/page", true),
        ("example.com", "https://example.com/", true),
        ("example.com", "https://example.com", true),
        ("example.com", "http://example.com/", true),
        ("example.com", "https://example.com/page", false),
        ("example.com", "https://www.example.com/", false),
        ("example.com/*", "https://example.com/any/path", true),
        (
            "https://example.com/app/*",
            "https://example.com/app/",
            true,
        ),
        (
            "https://example.com/app/*",
            "https://example.com/app/x/y",
            true,
        ),
        ("https://example.com/app/*", "https://example.com/app", true),
        (
            "https://example.com/app/*",
            "https://example.com/apple",
            false,
        ),
        (
            "https://www.example.com/checkout",
            "https://www.example.com/checkout",
            true,
        ),
        (
            "https://www.example.com/checkout",
            "https://www.example.com/checkout?step=2",
            true,
        ),
        (
            "https://www.example.com/checkout",
            "https://www.example.com/checkout/x",
            false,
        ),
        ("https://EXAMPLE.com", "https://example.COM/", true),
        ("http://localhost:3000/*", "http://localhost:3000/dev", true),
        (
            "http://localhost:3000/*",
            "http://localhost:3001/dev",
            false,
        ),
        ("example.com", "https://example.com@evil.test/", false),
        ("http://[::1]/*", "http://[::1]/dev", true),
        ("http://[::1]/*", "http://[0:0::1]/", true),
        ("http://[::1]:8080/*", "http://[::1]:8080/dev", true),
        ("http://[::1]:8080/*", "http://[::1]/dev", false),
        ("https://[2001:db8::1]", "https://[2001:DB8:0::1]/", true),
        ("https://[2001:db8::1]", "https://[2001:db8::2]/", false),
        ("https://[2001:db8::1]", "https://2001:db8::1/", false),
        ("http://127.0.0.1:3000/*", "http://127.0.0.1:3000/x", true),
        ("example.com", "https://example.com:/", false),
        ("example.com", "example.com", false),
        ("example.com", "not a url", false),
    ];
    for (pattern, url, want) in table {
        let p = ReferrerPattern::parse(pattern).unwrap();
        assert_eq!(p.matches(url), want, "{pattern} vs {url}");
    }
    for bad in [
        "",
        "https://",
        "https://exa*mple.com",
        "https://example.com/a*b",
        "ex ample.com",
        "https://*/",
        "https://[::1",
        "https://[not-an-address]/",
        "https://::1/",
        "https://[::1]x/",
        "https://example.com:99999/",
    ] {
        assert!(ReferrerPattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn ip_range_table() {
    // (range, address, contained)
    let table = [
        ("192.0.2.0/24", "192.0.2.77", true),
        ("192.0.2.0/24", "192.0.3.1", false),
        ("192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("10.0.0.0/8", "10.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("192.0.2.0/24", "::ffff:192.0.2.1", true),
        ("2001:db8::/32", "2001:db8:1::1", true),
        ("2001:db8::/32", "2001:db9::1", false),
        ("::1", "::1", true),
        ("::/0", "2001:db8::1", true),
        ("::/0", "192.0.2.1", false),
        ("2001:db8::/32", "192.0.2.1", false),
        ("192.0.2.0/24", "2001:db8::1", false),
        ("fe80::/10", "fe80::abcd", true),
        ("::ffff:10.0.0.0/104", "10.1.2.3", true),
        ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true),
        ("::ffff:10.0.0.0/104", "11.0.0.1", false),
    ];
    for (range, ip, want) in table {
        let r = IpRange::parse(range).unwrap();
        assert_eq!(r.contains(ip.parse().unwrap()), want, "{range} vs {ip}");
    }
    for bad in [
        "",
        "192.0.2.0/33",
        "2001:db8::/129",
        "192.0.2/24",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "x",
        "10.0.0.0/8/8",
        "10.0.0.0/ 8",
    ] {
        assert!(IpRange::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        IpRange::parse("192.0.2.7").unwrap().to_string(),
        "192.0.2.7/32"
    );
}

#[test]
fn restrictions_check_referrer_then_ip_then_api() {
    let r = Restrictions::from_json(&json!({
        "referrers": ["https://*.example.com/*"],
        "ipRanges": ["192.0.2.0/24", "2001:db8::/32"],
        "apis": ["GET /v1/maps/**", "POST /v1/geocode"],
    }))
    .unwrap();
    assert_eq!(
        Restrictions::from_json(&r.to_json()).unwrap(),
        r,
        "round trip"
    );
    let target = |m, p| RequestTarget {
        method: m,
        path: p,
        query: "",
    };
    let ok = Caller {
        referer: Some("https://app.example.com/page"),
        origin: None,
        ip: Some("192.0.2.5".parse().unwrap()),
    };
    // (caller, target, outcome)
    let reason = |c: &Caller<'_>, m, p| match r.check(c, &target(m, p)) {
        Ok(()) => None,
        Err(Error::Forbidden { reason, .. }) => Some(reason),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(reason(&ok, "GET", "/v1/maps/tiles/1"), None);
    assert_eq!(reason(&ok, "POST", "/v1/geocode"), None);
    assert_eq!(
        reason(&ok, "DELETE", "/v1/maps/x"),
        Some(ForbiddenReason::ApiNotAllowed)
    );
    assert_eq!(
        reason(&ok, "GET", "/v1/other"),
        Some(ForbiddenReason::ApiNotAllowed)
    );
    let origin_only = Caller {
        referer: None,
        origin: Some("https://app.example.com"),
        ..ok
    };
    // An Origin is a site's root: it matches "any path" and path-less patterns...
    assert_eq!(reason(&origin_only, "GET", "/v1/maps/a"), None);
    let r_any = Restrictions::from_json(&json!({"referrers": ["*.example.com"]})).unwrap();
    assert!(r_any.check(&origin_only, &target("GET", "/x")).is_ok());
    // ...but not a pattern for one path.
    let r_path =
        Restrictions::from_json(&json!({"referrers": ["https://app.example.com/shop"]})).unwrap();
    assert!(r_path.check(&origin_only, &target("GET", "/x")).is_err());
    let none = Caller {
        referer: None,
        origin: None,
        ..ok
    };
    assert_eq!(
        reason(&none, "GET", "/v1/maps/a"),
        Some(ForbiddenReason::ReferrerNotAllowed)
    );
    let evil = Caller {
        referer: Some("https://evil.test/"),
        ..ok
    };
    assert_eq!(
        reason(&evil, "GET", "/v1/maps/a"),
        Some(ForbiddenReason::ReferrerNotAllowed)
    );
    let far = Caller {
        ip: Some("198.51.100.1".parse().unwrap()),
        ..ok
    };
    assert_eq!(
        reason(&far, "GET", "/v1/maps/a"),
        Some(ForbiddenReason::IpNotAllowed)
    );
    let v6 = Caller {
        ip: Some("2001:db8::9".parse().unwrap()),
        ..ok
    };
    assert_eq!(reason(&v6, "GET", "/v1/maps/a"), None);
    let unknown_ip = Caller { ip: None, ..ok };
    assert_eq!(
        reason(&unknown_ip, "GET", "/v1/maps/a"),
        Some(ForbiddenReason::IpNotAllowed)
    );
    // Nothing restricted: anything goes.
    assert!(
        Restrictions::default()
            .check(&none, &target("DELETE", "/x"))
            .is_ok()
    );
    for bad in [
        json!([]),
        json!({"websites": []}),
        json!({"referrers": "example.com"}),
        json!({"referrers": [1]}),
        json!({"ipRanges": ["300.0.0.0/8"]}),
        json!({"apis": ["maps"]}),
        // Nothing hidden: a pattern shown on a page reads as what it matches.
        json!({"referrers": ["https://good.example.com/\u{202E}moc.live/*"]}),
        json!({"referrers": ["https://good.example.com/\u{1b}[31m"]}),
        json!({"apis": ["GET /v1/maps/\u{200B}"]}),
        json!({"ipRanges": ["10.0.0.0/8\u{0}"]}),
    ] {
        assert!(Restrictions::from_json(&bad).is_err(), "{bad}");
    }
}
