"""All BOM files of Occlum's repository parse and resolve their includes."""

from __future__ import annotations

import pytest

from occlum_rules.stages.bom.plan import collect_boms
from occlum_rules.stages.bom.schema import read_bom_file
from tests.conftest import VECTORS, vectors_path

CORPUS = VECTORS / "bom" / "corpus"
FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.yaml")) if CORPUS.is_dir() else []


def test_corpus_is_complete() -> None:
    vectors_path("bom", "corpus")
    assert len(FILES) == 77


@pytest.mark.parametrize("rel", FILES)
def test_corpus_bom_parses(rel: str) -> None:
    corpus = vectors_path("bom", "corpus")
    path = corpus / rel
    bom = read_bom_file(str(path))
    assert bom.warnings == ()  # no typos in Occlum's own BOMs
    assert bom.targets or bom.includes
    order, _ = collect_boms(str(path), [str(corpus / "etc" / "template")])
    assert order[0] == str(path)
