//! Pinning Baton's maps and links in bpffs, so enforcement outlives the
//! daemon, and adopting them again at the next start.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/baton`):
//!
//! - `maps/NAME`: every map the programs share with the daemon. A restarted
//!   daemon loads its programs against these same maps, so policies, agent
//!   identities, quarantines, counters, learned addresses and events queued
//!   while it was down carry over untouched.
//! - `links/PROGRAM`: one link per attached program. A link pinned in bpffs
//!   stays attached when the process that made it dies; that is what keeps a
//!   `kill -9`ed daemon's programs enforcing.
//!
//! A restarted daemon attaches each new program next to the old one, pins
//! the new link under a temporary name and renames it over the old pin. The
//! rename drops the last reference to the old link, which detaches it. At
//! every instant each hook has at least one Baton program, all reading the
//! same maps, so there is no window in which anything is allowed that the
//! policy denies; afterwards each hook has exactly one.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{maps::MapInfo, programs::links::FdLink};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/baton";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `BPF_MAP_TYPE_RINGBUF`, whose size the loader rounds to pages.
const MAP_TYPE_RINGBUF: u32 = 27;

/// Suffix of a link pinned but not yet renamed over the live pin (bpffs
/// refuses names with a dot).
const PENDING_SUFFIX: &str = "-new";

/// Errors while pinning or adopting.
#[derive(Debug, Error)]
pub enum PinError {
    /// The pin directory is not on a bpffs mount.
    #[error(
        "{path} is not on a bpf filesystem; mount one first (mount -t bpf bpf /sys/fs/bpf) or choose another --pin-dir"
    )]
    NotBpffs {
        /// The directory (or its nearest existing parent).
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// What was touched.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another daemon holds the pin directory.
    #[error(
        "{path} is in use by another running baton daemon; stop it first, or give this one its own --pin-dir"
    )]
    InUse {
        /// The pin directory.
        path: PathBuf,
    },
    /// A pinned map was made by a build whose map layout differs.
    #[error(
        "pinned map {path} does not match this build ({what}: pinned {pinned}, expected {expected}); it was made by another version of baton. Run `baton uninstall --pin-dir {dir}` (enforcement stops until the next start) and start again"
    )]
    Incompatible {
        /// The pinned map.
        path: PathBuf,
        /// The pin directory.
        dir: PathBuf,
        /// Which property differs.
        what: &'static str,
        /// Its value in the pinned map.
        pinned: u32,
        /// Its value in this build.
        expected: u32,
    },
    /// Some maps are pinned but not one this build needs: a previous
    /// daemon of another version pinned them. Creating the missing map
    /// empty next to adopted ones could lose what it should hold.
    #[error(
        "the maps pinned in {dir} lack {name}, which this build needs; they were made by another version of baton. Run `baton uninstall --pin-dir {dir}` (enforcement stops until the next start) and start again"
    )]
    Missing {
        /// The pin directory.
        dir: PathBuf,
        /// The map this build needs.
        name: String,
    },
    /// The eBPF object could not be parsed to read its map layout.
    #[error("cannot read the map layout of Baton's eBPF object: {0}")]
    Object(String),
    /// A pinned map could not be inspected.
    #[error("cannot inspect pinned map {path}: {source}")]
    MapInfo {
        /// The pinned map.
        path: PathBuf,
        /// Underlying error.
        source: aya::maps::MapError,
    },
    /// A link could not be pinned.
    #[error("cannot pin link {path}: {source}")]
    Pin {
        /// Where it was to be pinned.
        path: PathBuf,
        /// Underlying error.
        source: aya::pin::PinError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pin directory, locked for this daemon for as long as it lives.
pub struct PinDir {
    path: PathBuf,
    /// Held open with an exclusive `flock`: a second daemon on the same
    /// directory would fight over the links.
    _lock: Flock<File>,
    adopted: Vec<String>,
    /// Programs whose links this daemon pinned.
    pinned_links: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl PinDir {
    /// Creates (or opens) the directory and locks it. Pins already there,
    /// from a daemon that died or was stopped, are listed in
    /// [`PinDir::adopted`].
    pub fn open(path: &Path) -> Result<Self, PinError> {
        let mut existing = path;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let stat = nix::sys::statfs::statfs(existing).map_err(|errno| PinError::Io {
            path: existing.to_path_buf(),
            source: errno.into(),
        })?;
        if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs {
                path: existing.to_path_buf(),
            });
        }
        for dir in [path.to_path_buf(), path.join("maps"), path.join("links")] {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let lock = lock(path)?;
        let mut adopted = Vec::new();
        for sub in ["maps", "links"] {
            let dir = path.join(sub);
            for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
                let entry = entry.map_err(io_error(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(PENDING_SUFFIX) {
                    // A start that died between pinning a new link and
                    // renaming it: the old pin still holds that hook, so
                    // the extra link is dropped.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                adopted.push(format!("{sub}/{name}"));
            }
        }
        adopted.sort();
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            adopted,
            pinned_links: std::sync::Mutex::default(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pins found at start (`maps/NAME`, `links/PROGRAM`): a previous
    /// daemon's state, now adopted.
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// Whether a previous daemon's maps were found.
    pub fn adopting(&self) -> bool {
        self.adopted.iter().any(|p| p.starts_with("maps/"))
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join("maps").join(name)
    }

    /// Where the link of `program` is pinned.
    pub fn link_path(&self, program: &str) -> PathBuf {
        self.path.join("links").join(program)
    }

    /// The maps of `object` that are pinned: every named map. The loader's
    /// own sections (`.rodata` and the like) are per load and stay out.
    /// Each map already pinned must have this build's type and sizes; the
    /// programs are verified against the pinned map, and a different layout
    /// would make them read garbage.
    pub fn pinned_maps(&self, object: &[u8]) -> Result<Vec<String>, PinError> {
        let object =
            aya_obj::Object::parse(object).map_err(|error| PinError::Object(error.to_string()))?;
        let mut names = Vec::new();
        let adopting = object
            .maps
            .keys()
            .any(|name| !name.starts_with('.') && self.map_path(name).exists());
        for (name, map) in &object.maps {
            if name.starts_with('.') {
                continue;
            }
            let path = self.map_path(name);
            if adopting && !path.exists() {
                return Err(PinError::Missing {
                    dir: self.path.clone(),
                    name: name.clone(),
                });
            }
            if path.exists() {
                let info = MapInfo::from_pin(&path).map_err(|source| PinError::MapInfo {
                    path: path.clone(),
                    source,
                })?;
                let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
                let mut checks = vec![
                    ("map type", pinned_type, map.map_type()),
                    ("key size", info.key_size(), map.key_size()),
                    ("value size", info.value_size(), map.value_size()),
                ];
                // Per-CPU and ring-buffer sizes are adjusted by the loader;
                // the others must match exactly.
                if map.max_entries() != 0 && map.map_type() != MAP_TYPE_RINGBUF {
                    checks.push(("capacity", info.max_entries(), map.max_entries()));
                }
                for (what, pinned, expected) in checks {
                    if pinned != expected {
                        return Err(PinError::Incompatible {
                            path,
                            dir: self.path.clone(),
                            what,
                            pinned,
                            expected,
                        });
                    }
                }
            }
            names.push(name.clone());
        }
        names.sort();
        Ok(names)
    }

    /// Pins `link` as the link of `program`, replacing (and so detaching)
    /// the link a previous daemon pinned there. The new link is attached
    /// before the old one goes.
    pub fn pin_link(&self, program: &str, link: FdLink) -> Result<(), PinError> {
        let live = self.link_path(program);
        let pending = self
            .path
            .join("links")
            .join(format!("{program}{PENDING_SUFFIX}"));
        let _ = std::fs::remove_file(&pending);
        let pinned = link.pin(&pending).map_err(|source| PinError::Pin {
            path: pending.clone(),
            source,
        })?;
        std::fs::rename(&pending, &live).map_err(io_error(&live))?;
        // The descriptor is closed; the pin keeps the link attached.
        drop(FdLink::from(pinned));
        self.pinned_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(program.to_string());
        Ok(())
    }

    /// Unpins (and so detaches) links a previous daemon pinned for programs
    /// this one did not attach: a hook this kernel or build no longer
    /// serves must not keep running an older program. Returns their names.
    pub fn remove_stale_links(&self) -> Result<Vec<String>, PinError> {
        let pinned = self
            .pinned_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let dir = self.path.join("links");
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !pinned.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Removes every pin: links first (detaching the programs), then maps.
    pub fn remove(self) -> Result<Vec<PathBuf>, PinError> {
        remove_all(&self.path)
    }
}

/// Removes the pin directory at `path` and everything in it, links first so
/// programs detach before their maps go. Returns what was removed.
pub fn remove_all(path: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    if !path.exists() {
        return Ok(removed);
    }
    for sub in ["links", "maps"] {
        let dir = path.join(sub);
        if !dir.exists() {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            std::fs::remove_file(&entry).map_err(io_error(&entry))?;
            removed.push(entry);
        }
        std::fs::remove_dir(&dir).map_err(io_error(&dir))?;
    }
    std::fs::remove_dir(path).map_err(io_error(path))?;
    removed.push(path.to_path_buf());
    Ok(removed)
}

/// Locks `path` the way a running daemon does, to check that none is
/// running before removing its pins. `Ok(None)` when there is no directory.
pub fn lock_for_removal(path: &Path) -> Result<Option<Flock<File>>, PinError> {
    if !path.exists() {
        return Ok(None);
    }
    lock(path).map(Some)
}

/// Takes the exclusive lock every daemon holds on its pin directory.
fn lock(path: &Path) -> Result<Flock<File>, PinError> {
    let file = File::open(path).map_err(io_error(path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            PinError::InUse {
                path: path.to_path_buf(),
            }
        } else {
            PinError::Io {
                path: path.to_path_buf(),
                source: errno.into(),
            }
        }
    })
}
