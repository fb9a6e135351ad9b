//! The policy: which requests on the protected API each role may make (`allow`), and which
//! read-only paths may be scoped by long-lived tokens (`long_lived`).
//!
//! Patterns are `"METHOD /path"`, where the method may be `*`, a `*` segment matches exactly one
//! path segment and `**` any number of them (including none).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::role::{Role, RoleSet};
use crate::scope::{RequestPath, RequestTarget, ScopeEntry};

/// One `allow` / `long_lived` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    method: Option<String>,
    segments: Vec<Segment>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

impl RoutePattern {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::body(format!("route pattern {s:?}: {why}"));
        let (method, path) = s
            .split_once(' ')
            .ok_or_else(|| bad("expected \"METHOD /path\""))?;
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(m.to_owned()),
            _ => return Err(bad("the method must be upper case, or *")),
        };
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(bad("the path must start with / and hold no query"));
        }
        let segments = path
            .split('/')
            .skip(1)
            .map(|seg| match seg {
                "*" => Segment::One,
                "**" => Segment::Any,
                lit => Segment::Literal(lit.to_owned()),
            })
            .collect();
        Ok(Self {
            method,
            segments,
            source: s.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether a request (path still percent-encoded) matches.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method_matches(method)
            && RequestPath::parse(path).is_some_and(|p| self.path_matches(&p))
    }

    fn method_matches(&self, method: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
    }

    /// Segment matching as a table over (pattern position, path position), so any number of
    /// `**` costs O(pattern × path) rather than backtracking.
    fn path_matches(&self, path: &RequestPath) -> bool {
        let segs = path.segments();
        let n = segs.len();
        // reach[j]: the pattern prefix processed so far can consume exactly j path segments.
        let mut reach = vec![false; n + 1];
        if let Some(first) = reach.first_mut() {
            *first = true;
        }
        for seg in &self.segments {
            let mut next = vec![false; n + 1];
            if let Segment::Any = seg {
                let mut any = false;
                for (slot, here) in next.iter_mut().zip(&reach) {
                    any |= *here;
                    *slot = any;
                }
            } else {
                for (j, s) in segs.iter().enumerate() {
                    let ok = match seg {
                        Segment::One => !s.is_empty(),
                        Segment::Literal(l) => l == s,
                        Segment::Any => false,
                    };
                    if ok
                        && reach.get(j).copied().unwrap_or(false)
                        && let Some(slot) = next.get_mut(j + 1)
                    {
                        *slot = true;
                    }
                }
            }
            reach = next;
        }
        reach.last().copied().unwrap_or(false)
    }
}

/// What the policy says about one role.
#[derive(Debug, Clone, Default)]
pub struct RolePolicy {
    pub allow: Vec<RoutePattern>,
    pub long_lived: Vec<RoutePattern>,
    pub rate_limit_per_hour: Option<u32>,
}

/// One role's table in the policy file (`[roles.NAME]`), as written. Unknown keys are an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleTable {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub long_lived: Vec<String>,
    pub rate_limit_per_hour: Option<u32>,
}

/// Requests per key per rolling hour when neither the policy nor a role says otherwise (Apple's
/// figure).
pub const DEFAULT_RATE_LIMIT_PER_HOUR: u32 = 3600;

/// The whole policy. [`Policy::open`] is the behaviour with no policy file: any valid key may
/// call everything, and no path is long-lived.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<Role, RolePolicy>,
    enforced: bool,
    default_rate_limit: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self::open()
    }
}

impl Policy {
    pub fn open() -> Self {
        Self {
            roles: BTreeMap::new(),
            enforced: false,
            default_rate_limit: DEFAULT_RATE_LIMIT_PER_HOUR,
        }
    }

    pub fn new(roles: BTreeMap<Role, RolePolicy>) -> Self {
        Self {
            roles,
            enforced: true,
            default_rate_limit: DEFAULT_RATE_LIMIT_PER_HOUR,
        }
    }

    /// The enforced policy of a file's `[roles]` tables. An error names the key at fault, as
    /// `roles.NAME.allow: ...`, so `check-config` and `serve` can point at the line to fix.
    pub fn from_role_tables(
        tables: BTreeMap<String, RoleTable>,
    ) -> std::result::Result<Self, String> {
        let mut out = BTreeMap::new();
        for (name, table) in tables {
            let role = Role::parse_name(&name).ok_or_else(|| {
                format!("roles.{name}: role names are upper case letters, digits and _")
            })?;
            let patterns = |list: &[String], what: &str| {
                list.iter()
                    .map(|p| {
                        RoutePattern::parse(p).map_err(|e| format!("roles.{name}.{what}: {e}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
            };
            let long_lived = patterns(&table.long_lived, "long_lived")?;
            if let Some(p) = table.long_lived.iter().find(|p| !p.starts_with("GET ")) {
                return Err(format!(
                    "roles.{name}.long_lived: {p:?} is not a GET pattern; only reads may be long-lived"
                ));
            }
            if table.rate_limit_per_hour == Some(0) {
                return Err(format!(
                    "roles.{name}.rate_limit_per_hour must be at least 1"
                ));
            }
            let allow = patterns(&table.allow, "allow")?;
            out.insert(
                role,
                RolePolicy {
                    allow,
                    long_lived,
                    rate_limit_per_hour: table.rate_limit_per_hour,
                },
            );
        }
        Ok(Self::new(out))
    }

    #[must_use]
    pub fn with_default_rate_limit(mut self, per_hour: u32) -> Self {
        self.default_rate_limit = per_hour;
        self
    }

    pub fn default_rate_limit(&self) -> u32 {
        self.default_rate_limit
    }

    /// Requests per rolling hour for a holder of `roles`: the most generous of its roles, each
    /// at its own `rate_limit_per_hour` or else the default.
    pub fn rate_limit_for(&self, roles: &RoleSet) -> u32 {
        roles
            .iter()
            .map(|r| {
                self.roles
                    .get(r)
                    .and_then(|rp| rp.rate_limit_per_hour)
                    .unwrap_or(self.default_rate_limit)
            })
            .max()
            .unwrap_or(self.default_rate_limit)
    }

    pub fn roles(&self) -> impl Iterator<Item = (&Role, &RolePolicy)> {
        self.roles.iter()
    }

    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    /// Whether a holder of `roles` may make this request on the protected API.
    pub fn allows(&self, roles: &RoleSet, target: &RequestTarget<'_>) -> bool {
        if !self.enforced || roles.is_admin() {
            return true;
        }
        let Some(path) = RequestPath::parse(target.path) else {
            return false;
        };
        roles.iter().filter_map(|r| self.roles.get(r)).any(|rp| {
            rp.allow
                .iter()
                .any(|p| p.method_matches(target.method) && p.path_matches(&path))
        })
    }

    /// Whether a token scoped to exactly `scope` may be long-lived for a holder of `roles`:
    /// every entry a `GET` on a path one of those roles marks `long_lived`.
    pub fn long_lived_scope(&self, roles: &RoleSet, scope: &[ScopeEntry]) -> bool {
        !scope.is_empty()
            && scope.iter().all(|entry| {
                entry.method() == "GET"
                    && roles.iter().filter_map(|r| self.roles.get(r)).any(|rp| {
                        rp.long_lived
                            .iter()
                            .any(|p| p.method_matches("GET") && p.path_matches(entry.path()))
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleCatalog;

    fn pat(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap()
    }

    #[test]
    fn role_tables_are_checked_and_errors_name_the_key() {
        let table = |allow: &[&str], long_lived: &[&str], rate: Option<u32>| RoleTable {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            long_lived: long_lived.iter().map(|s| (*s).to_owned()).collect(),
            rate_limit_per_hour: rate,
        };
        let refused = [
            (
                "developer",
                table(&["GET /x"], &[], None),
                "roles.developer: role names",
            ),
            ("DEV", table(&["GET x"], &[], None), "roles.DEV.allow: "),
            (
                "DEV",
                table(&[], &["POST /x"], None),
                "roles.DEV.long_lived: \"POST /x\" is not a GET",
            ),
            (
                "DEV",
                table(&[], &["GET nope"], None),
                "roles.DEV.long_lived: ",
            ),
            (
                "DEV",
                table(&["GET /x"], &[], Some(0)),
                "roles.DEV.rate_limit_per_hour must be at least 1",
            ),
        ];
        for (name, t, want) in refused {
            let err = Policy::from_role_tables(BTreeMap::from([(name.to_owned(), t)])).unwrap_err();
            assert!(err.starts_with(want), "{name}: {err}");
        }

        let policy = Policy::from_role_tables(BTreeMap::from([(
            "DEV".to_owned(),
            table(&["GET /v1/apps/**"], &["GET /v1/apps/*"], Some(10)),
        )]))
        .unwrap();
        let dev = RoleSet::from_stored("DEV").unwrap();
        assert!(policy.is_enforced());
        assert_eq!(policy.rate_limit_for(&dev), 10);
        assert!(policy.allows(&dev, &RequestTarget::from_uri("GET", "/v1/apps/1")));
        assert!(!policy.allows(&dev, &RequestTarget::from_uri("POST", "/v1/apps/1")));
        let scope = [ScopeEntry::parse("GET /v1/apps/1").unwrap()];
        assert!(policy.long_lived_scope(&dev, &scope));
    }

    #[test]
    fn pattern_table() {
        let cases = [
            ("GET /v1/apps/**", "GET", "/v1/apps", true),
            ("GET /v1/apps/**", "GET", "/v1/apps/1/builds", true),
            ("GET /v1/apps/**", "POST", "/v1/apps/1", false),
            ("GET /v1/builds/*", "GET", "/v1/builds/7", true),
            ("GET /v1/builds/*", "GET", "/v1/builds", false),
            ("GET /v1/builds/*", "GET", "/v1/builds/7/x", false),
            ("GET /v1/builds/*", "GET", "/v1/builds/", false),
            ("* /v1/builds", "DELETE", "/v1/builds", true),
            ("POST /v1/builds", "POST", "/v1/builds", true),
            ("GET /v1/**/reports", "GET", "/v1/a/b/reports", true),
            ("GET /v1/**", "GET", "/v1/apps/../admin", false),
            ("GET /v1/apps/*", "GET", "/v1/apps/%2e%2e", false),
            ("GET /v1/apps/x", "GET", "/v1/apps/%78", true),
            ("GET /v1/public/**", "GET", "/v1/public/..;/admin", false),
            ("GET /v1/public/**", "GET", "/v1/public/a%2Fb", false),
            ("GET /v1/public/**", "GET", "/v1/public/a%5Cb", false),
            ("GET /v1/public/**", "GET", "/v1/public/%FF", false),
            ("GET /v1/**/a/**/b/**/c", "GET", "/v1/a/x/b/y/c", true),
            ("GET /v1/**/a/**/b/**/c", "GET", "/v1/a/x/b/y/d", false),
            ("GET /**", "GET", "/", true),
            ("GET /", "GET", "/", true),
            ("GET /a/**", "GET", "/a/", true),
            ("GET /v1/apps/*/builds", "GET", "/v1/apps/1/builds", true),
            ("GET /v1/apps/*/builds", "GET", "/v1/apps//builds", false),
            ("GET /v1/apps/*/builds", "HEAD", "/v1/apps/1/builds", false),
            ("* /v1/**", "PATCH", "/v1/anything/at/all", true),
            ("* /v1/**", "PATCH", "/v2/anything", false),
            ("GET /v1/apps", "GET", "/v1/apps/", false),
            ("GET /v1/apps", "GET", "/V1/apps", false),
        ];
        for (p, m, path, expect) in cases {
            assert_eq!(pat(p).matches(m, path), expect, "{p} vs {m} {path}");
        }
        for bad in ["/v1", "get /v1", "GET v1", "GET /v1?x=1"] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_and_long_lived() {
        let cat = RoleCatalog::default();
        let mut roles = BTreeMap::new();
        roles.insert(
            Role::parse_name("FINANCE").unwrap(),
            RolePolicy {
                allow: vec![pat("GET /v1/financeReports")],
                long_lived: vec![pat("GET /v1/ciProducts/**")],
                rate_limit_per_hour: None,
            },
        );
        let policy = Policy::new(roles);
        let finance = cat.key_roles(&["FINANCE"]).unwrap();
        let dev = cat.key_roles(&["DEVELOPER"]).unwrap();
        let admin = cat.key_roles(&["ADMIN"]).unwrap();
        let t = RequestTarget::from_uri("GET", "/v1/financeReports?x=1");
        assert!(policy.allows(&finance, &t));
        assert!(!policy.allows(&dev, &t));
        assert!(policy.allows(&admin, &t));
        assert!(Policy::open().allows(&dev, &t));
        let ll = [ScopeEntry::parse("GET /v1/ciProducts/1").unwrap()];
        assert!(policy.long_lived_scope(&finance, &ll));
        assert!(!policy.long_lived_scope(&dev, &ll));
        let mixed = [
            ll[0].clone(),
            ScopeEntry::parse("POST /v1/ciProducts/1").unwrap(),
        ];
        assert!(!policy.long_lived_scope(&finance, &mixed));
        assert!(!policy.long_lived_scope(&finance, &[]));
        // A scope path is decoded once: %2541 is the text "%41", not "A".
        let mut roles = BTreeMap::new();
        roles.insert(
            Role::parse_name("FINANCE").unwrap(),
            RolePolicy {
                allow: vec![],
                long_lived: vec![pat("GET /v1/reports/A")],
                rate_limit_per_hour: None,
            },
        );
        let exact = Policy::new(roles);
        assert!(exact.long_lived_scope(
            &finance,
            &[ScopeEntry::parse("GET /v1/reports/%41").unwrap()]
        ));
        assert!(!exact.long_lived_scope(
            &finance,
            &[ScopeEntry::parse("GET /v1/reports/%2541").unwrap()]
        ));
    }

    #[test]
    fn many_double_stars_stay_cheap() {
        let p = pat("GET /**/builds/**/builds/**/builds/**/x");
        let path = format!("/{}", vec!["builds"; 20_000].join("/"));
        // A backtracking matcher would not finish this in any reasonable time.
        assert!(!p.matches("GET", &path));
    }
}
