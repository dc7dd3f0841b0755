"""Every `>>>` example in the package's docstrings runs and prints what it shows (tappa-tiny makes them cheap)."""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tappa_utils"


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a `>>>` example."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_the_examples_are_found():
    found = modules_with_examples()
    for name in ("tappa_utils.chapter", "tappa_utils.metrics", "tappa_utils.prune", "tappa_utils.kv.tappa_press"):
        assert name in found


@pytest.mark.parametrize("name", modules_with_examples())
def test_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} mentions `>>>` but doctest found no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
