//! Users and Access → Integrations (the Issuer ID, Team Keys, Individual Keys, Revoked), the
//! Generate API Key form, the one-time download, revocation, and the audit log.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keygate_core::key::{Algorithm, ApiKey, KeyQuery, KeyType};
use keygate_core::secret_key::SecretKey;
use keygate_core::service::NewKey;
use maud::{Markup, html};
use serde::Deserialize;

use super::people::tabs;
use super::{
    CSRF_FIELD, Web, alert, date, error_page, error_text, html_response, layout, redirect,
    role_select, roles_text,
};
use crate::AppState;
use crate::jsonapi::MAX_LIMIT;

#[derive(Debug, Deserialize)]
pub struct IntegrationsQuery {
    created: Option<String>,
    revoked: Option<String>,
    revoked_secret: Option<String>,
}

/// Every key in the caller's scope, newest first (pages through the list).
async fn keys_in_scope(state: &AppState, web: &Web) -> keygate_core::Result<Vec<ApiKey>> {
    let scope = web.principal.key_scope()?;
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let q = KeyQuery {
            status: None,
            key_type: None,
            owner: None,
            after,
            limit: MAX_LIMIT,
            now: state.keys.now(),
        };
        let page = state.keys.list_keys(&scope, &q).await?;
        all.extend(page.items);
        match page.next {
            Some(cursor) if all.len() < 10_000 => {
                after = Some(keygate_core::key::KeyCursor::decode(&cursor)?);
            }
            _ => return Ok(all),
        }
    }
}

/// Names of the issuer's people by user ID, for the owner column an admin sees.
type Owners = std::collections::HashMap<keygate_core::ids::UserId, String>;

fn key_table(
    web: &Web,
    keys: &[&ApiKey],
    now: i64,
    window: i64,
    owners: Option<&Owners>,
) -> Markup {
    let show_owner = owners.is_some();
    html! {
        table {
            thead { tr {
                th scope="col" { "Name" }
                th scope="col" { "Key ID" }
                @if show_owner { th scope="col" { "User" } }
                th scope="col" { "Access" }
                th scope="col" { "Created" }
                th scope="col" { "Last Used" }
                th scope="col" { "Actions" }
            } }
            tbody {
                @for k in keys {
                    tr data-key-id=(k.id.as_str()) {
                        td { (k.name) }
                        td { code { (k.id.as_str()) } }
                        @if let Some(owners) = owners {
                            td { (k.user_id.map(|u| owners.get(&u).cloned().unwrap_or_else(|| u.to_string())).unwrap_or_default()) }
                        }
                        td { (roles_text(&k.roles)) }
                        td { (date(k.created_at)) }
                        td { (k.last_used_at.map_or_else(|| "Never".into(), date)) }
                        td {
                            @if k.can_download(now, window) && k.downloadable_by(web.principal.user_id) {
                                // A form, not a link: the download spends something, so it is a
                                // POST with the CSRF token in its body (never in a URL).
                                form.inline method="post" action=(format!("/access/keys/{}/download", k.id)) {
                                    input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                                    button.link.download type="submit" {
                                        "Download API Key" span.visually-hidden { " " (k.name) }
                                    }
                                }
                                " "
                            }
                            a href=(format!("/access/keys/{}/revoke", k.id)) { "Revoke" span.visually-hidden { " " (k.name) } }
                        }
                    }
                }
            }
        }
    }
}

fn revoked_section(revoked: &[&ApiKey], secrets: &[&SecretKey]) -> Markup {
    html! {
        section aria-labelledby="revoked-heading" {
            h2 id="revoked-heading" { "Revoked" }
            @if revoked.is_empty() && secrets.is_empty() {
                p { "No revoked keys." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Key ID" } th scope="col" { "Type" }
                        th scope="col" { "Access" } th scope="col" { "Revoked" } th scope="col" { "Reason" }
                    } }
                    tbody {
                        @for k in revoked {
                            tr data-key-id=(k.id.as_str()) {
                                td { (k.name) }
                                td { code { (k.id.as_str()) } }
                                td { (if k.key_type == KeyType::Team { "Team" } else { "Individual" }) }
                                td { (roles_text(&k.roles)) }
                                td { (k.revoked_at.or(k.expires_at).map_or_else(|| "Never downloaded".into(), date)) }
                                td { (k.revoke_reason.as_deref().unwrap_or(if k.is_revoked() { "" } else { "Expired or never downloaded" })) }
                            }
                        }
                        @for k in secrets {
                            tr data-secret-key-id=(k.id.as_str()) {
                                td { (k.name) }
                                td { code { (k.id.as_str()) } }
                                td { "Secret" }
                                td { (roles_text(&k.roles)) }
                                td { (k.revoked_at.or(k.expires_at).map(date).unwrap_or_default()) }
                                td { (k.revoke_reason.as_deref().unwrap_or(if k.is_revoked() { "" } else { "Expired" })) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// For an admin, the issuer's people by user ID: whose each individual key is, by name.
async fn owner_names(state: &AppState, web: &Web) -> keygate_core::error::Result<Option<Owners>> {
    match web.principal.admin() {
        Ok(admin) => Ok(Some(
            state
                .users
                .list_users(&admin)
                .await?
                .iter()
                .map(|u| (u.id, u.display_name()))
                .collect(),
        )),
        Err(_) => Ok(None),
    }
}

/// What the page says about the action that led to it. A notice names only a key that exists
/// (and, for a revocation, was revoked): the query string is the visitor's to write, so its text
/// is never printed.
fn notices(
    web: &Web,
    q: &IntegrationsQuery,
    keys: &[ApiKey],
    secret_keys: Option<&[SecretKey]>,
    now: keygate_core::clock::UnixTime,
    window: i64,
) -> Markup {
    let find = |id: Option<&String>| id.and_then(|id| keys.iter().find(|k| k.id.as_str() == id));
    // "was generated" only for a key this person generated.
    let me = web.principal.actor.to_string();
    let created = find(q.created.as_ref()).filter(|k| k.created_by == me);
    let revoked = find(q.revoked.as_ref()).filter(|k| k.is_revoked());
    let revoked_secret = q.revoked_secret.as_deref().and_then(|id| {
        secret_keys
            .unwrap_or_default()
            .iter()
            .find(|k| k.id.as_str() == id && k.is_revoked())
    });
    html! {
        @if let Some(k) = created {
            div.notice role="status" {
                p { "API key \u{201c}" (k.name) "\u{201d} (" code { (k.id.as_str()) } ") was generated." }
                @if k.can_download(now, window) && k.downloadable_by(web.principal.user_id) {
                    p { strong { "Download it now." } " The private key can be downloaded only once, and keygate keeps no copy after that." }
                }
            }
        }
        @if let Some(k) = revoked {
            div.notice role="status" { p { "API key \u{201c}" (k.name) "\u{201d} was revoked. Its tokens are refused from now on." } }
        }
        @if let Some(k) = revoked_secret {
            div.notice role="status" { p { "Secret key \u{201c}" (k.name) "\u{201d} (" code { (k.id.as_str()) } ") was revoked. Requests with it are refused from now on." } }
        }
    }
}

pub async fn integrations(
    State(state): State<AppState>,
    web: Web,
    Query(q): Query<IntegrationsQuery>,
) -> Response {
    let keys = match keys_in_scope(&state, &web).await {
        Ok(k) => k,
        Err(e) => return error_page(Some(&web), e),
    };
    let secret_keys = match web.principal.admin() {
        Ok(admin) => match state.secrets.list(&admin).await {
            Ok(s) => Some(s),
            Err(e) => return error_page(Some(&web), e),
        },
        Err(_) => None,
    };
    let owners = match owner_names(&state, &web).await {
        Ok(o) => o,
        Err(e) => return error_page(Some(&web), e),
    };
    let now = state.keys.now();
    let window = state.keys.limits().download_window;
    let active = |t: KeyType| -> Vec<&ApiKey> {
        keys.iter()
            .filter(|k| k.key_type == t && k.is_active(now))
            .collect()
    };
    let team = active(KeyType::Team);
    let individual = active(KeyType::Individual);
    let revoked: Vec<&ApiKey> = keys.iter().filter(|k| !k.is_active(now)).collect();
    let (live_secrets, ended_secrets): (Vec<&SecretKey>, Vec<&SecretKey>) =
        secret_keys.iter().flatten().partition(|k| k.is_active(now));
    let me = web.session.user.id;
    let has_own = individual.iter().any(|k| k.user_id == Some(me));
    let admin = web.is_admin();
    let content = html! {
        (tabs("Integrations"))
        (notices(&web, &q, &keys, secret_keys.as_deref(), now, window))
        section aria-labelledby="issuer-heading" {
            h2 id="issuer-heading" { "Issuer ID" }
            p { code id="issuer-id" { (web.principal.issuer_id) } }
        }
        section aria-labelledby="team-heading" {
            div.section-head {
                h2 id="team-heading" { "Team Keys" }
                @if admin {
                    a.button id="generate-api-key" href="/access/integrations/generate" { "Generate API Key" }
                }
            }
            @if team.is_empty() {
                p { "No active team keys." }
            } @else if admin {
                (key_table(&web, &team, now, window, None))
            }
            @if !admin {
                p { "Only an Admin or the Account Holder can see and generate team keys." }
            }
        }
        section aria-labelledby="individual-heading" {
            div.section-head {
                h2 id="individual-heading" { "Individual Keys" }
                @if !has_own {
                    form.inline method="post" action="/access/integrations/individual" {
                        input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
                        button type="submit" id="generate-individual-key" { "Generate Individual Key" }
                    }
                }
            }
            p.help { "An individual key acts with its owner's current roles. Its tokens carry sub \"user\" and no iss." }
            @if individual.is_empty() {
                p { "No active individual keys." }
            } @else {
                (key_table(&web, &individual, now, window, owners.as_ref()))
            }
        }
        @if secret_keys.is_some() {
            (super::secret_keys::section(&live_secrets, now))
        }
        (revoked_section(&revoked, &ended_secrets))
    };
    html_response(StatusCode::OK, layout("Integrations", Some(&web), &content))
}

fn generate_page(
    state: &AppState,
    web: &Web,
    status: StatusCode,
    message: Option<&str>,
    name: &str,
    role: Option<&str>,
) -> Response {
    let content = html! {
        h1 { "Generate API Key" }
        (alert(message))
        form.stack method="post" action="/access/integrations/generate" {
            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
            label for="name" { "Name" }
            input id="name" name="name" type="text" required maxlength="100" value=(name) aria-describedby="name-help";
            p.help id="name-help" { "For your reference only; it cannot be changed later." }
            label for="access" { "Access" }
            (role_select("access", "access", state.keys.roles(), role.or(Some("DEVELOPER"))))
            div.actions {
                button type="submit" id="generate" { "Generate" }
                " "
                a href="/access/integrations" { "Cancel" }
            }
        }
    };
    html_response(status, layout("Generate API Key", Some(web), &content))
}

pub async fn generate_form(State(state): State<AppState>, web: Web) -> Response {
    if let Err(e) = web.principal.admin() {
        return error_page(Some(&web), e);
    }
    generate_page(&state, &web, StatusCode::OK, None, "", None)
}

pub async fn generate(State(state): State<AppState>, web: Web, body: Body) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (name, access) = (form.text("name"), form.text("access"));
    let req = NewKey {
        name: name.to_owned(),
        roles: vec![access.to_owned()],
        key_type: KeyType::Team,
        algorithm: Algorithm::Es256,
        public_key: None,
        expires_at: None,
    };
    match state.keys.create_key(&web.principal, req).await {
        Ok(key) => redirect(&format!("/access/integrations?created={}", key.id)),
        Err(e) => {
            let (status, m) = error_text(e);
            generate_page(&state, &web, status, Some(&m), name, Some(access))
        }
    }
}

pub async fn generate_individual(State(state): State<AppState>, web: Web, body: Body) -> Response {
    if let Err(r) = web.form(body).await {
        return r;
    }
    let req = NewKey {
        name: format!("{} (individual)", web.session.user.display_name())
            .chars()
            .take(100)
            .collect(),
        roles: Vec::new(),
        key_type: KeyType::Individual,
        algorithm: Algorithm::Es256,
        public_key: None,
        expires_at: None,
    };
    match state.keys.create_key(&web.principal, req).await {
        Ok(key) => redirect(&format!("/access/integrations?created={}", key.id)),
        Err(e) => error_page(Some(&web), e),
    }
}

/// **Download API Key**: the one-time download, for a session. A form post, since it spends
/// something; the answer is the `.p8` file as an attachment.
pub async fn download(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(refused) = web.form(body).await {
        return refused;
    }
    let scope = match web.principal.key_scope() {
        Ok(s) => s,
        Err(e) => return error_page(Some(&web), e),
    };
    match state.keys.download_private_key(&scope, &id).await {
        Ok((id, pem)) => {
            tracing::info!(key_id = %id, "private key downloaded (web)");
            crate::routes::keys::pem_attachment(id, &pem)
        }
        Err(e) => error_page(Some(&web), e),
    }
}

pub async fn revoke_confirm(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
) -> Response {
    let key = match web.principal.key_scope() {
        Ok(scope) => state.keys.get_key(&scope, &id).await,
        Err(e) => Err(e),
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return error_page(Some(&web), e),
    };
    super::revoke_page(
        &web,
        &super::RevokeQuestion {
            kind: "API Key",
            name: &key.name,
            id: key.id.as_str(),
            consequence: "Tokens signed with it are refused at once, on every node.",
            action: format!("/access/keys/{}/revoke", key.id),
            button_id: "confirm-revoke",
        },
    )
}

pub async fn revoke(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let reason = super::revoke_reason(&form);
    let result = match web.principal.key_scope() {
        Ok(scope) => state.keys.revoke_key(&scope, &id, reason).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(key) => {
            tracing::info!(key_id = %key.id, "key revoked (web)");
            redirect(&format!("/access/integrations?revoked={}", key.id))
        }
        Err(e) => error_page(Some(&web), e),
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn audit_log(
    State(state): State<AppState>,
    web: Web,
    Query(q): Query<AuditQuery>,
) -> Response {
    let page = match web.principal.admin() {
        Ok(admin) => state.keys.audit_events(&admin, q.before, 100).await,
        Err(e) => Err(e),
    };
    let page = match page {
        Ok(p) => p,
        Err(e) => return error_page(Some(&web), e),
    };
    let content = html! {
        h1 { "Audit Log" }
        p { (page.total) " events, newest first. Each event is chained to the one before it; " code { "keygate audit verify" } " checks the chain." }
        table {
            thead { tr {
                th scope="col" { "Time (UTC)" } th scope="col" { "Actor" } th scope="col" { "Action" }
                th scope="col" { "Target" } th scope="col" { "Source" }
            } }
            tbody {
                @for e in &page.items {
                    tr {
                        td { (date(e.event.at)) }
                        td { (e.event.actor) }
                        td { (e.event.action.as_str()) }
                        td { code { (e.event.target) } }
                        td { (e.event.source_ip.map(|ip| ip.to_string()).unwrap_or_default()) }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p { a href=(format!("/access/audit?before={next}")) { "Older events" } }
        }
    };
    html_response(StatusCode::OK, layout("Audit Log", Some(&web), &content))
}
