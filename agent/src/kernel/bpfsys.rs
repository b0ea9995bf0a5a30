//! The few `bpf()` commands the pin guard needs on plain descriptors, which
//! aya 0.14 keeps private: opening a pin, pinning a descriptor, reading an
//! object's id, listing the programs attached to a cgroup, and making a
//! cgroup link for a program type whose link aya does not hand out.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `bpf(cmd, attr, size)`, with `attr` a zero-padded `bpf_attr` prefix.
fn bpf(command: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a live, writable buffer of the size passed; the
    // kernel reads and writes only inside it (and the buffers it names).
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Opens the object pinned at `path` (a map, a link or a program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    // bpf_attr: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 3];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a new descriptor the kernel just returned, owned by no one.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object behind `fd` at `path`, which must not exist.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = [0u64; 3];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Attaches `program` to `cgroup` at `attach_type` (`enum
/// bpf_attach_type`) with `BPF_LINK_CREATE` and returns the link.
pub fn cgroup_link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    // bpf_attr: prog_fd (u32), target_fd (u32), attach_type (u32), flags (u32).
    let mut attr = [0u64; 8];
    attr[0] = u64::from(program.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a new descriptor the kernel just returned, owned by no one.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The start shared by `bpf_map_info`, `bpf_prog_info` and
/// `bpf_link_info`: type and id, then (for a link) its program's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjInfo {
    /// The object's type within its kind.
    pub kind: u32,
    /// The kernel-wide id of the object.
    pub id: u32,
    /// For a link, the id of its program.
    pub prog_id: u32,
}

/// Reads the id (and, for a link, the program id) of the object behind `fd`.
pub fn obj_info(fd: BorrowedFd<'_>) -> io::Result<ObjInfo> {
    let mut info = [0u32; 4];
    // bpf_attr: bpf_fd (u32), info_len (u32), info (u64). A shorter
    // info_len than the kernel's struct is accepted and filled as far.
    let mut attr = [0u64; 2];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(ObjInfo {
        kind: info[0],
        id: info[1],
        prog_id: info[2],
    })
}

/// The cgroup a cgroup link is attached to, from `bpf_link_info`; 0 once
/// the link was detached or its cgroup removed.
pub fn link_cgroup_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // bpf_link_info: type, id, prog_id (u32 each), then the per-type union
    // at offset 16; for a cgroup link it starts with cgroup_id (u64).
    let mut info = [0u64; 4];
    let mut attr = [0u64; 2];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[2])
}

/// Ids of the programs attached directly to the cgroup `cgroup` for
/// `attach_type`, as the kernel runs them.
pub fn cgroup_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    // A cgroup holds at most 64 programs per attach type.
    let mut ids = [0u32; 64];
    // bpf_attr.query: target_fd, attach_type, query_flags, attach_flags,
    // prog_ids (u64), prog_cnt (u32).
    let mut attr = [0u64; 4];
    attr[0] = u64::from(cgroup.as_raw_fd() as u32) | (u64::from(attach_type) << 32);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] & 0xffff_ffff) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// The cgroup attach type of each cgroup program Baton attaches
/// (`enum bpf_attach_type`), `None` for programs attached elsewhere.
pub fn cgroup_attach_type(program: &str) -> Option<u32> {
    let program = program.split_once('@').map_or(program, |(name, _)| name);
    Some(match program {
        "skb_egress" => 1,
        "sock_create" => 2,
        "connect4" => 10,
        "connect6" => 11,
        "sendmsg4" => 14,
        "sendmsg6" => 15,
        "recvmsg4" => 19,
        "recvmsg6" => 20,
        "getpeername4" => 29,
        "getpeername6" => 30,
        "setsockopt" => 22,
        _ => return None,
    })
}
