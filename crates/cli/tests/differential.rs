//! The request checked is the request made, through every way into the protected API: keygate's
//! own reverse proxy (without and with an upstream path prefix) and real nginx, Traefik, Envoy
//! and Caddy running the shipped configurations. One table of hostile request targets (dot
//! segments raw and encoded, double encoding, encoded and raw slashes and backslashes, NUL, `#`,
//! `;`, `//`, fullwidth dots, overlong UTF-8, absolute-form, very long paths) and a few
//! legitimate ones is written byte for byte on a raw connection, with a token of a `DEVELOPER`
//! key (allowed `GET /v1/echo/**`) and of an admin key (allowed everything, so keygate parses
//! nothing: the same path as an open policy).
//!
//! For each request, either it is refused (any 4xx or 5xx, or no answer) and the upstream got
//! nothing, or the upstream got exactly the method and target keygate decided on. For a gateway,
//! a recording relay between it and keygate shows what keygate was asked (`X-Original-URI`,
//! `X-Forwarded-Uri` or the `/authz/...` path); for keygate's proxy it is the target the
//! client sent, and the upstream must get the prefix plus that target, never anything that
//! resolves outside the prefix. Every row is tried; all failures are reported together.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;
#[macro_use]
#[path = "common/gateways.rs"]
mod gateway;

use common::*;
use gateway::{Gateway, Kind, Seen, Tap, get_request, raw_request, show};

/// A request target, rendered per way in (absolute-form names that way's own address).
#[derive(Debug, Clone, Copy)]
enum Target {
    Raw(&'static str),
    /// `http://{the way in's address}` + the path.
    Absolute(&'static str),
    /// `/v1/echo/` and that many more bytes.
    Long(usize),
}

impl Target {
    fn render(self, authority: &str) -> Vec<u8> {
        match self {
            Self::Raw(t) => t.as_bytes().to_vec(),
            Self::Absolute(path) => format!("http://{authority}{path}").into_bytes(),
            Self::Long(n) => format!("/v1/echo/{}", "a".repeat(n)).into_bytes(),
        }
    }
}

/// (target, must pass): the legitimate rows must be allowed, for both keys, everywhere.
const ROWS: &[(Target, bool)] = &[
    (Target::Raw("/v1/echo/a"), true),
    (Target::Raw("/v1/echo/a?x=1"), true),
    (Target::Raw("/v1/echo/a?next=/../../admin"), false),
    // Dot segments, raw and encoded.
    (Target::Raw("/v1/echo/../../admin"), false),
    (Target::Raw("/v1/echo/%2e%2e/%2e%2e/admin"), false),
    (Target::Raw("/v1/echo/%2E%2e/admin"), false),
    (Target::Raw("/../internal"), false),
    (Target::Raw("/./../x"), false),
    (Target::Raw("/v1/../../x"), false),
    (Target::Raw("/v1/echo/a/.."), false),
    (Target::Raw("/v1/echo/."), false),
    // Double encoding.
    (Target::Raw("/v1/echo/%252e%252e/%252e%252e/admin"), false),
    // Encoded slash, encoded and raw backslash, NUL.
    (Target::Raw("/v1/echo/..%2f..%2fadmin"), false),
    (Target::Raw("/v1/echo%2f..%2f..%2fadmin"), false),
    (Target::Raw("/v1/echo/..%5c..%5cadmin"), false),
    (Target::Raw("/v1/echo/..\\..\\admin"), false),
    (Target::Raw("/v1/echo/a%00/../../admin"), false),
    // A fragment on the wire (HTTP clients strip it; a raw write does not).
    (Target::Raw("/v1/echo/x#/../../../admin"), false),
    (Target::Raw("/v1/echo/a?x=1#/../../admin"), false),
    // Path parameters.
    (Target::Raw("/v1/echo/..;/admin"), false),
    (Target::Raw("/v1/echo;x=1"), false),
    (Target::Raw("/v1/echo;x=1/a"), false),
    // Empty segments.
    (Target::Raw("//admin"), false),
    (Target::Raw("/v1//echo"), false),
    (Target::Raw("/v1//echo/a"), false),
    // Fullwidth dots, overlong UTF-8 dots and slash.
    (Target::Raw("/v1/echo/%EF%BC%8E%EF%BC%8E/admin"), false),
    (Target::Raw("/v1/echo/%c0%ae%c0%ae/admin"), false),
    (Target::Raw("/v1/echo/..%c0%afadmin"), false),
    // Absolute-form.
    (Target::Absolute("/v1/../admin"), false),
    (Target::Absolute("/v1/echo/a"), false),
    // Very long paths.
    (Target::Long(9000), false),
    (Target::Long(70000), false),
];

/// A way into the protected API.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// keygate's reverse proxy, with this upstream path prefix (`""` for none).
    Proxy(&'static str),
    Gateway(Kind),
}

impl Way {
    fn name(self) -> String {
        match self {
            Self::Proxy("") => "keygate's proxy".to_owned(),
            Self::Proxy(prefix) => format!("keygate's proxy to {prefix}"),
            Self::Gateway(kind) => kind.name().to_owned(),
        }
    }
}

/// What keygate checks of a target it is given: the path and query, with an absolute-form
/// target reduced to them and a fragment (never part of a request target, RFC 9110 §7.1)
/// ignored, as `/authz` reads `X-Original-URI` today (`RequestTarget::from_uri`).
fn checked(target: &[u8]) -> Vec<u8> {
    let target = target
        .iter()
        .position(|&b| b == b'#')
        .map_or(target, |at| &target[..at]);
    let lower = target.to_ascii_lowercase();
    for scheme in [b"http://".as_slice(), b"https://"] {
        if lower.starts_with(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(at) if rest[at] == b'/' => rest[at..].to_vec(),
                Some(at) => [b"/".as_slice(), &rest[at..]].concat(),
                None => b"/".to_vec(),
            };
        }
    }
    target.to_vec()
}

/// Whether an upstream target's path, read the loosest way a server might (percent-decoded
/// dots and slashes, `\` as `/`, `;` parameters dropped, dot segments resolved), lies outside
/// `prefix`.
fn escapes(prefix: &str, target: &[u8]) -> bool {
    let path = target
        .iter()
        .position(|&b| b == b'?')
        .map_or(target, |at| &target[..at]);
    let mut loose = String::from_utf8_lossy(path).to_ascii_lowercase();
    for (from, to) in [
        ("%25", "%"),
        ("%2e", "."),
        ("%2f", "/"),
        ("%5c", "/"),
        ("\\", "/"),
    ] {
        loose = loose.replace(from, to);
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in loose.split('/').skip(1) {
        match seg.split(';').next().unwrap() {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let want: Vec<&str> = prefix.split('/').skip(1).collect();
    !segments.starts_with(&want)
}

/// The verdict on one request, `None` when it is as it must be.
fn judge(
    way: Way,
    target: &[u8],
    legit: bool,
    status: u16,
    asked: Option<Vec<Seen>>,
    got: &[Seen],
) -> Option<String> {
    let got_text = || {
        got.iter()
            .map(|s| format!("{} {}", s.method, show(&s.target)))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    if legit && status != 200 {
        return Some(format!("a legitimate request got {status}"));
    }
    if status == 0 || status >= 400 {
        return (!got.is_empty()).then(|| {
            format!(
                "refused with {status}, but the upstream received {}",
                got_text()
            )
        });
    }
    let [received] = got else {
        return Some(format!(
            "answered {status}, and the upstream received {} requests: {}",
            got.len(),
            got_text()
        ));
    };
    // What keygate decided on, and what the upstream must therefore have received.
    let (decided, prefix): (Vec<(String, Vec<u8>)>, &str) = match (way, asked) {
        (Way::Proxy(prefix), _) => (vec![("GET".to_owned(), checked(target))], prefix),
        (Way::Gateway(kind), Some(asked)) => {
            let mut decided = Vec::new();
            for seen in &asked {
                let Some((method, uri)) = kind.asked(seen) else {
                    return Some(format!(
                        "the gateway asked keygate {} {} without naming the original request",
                        seen.method,
                        show(&seen.target)
                    ));
                };
                decided.push((method.to_ascii_uppercase(), checked(&uri)));
            }
            (decided, "")
        }
        (Way::Gateway(_), None) => unreachable!("a gateway always has a relay"),
    };
    if decided.is_empty() {
        return Some(format!(
            "the upstream received {} and keygate was never asked",
            got_text()
        ));
    }
    let expected_target = |uri: &[u8]| [prefix.as_bytes(), uri].concat();
    for (method, uri) in &decided {
        if *method != received.method || expected_target(uri) != received.target {
            return Some(format!(
                "keygate decided on {method} {}, the upstream received {}",
                show(uri),
                got_text()
            ));
        }
    }
    if !prefix.is_empty() && escapes(prefix, &received.target) {
        return Some(format!(
            "the upstream received {}, outside {prefix}",
            got_text()
        ));
    }
    None
}

async fn hostile_targets(way: Way) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Tap::upstream().await;
    let headers = match way {
        Way::Gateway(kind) => kind.forward_auth_headers(),
        Way::Proxy(_) => "auto",
    };
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "forward_auth_headers = \"{headers}\"\n\
             [roles.DEVELOPER]\nallow = [\"GET /v1/echo/**\"]\nrate_limit_per_hour = 100000\n"
        ),
    )
    .unwrap();
    let mut args = vec!["--config".to_owned(), config.to_str().unwrap().to_owned()];
    if let Way::Proxy(prefix) = way {
        args.extend([
            "--proxy-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--upstream".to_owned(),
            format!("http://{}{prefix}", upstream.addr),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(&dir.path().join("data"), &args, &[]);
    let admin = bootstrap(&server, &dir.path().join("out"));
    let admin_token = cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &admin_token).await;
    let dev_id = create_key(&server, &admin_token, &["DEVELOPER"]).await;
    let dev_file = dir.path().join("dev.p8");
    download_key(&server, &admin_token, &dev_id, &dev_file).await;
    let dev = cli_token(&dev_file, &dev_id, &admin.issuer);

    let (entry, relay, _gateway) = match way {
        Way::Proxy(_) => (
            server
                .proxy
                .as_deref()
                .unwrap()
                .trim_start_matches("http://")
                .to_owned(),
            None,
            None,
        ),
        Way::Gateway(kind) => {
            let relay = Tap::relay(server.base.trim_start_matches("http://")).await;
            let gateway = Gateway::start(
                kind,
                &dir.path().join("gateway"),
                &relay.addr,
                &upstream.addr,
            )
            .await;
            (gateway.addr.clone(), Some(relay), Some(gateway))
        }
    };
    // The gateway's start-up check went through the relay.
    if let Some(relay) = &relay {
        relay.take();
    }
    upstream.take();

    let mut failures = Vec::new();
    for (row, legit) in ROWS {
        for (who, token) in [("DEVELOPER", &dev), ("ADMIN", &admin_token)] {
            let target = row.render(&entry);
            let auth = format!("Bearer {token}");
            let request = get_request(&target, &entry, &[("Authorization", &auth)]);
            let resp = raw_request(&entry, &request).await;
            let asked = relay.as_ref().map(Tap::take);
            let got = upstream.take();
            if let Some(why) = judge(way, &target, *legit, resp.status, asked, &got) {
                failures.push(format!("  {who} GET {}: {why}", show(&target)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "through {}, {} of {} requests were not decided as sent:\n{}",
        way.name(),
        failures.len(),
        ROWS.len() * 2,
        failures.join("\n")
    );
}

/// The judge flags what it is there for: keygate's proxy joining a dot segment onto its prefix,
/// and a gateway forwarding more of the target than keygate decided on (nginx passes a raw
/// `#...` on that `/authz` ignores); and lets a faithful request through.
#[test]
fn the_judge_flags_an_escape_and_a_fragment() {
    let got = |target: &[u8]| vec![Seen::new("GET", target, &[])];
    let escape = judge(
        Way::Proxy("/api"),
        b"/../internal",
        false,
        200,
        None,
        &got(b"/api/../internal"),
    );
    assert!(escape.unwrap().contains("outside /api"));
    let raw = b"/v1/echo/x#/../../../admin";
    let asked = vec![Seen::new(
        "GET",
        b"/authz",
        &[("X-Original-Method", b"GET"), ("X-Original-URI", raw)],
    )];
    let fragment = judge(
        Way::Gateway(Kind::Nginx),
        raw,
        false,
        200,
        Some(asked.clone()),
        &got(raw),
    );
    assert!(
        fragment
            .unwrap()
            .contains("keygate decided on GET /v1/echo/x,")
    );
    assert_eq!(
        judge(
            Way::Gateway(Kind::Nginx),
            raw,
            false,
            200,
            Some(asked),
            &got(b"/v1/echo/x")
        ),
        None
    );
    assert_eq!(
        judge(
            Way::Proxy("/api"),
            b"http://h/v1/echo/a?x=1",
            true,
            200,
            None,
            &got(b"/api/v1/echo/a?x=1")
        ),
        None
    );
    assert!(
        judge(
            Way::Proxy(""),
            b"/v1/echo/a",
            false,
            403,
            None,
            &got(b"/v1/echo/a")
        )
        .unwrap()
        .contains("refused with 403")
    );
}

scenario_tests! {
    hostile_targets_through_keygates_proxy => hostile_targets(Way::Proxy(""));
    hostile_targets_through_keygates_proxy_with_a_prefix => hostile_targets(Way::Proxy("/api"));
    hostile_targets_through_nginx => hostile_targets(Way::Gateway(Kind::Nginx));
    hostile_targets_through_traefik => hostile_targets(Way::Gateway(Kind::Traefik));
    hostile_targets_through_envoy => hostile_targets(Way::Gateway(Kind::Envoy));
    hostile_targets_through_caddy => hostile_targets(Way::Gateway(Kind::Caddy));
}
