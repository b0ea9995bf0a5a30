//! What this kernel offers Baton, tested rather than assumed, and which
//! controls follow from it.
//!
//! A kernel may list `bpf` among its active LSMs and still refuse every BPF
//! LSM program, so the probe loads and attaches a real (pass-through) LSM
//! program instead of trusting the list.

use std::path::Path;

use agent_common::offsets::KernelOffsets;
use aya::{EbpfLoader, maps::MapType, sys::is_map_supported};
use serde::Serialize;

use crate::{
    fallback::{families::State, landlock::landlock_abi},
    kernel::{
        EBPF_OBJECT,
        btf::{Btf, VMLINUX_BTF},
        cgroup::{cgroup2_controllers, cgroup2_mount},
        klog::{KernelLogSettings, set_globals},
        loader::load_lsm,
    },
};

/// Outcome of one check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Yes,
    /// Absent or refused.
    No,
}

/// One row of the probe table.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Result.
    pub status: Status,
    /// Details: a mount point, a version, an error.
    pub detail: String,
}

/// How a control is provided on this kernel.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ControlLevel {
    /// Enforced in the kernel for every agent.
    Enforced,
    /// Provided in a weaker form; the detail says which.
    Degraded,
    /// Not provided.
    Unavailable,
}

/// One Baton control and how this kernel can provide it.
#[derive(Clone, Debug, Serialize)]
pub struct Control {
    /// Control name.
    pub name: &'static str,
    /// Level.
    pub level: ControlLevel,
    /// Why.
    pub detail: String,
}

/// The whole probe result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// `uname -r`.
    pub kernel: String,
    /// Checks, in table order.
    pub checks: Vec<Check>,
    /// Controls, in table order.
    pub controls: Vec<Control>,
    /// Whether a BPF LSM program really loaded and attached.
    pub bpf_lsm_loadable: bool,
    /// Each socket family and what keeps it from agents.
    pub families: Vec<crate::fallback::families::FamilyCoverage>,
    /// Offsets resolved from BTF, when BTF is readable.
    pub offsets: Option<KernelOffsetsReport>,
}

/// Serializable copy of [`KernelOffsets`].
#[derive(Clone, Debug, Serialize)]
pub struct KernelOffsetsReport {
    /// `file.f_path`.
    pub file_f_path: u32,
    /// `file.f_mode`.
    pub file_f_mode: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.signal`.
    pub task_signal: u32,
    /// `signal_struct.live`.
    pub signal_live: u32,
}

impl From<KernelOffsets> for KernelOffsetsReport {
    fn from(o: KernelOffsets) -> Self {
        Self {
            file_f_path: o.file_f_path,
            file_f_mode: o.file_f_mode,
            task_pid: o.task_pid,
            task_tgid: o.task_tgid,
            task_signal: o.task_signal,
            signal_live: o.signal_live,
        }
    }
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: if ok { Status::Yes } else { Status::No },
        detail: detail.into(),
    }
}

/// Loads and attaches the pass-through LSM program, then drops it.
pub fn try_bpf_lsm() -> Result<(), String> {
    agent_common::programs::with_role(agent_common::programs::Role::Probe)
        .next()
        .map_or_else(
            || Err("this build has no BPF LSM probe program".into()),
            |probe| try_lsm_program(probe.name, probe.target),
        )
}

/// Loads and attaches Baton's own `socket_create` program (with empty maps
/// it allows everything), then drops it.
pub fn try_socket_create() -> Result<(), String> {
    try_lsm_program("socket_create", "socket_create")
}

fn try_lsm_program(program: &'static str, hook: &'static str) -> Result<(), String> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
    let mut loader = EbpfLoader::new();
    loader.btf(Some(&btf));
    let mut ebpf = set_globals(&mut loader, &KernelLogSettings::OFF)
        .load(EBPF_OBJECT)
        .map_err(|e| e.to_string())?;
    load_lsm(&mut ebpf, program, hook, &btf, None).map_err(|e| {
        // The innermost cause is the kernel's answer; the layers above it
        // repeat it.
        let mut innermost: &dyn std::error::Error = &e;
        while let Some(inner) = innermost.source() {
            innermost = inner;
        }
        format!("refused by the kernel: {innermost}")
    })
}

/// Loads and attaches the detection programs with this kernel's offsets
/// (so the verifier checks all of their code), then drops them. Returns
/// one line per program.
pub fn try_detection() -> Result<Vec<String>, String> {
    let btf = Btf::from_kernel().map_err(|e| e.to_string())?;
    let offsets = btf.kernel_offsets().map_err(|e| e.to_string())?;
    let detect_offsets = crate::kernel::detect::offsets(&btf)?;
    let aya_btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global(agent_common::offsets::KERNEL_OFFSETS_GLOBAL, &offsets, true)
        .override_global(crate::kernel::detect::GLOBAL, &detect_offsets, true);
    let mut ebpf = set_globals(&mut loader, &KernelLogSettings::OFF)
        .load(EBPF_OBJECT)
        .map_err(|e| e.to_string())?;
    let states = crate::kernel::detect::attach(&mut ebpf, &aya_btf, None);
    let failed: Vec<String> = states
        .iter()
        .filter_map(|(program, state)| match state {
            crate::kernel::ControlState::Enforced => None,
            crate::kernel::ControlState::Unavailable(why) => Some(format!("{program}: {why}")),
        })
        .collect();
    if failed.is_empty() {
        Ok(crate::kernel::detect::programs()
            .map(|(program, tracepoint)| format!("{program} on tp_btf/{tracepoint}"))
            .collect())
    } else {
        Err(failed.join("; "))
    }
}

/// Loads (verifies, without attaching) the packet-level backstop's
/// programs and the routing-option program; `Ok` names what loaded.
pub fn try_backstop() -> (Result<(), String>, Result<(), String>) {
    let load = || -> Result<aya::Ebpf, String> {
        let btf = Btf::from_kernel().map_err(|e| e.to_string())?;
        let offsets = btf.kernel_offsets().map_err(|e| e.to_string())?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&aya_btf)).override_global(
            agent_common::offsets::KERNEL_OFFSETS_GLOBAL,
            &offsets,
            true,
        );
        set_globals(&mut loader, &KernelLogSettings::OFF)
            .load(EBPF_OBJECT)
            .map_err(|e| e.to_string())
    };
    let mut ebpf = match load() {
        Ok(ebpf) => ebpf,
        Err(error) => return (Err(error.clone()), Err(error)),
    };
    let mut verify = |name: &str| -> Result<(), String> {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is missing"))?;
        let result = match program {
            aya::programs::Program::CgroupSock(p) => p.load(),
            aya::programs::Program::CgroupSkb(p) => p.load(),
            aya::programs::Program::CgroupSockopt(p) => p.load(),
            _ => return Err(format!("program {name} has an unexpected type")),
        };
        result.map_err(|e| format!("{name}: {e}"))
    };
    let backstop = verify("skb_egress");
    let options = verify("setsockopt");
    (backstop, options)
}

/// Runs every check.
pub fn probe() -> ProbeReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut checks = Vec::new();

    let btf = Btf::from_kernel();
    let offsets = btf.as_ref().ok().and_then(|b| b.kernel_offsets().ok());
    checks.push(match (&btf, &offsets) {
        (Ok(_), Some(o)) => check(
            "BTF",
            true,
            format!(
                "{VMLINUX_BTF}; file.f_path at {}, file.f_mode at {}",
                o.file_f_path, o.file_f_mode
            ),
        ),
        (Ok(b), None) => check(
            "BTF",
            false,
            b.kernel_offsets()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        ),
        (Err(e), _) => check("BTF", false, e.to_string()),
    });

    let cgroup = cgroup2_mount();
    checks.push(match &cgroup {
        Ok(mount) => {
            let controllers = cgroup2_controllers(mount);
            check(
                "cgroup v2",
                true,
                format!(
                    "{}; controllers: {}",
                    mount.display(),
                    if controllers.is_empty() {
                        "none".to_string()
                    } else {
                        controllers.join(" ")
                    }
                ),
            )
        }
        Err(e) => check("cgroup v2", false, e.to_string()),
    });

    let ringbuf = is_map_supported(MapType::RingBuf);
    checks.push(match &ringbuf {
        Ok(true) => check("ring buffer", true, "BPF_MAP_TYPE_RINGBUF"),
        Ok(false) => check("ring buffer", false, "BPF_MAP_TYPE_RINGBUF not supported"),
        Err(e) => check("ring buffer", false, e.to_string()),
    });

    let lsm_list = std::fs::read_to_string("/sys/kernel/security/lsm");
    let lsm_listed = lsm_list
        .as_ref()
        .is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"));
    checks.push(match &lsm_list {
        Ok(list) => check(
            "BPF LSM listed",
            lsm_listed,
            format!("active LSMs: {}", list.trim()),
        ),
        Err(e) => check(
            "BPF LSM listed",
            false,
            format!("/sys/kernel/security/lsm: {e} (is securityfs mounted?)"),
        ),
    });

    let lsm_loaded = try_bpf_lsm();
    let bpf_lsm_loadable = lsm_loaded.is_ok();
    checks.push(match &lsm_loaded {
        Ok(()) => check(
            "BPF LSM loads",
            true,
            "a file_open program loaded and attached",
        ),
        Err(e) => check("BPF LSM loads", false, e.clone()),
    });

    let socket_create = if bpf_lsm_loadable {
        try_socket_create()
    } else {
        Err("BPF LSM refuses programs".to_string())
    };
    checks.push(match &socket_create {
        Ok(()) => check(
            "BPF LSM socket_create",
            true,
            "Baton's socket_create program loaded and attached",
        ),
        Err(e) => check("BPF LSM socket_create", false, e.clone()),
    });
    let family_layers = crate::fallback::families::Layers::of_this_kernel(socket_create.is_ok());
    checks.push(check(
        "seccomp",
        family_layers.seccomp,
        if family_layers.seccomp {
            "filters can be installed"
        } else {
            "not in this kernel"
        },
    ));

    let d_path_present = btf.as_ref().is_ok_and(|b| b.has_function("bpf_d_path"));
    checks.push(check(
        "bpf_d_path",
        d_path_present && bpf_lsm_loadable,
        match (d_path_present, bpf_lsm_loadable) {
            (true, true) => "usable from BPF LSM programs",
            (true, false) => "in the kernel, but unusable without BPF LSM",
            (false, _) => "not in this kernel",
        },
    ));

    let landlock = landlock_abi();
    checks.push(match landlock {
        Some(abi) => check("Landlock", true, format!("ABI {abi}")),
        None => check("Landlock", false, "not enabled in this kernel"),
    });

    let fanotify = crate::fallback::fanotify::available();
    checks.push(match &fanotify {
        Ok(()) => check(
            "fanotify",
            true,
            "permission events (FAN_OPEN_PERM, FAN_OPEN_EXEC_PERM)",
        ),
        Err(e) => check("fanotify", false, e.clone()),
    });

    // Detection only stands in where BPF LSM is refused; where it loads,
    // the probe still tries it, so the report says what a fallback would get.
    let detection = try_detection();
    checks.push(match &detection {
        Ok(programs) => check(
            "detection programs",
            true,
            format!("loaded and attached: {}", programs.join(", ")),
        ),
        Err(e) => check("detection programs", false, e.clone()),
    });
    let detects = detection.is_ok();

    let (backstop, routing_options) = try_backstop();
    checks.push(match &backstop {
        Ok(()) => check(
            "packet backstop programs",
            true,
            "skb_egress (cgroup_skb/egress, socket storage) loads; sock_create and the address hooks tag agent sockets; the daemon attaches it to the agents' cgroups (the whole host for executable selectors), and sock_create refuses an agent a socket where it does not run",
        ),
        Err(e) => check("packet backstop programs", false, e.clone()),
    });
    checks.push(match &routing_options {
        Ok(()) => check("setsockopt program", true, "cgroup/setsockopt loads"),
        Err(e) => check("setsockopt program", false, e.clone()),
    });

    let mut controls = Vec::new();
    let egress_ok = cgroup.is_ok() && offsets.is_some();
    controls.push(Control {
        name: "egress (address, port)",
        level: if egress_ok {
            ControlLevel::Enforced
        } else {
            ControlLevel::Unavailable
        },
        detail: if egress_ok {
            "cgroup/connect4, connect6, sendmsg4, sendmsg6 and sock_create on the cgroup v2 root \
             judge the address as written (0.0.0.0, :: and ::ffff:0.0.0.0 as the loopback \
             address the kernel routes them to); EPERM to the caller"
                .into()
        } else {
            "needs cgroup v2 and BTF".into()
        },
    });
    let backstop_ok = egress_ok && backstop.is_ok();
    controls.push(Control {
        name: "egress (packet destination)",
        level: if backstop_ok {
            ControlLevel::Enforced
        } else {
            ControlLevel::Unavailable
        },
        detail: match (&backstop, egress_ok) {
            (Ok(()), true) => "cgroup_skb/egress judges every packet of an agent socket by the \
                destination it carries: catches IPv6 routing headers and IPv4 source routes \
                set as ancillary data, unconnected ICMP echo, and anything else the address \
                hooks saw differently; the packet is dropped (the sender sees EPERM or a \
                stalled connection) and counted; it cannot see a socket an agent did not create \
                or use itself (for example a descriptor received from an outsider that the \
                agent only writes to after a connect made elsewhere)"
                .into(),
            (Err(e), _) => format!("not available: {e}"),
            (Ok(()), false) => "needs cgroup v2 and BTF".into(),
        },
    });
    let options_ok = egress_ok && routing_options.is_ok();
    controls.push(Control {
        name: "routing socket options",
        level: if options_ok {
            ControlLevel::Enforced
        } else if backstop_ok {
            ControlLevel::Degraded
        } else {
            ControlLevel::Unavailable
        },
        detail: match (&routing_options, options_ok, backstop_ok) {
            (_, true, _) => "cgroup/setsockopt refuses agents IP_OPTIONS with LSRR/SSRR, \
                IPV6_RTHDR and IPV6_2292RTHDR (EPERM); as ancillary data (IP_RETOPTS, \
                IPV6_RTHDR cmsg) no hook sees them and the packet backstop drops what they \
                send to a denied hop"
                .into(),
            (Err(e), false, true) => format!(
                "options are not refused ({e}); the packet backstop still drops what they send to a denied hop"
            ),
            (Err(e), _, _) => format!("not available: {e}"),
            (Ok(()), false, _) => "needs cgroup v2 and BTF".into(),
        },
    });
    controls.push(Control {
        name: "raw and ICMP sockets",
        level: if egress_ok {
            ControlLevel::Enforced
        } else {
            ControlLevel::Unavailable
        },
        detail: "cgroup/sock_create".into(),
    });
    let (exec_families, selected_families) = family_layers.denial(0);
    let family_level = match (exec_families.state, selected_families.state) {
        (State::Enforced, State::Enforced) => ControlLevel::Enforced,
        (State::NotCovered, State::NotCovered) => ControlLevel::Unavailable,
        _ => ControlLevel::Degraded,
    };
    controls.push(Control {
        name: "socket families (vsock, packet, ...)",
        level: family_level,
        detail: format!(
            "{} may be created; the others only where a policy lists them in egress.families (packet never): baton exec agents: {}: {}; agents selected by cgroup, systemd unit or executable: {}: {}",
            crate::policy::families::default_names().join(", "),
            state_word(exec_families.state),
            exec_families.detail,
            state_word(selected_families.state),
            selected_families.detail,
        ),
    });
    controls.push(Control {
        name: "agent identity",
        level: if offsets.is_some() {
            ControlLevel::Enforced
        } else {
            ControlLevel::Unavailable
        },
        detail: "tgid record, inherited at fork (tp_btf/sched_process_fork)".into(),
    });
    let files_level = if bpf_lsm_loadable && offsets.is_some() {
        ControlLevel::Enforced
    } else if landlock.is_some() || fanotify.is_ok() || detects {
        ControlLevel::Degraded
    } else {
        ControlLevel::Unavailable
    };
    let why_no_lsm = if lsm_listed {
        "BPF LSM is listed but refuses programs"
    } else {
        "BPF LSM is not active (boot with lsm=...,bpf)"
    };
    controls.push(Control {
        name: "file and exec rules",
        detail: match files_level {
            ControlLevel::Enforced => {
                "BPF LSM: file_open, bprm_check_security, mmap_file, the path_* hooks and the rest of the file hooks, for every agent; rules whose paths exist are matched by the object they name (inode marks), whatever mount, root or name an access uses".into()
            }
            ControlLevel::Degraded => format!(
                "{why_no_lsm}. Agents started by baton exec: {}; agents selected by cgroup, systemd unit or executable: {}",
                match landlock {
                    Some(abi) => format!(
                        "enforced by Landlock (ABI {abi}), except what Landlock cannot express (chmod, a deny inside an allowed tree), which baton status lists per agent; {}",
                        if abi >= 7 {
                            "its denials are recorded from the kernel's audit reports (unless files.landlockAudit: false)"
                        } else {
                            "its denials are NOT recorded (Landlock reports them from ABI 7, Linux 6.15)"
                        }
                    ),
                    None => "NOT enforced (Landlock is off)".to_string(),
                },
                match (fanotify.is_ok(), detects) {
                    (true, true) => "fanotify fallback: deny-listed paths only, opens for read or write and exec are denied (a default deny applies only on watched paths; a folder made in a denied folder is watched about a millisecond after it appears, unless files.fanotifyWholeMounts); create, delete, rename, chmod and executable mappings are NOT enforced, only detected (tp_btf sys_enter/sys_exit), with a kill where the policy says onDetect: kill",
                    (true, false) => "fanotify fallback: deny-listed paths only, opens for read or write and exec are denied (a folder made in a denied folder is watched about a millisecond after it appears, unless files.fanotifyWholeMounts); create, delete, rename, chmod and executable mappings are NOT enforced, and a default deny applies only on watched paths",
                    (false, true) => "NOT enforced (no fanotify permission events): opens, execs, create, delete, rename, chmod and executable mappings are only detected (tp_btf sys_enter/sys_exit, sched_process_exec), with a kill where the policy says onDetect: kill",
                    (false, false) => "NOT enforced (no fanotify permission events, no detection programs)",
                }
            ),
            ControlLevel::Unavailable => format!("{why_no_lsm}, Landlock is off, fanotify has no permission events and the detection programs do not load: file rules are neither enforced nor detected"),
        },
        level: files_level,
    });
    controls.push(Control {
        name: "secrets (narrowing after a read)",
        level: if bpf_lsm_loadable || fanotify.is_ok() {
            ControlLevel::Enforced
        } else if detects {
            ControlLevel::Degraded
        } else {
            ControlLevel::Unavailable
        },
        detail: if bpf_lsm_loadable {
            "BPF LSM file_open taints the agent before a read of a secret returns; the egress hooks and the backstop then hold it to egress.afterSecret".into()
        } else if fanotify.is_ok() {
            "the fanotify listener taints the agent before it answers an open of a secret (any open, read or not, for every kind of agent); the egress hooks and the backstop then hold it to egress.afterSecret".into()
        } else if detects {
            "only the detection programs see a read of a secret, for agents selected by cgroup, unit or executable: the taint is written as the open returns; reads by baton exec agents are NOT seen".into()
        } else {
            "nothing sees an allowed read of a secret here: egress is never narrowed".into()
        },
    });
    controls.push(namespace_control(btf.as_ref().ok(), bpf_lsm_loadable));
    controls.push(Control {
        name: "audit trail",
        level: if ringbuf.as_ref().is_ok_and(|supported| *supported) {
            ControlLevel::Enforced
        } else {
            ControlLevel::Unavailable
        },
        detail: "ring buffer events to a JSON-lines log".into(),
    });

    ProbeReport {
        kernel,
        checks,
        controls,
        bpf_lsm_loadable,
        families: family_layers.table(),
        offsets: offsets.map(Into::into),
    }
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Allowed => "allowed",
        State::Enforced => "enforced",
        State::Degraded => "degraded",
        State::NotCovered => "NOT covered",
    }
}

/// Whether agents are kept from giving files other paths: user namespaces,
/// mounts, `chroot` and `pivot_root` (`process.namespaces`).
fn namespace_control(btf: Option<&Btf>, bpf_lsm_loadable: bool) -> Control {
    const NAME: &str = "namespace and mount operations";
    let missing: Vec<&str> = crate::kernel::loader::namespace_hooks()
        .filter(|hook| !btf.is_some_and(|b| b.has_function(&format!("bpf_lsm_{hook}"))))
        .collect();
    if !bpf_lsm_loadable {
        return Control {
            name: NAME,
            level: ControlLevel::Unavailable,
            detail: "not denied by Baton without BPF LSM: an agent that can create a user namespace (unprivileged ones, where the kernel allows it) or runs as root can bind-mount, mount or chroot to reach a path-denied file under another path. Agents started by baton exec whose file rules Landlock enforces are held by Landlock instead, which may not mount or pivot_root and matches files by object".into(),
        };
    }
    if missing.is_empty() {
        return Control {
            name: NAME,
            level: ControlLevel::Enforced,
            detail: "BPF LSM userns_create, sb_mount, sb_kern_mount, move_mount, path_chroot and sb_pivotroot: denied to agents unless process.namespaces: allow. open_tree(OPEN_TREE_CLONE) and mount_setattr have no hook: a root agent can still use them".into(),
        };
    }
    Control {
        name: NAME,
        level: ControlLevel::Degraded,
        detail: format!(
            "this kernel has no LSM hook {}: {}",
            missing.join(", "),
            if missing.contains(&"userns_create") {
                "unprivileged agents can create user namespaces and, in them, mount and chroot their way past path rules"
            } else {
                "the operations those hooks see are not denied"
            }
        ),
    }
}

impl ProbeReport {
    /// Renders the report as a table.
    pub fn render(&self) -> String {
        let mut out = format!("Kernel {}\n\n", self.kernel);
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        out.push_str(&format!("{:width$}  {:3}  DETAIL\n", "CHECK", "OK"));
        for c in &self.checks {
            let ok = if c.status == Status::Yes { "yes" } else { "no" };
            out.push_str(&format!("{:width$}  {ok:3}  {}\n", c.name, c.detail));
        }
        let width = self
            .controls
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        out.push_str(&format!("\n{:width$}  {:11}  DETAIL\n", "CONTROL", "STATE"));
        for c in &self.controls {
            let level = match c.level {
                ControlLevel::Enforced => "enforced",
                ControlLevel::Degraded => "degraded",
                ControlLevel::Unavailable => "unavailable",
            };
            out.push_str(&format!("{:width$}  {level:11}  {}\n", c.name, c.detail));
        }
        let width = self
            .families
            .iter()
            .map(|f| f.family.len())
            .max()
            .unwrap_or(0)
            .max("FAMILY".len());
        out.push_str(&format!(
            "\n{:width$}  {:11}  {:11}  DETAIL\n",
            "FAMILY", "BATON EXEC", "SELECTED"
        ));
        for f in &self.families {
            let detail = if f.baton_exec.detail == f.selected.detail {
                f.baton_exec.detail.clone()
            } else {
                format!(
                    "baton exec: {}; selected: {}",
                    f.baton_exec.detail, f.selected.detail
                )
            };
            out.push_str(&format!(
                "{:width$}  {:11}  {:11}  {detail}\n",
                f.family,
                state_word(f.baton_exec.state),
                state_word(f.selected.state)
            ));
        }
        out
    }
}

/// Adds what a daemon's pins under `pin_dir` really have attached, asked
/// of the kernel: a pinned program that no longer runs at its hook makes
/// the controls it serves unavailable, whatever this kernel could offer.
/// Nothing is added when no daemon pinned anything there.
pub fn probe_pins(report: &mut ProbeReport, pin_dir: &Path) {
    let Ok(cgroup_root) = cgroup2_mount() else {
        return;
    };
    let states = crate::kernel::pins::pinned_attachment(pin_dir, &cgroup_root);
    if states.is_empty() {
        return;
    }
    let detached: Vec<String> = states
        .iter()
        .filter_map(|(program, state)| match state {
            crate::kernel::pins::Attachment::Detached(why) => Some(format!("{program} ({why})")),
            crate::kernel::pins::Attachment::Attached => None,
        })
        .collect();
    report.checks.push(check(
        "Baton programs attached",
        detached.is_empty(),
        if detached.is_empty() {
            format!(
                "all {} links pinned under {} are attached",
                states.len(),
                pin_dir.display()
            )
        } else {
            format!(
                "pinned under {} but NOT attached: {}",
                pin_dir.display(),
                detached.join(", ")
            )
        },
    ));
    let egress_off: Vec<&String> = detached
        .iter()
        .filter(|d| {
            crate::kernel::loader::egress_programs().any(|p| d.starts_with(&format!("{p} ")))
        })
        .collect();
    if !egress_off.is_empty()
        && let Some(control) = report
            .controls
            .iter_mut()
            .find(|c| c.name == "egress (address, port)")
    {
        control.level = ControlLevel::Unavailable;
        control.detail = format!(
            "the running daemon's programs are not attached: {}",
            egress_off
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Whether securityfs is mounted (the LSM list lives there).
pub fn securityfs_mounted() -> bool {
    Path::new("/sys/kernel/security/lsm").exists()
}
