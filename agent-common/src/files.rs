//! File rule maps: rule objects, found by walking up from the file an
//! access reaches, and an LPM trie of path prefixes for rules that have no
//! object.
//!
//! Paths are matched on component boundaries: a rule for `/x/.ssh` is stored
//! as `/x/.ssh/`, and the kernel appends `/` to the path it looks up, so
//! `/x/.ssh` and `/x/.ssh/id` match while `/x/.ssh_old` does not.

use core::mem::size_of;

/// Path bytes held in a key. Rules longer than this are rejected at policy
/// check; longer paths are matched on their first `PATH_KEY_BYTES` bytes.
pub const PATH_KEY_BYTES: usize = 248;

/// Bits of the key in front of the path (generation and agent id).
pub const FILE_KEY_HEADER_BITS: u32 = 64;

/// Data part of a file LPM trie key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Policy generation, big-endian.
    pub generation: [u8; 4],
    /// Agent id, big-endian.
    pub agent_id: [u8; 4],
    /// Path bytes, with a `/` after the last component.
    pub path: [u8; PATH_KEY_BYTES],
}
const _: () = assert!(size_of::<FileKey>() == 256);

impl Default for FileKey {
    fn default() -> Self {
        Self {
            generation: [0; 4],
            agent_id: [0; 4],
            path: [0; PATH_KEY_BYTES],
        }
    }
}

/// Index of each right in [`FileValue`].
pub mod right {
    /// Open for reading.
    pub const READ: usize = 0;
    /// Open for writing, truncate, chmod.
    pub const WRITE: usize = 1;
    /// Create a file, directory or link.
    pub const CREATE: usize = 2;
    /// Unlink or rmdir.
    pub const DELETE: usize = 3;
    /// Rename (either end).
    pub const RENAME: usize = 4;
    /// Execute or map executable.
    pub const EXEC: usize = 5;
    /// Number of rights.
    pub const COUNT: usize = 6;
    /// Every right's bit.
    pub const ALL: u32 = (1 << COUNT) - 1;
    /// Bit of a right in a right set.
    pub const fn bit(right: usize) -> u32 {
        1 << right
    }
}

/// Slots per value; more than [`right::COUNT`] so rights can be added later
/// without changing the layout.
pub const RIGHT_SLOTS: usize = 8;

/// Slot of a [`FileValue`] that is not a right: decision
/// [`ALLOW`](crate::verdict::decision::ALLOW) there marks the path as a
/// secret (`files.secrets`), and its rule id names the secret. An open of
/// a secret for reading taints the agent (see [`crate::identity::SecretTaint`]).
pub const SECRET_SLOT: usize = 6;
const _: () = assert!(SECRET_SLOT >= right::COUNT && SECRET_SLOT < RIGHT_SLOTS);

/// Value of a file rule: one decision per right, already resolved against
/// the less specific prefixes that cover this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileValue {
    /// One of [`crate::verdict::decision`] per right.
    pub decisions: [u8; RIGHT_SLOTS],
    /// Rule id reported per right.
    pub rule_ids: [u32; RIGHT_SLOTS],
}
const _: () = assert!(size_of::<FileValue>() == 40);

/// Key of [`FileObjects`](crate::map_names::FILE_OBJECTS): a rule object's
/// decisions for one agent under one policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// Policy generation.
    pub generation: u32,
    /// Agent id.
    pub agent_id: u32,
    /// The object's id, as its [`InodeMark`] holds it.
    pub object: u64,
}
const _: () = assert!(size_of::<ObjectKey>() == 16);

/// Flags of an [`ObjectValue`].
pub mod object_flags {
    /// No rule of the agent that is matched by path alone (a path that did
    /// not exist at load, or was a symbolic link) lies under this object,
    /// so when it is the nearest object above a file its decisions are the
    /// whole answer and the path is not looked up.
    pub const COMPLETE: u32 = 1;
}

/// Decisions of a rule object for one agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectValue {
    /// The rule entry's decisions, as the path trie would hold them.
    pub value: FileValue,
    /// [`object_flags`].
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ObjectValue>() == 48);

/// What the daemon stores on the inode of each rule object (inode-local
/// storage): an id that is never reused, so a mark can only ever name the
/// object it was put on. The storage is freed with the inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeMark {
    /// The object's id: the daemon's random 32-bit epoch (top bit always
    /// set) in the high half, a counter in the low half.
    pub object: u64,
}
const _: () = assert!(size_of::<InodeMark>() == 8);
