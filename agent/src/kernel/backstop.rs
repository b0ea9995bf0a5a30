//! Where the packet backstop runs: the cgroups agents live in, or the whole
//! host.
//!
//! `skb_egress` runs for every packet of every socket in the cgroup subtree
//! it is attached to. Attached to the cgroup v2 root, a process in no agent
//! pays for it on every packet (about 70 ns a packet on the development
//! host, most of it the kernel's own dispatch), which is most of what a
//! running daemon adds to a connect. So it is attached only where agents
//! live: the cgroups that cgroup and unit selectors name (or their nearest
//! existing ancestor), the cgroup a `baton exec` agent starts in, and the
//! root when a policy selects executables (their processes may be anywhere)
//! or when more than [`MAX_BACKSTOP_CGROUPS`] cgroups would be needed.
//!
//! Correctness does not rest on that guess. `sock_create` refuses an agent
//! process a socket in a cgroup the [`BACKSTOP_CGROUPS`] map does not cover
//! (the cgroup or an ancestor) and asks the daemon, which covers it; the
//! agent's tries after that succeed. An agent that moved itself to another cgroup
//! is caught the same way. Sockets an agent did not create (made before it
//! joined, or passed in) have no known cgroup: the address hooks refuse
//! their use until the backstop covers the whole host.
//!
//! Coverage only grows while the pins live: a socket created under a
//! cgroup's coverage keeps its packets judged for its whole life, even
//! after its cgroup is removed (see [`Backstop::prune`]).
//!
//! [`BACKSTOP_CGROUPS`]: agent_common::backstop::BACKSTOP_CGROUPS

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::{backstop::MAX_BACKSTOP_CGROUPS, map_names};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
    programs::ProgramFd,
};
use thiserror::Error;

use super::{
    KernelError, bpfsys,
    maps::{cgroup_id, take},
    pins::{PinDir, PinError},
};

/// The program's name, and the pin name of its link on the root.
pub(super) const PROGRAM: &str = "skb_egress";
/// `BPF_CGROUP_INET_EGRESS`.
pub(super) const INET_EGRESS: u32 = 1;

/// Errors while widening the backstop's coverage.
#[derive(Debug, Error)]
pub enum BackstopError {
    /// The program did not load at start, so it cannot be attached.
    #[error("the packet backstop program is not loaded: {0}")]
    Unavailable(String),
    /// A cgroup directory could not be opened or read.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The kernel refused the attachment.
    #[error("cannot attach the packet backstop to cgroup {path}: {source}")]
    Attach {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The link could not be pinned.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// `BACKSTOP_CGROUPS` refused an update.
    #[error("map {}: {source}", map_names::BACKSTOP_CGROUPS)]
    Map {
        /// Underlying error.
        source: MapError,
    },
}

/// How an attachment to a cgroup that was removed before this daemon
/// started is listed: its directory is not known any more.
fn removed_cgroup(cgroup_root: &Path, id: u64) -> PathBuf {
    cgroup_root.join(format!("(removed cgroup {id})"))
}

/// What [`Backstop::cover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// The cgroup was covered already (by itself, an ancestor or the root).
    Already,
    /// The program is now attached to this cgroup.
    Attached(PathBuf),
    /// The program now covers the whole host.
    Host,
}

/// The backstop program's attachments and the kernel's view of them.
pub struct Backstop {
    /// The loaded program, or why it did not load.
    program: Result<ProgramFd, String>,
    cgroups: HashMap<MapData, u64, u8>,
    pins: Arc<PinDir>,
    cgroup_root: PathBuf,
    root_id: u64,
    /// cgroup id → directory of each attachment, the root's included.
    covered: BTreeMap<u64, PathBuf>,
}

impl Backstop {
    /// Takes the map out of the loaded object and brings it in line with
    /// the links `loader::load_backstop` kept or made: an entry for exactly each cgroup
    /// the program runs on.
    pub fn new(
        ebpf: &mut Ebpf,
        pins: Arc<PinDir>,
        cgroup_root: &Path,
    ) -> Result<Self, KernelError> {
        let program = match ebpf.program(PROGRAM) {
            Some(aya::programs::Program::CgroupSkb(program)) => program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .map_err(|error| error.to_string()),
            _ => Err(format!("{PROGRAM} is missing from the object")),
        };
        let mut cgroups: HashMap<MapData, u64, u8> = take(ebpf, map_names::BACKSTOP_CGROUPS)?;
        let root_id = cgroup_id(cgroup_root).map_err(|source| KernelError::CgroupRoot {
            path: cgroup_root.to_path_buf(),
            source,
        })?;
        let mut covered = BTreeMap::new();
        let held = pins.held();
        let scoped: Vec<u64> = held
            .iter()
            .filter_map(|pin| pin.strip_prefix(&format!("links/{PROGRAM}@")))
            .filter_map(|id| id.parse().ok())
            .collect();
        if held.iter().any(|pin| pin == &format!("links/{PROGRAM}")) {
            covered.insert(root_id, cgroup_root.to_path_buf());
            // The root covers them: they would only run the program twice.
            for id in &scoped {
                pins.unpin_link(&format!("{PROGRAM}@{id}"));
            }
        } else if !scoped.is_empty() {
            // Pins name cgroups by id: find their directories, to know what
            // each one covers.
            for dir in super::cgroup::subtree(cgroup_root) {
                if let Ok(id) = cgroup_id(&dir)
                    && scoped.contains(&id)
                {
                    covered.insert(id, dir);
                }
            }
            for id in scoped {
                if covered.contains_key(&id) {
                    continue;
                }
                let pin = format!("{PROGRAM}@{id}");
                if pins.link_cgroup(&pin) == Some(id) {
                    // Removed, but its sockets live on and the program
                    // still judges their packets: kept until the kernel
                    // lets go (`prune`).
                    covered.insert(id, removed_cgroup(cgroup_root, id));
                } else {
                    // Gone for good: nothing can be created there.
                    pins.unpin_link(&pin);
                }
            }
        }
        let stale: Vec<u64> = cgroups
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !covered.contains_key(id) && (program.is_ok() || *id != root_id))
            .collect();
        for id in stale {
            let _ = cgroups.remove(&id);
        }
        // Without the program there is nothing to attach, and refusing
        // agents their sockets would only break them: the kernel programs
        // are told the host is covered, and status says the backstop is
        // unavailable.
        let mut marked: Vec<u64> = covered.keys().copied().collect();
        if program.is_err() {
            marked.push(root_id);
        }
        for id in &marked {
            cgroups
                .insert(id, 1, 0)
                .map_err(|source| KernelError::Map {
                    map: map_names::BACKSTOP_CGROUPS,
                    source,
                })?;
        }
        Ok(Self {
            program,
            cgroups,
            pins,
            cgroup_root: cgroup_root.to_path_buf(),
            root_id,
            covered,
        })
    }

    /// Whether the program runs for every socket on the host.
    pub fn covers_host(&self) -> bool {
        self.program.is_err() || self.covered.contains_key(&self.root_id)
    }

    /// Why the program is not loaded, if it is not.
    pub fn unavailable(&self) -> Option<&str> {
        self.program.as_ref().err().map(String::as_str)
    }

    /// The directories the program is attached to, root first if it is.
    pub fn attached(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.covered.values().cloned().collect();
        dirs.sort();
        dirs
    }

    /// Makes the program run for sockets created in `dir` (a cgroup v2
    /// directory) and below it.
    pub fn cover(&mut self, dir: &Path) -> Result<Coverage, BackstopError> {
        // An entry covers `dir` only while its directory is still its
        // cgroup: one removed and made again under the same name is a new
        // cgroup, which the old attachment does not reach.
        let covered_by =
            |(id, c): (&u64, &PathBuf)| dir.starts_with(c) && cgroup_id(c).ok() == Some(*id);
        if self.covers_host() || self.covered.iter().any(covered_by) {
            return Ok(Coverage::Already);
        }
        if dir == self.cgroup_root || self.covered.len() >= MAX_BACKSTOP_CGROUPS as usize {
            return self.cover_host().map(|_| Coverage::Host);
        }
        let id = cgroup_id(dir).map_err(|source| BackstopError::Cgroup {
            path: dir.to_path_buf(),
            source,
        })?;
        self.attach(dir, &format!("{PROGRAM}@{id}"), id)?;
        Ok(Coverage::Attached(dir.to_path_buf()))
    }

    /// Makes the program run for every socket on the host, then drops the
    /// narrower attachments, which would only run it twice. Returns
    /// whether anything changed.
    pub fn cover_host(&mut self) -> Result<bool, BackstopError> {
        if self.covers_host() {
            return Ok(false);
        }
        let root = self.cgroup_root.clone();
        self.attach(&root, PROGRAM, self.root_id)?;
        let narrower: Vec<u64> = self
            .covered
            .keys()
            .copied()
            .filter(|id| *id != self.root_id)
            .collect();
        for id in narrower {
            self.detach(id);
        }
        Ok(true)
    }

    /// Forgets attachments whose cgroup was removed and that the kernel
    /// has let go of. Returns their directories.
    ///
    /// A removed cgroup lives on, offline, while any socket made in it
    /// does, and the programs attached to it keep judging that socket's
    /// packets. Dropping the link then would let an agent that moved out
    /// and removed its cgroup send from its old sockets past the backstop.
    /// The kernel detaches the link itself once the cgroup is released
    /// (its link then names cgroup 0); only then is the attachment
    /// forgotten. Until then it stays, and counts against
    /// [`MAX_BACKSTOP_CGROUPS`].
    pub fn prune(&mut self) -> Vec<PathBuf> {
        let gone: Vec<u64> = self
            .covered
            .iter()
            .filter(|(id, dir)| **id != self.root_id && cgroup_id(dir).ok() != Some(**id))
            .filter(|(id, _)| self.pins.link_cgroup(&format!("{PROGRAM}@{id}")) != Some(**id))
            .map(|(id, _)| *id)
            .collect();
        let mut removed = Vec::new();
        for id in gone {
            if let Some(dir) = self.detach(id) {
                removed.push(dir);
            }
        }
        removed
    }

    /// Attaches the program to `dir` (cgroup `id`), pins the link as
    /// `pin`, and only then tells the kernel programs it is there.
    fn attach(&mut self, dir: &Path, pin: &str, id: u64) -> Result<(), BackstopError> {
        let program = self
            .program
            .as_ref()
            .map_err(|why| BackstopError::Unavailable(why.clone()))?;
        let cgroup = File::open(dir).map_err(|source| BackstopError::Cgroup {
            path: dir.to_path_buf(),
            source,
        })?;
        let link = bpfsys::cgroup_link_create(program.as_fd(), cgroup.as_fd(), INET_EGRESS)
            .map_err(|source| BackstopError::Attach {
                path: dir.to_path_buf(),
                source,
            })?;
        self.pins.pin_link_fd(pin, link)?;
        self.cgroups
            .insert(id, 1, 0)
            .map_err(|source| BackstopError::Map { source })?;
        self.covered.insert(id, dir.to_path_buf());
        Ok(())
    }

    /// Takes the entry out of the map before the link goes, so no program
    /// counts on an attachment that is leaving.
    fn detach(&mut self, id: u64) -> Option<PathBuf> {
        let _ = self.cgroups.remove(&id);
        self.pins.unpin_link(&format!("{PROGRAM}@{id}"));
        self.covered.remove(&id)
    }
}
