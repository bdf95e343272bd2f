# A Rust enclave library (a cdylib) and a C program that dlopens it.
# Both sides must share one libc: with an Occlum install they are occlum-cargo (musl target)
# and occlum-gcc; without one, host cargo and gcc (glibc), so the pair also runs on the host.
cargo_cdylib(
    name = "enclave_lib",
    manifest = "rust/Cargo.toml",
)

occlum_cc_binary(
    name = "loader",
    srcs = ["loader.c"],
    linkopts = ["-ldl"],
    toolchain = ["occlum-gcc", "gcc"],
)
