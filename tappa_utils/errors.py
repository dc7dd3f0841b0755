"""The error every command turns into exit status 2 (`UsageError`), in a module of its own that imports nothing.

`tappa_utils.preflight` (the checks, `run_cli`) and `tappa_utils.io` (result folders) both raise it; it lives here
so that neither has to import the other for it.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input to a command: one line naming the option and the cause (exit status 2)."""
