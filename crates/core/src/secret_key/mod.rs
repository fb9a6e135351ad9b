//! Secret keys (Google/Stripe style, SPEC §2): the `kgsk_` format with its checksum, the stored
//! form (SHA-256 and a short hint), and the restrictions a key may carry (referrers, IP
//! ranges, APIs).
//!
//! Format: `kgsk_` + 43 base62 characters from the OS CSPRNG (256 bits) + `_` + the CRC32
//! (IEEE) of the 48 characters before the last `_`, as 6 base62 digits. The checksum lets a
//! secret scanner, and keygate itself, reject a mistyped key before any lookup.

use std::fmt;
use std::net::IpAddr;

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::clock::UnixTime;
use crate::error::{Error, ForbiddenReason, Result};
use crate::ids::{IssuerId, KeyId};
use crate::policy::RoutePattern;
use crate::role::RoleSet;
use crate::scope::RequestTarget;

mod index;
mod service;

pub use index::{SecretMatch, SecretRing};
pub use service::{LeakOutcome, MAX_ROLL_OVERLAP, NewSecretKey, SecretKeyService};

const PREFIX: &str = "kgsk_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
/// `kgsk_` + body + `_` + checksum.
pub const SECRET_KEY_LEN: usize = PREFIX.len() + BODY_LEN + 1 + CHECK_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A secret key's full text. Exists only while it is created or rolled and shown once, or while
/// a request presenting it is checked.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKeyText(String);

/// Why a presented text is not a well-formed secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Not `kgsk_` + 43 base62 + `_` + 6 base62.
    Malformed,
    /// Well-formed, but the checksum does not match: a typo or a truncated copy.
    Checksum,
}

impl FormatError {
    pub fn detail(self) -> &'static str {
        match self {
            Self::Malformed => {
                "This is not a keygate secret key: it is kgsk_, 43 letters and digits, _ and a 6-character checksum."
            }
            Self::Checksum => {
                "The secret key's checksum does not match: it was mistyped or cut short."
            }
        }
    }
}

impl SecretKeyText {
    /// A new secret from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut body = String::with_capacity(SECRET_KEY_LEN);
        body.push_str(PREFIX);
        let mut buf = [0u8; 64];
        let mut filled = 0;
        while filled < BODY_LEN {
            rng.fill(&mut buf)
                .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
            for &b in &buf {
                // 248 = 4 * 62: rejection sampling keeps every character uniform.
                if b < 248 && filled < BODY_LEN {
                    if let Some(&c) = BASE62.get(usize::from(b % 62)) {
                        body.push(char::from(c));
                        filled += 1;
                    }
                }
            }
            buf.zeroize();
        }
        let check = base62_u32(crc32(body.as_bytes()));
        body.push('_');
        body.push_str(&check);
        Ok(Self(body))
    }

    /// Checks the format and checksum, by splitting (no regex). Nothing is looked up.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let body = text.strip_prefix(PREFIX).ok_or(FormatError::Malformed)?;
        let (random, check) = body.rsplit_once('_').ok_or(FormatError::Malformed)?;
        let base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
        if random.len() != BODY_LEN || check.len() != CHECK_LEN || !base62(random) || !base62(check)
        {
            return Err(FormatError::Malformed);
        }
        let signed = text
            .get(..PREFIX.len() + BODY_LEN)
            .ok_or(FormatError::Malformed)?;
        if base62_u32(crc32(signed.as_bytes())) != check {
            return Err(FormatError::Checksum);
        }
        Ok(Self(text.to_owned()))
    }

    /// Whether a credential looks like a secret key rather than a JWT.
    pub fn looks_like(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the whole text: what storage keeps and looks up by.
    pub fn hash(&self) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// What lists show: the prefix, four random characters and the checksum's last four
    /// (about 24 of the 256 bits).
    pub fn hint(&self) -> String {
        let random = self.0.get(PREFIX.len()..PREFIX.len() + 4).unwrap_or("");
        let tail = self.0.get(self.0.len() - 4..).unwrap_or("");
        format!("{PREFIX}{random}…{tail}")
    }
}

impl fmt::Debug for SecretKeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKeyText(<redacted>)")
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib and GitHub's scanners use.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Six base62 digits, most significant first, zero-padded (62^6 > 2^32).
fn base62_u32(mut n: u32) -> String {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        if let Some(&c) = BASE62.get((n % 62) as usize) {
            *slot = c;
        }
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- the stored key ---------------------------------------------------------------------------

/// A secret key as stored: never the secret, only the SHA-256 of each of its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey {
    /// 10 characters of `[A-Z0-9]`, from the same space as API key IDs.
    pub id: KeyId,
    pub issuer_id: IssuerId,
    pub name: String,
    pub roles: RoleSet,
    pub restrictions: Restrictions,
    pub created_by: String,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
    pub revoke_reason: Option<String>,
    pub last_used_at: Option<UnixTime>,
    pub request_count: u64,
    /// The secrets that open this key, newest first: one, or two while a roll overlaps.
    pub versions: Vec<SecretVersion>,
}

/// One secret of a key. Rolling adds a version and gives the older ones an end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    pub hash: [u8; 32],
    pub hint: String,
    pub created_at: UnixTime,
    /// Set when the key was rolled: after this the version no longer opens the key.
    pub expires_at: Option<UnixTime>,
}

impl SecretKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
    pub fn is_expired(&self, now: UnixTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
    pub fn is_active(&self, now: UnixTime) -> bool {
        !self.is_revoked() && !self.is_expired(now)
    }
    /// The versions that still open the key at `now`.
    pub fn live_versions(&self, now: UnixTime) -> impl Iterator<Item = &SecretVersion> {
        self.versions
            .iter()
            .filter(move |v| v.expires_at.is_none_or(|e| e > now))
    }
}

// ---- restrictions -------------------------------------------------------------------------------

/// A Google-style website restriction: an optional scheme, `*.` for any subdomain, a trailing
/// `/*` for any path, else an exact URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerPattern {
    text: String,
    scheme: Option<String>,
    /// Lowercased host, without a leading `*.`.
    host: String,
    any_subdomain: bool,
    port: Option<u16>,
    path: PathRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRule {
    /// No path, or `/`: the site's root only (what a browser's default referrer policy sends
    /// cross-origin).
    Root,
    /// `/prefix/*`: this prefix and anything under it.
    Prefix(String),
    /// An exact path.
    Exact(String),
}

/// A URL as far as referrer matching needs it.
struct UrlParts<'a> {
    scheme: Option<&'a str>,
    host: String,
    port: Option<u16>,
    path: &'a str,
}

fn split_url(text: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, text),
    };
    if scheme.is_some_and(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    }) {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, ""),
    };
    // Userinfo would let "https://example.com@evil.test" pass as example.com.
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = split_authority(authority)?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some(UrlParts {
        scheme,
        host,
        port,
        path,
    })
}

/// `host[:port]`, where the host may be an IPv6 literal in brackets (`[2001:db8::1]:8443`),
/// written canonically so every spelling of one address compares equal. The host is lowercased.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok();
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let addr: std::net::Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':')?)?),
        };
        return Some((format!("[{addr}]"), port));
    }
    match authority.split_once(':') {
        // Two colons outside brackets: an IPv6 address written as no URL writes it.
        Some((_, p)) if p.contains(':') => None,
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(port(p)?))),
        None => Some((authority.to_ascii_lowercase(), None)),
    }
}

impl ReferrerPattern {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::attribute(
                "restrictions",
                format!(
                    "referrer {:?}: {why}",
                    text.chars().take(100).collect::<String>()
                ),
            )
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.len() > 500 || trimmed.chars().any(char::is_whitespace) {
            return Err(bad("must be a URL pattern such as https://*.example.com/*"));
        }
        let url = split_url(trimmed).ok_or_else(|| bad("is not a URL pattern"))?;
        let (any_subdomain, host) = match url.host.strip_prefix("*.") {
            Some(h) => (true, h.to_owned()),
            None => (false, url.host.clone()),
        };
        if host.is_empty() || host.contains('*') {
            return Err(bad("a * may only begin the host, as *.example.com"));
        }
        let path = match url.path {
            "" | "/" => PathRule::Root,
            "/*" => PathRule::Prefix("/".into()),
            p if p.ends_with("/*") => PathRule::Prefix(p.trim_end_matches('*').to_owned()),
            p if p.contains('*') => return Err(bad("a * in the path may only end it, as /*")),
            p => PathRule::Exact(p.to_owned()),
        };
        Ok(Self {
            text: trimmed.to_owned(),
            scheme: url.scheme.map(str::to_ascii_lowercase),
            host,
            any_subdomain,
            port: url.port,
            path,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a `Referer` or `Origin` value matches.
    pub fn matches(&self, url: &str) -> bool {
        let Some(u) = split_url(url) else {
            return false;
        };
        let Some(scheme) = u.scheme else {
            return false;
        };
        if self
            .scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case(scheme))
        {
            return false;
        }
        if self.port.is_some() && self.port != u.port {
            return false;
        }
        let host_ok = if self.any_subdomain {
            u.host
                .strip_suffix(&self.host)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            u.host == self.host
        };
        host_ok
            && match &self.path {
                PathRule::Root => u.path.is_empty() || u.path == "/",
                PathRule::Prefix(p) => {
                    u.path.starts_with(p.as_str()) || u.path == p.trim_end_matches('/')
                }
                PathRule::Exact(p) => u.path == p,
            }
    }
}

/// An IPv4 or IPv6 CIDR range (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::attribute(
                "restrictions",
                format!(
                    "ipRanges: {:?} is not an IPv4 or IPv6 address or CIDR range",
                    text.chars().take(60).collect::<String>()
                ),
            )
        };
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range it maps, as addresses are.
        if let (IpAddr::V6(v6), true) = (addr, prefix >= 96)
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Ok(Self {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// What a secret key may be used for. Empty lists restrict nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    pub referrers: Vec<ReferrerPattern>,
    pub ip_ranges: Vec<IpRange>,
    pub apis: Vec<RoutePattern>,
}

/// The request facts restrictions look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub referer: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// The client's address: the peer, or `X-Forwarded-For` as told by a trusted proxy.
    pub ip: Option<IpAddr>,
}

const MAX_ENTRIES: usize = 100;

impl Restrictions {
    /// Reads `{"referrers": [...], "ipRanges": [...], "apis": [...]}` (each optional).
    pub fn from_json(v: &Value) -> Result<Self> {
        let Value::Object(map) = v else {
            return Err(Error::attribute(
                "restrictions",
                "restrictions is an object with referrers, ipRanges and apis.",
            ));
        };
        let list = |name: &str| -> Result<Vec<&str>> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) if items.len() <= MAX_ENTRIES => items
                    .iter()
                    .map(|i| {
                        let text = i.as_str().ok_or_else(|| {
                            Error::attribute("restrictions", format!("{name} holds strings."))
                        })?;
                        // Shown on pages and compared with what clients send: nothing hidden.
                        if crate::user::has_hidden_characters(text, &[]) {
                            return Err(Error::attribute(
                                "restrictions",
                                format!(
                                    "{name} must not contain control characters, direction overrides or invisible characters."
                                ),
                            ));
                        }
                        Ok(text)
                    })
                    .collect(),
                Some(_) => Err(Error::attribute(
                    "restrictions",
                    format!("{name} is an array of at most {MAX_ENTRIES} strings."),
                )),
            }
        };
        if let Some(k) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "referrers" | "ipRanges" | "apis"))
        {
            return Err(Error::attribute(
                "restrictions",
                format!(
                    "unknown restriction {:?}; allowed: referrers, ipRanges, apis.",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
        Ok(Self {
            referrers: list("referrers")?
                .into_iter()
                .map(ReferrerPattern::parse)
                .collect::<Result<_>>()?,
            ip_ranges: list("ipRanges")?
                .into_iter()
                .map(IpRange::parse)
                .collect::<Result<_>>()?,
            apis: list("apis")?
                .into_iter()
                .map(|p| {
                    RoutePattern::parse(p)
                        .map_err(|e| Error::attribute("restrictions", format!("apis: {e}")))
                })
                .collect::<Result<_>>()?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "referrers": self.referrers.iter().map(ReferrerPattern::as_str).collect::<Vec<_>>(),
            "ipRanges": self.ip_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "apis": self.apis.iter().map(RoutePattern::as_str).collect::<Vec<_>>(),
        })
    }

    /// Checks a request against every restriction, in the order website, address, API.
    pub fn check(&self, caller: &Caller<'_>, target: &RequestTarget<'_>) -> Result<()> {
        if !self.referrers.is_empty() {
            let presented = caller.referer.or(caller.origin);
            let ok = presented.is_some_and(|url| self.referrers.iter().any(|p| p.matches(url)));
            if !ok {
                return Err(Error::forbidden(
                    ForbiddenReason::ReferrerNotAllowed,
                    match presented {
                        Some(_) => {
                            "This key is restricted to other websites; the request's Referer (or Origin) matches none of them."
                        }
                        None => {
                            "This key is restricted to websites, and the request has neither Referer nor Origin."
                        }
                    },
                ));
            }
        }
        if !self.ip_ranges.is_empty() {
            let ok = caller
                .ip
                .is_some_and(|ip| self.ip_ranges.iter().any(|r| r.contains(ip)));
            if !ok {
                return Err(Error::forbidden(
                    ForbiddenReason::IpNotAllowed,
                    match caller.ip {
                        Some(ip) => format!("This key is restricted to IP ranges that do not include {}.", canonical(ip)),
                        None => "This key is restricted to IP ranges, and the client address is unknown.".into(),
                    },
                ));
            }
        }
        if !self.apis.is_empty()
            && !self
                .apis
                .iter()
                .any(|p| p.matches(target.method, target.path))
        {
            return Err(Error::forbidden(
                ForbiddenReason::ApiNotAllowed,
                format!(
                    "This key is restricted to APIs that do not include {} {}.",
                    target.method,
                    target.path.chars().take(200).collect::<String>()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
