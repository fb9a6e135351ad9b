//! Users and Access → Integrations → Secret Keys: the list, the create form with restrictions,
//! the secret shown once (with a copy button), rolling and revoking.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keygate_core::secret_key::{NewSecretKey, Restrictions, SecretKey, SecretKeyText};
use maud::{Markup, html};
use serde_json::json;

use super::{
    CSRF_FIELD, Form, Web, alert, date, error_page, error_text, html_response, layout, redirect,
    role_select, roles_text,
};
use crate::AppState;

/// The Secret Keys section of Integrations (admins only): the live keys; revoked and expired
/// ones are listed under Revoked with the API keys.
pub(super) fn section(keys: &[&SecretKey], now: i64) -> Markup {
    html! {
        section aria-labelledby="secret-heading" {
            div.section-head {
                h2 id="secret-heading" { "Secret Keys" }
                a.button id="create-secret-key" href="/access/secret-keys/new" { "Create Secret Key" }
            }
            p.help { "For callers that cannot sign tokens, such as a web page: send X-Api-Key. Restrict each key to its websites, addresses and APIs." }
            @if keys.is_empty() {
                p { "No secret keys." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Key ID" } th scope="col" { "Access" }
                        th scope="col" { "Secret" } th scope="col" { "Restrictions" } th scope="col" { "Created" }
                        th scope="col" { "Last Used" } th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for k in keys {
                            tr data-secret-key-id=(k.id.as_str()) {
                                td { (k.name) }
                                td { code { (k.id.as_str()) } }
                                td { (roles_text(&k.roles)) }
                                td { @for v in k.live_versions(now) { code { (v.hint) } " " } }
                                td { (restrictions_text(&k.restrictions)) }
                                td { (date(k.created_at)) }
                                td { (k.last_used_at.map_or_else(|| "Never".into(), date)) }
                                td {
                                    a href=(format!("/access/secret-keys/{}/roll", k.id)) { "Roll" span.visually-hidden { " " (k.name) } }
                                    " "
                                    a href=(format!("/access/secret-keys/{}/revoke", k.id)) { "Revoke" span.visually-hidden { " " (k.name) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn restrictions_text(r: &Restrictions) -> String {
    let mut parts = Vec::new();
    if !r.referrers.is_empty() {
        parts.push(format!(
            "Websites: {}",
            r.referrers
                .iter()
                .map(keygate_core::secret_key::ReferrerPattern::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !r.ip_ranges.is_empty() {
        parts.push(format!(
            "IPs: {}",
            r.ip_ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !r.apis.is_empty() {
        parts.push(format!(
            "APIs: {}",
            r.apis
                .iter()
                .map(keygate_core::policy::RoutePattern::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if parts.is_empty() {
        "None".into()
    } else {
        parts.join("; ")
    }
}

/// One entry per non-empty line.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn new_page(
    state: &AppState,
    web: &Web,
    status: StatusCode,
    message: Option<&str>,
    form: Option<&Form>,
) -> Response {
    let v = |name: &str| form.map(|f| f.text(name).to_owned()).unwrap_or_default();
    let content = html! {
        h1 { "Create Secret Key" }
        (alert(message))
        form.stack method="post" action="/access/secret-keys/new" {
            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
            label for="name" { "Name" }
            input id="name" name="name" type="text" required maxlength="100" value=(v("name"));
            label for="access" { "Access" }
            (role_select("access", "access", state.keys.roles(), form.map(|f| f.text("access")).or(Some("DEVELOPER"))))
            label for="referrers" { "Websites (one per line)" }
            textarea id="referrers" name="referrers" rows="3" aria-describedby="referrers-help" { (v("referrers")) }
            p.help id="referrers-help" { "Such as https://*.example.com/* or example.com. Empty: any website." }
            label for="ip_ranges" { "IP addresses (one per line)" }
            textarea id="ip_ranges" name="ip_ranges" rows="3" aria-describedby="ip-help" { (v("ip_ranges")) }
            p.help id="ip-help" { "IPv4 or IPv6 addresses or CIDR ranges, such as 192.0.2.0/24. Empty: any address." }
            label for="apis" { "APIs (one per line)" }
            textarea id="apis" name="apis" rows="3" aria-describedby="apis-help" { (v("apis")) }
            p.help id="apis-help" { "As in the policy file, such as GET /v1/maps/**. Empty: whatever the role allows." }
            label for="expires" { "Expires (optional, UTC date)" }
            input id="expires" name="expires" type="date" value=(v("expires"));
            div.actions {
                button type="submit" id="create" { "Create" }
                " "
                a href="/access/integrations" { "Cancel" }
            }
        }
    };
    html_response(status, layout("Create Secret Key", Some(web), &content))
}

pub async fn new_form(State(state): State<AppState>, web: Web) -> Response {
    if let Err(e) = web.principal.admin() {
        return error_page(Some(&web), e);
    }
    new_page(&state, &web, StatusCode::OK, None, None)
}

/// The one time a secret is shown.
fn secret_page(web: &Web, key: &SecretKey, secret: &SecretKeyText, rolled: bool) -> Response {
    let content = html! {
        h1 { (if rolled { "Secret Key Rolled" } else { "Secret Key Created" }) }
        div.notice role="status" {
            p { strong { "Copy this secret now. It will not be shown again:" } " keygate keeps only its hash." }
            @if rolled {
                p { "The old secret keeps working until the time you chose; then only this one does." }
            }
        }
        p { label for="secret" { "Secret key for \u{201c}" (key.name) "\u{201d} (" (key.id.as_str()) ")" } }
        p.copy-row {
            input id="secret" type="text" readonly value=(secret.expose()) size="60" autocomplete="off" spellcheck="false";
            " "
            button type="button" id="copy-secret" data-copy="secret" { "Copy" }
            span.copied role="status" aria-live="polite" {}
        }
        p { a href="/access/integrations" { "Done" } }
    };
    html_response(StatusCode::OK, layout("Secret Key", Some(web), &content))
}

pub async fn create(State(state): State<AppState>, web: Web, body: Body) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let result = async {
        let admin = web.principal.admin()?;
        let restrictions = Restrictions::from_json(&json!({
            "referrers": lines(form.text("referrers")),
            "ipRanges": lines(form.text("ip_ranges")),
            "apis": lines(form.text("apis")),
        }))?;
        let expires_at = match form.text("expires").trim() {
            "" => None,
            d => Some(
                keygate_core::time_fmt::parse_rfc3339(&format!("{d}T00:00:00Z")).ok_or_else(
                    || {
                        keygate_core::Error::attribute(
                            "expiresAt",
                            "Expires is a date such as 2027-01-31.",
                        )
                    },
                )?,
            ),
        };
        let req = NewSecretKey {
            name: form.text("name").to_owned(),
            roles: vec![form.text("access").to_owned()],
            restrictions,
            expires_at,
        };
        state.secrets.create(&admin, req).await
    }
    .await;
    match result {
        Ok((key, secret)) => secret_page(&web, &key, &secret, false),
        Err(e) => {
            let (status, m) = error_text(e);
            new_page(&state, &web, status, Some(&m), Some(&form))
        }
    }
}

pub async fn roll_confirm(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
) -> Response {
    let key = match web.principal.admin() {
        Ok(admin) => state.secrets.get(&admin, &id).await,
        Err(e) => Err(e),
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return error_page(Some(&web), e),
    };
    let content = html! {
        h1 { "Roll Secret Key?" }
        p { "\u{201c}" (key.name) "\u{201d} (" code { (key.id.as_str()) } ") gets a new secret, shown once. Give the old one time to be replaced where it is used." }
        form.stack method="post" action=(format!("/access/secret-keys/{}/roll", key.id)) {
            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
            label for="overlap" { "The old secret keeps working for" }
            select id="overlap" name="overlap" {
                option value="0" { "No time: stop it now" }
                option value="3600" { "1 hour" }
                option value="86400" selected { "24 hours" }
                option value="604800" { "7 days" }
            }
            div.actions {
                button type="submit" id="confirm-roll" { "Roll" }
                " "
                a href="/access/integrations" { "Cancel" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout("Roll Secret Key", Some(&web), &content),
    )
}

pub async fn roll(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let form = match web.form(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let overlap: i64 = form
        .text("overlap")
        .parse()
        .unwrap_or(0)
        .clamp(0, 7 * 24 * 3600);
    let result = match web.principal.admin() {
        Ok(admin) => {
            let until = state.secrets.now().saturating_add(overlap);
            state.secrets.roll(&admin, &id, Some(until)).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((key, secret)) => secret_page(&web, &key, &secret, true),
        Err(e) => error_page(Some(&web), e),
    }
}

pub async fn revoke_confirm(
    State(state): State<AppState>,
    web: Web,
    Path(id): Path<String>,
) -> Response {
    let key = match web.principal.admin() {
        Ok(admin) => state.secrets.get(&admin, &id).await,
        Err(e) => Err(e),
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return error_page(Some(&web), e),
    };
    super::revoke_page(
        &web,
        &super::RevokeQuestion {
            kind: "Secret Key",
            name: &key.name,
            id: key.id.as_str(),
            consequence: "Requests with any of its secrets are refused at once, on every node.",
            action: format!("/access/secret-keys/{}/revoke", key.id),
            button_id: "confirm-revoke-secret",
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
    let result = match web.principal.admin() {
        Ok(admin) => state.secrets.revoke(&admin, &id, reason).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(key) => redirect(&format!("/access/integrations?revoked_secret={}", key.id)),
        Err(e) => error_page(Some(&web), e),
    }
}
