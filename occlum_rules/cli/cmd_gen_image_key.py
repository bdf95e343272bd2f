"""``occlum-rules gen-image-key PATH``: a random image key, as ``occlum gen-image-key``."""

from __future__ import annotations

import argparse

from occlum_rules.stages.securefs.image_key import generate_image_key


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="occlum-rules gen-image-key",
        description="Write a new random 128-bit image key (xx-xx-...-xx) to PATH, "
        "readable only by its owner.",
    )
    p.add_argument("path", metavar="PATH")
    generate_image_key(p.parse_args(argv).path)
    return 0
