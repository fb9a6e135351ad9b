//! The `keygate` binary: `serve`, `admin bootstrap`, `token`, `check-config`, and a client of the
//! management API (`keys ...`).

mod keys;
mod secret_keys;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use keygate_client::{Identity, MintOptions, TokenMinter};
use keygate_core::clock::SystemClock;
use keygate_server::config::{self, Overrides};
use keygate_server::{master_key, serve};

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "Self-hosted API keys in the App Store Connect model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Offline administration of the database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a signed JWT for a key.
    Token(TokenArgs),
    /// Manage API keys through a running server.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage secret keys (kgsk_…) through a running server.
    #[command(subcommand)]
    SecretKeys(secret_keys::SecretKeysCommand),
    /// Manage people (users and invitations) through a running server.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Validate a configuration / policy file and print what it means.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the main listener [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Database URL [default: <sqlite://keygate-data/keygate.db>].
    #[arg(long)]
    database: Option<String>,
    /// Accepted token audience; repeat for several [default: keygate-v1].
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// Run the reverse proxy on this address (needs --upstream).
    #[arg(long, requires = "upstream")]
    proxy_listen: Option<String>,
    /// The protected API the reverse proxy forwards allowed requests to (http://host:port).
    #[arg(long, requires = "proxy_listen")]
    upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the audit hash chain from its first event and report the first broken link.
    Verify {
        #[arg(long, env = "KEYGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        database: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create the issuer if none exists and a new ADMIN team key; write its .p8 to --out.
    Bootstrap {
        #[arg(long, env = "KEYGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        issuer_id: Option<String>,
        /// Folder for `AuthKey`_<KEYID>.p8.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a one-time link (valid one hour) with which a person sets a new password without
    /// the old one; every session of theirs ends when it is used. For a forgotten password, or
    /// the Account Holder's compromised one. Needs no master key.
    ResetPassword {
        #[arg(long, env = "KEYGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "KEYGATE_DATABASE")]
        database: Option<String>,
        /// The person's email.
        #[arg(long)]
        email: String,
    },
}

/// How to sign: a key file and its IDs. Shared by `token` and `keys`.
#[derive(Debug, Args, Clone)]
pub struct KeyFlags {
    /// The .p8 private key file.
    #[arg(long = "key", env = "KEYGATE_KEY_FILE")]
    pub key: PathBuf,
    #[arg(long, env = "KEYGATE_KEY_ID")]
    pub key_id: String,
    /// The issuer ID (team keys).
    #[arg(long, env = "KEYGATE_ISSUER_ID", conflicts_with = "individual")]
    pub issuer_id: Option<String>,
    /// The key is an individual key (sub "user", no iss).
    #[arg(long)]
    pub individual: bool,
    #[arg(long, default_value = "keygate-v1")]
    pub audience: String,
}

impl KeyFlags {
    pub fn minter(&self, lifetime: i64, scope: Vec<String>) -> Result<TokenMinter> {
        let identity = match (&self.issuer_id, self.individual) {
            (Some(id), false) => Identity::Team {
                issuer_id: id.clone(),
            },
            (None, true) => Identity::Individual,
            _ => bail!("give --issuer-id ID for a team key, or --individual"),
        };
        let options = MintOptions {
            audience: self.audience.clone(),
            lifetime,
            scope,
            include_iat: true,
        };
        TokenMinter::from_file(&self.key, &self.key_id, identity, options).map_err(Into::into)
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    key: KeyFlags,
    /// Token lifetime, such as 20m or 300s.
    #[arg(long, default_value = "20m")]
    lifetime: String,
    /// Restrict the token to one request, "METHOD /path?query"; repeatable.
    #[arg(long)]
    scope: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve_cmd(args).await,
        Command::Admin(AdminCommand::Bootstrap {
            config,
            database,
            issuer_id,
            out,
        }) => bootstrap(config.as_deref(), database, issuer_id, &out).await,
        Command::Admin(AdminCommand::ResetPassword {
            config,
            database,
            email,
        }) => reset_password(config.as_deref(), database, &email).await,
        Command::Token(args) => {
            let lifetime = config::parse_duration(&args.lifetime)
                .context("--lifetime is a duration such as 20m")?;
            let minter = args.key.minter(
                i64::try_from(lifetime).context("--lifetime too large")?,
                args.scope,
            )?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}", minter.mint()?);
            }
            Ok(())
        }
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Users(cmd) => users::run(cmd).await,
        Command::SecretKeys(cmd) => secret_keys::run(cmd).await,
        Command::Audit(AuditCommand::Verify { config, database }) => {
            audit_verify(config.as_deref(), database).await
        }
        Command::CheckConfig { config: path } => {
            let cfg = config::load(Some(&path), &|_| None, &Overrides::default())?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}: OK\n{}", path.display(), config::describe(&cfg));
            }
            Ok(())
        }
    }
}

async fn serve_cmd(args: ServeArgs) -> Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        database: args.database,
        audiences: args.audiences,
        proxy_listen: args.proxy_listen,
        upstream: args.upstream,
    };
    let cfg = config::load(args.config.as_deref(), &env_var, &overrides)?;
    let master = master_key::resolve(env_var("KEYGATE_MASTER_KEY"), &cfg.database)?;
    let public_url = cfg.public_url.clone();
    serve::run(cfg, master, |ready| {
        let serve::Ready {
            addr,
            proxy,
            issuer,
            created,
            setup_path,
        } = ready;
        #[allow(clippy::print_stdout)]
        {
            if created {
                println!(
                    "keygate: created issuer {} (Issuer ID). This is shown once.",
                    issuer.id
                );
            }
            if let Some(path) = setup_path {
                let base = public_base(public_url.as_deref(), addr);
                println!(
                    "keygate: create the Account Holder at {base}{path} (this link works once; a new one is printed at each start until then)"
                );
                println!(
                    "keygate: for scripts, an admin key without a person: keygate admin bootstrap --out DIR"
                );
            }
            if let Some((proxy, upstream)) = proxy {
                println!("keygate proxy listening on http://{proxy} for {upstream}");
            }
            println!("keygate listening on http://{addr}");
        }
    })
    .await?;
    Ok(())
}

/// Where people reach keygate: `public_url`, else the address it listens on.
fn public_base(public_url: Option<&str>, listen: std::net::SocketAddr) -> String {
    if let Some(url) = public_url {
        return url.to_owned();
    }
    if listen.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", listen.port())
    } else {
        format!("http://{listen}")
    }
}

/// `keygate admin reset-password`: a one-time link for a person, printed for the operator to
/// pass on. Opens the database directly (safe while servers run); never creates one.
async fn reset_password(
    config_path: Option<&Path>,
    database: Option<String>,
    email: &str,
) -> Result<()> {
    let overrides = Overrides {
        database,
        ..Overrides::default()
    };
    let cfg = config::load(config_path, &env_var, &overrides)?;
    let store = keygate_store::open_existing(&cfg.database).await?;
    let ring = Arc::new(keygate_core::keyset::KeyRing::new());
    let users = keygate_core::people::UserService::new(
        store,
        Arc::new(SystemClock),
        cfg.roles(),
        ring,
        cfg.sessions,
    );
    let (user, link) = users.password_reset_link(email).await?;
    let base = public_base(cfg.public_url.as_deref(), cfg.listen);
    #[allow(clippy::print_stdout)]
    {
        println!(
            "Password reset link for {} <{}>:\n{base}/reset/{}\nIt works once, for one hour, and replaces any earlier one; every session of theirs ends when it is used.",
            user.display_name(),
            user.email,
            link.expose()
        );
    }
    Ok(())
}

/// `keygate audit verify`: reads the chain in pages, in order, straight from the database (no
/// master key needed), and fails naming the first broken link.
async fn audit_verify(config_path: Option<&Path>, database: Option<String>) -> Result<()> {
    let overrides = Overrides {
        database,
        ..Overrides::default()
    };
    let cfg = config::load(config_path, &env_var, &overrides)?;
    // A tamper check never creates anything: a mistyped path is an error, not an empty chain.
    let store = keygate_store::open_existing(&cfg.database).await?;
    let mut chain = keygate_core::audit::ChainVerifier::new();
    let mut after = 0;
    let mut page_size = 1000;
    loop {
        let page = match store.audit_chain(after, page_size).await {
            Ok(page) => page,
            // An event that no longer reads spoils its page: read one event at a time from
            // here, so the ones before it are verified and it is named.
            Err(_) if page_size > 1 => {
                page_size = 1;
                continue;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "audit chain BROKEN: {e}; {} events before it verified",
                    chain.count()
                ));
            }
        };
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            chain.push(event).map_err(|broken| {
                anyhow::anyhow!(
                    "audit chain BROKEN: {broken}; {} events before it verified",
                    chain.count()
                )
            })?;
        }
    }
    #[allow(clippy::print_stdout)]
    {
        match chain.last_seq() {
            Some(last) => println!(
                "audit chain intact: {} events up to #{last}, every hash verified; head hash {}\n\
                 (keep the head hash elsewhere: a later run that does not reach it means events were removed from the end)",
                chain.count(),
                chain.last_hash_hex().unwrap_or_default()
            ),
            None => println!("audit chain intact: no events yet"),
        }
    }
    Ok(())
}

async fn bootstrap(
    config_path: Option<&Path>,
    database: Option<String>,
    issuer_id: Option<String>,
    out: &Path,
) -> Result<()> {
    let overrides = Overrides {
        database,
        ..Overrides::default()
    };
    let cfg = config::load(config_path, &env_var, &overrides)?;
    let master = master_key::resolve(env_var("KEYGATE_MASTER_KEY"), &cfg.database)?;
    let issuer_id = issuer_id
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("--issuer-id must be a hyphenated UUID"))?;
    // The folder must take the key before the key exists: nobody else will ever hold it.
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let file =
        keys::PrivateFile::reserve(&out.join(format!(".AuthKey-{}.p8.tmp", std::process::id())))?;
    let state = serve::build(&cfg, master, Arc::new(SystemClock)).await?;
    let (key, pem) = state.keys.bootstrap_admin_key(issuer_id).await?;
    let path = file.write_as(pem.expose(), &out.join(format!("AuthKey_{}.p8", key.id)))?;
    let summary = serde_json::json!({
        "issuerId": key.issuer_id.to_string(),
        "keyId": key.id.as_str(),
        "privateKeyPath": path.display().to_string(),
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
