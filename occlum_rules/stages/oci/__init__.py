"""OCI images of Occlum instances: layers, base images, the runtime check and the image
layout / docker-archive writers. Pure formats: no engine, no rules."""
