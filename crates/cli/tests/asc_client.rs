//! A real App Store Connect client library, unchanged, behind keygate's reverse proxy:
//! Microsoft's `asconnect` from `PyPI` (installed by `scripts/test` into
//! `target/test-deps/asc-venv`). It signs its own ES256 tokens from the `.p8` keygate handed out,
//! for the `appstoreconnect-v1` audience, reuses them, and follows JSON:API `links.next` across
//! pages, so keygate must look like App Store Connect to it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
audiences = ["appstoreconnect-v1"]
[roles.DEVELOPER]
allow = ["GET /v1/apps/**"]
"#;

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/asc-venv");
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run ./scripts/test, which installs asconnect there",
        py.display()
    );
    py
}

/// What the fake App Store Connect upstream saw of one request: key ID, roles, Authorization.
type Sighting = (String, Option<String>, Option<String>);

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<Sighting>>);

#[derive(serde::Deserialize)]
struct Page {
    cursor: Option<u32>,
}

fn app(id: u32, base: &str) -> Value {
    json!({
        "type": "apps",
        "id": id.to_string(),
        "attributes": {
            "name": format!("App {id}"),
            "bundleId": format!("com.example.app{id}"),
            "sku": format!("SKU{id}"),
            "primaryLocale": "en-US",
            "isOrEverWasMadeForKids": false
        },
        "links": {"self": format!("{base}/v1/apps/{id}")}
    })
}

/// `GET /v1/apps` in two pages of one, with absolute `links` built from the public host the
/// proxy reports in `X-Forwarded-Host`, as App Store Connect's own links point at itself.
async fn apps(
    State(seen): State<Arc<Seen>>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let get = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    seen.0.lock().unwrap().push((
        get("x-keygate-key-id").unwrap_or_default(),
        get("x-keygate-roles"),
        get("authorization"),
    ));
    let base = format!("http://{}", get("x-forwarded-host").unwrap());
    let cursor = page.cursor.unwrap_or(1);
    let mut links = json!({"self": format!("{base}/v1/apps?cursor={cursor}&limit=1")});
    if cursor == 1 {
        links["next"] = json!(format!("{base}/v1/apps?cursor=2&limit=1"));
    }
    let doc = json!({
        "data": [app(cursor, &base)],
        "links": links,
        "meta": {"paging": {"total": 2, "limit": 1}}
    });
    (
        [("content-type", "application/json")],
        serde_json::to_vec(&doc).unwrap(),
    )
        .into_response()
}

/// Runs the venv's Python off the async runtime (the proxy under test shares this process's
/// runtime only through the test upstream, which must keep answering).
async fn run_python(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    let py = python();
    tokio::task::spawn_blocking(move || Command::new(py).args(args).envs(env).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asconnect_lists_apps_through_the_proxy_unchanged() {
    python();
    let seen = Arc::new(Seen::default());
    let upstream = serve_upstream(
        Router::new()
            .route("/v1/apps", get(apps))
            .with_state(Arc::clone(&seen)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, POLICY).unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--proxy-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ],
        &[],
    );
    let proxy = server.proxy.clone().unwrap();
    let admin = bootstrap(&server, &dir.path().join("out"));
    // The admin's own token must name the deployment's audience too.
    let (ok, admin_token, err) = keygate(&[
        "token",
        "--key",
        admin.key_file.to_str().unwrap(),
        "--key-id",
        &admin.key_id,
        "--issuer-id",
        &admin.issuer,
        "--audience",
        "appstoreconnect-v1",
    ]);
    assert!(ok, "{err}");
    let admin_token = admin_token.trim().to_owned();
    wait_until_accepted(&server, &admin_token).await;
    let dev_id = create_key(&server, &admin_token, &["DEVELOPER"]).await;
    let dev_file = dir.path().join(format!("AuthKey_{dev_id}.p8"));
    download_key(&server, &admin_token, &dev_id, &dev_file).await;

    let env = vec![
        ("KEY_ID", dev_id.clone()),
        ("ISSUER_ID", admin.issuer.clone()),
        ("KEY_FILE", dev_file.to_str().unwrap().to_owned()),
        ("BASE_URL", proxy.clone()),
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asc/list_apps.py");
    let out = run_python(vec![script.to_str().unwrap().to_owned()], env.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "asconnect failed: {stderr}\nkeygate log tail: {}",
        server
            .log
            .lock()
            .unwrap()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ids: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["1", "2"], "both pages, via links.next");
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (key, roles, authorization) in &seen {
        assert_eq!(key, &dev_id);
        assert_eq!(roles.as_deref(), Some("DEVELOPER"));
        assert_eq!(authorization, &None);
    }

    // The same library against a path the role does not allow fails with keygate's 403.
    let code = "import os, asconnect\n\
                c = asconnect.Client(key_id=os.environ['KEY_ID'], key_contents=open(os.environ['KEY_FILE']).read(), issuer_id=os.environ['ISSUER_ID'])\n\
                c.http_client.generate_url = lambda e: os.environ['BASE_URL'] + '/v1/' + e\n\
                list(c.build.get_builds())\n";
    let out = run_python(vec!["-c".to_owned(), code.to_owned()], env).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("FORBIDDEN_ERROR"),
        "{stderr}"
    );
}
