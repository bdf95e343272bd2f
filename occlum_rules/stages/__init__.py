"""Pure-Python build stages, each byte-identical to the Occlum or SGX SDK tool it replaces."""
