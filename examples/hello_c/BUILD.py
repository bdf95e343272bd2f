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
