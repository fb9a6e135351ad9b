//! `keygate keys ...`: a client of the management API.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use keygate_client::{ApiKeyInfo, ManagementClient};

use crate::KeyFlags;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the issuer's API keys.
    List {
        #[command(flatten)]
        conn: Conn,
        /// ACTIVE or REVOKED.
        #[arg(long)]
        status: Option<String>,
    },
    /// Create a team key.
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        name: String,
        /// A role such as DEVELOPER; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// ES256 (default) or `EdDSA`.
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Download a new key's private key, once, to DIR/AuthKey_<KEYID>.p8.
    Download {
        #[command(flatten)]
        conn: Conn,
        #[arg(value_name = "KEY_ID")]
        target: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Revoke a key, at once and for good.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        #[arg(value_name = "KEY_ID")]
        target: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Where the server is and how to sign in to it.
#[derive(Debug, clap::Args)]
pub struct Conn {
    #[arg(long, env = "KEYGATE_SERVER")]
    server: String,
    #[command(flatten)]
    key: KeyFlags,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Conn {
    fn client(&self) -> Result<ManagementClient> {
        let minter = Arc::new(self.key.minter(1200, Vec::new())?);
        ManagementClient::new(&self.server, minter).map_err(Into::into)
    }
}

#[allow(clippy::print_stdout)]
pub async fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::List { conn, status } => {
            let keys = conn.client()?.list_keys(status.as_deref()).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", table(&keys));
            }
        }
        KeysCommand::Create {
            conn,
            name,
            roles,
            algorithm,
        } => {
            let key = conn
                .client()?
                .create_key(&name, &roles, algorithm.as_deref())
                .await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else {
                print!("{}", table(std::slice::from_ref(&key)));
                println!(
                    "\nDownload the private key once with: keygate keys download {} --out DIR",
                    key.id
                );
            }
        }
        KeysCommand::Download {
            conn,
            target: key,
            out,
        } => {
            let pem = conn.client()?.download_private_key(&key).await?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join(format!("AuthKey_{key}.p8"));
            write_private_file(&path, pem.expose())?;
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"keyId": key, "privateKeyPath": path.display().to_string()})
                );
            } else {
                println!(
                    "Saved {}. keygate keeps no copy: store it safely.",
                    path.display()
                );
            }
        }
        KeysCommand::Revoke {
            conn,
            target: key,
            reason,
        } => {
            let key = conn.client()?.revoke_key(&key, reason.as_deref()).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else {
                println!("Revoked {} ({}).", key.id, key.name);
            }
        }
    }
    Ok(())
}

fn table(keys: &[ApiKeyInfo]) -> String {
    let mut out = format!(
        "{:<10}  {:<24}  {:<20}  {:<8}  {:<20}  {:<20}  {}\n",
        "KEY ID", "NAME", "ACCESS", "STATUS", "CREATED", "LAST USED", "DOWNLOAD"
    );
    for k in keys {
        let name: String = k.name.chars().take(24).collect();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{:<10}  {:<24}  {:<20}  {:<8}  {:<20}  {:<20}  {}\n",
                k.id,
                name,
                k.roles.join(","),
                if k.is_active { "ACTIVE" } else { "REVOKED" },
                k.created_date,
                k.last_used_date.as_deref().unwrap_or("-"),
                if k.can_download { "available" } else { "-" },
            ),
        );
    }
    out
}

/// Writes a private key file readable only by its owner; refuses to overwrite.
pub fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
