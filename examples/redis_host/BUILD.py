# Debian's redis-server copied from the host through a BOM, as in Occlum's redis demo.
occlum_bom(
    name = "image",
    src = "redis.yaml",
)

occlum_instance(
    name = "instance",
    bom = ":image",
    entry_points = ["/bin"],
    resource_limits = {"user_space_size": "1GB", "max_num_of_threads": 64},
    env = {"default": ["OCCLUM=yes", "HOME=/root"]},
)
