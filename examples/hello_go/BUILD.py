# A std-only Go program: go.mod here makes this directory a module, and every file in it is
# an input. occlum-go is used when the Occlum toolchain has it, else the host go.
go_binary(
    name = "hello_go",
    pkg = ".",
)
