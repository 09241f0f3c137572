//! A directory as a target: object `id` is the file `PATH/<id.file_key()>.json` holding the
//! object's canonical JSON. Used by the demo and by tests that need no cluster.
//!
//! Writes are atomic and durable: a temporary file is written and fsync'd, renamed over the
//! object's file, and the directory is fsync'd. A file that already holds the exact bytes is
//! not touched. A file edited behind the agent's back is drift. The inventory copy lives in
//! `PATH/.flotilla-inventory/<app>.json`, which listing skips.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppHealth;
use serde_json::Value;

use super::{Applied, ApplyRequest, Change, LiveObject, Target, TargetError};
use crate::drift::differences;
use crate::inventory::AppInventory;

/// Subdirectory holding the inventory copy, one file per app.
const INVENTORY_DIR: &str = ".flotilla-inventory";

/// Objects as files in one directory.
#[derive(Debug, Clone)]
pub struct DirTarget {
    root: Arc<PathBuf>,
}

impl DirTarget {
    /// Uses `root`, creating it if needed.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, TargetError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| TargetError {
            op: "create",
            object: root.display().to_string(),
            transient: false,
            source: Box::new(e),
        })?;
        Ok(DirTarget {
            root: Arc::new(root),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds object `id`.
    pub fn path_of(&self, id: &ObjectId) -> PathBuf {
        self.root.join(format!("{}.json", id.file_key()))
    }

    /// Runs blocking file IO off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        op: &'static str,
        object: String,
        work: impl FnOnce(&Path) -> io::Result<R> + Send + 'static,
    ) -> Result<R, TargetError> {
        let root = Arc::clone(&self.root);
        let result = tokio::task::spawn_blocking(move || work(&root)).await;
        let error = |transient, source| TargetError {
            op,
            object: object.clone(),
            transient,
            source,
        };
        match result {
            Ok(Ok(value)) => Ok(value),
            // Disk full, permissions fixed by an operator: worth another try.
            Ok(Err(e)) => Err(error(true, Box::new(e))),
            Err(join) => Err(error(true, Box::new(join))),
        }
    }
}

/// Refuses ids whose file name could leave the directory or hide as a dotfile.
fn file_name(id: &ObjectId) -> Result<String, TargetError> {
    let key = id.file_key();
    if key.starts_with('.') || key.contains(['/', '\\', '\0']) {
        return Err(TargetError {
            op: "apply",
            object: id.to_string(),
            transient: false,
            source: "the object's identity cannot be a file name".into(),
        });
    }
    Ok(format!("{key}.json"))
}

fn sync_dir(root: &Path) -> io::Result<()> {
    File::open(root)?.sync_all()
}

fn write_file(root: &Path, name: &str, bytes: &[u8]) -> io::Result<Change> {
    let path = root.join(name);
    match fs::read(&path) {
        Ok(existing) if existing == bytes => return Ok(Change::Unchanged),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = root.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(root)?;
    Ok(Change::Changed)
}

/// Applies one request: writes unless the file already holds the bytes; for an object applied
/// before with these bytes, a different or missing file is drift.
fn apply_file(
    root: &Path,
    name: &str,
    bytes: &[u8],
    drift: Option<DriftMode>,
) -> io::Result<Applied> {
    let existing = match fs::read(root.join(name)) {
        Ok(existing) => Some(existing),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if existing.as_deref() == Some(bytes) {
        return Ok(Applied::Unchanged);
    }
    if drift == Some(DriftMode::Report) {
        let fields = match &existing {
            None => vec!["the object was deleted".to_string()],
            Some(existing) => {
                let desired: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
                let live: Value = serde_json::from_slice(existing).unwrap_or(Value::Null);
                let fields = differences(&desired, &live);
                if fields.is_empty() {
                    vec![".".to_string()]
                } else {
                    fields
                }
            }
        };
        return Ok(Applied::Drifted(fields));
    }
    write_file(root, name, bytes)?;
    Ok(Applied::Changed)
}

fn remove_file(root: &Path, name: &str) -> io::Result<Change> {
    match fs::remove_file(root.join(name)) {
        Ok(()) => {
            sync_dir(root)?;
            Ok(Change::Changed)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Change::Unchanged),
        Err(e) => Err(e),
    }
}

/// The identity written in an object file, if it is one.
fn id_of(value: &Value) -> Option<ObjectId> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let meta = value.get("metadata")?;
    Some(ObjectId {
        group,
        version,
        kind: value.get("kind")?.as_str()?.to_string(),
        namespace: meta
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        name: meta.get("name")?.as_str()?.to_string(),
    })
}

fn list_files(root: &Path) -> io::Result<Vec<ObjectId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") || !entry.file_type()?.is_file() {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&fs::read(entry.path())?) else {
            continue;
        };
        // Only files named after the object they hold are ours.
        if let Some(id) = id_of(&value).filter(|id| format!("{}.json", id.file_key()) == name) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

fn read_inventory(root: &Path) -> io::Result<BTreeMap<String, AppInventory>> {
    let dir = root.join(INVENTORY_DIR);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(app) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let inventory = serde_json::from_slice(&fs::read(entry.path())?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.insert(app.to_string(), inventory);
    }
    Ok(out)
}

fn write_inventory(root: &Path, inventory: &BTreeMap<String, AppInventory>) -> io::Result<()> {
    let dir = root.join(INVENTORY_DIR);
    fs::create_dir_all(&dir)?;
    for (app, inv) in inventory {
        let bytes = serde_json::to_vec(inv).map_err(io::Error::other)?;
        write_file(&dir, &format!("{app}.json"), &bytes)?;
    }
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(app) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if !inventory.contains_key(app) {
            remove_file(&dir, &format!("{app}.json"))?;
        }
    }
    Ok(())
}

impl Target for DirTarget {
    async fn apply(&mut self, batch: &[ApplyRequest<'_>]) -> Vec<Result<Applied, TargetError>> {
        let mut results = Vec::with_capacity(batch.len());
        for req in batch {
            let name = match file_name(req.id) {
                Ok(name) => name,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let bytes = req.bytes.to_vec();
            let drift = (req.previous == Some(req.digest)).then_some(req.drift);
            results.push(
                self.blocking("apply", req.id.to_string(), move |root| {
                    apply_file(root, &name, &bytes, drift)
                })
                .await,
            );
        }
        results
    }

    async fn delete(&mut self, id: &ObjectId, _uid: Option<&str>) -> Result<Change, TargetError> {
        let name = file_name(id).map_err(|e| TargetError { op: "delete", ..e })?;
        self.blocking("delete", id.to_string(), move |root| {
            remove_file(root, &name)
        })
        .await
    }

    async fn list_live(
        &mut self,
        _app: &str,
        ids: &[ObjectId],
    ) -> Result<BTreeMap<ObjectId, LiveObject>, TargetError> {
        // Files carry no ownership marks and no uids: every file named after its object counts.
        let wanted: BTreeSet<ObjectId> = ids.iter().cloned().collect();
        let present = self.blocking("list", String::new(), list_files).await?;
        Ok(present
            .into_iter()
            .filter(|id| wanted.contains(id))
            .map(|id| (id, LiveObject::default()))
            .collect())
    }

    async fn health(&mut self, _ids: &[ObjectId]) -> (AppHealth, String) {
        // A file is as healthy as it gets once written.
        (AppHealth::Healthy, String::new())
    }

    async fn load_inventory(&mut self) -> Result<BTreeMap<String, AppInventory>, TargetError> {
        self.blocking("read inventory", String::new(), read_inventory)
            .await
    }

    async fn save_inventory(
        &mut self,
        inventory: &BTreeMap<String, AppInventory>,
    ) -> Result<(), TargetError> {
        let inventory = inventory.clone();
        self.blocking("write inventory", String::new(), move |root| {
            write_inventory(root, &inventory)
        })
        .await
    }

    async fn changed(&mut self) {
        std::future::pending().await
    }

    async fn shutdown(&mut self) {}
}

impl DirTarget {
    /// Every object file in the directory, sorted.
    pub async fn list_all(&self) -> Result<Vec<ObjectId>, TargetError> {
        self.blocking("list", String::new(), list_files).await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use flotilla_common::cluster_state::DriftMode;

    use super::*;
    use crate::fixtures::config_map;
    use crate::target::conformance::{self, apply_one, request};

    #[tokio::test]
    async fn passes_the_target_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        let mut target = DirTarget::new(&root).unwrap();
        let tamper = async |id: &ObjectId| {
            let path = root.join(format!("{}.json", id.file_key()));
            let mut value: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            value["data"]["value"] = "tampered".into();
            fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        };
        conformance::check(&mut target, "suite", false, tamper).await;
    }

    #[tokio::test]
    async fn writes_canonical_json_once_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = DirTarget::new(dir.path()).unwrap();
        let web = config_map("web", "1");
        let correct = DriftMode::Correct;
        apply_one(&mut target, request(&web, None, correct)).await;
        let path = dir.path().join("core_v1_ConfigMap_default_web.json");
        assert_eq!(target.path_of(&web.0.id), path);
        assert_eq!(fs::read(&path).unwrap(), web.1);
        let before = fs::metadata(&path).unwrap();

        // Level-based: a second apply does not replace the file (same inode, same mtime).
        assert_eq!(
            apply_one(&mut target, request(&web, None, correct)).await,
            Applied::Unchanged
        );
        let after = fs::metadata(&path).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );

        // Drift is corrected: a file edited behind the agent's back is rewritten.
        fs::write(&path, b"{\"edited\":true}").unwrap();
        assert_eq!(
            apply_one(&mut target, request(&web, Some(&web), correct)).await,
            Applied::Changed
        );
        assert_eq!(fs::read(&path).unwrap(), web.1);

        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["core_v1_ConfigMap_default_web.json"]);
    }

    #[tokio::test]
    async fn lists_only_files_named_after_their_object() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = DirTarget::new(dir.path()).unwrap();
        let web = config_map("web", "1");
        apply_one(&mut target, request(&web, None, DriftMode::Correct)).await;
        let bytes = &web.1;
        fs::write(dir.path().join("README.txt"), "hi").unwrap();
        fs::write(dir.path().join("other.json"), bytes).unwrap();
        fs::write(dir.path().join("broken.json"), "{").unwrap();
        fs::write(
            dir.path().join(".core_v1_ConfigMap_default_x.json.tmp"),
            bytes,
        )
        .unwrap();
        target
            .save_inventory(&BTreeMap::from([(
                "web".to_string(),
                AppInventory::default(),
            )]))
            .await
            .unwrap();
        assert_eq!(target.list_all().await.unwrap(), vec![web.0.id]);
    }

    #[tokio::test]
    async fn ids_that_would_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = DirTarget::new(dir.path().join("objects")).unwrap();
        let (mut entry, bytes) = config_map("web", "1");
        entry.id.kind = "../../escape".into();
        let object = (entry, bytes);
        let err = target
            .apply(&[request(&object, None, DriftMode::Correct)])
            .await
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(!err.transient);
        assert_eq!(err.op, "apply");
        let err = target.delete(&object.0.id, None).await.unwrap_err();
        assert_eq!(err.op, "delete");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
