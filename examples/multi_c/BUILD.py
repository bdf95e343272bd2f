occlum_cc_library(
    name = "greet",
    srcs = ["greet.c"],
    hdrs = ["greet.h"],
)

[occlum_cc_binary(
    name = tool,
    srcs = [tool + ".c"],
    deps = [":greet"],
) for tool in ["greeter", "adder"]]
