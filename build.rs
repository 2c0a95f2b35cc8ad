//! Link-time layout of the `proconsul` executable.
//!
//! An idle client agent runs a few thousand of the executable's functions, spread over
//! its whole text, and every block of the file that the kernel maps for one of them stays
//! resident. `link/client.order` lists those functions (made by `bench/client_rss.sh
//! --order link/client.order`); the linker places them next to each other, so that a
//! client's code takes a few megabytes of memory instead of most of the text. Names the
//! list has that a build lacks (renamed functions, another profile, other dependency
//! versions) are skipped: a stale list places fewer functions together, nothing more.
//!
//! Relative relocations are packed as well (see below).
//!
//! rustc links x86_64 Linux with its own lld since 1.90 (this package's rust-version);
//! neither flag is passed when another linker is configured, or with
//! `PROCONSUL_PLAIN_LINK` set (for a glibc older than 2.36, which cannot load packed
//! relocations).

// A build script speaks to cargo on its standard output.
#![allow(clippy::print_stdout)]

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/client.order");
    println!("cargo:rerun-if-env-changed=PROCONSUL_PLAIN_LINK");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_lld = var("TARGET") == "x86_64-unknown-linux-gnu"
        && std::env::var_os("RUSTC_LINKER").is_none()
        && !flags.contains("linker")
        && !flags.contains("fuse-ld");
    if !own_lld || std::env::var_os("PROCONSUL_PLAIN_LINK").is_some() {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/client.order");
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=proconsul=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=proconsul=-Wl,--no-warn-symbol-ordering");
    }
    // Relative relocations packed (DT_RELR): the dynamic loader reads a few kilobytes at
    // start instead of a megabyte of `.rela.dyn`, which then stayed resident.
    println!("cargo:rustc-link-arg-bin=proconsul=-Wl,-z,pack-relative-relocs");
}
