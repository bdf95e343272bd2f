"""occlum-rules: Bazel-style build rules for Occlum enclaves, on doit."""

__version__ = "0.1.0"
