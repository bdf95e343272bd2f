"""``occlum-rules push //pkg:image REGISTRY/REPO[:TAG]``: push a built image to a registry.

Argument parsing, one call to ``stages/oci/push.push_built_image`` and printing. The image
must be built (``doit //pkg:image``); credentials come from OCCLUM_RULES_REGISTRY_USER +
OCCLUM_RULES_REGISTRY_PASSWORD or OCCLUM_RULES_REGISTRY_TOKEN, never from arguments.
"""

from __future__ import annotations

import argparse

from occlum_rules.cli.common import built_provider


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="occlum-rules push", allow_abbrev=False,
        description="Push a built occlum_oci_image to a registry (OCI distribution API). "
                    "Prints and writes REGISTRY/REPO@sha256:… to the image's image.pushed.")
    parser.add_argument("label", help="an occlum_oci_image target, e.g. //app:image")
    parser.add_argument("reference", help="REGISTRY/REPO[:TAG], e.g. registry.example.com/app:v1")
    parser.add_argument("--tag", action="append", default=[], metavar="T",
                        help="another tag to push (repeatable); default: the image's tag")
    parser.add_argument("--insecure", action="store_true",
                        help="use plain http (only for a registry you name on purpose)")
    parser.add_argument("--mount-from", action="append", default=[], metavar="REPO",
                        help="a repository of the same registry to mount existing blobs from")
    parser.add_argument("--chunk-size", type=int, default=None, metavar="BYTES",
                        help="upload blobs above this size in PATCH chunks of it (default 64 MiB)")
    args = parser.parse_args(argv)
    ws, image = built_provider(args.label, "oci_image", "occlum_oci_image", "digest")
    from occlum_rules.stages.oci.push import DEFAULT_CHUNK, push_built_image, summary

    digest_file = ws.root / image["digest"].path
    result, pushed = push_built_image(
        ws.root / image["layout"].path, digest_file, args.reference, args.tag,
        insecure=args.insecure, mount_from=args.mount_from, default_tag=image["tag"],
        chunk_size=args.chunk_size or DEFAULT_CHUNK)
    print(summary(result))
    print(f"written to {pushed.relative_to(ws.root)}")
    print(result.reference)
    return 0
