//! Build information for `backstop --version`: the git commit the binary is
//! built from (or `$BACKSTOP_GIT_COMMIT` where there is no repository, as in
//! a container build; `unknown` when neither says) and the target triple.
//!
//! In a release build, also the order of the code: the functions a running
//! agent executes (`link-order.txt`, written by `bench/layout.py`) are
//! placed together, so that the kernel's 64 KiB fault-around does not make
//! nearly all of the executable resident (bench/README.md, "Cost").

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BACKSTOP_GIT_COMMIT");
    let commit = std::env::var("BACKSTOP_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Build again when HEAD moves: HEAD itself, the branch it points to, and
    // packed refs (only the paths that exist, or cargo would rebuild always).
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=BACKSTOP_GIT_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=BACKSTOP_TARGET={target}");
    link_order(&target);
}

/// Passes `link-order.txt` to the linker as the order of the code, in a
/// release build for x86_64 Linux with rustc 1.90 or later, whose default
/// linker there is its own LLD (`--symbol-ordering-file`; names it does not
/// find are ignored). `BACKSTOP_LINK_ORDER=0` turns it off, to measure what
/// it does or to link with another linker.
fn link_order(target: &str) {
    println!("cargo:rerun-if-env-changed=BACKSTOP_LINK_ORDER");
    println!("cargo:rerun-if-changed=link-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = std::env::var("BACKSTOP_LINK_ORDER").map_or(true, |v| v != "0");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = std::path::Path::new(&dir).join("link-order.txt");
    if !release || !wanted || target != "x86_64-unknown-linux-gnu" || !order.exists() {
        return;
    }
    if rustc_minor().is_none_or(|minor| minor < 90) {
        println!(
            "cargo:warning=rustc before 1.90 links with the system linker: link-order.txt is not used and more of the binary stays resident"
        );
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The minor version of the rustc that builds this (`rustc 1.95.0 ...`).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
