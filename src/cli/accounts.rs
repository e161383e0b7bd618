//! Accounts: `user add`, `user disable`, `session issue`.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::*;
use crate::app;

/// The store and authentication, for the user and session commands.
pub(super) async fn open_auth(config_dir: &Path) -> anyhow::Result<Arc<crate::auth::Auth>> {
    let settings = app::settings_from(config_dir)?;
    let store = crate::store::Store::connect(&settings.database.url).await?;
    crate::auth::Auth::start(store, settings.auth)
        .await
        .map_err(|e| anyhow::anyhow!(crate::error::error_chain(&e)))
}

pub(super) fn run_user_add(config_dir: &Path, args: &UserAddArgs) -> anyhow::Result<ExitCode> {
    let roles = crate::auth::Role::parse_list(&args.roles.join(",")).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.id.is_none() || args.usernames.len() == 1,
        "--id names one user; give one username with it"
    );
    let password = if !args.password_stdin && std::io::IsTerminal::is_terminal(&io::stdin()) {
        rpassword::prompt_password(format!("password for {}: ", args.usernames.join(", ")))
            .context("cannot read the password from the terminal")?
    } else {
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    block_on(async {
        let auth = open_auth(config_dir).await?;
        let bar = progress_bar(args.usernames.len() as u64, "users");
        for username in &args.usernames {
            let user = auth
                .create_user(username, password.clone(), roles.clone(), args.id.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{username}: {}", crate::error::error_chain(&e)))?;
            bar.inc(1);
            if args.usernames.len() == 1 {
                println!(
                    "added user {:?} (id {:?}) with roles {}",
                    user.username,
                    user.id,
                    crate::auth::Role::join(&user.roles)
                );
            }
        }
        bar.finish_and_clear();
        if args.usernames.len() > 1 {
            println!("added {} users", args.usernames.len());
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run_user_disable(config_dir: &Path, id: &str) -> anyhow::Result<ExitCode> {
    block_on(async {
        let auth = open_auth(config_dir).await?;
        auth.disable_user(id)
            .await
            .map_err(|e| anyhow::anyhow!(crate::error::error_chain(&e)))?;
        println!("disabled {id:?}; its sessions are revoked");
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run_session_issue(
    config_dir: &Path,
    args: &SessionIssueArgs,
) -> anyhow::Result<ExitCode> {
    let client = crate::auth::ClientKind::parse(&args.client).with_context(|| {
        format!(
            "unknown client kind {:?} (mobile, ops, consumer)",
            args.client
        )
    })?;
    block_on(async {
        let auth = open_auth(config_dir).await?;
        for user in &args.users {
            let tokens = auth
                .issue_session(user, client, Some(args.label.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("{user}: {}", crate::error::error_chain(&e)))?;
            println!(
                "{}",
                serde_json::json!({"user_id": user, "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token, "session_id": tokens.session_id,
                    "expires_in": tokens.expires_in})
            );
        }
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}
