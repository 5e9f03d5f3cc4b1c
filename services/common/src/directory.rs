//! The deployment's agency directory: every agency a case may be sent or handed to, with the
//! name people know it by. One file (`config/directory.yaml` locally), read by every service and
//! the console, so adding an agency is one entry in one place.

use std::collections::BTreeMap;
use std::path::Path;

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
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: File = config::Config::builder()
            .add_source(config::File::from(path))
            .build()
            .and_then(config::Config::try_deserialize)
            .with_context(|| format!("reading the agency directory {}", path.display()))?;
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
    fn an_agency_listed_twice_or_without_a_name_is_refused() {
        assert!(Directory::new([entry("court:1", "甲"), entry("court:1", "乙")]).is_err());
        assert!(Directory::new([entry("court:1", " ")]).is_err());
        assert!(Directory::new([entry("court:1", "甲"), entry("court:2", "乙")]).is_ok_and(|d| d.contains(&entry("court:2", "x").id)));
    }
}
