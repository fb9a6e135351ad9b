//! The signed-in person's own account: change the password (every other session ends), and sign
//! out everywhere.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keygate_core::secret::Password;
use maud::html;

use super::{CSRF_FIELD, Web, alert, error_text, html_response, layout, redirect};
use crate::AppState;

#[derive(Debug, serde::Deserialize)]
pub struct AccountQuery {
    changed: Option<String>,
}

fn account_page(web: &Web, status: StatusCode, message: Option<&str>, changed: bool) -> Response {
    let user = &web.session.user;
    let content = html! {
        h1 { "Account" }
        p { (user.display_name()) " \u{00b7} " (user.email) }
        @if changed {
            div.notice role="status" { p { "Password changed. Every other session of yours was signed out." } }
        }
        section aria-labelledby="password-heading" {
            h2 id="password-heading" { "Change Password" }
            (alert(message))
            form.stack method="post" action="/account/password" {
                input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                input type="email" name="username" value=(user.email) autocomplete="username" hidden;
                label for="current_password" { "Current Password" }
                input id="current_password" name="current_password" type="password" required maxlength="256" autocomplete="current-password";
                (super::sign_in::password_fields("new-password"))
                button type="submit" id="change-password" { "Change Password" }
            }
        }
        section aria-labelledby="sessions-heading" {
            h2 id="sessions-heading" { "Sessions" }
            p { "Signed in on another computer, or lost one? Signing out everywhere ends every session of yours, this one included." }
            form.inline method="post" action="/account/signout-everywhere" {
                input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                button.danger type="submit" id="sign-out-everywhere" { "Sign Out Everywhere" }
            }
        }
    };
    html_response(status, layout("Account", Some(web), &content))
}

pub async fn account(web: Web, Query(q): Query<AccountQuery>) -> Response {
    account_page(&web, StatusCode::OK, None, q.changed.is_some())
}

pub async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    web: Web,
    body: Body,
) -> Response {
    let mut form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let current = Password::new(form.take("current_password"));
    let new = match super::sign_in::passwords_match(&mut form) {
        Ok(p) => p,
        Err(m) => return account_page(&web, StatusCode::UNPROCESSABLE_ENTITY, Some(&m), false),
    };
    let Some(keep) = crate::auth::cookie(&headers, state.cookies.session) else {
        return redirect("/signin");
    };
    match state
        .users
        .change_password(&web.session, keep, current, new, web.principal.source_ip)
        .await
    {
        Ok(()) => {
            tracing::info!(user_id = %web.session.user.id, "password changed (web)");
            redirect("/account?changed=1")
        }
        Err(e) => {
            let (status, m) = error_text(e);
            account_page(&web, status, Some(&m), false)
        }
    }
}

pub async fn sign_out_everywhere(State(state): State<AppState>, web: Web, body: Body) -> Response {
    if let Err(r) = web.form(body).await {
        return r;
    }
    if let Err(e) = state
        .users
        .sign_out_everywhere(&web.session, web.principal.source_ip)
        .await
    {
        return super::error_page(Some(&web), e);
    }
    super::signed_out(&state)
}
