# The seed deployment shape: a Rust enclave library (cdylib) beside a C application, host
# runtime libraries through a BOM, and an Occlum.json modelled on the deployment guide
# (1 GB user space growing to 4 GB, 64 MB / 256 MB kernel heap, 8 MB kernel stack,
# 64 threads, hostfs at /host, ramfs at /tmp).
# The enclave library's crates (serde, serde_json, sha2, hmac, ...) come from Debian's
# directory registry, offline: `apt-get install librust-serde-dev ...` (see the README).
cargo_cdylib(
    name = "neo_service_enclave",
    manifest = "enclave/Cargo.toml",
    registry = "/usr/share/cargo/registry",
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

# The container image: a small runtime base assembled from host files with the BOM format
# (no registry, no daemon), then the instance as `occlum package` lays it out at
# /opt/occlum_instance. Outputs: image.oci/ (OCI layout), image.tar (docker-archive for
# `docker load` / `podman load`), image.digest, image.json. See README "Containers".
occlum_bom(
    name = "runtime_files",
    src = "runtime.yaml",
    occlum_init = False,
)

oci_layer(
    name = "runtime_base",
    bom = ":runtime_files",
)

occlum_oci_image(
    name = "image_oci",
    instance = ":instance",
    layers = [":runtime_base"],
    repository = "seed_service",
    exposed_ports = ["8080/tcp"],
    labels = {"org.opencontainers.image.title": "seed_service"},
)

# Provenance (in-toto Statement + SLSA v1) of the release and of the image; signed as DSSE
# envelopes when WORKSPACE.yaml names provenance.signing_key. See README "Provenance".
occlum_provenance(
    name = "package_provenance",
    subject = ":package",
)

occlum_provenance(
    name = "image_provenance",
    subject = ":image_oci",
)

# The Kubernetes manifest: a Deployment pulling the image by digest from where
# `doit push` puts it, asking the SGX device plugin for the enclave's EPC (from the signed
# enclave's size), /dev/sgx_enclave, and SGX_MODE from the instance; a Service for 8080.
occlum_k8s_manifest(
    name = "k8s",
    image = ":image_oci",
    repository = "registry.example.com/occlum/seed_service",
    app = "seed-service",
    ports = ["8080"],
    env = {"RUST_LOG": "info"},
    requests = {"cpu": "500m", "memory": "512Mi"},
)
