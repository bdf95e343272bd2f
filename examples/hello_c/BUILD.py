occlum_cc_binary(
    name = "hello",
    srcs = ["hello.c"],
)

occlum_bom(
    name = "image",
    src = "hello.yaml",
    deps = {"/bin": [":hello"]},
)

occlum_instance(
    name = "instance",
    bom = ":image",
    entry_points = ["/bin"],
    resource_limits = {"user_space_size": "256MB"},
)

# A release tarball (+ hello_c.manifest.json, SHA256SUMS) like `occlum package`, but
# reproducible. The default Occlum.json is debuggable, so this is a debug package
# (debug = True); for production set metadata = {"debuggable": False} on the instance and
# drop debug.
occlum_package(
    name = "package",
    instance = ":instance",
    package_name = "hello_c",
    debug = True,
)
