//! Crash safety: `keygate serve` is killed with SIGKILL in the middle of streams of key
//! creations, downloads and revocations, then restarted on the same `SQLite` file. Every write
//! acknowledged to a client survives; no key is both downloadable and downloaded; no revoked key
//! is active again; `PRAGMA integrity_check` passes; the audit chain verifies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)] // test code: a failed expectation should panic; the scenario reads top to bottom

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sqlx::Connection as _;

/// What clients were told succeeded.
#[derive(Default)]
struct Acked {
    created: BTreeSet<String>,
    downloaded: BTreeSet<String>,
    revoked: BTreeSet<String>,
    /// The private keys handed out, to sign with after the crashes.
    pems: BTreeMap<String, String>,
}

async fn load(server_base: String, token: String, acked: Arc<Mutex<Acked>>, stop: Instant) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut n = 0u32;
    while Instant::now() < stop {
        n += 1;
        let created = client
            .post(format!("{server_base}/v1/apiKeys"))
            .bearer_auth(&token)
            .json(&json!({"data": {"type": "apiKeys", "attributes": {"name": format!("crash {n}"), "roles": ["DEVELOPER"]}}}))
            .send()
            .await;
        let Ok(resp) = created else { return };
        if resp.status() != 201 {
            continue;
        }
        let Ok(doc) = resp.json::<Value>().await else {
            return;
        };
        let id = doc["data"]["id"].as_str().unwrap().to_owned();
        acked.lock().unwrap().created.insert(id.clone());
        // Every other key is downloaded, every third revoked (some both).
        if n % 2 == 0 {
            let Ok(resp) = client
                .get(format!("{server_base}/v1/apiKeys/{id}/privateKey"))
                .bearer_auth(&token)
                .send()
                .await
            else {
                return;
            };
            if resp.status() == 200
                && let Ok(pem) = resp.text().await
                && !pem.is_empty()
            {
                let mut a = acked.lock().unwrap();
                a.downloaded.insert(id.clone());
                a.pems.insert(id.clone(), pem);
            }
        }
        if n % 3 == 0 {
            let Ok(resp) = client
                .patch(format!("{server_base}/v1/apiKeys/{id}"))
                .bearer_auth(&token)
                .json(&json!({"data": {"type": "apiKeys", "attributes": {"isActive": false}}}))
                .send()
                .await
            else {
                return;
            };
            if resp.status() == 200 {
                acked.lock().unwrap().revoked.insert(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db_url = format!("sqlite://{}/keygate.db", data.display());
    // The streams create more keys than App Store Connect's 50 active team keys.
    let env = [("KEYGATE_MAX_ACTIVE_TEAM_KEYS", "100000")];
    let mut server = Server::start_with(&data, &[], &env);
    let admin = bootstrap(&server, dir.path());
    let token = || cli_token(&admin.key_file, &admin.key_id, &admin.issuer);
    wait_until_accepted(&server, &token()).await;
    let acked = Arc::new(Mutex::new(Acked::default()));

    for round in 0..3 {
        // Three clients write; once a few writes of this round are acknowledged (however slow
        // the machine), the server is killed while they go on. They stop at the kill; `stop`
        // only bounds a run whose server never answers.
        let stop = Instant::now() + Duration::from_secs(60);
        let before = acked.lock().unwrap().created.len();
        let streams: Vec<_> = (0..3)
            .map(|_| tokio::spawn(load(server.base.clone(), token(), Arc::clone(&acked), stop)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().created.len() < before + 3 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no writes acknowledged in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A different moment in each round's stream of creations, downloads and revocations.
        tokio::time::sleep(Duration::from_millis(150 * round)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for s in streams {
            s.await.unwrap();
        }
        drop(server);
        server = Server::start_on(&db_url, &[], &env).0;
    }

    // Every acknowledged write survived, with the state it was acknowledged in.
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let client = http();
    let mut all: Vec<Value> = Vec::new();
    let mut next = Some("/v1/apiKeys?limit=200".to_owned());
    while let Some(path) = next.take() {
        let doc: Value = client
            .get(server.url(&path))
            .bearer_auth(token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.extend(doc["data"].as_array().unwrap().iter().cloned());
        next = doc["links"]["next"].as_str().map(str::to_owned);
    }
    let by_id = |id: &str| {
        all.iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("acknowledged key {id} is gone"))
            .clone()
    };
    for id in &acked.created {
        by_id(id);
    }
    for id in &acked.downloaded {
        let k = by_id(id);
        assert_eq!(k["attributes"]["canDownload"], false, "{id} was downloaded");
        assert_eq!(k["attributes"]["privateKeyState"], "DOWNLOADED", "{id}");
        let again = client
            .get(server.url(&format!("/v1/apiKeys/{id}/privateKey")))
            .bearer_auth(token())
            .send()
            .await
            .unwrap();
        assert_eq!(
            again.status(),
            410,
            "{id} downloads once, even across a crash"
        );
    }
    for id in &acked.revoked {
        assert_eq!(
            by_id(id)["attributes"]["isActive"],
            false,
            "{id} stays revoked"
        );
    }
    // The data plane agrees after the restarts: a downloaded key's token passes while the key
    // is active and is refused as revoked once it is not, so no revoked key is active again.
    let now = keygate_core::clock::Clock::now(&keygate_core::clock::SystemClock);
    for (id, pem) in &acked.pems {
        let signer = keygate_core::token::Signer::from_pem(
            &keygate_core::crypto::PrivateKeyPem::from_pem(pem.clone()),
        )
        .unwrap();
        let jwt = keygate_core::token::sign_jwt(
            &signer,
            id,
            &json!({"iss": admin.issuer, "aud": "keygate-v1", "exp": now + 600}),
        )
        .unwrap();
        let active = by_id(id)["attributes"]["isActive"] == true;
        let resp = client
            .get(server.url("/authz/v1/apps"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let doc: Value = resp.json().await.unwrap_or(Value::Null);
        let reason = doc["errors"][0]["meta"]["reason"].as_str().unwrap_or("");
        if active {
            assert_eq!(status, 200, "{id} is active: {doc}");
        } else {
            assert_eq!((status, reason), (401, "KEY_REVOKED"), "{id} is revoked");
        }
    }
    assert!(!acked.pems.is_empty(), "some keys were downloaded");
    eprintln!(
        "acknowledged across 3 crashes: {} created, {} downloaded, {} revoked; {} downloaded keys' tokens checked, {} of them revoked",
        acked.created.len(),
        acked.downloaded.len(),
        acked.revoked.len(),
        acked.pems.len(),
        acked
            .pems
            .keys()
            .filter(|id| acked.revoked.contains(*id))
            .count()
    );

    // No key both downloadable and downloaded, in the API's view...
    for k in &all {
        let a = &k["attributes"];
        if a["canDownload"] == true {
            assert_eq!(a["privateKeyState"], "PENDING", "{k}");
        }
    }
    let total = all.len();
    drop(server);

    // ...and in the file itself, which is intact.
    let mut db = sqlx::SqliteConnection::connect(&format!("{db_url}?mode=ro"))
        .await
        .unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let orphan_sealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pending_private_keys p JOIN api_keys k ON k.id = p.key_id WHERE k.private_key_state != 'PENDING'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        orphan_sealed, 0,
        "a downloaded or erased key still has a sealed copy"
    );
    let unsealed_pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE private_key_state = 'PENDING' AND id NOT IN (SELECT key_id FROM pending_private_keys)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(unsealed_pending, 0, "a pending key lost its sealed copy");
    let revoked_but_active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE revoke_reason IS NOT NULL AND revoked_at IS NULL",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(revoked_but_active, 0);
    db.close().await.unwrap();

    // The audit chain verifies, link by link.
    let (ok, out, err) = keygate(&["audit", "verify", "--database", &db_url]);
    assert!(ok, "audit verify after crashes: {out} {err}");
    assert!(
        acked.created.len() >= 9 && total >= acked.created.len(),
        "{} acknowledged, {total} listed",
        acked.created.len()
    );
}
