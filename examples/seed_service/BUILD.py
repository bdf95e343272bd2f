# The seed deployment shape: a Rust enclave library (cdylib) beside a C application, host
# runtime libraries through a BOM, and an Occlum.json modelled on the deployment guide
# (1 GB user space growing to 4 GB, 64 MB / 256 MB kernel heap, 8 MB kernel stack,
# 64 threads, hostfs at /host, ramfs at /tmp).
cargo_cdylib(
    name = "neo_service_enclave",
    manifest = "enclave/Cargo.toml",
)

occlum_cc_binary(
    name = "seed_app",
    srcs = ["app.c"],
    linkopts = ["-ldl"],
    toolchain = ["occlum-gcc", "gcc"],
)

occlum_bom(
    name = "image",
    src = "seed.yaml",
    deps = {
        "/bin": [":seed_app"],
        "/lib": [":neo_service_enclave"],
    },
)

occlum_instance(
    name = "instance",
    bom = ":image",
    occlum_json = "Occlum.json",
)

# A release: debuggable is false in Occlum.json, so no `debug = True` is needed.
occlum_package(
    name = "package",
    instance = ":instance",
    package_name = "seed_service",
)
