//! Turning a [`Config`] into a running node: open the store, load the key ring, start the
//! background tasks (change-feed sync, download-window sweep), bind the listener.

use std::net::SocketAddr;
use std::sync::Arc;

use keygate_core::clock::{Clock, SystemClock};
use keygate_core::crypto::MasterKey;
use keygate_core::gate::Gate;
use keygate_core::keyset::KeyRing;
use keygate_core::meter::Meter;
use keygate_core::people::UserService;
use keygate_core::secret_key::SecretKeyService;
use keygate_core::service::{KeyService, Verifier};
use keygate_core::store::Issuer;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::listener::{self, ListenerShare};
use crate::proxy::{self, Proxy};
use crate::{AppState, app};

/// Opens the store, builds the services and loads the key ring.
pub async fn build(
    config: &Config,
    master: MasterKey,
    clock: Arc<dyn Clock>,
) -> Result<AppState, ConfigError> {
    let store = keygate_store::open(&config.database)
        .await
        .map_err(|e| ConfigError(format!("database: {e}")))?;
    let ring = Arc::new(KeyRing::new());
    let users = Arc::new(UserService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        config.roles(),
        Arc::clone(&ring),
        config.sessions,
    ));
    let secrets = Arc::new(SecretKeyService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        config.roles(),
        Arc::clone(&ring),
    ));
    let keys = Arc::new(KeyService::new(
        store,
        Arc::clone(&clock),
        master,
        config.limits,
        config.roles(),
        Arc::clone(&ring),
    ));
    keys.check_master_key()
        .await
        .map_err(|e| ConfigError(format!("master key: {e}")))?;
    let loaded = keys
        .reload_keys()
        .await
        .map_err(|e| ConfigError(format!("database: {e}")))?;
    tracing::info!(keys = loaded, "key ring loaded");
    let verifier = Arc::new(
        Verifier::new(
            Arc::clone(&ring),
            Arc::new(config.policy.clone()),
            config.token_rules.clone(),
            Arc::clone(&clock),
        )
        .with_token_cache(config.token_cache_entries),
    );
    let gate = Gate::new(verifier, Arc::new(Meter::new(clock)));
    Ok(AppState {
        keys,
        users,
        secure_cookies: config.secure_cookies,
        secrets,
        trusted_proxies: config.trusted_proxies.clone().into(),
        leak_report_keys: config.leak_report_keys.clone().into(),
        gate,
        ring,
        forward_auth_headers: config.forward_auth_headers,
        public_url: config.public_url.as_deref().map(Arc::from),
        cookies: crate::auth::CookieNames::new(
            config.secure_cookies
                || config
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
        ),
    })
}

/// Longest a background task's database work may take: a connection that died without
/// closing must not stop the usage flush or the sweeps for good.
const BACKGROUND_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn bounded<T>(
    work: impl std::future::Future<Output = keygate_core::error::Result<T>>,
) -> keygate_core::error::Result<T> {
    tokio::time::timeout(BACKGROUND_CALL_TIMEOUT, work)
        .await
        .map_err(|_| keygate_core::error::Error::Unavailable("timed out".into()))?
}

/// Starts the background tasks of a node.
pub fn spawn_tasks(state: &AppState, config: &Config) {
    // Pushed changes (PostgreSQL): applied as they commit, so a revocation on another node
    // takes effect here within milliseconds. The polling loop below stays as the safety net.
    if let Some(notifier) = keygate_store::ChangeNotifier::for_url(&config.database) {
        tokio::spawn(follow_notifications(notifier, Arc::clone(&state.keys)));
    }
    let keys = Arc::clone(&state.keys);
    let meter = Arc::clone(state.gate.meter());
    let every = config.usage_flush_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = bounded(keys.flush_usage(&meter)).await {
                tracing::warn!(error = %e, "usage flush failed; kept in memory for the next one");
            }
        }
    });
    let keys = Arc::clone(&state.keys);
    let every = config.sync_interval;
    let reload_every = config.reload_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut since_reload = std::time::Instant::now();
        loop {
            tick.tick().await;
            // A full reload now and then is the safety net under the feed.
            let result = if failing || since_reload.elapsed() > reload_every {
                since_reload = std::time::Instant::now();
                keys.reload_keys().await
            } else {
                keys.sync_keys().await
            };
            failing = result.is_err();
            match result {
                Ok(n) if n > 0 => tracing::debug!(changed = n, "key ring synced"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "key ring sync failed; verification continues from memory");
                }
            }
        }
    });
    let keys = Arc::clone(&state.keys);
    let users = Arc::clone(&state.users);
    let every = config.sweep_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The sweeps decide with the database's clock; a node whose own clock is off still
            // verifies token times with it, so it says so loudly (and /readyz fails).
            match bounded(keys.clock_skew()).await {
                Ok(skew) if skew.abs() > crate::routes::health::MAX_CLOCK_SKEW => {
                    tracing::warn!(
                        skew_seconds = skew,
                        "this node's clock differs from the database's; token times are judged by this node's clock: fix its time sync"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the database's clock"),
            }
            match bounded(keys.erase_stale_private_keys()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(erased = n, "erased private keys past their download window");
                }
                Err(e) => tracing::warn!(error = %e, "download-window sweep failed"),
            }
            if let Err(e) = bounded(users.sweep()).await {
                tracing::warn!(error = %e, "session sweep failed");
            }
        }
    });
}

/// Pushed changes (PostgreSQL): applied as they commit, so a revocation on another node takes
/// effect here within milliseconds. The polling loop stays as the safety net.
async fn follow_notifications(mut notifier: keygate_store::ChangeNotifier, keys: Arc<KeyService>) {
    let mut backoff = std::time::Duration::from_millis(100);
    // The ring was loaded just before; the first connection only needs what changed
    // since (a second full load at start-up would double its cost).
    let mut first = true;
    // A reload that failed (the listener reconnected, but a pooled connection was still
    // dead) is tried again before waiting for the next notification: otherwise a node
    // with a long poll interval would stay behind until some other change arrived.
    let mut reload_owed = false;
    loop {
        let result = if reload_owed {
            keys.reload_keys().await
        } else {
            match notifier.next().await {
                Ok(keygate_store::ChangeEvent::Changed) => keys.sync_keys().await,
                // The listening connection answered its heartbeat: changes would have
                // been announced, so this node is still following.
                Ok(keygate_store::ChangeEvent::Alive) => {
                    keys.note_feed_followed();
                    Ok(0)
                }
                Ok(keygate_store::ChangeEvent::Resync) if first => {
                    first = false;
                    keys.sync_keys().await
                }
                Ok(keygate_store::ChangeEvent::Resync) => {
                    tracing::info!("change listener reconnected; reloading every key");
                    reload_owed = true;
                    keys.reload_keys().await
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(_) => {
                reload_owed = false;
                backoff = std::time::Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, reload_owed, "change listener: verification continues from memory");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// What a node tells its caller once its listeners are up.
#[derive(Debug)]
pub struct Ready<'a> {
    pub addr: SocketAddr,
    /// The reverse proxy's address and upstream, when it runs.
    pub proxy: Option<(SocketAddr, String)>,
    pub issuer: &'a Issuer,
    /// Whether this start created the issuer (to print the first-run message).
    pub created: bool,
    /// While the issuer has no Account Holder: the path of the one-time setup page
    /// (`/setup/<link>`). A new link is made at every start until setup is done.
    pub setup_path: Option<String>,
}

/// Runs a node until ctrl-c / SIGTERM; on an empty database it first creates the issuer.
/// `on_ready` is called once every listener is bound.
pub async fn run(
    config: Config,
    master: MasterKey,
    on_ready: impl FnOnce(Ready<'_>),
) -> Result<(), ConfigError> {
    let state = build(&config, master, Arc::new(SystemClock)).await?;
    let (issuer, created) = state
        .keys
        .ensure_issuer()
        .await
        .map_err(|e| ConfigError(format!("database: {e}")))?;
    let setup_path = state
        .users
        .setup_link(issuer.id)
        .await
        .map_err(|e| ConfigError(format!("database: {e}")))?
        .map(|link| format!("/setup/{}", link.expose()));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ConfigError(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ConfigError(e.to_string()))?;
    let proxy = match &config.proxy {
        Some(p) => {
            let l = TcpListener::bind(p.listen)
                .await
                .map_err(|e| ConfigError(format!("cannot listen on {} (proxy): {e}", p.listen)))?;
            let bound = l.local_addr().map_err(|e| ConfigError(e.to_string()))?;
            Some((l, bound, Arc::new(Proxy::new(p)), p.upstream.to_string()))
        }
        None => None,
    };
    spawn_tasks(&state, &config);
    on_ready(Ready {
        addr,
        proxy: proxy
            .as_ref()
            .map(|(_, bound, _, upstream)| (*bound, upstream.clone())),
        issuer: &issuer,
        created,
        setup_path,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listeners = if proxy.is_some() { 2 } else { 1 };
    let main = listener::serve(
        listener,
        app(state.clone()),
        config.connections,
        ListenerShare {
            listeners,
            files_per_connection: 1,
        },
        stop_rx.clone(),
    );
    let proxied = async {
        if let Some((l, _, p, _)) = proxy {
            listener::serve(
                l,
                proxy::router(state.clone(), p),
                config.connections,
                // Each client connection may hold an upstream connection beside it.
                ListenerShare {
                    listeners,
                    files_per_connection: 2,
                },
                stop_rx.clone(),
            )
            .await;
        }
    };
    let signal = async {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let ((), (), ()) = tokio::join!(main, proxied, signal);
    // Usage metered since the last flush is written before the process ends.
    if let Err(e) = state.keys.flush_usage(state.gate.meter()).await {
        tracing::warn!(error = %e, "final usage flush failed");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
