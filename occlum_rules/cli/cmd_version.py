"""``occlum-rules version``."""

from __future__ import annotations

import argparse

from occlum_rules import __version__


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="occlum-rules version", description="Print the version.")
    parser.parse_args(argv)
    print(f"occlum-rules {__version__}")
    return 0
