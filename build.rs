//! Links Marquee's binaries with packed relative relocations (`DT_RELR`, the linker's
//! `-z pack-relative-relocs`) where the C library's loader applies them.
//!
//! A position-independent executable carries one 24-byte `.rela.dyn` entry for every pointer the
//! loader must adjust at start. For the daemon that is 1.7 MB, which the loader reads, so it
//! stays mapped in the process's resident set. `DT_RELR` stores the same adjustments as a bitmap
//! of a few kB (System V gABI proposal; glibc 2.36 NEWS; binutils 2.38 NEWS).
//!
//! glibc's loader applies `DT_RELR` from 2.36 on and defines the version `GLIBC_ABI_DT_RELR`,
//! which the linker then records as a dependency: a binary built here refuses to start on an
//! older glibc instead of starting unrelocated. So the flag is passed only when the target is
//! this machine's glibc and its `libc.so.6` defines that version. Set `MARQUEE_NO_RELR=1` to
//! build without it (for example, to ship a build to machines with an older glibc).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MARQUEE_NO_RELR");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let target = var("TARGET");
    if target != var("HOST")
        || !target.ends_with("-linux-gnu")
        || std::env::var_os("MARQUEE_NO_RELR").is_some()
    {
        return;
    }
    if libc_defines_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the `libc.so.6` the C compiler links against defines `GLIBC_ABI_DT_RELR`.
fn libc_defines_relr() -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = Command::new(cc).arg("-print-file-name=libc.so.6").output() else {
        return false;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // A bare name back means the compiler did not find it.
    if !out.status.success() || !path.is_absolute() {
        return false;
    }
    let needle = b"GLIBC_ABI_DT_RELR";
    std::fs::read(&path).is_ok_and(|lib| lib.windows(needle.len()).any(|w| w == needle))
}
