//! Links the podwire executable as a fixed-address (non-PIE) program with
//! a static unwinder.
//!
//! Every pod's ADD and DEL starts this binary as its CNI plugin, so its start
//! is on the critical path of every pod. As a position-independent
//! executable, the dynamic loader had to apply ~40k relative relocations
//! before `main`, writing ~170 pages of `.data.rel.ro` (vtables, string
//! tables): two thirds of the process's page faults and ~1 ms of a bare CNI
//! VERSION. A non-PIE executable has those addresses fixed at link time, so
//! the pages are mapped read-only from the page cache when touched. The
//! reference CNI plugins ship the same way (Go links non-PIE executables).
//!
//! Only the link of this binary changes: rustc still emits `-pie`, and the
//! later `-no-pie` wins; the object code stays position-independent, which a
//! fixed-address link accepts. A flag in RUSTFLAGS would also reach the
//! proc-macro crates, which must stay shared objects.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    // The GNU toolchain's driver understands -no-pie; other targets keep
    // their default.
    if target.contains("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
