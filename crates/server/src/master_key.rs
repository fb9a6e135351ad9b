//! Where the master key comes from: `KEYGATE_MASTER_KEY` (base64 of 32 bytes), or a `master.key`
//! file (mode 0600) beside the `SQLite` database, created on first start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use keygate_core::crypto::MasterKey;

use crate::config::ConfigError;

/// Resolves the master key for a database URL.
pub fn resolve(env_value: Option<String>, database_url: &str) -> Result<MasterKey, ConfigError> {
    if let Some(text) = env_value {
        return MasterKey::from_base64(&text)
            .map_err(|e| ConfigError(format!("KEYGATE_MASTER_KEY: {e}")));
    }
    let Some(db) = keygate_store::sqlite_path(database_url) else {
        return Err(ConfigError(
            "KEYGATE_MASTER_KEY is required with a non-SQLite database (every node must share it)"
                .into(),
        ));
    };
    load_or_create(&key_file_for(&db))
}

/// `master.key` in the database's folder.
pub fn key_file_for(db: &Path) -> PathBuf {
    db.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("master.key")
}

fn load_or_create(path: &Path) -> Result<MasterKey, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            make_owner_only(path);
            MasterKey::from_base64(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes a new key to a private temporary file and links it into place, so another process
/// starting at the same moment sees either no file or a complete one, and the first one wins.
fn create(path: &Path) -> Result<MasterKey, ConfigError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        keygate_store::create_private_dir(dir).map_err(|e| ConfigError(e.to_string()))?;
    }
    let key = MasterKey::generate().map_err(|e| ConfigError(e.to_string()))?;
    // A random name: process IDs repeat across containers sharing a volume.
    let suffix = keygate_core::ids::KeyId::generate().map_err(|e| ConfigError(e.to_string()))?;
    let temp = path.with_extension(format!("key.{suffix}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(key.to_base64().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(ConfigError(format!("cannot write {}: {e}", temp.display())));
    }
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new master key");
            Ok(key)
        }
        // Another process (a second node, `admin bootstrap`) created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(ConfigError(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(unix)]
fn make_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        // Made owner-only again, as the database files are; said loudly, since someone
        // loosened it (and others may have read it meanwhile).
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "the master key file was readable by other users; it is 0600 again (if others could read it, rotate it)"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "the master key file is readable by other users and could not be made 0600; chmod 600 it"
            ),
        }
    }
}

#[cfg(not(unix))]
fn make_owner_only(_: &Path) {}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A master key file someone made readable by others is made owner-only again at start,
    /// as the database files are, and still opens.
    #[test]
    fn a_loosened_master_key_file_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/kg.db", dir.path().display());
        let first = resolve(None, &db).unwrap();
        let file = key_file_for(&dir.path().join("kg.db"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let again = resolve(None, &db).unwrap();
        assert_eq!(first.to_base64().as_str(), again.to_base64().as_str());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
