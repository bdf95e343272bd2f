# The host python3 and the slice of its standard library `import json` needs, as in
# Occlum's python glibc demo.
occlum_bom(
    name = "image",
    src = "python.yaml",
)

occlum_instance(
    name = "instance",
    bom = ":image",
    entry_points = ["/usr/bin"],
    resource_limits = {"user_space_size": "640MB", "kernel_space_heap_size": "64MB"},
    env = {"default": ["OCCLUM=yes", "PYTHONHOME=/usr", "PATH=/usr/bin:/bin"]},
)
