# The host python3 and its standard library, as in Occlum's python glibc demo. The BOM names
# the stdlib directory through $PYTHON, which the host's python3 decides (python3.11 on
# Debian 12, python3.10 on Ubuntu 22.04, python3.12 on Ubuntu 24.04).
occlum_bom(
    name = "image",
    src = "python.yaml",
    env = {"PYTHON": "python$(PYTHON3_VERSION)", "EXT": "$(PYTHON3_EXT_SUFFIX)"},
)

occlum_instance(
    name = "instance",
    bom = ":image",
    entry_points = ["/usr/bin"],
    resource_limits = {"user_space_size": "640MB", "kernel_space_heap_size": "64MB"},
    env = {"default": ["OCCLUM=yes", "PYTHONHOME=/usr", "PATH=/usr/bin:/bin"]},
)
