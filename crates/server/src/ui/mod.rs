//! The web UI (SPEC §6.4): server-rendered pages that work without JavaScript.
//!
//! Pages call the same core services as the management API, with the same permission proofs;
//! this module only renders and reads forms. Every page is `Cache-Control: no-store` (they show
//! issuer data, download forms and one-time links) and carries a strict CSP whose only script is
//! `/static/copy.js` (the Copy button; every page works without it). Every state-changing form carries a CSRF token: for a signed-in user the one derived
//! from the session ID, before sign-in a double-submit value from a short-lived cookie.

// A refusal here is the finished page; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod access;
mod account;
mod people;
mod secret_keys;
mod sign_in;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use keygate_core::authz::Principal;
use keygate_core::error::Error;
use keygate_core::people::{UserService, csrf_token};
use keygate_core::role::{Role, RoleCatalog};
use keygate_core::secret::{BearerSecret, constant_time_eq};
use keygate_core::user::Session;
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use crate::auth::{client_addr, cookie, csrf_matches};
use crate::error::ErrorBody;

/// The pre-session CSRF cookie (sign-in, setup and invitation forms).
/// The form field every state-changing form carries.
const CSRF_FIELD: &str = "csrf_token";
/// The largest form body read.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// One page route: its path, the methods it answers, and whether it needs a signed-in session.
/// The router is built from [`page_routes`], and `tests/pages.rs` walks the same list: a page
/// cannot be added without its session and CSRF checks being tested.
pub struct PageRoute {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    /// Needs a signed-in session (else it is public: sign-in, setup, invitations, assets).
    pub session: bool,
    handler: MethodRouter<AppState>,
}

impl std::fmt::Debug for PageRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRoute")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn page(
    path: &'static str,
    methods: &'static [&'static str],
    session: bool,
    handler: MethodRouter<AppState>,
) -> PageRoute {
    PageRoute {
        path,
        methods,
        session,
        handler,
    }
}

/// Every page of the web UI.
#[allow(clippy::too_many_lines)] // one entry per page, in order: splitting the list would hide it
pub fn page_routes() -> Vec<PageRoute> {
    const GET: &[&str] = &["GET"];
    const POST: &[&str] = &["POST"];
    const BOTH: &[&str] = &["GET", "POST"];
    vec![
        page("/", GET, false, get(home)),
        page("/static/keygate.css", GET, false, get(stylesheet)),
        page("/static/copy.js", GET, false, get(copy_script)),
        page(
            "/setup/{link}",
            BOTH,
            false,
            get(sign_in::setup_form).post(sign_in::setup_submit),
        ),
        page(
            "/signin",
            BOTH,
            false,
            get(sign_in::sign_in_form).post(sign_in::sign_in_submit),
        ),
        page("/signout", POST, true, post(sign_in::sign_out)),
        page(
            "/reset/{link}",
            BOTH,
            false,
            get(sign_in::reset_form).post(sign_in::reset_submit),
        ),
        page("/account", GET, true, get(account::account)),
        page(
            "/account/password",
            POST,
            true,
            post(account::change_password),
        ),
        page(
            "/account/signout-everywhere",
            POST,
            true,
            post(account::sign_out_everywhere),
        ),
        page(
            "/invitations/{link}",
            BOTH,
            false,
            get(sign_in::accept_form).post(sign_in::accept_submit),
        ),
        page("/access/people", GET, true, get(people::people)),
        page("/access/people/invite", POST, true, post(people::invite)),
        page(
            "/access/people/{id}/roles",
            BOTH,
            true,
            get(people::roles_form).post(people::change_roles),
        ),
        page(
            "/access/people/{id}/remove",
            BOTH,
            true,
            get(people::remove_confirm).post(people::remove),
        ),
        page(
            "/access/invitations/{id}/cancel",
            POST,
            true,
            post(people::cancel_invitation),
        ),
        page("/access/integrations", GET, true, get(access::integrations)),
        page(
            "/access/integrations/generate",
            BOTH,
            true,
            get(access::generate_form).post(access::generate),
        ),
        page(
            "/access/integrations/individual",
            POST,
            true,
            post(access::generate_individual),
        ),
        page(
            "/access/keys/{id}/download",
            POST,
            true,
            post(access::download),
        ),
        page(
            "/access/keys/{id}/revoke",
            BOTH,
            true,
            get(access::revoke_confirm).post(access::revoke),
        ),
        page("/access/audit", GET, true, get(access::audit_log)),
        page(
            "/access/secret-keys/new",
            BOTH,
            true,
            get(secret_keys::new_form).post(secret_keys::create),
        ),
        page(
            "/access/secret-keys/{id}/roll",
            BOTH,
            true,
            get(secret_keys::roll_confirm).post(secret_keys::roll),
        ),
        page(
            "/access/secret-keys/{id}/revoke",
            BOTH,
            true,
            get(secret_keys::revoke_confirm).post(secret_keys::revoke),
        ),
    ]
}

pub fn router() -> Router<AppState> {
    page_routes()
        .into_iter()
        .fold(Router::new(), |r, p| r.route(p.path, p.handler))
        .layer(middleware::from_fn(page_headers))
}

/// No caching, no framing, no script but our own, no referrer (setup and invitation URLs hold
/// secrets).
async fn page_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn stylesheet() -> Response {
    let mut resp = Response::new(Body::from(include_str!("keygate.css")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp
}

/// The one script: the copy button of a secret shown once. Pages work without it.
async fn copy_script() -> Response {
    let mut resp = Response::new(Body::from(include_str!("copy.js")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    resp
}

async fn home(
    headers: HeaderMap,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Response {
    let signed_in = match cookie(&headers, state.cookies.session) {
        Some(id) => matches!(state.users.session(id).await, Ok(Some(_))),
        None => false,
    };
    redirect(if signed_in {
        "/access/integrations"
    } else {
        "/signin"
    })
}

/// A signed-in user, from the session cookie. Pages that need one redirect to sign-in without it.
pub struct Web {
    pub session: Session,
    /// The CSRF token forms of this session carry.
    pub csrf: String,
    pub principal: Principal,
    session_id: String,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Web {
    /// Reads a submitted form and checks its CSRF token: every state-changing page of a
    /// session goes through here.
    async fn form(&self, body: Body) -> Result<Form, Response> {
        let form = read_form(body).await?;
        self.check_csrf(&form)?;
        Ok(form)
    }

    /// Checks the CSRF token of a submitted form.
    fn check_csrf(&self, form: &Form) -> Result<(), Response> {
        if csrf_matches(&self.session_id, form.get(CSRF_FIELD)) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }

    fn is_admin(&self) -> bool {
        self.principal.roles.is_admin()
    }
}

impl FromRequestParts<AppState> for Web {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(id) = cookie(&parts.headers, state.cookies.session).map(str::to_owned) else {
            return Err(redirect("/signin"));
        };
        match state.users.session(&id).await {
            Ok(Some(session)) => {
                let csrf = BearerSecret::parse(&id)
                    .map(|s| csrf_token(&s))
                    .unwrap_or_default();
                let principal = UserService::principal(&session, client_addr(parts, state));
                Ok(Self {
                    session,
                    csrf,
                    principal,
                    session_id: id,
                })
            }
            Ok(None) => {
                let mut resp = redirect("/signin?expired=1");
                clear_cookie(&mut resp, state.cookies.session);
                Err(resp)
            }
            Err(e) => Err(error_page(None, e)),
        }
    }
}

/// A submitted `application/x-www-form-urlencoded` body. May hold passwords: its `Debug` shows
/// field names only, and its values are zeroized on drop.
#[derive(Default)]
pub struct Form(Vec<(String, String)>);

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a repeated field (checkboxes), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// A field's value, or empty.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }
    /// Takes a field's value out (for passwords, which should not linger).
    pub fn take(&mut self, name: &str) -> String {
        self.0
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }
}

impl Drop for Form {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for (_, v) in &mut self.0 {
            v.zeroize();
        }
    }
}

async fn read_form(body: Body) -> Result<Form, Response> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            message_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form is larger than keygate accepts.",
            )
        })?;
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .map(Form)
        .map_err(|_| {
            message_page(
                StatusCode::BAD_REQUEST,
                "Unreadable form",
                "The form could not be read. Reload the page and try again.",
            )
        })
}

fn csrf_refused() -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form has expired or did not come from keygate (its security token is missing or wrong). Go back, reload the page and try again.",
    )
}

/// A fresh pre-session form token and the cookie that holds it.
fn pre_session_token(headers: &HeaderMap, state: &AppState) -> (String, Option<HeaderValue>) {
    if let Some(existing) =
        cookie(headers, state.cookies.form).filter(|v| BearerSecret::parse(v).is_some())
    {
        return (existing.to_owned(), None);
    }
    let token = BearerSecret::generate()
        .map(|s| s.expose().to_owned())
        .unwrap_or_default();
    let cookie = cookie_header(
        state.cookies.form,
        &token,
        Some(3600),
        is_secure(headers, state),
    );
    (token, cookie)
}

/// Reads a form sent before sign-in and checks its double-submit token.
async fn pre_session_form(
    headers: &HeaderMap,
    state: &AppState,
    body: Body,
) -> Result<Form, Response> {
    let form = read_form(body).await?;
    check_pre_session(headers, state, &form)?;
    Ok(form)
}

/// Checks the double-submit token of a form sent before sign-in.
fn check_pre_session(headers: &HeaderMap, state: &AppState, form: &Form) -> Result<(), Response> {
    match (cookie(headers, state.cookies.form), form.get(CSRF_FIELD)) {
        (Some(c), Some(f)) if !c.is_empty() && constant_time_eq(c, f) => Ok(()),
        _ => Err(csrf_refused()),
    }
}

fn is_secure(headers: &HeaderMap, state: &AppState) -> bool {
    state.cookies.tls
        || state.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `scheme://host` as people reach keygate, for links a person passes on: `public_url` when it
/// is set (never the request's `Host`, which a proxy may pass through from anyone); otherwise
/// the `Host` the browser sent.
fn origin(headers: &HeaderMap, state: &AppState) -> String {
    if let Some(url) = &state.public_url {
        return url.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = if is_secure(headers, state) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

fn cookie_header(
    name: &str,
    value: &str,
    max_age: Option<i64>,
    secure: bool,
) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        let _ = write!(c, "; Max-Age={age}");
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).ok()
}

fn clear_cookie(resp: &mut Response, name: &str) {
    // A `__Host-` cookie is only ever set, or cleared, with `Secure`.
    let secure = if name.starts_with("__Host-") {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The answer after a sign-out (here or everywhere): to sign-in, with keygate's cookies cleared.
fn signed_out(state: &AppState) -> Response {
    let mut resp = redirect("/signin?signed_out=1");
    clear_cookie(&mut resp, state.cookies.session);
    clear_cookie(&mut resp, state.cookies.form);
    resp
}

/// Signs the browser in: the session cookie, and the pre-session cookie cleared.
fn start_session(
    headers: &HeaderMap,
    state: &AppState,
    session: &keygate_core::people::NewSession,
    to: &str,
) -> Response {
    let mut resp = redirect(to);
    if let Some(c) = cookie_header(
        state.cookies.session,
        session.id.expose(),
        None,
        is_secure(headers, state),
    ) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    clear_cookie(&mut resp, state.cookies.form);
    resp
}

/// `303 See Other`: after a form, the browser loads the next page with `GET`.
fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The page frame: header with navigation for a signed-in user, then `content`.
fn layout(title: &str, web: Option<&Web>, content: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – keygate" }
                link rel="stylesheet" href="/static/keygate.css";
                script src="/static/copy.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "keygate" }
                    @if let Some(w) = web {
                        nav aria-label="Main" {
                            a href="/access/integrations" { "Users and Access" }
                            @if w.is_admin() {
                                a href="/access/audit" { "Audit Log" }
                            }
                        }
                        form.signout method="post" action="/signout" {
                            input type="hidden" name=(CSRF_FIELD) value=(w.csrf);
                            a.who href="/account" { (w.session.user.display_name()) }
                            button type="submit" { "Sign Out" }
                        }
                    }
                }
                main id="main" { (content) }
            }
        }
    }
}

/// A page with a heading and one paragraph, for outcomes and refusals.
fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    let content = html! {
        h1 { (title) }
        p.error role="alert" { (text) }
        p { a href="/" { "Back to keygate" } }
    };
    html_response(status, layout(title, None, &content))
}

/// A domain error as a page: the same status and explanation as the API would give.
fn error_page(web: Option<&Web>, e: Error) -> Response {
    let (body, log) = ErrorBody::from_error(e);
    if let Some(log) = log {
        tracing::error!(status = body.status, "{log}");
    }
    let status = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content = html! {
        h1 { (body.title) }
        p.error role="alert" { (body.detail) }
        p { a href="/access/integrations" { "Back to Users and Access" } }
    };
    html_response(status, layout(body.title, web, &content))
}

/// The detail text of an error, for showing next to a form.
fn error_text(e: Error) -> (StatusCode, String) {
    let (body, log) = ErrorBody::from_error(e);
    if let Some(log) = log {
        tracing::error!(status = body.status, "{log}");
    }
    (
        StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.detail,
    )
}

/// What a revocation asks before it happens: the key, what revoking does, an optional reason.
struct RevokeQuestion<'a> {
    /// "API Key" or "Secret Key".
    kind: &'a str,
    name: &'a str,
    id: &'a str,
    consequence: &'a str,
    action: String,
    button_id: &'a str,
}

fn revoke_page(web: &Web, q: &RevokeQuestion<'_>) -> Response {
    let content = html! {
        h1 { "Revoke " (q.kind) "?" }
        p { "Revoke \u{201c}" (q.name) "\u{201d} (" code { (q.id) } ")? " (q.consequence) " This cannot be undone." }
        form.stack method="post" action=(q.action) {
            input type="hidden" name=(CSRF_FIELD) value=(web.csrf);
            label for="reason" { "Reason (optional)" }
            input id="reason" name="reason" type="text" maxlength="500";
            div.actions {
                button.danger type="submit" id=(q.button_id) { "Revoke" }
                " "
                a href="/access/integrations" { "Cancel" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout(&format!("Revoke {}", q.kind), Some(web), &content),
    )
}

/// The optional reason of a revocation form.
fn revoke_reason(form: &Form) -> Option<&str> {
    form.get("reason").map(str::trim).filter(|r| !r.is_empty())
}

/// An error banner, if there is a message.
fn alert(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            div.error role="alert" { (m) }
        }
    }
}

/// The roles a person may be given, for `<select>`s: every known role but `ACCOUNT_HOLDER`.
fn grantable(catalog: &RoleCatalog) -> Vec<&Role> {
    catalog
        .iter()
        .filter(|r| r.as_str() != Role::ACCOUNT_HOLDER)
        .collect()
}

/// `APP_MANAGER` as "App Manager".
fn role_label(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn role_select(id: &str, name: &str, catalog: &RoleCatalog, selected: Option<&str>) -> Markup {
    html! {
        select id=(id) name=(name) required {
            @for r in grantable(catalog) {
                option value=(r.as_str()) selected[selected == Some(r.as_str())] { (role_label(r.as_str())) }
            }
        }
    }
}

/// A person's roles, as a group of checkboxes (a person may hold several roles; a select would
/// quietly drop all but one).
fn role_checkboxes(name: &str, legend: &str, catalog: &RoleCatalog, checked: &[&str]) -> Markup {
    html! {
        fieldset.roles {
            legend { (legend) }
            @for r in grantable(catalog) {
                @let id = format!("{name}-{}", r.as_str());
                div {
                    input type="checkbox" id=(id) name=(name) value=(r.as_str()) checked[checked.contains(&r.as_str())];
                    " "
                    label for=(id) { (role_label(r.as_str())) }
                }
            }
        }
    }
}

fn roles_text(roles: &keygate_core::role::RoleSet) -> String {
    roles
        .iter()
        .map(|r| role_label(r.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn date(t: i64) -> String {
    keygate_core::time_fmt::rfc3339(t)
        .get(..16)
        .map(|d| d.replace('T', " "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_labels_read_as_words() {
        assert_eq!(role_label("APP_MANAGER"), "App Manager");
        assert_eq!(role_label("ADMIN"), "Admin");
        assert_eq!(date(0), "1970-01-01 00:00");
    }
}
