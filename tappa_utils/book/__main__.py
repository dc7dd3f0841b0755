"""`python -m tappa_utils.book build | execute | params-table | reference` (see `tappa_utils.book`)."""
import sys

from .build import main

if __name__ == "__main__":
    sys.exit(main())
