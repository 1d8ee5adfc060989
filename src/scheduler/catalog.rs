//! The playlist catalog: the playlists directory as last loaded. A file that fails validation keeps
//! its previous good version live (and its errors are reported); a new broken file is simply not
//! live; a deleted file is gone. This is the only place that reads playlist files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::domain::{Playlist, PlaylistError, ValidationContext};

/// One playlist file's state.
#[derive(Debug, Clone)]
pub struct FileState {
    /// The live version: the newest that validated, with its source text.
    pub good: Option<(Playlist, String)>,
    /// Problems of the file as it is now on disk (empty when it validated).
    pub errors: Vec<PlaylistError>,
}

/// All playlist files.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// By file path.
    pub files: BTreeMap<PathBuf, FileState>,
}

impl Catalog {
    /// Loads `dir`, keeping from `previous` the good version of every file that no longer validates.
    pub fn load(
        dir: &Path,
        ctx: &ValidationContext,
        previous: Option<&Catalog>,
    ) -> Result<Catalog, std::io::Error> {
        let mut files = BTreeMap::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_playlist_file(p))
            .collect();
        paths.sort();
        for path in paths {
            let label = path.display().to_string();
            let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
            let parsed = match std::fs::read(&path) {
                Ok(bytes) => crate::domain::playlist::source_text(&label, &bytes)
                    .map_err(|e| vec![e])
                    .and_then(|src| {
                        Playlist::parse(&label, stem.as_deref(), src, ctx)
                            .map(|p| (p, src.to_owned()))
                    }),
                Err(e) => Err(vec![PlaylistError {
                    file: label,
                    line: 1,
                    column: 1,
                    message: format!("cannot read: {e}"),
                }]),
            };
            let state = match parsed {
                Ok(good) => FileState {
                    good: Some(good),
                    errors: Vec::new(),
                },
                Err(errors) => FileState {
                    good: previous
                        .and_then(|p| p.files.get(&path))
                        .and_then(|s| s.good.clone()),
                    errors,
                },
            };
            files.insert(path, state);
        }
        Ok(Catalog { files })
    }

    /// A catalog of known-good sources (as stored by the daemon), re-validated against `ctx`;
    /// sources that no longer validate (the configuration changed) are left out.
    pub fn from_sources(sources: &[(String, String)], ctx: &ValidationContext) -> Catalog {
        let files = sources
            .iter()
            .filter_map(|(path, src)| {
                let path = PathBuf::from(path);
                let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
                let p =
                    Playlist::parse(&path.display().to_string(), stem.as_deref(), src, ctx).ok()?;
                let state = FileState {
                    good: Some((p, src.clone())),
                    errors: Vec::new(),
                };
                Some((path, state))
            })
            .collect();
        Catalog { files }
    }

    /// The good sources, by path (what [`Catalog::from_sources`] takes back).
    pub fn good_sources(&self) -> Vec<(String, String)> {
        self.files
            .iter()
            .filter_map(|(path, s)| {
                s.good
                    .as_ref()
                    .map(|(_, src)| (path.display().to_string(), src.clone()))
            })
            .collect()
    }

    /// The live playlists.
    pub fn playlists(&self) -> Vec<Playlist> {
        self.files
            .values()
            .filter_map(|s| s.good.as_ref().map(|(p, _)| p.clone()))
            .collect()
    }

    /// Every current problem.
    pub fn errors(&self) -> impl Iterator<Item = &PlaylistError> {
        self.files.values().flat_map(|s| s.errors.iter())
    }

    /// A live playlist by id, with its file and source.
    pub fn get(&self, id: &str) -> Option<(&Path, &Playlist, &str, &[PlaylistError])> {
        self.files.iter().find_map(|(path, s)| {
            s.good
                .as_ref()
                .filter(|(p, _)| p.id == id)
                .map(|(p, src)| (path.as_path(), p, src.as_str(), s.errors.as_slice()))
        })
    }
}

/// `*.json`, not hidden (editors' temp and swap files are skipped).
fn is_playlist_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    p.is_file() && name.ends_with(".json") && !name.starts_with('.')
}
