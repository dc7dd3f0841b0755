"""Every public function and class defined in a tappa_utils module has a docstring (and every module imports)."""
from __future__ import annotations

import dataclasses
import types

from tappa_utils import book


def test_every_module_imports():
    _, errors = book.package_modules()
    assert not errors, "modules that fail to import: " + "; ".join(f"{k}: {v}" for k, v in errors.items())


def test_public_functions_and_classes_have_docstrings():
    modules, _ = book.package_modules()
    assert len(modules) > 5
    missing = book.missing_docstrings(modules)
    assert not missing, "public objects without a docstring: " + ", ".join(missing)


def test_the_checker_finds_missing_docstrings():
    mod = types.ModuleType("fake_mod", "A module.")

    def documented():
        """Has one."""

    def bare():
        pass

    class Bare:
        pass

    @dataclasses.dataclass
    class BareData:  # dataclasses invent a __doc__ from the signature: that does not count
        x: int = 0

    def _private():
        pass

    for obj in (documented, bare, Bare, BareData, _private):
        obj.__module__ = "fake_mod"
        setattr(mod, obj.__name__, obj)
    mod.imported = dataclasses.field  # defined elsewhere: not this module's business
    assert book.missing_docstrings([mod]) == ["fake_mod.Bare", "fake_mod.BareData", "fake_mod.bare"]
    assert book.missing_docstrings([types.ModuleType("undocumented")]) == ["undocumented"]
