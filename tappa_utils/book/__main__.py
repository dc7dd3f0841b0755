"""`python -m tappa_utils.book build | null | ledger | execute | params-table | reference | check-html | lab`.

The command line itself is `tappa_utils.book.cli` (options in `tappa_utils.book.parser`); this module only runs it.
"""
from __future__ import annotations

import sys

from .cli import build_parser, main, run_options  # noqa: F401 - importable from here as before

if __name__ == "__main__":
    sys.exit(main())
