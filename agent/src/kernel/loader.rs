//! Loading and attaching the programs.

use std::{fs::File, path::PathBuf};

use agent_common::{
    identity::EVENTS_PER_SECOND_GLOBAL,
    map_names,
    offsets::{KERNEL_OFFSETS_GLOBAL, KernelOffsets},
    programs::{self, Program, Role},
};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, Lsm,
        ProgramError, links::FdLink,
    },
};

use super::{
    ControlState, EBPF_OBJECT, KernelError, backstop, bpfsys, btf::Btf, cgroup::cgroup2_mount,
    pins::PinDir,
};

/// The egress programs; each attaches to the hook of the same name.
pub fn egress_programs() -> impl Iterator<Item = &'static str> {
    programs::with_role(Role::Egress).map(|p| p.name)
}

/// Whether `program` is one of the egress programs.
pub fn is_egress_program(program: &str) -> bool {
    egress_programs().any(|p| p == program)
}

/// The loaded programs and their maps.
pub struct Enforcer {
    /// The loaded object; dropping it detaches everything.
    pub ebpf: Ebpf,
    /// Offsets handed to the programs.
    pub offsets: KernelOffsets,
    /// Where the cgroup programs are attached.
    pub cgroup_root: PathBuf,
    /// Egress enforcement.
    pub egress: ControlState,
    /// File enforcement.
    pub files: ControlState,
    /// BPF LSM `socket_create`: every agent may create only the socket
    /// families its policy allows (never `AF_PACKET`).
    pub socket_families: ControlState,
    /// The packet-level backstop: socket tagging and `cgroup_skb/egress`.
    pub packet_backstop: ControlState,
    /// Refusal of the socket options that reroute packets.
    pub routing_options: ControlState,
    /// Each file and exec hook beyond `file_open`, where BPF LSM loads.
    pub lsm_hooks: Vec<(&'static str, ControlState)>,
    /// Where BPF LSM is refused: each detection program (`Enforced` means
    /// attached: it detects, it cannot deny). Empty where BPF LSM loads.
    pub detection: Vec<(&'static str, ControlState)>,
}

/// File and exec LSM hooks beyond `file_open`, self-protection and the
/// namespace and mount hooks, with the numbers of context arguments their
/// programs may find ([`Program::lsm_args`]). A kernel whose hook
/// signature is none of these does not get the program. Where a signature
/// changed between kernels, the program reads no argument whose position
/// moved.
fn file_hooks() -> impl Iterator<Item = &'static Program> {
    programs::PROGRAMS.iter().filter(|p| {
        matches!(
            p.role,
            Role::Files | Role::SelfProtection | Role::Namespaces
        )
    })
}

/// The namespace and mount hooks: without all of them an agent may reach
/// a denied file through another mount or root.
pub fn namespace_hooks() -> impl Iterator<Item = &'static str> {
    programs::with_role(Role::Namespaces).map(|p| p.name)
}

/// What the programs' behaviour depends on at load: the object and the
/// values written into it. Equal fingerprints mean a running program is
/// the one a new load would make.
fn programs_fingerprint(
    offsets: &KernelOffsets,
    events_per_second: u32,
    detect: &agent_common::detect::DetectOffsets,
    kernel_log: super::klog::KernelLogSettings,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(EBPF_OBJECT);
    hash.update(format!(
        "{offsets:?}|{events_per_second}|{detect:?}|{kernel_log:?}"
    ));
    hash.finalize().into()
}

/// The one-element map holding the attached programs' fingerprint.
fn fingerprint_map(
    ebpf: &mut Ebpf,
) -> Result<aya::maps::Array<&mut aya::maps::MapData, [u8; 32]>, KernelError> {
    let map = ebpf
        .map_mut(map_names::PROGRAMS_FINGERPRINT)
        .ok_or(KernelError::MissingMap(map_names::PROGRAMS_FINGERPRINT))?;
    aya::maps::Array::try_from(map).map_err(|source| KernelError::Map {
        map: map_names::PROGRAMS_FINGERPRINT,
        source,
    })
}

fn program_error(
    program: &'static str,
    action: &'static str,
) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program {
        program,
        action,
        source,
    }
}

impl Enforcer {
    /// Loads the object with this kernel's offsets and attaches identity
    /// tracking and egress programs. File programs are attached when the
    /// kernel accepts BPF LSM; otherwise `files` says why not.
    ///
    /// Maps are shared with (or, on a first start, pinned in) `pins`, and
    /// every link is pinned there, replacing a previous daemon's link for
    /// the same program only once the new one is attached.
    /// `events_per_second` is each agent's event rate (0: unlimited).
    ///
    /// `detection` says whether any agent could need the detection programs
    /// (agents selected by cgroup, unit or executable); without BPF LSM they
    /// hook every system call on the host, so they are attached only then.
    pub fn load(
        pins: &PinDir,
        events_per_second: u32,
        detection: bool,
        kernel_log: super::klog::KernelLogSettings,
    ) -> Result<Self, KernelError> {
        let btf = Btf::from_kernel()?;
        let offsets = btf.kernel_offsets()?;
        let detect_offsets = super::detect::offsets(&btf);
        let detect_globals = detect_offsets.clone().unwrap_or_default();
        let aya_btf = aya::Btf::from_sys_fs()?;
        let pinned = pins.pinned_maps(EBPF_OBJECT)?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            .override_global(KERNEL_OFFSETS_GLOBAL, &offsets, true)
            .override_global(EVENTS_PER_SECOND_GLOBAL, &events_per_second, true)
            .override_global(super::detect::GLOBAL, &detect_globals, true);
        super::klog::set_globals(&mut loader, &kernel_log);
        for name in &pinned {
            loader.map_pin_path(name.as_str(), pins.map_path(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        pins.hold_maps(&pinned)?;
        // A previous daemon's programs stay when they came from the same
        // object and settings; otherwise its stamp goes before the first
        // link is replaced, so a daemon killed midway leaves none behind
        // that would vouch for a mix of old and new programs.
        let fingerprint =
            programs_fingerprint(&offsets, events_per_second, &detect_globals, kernel_log);
        let same_programs = {
            let mut stamp = fingerprint_map(&mut ebpf)?;
            let same = stamp.get(&0, 0).is_ok_and(|found| found == fingerprint);
            if !same {
                stamp
                    .set(0, [0; 32], 0)
                    .map_err(|source| KernelError::Map {
                        map: map_names::PROGRAMS_FINGERPRINT,
                        source,
                    })?;
            }
            same
        };
        let cgroup_root = cgroup2_mount()?;
        pins.set_keep_links(same_programs.then(|| cgroup_root.clone()));

        for tracepoint in programs::with_role(Role::Identity).map(|p| p.name) {
            if pins.keep_link(tracepoint)? {
                continue;
            }
            let program: &mut BtfTracePoint = ebpf
                .program_mut(tracepoint)
                .ok_or(KernelError::MissingProgram(tracepoint))?
                .try_into()
                .map_err(program_error(tracepoint, "load"))?;
            program
                .load(tracepoint, &aya_btf)
                .map_err(program_error(tracepoint, "load"))?;
            let link = program
                .attach()
                .map_err(program_error(tracepoint, "attach"))?;
            let link = program
                .take_link(link)
                .map_err(program_error(tracepoint, "attach"))?;
            pins.pin_link(tracepoint, FdLink::from(link))?;
        }

        let root = File::open(&cgroup_root).map_err(|source| KernelError::CgroupRoot {
            path: cgroup_root.clone(),
            source,
        })?;
        for name in egress_programs() {
            if pins.keep_link(name)? {
                continue;
            }
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram(name))?
                .try_into()
                .map_err(program_error(name, "load"))?;
            program.load().map_err(program_error(name, "load"))?;
            // On 5.7+ aya attaches through a BPF link, which the kernel always
            // attaches in multi mode (and rejects any explicit flag), so other
            // tools' programs on the root keep running next to ours.
            let link = program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(program_error(name, "attach"))?;
            let link = program
                .take_link(link)
                .map_err(program_error(name, "attach"))?;
            let link = FdLink::try_from(link).map_err(|source| KernelError::Link {
                program: name,
                source,
            })?;
            pins.pin_link(name, link)?;
        }

        if !pins.keep_link("sock_create")? {
            let program: &mut CgroupSock = ebpf
                .program_mut("sock_create")
                .ok_or(KernelError::MissingProgram("sock_create"))?
                .try_into()
                .map_err(program_error("sock_create", "load"))?;
            program
                .load()
                .map_err(program_error("sock_create", "load"))?;
            let link = program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(program_error("sock_create", "attach"))?;
            let link = program
                .take_link(link)
                .map_err(program_error("sock_create", "attach"))?;
            let link = FdLink::try_from(link).map_err(|source| KernelError::Link {
                program: "sock_create",
                source,
            })?;
            pins.pin_link("sock_create", link)?;
        }

        let packet_backstop = match load_backstop(&mut ebpf, pins, &cgroup_root) {
            Ok(()) => ControlState::Enforced,
            Err(error) => ControlState::Unavailable(error.to_string()),
        };
        let routing_options = match attach_setsockopt(&mut ebpf, &root, pins) {
            Ok(()) => ControlState::Enforced,
            Err(error) => ControlState::Unavailable(error.to_string()),
        };

        let mut lsm_hooks = Vec::new();
        let files = match load_lsm(&mut ebpf, "file_open", "file_open", &aya_btf, Some(pins)) {
            Ok(()) => {
                // The file_open program loading proves BPF LSM works here;
                // each further hook still reports on its own.
                for Program {
                    target: hook,
                    lsm_args: parameters,
                    ..
                } in file_hooks()
                {
                    let hook = *hook;
                    let state = match btf.parameter_count(&format!("bpf_lsm_{hook}")) {
                        Ok(found) if !parameters.contains(&(found + 1)) => {
                            let expected: Vec<String> =
                                parameters.iter().map(|p| (p - 1).to_string()).collect();
                            ControlState::Unavailable(format!(
                                "this kernel's {hook} hook takes {found} arguments, the program expects {}",
                                expected.join(" or ")
                            ))
                        }
                        Err(error) => ControlState::Unavailable(error.to_string()),
                        Ok(_) => match load_lsm(&mut ebpf, hook, hook, &aya_btf, Some(pins)) {
                            Ok(()) => ControlState::Enforced,
                            Err(error) => ControlState::Unavailable(error.to_string()),
                        },
                    };
                    lsm_hooks.push((hook, state));
                }
                ControlState::Enforced
            }
            Err(error) => ControlState::Unavailable(format!("BPF LSM refused: {error}")),
        };
        // Without BPF LSM, detection is the last resort for what nothing
        // else enforces.
        let detection = match (&files, &detect_offsets) {
            (ControlState::Enforced, _) => Vec::new(),
            _ if !detection => Vec::new(),
            (_, Ok(_)) => super::detect::attach(&mut ebpf, &aya_btf, Some(pins)),
            (_, Err(reason)) => super::detect::programs()
                .map(|(program, _)| (program, ControlState::Unavailable(reason.clone())))
                .collect(),
        };
        // Families other than inet and inet6 (packet, vsock, ...) never
        // reach cgroup/sock_create; only the LSM hook sees them.
        let socket_families = if files == ControlState::Enforced {
            match load_lsm(
                &mut ebpf,
                "socket_create",
                "socket_create",
                &aya_btf,
                Some(pins),
            ) {
                Ok(()) => ControlState::Enforced,
                Err(error) => ControlState::Unavailable(format!("BPF LSM socket_create: {error}")),
            }
        } else {
            ControlState::Unavailable("BPF LSM refused".into())
        };
        fingerprint_map(&mut ebpf)?
            .set(0, fingerprint, 0)
            .map_err(|source| KernelError::Map {
                map: map_names::PROGRAMS_FINGERPRINT,
                source,
            })?;
        if same_programs {
            tracing::info!("kept the running programs: the same object and settings loaded them");
        }
        let stale = pins.remove_stale_links()?;
        if !stale.is_empty() {
            tracing::warn!(
                ?stale,
                "detached programs a previous daemon attached and this one does not"
            );
        }
        Ok(Self {
            ebpf,
            offsets,
            cgroup_root,
            egress: ControlState::Enforced,
            files,
            socket_families,
            packet_backstop,
            routing_options,
            lsm_hooks,
            detection,
        })
    }
}

/// Loads the backstop program and keeps what a previous daemon attached:
/// its links stay when they run the same program where they should. When
/// one cannot stay (other programs, or detached while no daemon ran), this
/// program covers the whole host instead: the ids in the old pins do not
/// say which agents needed them, and covering more is always safe.
pub fn load_backstop(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    cgroup_root: &std::path::Path,
) -> Result<(), KernelError> {
    let program: &mut CgroupSkb = ebpf
        .program_mut(backstop::PROGRAM)
        .ok_or(KernelError::MissingProgram(backstop::PROGRAM))?
        .try_into()
        .map_err(program_error(backstop::PROGRAM, "load"))?;
    program
        .load()
        .map_err(program_error(backstop::PROGRAM, "load"))?;
    let mut whole_host = false;
    for name in pins.adopted_links(backstop::PROGRAM) {
        if !pins.keep_link(&name)? {
            whole_host = true;
        }
    }
    if whole_host {
        use std::os::fd::AsFd as _;
        let fd = program
            .fd()
            .map_err(program_error(backstop::PROGRAM, "attach"))?;
        let root = File::open(cgroup_root).map_err(|source| KernelError::CgroupRoot {
            path: cgroup_root.to_path_buf(),
            source,
        })?;
        let link = bpfsys::cgroup_link_create(fd.as_fd(), root.as_fd(), backstop::INET_EGRESS)
            .map_err(|source| KernelError::Program {
                program: backstop::PROGRAM,
                action: "attach",
                source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_link_create",
                    io_error: source,
                }),
            })?;
        pins.pin_link_fd(backstop::PROGRAM, link)?;
    }
    Ok(())
}

/// Loads and attaches `cgroup/setsockopt` (5.3), which refuses agents the
/// options that reroute packets.
///
/// aya cannot hand out this program type's link for pinning, so the link
/// is made with `BPF_LINK_CREATE` here and adopted through a pin.
pub fn attach_setsockopt(ebpf: &mut Ebpf, root: &File, pins: &PinDir) -> Result<(), KernelError> {
    use std::os::fd::AsFd as _;

    if pins.keep_link("setsockopt")? {
        return Ok(());
    }
    let program: &mut CgroupSockopt = ebpf
        .program_mut("setsockopt")
        .ok_or(KernelError::MissingProgram("setsockopt"))?
        .try_into()
        .map_err(program_error("setsockopt", "load"))?;
    program
        .load()
        .map_err(program_error("setsockopt", "load"))?;
    let attach_error = |source: std::io::Error| KernelError::Program {
        program: "setsockopt",
        action: "attach",
        source: ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: source,
        }),
    };
    let link = bpfsys::cgroup_link_create(
        program
            .fd()
            .map_err(program_error("setsockopt", "attach"))?
            .as_fd(),
        root.as_fd(),
        aya_obj::generated::bpf_attach_type::BPF_CGROUP_SETSOCKOPT as u32,
    )
    .map_err(attach_error)?;
    let staging = pins.link_path("setsockopt-staging");
    let _ = std::fs::remove_file(&staging);
    bpfsys::obj_pin(link.as_fd(), &staging).map_err(attach_error)?;
    let pinned = aya::programs::links::PinnedLink::from_pin(&staging);
    let _ = std::fs::remove_file(&staging);
    drop(link);
    let pinned = pinned.map_err(|source| KernelError::Link {
        program: "setsockopt",
        source,
    })?;
    pins.pin_link("setsockopt", FdLink::from(pinned))?;
    Ok(())
}

/// Loads and attaches one LSM program, pinning its link in `pins` when
/// given (a probe's test load is not pinned, and detaches when dropped).
pub fn load_lsm(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    hook: &str,
    btf: &aya::Btf,
    pins: Option<&PinDir>,
) -> Result<(), KernelError> {
    if let Some(pins) = pins
        && pins.keep_link(program_name)?
    {
        return Ok(());
    }
    let program: &mut Lsm = ebpf
        .program_mut(program_name)
        .ok_or(KernelError::MissingProgram(program_name))?
        .try_into()
        .map_err(program_error(program_name, "load"))?;
    program
        .load(hook, btf)
        .map_err(program_error(program_name, "load"))?;
    let link = program
        .attach()
        .map_err(program_error(program_name, "attach"))?;
    if let Some(pins) = pins {
        let link = program
            .take_link(link)
            .map_err(program_error(program_name, "attach"))?;
        pins.pin_link(program_name, FdLink::from(link))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn object() -> aya_obj::Object {
        aya_obj::Object::parse(super::super::EBPF_OBJECT).expect("the built eBPF object parses")
    }

    #[test]
    fn the_program_table_and_the_object_name_the_same_programs() {
        let object = object();
        let in_object: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        let in_table: BTreeSet<&str> = programs::PROGRAMS.iter().map(|p| p.name).collect();
        let missing: Vec<_> = in_object.difference(&in_table).collect();
        let extra: Vec<_> = in_table.difference(&in_object).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "programs in the object but not in agent_common::programs::PROGRAMS: {missing:?}; \
             in the table but not in the object: {extra:?}"
        );
    }

    #[test]
    fn every_map_the_daemon_names_is_in_the_object() {
        let object = object();
        for name in agent_common::map_names::ALL {
            assert!(
                object.maps.contains_key(name),
                "map {name} (agent_common::map_names) is not in the eBPF object"
            );
        }
    }

    #[test]
    fn lsm_programs_say_which_signatures_they_accept() {
        for program in file_hooks() {
            assert_eq!(program.attach, programs::Attach::Lsm, "{}", program.name);
            assert!(!program.lsm_args.is_empty(), "{}", program.name);
        }
    }
}
