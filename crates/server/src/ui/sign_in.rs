//! Pages before a session exists: first-run setup, sign-in, accepting an invitation; and sign-out.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use keygate_core::people::SignIn;
use keygate_core::secret::Password;
use keygate_core::user::Person;
use maud::{Markup, html};

use super::{
    CSRF_FIELD, Web, alert, error_text, html_response, layout, message_page, pre_session_form,
    pre_session_token, role_label, start_session,
};
use crate::AppState;
use crate::auth::{PeerIp, cookie};

type Peer = PeerIp;

fn ip(peer: Peer) -> Option<std::net::IpAddr> {
    peer.0
}

/// Renders a pre-session form page, setting the form cookie when it is new.
fn pre_session_page(
    headers: &HeaderMap,
    state: &AppState,
    status: StatusCode,
    title: &str,
    body: impl FnOnce(&str) -> Markup,
) -> Response {
    let (token, set) = pre_session_token(headers, state);
    let mut resp = html_response(status, layout(title, None, &body(&token)));
    if let Some(c) = set {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

pub(super) fn password_fields(autocomplete: &str) -> Markup {
    html! {
        label for="password" { "Password" }
        input id="password" name="password" type="password" required minlength="10" maxlength="256" autocomplete=(autocomplete) aria-describedby="password-help";
        p.help id="password-help" { "At least 10 characters." }
        label for="password_confirm" { "Confirm Password" }
        input id="password_confirm" name="password_confirm" type="password" required minlength="10" maxlength="256" autocomplete=(autocomplete);
    }
}

pub(super) fn passwords_match(form: &mut super::Form) -> Result<Password, String> {
    let pw = form.take("password");
    let confirm = form.take("password_confirm");
    if pw == confirm {
        Ok(Password::new(pw))
    } else {
        Err("The two passwords are not the same.".into())
    }
}

/// The form of a page reached by a one-time link (an invitation, a password reset): the email
/// it is for, shown, and a new password typed twice.
fn new_password_form(token: &str, action: &str, email: &str, button: &str) -> Markup {
    html! {
        form.stack method="post" action=(action) {
            input type="hidden" name=(CSRF_FIELD) value=(token);
            label for="email" { "Email" }
            input id="email" name="email" type="email" value=(email) readonly autocomplete="username";
            (password_fields("new-password"))
            button type="submit" { (button) }
        }
    }
}

/// What a pre-session form with a new password brought.
enum Submitted {
    Password(Password),
    /// The two passwords differ: show the form again with this message.
    Retry(String),
    /// The form itself was refused (its token): answer with this.
    Answer(Response),
}

async fn new_password_submitted(headers: &HeaderMap, state: &AppState, body: Body) -> Submitted {
    match pre_session_form(headers, state, body).await {
        Ok(mut form) => match passwords_match(&mut form) {
            Ok(p) => Submitted::Password(p),
            Err(m) => Submitted::Retry(m),
        },
        Err(r) => Submitted::Answer(r),
    }
}

// ---- first-run setup ----

fn setup_page(
    headers: &HeaderMap,
    state: &AppState,
    link: &str,
    status: StatusCode,
    message: Option<&str>,
    values: (&str, &str, &str),
) -> Response {
    let action = format!("/setup/{link}");
    pre_session_page(headers, state, status, "Set up keygate", |token| {
        html! {
            h1 { "Set up keygate" }
            p { "Create the Account Holder: the one person who owns this issuer. This page works once." }
            (alert(message))
            form.stack method="post" action=(action) {
                input type="hidden" name=(CSRF_FIELD) value=(token);
                label for="first_name" { "First Name" }
                input id="first_name" name="first_name" type="text" required maxlength="100" autocomplete="given-name" value=(values.0);
                label for="last_name" { "Last Name" }
                input id="last_name" name="last_name" type="text" required maxlength="100" autocomplete="family-name" value=(values.1);
                label for="email" { "Email" }
                input id="email" name="email" type="email" required maxlength="254" autocomplete="email" value=(values.2);
                (password_fields("new-password"))
                button type="submit" { "Create Account Holder" }
            }
        }
    })
}

pub async fn setup_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(link): Path<String>,
) -> Response {
    match state.users.setup_link_is_live(&link).await {
        Ok(true) => setup_page(&headers, &state, &link, StatusCode::OK, None, ("", "", "")),
        Ok(false) => message_page(
            StatusCode::NOT_FOUND,
            "Setup link not valid",
            "This setup link is not valid: the Account Holder was already created, or a newer link was printed when keygate started. Sign in instead.",
        ),
        Err(e) => super::error_page(None, e),
    }
}

pub async fn setup_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Peer,
    Path(link): Path<String>,
    body: Body,
) -> Response {
    let mut form = match pre_session_form(&headers, &state, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let values = (
        form.text("first_name").to_owned(),
        form.text("last_name").to_owned(),
        form.text("email").to_owned(),
    );
    let again = |status, message: &str| {
        setup_page(
            &headers,
            &state,
            &link,
            status,
            Some(message),
            (&values.0, &values.1, &values.2),
        )
    };
    let password = match passwords_match(&mut form) {
        Ok(p) => p,
        Err(m) => return again(StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    let person = match Person::validate(&values.2, &values.0, &values.1) {
        Ok(p) => p,
        Err(e) => {
            let (status, m) = error_text(e);
            return again(status, &m);
        }
    };
    match state
        .users
        .create_account_holder(&link, person, password, ip(peer))
        .await
    {
        Ok(session) => start_session(&headers, &state, &session, "/access/integrations"),
        Err(e) => {
            let (status, m) = error_text(e);
            again(status, &m)
        }
    }
}

// ---- sign in / out ----

fn sign_in_page(
    headers: &HeaderMap,
    state: &AppState,
    status: StatusCode,
    message: Option<&str>,
    notice: Option<&str>,
    email: &str,
) -> Response {
    pre_session_page(headers, state, status, "Sign In", |token| {
        html! {
            h1 { "Sign In" }
            @if let Some(n) = notice {
                p.notice role="status" { (n) }
            }
            (alert(message))
            form.stack method="post" action="/signin" {
                input type="hidden" name=(CSRF_FIELD) value=(token);
                label for="email" { "Email" }
                input id="email" name="email" type="email" required maxlength="254" autocomplete="username" value=(email);
                label for="password" { "Password" }
                input id="password" name="password" type="password" required maxlength="256" autocomplete="current-password";
                button type="submit" { "Sign In" }
            }
        }
    })
}

pub async fn sign_in_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = match query.as_deref() {
        Some("expired=1") => Some("Your session ended. Sign in again."),
        Some("signed_out=1") => Some("You signed out."),
        _ => None,
    };
    sign_in_page(&headers, &state, StatusCode::OK, None, notice, "")
}

pub async fn sign_in_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Peer,
    body: Body,
) -> Response {
    let mut form = match pre_session_form(&headers, &state, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let email = form.text("email").to_owned();
    let password = Password::new(form.take("password"));
    match state.users.sign_in(&email, password, ip(peer)).await {
        Ok(SignIn::Accepted(session)) => {
            start_session(&headers, &state, &session, "/access/integrations")
        }
        Ok(SignIn::Refused) => sign_in_page(
            &headers,
            &state,
            StatusCode::UNAUTHORIZED,
            Some("The email or password is incorrect."),
            None,
            &email,
        ),
        Ok(SignIn::Throttled { retry_after }) => {
            let minutes = (retry_after + 59) / 60;
            let mut resp = sign_in_page(
                &headers,
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many failed sign-ins for this account or from this address. Try again in {minutes} minute{}.",
                    if minutes == 1 { "" } else { "s" }
                )),
                None,
                &email,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after.max(1).into());
            resp
        }
        Err(e) => {
            let (status, m) = error_text(e);
            sign_in_page(&headers, &state, status, Some(&m), None, &email)
        }
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    web: Web,
    body: Body,
) -> Response {
    if let Err(r) = web.form(body).await {
        return r;
    }
    if let Some(id) = cookie(&headers, state.cookies.session)
        && let Err(e) = state
            .users
            .sign_out(id, &web.session, web.principal.source_ip)
            .await
    {
        return super::error_page(Some(&web), e);
    }
    super::signed_out(&state)
}

// ---- invitations ----

pub async fn accept_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(link): Path<String>,
) -> Response {
    accept_page(&headers, &state, &link, StatusCode::OK, None).await
}

async fn accept_page(
    headers: &HeaderMap,
    state: &AppState,
    link: &str,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let invitation = match state.users.invitation(link).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Invitation not valid",
                "This invitation link is not valid: it was used, cancelled, or is more than 3 days old. Ask for a new invitation.",
            );
        }
        Err(e) => return super::error_page(None, e),
    };
    let action = format!("/invitations/{link}");
    let roles: Vec<String> = invitation
        .roles
        .iter()
        .map(|r| role_label(r.as_str()))
        .collect();
    pre_session_page(headers, state, status, "Accept Invitation", |token| {
        html! {
            h1 { "Accept Invitation" }
            p { "Hello " (invitation.first_name) ", you are invited to keygate as " strong { (roles.join(", ")) } ". Choose a password to finish." }
            (alert(message))
            (new_password_form(token, &action, &invitation.email, "Accept and Sign In"))
        }
    })
}

pub async fn accept_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Peer,
    Path(link): Path<String>,
    body: Body,
) -> Response {
    let password = match new_password_submitted(&headers, &state, body).await {
        Submitted::Password(p) => p,
        Submitted::Retry(m) => {
            return accept_page(
                &headers,
                &state,
                &link,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&m),
            )
            .await;
        }
        Submitted::Answer(r) => return r,
    };
    match state
        .users
        .accept_invitation(&link, password, ip(peer))
        .await
    {
        Ok(session) => start_session(&headers, &state, &session, "/access/integrations"),
        Err(e) => {
            let (status, m) = error_text(e);
            accept_page(&headers, &state, &link, status, Some(&m)).await
        }
    }
}

// ---- password reset (a link an operator made with `keygate admin reset-password`) ----

pub async fn reset_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(link): Path<String>,
) -> Response {
    reset_page(&headers, &state, &link, StatusCode::OK, None).await
}

async fn reset_page(
    headers: &HeaderMap,
    state: &AppState,
    link: &str,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let user = match state.users.password_reset_user(link).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Reset link not valid",
                "This password reset link is not valid: it was used, replaced by a newer one, or is more than an hour old. Ask your operator for a new one.",
            );
        }
        Err(e) => return super::error_page(None, e),
    };
    let action = format!("/reset/{link}");
    pre_session_page(headers, state, status, "Reset Password", |token| {
        html! {
            h1 { "Reset Password" }
            p { "Hello " (user.first_name) ", choose a new password. Every session of yours is signed out when it is set." }
            (alert(message))
            (new_password_form(token, &action, &user.email, "Set Password and Sign In"))
        }
    })
}

pub async fn reset_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Peer,
    Path(link): Path<String>,
    body: Body,
) -> Response {
    let password = match new_password_submitted(&headers, &state, body).await {
        Submitted::Password(p) => p,
        Submitted::Retry(m) => {
            return reset_page(
                &headers,
                &state,
                &link,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&m),
            )
            .await;
        }
        Submitted::Answer(r) => return r,
    };
    match state.users.reset_password(&link, password, ip(peer)).await {
        Ok(session) => start_session(&headers, &state, &session, "/access/integrations"),
        Err(e) => {
            let (status, m) = error_text(e);
            reset_page(&headers, &state, &link, status, Some(&m)).await
        }
    }
}
