//! Reads the running kernel's BTF and resolves the struct member offsets and
//! hook argument positions the programs need.
//!
//! Only the small part of the BTF format that offset resolution needs is
//! decoded: type records, struct/union members and function prototypes.
//! Members inside anonymous structs and unions are found by descending into
//! them, as the C compiler would.

use std::{collections::HashMap, path::Path};

use agent_common::offsets::KernelOffsets;
use thiserror::Error;

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors while reading BTF or resolving a member.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error(
        "cannot read kernel BTF at {path}: {source} (Baton needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        /// File that was read.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid BTF.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(String),
    /// A struct the programs need is missing.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// A member the programs need is missing.
    #[error("kernel BTF has no member {member} in struct {strukt}")]
    NoMember {
        /// Struct searched.
        strukt: String,
        /// Member searched for.
        member: String,
    },
    /// A function the programs need is missing.
    #[error("kernel BTF has no function {0}")]
    NoFunction(String),
    /// A function has no parameter of that name.
    #[error("kernel function {function} has no parameter {parameter}")]
    NoParameter {
        /// Function searched.
        function: String,
        /// Parameter searched for.
        parameter: String,
    },
}

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One struct/union member or function parameter.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

/// One decoded type record.
#[derive(Clone, Debug)]
struct TypeRecord {
    kind: u32,
    name: String,
    /// Referenced type for modifiers, typedefs, functions.
    type_id: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob.
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<TypeRecord>,
    by_name: HashMap<String, Vec<u32>>,
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| BtfError::Malformed("empty file".into()))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed(format!("bad magic {magic:#x}")));
        }
        let header_len = read_u32(data, 4)? as usize;
        let type_off = read_u32(data, 8)? as usize;
        let type_len = read_u32(data, 12)? as usize;
        let str_off = read_u32(data, 16)? as usize;
        let str_len = read_u32(data, 20)? as usize;
        let types_start = header_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(header_len + str_off..header_len + str_off + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?;
        let string_at = |offset: u32| -> String {
            let start = offset as usize;
            strings
                .get(start..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .unwrap_or_default()
        };

        let mut types = vec![TypeRecord {
            kind: 0,
            name: String::new(),
            type_id: 0,
            members: Vec::new(),
        }];
        let mut at = types_start;
        while at < types_end {
            let name_off = read_u32(data, at)?;
            let info = read_u32(data, at + 4)?;
            let size_or_type = read_u32(data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = read_u32(data, at + 8)?;
                        members.push(Member {
                            name: string_at(read_u32(data, at)?),
                            type_id: read_u32(data, at + 4)?,
                            bit_offset: if kind_flag == 1 {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                }
                KIND_ENUM => at += 8 * vlen,
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        members.push(Member {
                            name: string_at(read_u32(data, at)?),
                            type_id: read_u32(data, at + 4)?,
                            bit_offset: 0,
                        });
                        at += 8;
                    }
                }
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(TypeRecord {
                kind,
                name: string_at(name_off),
                type_id: size_or_type,
                members,
            });
        }
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, record) in types.iter().enumerate() {
            if !record.name.is_empty() {
                by_name
                    .entry(record.name.clone())
                    .or_default()
                    .push(id as u32);
            }
        }
        Ok(Self { types, by_name })
    }

    fn record(&self, id: u32) -> Option<&TypeRecord> {
        self.types.get(id as usize)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.record(id) {
                Some(r)
                    if matches!(
                        r.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = r.type_id
                }
                _ => break,
            }
        }
        id
    }

    fn find_struct(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(name)
            .and_then(|ids| {
                ids.iter().copied().find(|&id| {
                    self.record(id)
                        .is_some_and(|r| r.kind == KIND_STRUCT && !r.members.is_empty())
                })
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Byte offset of `member` in struct `strukt`, looking through anonymous
    /// structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self.find_struct(strukt)?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let record = self.record(id)?;
        for m in &record.members {
            if m.name == member {
                return Some(base_bits + m.bit_offset);
            }
        }
        for m in record.members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.strip(m.type_id);
            if self
                .record(inner)
                .is_some_and(|r| matches!(r.kind, KIND_STRUCT | KIND_UNION))
                && let Some(found) = self.find_member(inner, member, base_bits + m.bit_offset)
            {
                return Some(found);
            }
        }
        None
    }

    /// Zero-based position of `parameter` in kernel function `function`.
    pub fn parameter_position(&self, function: &str, parameter: &str) -> Result<usize, BtfError> {
        let func = self
            .by_name
            .get(function)
            .and_then(|ids| {
                ids.iter()
                    .copied()
                    .find(|&id| self.record(id).is_some_and(|r| r.kind == KIND_FUNC))
            })
            .ok_or_else(|| BtfError::NoFunction(function.to_string()))?;
        let proto = self
            .record(func)
            .map(|r| r.type_id)
            .and_then(|id| self.record(id))
            .filter(|r| r.kind == KIND_FUNC_PROTO)
            .ok_or_else(|| BtfError::Malformed(format!("function {function} has no prototype")))?;
        proto
            .members
            .iter()
            .position(|p| p.name == parameter)
            .ok_or_else(|| BtfError::NoParameter {
                function: function.to_string(),
                parameter: parameter.to_string(),
            })
    }

    /// Number of parameters of kernel function `function`.
    pub fn parameter_count(&self, function: &str) -> Result<usize, BtfError> {
        let func = self
            .by_name
            .get(function)
            .and_then(|ids| {
                ids.iter()
                    .copied()
                    .find(|&id| self.record(id).is_some_and(|r| r.kind == KIND_FUNC))
            })
            .ok_or_else(|| BtfError::NoFunction(function.to_string()))?;
        self.record(func)
            .map(|r| r.type_id)
            .and_then(|id| self.record(id))
            .filter(|r| r.kind == KIND_FUNC_PROTO)
            .map(|r| r.members.len())
            .ok_or_else(|| BtfError::Malformed(format!("function {function} has no prototype")))
    }

    /// Whether a function of this name exists in the kernel.
    pub fn has_function(&self, function: &str) -> bool {
        self.by_name.get(function).is_some_and(|ids| {
            ids.iter()
                .any(|&id| self.record(id).is_some_and(|r| r.kind == KIND_FUNC))
        })
    }

    /// Resolves every offset the programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            file_f_path: self.member_offset("file", "f_path")?,
            file_f_mode: self.member_offset("file", "f_mode")?,
            task_pid: self.member_offset("task_struct", "pid")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_signal: self.member_offset("task_struct", "signal")?,
            signal_live: self.member_offset("signal_struct", "live")?,
            binprm_file: self.member_offset("linux_binprm", "file")?,
            file_f_inode: self.member_offset("file", "f_inode")?,
            inode_i_ino: self.member_offset("inode", "i_ino")?,
            inode_i_sb: self.member_offset("inode", "i_sb")?,
            sb_s_dev: self.member_offset("super_block", "s_dev")?,
            inode_i_nlink: self.member_offset("inode", "i_nlink")?,
            path_mnt: self.member_offset("path", "mnt")?,
            path_dentry: self.member_offset("path", "dentry")?,
            dentry_d_parent: self.member_offset("dentry", "d_parent")?,
            dentry_d_name: self.member_offset("dentry", "d_name")?,
            qstr_len: self.member_offset("qstr", "len")?,
            qstr_name: self.member_offset("qstr", "name")?,
            mount_mnt: self.member_offset("mount", "mnt")?,
            mount_mnt_parent: self.member_offset("mount", "mnt_parent")?,
            mount_mnt_mountpoint: self.member_offset("mount", "mnt_mountpoint")?,
            vfsmount_mnt_root: self.member_offset("vfsmount", "mnt_root")?,
            task_real_parent: self.member_offset("task_struct", "real_parent")?,
            inode_i_mode: self.member_offset("inode", "i_mode")?,
            vma_vm_file: self.member_offset("vm_area_struct", "vm_file")?,
            dentry_d_inode: self.member_offset("dentry", "d_inode")?,
            dentry_d_flags: self.member_offset("dentry", "d_flags")?,
            resolved: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { int b; struct { int c; }; }; }`
    /// plus `int f(int x, int y)`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0f\0x\0y\0";
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([name("int"), KIND_INT << 24, 4, 32]);
        // 2: struct { int c; } at offset 0
        types.extend([0, (KIND_STRUCT << 24) | 1, 4, name("c"), 1, 0]);
        // 3: union { int b; struct {..} } (anon)
        types.extend([0, (KIND_UNION << 24) | 2, 4, name("b"), 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union at bit 64 }
        types.extend([
            name("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            name("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: func proto (x, y)
        types.extend([
            0,
            (KIND_FUNC_PROTO << 24) | 2,
            1,
            name("x"),
            1,
            name("y"),
            1,
        ]);
        // 6: func f
        types.extend([name("f"), KIND_FUNC << 24, 5]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        blob.extend(24u32.to_le_bytes());
        blob.extend(0u32.to_le_bytes());
        blob.extend((type_bytes.len() as u32).to_le_bytes());
        blob.extend((type_bytes.len() as u32).to_le_bytes());
        blob.extend((strings.len() as u32).to_le_bytes());
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn resolves_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "d"),
            Err(BtfError::NoMember { .. })
        ));
    }

    #[test]
    fn finds_parameter_positions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.parameter_position("f", "y").unwrap(), 1);
        assert!(btf.parameter_position("f", "z").is_err());
        assert!(btf.parameter_position("g", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly").is_err());
    }

    /// The running kernel's offsets resolve, and match what is known of the
    /// kernels Baton is tested on.
    #[test]
    fn running_kernel_offsets() {
        if !Path::new(VMLINUX_BTF).exists() {
            panic!("{VMLINUX_BTF} is missing: the test kernels all have BTF");
        }
        let btf = Btf::from_kernel().unwrap();
        let offsets = btf.kernel_offsets().unwrap();
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy().to_string();
        let expected_f_path = if release.starts_with("6.1.") || release.starts_with("6.1-") {
            16
        } else {
            64
        };
        assert_eq!(offsets.file_f_path, expected_f_path, "kernel {release}");
        assert!(offsets.task_tgid == offsets.task_pid + 4, "{offsets:?}");
        assert_eq!(
            btf.parameter_position("bpf_lsm_file_open", "file").unwrap(),
            0
        );
    }
}
