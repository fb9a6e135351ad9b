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
    pub(crate) json: bool,
}

impl Conn {
    pub(crate) fn client(&self) -> Result<ManagementClient> {
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
            // Reserve the file first: the key can be fetched only once, so it must never be
            // fetched into a folder it cannot be written to.
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let file = PrivateFile::reserve(&out.join(format!("AuthKey_{key}.p8")))?;
            let pem = conn.client()?.download_private_key(&key).await?;
            let path = file.write(pem.expose())?;
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
        "{:<10}  {:<24}  {:<20}  {:<8}  {:<20}  {:<20}  {:>9}  {}\n",
        "KEY ID", "NAME", "ACCESS", "STATUS", "CREATED", "LAST USED", "REQUESTS", "DOWNLOAD"
    );
    for k in keys {
        let name: String = k.name.chars().take(24).collect();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{:<10}  {:<24}  {:<20}  {:<8}  {:<20}  {:<20}  {:>9}  {}\n",
                k.id,
                name,
                k.roles.join(","),
                if k.is_active { "ACTIVE" } else { "REVOKED" },
                k.created_date,
                k.last_used_date.as_deref().unwrap_or("-"),
                k.request_count,
                if k.can_download { "available" } else { "-" },
            ),
        );
    }
    out
}

/// A file (mode 0600, never overwriting) reserved before the secret it will hold exists, so a
/// once-only secret is never fetched into a place it cannot be written. Removed on drop unless
/// written.
#[derive(Debug)]
pub struct PrivateFile {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl PrivateFile {
    pub fn reserve(path: &Path) -> Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            file: Some(file),
            path: path.to_owned(),
        })
    }

    /// Writes and syncs the contents; returns the path.
    pub fn write(mut self, contents: &str) -> Result<PathBuf> {
        use std::io::Seek as _;
        let mut file = self.file.take().context("file already written")?;
        file.rewind()?;
        file.write_all(contents.as_bytes())?;
        file.set_len(contents.len() as u64)?;
        file.sync_all()?;
        Ok(std::mem::take(&mut self.path))
    }

    /// Writes, then gives the file its final name (which must not exist yet).
    pub fn write_as(self, contents: &str, final_path: &Path) -> Result<PathBuf> {
        let temp = self.write(contents)?;
        match std::fs::hard_link(&temp, final_path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&temp);
                Ok(final_path.to_owned())
            }
            // The secret is written; keep it where it is rather than lose it.
            Err(e) => anyhow::bail!(
                "cannot name the key file {}: {e}; the private key is in {}",
                final_path.display(),
                temp.display()
            ),
        }
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        // Unwritten (or never fully reserved): remove the placeholder.
        if self.file.is_some() || !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
