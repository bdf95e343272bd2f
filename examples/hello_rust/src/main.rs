//! Hello from Rust inside an Occlum enclave (std only, no crates from the registry).

use std::env;

fn main() {
    let who = env::args().nth(1).unwrap_or_else(|| "Occlum".to_string());
    println!("Hello, {who}, from Rust!");
}
