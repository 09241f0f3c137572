//! The hub's data directory: keys, certificates, the store and Git mirrors.
//!
//! ```text
//! D/pki/ca.pem, ca-key.pem        cluster CA (key 0600)
//! D/pki/signing.key, signing.pub  Ed25519 ClusterState signing key (hex seed, 0600)
//! D/admin/ca.pem, admin.pem, admin-key.pem   the operator's client bundle
//! D/hub.redb                      the store: the Raft state machine's applied state (and its applied
//!                                 log id and membership, table raft_state_machine)
//! D/hub.redb.snapshot             the newest Raft snapshot of the store
//! D/raft-log.redb                 the Raft log, vote and last purged log id
//! D/mirrors/<source>/             bare Git mirrors
//! D/hub.addr                      the address `run` listens on
//! D/replica-id                    this replica's Raft node id: 1 from `init`, the next free id from
//!                                 `join` (absent in a directory from before: replica 1)
//! ```
//!
//! Directories the hub creates are mode 0700 and secret files and the store 0600, so no other local
//! user reads keys, tokens' hashes, ClusterStates or mirrored repositories.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::pki::{CertificateAuthority, PkiError};

/// The data directory could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Already initialized.
    #[error("{0} is already initialized (found pki/ca.pem)")]
    AlreadyInitialized(PathBuf),
    /// Not initialized.
    #[error("{0} is not initialized: run `flotilla-hub init --data-dir {0}` first")]
    NotInitialized(PathBuf),
    /// File IO.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Certificate problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The replica id file does not hold a whole number ≥ 1.
    #[error("{0}: not a replica id (a whole number from 1)")]
    ReplicaId(PathBuf),
    /// Signing key file malformed (the content is never echoed).
    #[error("{0}: not a 32-byte hex Ed25519 seed")]
    SigningKey(PathBuf),
}

/// Paths inside a hub data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// The hub's secrets, loaded.
pub struct HubKeys {
    /// The CA that issues cluster, admin and server certificates.
    pub ca: CertificateAuthority,
    /// Signs ClusterState headers.
    pub signing: SigningKey,
}

const ADMIN_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner, then fsyncs it.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Creates `dir` and its missing parents with mode 0700 (the umask can only narrow it); directories that
/// already exist keep their mode, since a mounted volume may not be ours to change.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` empty with mode 0600 if it does not exist and sets an existing file to 0600, so a
/// library that opens it afterwards (redb) never leaves it readable by others.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    fs::write(path, contents).map_err(io(path))
}

impl DataDir {
    /// A data directory at `root` (not touched until used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The redb store file.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("hub.redb")
    }

    /// The Raft log (entries, vote, last purged log id) of this replica.
    pub fn raft_log_path(&self) -> PathBuf {
        self.root.join("raft-log.redb")
    }

    /// Where Git mirrors live.
    pub fn mirrors_dir(&self) -> PathBuf {
        self.root.join("mirrors")
    }

    /// The operator's client bundle.
    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("admin")
    }

    /// File the running hub writes its listen address to.
    pub fn addr_file(&self) -> PathBuf {
        self.root.join("hub.addr")
    }

    /// The file holding this replica's Raft node id.
    pub fn replica_id_path(&self) -> PathBuf {
        self.root.join("replica-id")
    }

    /// This replica's Raft node id: what `init` or `join` wrote, 1 for a directory from before.
    pub fn replica_id(&self) -> Result<u64, DataDirError> {
        let path = self.replica_id_path();
        match fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(id) if id >= 1 => Ok(id),
                _ => Err(DataDirError::ReplicaId(path)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
            Err(source) => Err(DataDirError::Io { path, source }),
        }
    }

    /// Present in a directory made by `join`: this replica waits to be added to a hub and never
    /// starts a Raft cluster of its own.
    pub fn joined_marker(&self) -> PathBuf {
        self.root.join("joined")
    }

    /// Writes the marker that this replica joins a hub rather than starts one.
    pub fn mark_joined(&self) -> Result<(), DataDirError> {
        write_public(
            &self.joined_marker(),
            b"made by flotilla-hub join: this replica waits to be added to a hub\n",
        )
    }

    /// Whether this replica starts a one-node Raft cluster when it has none yet (`init`), rather
    /// than wait to be added to one (`join`).
    pub fn bootstraps(&self) -> bool {
        !self.joined_marker().exists()
    }

    /// Makes a data directory for another replica of an existing hub: the hub CA and the signing
    /// key copied from `from` (another replica's data directory, or a directory holding `ca.pem`,
    /// `ca-key.pem`, `signing.key` and `signing.pub`, as a mounted Secret does), replica id `id`, and
    /// the marker that it joins rather than starts a hub — but for replica 1 with `first_starts`,
    /// which starts the hub as `init` would, with these keys (a StatefulSet's first pod). With
    /// `if_missing`, a directory already made for the same id is left as it is.
    pub fn join(
        &self,
        from: &Path,
        id: u64,
        if_missing: bool,
        first_starts: bool,
    ) -> Result<(), DataDirError> {
        if id == 0 {
            return Err(DataDirError::ReplicaId(self.replica_id_path()));
        }
        if self.is_initialized() {
            if if_missing && self.replica_id()? == id {
                return Ok(());
            }
            return Err(DataDirError::AlreadyInitialized(self.root.clone()));
        }
        let source = if from.join("pki").join("ca.pem").exists() {
            from.join("pki")
        } else {
            from.to_path_buf()
        };
        let read = |name: &str| {
            let p = source.join(name);
            fs::read(&p).map_err(io(&p))
        };
        let (ca, ca_key, signing, signing_pub) = (
            read("ca.pem")?,
            read("ca-key.pem")?,
            read("signing.key")?,
            read("signing.pub")?,
        );
        // Refuse a mismatched pair before writing anything.
        let text = |b: &[u8], name: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| DataDirError::SigningKey(source.join(name)))
        };
        CertificateAuthority::from_pem(&text(&ca, "ca.pem")?, &text(&ca_key, "ca-key.pem")?)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text(&signing, "signing.key")?.trim(), &mut seed)
            .map_err(|_| DataDirError::SigningKey(source.join("signing.key")))?;
        for dir in [self.root.join("pki"), self.mirrors_dir()] {
            create_private_dir_all(&dir).map_err(io(&dir))?;
        }
        write_private(&self.pki("ca-key.pem"), &ca_key)?;
        write_private(&self.pki("signing.key"), &signing)?;
        write_public(&self.pki("signing.pub"), &signing_pub)?;
        write_public(&self.replica_id_path(), format!("{id}\n").as_bytes())?;
        if !(first_starts && id == 1) {
            self.mark_joined()?;
        }
        // ca.pem last: its presence marks a complete directory.
        write_public(&self.pki("ca.pem"), &ca)?;
        Ok(())
    }

    fn pki(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(name)
    }

    /// True once `init` completed (its last step writes `pki/ca.pem`).
    pub fn is_initialized(&self) -> bool {
        self.pki("ca.pem").exists()
    }

    /// Creates the CA, the signing key and the admin bundle. Refuses to overwrite.
    pub fn init(&self) -> Result<(), DataDirError> {
        if self.is_initialized() {
            return Err(DataDirError::AlreadyInitialized(self.root.clone()));
        }
        for dir in [self.root.join("pki"), self.admin_dir(), self.mirrors_dir()] {
            create_private_dir_all(&dir).map_err(io(&dir))?;
        }
        let ca = CertificateAuthority::generate("Flotilla cluster CA")?;
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let admin = ca.issue_admin_cert("admin", ADMIN_VALIDITY)?;

        write_private(&self.pki("ca-key.pem"), ca.key_pem().as_bytes())?;
        write_private(
            &self.pki("signing.key"),
            hex::encode(signing.to_bytes()).as_bytes(),
        )?;
        write_public(
            &self.pki("signing.pub"),
            hex::encode(signing.verifying_key().to_bytes()).as_bytes(),
        )?;
        write_public(&self.admin_dir().join("ca.pem"), ca.cert_pem().as_bytes())?;
        write_public(
            &self.admin_dir().join("admin.pem"),
            admin.cert_pem.as_bytes(),
        )?;
        write_private(
            &self.admin_dir().join("admin-key.pem"),
            admin.key_pem.as_bytes(),
        )?;
        write_public(&self.replica_id_path(), b"1\n")?;
        // ca.pem last: its presence marks a complete init.
        write_public(&self.pki("ca.pem"), ca.cert_pem().as_bytes())?;
        Ok(())
    }

    /// Loads the CA and signing key.
    pub fn load_keys(&self) -> Result<HubKeys, DataDirError> {
        let ca_path = self.pki("ca.pem");
        if !ca_path.exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        let read = |p: PathBuf| fs::read_to_string(&p).map_err(io(&p));
        let ca = CertificateAuthority::from_pem(&read(ca_path)?, &read(self.pki("ca-key.pem"))?)?;
        let key_path = self.pki("signing.key");
        let seed = read(key_path.clone())?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(seed.trim(), &mut bytes)
            .map_err(|_| DataDirError::SigningKey(key_path))?;
        Ok(HubKeys {
            ca,
            signing: SigningKey::from_bytes(&bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_reinit() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path().join("hub"));
        assert!(matches!(
            d.load_keys(),
            Err(DataDirError::NotInitialized(_))
        ));
        d.init().unwrap();
        let keys = d.load_keys().unwrap();
        assert_eq!(d.replica_id().unwrap(), 1);
        fs::remove_file(d.replica_id_path()).unwrap();
        assert_eq!(
            d.replica_id().unwrap(),
            1,
            "a directory from before is replica 1"
        );
        fs::write(d.replica_id_path(), "0\n").unwrap();
        assert!(matches!(d.replica_id(), Err(DataDirError::ReplicaId(_))));
        fs::write(d.replica_id_path(), "1\n").unwrap();
        let pub_hex = fs::read_to_string(d.pki("signing.pub")).unwrap();
        assert_eq!(
            pub_hex,
            hex::encode(keys.signing.verifying_key().to_bytes())
        );
        let mode = fs::metadata(d.pki("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(d.admin_dir().join("admin-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(d.init(), Err(DataDirError::AlreadyInitialized(_))));
    }

    #[test]
    fn directories_keys_and_store_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::new(dir.path().join("data/hub"));
        d.init().unwrap();
        crate::store::HubStore::open(&d.store_path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let private_dirs = [
            dir.path().join("data"),
            d.root().to_path_buf(),
            d.root().join("pki"),
            d.admin_dir(),
            d.mirrors_dir(),
        ];
        for path in private_dirs {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        }
        let private_files = [
            d.pki("ca-key.pem"),
            d.pki("signing.key"),
            d.admin_dir().join("admin-key.pem"),
            d.store_path(),
        ];
        for path in private_files {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        // A mirror made by the source poller is private too.
        let mirror = d.mirrors_dir().join("fleet");
        crate::source::GitMirror::open_or_init(&mirror, "file:///nowhere").unwrap();
        assert_eq!(mode(&mirror), 0o700);
    }
}
