//! Tells lib.rs which hmac API generation cargo resolved from the distribution's registry:
//! cargo writes Cargo.lock before it runs build scripts, and a crate cannot ask for the
//! version of a dependency any other way.

use std::{env, fs, path::Path};

fn main() {
    let lock = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = fs::read_to_string(&lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"hmac\"" {
            if let Some(version) = lines.next() {
                if version.trim().starts_with("version = \"0.10.") {
                    println!("cargo:rustc-cfg=hmac_0_10");
                }
            }
        }
    }
}
