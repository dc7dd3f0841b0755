"""`make lab`: open the chapters in JupyterLab (pinned in requirements.txt) with the project's environment.

    python -m tappa_utils.book lab                 # what `make lab` runs; Ctrl-C stops it
    python -m tappa_utils.book lab --port 8899 --no-browser

JupyterLab runs from the interpreter that runs this (the project's `.venv`), so its `python3` kernel has
`tappa_utils` and every pinned library. It serves `notebooks/`; a chapter run there writes its results under
`notebooks/_build/results/` (git-ignored). Without a display (a server, a container) no browser is opened:
open the URL JupyterLab prints.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def has_display() -> bool:
    """Whether a browser can be opened here: macOS / Windows, or a Linux/BSD session with X11 or Wayland."""
    if sys.platform == "darwin" or sys.platform.startswith("win"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def lab_command(root: str | Path, port: int | None = None, token: str | None = None,
                browser: bool | None = None) -> list[str]:
    """The JupyterLab command line serving `root/notebooks` (`browser=None`: open one when there is a display)."""
    notebooks = Path(root) / "notebooks"
    if not notebooks.is_dir():
        raise FileNotFoundError(f"{notebooks} does not exist; run this from the repository root")
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebooks}"]
    if not (has_display() if browser is None else browser):
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI often run as root; JupyterLab refuses to without this
    if port is not None:
        cmd += [f"--port={port}", "--ServerApp.port_retries=0"]
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


def port_number(text: str) -> int:
    """`--port`'s value as a TCP port number (1-65535); argparse.ArgumentTypeError (one line) otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `lab` (shared by the book's command line)."""
    parser.add_argument("--port", type=port_number, default=None,
                        help="port, 1-65535 (default: JupyterLab's, 8888 or the next free)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser (default: open one when there is a display)")


def run(root: str | Path, port: int | None = None, no_browser: bool = False) -> int:
    """Replace this process with JupyterLab (so Ctrl-C and signals reach it directly); a bad port or a root without
    notebooks is a `UsageError` (exit status 2 from the book's command line), raised before anything starts."""
    from ..preflight import UsageError

    if port is not None:
        try:
            port_number(str(port))
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--port {e}") from None
    try:
        cmd = lab_command(root, port=port, browser=False if no_browser else None)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    print("starting:", " ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)
    return 0  # not reached
