//! A Rust shared library for an Occlum image: plain C ABI functions a C program finds with
//! dlopen/dlsym. std only, so the build needs no crates from the network.

use std::os::raw::c_char; // std::ffi::c_char needs Rust 1.64; Debian 12 has 1.63

static VERSION: &[u8] = b"enclave_lib 0.1.0\0";

/// Adds two numbers; wraps instead of panicking, since a panic must not cross the C ABI.
#[no_mangle]
pub extern "C" fn enclave_lib_add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// A NUL-terminated, static version string.
#[no_mangle]
pub extern "C" fn enclave_lib_version() -> *const c_char {
    VERSION.as_ptr() as *const c_char
}
