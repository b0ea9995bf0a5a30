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
//!
//! While it runs, the daemon also holds a descriptor of every map and link
//! it pinned. A link whose pin is unlinked stays attached as long as any
//! descriptor of it remains, so removing the pins (`rm -rf` of the
//! directory by a root agent, say) never switches a program off while the
//! daemon runs; [`PinDir::repair`] puts the pins back, and
//! [`PinDir::attachment`] asks the kernel whether each program really is
//! still attached.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::{maps::MapInfo, programs::links::FdLink};

use super::bpfsys;
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
    /// The pin directory (or one inside it) is not a directory.
    #[error(
        "{path} is not a directory; remove it (another user may have put it there) or choose another --pin-dir"
    )]
    NotADirectory {
        /// What is in its place.
        path: PathBuf,
    },
    /// Another user owns the pin directory and it holds pins.
    #[error(
        "{path} belongs to uid {uid}, not root, and holds pins: another user could remove them and switch enforcement off. Stop every baton daemon, look at what is there, remove it (`baton uninstall --pin-dir` if the pins are Baton's) and start again"
    )]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
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
    /// A pinned object could not be opened or inspected.
    #[error("cannot hold pinned object {path}: {source}")]
    Hold {
        /// The pin.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
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

/// A pinned map or link this daemon holds a descriptor of.
struct Held {
    /// Keeps the object alive (and a link attached) whatever happens to
    /// its pin.
    fd: OwnedFd,
    /// The object's kernel-wide id, to tell it from another object pinned
    /// at the same name.
    id: u32,
    /// For a link, its program's id.
    prog_id: u32,
    /// The bpffs inode of its pin when the daemon last saw the pin name
    /// this object. bpffs gives every new pin a new inode number, so a
    /// directory listing (one `getdents` for all pins, no descriptor per
    /// pin) shows a pin removed, replaced or renamed over; only then is
    /// the object behind the name asked for. `None` until known.
    pin_inode: Option<u64>,
}

/// Why a pin had to be put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinDamage {
    /// Nothing was pinned at the name.
    Missing,
    /// Another object (this id) was pinned at the name.
    Replaced(u32),
    /// Something that is not a pinned object was at the name.
    Unreadable,
}

impl PinDamage {
    /// The `cause` label of `baton_pins_restored_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Replaced(_) => "replaced",
            Self::Unreadable => "unreadable",
        }
    }
}

/// One pin found missing or replaced, and whether it was put back.
#[derive(Debug)]
pub struct PinRepair {
    /// `maps/NAME` or `links/PROGRAM`.
    pub pin: String,
    /// What was wrong.
    pub damage: PinDamage,
    /// The id of the object the daemon holds (and pinned back).
    pub held_id: u32,
    /// `Err` says why the pin could not be put back.
    pub result: Result<(), String>,
}

/// Whether one of the daemon's links is attached, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// The kernel runs the program at its hook.
    Attached,
    /// It does not; the text says what the kernel reported.
    Detached(String),
}

/// The pin directory, locked for this daemon for as long as it lives.
pub struct PinDir {
    path: PathBuf,
    /// Held open with an exclusive `flock`: a second daemon on the same
    /// directory would fight over the links. Replaced when the directory
    /// itself was removed and made again.
    lock: Mutex<Flock<File>>,
    adopted: Vec<String>,
    /// What another user had made of the directories, undone at open.
    reclaimed: Vec<String>,
    /// Programs whose links this daemon pinned (or kept).
    pinned_links: Mutex<std::collections::BTreeSet<String>>,
    /// Where a previous daemon's links may be kept (it loaded the same
    /// programs with the same settings): the cgroup v2 root their cgroup
    /// programs must still run on.
    keep_links: Mutex<Option<PathBuf>>,
    /// Every map and link pinned, by `maps/NAME` or `links/PROGRAM`.
    held: Mutex<BTreeMap<String, Held>>,
}

impl PinDir {
    /// Creates (or opens) the directory and locks it. Pins already there,
    /// from a daemon that died or was stopped, are listed in
    /// [`PinDir::adopted`].
    pub fn open(path: &Path) -> Result<Self, PinError> {
        let mut reclaimed = Vec::new();
        // Another user's symlink in the directory's place goes before the
        // file system is judged by where it points.
        if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            reclaimed.extend(make_private_dir(path)?);
        }
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
            reclaimed.extend(make_private_dir(&dir)?);
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
            lock: Mutex::new(lock),
            adopted,
            reclaimed,
            pinned_links: Mutex::default(),
            keep_links: Mutex::new(None),
            held: Mutex::default(),
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

    /// What [`PinDir::open`] found another user had made of the pin
    /// directories and undid: one sentence each, for the log and the
    /// audit trail.
    pub fn reclaimed(&self) -> &[String] {
        &self.reclaimed
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
        {
            // The rename and the new hold happen under the lock the pin
            // guard checks under: between them the guard (which the
            // rename itself wakes, through inotify) would take the new
            // link for a stranger's, put the old one back over it and
            // record a tampering that never happened.
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            std::fs::rename(&pending, &live).map_err(io_error(&live))?;
            // The daemon's own descriptor, opened from the pin before aya's
            // is closed, keeps the link attached whatever happens to the pin.
            self.hold_in(&mut held, &format!("links/{program}"))?;
        }
        drop(FdLink::from(pinned));
        self.pinned_links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(program.to_string());
        Ok(())
    }

    /// Pins `link`, made with `BPF_LINK_CREATE` rather than through aya,
    /// for `program`, as [`PinDir::pin_link`] does.
    pub fn pin_link_fd(&self, program: &str, link: OwnedFd) -> Result<(), PinError> {
        let staging = self.link_path(&format!("{program}-staging"));
        let _ = std::fs::remove_file(&staging);
        bpfsys::obj_pin(link.as_fd(), &staging).map_err(io_error(&staging))?;
        let pinned = aya::programs::links::PinnedLink::from_pin(&staging);
        let _ = std::fs::remove_file(&staging);
        drop(link);
        let pinned = pinned.map_err(|source| PinError::Io {
            path: staging.clone(),
            source: std::io::Error::other(source.to_string()),
        })?;
        self.pin_link(program, FdLink::from(pinned))
    }

    /// Unpins the link of `program` and closes this daemon's descriptor of
    /// it, so the link detaches.
    pub fn unpin_link(&self, program: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&format!("links/{program}"));
        self.pinned_links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(program);
        let _ = std::fs::remove_file(self.link_path(program));
    }

    /// The cgroup the link pinned for `program` runs on, as the kernel
    /// reports it through the daemon's own descriptor: `Some(0)` once the
    /// kernel detached it (its cgroup was removed and released), `None`
    /// when this daemon holds no such link or the kernel cannot say.
    pub fn link_cgroup(&self, program: &str) -> Option<u64> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let link = held.get(&format!("links/{program}"))?;
        bpfsys::link_cgroup_id(link.fd.as_fd()).ok()
    }

    /// Links a previous daemon pinned for `program`: `program` itself and
    /// `program@…` (the same program attached to other cgroups).
    pub fn adopted_links(&self, program: &str) -> Vec<String> {
        let scoped = format!("{program}@");
        self.adopted
            .iter()
            .filter_map(|pin| pin.strip_prefix("links/"))
            .filter(|name| *name == program || name.starts_with(&scoped))
            .map(str::to_string)
            .collect()
    }

    /// Allows [`PinDir::keep_link`] to keep a previous daemon's links that
    /// are still attached (cgroup programs to `cgroup_root`), or with
    /// `None` forbids it.
    pub fn set_keep_links(&self, cgroup_root: Option<PathBuf>) {
        *self
            .keep_links
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = cgroup_root;
    }

    /// Keeps the link a previous daemon pinned for `program` instead of
    /// loading and attaching the program again, when
    /// [`PinDir::set_keep_links`] allowed it and the pin is there. Returns
    /// whether it did; if not, the caller attaches a new link.
    ///
    /// Attaching anew costs a verifier run per program and, for LSM and
    /// tracing programs, a rewrite of the kernel's trampoline for the hook
    /// while other CPUs run through it.
    ///
    /// A link that no longer runs its program where it should (detached
    /// while no daemon ran) is not kept: the new link replaces it.
    pub fn keep_link(&self, program: &str) -> Result<bool, PinError> {
        let Some(cgroup_root) = self
            .keep_links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Ok(false);
        };
        let path = self.link_path(program);
        let Ok(link) = bpfsys::obj_get(&path) else {
            return Ok(false);
        };
        let Ok(info) = bpfsys::obj_info(link.as_fd()) else {
            return Ok(false);
        };
        let root = File::open(&cgroup_root);
        if link_attachment(program, link.as_fd(), info.prog_id, root.as_ref())
            != Attachment::Attached
        {
            return Ok(false);
        }
        self.hold(&format!("links/{program}"))?;
        self.pinned_links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(program.to_string());
        Ok(true)
    }

    /// Opens and keeps the object pinned at `pin` (`maps/NAME`,
    /// `links/PROGRAM`).
    fn hold(&self, pin: &str) -> Result<(), PinError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        self.hold_in(&mut held, pin)
    }

    /// [`PinDir::hold`] with the held objects' lock already taken.
    fn hold_in(&self, held: &mut BTreeMap<String, Held>, pin: &str) -> Result<(), PinError> {
        let path = self.path.join(pin);
        let hold_error = |source| PinError::Hold {
            path: path.clone(),
            source,
        };
        // Read before the object: should the pin be replaced in between,
        // the inode no longer matches and the next check asks the kernel.
        let pin_inode = pin_inode(&path);
        let fd = bpfsys::obj_get(&path).map_err(hold_error)?;
        let info = bpfsys::obj_info(fd.as_fd()).map_err(hold_error)?;
        held.insert(
            pin.to_string(),
            Held {
                fd,
                id: info.id,
                prog_id: info.prog_id,
                pin_inode,
            },
        );
        Ok(())
    }

    /// Holds a descriptor of each map pinned under `names` (see
    /// [`PinDir::pinned_maps`]), so that removing their pins loses nothing.
    pub fn hold_maps(&self, names: &[String]) -> Result<(), PinError> {
        for name in names {
            self.hold(&format!("maps/{name}"))?;
        }
        Ok(())
    }

    /// Pins held, for tests and status: `maps/NAME` and `links/PROGRAM`.
    pub fn held(&self) -> Vec<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Checks every pin this daemon made and puts back the ones that are
    /// missing or name another object. Returns what it found; an empty
    /// list when everything was in place.
    pub fn repair(&self) -> Vec<PinRepair> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let listed = self.listed_inodes();
        let mut repairs = Vec::new();
        for (pin, object) in held.iter_mut() {
            if object.pin_inode.is_some() && listed.get(pin.as_str()) == object.pin_inode.as_ref() {
                continue;
            }
            let path = self.path.join(pin);
            let inode_before = pin_inode(&path);
            let damage = match bpfsys::obj_get(&path) {
                Ok(fd) => match bpfsys::obj_info(fd.as_fd()) {
                    Ok(info) if info.id == object.id => {
                        object.pin_inode = inode_before;
                        continue;
                    }
                    Ok(info) => PinDamage::Replaced(info.id),
                    Err(_) => PinDamage::Unreadable,
                },
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => PinDamage::Missing,
                Err(_) => PinDamage::Unreadable,
            };
            let result = self.put_back(&path, object).map_err(|e| e.to_string());
            object.pin_inode = result.as_ref().ok().and_then(|()| pin_inode(&path));
            repairs.push(PinRepair {
                pin: pin.clone(),
                damage,
                held_id: object.id,
                result,
            });
        }
        repairs
    }

    /// The inode of every name in `maps/` and `links/`, by `maps/NAME` and
    /// `links/PROGRAM`, from the directory listings alone.
    fn listed_inodes(&self) -> BTreeMap<String, u64> {
        use std::os::unix::fs::DirEntryExt as _;
        let mut listed = BTreeMap::new();
        for sub in ["maps", "links"] {
            let Ok(entries) = std::fs::read_dir(self.path.join(sub)) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                listed.insert(
                    format!("{sub}/{}", entry.file_name().to_string_lossy()),
                    entry.ino(),
                );
            }
        }
        listed
    }

    /// Pins `object` at `path` again, making the directories (and taking
    /// the lock on a directory made anew) as needed.
    fn put_back(&self, path: &Path, object: &Held) -> Result<(), PinError> {
        let parent = path.parent().unwrap_or(&self.path);
        for dir in [self.path.as_path(), parent] {
            for undone in make_private_dir(dir)? {
                tracing::warn!("{undone}");
            }
        }
        self.relock()?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(path)(error)),
        }
        bpfsys::obj_pin(object.fd.as_fd(), path).map_err(io_error(path))
    }

    /// Locks the directory again when the one this daemon locked was
    /// removed and another made in its place: otherwise a second daemon
    /// could lock the new one and fight over the links.
    fn relock(&self) -> Result<(), PinError> {
        use std::os::unix::fs::MetadataExt as _;
        let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::fs::metadata(&self.path).map_err(io_error(&self.path))?;
        let locked = lock.metadata().map_err(io_error(&self.path))?;
        if (now.dev(), now.ino()) != (locked.dev(), locked.ino()) {
            *lock = self::lock(&self.path)?;
        }
        Ok(())
    }

    /// Whether each link this daemon holds is attached, asked of the
    /// kernel: for a cgroup program, whether the cgroup v2 root at
    /// `cgroup_root` lists it; for a tracing or LSM program, whether its
    /// link still exists (the kernel cannot detach those while a
    /// descriptor is open, and the daemon holds one).
    pub fn attachment(&self, cgroup_root: &Path) -> Vec<(String, Attachment)> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let root = File::open(cgroup_root);
        held.iter()
            .filter_map(|(pin, object)| {
                let program = pin.strip_prefix("links/")?;
                Some((
                    program.to_string(),
                    link_attachment(program, object.fd.as_fd(), object.prog_id, root.as_ref()),
                ))
            })
            .collect()
    }

    /// Closes the daemon's own descriptors, so that programs whose pins
    /// are gone detach.
    fn release(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
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
    pub fn remove(&self) -> Result<Vec<PathBuf>, PinError> {
        self.release();
        remove_all(&self.path)
    }
}

/// Whether the link behind `fd` (of `program`, running program
/// `prog_id`) is attached; `cgroup_root` is the cgroup v2 root, opened.
pub fn link_attachment(
    program: &str,
    fd: std::os::fd::BorrowedFd<'_>,
    prog_id: u32,
    cgroup_root: Result<&File, &std::io::Error>,
) -> Attachment {
    let info = match bpfsys::obj_info(fd) {
        Ok(info) => info,
        Err(error) => return Attachment::Detached(format!("link unreadable: {error}")),
    };
    if info.prog_id != prog_id {
        return Attachment::Detached(format!(
            "link runs program {} instead of {prog_id}",
            info.prog_id
        ));
    }
    let Some(attach_type) = bpfsys::cgroup_attach_type(program) else {
        return Attachment::Attached;
    };
    // `PROGRAM@ID`: attached to the cgroup with that id rather than the
    // root. Only a detach or the cgroup's removal clears the link's cgroup.
    if let Some((_, cgroup)) = program.split_once('@') {
        let expected: u64 = cgroup.parse().unwrap_or(0);
        return match bpfsys::link_cgroup_id(fd) {
            Ok(found) if found == expected && found != 0 => Attachment::Attached,
            Ok(0) => Attachment::Detached(format!(
                "detached from cgroup {expected}, or the cgroup was removed"
            )),
            Ok(found) => {
                Attachment::Detached(format!("attached to cgroup {found} instead of {expected}"))
            }
            Err(error) => Attachment::Detached(format!("link unreadable: {error}")),
        };
    }
    let root = match cgroup_root {
        Ok(root) => root,
        Err(error) => return Attachment::Detached(format!("cgroup v2 root unreadable: {error}")),
    };
    match bpfsys::cgroup_programs(root.as_fd(), attach_type) {
        Ok(ids) if ids.contains(&prog_id) => Attachment::Attached,
        Ok(_) => Attachment::Detached("the cgroup v2 root does not run it".into()),
        Err(error) => Attachment::Detached(format!("cannot query the cgroup v2 root: {error}")),
    }
}

/// Whether each link pinned under `path` (by a daemon that may have
/// exited) is attached, for `baton probe`. Empty when nothing is pinned.
pub fn pinned_attachment(path: &Path, cgroup_root: &Path) -> Vec<(String, Attachment)> {
    let Ok(entries) = std::fs::read_dir(path.join("links")) else {
        return Vec::new();
    };
    let root = File::open(cgroup_root);
    let mut states: Vec<(String, Attachment)> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let program = entry.file_name().to_string_lossy().into_owned();
            let state = match bpfsys::obj_get(&entry.path()) {
                Ok(fd) => match bpfsys::obj_info(fd.as_fd()) {
                    Ok(info) => link_attachment(&program, fd.as_fd(), info.prog_id, root.as_ref()),
                    Err(error) => Attachment::Detached(format!("link unreadable: {error}")),
                },
                Err(error) => Attachment::Detached(format!("pin unreadable: {error}")),
            };
            (program, state)
        })
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

/// The inode of the pin at `path`, `None` when there is none.
fn pin_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
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

/// Makes `dir` (a pin directory or its `maps`/`links`) root's, mode
/// `0700`, moving aside whatever another user put in its place.
///
/// bpffs is often mounted world-writable with the sticky bit (`1777`), so
/// any local user may create the pin directory before the daemon first
/// starts, or after an uninstall. Owning it, they could rename or unlink
/// the pins (a pinned link is what keeps enforcement alive while no daemon
/// runs), or hold the directory's `flock` and keep every daemon from
/// starting. The daemon cannot take such a directory over: the unit grants
/// neither `CAP_CHOWN` nor `CAP_DAC_OVERRIDE`. It can rename it, since root
/// owns the bpffs root and the sticky bit lets a directory's owner move
/// anything in it; so another user's directory or symlink is moved aside
/// (and removed where it can be) and a fresh one made. One that holds pins
/// is refused instead: only a privileged process can pin, so that needs an
/// operator's look. Returns what was undone, one sentence each.
fn make_private_dir(dir: &Path) -> Result<Vec<String>, PinError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mut undone = Vec::new();
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.uid() != 0 => undone.push(move_aside(dir, &meta)?),
        Ok(meta) if meta.file_type().is_symlink() => {
            // An operator's own symlink to another bpffs folder: what it
            // points to must be as private as the folder itself.
            let target = std::fs::metadata(dir).map_err(io_error(dir))?;
            if !target.is_dir() {
                return Err(PinError::NotADirectory {
                    path: dir.to_path_buf(),
                });
            }
            if target.uid() != 0 {
                return Err(PinError::Foreign {
                    path: dir.to_path_buf(),
                    uid: target.uid(),
                });
            }
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(PinError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(dir)(error)),
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(dir))?;
    }
    Ok(undone)
}

/// Renames another user's `dir` (a directory or symlink) to a name of its
/// own next to it, then removes it where this process may.
fn move_aside(dir: &Path, meta: &std::fs::Metadata) -> Result<String, PinError> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = meta.uid();
    if !meta.file_type().is_symlink() && holds_pins(dir) {
        return Err(PinError::Foreign {
            path: dir.to_path_buf(),
            uid,
        });
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = dir
        .file_name()
        .map_or_else(|| "pins".into(), |n| n.to_string_lossy().into_owned());
    let aside = dir.with_file_name(format!("{name}-foreign-{uid}-{nanos}"));
    std::fs::rename(dir, &aside).map_err(io_error(dir))?;
    let removed = if meta.file_type().is_symlink() {
        std::fs::remove_file(&aside).is_ok()
    } else {
        std::fs::remove_dir_all(&aside).is_ok()
    };
    Ok(if removed {
        format!(
            "{} had been made by uid {}, not root; removed and made afresh",
            dir.display(),
            uid
        )
    } else {
        format!(
            "{} had been made by uid {}, not root; moved to {} (remove it) and made afresh",
            dir.display(),
            uid,
            aside.display()
        )
    })
}

/// Whether `dir` or its `maps`/`links` hold anything but folders: pins
/// (bpffs shows them as files). Unreadable counts as holding some.
fn holds_pins(dir: &Path) -> bool {
    [dir.to_path_buf(), dir.join("maps"), dir.join("links")]
        .iter()
        .any(|sub| match std::fs::read_dir(sub) {
            Ok(entries) => entries
                .flatten()
                .any(|entry| entry.file_type().map_or(true, |kind| kind.is_file())),
            Err(error) => error.kind() != std::io::ErrorKind::NotFound,
        })
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
