//! A commit's files held in memory: what rendering reads instead of a working tree.

use std::collections::BTreeMap;
use std::ops::Bound;

/// One entry of a [`RepoTree`]. Directories are implied by the paths of their entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    /// A regular (or executable) file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target, never followed.
    Symlink(String),
    /// A gitlink (submodule) entry; its content lives in another repository.
    Submodule,
    /// A file larger than the per-file limit, recorded by size only so a render that needs it fails clearly.
    TooLarge(u64),
}

/// A path that cannot be an entry of a [`RepoTree`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid repository path {path:?}: {problem}")]
pub struct TreePathError {
    /// The rejected path.
    pub path: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// The whole tree of one commit, keyed by '/'-separated paths relative to the repository root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoTree {
    /// The commit id (hex) the tree was read from.
    pub commit: String,
    entries: BTreeMap<String, TreeEntry>,
}

/// Checks that `path` is relative, '/'-separated and free of empty, `.` and `..` components.
pub(crate) fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path is empty");
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if path.contains('\\') {
        return Err("backslashes are not allowed");
    }
    if path.contains('\0') {
        return Err("NUL bytes are not allowed");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("empty path components are not allowed"),
            "." => return Err("'.' components are not allowed"),
            ".." => return Err("'..' components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

impl RepoTree {
    /// An empty tree for `commit`.
    pub fn new(commit: impl Into<String>) -> Self {
        RepoTree {
            commit: commit.into(),
            entries: BTreeMap::new(),
        }
    }

    /// Adds or replaces the entry at `path`.
    pub fn insert(
        &mut self,
        path: impl Into<String>,
        entry: TreeEntry,
    ) -> Result<(), TreePathError> {
        let path = path.into();
        if let Err(problem) = check_relative_path(&path) {
            return Err(TreePathError { path, problem });
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Builder form of [`RepoTree::insert`] for a file; panics on an invalid path (meant for tests and fixtures).
    pub fn with_file(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.insert(path, TreeEntry::File(content.into()))
            .expect("valid fixture path");
        self
    }

    /// Builder form of [`RepoTree::insert`] for a symlink; panics on an invalid path.
    pub fn with_symlink(mut self, path: &str, target: &str) -> Self {
        self.insert(path, TreeEntry::Symlink(target.to_string()))
            .expect("valid fixture path");
        self
    }

    /// Builder form of [`RepoTree::insert`] for a submodule; panics on an invalid path.
    pub fn with_submodule(mut self, path: &str) -> Self {
        self.insert(path, TreeEntry::Submodule)
            .expect("valid fixture path");
        self
    }

    /// The entry at exactly `path`.
    pub fn get(&self, path: &str) -> Option<&TreeEntry> {
        self.entries.get(path)
    }

    /// Every entry, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &TreeEntry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Number of entries (directories are not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries below directory `dir` (`""` is the root), in path order, with paths relative to `dir`.
    pub fn entries_under<'a>(
        &'a self,
        dir: &str,
    ) -> impl Iterator<Item = (&'a str, &'a TreeEntry)> + use<'a> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let skip = prefix.len();
        self.entries
            .range::<String, _>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(move |(p, e)| (&p[skip..], e))
    }

    /// True when some entry lies below directory `dir`.
    pub fn is_dir(&self, dir: &str) -> bool {
        dir.is_empty() || self.entries_under(dir).next().is_some()
    }
}

/// A tree for data-driven tests (render and manifest cases), at a fixed commit id.
#[cfg(test)]
pub(crate) fn fixture_tree(
    files: &BTreeMap<String, String>,
    symlinks: &BTreeMap<String, String>,
    submodules: &[String],
    too_large: &BTreeMap<String, u64>,
) -> RepoTree {
    let mut tree = RepoTree::new("0123456789abcdef0123456789abcdef01234567");
    let entries = files
        .iter()
        .map(|(p, t)| (p, TreeEntry::File(t.as_bytes().to_vec())))
        .chain(
            symlinks
                .iter()
                .map(|(p, t)| (p, TreeEntry::Symlink(t.clone()))),
        )
        .chain(submodules.iter().map(|p| (p, TreeEntry::Submodule)))
        .chain(too_large.iter().map(|(p, n)| (p, TreeEntry::TooLarge(*n))));
    for (path, entry) in entries {
        tree.insert(path.as_str(), entry)
            .expect("valid fixture path");
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_under_a_directory() {
        let tree = RepoTree::new("c")
            .with_file("a/b.yaml", "x")
            .with_file("a/c/d.yaml", "y")
            .with_file("a.yaml", "z")
            .with_file("ab/e.yaml", "w");
        let under: Vec<_> = tree.entries_under("a").map(|(p, _)| p).collect();
        assert_eq!(under, ["b.yaml", "c/d.yaml"]);
        assert_eq!(tree.entries_under("").count(), 4);
        assert!(tree.is_dir("a/c"));
        assert!(!tree.is_dir("a/b.yaml"));
        assert!(!tree.is_dir("missing"));
    }

    #[test]
    fn rejects_bad_paths() {
        let mut tree = RepoTree::new("c");
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", ".."] {
            let err = tree.insert(bad, TreeEntry::Submodule).unwrap_err();
            assert_eq!(err.path, bad);
        }
        assert!(tree.is_empty());
    }
}
