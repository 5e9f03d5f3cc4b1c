//! The deployment's agency directory: every agency a case may be sent or handed to, with the
//! name people know it by. One file (`config/directory.yaml` locally), read by every service and
//! the console, so adding an agency is one entry in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use duijie_domain::AgencyNode;
use serde::Deserialize;

/// One agency of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// `kind:code`, e.g. `mediation:431003-102`.
    pub id: AgencyNode,
    /// Its name, e.g. 白露塘镇人民调解委员会.
    pub name: String,
}

#[derive(Deserialize)]
struct File {
    agencies: Vec<Entry>,
}

/// The agencies of a deployment, each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    by_id: BTreeMap<AgencyNode, String>,
}

impl Directory {
    /// The directory file at `path` (YAML: `agencies: [{id, name}, …]`).
    ///
    /// Parsed straight into entries: a province's directory (100,000 agencies, 7.5 MB) read
    /// through the `config` crate's value tree peaked at about 175 MB per service and left the
    /// allocator holding most of it; serde_yaml needs a fraction of that.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the agency directory {}", path.display()))?;
        let file: File = serde_yaml::from_str(&text).with_context(|| format!("reading the agency directory {}", path.display()))?;
        drop(text);
        Self::new(file.agencies).with_context(|| format!("the agency directory {}", path.display()))
    }

    /// A directory of `entries`; an agency listed twice is refused.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> anyhow::Result<Self> {
        let mut by_id = BTreeMap::new();
        for e in entries {
            anyhow::ensure!(!e.name.trim().is_empty(), "{} has no name", e.id);
            if by_id.insert(e.id.clone(), e.name).is_some() {
                anyhow::bail!("{} is listed twice", e.id);
            }
        }
        Ok(Self { by_id })
    }

    /// Whether `node` is a known agency.
    pub fn contains(&self, node: &AgencyNode) -> bool {
        self.by_id.contains_key(node)
    }

    /// The name of `node`, if known.
    pub fn name_of(&self, node: &AgencyNode) -> Option<&str> {
        self.by_id.get(node).map(String::as_str)
    }

    /// Every agency with its name, ordered by kind and code.
    pub fn entries(&self) -> impl Iterator<Item = (&AgencyNode, &str)> {
        self.by_id.iter().map(|(n, name)| (n, name.as_str()))
    }
}

/// The directory file as it is now: read again whenever it changes ([`LiveDirectory::watch`]),
/// so an agency added to the file can receive cases without a restart. A changed file that does
/// not read (a typo mid-edit) is logged and the last good directory stays in force.
#[derive(Debug, Clone)]
pub struct LiveDirectory {
    path: Option<PathBuf>,
    current: Arc<RwLock<Arc<Directory>>>,
    /// The file's modification time and length when last read.
    stamp: Arc<Mutex<Option<(SystemTime, u64)>>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl LiveDirectory {
    /// The directory file at `path`, which must read now.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let seen = stamp(path);
        let directory = Directory::load(path)?;
        Ok(Self { path: Some(path.to_owned()), current: Arc::new(RwLock::new(Arc::new(directory))), stamp: Arc::new(Mutex::new(seen)) })
    }

    /// The directory now.
    pub fn current(&self) -> Arc<Directory> {
        // A poisoned lock still holds a whole directory (it is only ever replaced at once).
        self.current.read().map_or_else(|p| Arc::clone(&p.into_inner()), |d| Arc::clone(&d))
    }

    /// Reads the file again if it changed since it was last read; whether the directory was
    /// replaced.
    pub fn refresh(&self) -> bool {
        let Some(path) = &self.path else { return false };
        let now = stamp(path);
        let mut seen = self.stamp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now == *seen {
            return false;
        }
        *seen = now;
        match Directory::load(path) {
            Ok(d) => {
                let before = self.current().entries().count();
                tracing::info!(path = %path.display(), agencies = d.entries().count(), before, "agency directory reloaded");
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(d);
                true
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = format!("{e:#}"), "the changed agency directory does not read; the last good one stays in force");
                false
            }
        }
    }

    /// Looks at the file every `every` until `shutdown`.
    pub async fn watch(self, every: Duration, shutdown: crate::CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            self.refresh();
        }
    }
}

impl From<Directory> for LiveDirectory {
    /// A directory that never changes (no file behind it).
    fn from(d: Directory) -> Self {
        Self { path: None, current: Arc::new(RwLock::new(Arc::new(d))), stamp: Arc::new(Mutex::new(None)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str) -> Entry {
        Entry { id: id.parse().unwrap_or_else(|e| panic!("{e}")), name: name.into() }
    }

    #[test]
    fn the_repository_directory_reads_and_names_every_agency() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/directory.yaml");
        let d = Directory::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let centre: AgencyNode = "mediation:431003".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.name_of(&centre), Some("苏仙区矛盾纠纷调解中心"));
        assert!(d.entries().count() >= 7);
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_leaves_the_last_good() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("directory.yaml");
        let write = |text: &str| std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        write("agencies:\n  - { id: \"court:1\", name: \"甲\" }\n");
        let live = LiveDirectory::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let added = entry("mediation:2", "乙").id;
        assert!(!live.current().contains(&added));
        assert!(!live.refresh(), "unchanged");
        write("agencies:\n  - { id: \"court:1\", name: \"甲\" }\n  - { id: \"mediation:2\", name: \"乙调解委员会\" }\n");
        assert!(live.refresh());
        assert!(live.current().contains(&added));
        write("agencies: [ { id: \"court:1\" ");
        assert!(!live.refresh(), "a broken file is not taken");
        assert!(live.current().contains(&added), "the last good directory stays");
    }

    #[test]
    fn an_agency_listed_twice_or_without_a_name_is_refused() {
        assert!(Directory::new([entry("court:1", "甲"), entry("court:1", "乙")]).is_err());
        assert!(Directory::new([entry("court:1", " ")]).is_err());
        assert!(Directory::new([entry("court:1", "甲"), entry("court:2", "乙")]).is_ok_and(|d| d.contains(&entry("court:2", "x").id)));
    }
}
