//! Configuration in layers: built-in defaults, then the TOML file, then `KEYGATE_*` environment
//! variables, then command-line flags. The raw layers are validated into one [`Config`] that is
//! passed explicitly; there are no global settings. Unknown keys in the file are an error that
//! names the key and its line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keygate_core::crypto::parse_public_key_pem;
use keygate_core::key::Algorithm;
use keygate_core::people::SessionLimits;
use keygate_core::policy::{DEFAULT_RATE_LIMIT_PER_HOUR, Policy, RoleTable};
use keygate_core::role::RoleCatalog;
use keygate_core::secret_key::IpRange;
use keygate_core::service::KeyLimits;
use keygate_core::token::TokenRules;
use serde::Deserialize;

/// The validated configuration of one node. Its `Debug` masks the database URL's password.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: String,
    pub token_rules: TokenRules,
    pub policy: Policy,
    pub limits: KeyLimits,
    /// How often the node reads the change feed (changes made by other processes or nodes).
    pub sync_interval: Duration,
    /// How often pending private keys past the download window are erased.
    pub sweep_interval: Duration,
    /// How often every key is reloaded, as a safety net under the change feed (default 5 min).
    pub reload_interval: Duration,
    /// Which headers `/authz` reads the original request from.
    pub forward_auth_headers: ForwardAuthHeaders,
    /// How often per-key usage (last use, request count) is written to the store.
    pub usage_flush_interval: Duration,
    /// Verified tokens remembered (0 turns the cache off).
    pub token_cache_entries: usize,
    /// The reverse proxy, when both `proxy_listen` and `upstream` are set.
    pub proxy: Option<ProxyConfig>,
    /// Web sessions: idle timeout and sign-in throttling.
    pub sessions: SessionLimits,
    /// Always mark the session cookie `Secure` (keygate behind TLS). It is also set whenever a
    /// request arrives with `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
    /// Peers whose `X-Forwarded-For` is believed, for secret keys' IP restrictions.
    pub trusted_proxies: Vec<IpRange>,
    /// ECDSA P-256 public keys (raw points) that sign leak reports (`POST /v1/leaks`), such as
    /// GitHub secret scanning's. None: leak reports are refused.
    pub leak_report_keys: Vec<Vec<u8>>,
    /// Connection limits of every listener (main and proxy).
    pub connections: ConnectionLimits,
    /// `scheme://host[:port]` where people reach keygate, for every link it prints (setup,
    /// invitation, password reset); never taken from a request's `Host` when set.
    pub public_url: Option<String>,
}

/// What one client connection may hold, on every listener: nginx's defaults in spirit
/// (`client_header_timeout`, `keepalive_timeout`, `worker_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to receive a request's whole head (request line and headers), from the
    /// first byte or from the end of the previous answer.
    pub header_read_timeout: Duration,
    /// Longest time a kept-alive connection may sit with no request.
    pub idle_timeout: Duration,
    /// Most open connections per listener. At the cap, the oldest connection that is not in
    /// the middle of a request is closed to make room; if every one is busy, the new one is.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1024,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database", &redact_url(&self.database))
            .field("token_rules", &self.token_rules)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("sync_interval", &self.sync_interval)
            .field("sweep_interval", &self.sweep_interval)
            .field("reload_interval", &self.reload_interval)
            .field("forward_auth_headers", &self.forward_auth_headers)
            .field("usage_flush_interval", &self.usage_flush_interval)
            .field("token_cache_entries", &self.token_cache_entries)
            .field("proxy", &self.proxy)
            .field("sessions", &self.sessions)
            .field("secure_cookies", &self.secure_cookies)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("leak_report_keys", &self.leak_report_keys.len())
            .field("connections", &self.connections)
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// `serve --proxy-listen ADDR --upstream URL`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `http://host:port` with an optional path prefix, no query.
    pub upstream: axum::http::Uri,
    /// Longest wait for the upstream's response headers (default 60 s).
    pub upstream_timeout: Duration,
}

/// Which header pair carries the original request to `ANY /authz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardAuthHeaders {
    /// Either pair; if both are present they must name the same request.
    #[default]
    Auto,
    /// Only `X-Original-Method` and `X-Original-URI` (nginx `auth_request`); others are ignored.
    Nginx,
    /// Only `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik `ForwardAuth`); others are ignored.
    Traefik,
}

impl ForwardAuthHeaders {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "nginx" => Some(Self::Nginx),
            "traefik" => Some(Self::Traefik),
            _ => None,
        }
    }
}

impl Config {
    pub fn roles(&self) -> RoleCatalog {
        RoleCatalog::with_custom(self.policy.roles().map(|(r, _)| r))
    }
}

/// A configuration problem, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The file's shape. Every table denies unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database: Option<String>,
    audiences: Option<Vec<String>>,
    max_token_lifetime: Option<DurationText>,
    max_long_lived_token_lifetime: Option<DurationText>,
    leeway: Option<DurationText>,
    download_window: Option<DurationText>,
    max_active_team_keys: Option<u32>,
    sync_interval: Option<DurationText>,
    sweep_interval: Option<DurationText>,
    reload_interval: Option<DurationText>,
    forward_auth_headers: Option<String>,
    rate_limit_per_hour: Option<u32>,
    usage_flush_interval: Option<DurationText>,
    token_cache_entries: Option<usize>,
    session_idle_timeout: Option<DurationText>,
    secure_cookies: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    leak_report_public_keys: Option<Vec<String>>,
    proxy_listen: Option<String>,
    upstream: Option<String>,
    upstream_timeout: Option<DurationText>,
    header_read_timeout: Option<DurationText>,
    idle_timeout: Option<DurationText>,
    max_connections: Option<usize>,
    sign_in_tracked: Option<usize>,
    public_url: Option<String>,
    roles: Option<BTreeMap<String, RoleTable>>,
}

/// A duration written as `"20m"`, `"90s"`, `"24h"`, `"180d"` or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

impl DurationText {
    fn seconds(&self, key: &str) -> Result<u64, ConfigError> {
        match self {
            Self::Seconds(s) => Ok(*s),
            Self::Text(t) => parse_duration(t).ok_or_else(|| {
                ConfigError(format!(
                    "{key}: {t:?} is not a duration such as \"90s\", \"20m\", \"24h\" or \"180d\""
                ))
            }),
        }
    }
}

/// Parses `"20m"`-style durations; also used for environment variables and flags.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "ms" => return Some(n / 1000),
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_duration_ms(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    parse_duration(t).map(Duration::from_secs)
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database: Option<String>,
    pub audiences: Vec<String>,
    pub proxy_listen: Option<String>,
    pub upstream: Option<String>,
}

#[allow(clippy::too_many_lines)] // one pass over the layers, key by key
/// Builds the configuration from the layers. `env` reads an environment variable (injected so
/// tests need not touch the process environment).
pub fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let raw = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };

    let listen_text = overrides
        .listen
        .clone()
        .or_else(|| env("KEYGATE_LISTEN"))
        .or(raw.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen = listen_text.parse().map_err(|_| {
        ConfigError(format!(
            "listen: {listen_text:?} is not an address such as 127.0.0.1:8080"
        ))
    })?;
    let database = overrides
        .database
        .clone()
        .or_else(|| env("KEYGATE_DATABASE"))
        .or(raw.database)
        .unwrap_or_else(|| "sqlite://keygate-data/keygate.db".to_owned());

    let mut rules = TokenRules::default();
    let audiences = if overrides.audiences.is_empty() {
        env("KEYGATE_AUDIENCES")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .or(raw.audiences)
    } else {
        Some(overrides.audiences.clone())
    };
    if let Some(a) = audiences {
        if a.is_empty() || a.iter().any(String::is_empty) {
            return Err(ConfigError(
                "audiences: list at least one non-empty audience".into(),
            ));
        }
        rules.audiences = a;
    }
    let secs = |key: &str,
                env_name: &str,
                file: Option<DurationText>|
     -> Result<Option<i64>, ConfigError> {
        let v =
            match env(env_name) {
                Some(text) => Some(parse_duration(&text).ok_or_else(|| {
                    ConfigError(format!("{env_name}: {text:?} is not a duration"))
                })?),
                None => file.map(|d| d.seconds(key)).transpose()?,
            };
        v.map(|s| i64::try_from(s).map_err(|_| ConfigError(format!("{key}: too large"))))
            .transpose()
    };
    if let Some(s) = secs(
        "max_token_lifetime",
        "KEYGATE_MAX_TOKEN_LIFETIME",
        raw.max_token_lifetime,
    )? {
        rules.max_lifetime = s;
    }
    if let Some(s) = secs(
        "max_long_lived_token_lifetime",
        "KEYGATE_MAX_LONG_LIVED_TOKEN_LIFETIME",
        raw.max_long_lived_token_lifetime,
    )? {
        rules.max_long_lived_lifetime = s;
    }
    if let Some(s) = secs("leeway", "KEYGATE_LEEWAY", raw.leeway)? {
        rules.leeway = s;
    }
    if rules.max_lifetime <= 0 || rules.max_long_lived_lifetime < rules.max_lifetime {
        return Err(ConfigError(
            "max_token_lifetime must be positive and at most max_long_lived_token_lifetime".into(),
        ));
    }

    let mut limits = KeyLimits::default();
    if let Some(s) = secs(
        "download_window",
        "KEYGATE_DOWNLOAD_WINDOW",
        raw.download_window,
    )? {
        if s <= 0 {
            return Err(ConfigError("download_window must be positive".into()));
        }
        limits.download_window = s;
    }
    let max_keys = match env("KEYGATE_MAX_ACTIVE_TEAM_KEYS") {
        Some(v) => Some(v.parse().map_err(|_| {
            ConfigError(format!(
                "KEYGATE_MAX_ACTIVE_TEAM_KEYS: {v:?} is not a number"
            ))
        })?),
        None => raw.max_active_team_keys,
    };
    if let Some(n) = max_keys {
        if n == 0 {
            return Err(ConfigError(
                "max_active_team_keys must be at least 1".into(),
            ));
        }
        limits.max_active_team_keys = n;
    }

    let interval = |key: &str,
                    env_name: &str,
                    file: Option<DurationText>,
                    default: Duration|
     -> Result<Duration, ConfigError> {
        let d = match (env(env_name), file) {
            (Some(text), _) | (None, Some(DurationText::Text(text))) => parse_duration_ms(&text)
                .ok_or_else(|| ConfigError(format!("{key}: {text:?} is not a duration")))?,
            (None, Some(DurationText::Seconds(s))) => Duration::from_secs(s),
            (None, None) => default,
        };
        if d.is_zero() {
            return Err(ConfigError(format!("{key} must be positive")));
        }
        Ok(d)
    };
    let sync_interval = interval(
        "sync_interval",
        "KEYGATE_SYNC_INTERVAL",
        raw.sync_interval,
        Duration::from_millis(250),
    )?;
    let sweep_interval = interval(
        "sweep_interval",
        "KEYGATE_SWEEP_INTERVAL",
        raw.sweep_interval,
        Duration::from_secs(60),
    )?;
    let reload_interval = interval(
        "reload_interval",
        "KEYGATE_RELOAD_INTERVAL",
        raw.reload_interval,
        Duration::from_secs(300),
    )?;

    let forward_auth_headers =
        match env("KEYGATE_FORWARD_AUTH_HEADERS").or(raw.forward_auth_headers) {
            None => ForwardAuthHeaders::Auto,
            Some(v) => ForwardAuthHeaders::parse(&v).ok_or_else(|| {
                ConfigError(format!(
                    "forward_auth_headers: {v:?} is \"auto\", \"nginx\" or \"traefik\""
                ))
            })?,
        };

    let usage_flush_interval = interval(
        "usage_flush_interval",
        "KEYGATE_USAGE_FLUSH_INTERVAL",
        raw.usage_flush_interval,
        Duration::from_secs(5),
    )?;
    let upstream_timeout = interval(
        "upstream_timeout",
        "KEYGATE_UPSTREAM_TIMEOUT",
        raw.upstream_timeout,
        Duration::from_secs(60),
    )?;
    let proxy = proxy_config(
        overrides
            .proxy_listen
            .clone()
            .or_else(|| env("KEYGATE_PROXY_LISTEN"))
            .or(raw.proxy_listen),
        overrides
            .upstream
            .clone()
            .or_else(|| env("KEYGATE_UPSTREAM"))
            .or(raw.upstream),
        upstream_timeout,
    )?;
    let token_cache_entries = match env("KEYGATE_TOKEN_CACHE_ENTRIES") {
        Some(v) => v.parse().map_err(|_| {
            ConfigError(format!(
                "KEYGATE_TOKEN_CACHE_ENTRIES: {v:?} is not a number"
            ))
        })?,
        None => raw
            .token_cache_entries
            .unwrap_or(keygate_core::service::DEFAULT_TOKEN_CACHE_ENTRIES),
    };
    let session_idle_timeout = interval(
        "session_idle_timeout",
        "KEYGATE_SESSION_IDLE_TIMEOUT",
        raw.session_idle_timeout,
        Duration::from_secs(30 * 60),
    )?;
    let mut sessions = SessionLimits {
        idle_timeout: i64::try_from(session_idle_timeout.as_secs())
            .unwrap_or(i64::MAX)
            .max(60),
        ..SessionLimits::default()
    };
    let count =
        |key: &str, env_name: &str, file: Option<usize>| -> Result<Option<usize>, ConfigError> {
            let n = match env(env_name) {
                Some(v) => Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| ConfigError(format!("{env_name}: {v:?} is not a number")))?,
                ),
                None => file,
            };
            if n == Some(0) {
                return Err(ConfigError(format!("{key} must be at least 1")));
            }
            Ok(n)
        };
    if let Some(n) = count(
        "sign_in_tracked",
        "KEYGATE_SIGN_IN_TRACKED",
        raw.sign_in_tracked,
    )? {
        sessions.throttle.tracked = n;
    }
    let defaults = ConnectionLimits::default();
    let connections = ConnectionLimits {
        header_read_timeout: interval(
            "header_read_timeout",
            "KEYGATE_HEADER_READ_TIMEOUT",
            raw.header_read_timeout,
            defaults.header_read_timeout,
        )?,
        idle_timeout: interval(
            "idle_timeout",
            "KEYGATE_IDLE_TIMEOUT",
            raw.idle_timeout,
            defaults.idle_timeout,
        )?,
        max_connections: count(
            "max_connections",
            "KEYGATE_MAX_CONNECTIONS",
            raw.max_connections,
        )?
        .unwrap_or(defaults.max_connections),
    };
    let secure_cookies = match env("KEYGATE_SECURE_COOKIES") {
        Some(v) => matches!(v.as_str(), "1" | "true" | "yes"),
        None => raw.secure_cookies.unwrap_or(false),
    };
    let trusted_proxies = match env("KEYGATE_TRUSTED_PROXIES") {
        Some(v) => v
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        None => raw.trusted_proxies.unwrap_or_default(),
    }
    .iter()
    .map(|p| IpRange::parse(p).map_err(|e| ConfigError(format!("trusted_proxies: {e}"))))
    .collect::<Result<Vec<_>, _>>()?;
    let leak_report_keys = raw
        .leak_report_public_keys
        .unwrap_or_default()
        .iter()
        .map(|pem| {
            parse_public_key_pem(pem, Algorithm::Es256).map_err(|_| {
                ConfigError(
                    "leak_report_public_keys: each entry is a PEM P-256 public key (-----BEGIN PUBLIC KEY-----)".into(),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let default_rate_limit = match env("KEYGATE_RATE_LIMIT_PER_HOUR") {
        Some(v) => Some(v.parse().map_err(|_| {
            ConfigError(format!(
                "KEYGATE_RATE_LIMIT_PER_HOUR: {v:?} is not a number"
            ))
        })?),
        None => raw.rate_limit_per_hour,
    }
    .unwrap_or(DEFAULT_RATE_LIMIT_PER_HOUR);
    if default_rate_limit == 0 {
        return Err(ConfigError("rate_limit_per_hour must be at least 1".into()));
    }

    let public_url = match env("KEYGATE_PUBLIC_URL").or(raw.public_url) {
        None => None,
        Some(url) => Some(parse_public_url(&url)?),
    };

    let policy = match raw.roles {
        None => Policy::open(),
        Some(tables) => Policy::from_role_tables(tables).map_err(ConfigError)?,
    }
    .with_default_rate_limit(default_rate_limit);

    Ok(Config {
        listen,
        database,
        token_rules: rules,
        policy,
        limits,
        sync_interval,
        sweep_interval,
        reload_interval,
        forward_auth_headers,
        usage_flush_interval,
        token_cache_entries,
        proxy,
        sessions,
        secure_cookies,
        trusted_proxies,
        leak_report_keys,
        connections,
        public_url,
    })
}

/// `public_url`: `http(s)://host[:port]` with an optional path prefix, no query; kept without a
/// trailing `/`.
fn parse_public_url(text: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "public_url: {text:?} must be http(s)://host[:port] with an optional path, such as https://keygate.example.com"
        ))
    };
    let uri: axum::http::Uri = text.trim().parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.authority().is_none()
        || uri.query().is_some()
        || uri.authority().is_some_and(|a| a.as_str().contains('@'))
    {
        return Err(bad());
    }
    Ok(text.trim().trim_end_matches('/').to_owned())
}

fn proxy_config(
    listen: Option<String>,
    upstream: Option<String>,
    upstream_timeout: Duration,
) -> Result<Option<ProxyConfig>, ConfigError> {
    let (listen, upstream) = match (listen, upstream) {
        (None, None) => return Ok(None),
        (Some(l), Some(u)) => (l, u),
        _ => {
            return Err(ConfigError(
                "proxy_listen and upstream go together: set both to run the reverse proxy".into(),
            ));
        }
    };
    let listen = listen.parse().map_err(|_| {
        ConfigError(format!(
            "proxy_listen: {listen:?} is not an address such as 127.0.0.1:8081"
        ))
    })?;
    let uri: axum::http::Uri = upstream
        .parse()
        .map_err(|_| ConfigError(format!("upstream: {upstream:?} is not a URL")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() || uri.query().is_some() {
        return Err(ConfigError(format!(
            "upstream: {upstream:?} must be http://host:port with an optional path and no query (put TLS in front of keygate, not behind it)"
        )));
    }
    Ok(Some(ProxyConfig {
        listen,
        upstream: uri,
        upstream_timeout,
    }))
}

/// What `keygate check-config` prints: the configuration as understood.
#[allow(clippy::too_many_lines)] // one line per setting, in order: splitting it would hide the order
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "listen                 {}", config.listen);
    let _ = writeln!(
        out,
        "database               {}",
        redact_url(&config.database)
    );
    let _ = writeln!(
        out,
        "audiences              {}",
        config.token_rules.audiences.join(", ")
    );
    let _ = writeln!(
        out,
        "max_token_lifetime     {} s",
        config.token_rules.max_lifetime
    );
    let _ = writeln!(
        out,
        "long-lived tokens      up to {} s",
        config.token_rules.max_long_lived_lifetime
    );
    let _ = writeln!(
        out,
        "leeway                 {} s",
        config.token_rules.leeway
    );
    let _ = writeln!(
        out,
        "download_window        {} s",
        config.limits.download_window
    );
    let _ = writeln!(
        out,
        "max_active_team_keys   {}",
        config.limits.max_active_team_keys
    );
    let _ = writeln!(
        out,
        "sync_interval          {} ms",
        config.sync_interval.as_millis()
    );
    let _ = writeln!(
        out,
        "forward_auth_headers   {}",
        match config.forward_auth_headers {
            ForwardAuthHeaders::Auto => "auto (either pair; both must agree)",
            ForwardAuthHeaders::Nginx => "nginx (X-Original-Method, X-Original-URI)",
            ForwardAuthHeaders::Traefik => "traefik (X-Forwarded-Method, X-Forwarded-Uri)",
        }
    );
    let _ = writeln!(
        out,
        "rate_limit_per_hour    {} per key (roles may set their own)",
        config.policy.default_rate_limit()
    );
    let _ = writeln!(
        out,
        "usage_flush_interval   {} ms",
        config.usage_flush_interval.as_millis()
    );
    let _ = writeln!(out, "token_cache_entries    {}", config.token_cache_entries);
    let _ = writeln!(
        out,
        "session_idle_timeout   {} s; secure_cookies {}",
        config.sessions.idle_timeout, config.secure_cookies
    );
    let proxies: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "connections            at most {} per listener; headers within {} s; idle {} s",
        config.connections.max_connections,
        config.connections.header_read_timeout.as_secs(),
        config.connections.idle_timeout.as_secs()
    );
    let _ = writeln!(
        out,
        "sign_in_tracked        {} accounts and addresses (full: refused, never uncounted)",
        config.sessions.throttle.tracked
    );
    let _ = writeln!(
        out,
        "trusted_proxies        {}; leak report keys: {}",
        if proxies.is_empty() {
            "none (X-Forwarded-For is ignored)".to_owned()
        } else {
            proxies.join(", ")
        },
        config.leak_report_keys.len()
    );
    match &config.proxy {
        Some(p) => {
            let _ = writeln!(
                out,
                "reverse proxy          {} -> {} (response headers within {} s)",
                p.listen,
                p.upstream,
                p.upstream_timeout.as_secs()
            );
        }
        None => {
            let _ = writeln!(out, "reverse proxy          off");
        }
    }
    if config.policy.is_enforced() {
        let _ = writeln!(
            out,
            "policy                 enforced (ADMIN and ACCOUNT_HOLDER may call everything)"
        );
        for (role, rp) in config.policy.roles() {
            let _ = writeln!(out, "  [{role}]");
            for p in &rp.allow {
                let _ = writeln!(out, "    allow      {}", p.as_str());
            }
            for p in &rp.long_lived {
                let _ = writeln!(out, "    long_lived {}", p.as_str());
            }
            if let Some(n) = rp.rate_limit_per_hour {
                let _ = writeln!(out, "    rate limit {n} requests per rolling hour per key");
            }
        }
    } else {
        let _ = writeln!(
            out,
            "policy                 none: any valid key may call everything"
        );
    }
    out
}

/// Hides a password in a database URL.
pub fn redact_url(url: &str) -> String {
    let masked = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = url.get(s + 3..at).unwrap_or("");
            let user = creds.split(':').next().unwrap_or("");
            format!(
                "{}://{user}:***@{}",
                url.get(..s).unwrap_or(""),
                url.get(at + 1..).unwrap_or("")
            )
        }
        _ => url.to_owned(),
    };
    // libpq also takes the password as a query parameter.
    match masked.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults() {
        let c = load(None, &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database, "sqlite://keygate-data/keygate.db");
        assert_eq!(c.token_rules.audiences, ["keygate-v1"]);
        assert_eq!(c.token_rules.max_lifetime, 1200);
        assert_eq!(c.limits.max_active_team_keys, 50);
        assert!(!c.policy.is_enforced());
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "audiences = [\"appstoreconnect-v1\"]\nmax_token_lifetime = \"10m\"\nlisten = \"127.0.0.1:9000\"\n[roles.DEVELOPER]\nallow = [\"GET /v1/apps/**\"]\n").unwrap();
        let env = |k: &str| (k == "KEYGATE_LISTEN").then(|| "127.0.0.1:9001".to_owned());
        let c = load(Some(&path), &env, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.token_rules.max_lifetime, 600);
        assert_eq!(c.token_rules.audiences, ["appstoreconnect-v1"]);
        assert!(c.policy.is_enforced());
        let flags = Overrides {
            listen: Some("127.0.0.1:9002".into()),
            ..Overrides::default()
        };
        assert_eq!(
            load(Some(&path), &env, &flags).unwrap().listen.to_string(),
            "127.0.0.1:9002"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisen = 5\n").unwrap();
        let err = load(Some(&path), &no_env, &Overrides::default())
            .unwrap_err()
            .0;
        assert!(err.contains("lisen") && err.contains("line 2"), "{err}");
        std::fs::write(&path, "[roles.DEVELOPER]\nalow = []\n").unwrap();
        let err = load(Some(&path), &no_env, &Overrides::default())
            .unwrap_err()
            .0;
        assert!(err.contains("alow") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keygate.example.toml");
        let c = load(Some(&path), &no_env, &Overrides::default()).unwrap();
        assert!(c.policy.is_enforced());
        assert!(describe(&c).contains("long_lived GET /v1/ciProducts/**"));
        assert_eq!(c.connections, ConnectionLimits::default());
        assert_eq!(c.sessions.throttle.tracked, 100_000);
    }

    #[test]
    fn connection_limits_come_from_the_environment() {
        let env = |k: &str| match k {
            "KEYGATE_HEADER_READ_TIMEOUT" => Some("2s".to_owned()),
            "KEYGATE_IDLE_TIMEOUT" => Some("1500ms".to_owned()),
            "KEYGATE_MAX_CONNECTIONS" => Some("64".to_owned()),
            "KEYGATE_SIGN_IN_TRACKED" => Some("10".to_owned()),
            _ => None,
        };
        let c = load(None, &env, &Overrides::default()).unwrap();
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.connections.idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.connections.max_connections, 64);
        assert_eq!(c.sessions.throttle.tracked, 10);
        let url =
            |u: &'static str| move |k: &str| (k == "KEYGATE_PUBLIC_URL").then(|| u.to_owned());
        let c = load(None, &url("https://kg.example.com/"), &Overrides::default()).unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://kg.example.com"));
        for bad in [
            "kg.example.com",
            "ftp://kg.example.com",
            "https://u:p@kg.example.com",
            "https://kg.example.com/?a=1",
        ] {
            assert!(
                load(None, &url(bad), &Overrides::default()).is_err(),
                "{bad}"
            );
        }
        let zero = |k: &str| (k == "KEYGATE_MAX_CONNECTIONS").then(|| "0".to_owned());
        assert!(load(None, &zero, &Overrides::default()).is_err());
    }

    #[test]
    fn the_shipped_app_store_connect_policy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy.appstoreconnect.toml");
        let c = load(Some(&path), &no_env, &Overrides::default()).unwrap();
        assert!(c.policy.is_enforced());
        assert_eq!(c.token_rules.audiences, ["appstoreconnect-v1"]);
        let names: Vec<String> = c.policy.roles().map(|(r, _)| r.to_string()).collect();
        for role in [
            "APP_MANAGER",
            "DEVELOPER",
            "FINANCE",
            "SALES",
            "MARKETING",
            "CUSTOMER_SUPPORT",
        ] {
            assert!(names.iter().any(|n| n == role), "{role} in {names:?}");
        }
        let finance = c.roles().key_roles(&["FINANCE"]).unwrap();
        assert_eq!(c.policy.rate_limit_for(&finance), 1200);
        let dev = c.roles().key_roles(&["DEVELOPER"]).unwrap();
        assert_eq!(c.policy.rate_limit_for(&dev), 3600);
        let t = keygate_core::scope::RequestTarget::from_uri("POST", "/v1/builds");
        assert!(c.policy.allows(&dev, &t));
        assert!(!c.policy.allows(&finance, &t));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20m"), Some(1200));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("180d"), Some(15_552_000));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=u&Password=secret&sslmode=require"),
            "postgres://h/db?user=u&Password=***&sslmode=require"
        );
    }

    #[test]
    fn debug_masks_the_database_password() {
        let c = load(
            None,
            &|k| (k == "KEYGATE_DATABASE").then(|| "postgres://u:hunter2@h/db".to_owned()),
            &Overrides::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
