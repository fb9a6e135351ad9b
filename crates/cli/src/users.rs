//! `keygate users ...`: people, through the management API (an admin key's token).

use anyhow::Result;
use clap::Subcommand;
use keygate_client::UserInfo;

use crate::keys::Conn;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the issuer's users.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Invite a person; prints the one-time accept link (valid 3 days) to pass on.
    Invite {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        email: String,
        #[arg(long)]
        first_name: String,
        #[arg(long)]
        last_name: String,
        /// A role such as DEVELOPER; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Remove a user; their individual key is revoked at once.
    Remove {
        #[command(flatten)]
        conn: Conn,
        #[arg(value_name = "USER_ID")]
        target: String,
    },
}

#[allow(clippy::print_stdout)]
pub async fn run(cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::List { conn } => {
            let users = conn.client()?.list_users().await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print!("{}", table(&users));
            }
        }
        UsersCommand::Invite {
            conn,
            email,
            first_name,
            last_name,
            roles,
        } => {
            let invited = conn
                .client()?
                .invite_user(&email, &first_name, &last_name, &roles)
                .await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&invited)?);
            } else {
                println!(
                    "Invited {} as {} (until {}). keygate sends no email: give them this link, which works once and is not shown again:\n{}",
                    invited.email,
                    invited.roles.join(","),
                    invited.expiration_date,
                    invited.accept_url
                );
            }
        }
        UsersCommand::Remove { conn, target } => {
            conn.client()?.remove_user(&target).await?;
            if conn.json {
                println!("{}", serde_json::json!({"removed": target}));
            } else {
                println!("Removed {target}; their individual key, if any, is revoked.");
            }
        }
    }
    Ok(())
}

fn table(users: &[UserInfo]) -> String {
    let mut out = format!(
        "{:<36}  {:<28}  {:<24}  {}\n",
        "USER ID", "EMAIL", "NAME", "ROLES"
    );
    for u in users {
        let name: String = format!("{} {}", u.first_name, u.last_name)
            .chars()
            .take(24)
            .collect();
        let email: String = u.email.chars().take(28).collect();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{:<36}  {:<28}  {:<24}  {}\n",
                u.id,
                email,
                name,
                u.roles.join(",")
            ),
        );
    }
    out
}
