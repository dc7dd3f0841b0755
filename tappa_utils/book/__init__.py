"""Building the TAPPA Book: execute the chapters with papermill, generate the reference page, render the HTML.

Only the command line (`python -m tappa_utils.book ...`, `make book`) and the tests use this package.
"""
from __future__ import annotations

from .build import *  # noqa: F401,F403
from .build import REQUIRED_PARAMETERS, README_START, README_END, main  # noqa: F401
