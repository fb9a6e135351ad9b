//! `keygate secret-keys ...`: secret keys (`kgsk_…`) through the management API.

use anyhow::Result;
use clap::Subcommand;
use keygate_client::SecretKeyInfo;
use serde_json::json;

use crate::keys::Conn;

#[derive(Debug, Subcommand)]
pub enum SecretKeysCommand {
    /// List the issuer's secret keys (hints only; secrets are never shown again).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a secret key; prints its secret, once.
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        name: String,
        /// A role such as DEVELOPER; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A website the key may be used from, such as `https://*.example.com/*`; repeatable.
        #[arg(long = "referrer")]
        referrers: Vec<String>,
        /// An IPv4 or IPv6 address or CIDR range the key may be used from; repeatable.
        #[arg(long = "ip-range")]
        ip_ranges: Vec<String>,
        /// An API the key may call, as "METHOD /path/**"; repeatable.
        #[arg(long = "api")]
        apis: Vec<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Give a key a new secret (printed once); the old one works until --old-key-expires-at.
    Roll {
        #[command(flatten)]
        conn: Conn,
        #[arg(value_name = "SECRET_KEY_ID")]
        target: String,
        /// When the old secret stops working (RFC 3339); default: now.
        #[arg(long)]
        old_key_expires_at: Option<String>,
    },
    /// Revoke a key, at once and for good.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        #[arg(value_name = "SECRET_KEY_ID")]
        target: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[allow(clippy::print_stdout)]
pub async fn run(cmd: SecretKeysCommand) -> Result<()> {
    let (json_out, key, note) = match cmd {
        SecretKeysCommand::List { conn } => {
            let keys = conn.client()?.list_secret_keys().await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", table(&keys));
            }
            return Ok(());
        }
        SecretKeysCommand::Create {
            conn,
            name,
            roles,
            referrers,
            ip_ranges,
            apis,
            expires_at,
        } => {
            let restrictions = json!({"referrers": referrers, "ipRanges": ip_ranges, "apis": apis});
            let key = conn
                .client()?
                .create_secret_key(&name, &roles, restrictions, expires_at.as_deref())
                .await?;
            (conn.json, key, "Created")
        }
        SecretKeysCommand::Roll {
            conn,
            target,
            old_key_expires_at,
        } => {
            let key = conn
                .client()?
                .roll_secret_key(&target, old_key_expires_at.as_deref())
                .await?;
            (conn.json, key, "Rolled")
        }
        SecretKeysCommand::Revoke {
            conn,
            target,
            reason,
        } => {
            let key = conn
                .client()?
                .revoke_secret_key(&target, reason.as_deref())
                .await?;
            (conn.json, key, "Revoked")
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&key)?);
    } else {
        println!("{note} secret key {} ({}).", key.id, key.name);
        if let Some(secret) = &key.secret {
            println!(
                "Secret (shown once, keygate keeps only its hash; store it safely):\n{secret}"
            );
        }
    }
    Ok(())
}

fn table(keys: &[SecretKeyInfo]) -> String {
    let mut out = format!(
        "{:<10}  {:<24}  {:<16}  {:<8}  {:<20}  {:>9}  {}\n",
        "KEY ID", "NAME", "ACCESS", "STATUS", "CREATED", "REQUESTS", "SECRETS"
    );
    for k in keys {
        let name: String = k.name.chars().take(24).collect();
        let hints: Vec<&str> = k
            .secrets
            .iter()
            .filter_map(|s| s.get("hint").and_then(serde_json::Value::as_str))
            .collect();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{:<10}  {:<24}  {:<16}  {:<8}  {:<20}  {:>9}  {}\n",
                k.id,
                name,
                k.roles.join(","),
                match (k.is_active, &k.revoked_date) {
                    (true, _) => "ACTIVE",
                    (false, Some(_)) => "REVOKED",
                    (false, None) => "EXPIRED",
                },
                k.created_date,
                k.request_count,
                hints.join(" "),
            ),
        );
    }
    out
}
