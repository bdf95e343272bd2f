occlum_cc_binary(
    name = "hello",
    srcs = ["hello.c"],
)
