# A std-only Rust program, built by cargo (occlum-cargo when the Occlum toolchain has it).
# Every file of the crate except target/ is an input; Cargo.lock makes the build --locked.
cargo_binary(
    name = "hello_rust",
    manifest = "Cargo.toml",
)
