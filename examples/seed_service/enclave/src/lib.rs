//! The service's enclave library, in the shape of a seed deployment: the application loads
//! it with dlopen and calls a C ABI. std only, so the build needs no network.

use std::ffi::c_char;

static SERVICE: &[u8] = b"neo_service_enclave 0.1.0\0";

/// Name and version of the service, NUL-terminated and static.
#[no_mangle]
pub extern "C" fn neo_service_name() -> *const c_char {
    SERVICE.as_ptr() as *const c_char
}

/// A stand-in for the service's work: a checksum over a caller's buffer (FNV-1a).
///
/// # Safety
/// `data` must point to `len` readable bytes (or be null with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn neo_service_checksum(data: *const u8, len: usize) -> u64 {
    if data.is_null() {
        return 0;
    }
    let bytes = std::slice::from_raw_parts(data, len);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
