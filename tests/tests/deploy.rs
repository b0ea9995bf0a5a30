//! The deployment files: the systemd unit passes `systemd-analyze verify`,
//! every Kubernetes manifest validates against the Kubernetes schemas, and
//! the example configuration and policies they ship are accepted by this
//! build of Baton.
//!
//! The tools come from `cargo xtask setup`: Debian's `systemd` package for
//! `systemd-analyze`, and PyPI's `kubernetes-validate` (which carries the
//! Kubernetes JSON schemas, so nothing is fetched at test time) in a venv
//! under the kit folder.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use baton_tests::{TempDir, baton_bin};
use serde::Deserialize as _;
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The kit folder, as `cargo xtask setup` chooses it.
fn kit_dir() -> PathBuf {
    match std::env::var_os("BATON_KIT_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/var/cache/baton-kit"),
    }
}

fn validate_venv() -> PathBuf {
    kit_dir().join("validate-venv")
}

fn show(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every YAML document in `path`, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// The manifests under `deploy/kubernetes`, sorted.
fn kubernetes_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![workspace().join("deploy/kubernetes")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// All documents of the manifests with `kind`.
fn resources(kind: &str) -> Vec<Value> {
    kubernetes_manifests()
        .iter()
        .flat_map(|path| yaml_documents(path))
        .filter(|document| document["kind"] == kind)
        .collect()
}

fn configmap_data(name: &str) -> Vec<(String, String)> {
    let configmap = resources("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} under deploy/kubernetes"));
    configmap["data"]
        .as_object()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Runs `baton run --config CONFIG` with a policy directory that does not
/// exist: the configuration is read first, so the daemon must get as far as
/// the policy directory (and stop there, before touching the kernel).
fn assert_config_accepted(config: &Path) {
    let missing = TempDir::new("no-policies").path().join("absent");
    let output = Command::new(baton_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--policy-dir")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&missing.display().to_string()),
        "{} was not accepted: {}",
        config.display(),
        show(&output)
    );
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

fn systemd_analyze() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze is not installed: `cargo xtask setup` installs it \
                 (Debian package `systemd`; it is only run as a checker, PID 1 can be anything)"
            )
        })
}

/// A root directory holding the system's unit files, the unit under test as
/// `/etc/systemd/system/baton.service`, and this build's `baton` at the path
/// the unit runs, so that `systemd-analyze --root` checks the unit exactly
/// as shipped.
fn systemd_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("no systemd unit directory with multi-user.target");
    copy_tree(system_units, &root.join("usr/lib/systemd/system"));
    let etc = root.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(
        workspace().join("deploy/systemd/baton.service"),
        etc.join("baton.service"),
    )
    .unwrap();
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A hard link when the build is on the same file system, else a copy.
    if std::fs::hard_link(baton_bin(), bin.join("baton")).is_err() {
        std::fs::copy(baton_bin(), bin.join("baton")).unwrap();
    }
    root
}

/// Copies files and symbolic links (as links) from `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = systemd_analyze();
    let dir = TempDir::new("systemd");
    let root = systemd_root(dir.path());
    let output = Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/baton.service")
        .output()
        .unwrap();
    // Unknown or malformed directives are only warnings to verify: any
    // output at all is a failure here.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify deploy/systemd/baton.service: {}",
        show(&output)
    );
}

#[test]
fn systemd_unit_stays_hardened() {
    let analyze = systemd_analyze();
    let dir = TempDir::new("systemd-security");
    let root = systemd_root(dir.path());
    // systemd's own exposure score, 0 (locked down) to 10 (unprotected).
    // The unit scores 3.9 with systemd 252; a change that loosens the
    // sandbox noticeably fails here.
    let output = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=45", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/baton.service")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-analyze security: {}",
        show(&output)
    );
}

#[test]
fn systemd_example_config_is_accepted() {
    assert_config_accepted(&workspace().join("deploy/systemd/config.yaml"));
}

#[test]
fn systemd_unit_and_daemonset_grant_the_same_capabilities() {
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/baton.service")).unwrap();
    let directive = |name: &str| -> BTreeSet<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in baton.service"));
        line.split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    let bounding = directive("CapabilityBoundingSet");
    assert_eq!(bounding, directive("AmbientCapabilities"));

    let daemonset = resources("DaemonSet").pop().expect("a DaemonSet");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let added: BTreeSet<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(added, bounding, "the DaemonSet and the unit disagree");
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validator = validate_venv().join("bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: `cargo xtask setup` installs PyPI's kubernetes-validate into {}",
        validator.display(),
        validate_venv().display()
    );
    let files = kubernetes_manifests();
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    let documents: usize = files.iter().map(|f| yaml_documents(f).len()).sum();
    // --strict: an unknown field is an error, as it is for the API server.
    let output = Command::new(&validator)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    // A kind the validator has no schema for is only a warning to it.
    let other: Vec<&str> = stdout
        .lines()
        .filter(|l| !(l.starts_with("INFO ") && l.contains(" passed for resource ")))
        .collect();
    assert!(
        output.status.success() && passed == documents && other.is_empty(),
        "{passed} of {documents} resources passed: {}",
        show(&output)
    );
}

#[test]
fn kubernetes_config_is_accepted() {
    let dir = TempDir::new("k8s-config");
    let data = configmap_data("baton-config");
    let (_, text) = data
        .iter()
        .find(|(k, _)| k == "config.yaml")
        .expect("baton-config has config.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, text).unwrap();
    assert_config_accepted(&config);
}

#[test]
fn kubernetes_policies_pass_baton_policy_check() {
    let dir = TempDir::new("k8s-policies");
    let mut files = Vec::new();
    for (name, text) in configmap_data("baton-policies") {
        assert!(
            name.ends_with(".yaml") || name.ends_with(".yml"),
            "{name}: the daemon reads only *.yaml and *.yml"
        );
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    assert!(!files.is_empty());
    let output = Command::new(baton_bin())
        .args(["policy", "check"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "baton policy check: {}",
        show(&output)
    );
}

#[test]
fn daemonset_has_what_baton_needs() {
    let daemonset = resources("DaemonSet").pop().expect("a DaemonSet");
    assert_eq!(daemonset["metadata"]["namespace"], "baton-system");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "tolerations must let Baton run on every node"
    );
    let container = &pod["containers"][0];
    assert_ne!(container["securityContext"]["privileged"], true);
    for c in pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
    {
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][bound][resource].is_string(),
                    "{}: no {bound}.{resource}",
                    c["name"]
                );
            }
        }
    }
    let volumes = pod["volumes"].as_array().unwrap();
    let mount = |path: &str| {
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        (mount.clone(), volume.clone())
    };
    for (path, read_only) in [
        ("/sys/fs/bpf", false),
        ("/sys/fs/cgroup", false),
        ("/sys/kernel/security", true),
        ("/sys/kernel/btf", true),
        ("/var/log/baton", false),
        ("/var/lib/baton", false),
        ("/run/baton", false),
    ] {
        let (mount, volume) = mount(path);
        assert_eq!(volume["hostPath"]["path"], path, "{path} is not the node's");
        assert_eq!(mount["readOnly"] == true, read_only, "{path} readOnly");
    }
    let (policies, volume) = mount("/etc/baton/policies");
    assert_eq!(volume["configMap"]["name"], "baton-policies");
    // subPath mounts never see ConfigMap updates.
    assert!(policies.get("subPath").is_none());
    // The init step's mount reaches the node only through Bidirectional
    // propagation.
    let init = &pod["initContainers"][0];
    let bpffs = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .expect("the init container mounts /sys/fs/bpf");
    assert_eq!(bpffs["mountPropagation"], "Bidirectional");
}

/// The CRD generated from the policy schema validates as a CRD (in the
/// test above) and its schema admits Baton's example policies and refuses a
/// broken one.
#[test]
fn agentpolicy_crd_is_generated_and_admits_the_example_policies() {
    let crd_path = workspace().join("deploy/kubernetes/agentpolicy-crd.yaml");
    let schema_path = workspace().join("policies/agentpolicy.schema.json");
    assert!(
        crd_path.exists(),
        "{} is missing: generate it from {} with `cargo xtask crd`{}",
        crd_path.display(),
        schema_path.display(),
        if schema_path.exists() {
            ""
        } else {
            " (the schema does not exist yet either)"
        }
    );
    let crd = yaml_documents(&crd_path).pop().expect("a CRD document");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["spec"]["group"], "baton.dev");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    let schema = version["schema"]["openAPIV3Schema"].clone();

    let mut examples: Vec<(String, Value)> = Vec::new();
    for entry in std::fs::read_dir(workspace().join("policies"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            for document in yaml_documents(&path) {
                examples.push((path.display().to_string(), document));
            }
        }
    }
    for (name, text) in configmap_data("baton-policies") {
        let dir = TempDir::new("crd-example");
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        for document in yaml_documents(&path) {
            examples.push((format!("ConfigMap baton-policies {name}"), document));
        }
    }
    assert!(!examples.is_empty());
    let mut broken = examples[0].1.clone();
    broken["spec"]["mode"] = Value::from("sometimes");

    // jsonschema comes with kubernetes-validate. OpenAPI v3.0 schema
    // objects are draft 4 plus extensions, which the validator ignores.
    let script = r#"
import json, sys, jsonschema
data = json.load(sys.stdin)
validator = jsonschema.Draft4Validator(data["schema"])
for name, document in data["documents"]:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]
    print(json.dumps([name, errors]))
"#;
    let python = validate_venv().join("bin/python3");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask setup` creates it",
        python.display()
    );
    let mut documents: Vec<Value> = examples
        .iter()
        .map(|(name, document)| serde_json::json!([name, document]))
        .collect();
    documents.push(serde_json::json!(["broken", broken]));
    let input = serde_json::json!({"schema": schema, "documents": documents});
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", show(&output));
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let result: Value = serde_json::from_str(line).unwrap();
        let errors = result[1].as_array().unwrap();
        if result[0] == "broken" {
            assert!(!errors.is_empty(), "the CRD admits spec.mode: sometimes");
        } else {
            assert!(
                errors.is_empty(),
                "the CRD refuses {}: {errors:?}",
                result[0]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The container build
// ---------------------------------------------------------------------------

/// The Containerfile builds with the toolchain `cargo xtask setup` installs:
/// the same bpf-linker release, and the nightly installed here.
#[test]
fn containerfile_uses_the_toolchain_of_cargo_xtask_setup() {
    let containerfile = std::fs::read_to_string(workspace().join("deploy/Containerfile")).unwrap();
    let arg = |name: &str| -> String {
        containerfile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("no ARG {name}= in deploy/Containerfile"))
            .trim()
            .to_owned()
    };
    let setup = std::fs::read_to_string(workspace().join("xtask/src/setup.rs")).unwrap();
    let linker = setup
        .lines()
        .find_map(|l| l.strip_prefix("pub const BPF_LINKER_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in xtask/src/setup.rs");
    assert_eq!(arg("BPF_LINKER_VERSION"), linker);

    // The nightly pinned in the Containerfile is the one this machine
    // builds with (`rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`): the
    // toolchain rustup calls `nightly`, read from its folder so that no
    // rustup needs to be in PATH.
    // HOME may be unset (inside the test VMs), hence root's default last.
    let rustup_home = [
        std::env::var_os("RUSTUP_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")),
        Some(PathBuf::from("/root/.rustup")),
    ]
    .into_iter()
    .flatten()
    .find(|dir| dir.join("toolchains").is_dir())
    .expect("no rustup toolchains folder (RUSTUP_HOME, ~/.rustup)");
    let toolchain = std::fs::read_dir(rustup_home.join("toolchains"))
        .expect("rustup's toolchains folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("nightly-"))
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .expect("a `nightly` toolchain (cargo xtask setup needs it too)");
    let output = Command::new(toolchain.join("bin/rustc"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", show(&output));
    let version = String::from_utf8_lossy(&output.stdout);
    let date = version
        .trim()
        .strip_suffix(')')
        .and_then(|v| v.rsplit(' ').next())
        .expect("a nightly date");
    assert_eq!(
        arg("NIGHTLY"),
        format!("nightly-{date}"),
        "deploy/Containerfile pins another nightly than the one installed ({})",
        version.trim()
    );
}
