//! A set of wedge files: a reference-layout data root (`train.txt` / `test.txt` listing relative
//! `.npy` paths), a plain folder of `.npy` files (searched recursively), or one `.npy` file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{read_wedge, DataError, Wedge};

/// Which part of a data root to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The wedges listed in `train.txt`.
    Train,
    /// The wedges listed in `test.txt`.
    Test,
    /// Everything: both lists, or every `.npy` file of a plain folder.
    All,
}

impl Split {
    fn list_names(self) -> &'static [&'static str] {
        match self {
            Split::Train => &["train.txt"],
            Split::Test => &["test.txt"],
            Split::All => &["train.txt", "test.txt"],
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            other => Err(format!("unknown split '{other}': use train, test or all")),
        }
    }
}

/// An ordered list of wedge files.
#[derive(Clone, Debug)]
pub struct Dataset {
    root: PathBuf,
    paths: Vec<PathBuf>,
}

impl Dataset {
    /// Open `root` (see the module doc for the three forms). A single `.npy` file is its own data
    /// set for every split. A plain folder (no list files) can only be opened with [`Split::All`].
    pub fn open(root: &Path, split: Split) -> Result<Dataset, DataError> {
        let meta = std::fs::metadata(root).map_err(|source| DataError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        if meta.is_file() {
            return Ok(Dataset {
                root: root.to_path_buf(),
                paths: vec![root.to_path_buf()],
            });
        }
        let has_lists = ["train.txt", "test.txt"]
            .iter()
            .any(|l| root.join(l).is_file());
        let paths = if has_lists {
            let mut paths = Vec::new();
            for list in split.list_names() {
                paths.extend(read_list(root, list)?);
            }
            paths
        } else if split == Split::All {
            let mut paths = Vec::new();
            collect_npy(root, &mut paths, &mut HashSet::new())?;
            paths.sort();
            paths
        } else {
            let list = split.list_names()[0];
            return Err(DataError::MissingListFile {
                path: root.to_path_buf(),
                list: list.into(),
            });
        };
        if paths.is_empty() && has_lists {
            return Err(DataError::EmptySplit {
                path: root.to_path_buf(),
                split: format!("{split:?}").to_lowercase(),
                lists: split.list_names().join(" and "),
            });
        }
        if paths.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
            });
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            paths,
        })
    }

    /// The root this data set was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The wedge files, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Number of wedges.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the data set has no wedges (never true for an opened data set).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Read wedge `i`.
    pub fn load(&self, i: usize) -> Result<Wedge, DataError> {
        let path = self
            .paths
            .get(i)
            .ok_or_else(|| DataError::IndexOutOfRange {
                path: self.root.clone(),
                index: i,
                len: self.paths.len(),
            })?;
        read_wedge(path)
    }

    /// Keep only the first `n` wedges.
    pub fn truncate(&mut self, n: usize) {
        self.paths.truncate(n);
    }

    /// Keep only the wedges whose path `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.paths.retain(|p| keep(p));
    }
}

fn read_list(root: &Path, list: &str) -> Result<Vec<PathBuf>, DataError> {
    let list_path = root.join(list);
    if !list_path.is_file() {
        return Err(DataError::MissingListFile {
            path: root.to_path_buf(),
            list: list.into(),
        });
    }
    let text = std::fs::read_to_string(&list_path).map_err(|source| DataError::Io {
        path: list_path.clone(),
        source,
    })?;
    let mut paths = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let p = root.join(entry);
        if !p.is_file() {
            return Err(DataError::MissingListedFile {
                path: root.to_path_buf(),
                list: list.into(),
                line: n + 1,
                entry: entry.into(),
            });
        }
        paths.push(p);
    }
    Ok(paths)
}

/// Every `.npy` file under `dir`, recursively (each once, whatever links lead to it), sorted.
pub fn npy_files_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut paths = Vec::new();
    collect_npy(dir, &mut paths, &mut HashSet::new())?;
    paths.sort();
    Ok(paths)
}

/// Every `.npy` file under `dir`, recursively. Each folder and file is visited once, by its
/// canonical path, so a link back up the tree (`self -> .`) or two links to the same place never
/// count a wedge twice.
fn collect_npy(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    if !seen.insert(std::fs::canonicalize(dir).map_err(io(dir))?) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    let mut entries = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(dir))?;
    // Real entries before links, each sorted: a wedge reached both ways keeps its real path,
    // whatever order the file system lists them in.
    entries.sort_by_key(|p| (p.is_symlink(), p.clone()));
    for p in entries {
        if p.is_dir() {
            collect_npy(&p, out, seen)?;
        } else if p.extension().is_some_and(|e| e == "npy") {
            // A dangling link is kept: reading it then names the file and the fault.
            let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if seen.insert(key) {
                out.push(p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_wedge;

    fn make_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("outer/12-2_0-0");
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..3 {
            let mut w = Wedge::zeros();
            w.set(i, 0, 0, 100 + i as u16);
            write_wedge(&sub.join(format!("e_{i}.npy")), &w).unwrap();
        }
        dir
    }

    #[test]
    fn data_root_with_lists() {
        let dir = make_root();
        std::fs::write(
            dir.path().join("train.txt"),
            "outer/12-2_0-0/e_0.npy\nouter/12-2_0-0/e_1.npy\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("test.txt"), "outer/12-2_0-0/e_2.npy\n\n").unwrap();
        let train = Dataset::open(dir.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train.load(1).unwrap().get(1, 0, 0), 101);
        let test = Dataset::open(dir.path(), Split::Test).unwrap();
        assert_eq!(test.len(), 1);
        assert_eq!(Dataset::open(dir.path(), Split::All).unwrap().len(), 3);
        assert!(matches!(
            test.load(5),
            Err(DataError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn missing_list_file_is_an_error() {
        let dir = make_root();
        std::fs::write(dir.path().join("train.txt"), "outer/12-2_0-0/e_0.npy\n").unwrap();
        let err = Dataset::open(dir.path(), Split::Test).unwrap_err();
        assert!(
            matches!(err, DataError::MissingListFile { ref list, .. } if list == "test.txt"),
            "{err}"
        );
        // A plain folder has no split.
        let plain = make_root();
        let err = Dataset::open(plain.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingListFile { .. }), "{err}");
    }

    #[test]
    fn missing_listed_file_is_an_error() {
        let dir = make_root();
        std::fs::write(
            dir.path().join("train.txt"),
            "outer/12-2_0-0/e_0.npy\nouter/gone.npy\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("test.txt"), "").unwrap();
        let err = Dataset::open(dir.path(), Split::Train).unwrap_err();
        assert!(
            matches!(err, DataError::MissingListedFile { line: 2, .. }),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn folder_links_in_circles_count_each_wedge_once() {
        let dir = make_root();
        let sub = dir.path().join("outer/12-2_0-0");
        std::os::unix::fs::symlink(".", dir.path().join("self")).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("again")).unwrap();
        std::os::unix::fs::symlink(sub.join("e_0.npy"), dir.path().join("link.npy")).unwrap();
        let all = Dataset::open(dir.path(), Split::All).unwrap();
        assert_eq!(all.len(), 3, "{:?}", all.paths());
        assert!(all
            .paths()
            .iter()
            .all(|p| p.starts_with(dir.path().join("outer"))));
    }

    #[test]
    fn plain_folder_and_single_file() {
        let dir = make_root();
        let all = Dataset::open(dir.path(), Split::All).unwrap();
        assert_eq!(all.len(), 3);
        let one = Dataset::open(&all.paths()[2], Split::Test).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one.load(0).unwrap().get(2, 0, 0), 102);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Dataset::open(empty.path(), Split::All),
            Err(DataError::Empty { .. })
        ));
        assert_eq!("TEST".parse::<Split>().unwrap(), Split::Test);
    }
}
