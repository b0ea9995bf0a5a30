use which::which;

/// Rebuilds the programs when bpf-linker changes: the linker is what turns
/// the crate into a loadable object, so a new linker means a new object.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
