//! Users and Access → People: the issuer's users, pending invitations, inviting, changing roles
//! and removing.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keygate_core::user::Person;
use maud::{Markup, html};

use super::{
    CSRF_FIELD, Web, alert, date, error_page, error_text, html_response, layout, redirect,
    role_checkboxes, roles_text,
};
use crate::AppState;

/// The tabs of Users and Access.
pub(super) fn tabs(active: &str) -> Markup {
    html! {
        h1 { "Users and Access" }
        nav.tabs aria-label="Users and Access" {
            @for (name, href) in [("People", "/access/people"), ("Integrations", "/access/integrations")] {
                @if name == active {
                    a href=(href) aria-current="page" { (name) }
                } @else {
                    a href=(href) { (name) }
                }
            }
        }
    }
}

/// What the People page shows above its lists after an action.
#[derive(Default)]
struct Outcome<'a> {
    message: Option<&'a str>,
    notice: Option<Markup>,
    invite_values: (&'a str, &'a str, &'a str),
    invite_roles: Option<Vec<&'a str>>,
}

/// Who made an invitation, for the Invitations table: a person by name, a key by its ID.
fn invited_by(created_by: &str, users: &[keygate_core::user::User]) -> String {
    if let Some(id) = created_by.strip_prefix("user:") {
        return users.iter().find(|u| u.id.to_string() == id).map_or_else(
            || "a removed person".to_owned(),
            |u| format!("{} {}", u.first_name, u.last_name),
        );
    }
    if let Some(key) = created_by.strip_prefix("apiKey:") {
        return format!("API key {key}");
    }
    "keygate".to_owned()
}

fn invitations_table(
    web: &Web,
    invitations: &[keygate_core::user::Invitation],
    users: &[keygate_core::user::User],
) -> Markup {
    html! {
                @if invitations.is_empty() {
                    p { "No pending invitations." }
                } @else {
                    table {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Email" } th scope="col" { "Roles" } th scope="col" { "Invited by" } th scope="col" { "Expires" } th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for i in invitations {
                                tr {
                                    td { (i.first_name) " " (i.last_name) }
                                    td { (i.email) }
                                    td { (roles_text(&i.roles)) }
                                    td { (invited_by(&i.created_by, users)) }
                                    td { (date(i.expires_at)) }
                                    td {
                                        form.inline method="post" action=(format!("/access/invitations/{}/cancel", i.id)) {
                                            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                                            button type="submit" { "Cancel Invitation" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
    }
}

async fn people_page(
    state: &AppState,
    web: &Web,
    status: StatusCode,
    out: Outcome<'_>,
) -> Response {
    let catalog = state.keys.roles();
    let (users, invitations) = match web.principal.admin() {
        Ok(admin) => {
            let users = match state.users.list_users(&admin).await {
                Ok(u) => u,
                Err(e) => return error_page(Some(web), e),
            };
            let invitations = match state.users.list_invitations(&admin).await {
                Ok(i) => i,
                Err(e) => return error_page(Some(web), e),
            };
            (users, invitations)
        }
        // Without ADMIN a person sees only themselves.
        Err(_) => (vec![web.session.user.clone()], Vec::new()),
    };
    let admin = web.is_admin();
    let content = html! {
        (tabs("People"))
        @if let Some(n) = &out.notice {
            div.notice role="status" { (n) }
        }
        (alert(out.message))
        section aria-labelledby="people-heading" {
            h2 id="people-heading" { "People" }
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Email" } th scope="col" { "Roles" }
                    @if admin { th scope="col" { "Actions" } }
                } }
                tbody {
                    @for u in &users {
                        tr {
                            td { (u.display_name()) }
                            td { (u.email) }
                            td { (roles_text(&u.roles)) }
                            @if admin {
                                td {
                                    @if u.is_account_holder() {
                                        "Account Holder"
                                    } @else {
                                        a href=(format!("/access/people/{}/roles", u.id)) { "Change Roles" span.visually-hidden { " of " (u.display_name()) } }
                                        " "
                                        a href=(format!("/access/people/{}/remove", u.id)) { "Remove " span.visually-hidden { (u.display_name()) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            section aria-labelledby="invitations-heading" {
                h2 id="invitations-heading" { "Invitations" }
                (invitations_table(web, &invitations, &users))
                h3 { "Invite User" }
                form.stack method="post" action="/access/people/invite" {
                    input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                    label for="first_name" { "First Name" }
                    input id="first_name" name="first_name" type="text" required maxlength="100" value=(out.invite_values.0);
                    label for="last_name" { "Last Name" }
                    input id="last_name" name="last_name" type="text" required maxlength="100" value=(out.invite_values.1);
                    label for="email" { "Email" }
                    input id="email" name="email" type="email" required maxlength="254" value=(out.invite_values.2);
                    (role_checkboxes("roles", "Roles", catalog, out.invite_roles.as_deref().unwrap_or(&["DEVELOPER"])))
                    button type="submit" { "Invite" }
                }
            }
        }
    };
    html_response(status, layout("People", Some(web), &content))
}

pub async fn people(State(state): State<AppState>, web: Web) -> Response {
    people_page(&state, &web, StatusCode::OK, Outcome::default()).await
}

pub async fn invite(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    web: Web,
    body: Body,
) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let admin = match web.principal.admin() {
        Ok(a) => a,
        Err(e) => return error_page(Some(&web), e),
    };
    let (first, last, email, roles) = (
        form.text("first_name"),
        form.text("last_name"),
        form.text("email"),
        form.all("roles"),
    );
    let result = match Person::validate(email, first, last) {
        Ok(person) => {
            let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
            state.users.invite(&admin, person, &roles).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((invitation, link)) => {
            let url = format!(
                "{}/invitations/{}",
                super::origin(&headers, &state),
                link.expose()
            );
            let notice = html! {
                p { "Invitation created for " (invitation.email) ". keygate sends no email: give them this link. It works once, for 3 days, and is not shown again." }
                p { label for="accept-link" { "Invitation link" } }
                p { input id="accept-link" type="text" readonly value=(url) size="80"; }
            };
            people_page(
                &state,
                &web,
                StatusCode::OK,
                Outcome {
                    notice: Some(notice),
                    ..Outcome::default()
                },
            )
            .await
        }
        Err(e) => {
            let (status, m) = error_text(e);
            people_page(
                &state,
                &web,
                status,
                Outcome {
                    message: Some(&m),
                    invite_values: (first, last, email),
                    invite_roles: Some(roles),
                    ..Outcome::default()
                },
            )
            .await
        }
    }
}

/// The Change Roles page of one person: their roles as checkboxes.
pub async fn roles_form(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
) -> Response {
    roles_page(&state, &web, &id, StatusCode::OK, None).await
}

async fn roles_page(
    state: &AppState,
    web: &Web,
    id: &str,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let user = match web.principal.admin() {
        Ok(_) => state.users.get_user(&web.principal, id).await,
        Err(e) => Err(e),
    };
    let user = match user {
        Ok(u) => u,
        Err(e) => return error_page(Some(web), e),
    };
    let checked: Vec<&str> = user
        .roles
        .iter()
        .map(keygate_core::role::Role::as_str)
        .collect();
    let content = html! {
        (alert(message))
        @if user.is_account_holder() {
            p { (user.display_name()) " is the Account Holder, whose role does not change." }
        } @else {
            form.stack method="post" action=(format!("/access/people/{}/roles", user.id)) {
                input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                p { "Roles of " strong { (user.display_name()) } " (" (user.email) "). Their individual key, if any, acts with these roles from the moment you save." }
                (role_checkboxes("roles", "Roles", state.keys.roles(), &checked))
                button type="submit" { "Save Roles" }
            }
        }
        p { a href="/access/people" { "Back to People" } }
    };
    html_response(status, layout("Change Roles", Some(web), &content))
}

pub async fn change_roles(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let roles: Vec<String> = form.all("roles").iter().map(|r| (*r).to_owned()).collect();
    let result = match web.principal.admin() {
        Ok(admin) => state.users.set_roles(&admin, &id, &roles).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => redirect("/access/people"),
        Err(e) => {
            let (status, m) = error_text(e);
            roles_page(&state, &web, &id, status, Some(&m)).await
        }
    }
}

pub async fn remove_confirm(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
) -> Response {
    let user = match state.users.get_user(&web.principal, &id).await {
        Ok(u) => u,
        Err(e) => return error_page(Some(&web), e),
    };
    let content = html! {
        h1 { "Remove " (user.display_name()) "?" }
        p { (user.display_name()) " (" (user.email) ") will lose access at once, and their individual API key is revoked. This cannot be undone." }
        form.inline method="post" action=(format!("/access/people/{}/remove", user.id)) {
            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
            button.danger type="submit" { "Remove" }
        }
        " "
        a href="/access/people" { "Cancel" }
    };
    html_response(StatusCode::OK, layout("Remove User", Some(&web), &content))
}

pub async fn remove(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = web.form(body).await {
        return r;
    }
    let result = match web.principal.admin() {
        Ok(admin) => state.users.remove_user(&admin, &id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => redirect("/access/people"),
        Err(e) => error_page(Some(&web), e),
    }
}

pub async fn cancel_invitation(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = web.form(body).await {
        return r;
    }
    let result = match web.principal.admin() {
        Ok(admin) => state.users.cancel_invitation(&admin, &id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => redirect("/access/people"),
        Err(e) => error_page(Some(&web), e),
    }
}
