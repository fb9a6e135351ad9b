//! The `SQLite` file and its `-wal` and `-shm` are readable by their owner only, on every start:
//! they hold password hashes and sealed private keys.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut name = p.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn open_and_write(db: &Path) {
    let store = keygate_store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // A write, so the WAL and the shared-memory file exist.
    write_something(&store).await;
    for file in [
        db.to_owned(),
        with_suffix(db, "-wal"),
        with_suffix(db, "-shm"),
    ] {
        assert!(
            file.exists(),
            "{} exists while the store is open",
            file.display()
        );
        assert_eq!(mode(&file), 0o600, "{} is owner-only", file.display());
    }
}

#[tokio::test]
async fn the_database_files_are_owner_only_in_an_existing_folder() {
    let dir = tempfile::tempdir().unwrap();
    // A folder that already exists, world-readable (as a package or an operator may make it).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("kg.db");
    open_and_write(&db).await;
}

#[tokio::test]
async fn files_left_world_readable_are_made_owner_only_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kg.db");
    open_and_write(&db).await;
    for file in [
        db.clone(),
        with_suffix(&db, "-wal"),
        with_suffix(&db, "-shm"),
    ] {
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    open_and_write(&db).await;
}

/// Writes one issuer through the public store interface.
async fn write_something(store: &std::sync::Arc<dyn keygate_core::store::Store>) {
    use keygate_core::audit::{AuditAction, NewAuditEvent};
    use keygate_core::ids::{Actor, IssuerId};
    use keygate_core::store::Issuer;
    let id = IssuerId::generate();
    let issuer = Issuer {
        id,
        name: "test".into(),
        created_at: 1_795_687_200,
    };
    let audit = NewAuditEvent::new(
        id,
        1_795_687_200,
        &Actor::System("test"),
        AuditAction::IssuerCreated,
        id.to_string(),
    );
    store.create_issuer(&issuer, &audit).await.unwrap();
}
