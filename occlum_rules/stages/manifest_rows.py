"""Reading an image manifest one record at a time.

The BOM stage writes its image manifest one record per line
(``bom.manifest.encode_manifest``) so that later stages need not decode it whole. This
module is apart from ``stages.bom`` so that the stages reading manifests (SEFS pack,
package) do not import the BOM machinery (ELF parsing, YAML) with it.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

from occlum_rules.errors import UserError


class ManifestRows(Sequence):
    """The records of a manifest in the layout of ``bom.manifest.encode_manifest``, each decoded when it
    is asked for (and not kept).

    A 4 GiB image's manifest decoded whole is 80k dicts, ~70 MiB of a build's peak RSS in
    each stage that reads it (SEFS pack, package); here a stage holds the file's bytes and
    where each line starts. ``rows[i]`` of a line that is not JSON is a UserError (as
    decoding the whole text would have been).
    """

    __slots__ = ("text", "_starts")

    def __init__(self, text: bytes, starts: array):
        self.text = text
        self._starts = starts

    @classmethod
    def parse(cls, text: bytes) -> ManifestRows | None:
        """The rows of ``text`` when it is laid out as ``encode_manifest`` writes (one
        record a line, each but the last followed by a comma), else None (decode it whole).
        Such text is a JSON array exactly when every line is JSON: its rows are its items."""
        if text == b"[\n]\n":
            return cls(text, array("q"))
        if not (text.startswith(b"[\n") and text.endswith(b"\n]\n")):
            return None
        starts = array("q")
        pos, end = 2, len(text) - 3  # the first row; the newline before "]"
        while True:
            starts.append(pos)
            stop = text.index(b"\n", pos)
            if stop == end:
                return cls(text, starts) if text[stop - 1:stop] != b"," else None
            if text[stop - 1:stop] != b",":
                return None
            pos = stop + 1

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        pos = self._starts[i]
        line = self.text[pos:self.text.index(b"\n", pos)]
        try:
            return json.loads(line[:-1] if line.endswith(b",") else line)
        except ValueError as exc:
            raise UserError(f"not valid JSON (record {i}: {exc})", "image manifest") from None

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]
