//! The service's enclave library, in the shape of a seed deployment: the application loads
//! it with dlopen and calls a C ABI. It seals messages into records a verifier can check:
//!
//! - the service key is derived once with HMAC-SHA256 (a stand-in for a key the enclave
//!   would get from sealing or remote attestation);
//! - a record carries the message, its SHA-256 and an HMAC-SHA256 tag over the record's
//!   canonical binary form (bincode), and travels as JSON (serde_json);
//! - errors are typed inside (thiserror) and carry context outward (anyhow).
//!
//! The crates come from Debian's registry (`registry` in BUILD.py); nothing is downloaded.

use std::os::raw::c_char;

use anyhow::Context;
use hmac::{Hmac, Mac};
use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

static SERVICE: &[u8] = b"neo_service_enclave 0.1.0\0";
const SERVICE_NAME: &str = "neo_service_enclave";

/// Derived once, on first use.
static SERVICE_KEY: Lazy<[u8; 32]> = Lazy::new(|| hmac_sha256(b"neo-service seed", b"enclave key v1"));

/// What the service hands out: the message, its SHA-256, and a tag only the key can make.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub service: String,
    pub message: String,
    pub sha256: String,
    pub tag: String,
}

/// The part of a record the tag covers, in a fixed binary encoding (bincode).
#[derive(Serialize)]
struct Signed<'a> {
    service: &'a str,
    message: &'a str,
    sha256: &'a str,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0} is a null pointer")]
    Null(&'static str),
    #[error("the message is not UTF-8")]
    NotUtf8,
    #[error("the output buffer holds {have} bytes, {need} are needed")]
    BufferTooSmall { need: usize, have: usize },
    #[error("the tag does not match the record")]
    BadTag,
}

// hmac 0.11 renamed `NewMac::new_varkey` to `new_from_slice` (and 0.12 moved it to `Mac`).
#[cfg(not(hmac_0_10))]
fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

#[cfg(hmac_0_10)]
fn keyed(key: &[u8]) -> HmacSha256 {
    use hmac::NewMac;
    HmacSha256::new_varkey(key).expect("HMAC takes keys of any length")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b)).collect()
}

fn tag_of(service: &str, message: &str, sha256: &str) -> anyhow::Result<String> {
    let signed = bincode::serialize(&Signed { service, message, sha256 })
        .context("encoding the record for its tag")?;
    Ok(hex(&hmac_sha256(&SERVICE_KEY[..], &signed)))
}

/// Seal a message into a record.
pub fn seal(message: &str) -> anyhow::Result<Record> {
    let sha256 = hex(&Sha256::digest(message.as_bytes()));
    let tag = tag_of(SERVICE_NAME, message, &sha256)?;
    log::debug!("sealed {} bytes", message.len());
    Ok(Record { service: SERVICE_NAME.to_string(), message: message.to_string(), sha256, tag })
}

/// Check a record given as JSON.
pub fn verify(json: &str) -> anyhow::Result<Record> {
    let record: Record = serde_json::from_str(json).context("reading the record")?;
    let sha256 = hex(&Sha256::digest(record.message.as_bytes()));
    if sha256 != record.sha256 || tag_of(&record.service, &record.message, &sha256)? != record.tag {
        return Err(ServiceError::BadTag.into());
    }
    Ok(record)
}

/// # Safety
/// `text` must be null or a NUL-terminated string.
unsafe fn c_str<'a>(text: *const c_char, what: &'static str) -> Result<&'a str, ServiceError> {
    if text.is_null() {
        return Err(ServiceError::Null(what));
    }
    let bytes = std::slice::from_raw_parts(text as *const u8, libc::strlen(text));
    std::str::from_utf8(bytes).map_err(|_| ServiceError::NotUtf8)
}

/// Copy `text` and a NUL into `out`; the length copied, or the error if it does not fit.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
unsafe fn put(text: &str, out: *mut c_char, cap: usize) -> Result<usize, ServiceError> {
    if out.is_null() {
        return Err(ServiceError::Null("out"));
    }
    if text.len() + 1 > cap {
        return Err(ServiceError::BufferTooSmall { need: text.len() + 1, have: cap });
    }
    std::ptr::copy_nonoverlapping(text.as_ptr(), out as *mut u8, text.len());
    *out.add(text.len()) = 0;
    Ok(text.len())
}

/// The C ABI's error convention: -1, with the message in `out` when it fits.
unsafe fn fail(error: anyhow::Error, out: *mut c_char, cap: usize) -> libc::ssize_t {
    let _ = put(&format!("{:#}", error), out, cap);
    -1
}

/// Name and version of the service, NUL-terminated and static.
#[no_mangle]
pub extern "C" fn neo_service_name() -> *const c_char {
    SERVICE.as_ptr() as *const c_char
}

/// Seal `message` and write the record as JSON into `out`: its length, or -1 and an error.
///
/// # Safety
/// `message` must be a NUL-terminated string, `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn neo_service_seal(
    message: *const c_char,
    out: *mut c_char,
    cap: libc::size_t,
) -> libc::ssize_t {
    let result = c_str(message, "message")
        .map_err(anyhow::Error::from)
        .and_then(seal)
        .and_then(|record| serde_json::to_string(&record).context("writing the record"))
        .and_then(|json| put(&json, out, cap).map_err(anyhow::Error::from));
    match result {
        Ok(len) => len as libc::ssize_t,
        Err(error) => fail(error, out, cap),
    }
}

/// Verify a record (JSON): 0 when it is intact, or -1 and the reason in `out`.
///
/// # Safety
/// `json` must be a NUL-terminated string, `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn neo_service_verify(
    json: *const c_char,
    out: *mut c_char,
    cap: libc::size_t,
) -> libc::ssize_t {
    match c_str(json, "json").map_err(anyhow::Error::from).and_then(verify) {
        Ok(_) => 0,
        Err(error) => fail(error, out, cap),
    }
}
