"""Ctrl-C / SIGTERM from a command's first instruction: one line and exit status 130 / 143, never a traceback.

Imports only the standard library, so that `tappa_utils/__init__.py` can install `early_handlers` before it
imports torch (1-3 s during which a signal used to print an import traceback, or kill silently). Until a command's
`run_cli` takes over, a signal prints `<prog>: interrupted; earlier results are unchanged` and exits at once:
nothing has been written yet. `run_cli` then turns signals into exceptions so that clean-up runs, and says whether
a new result was already swapped in (`swaps`, counted by `tappa_utils.io.swap_in`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

STATUS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
_SWAPS = [0]  # result folders swapped in by this process (tappa_utils.io.swap_in)


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a command ran (handled like Ctrl-C; exit status 143)."""


def note_swap() -> None:
    """Record that a new result folder was just put in place."""
    _SWAPS[0] += 1


def swaps() -> int:
    """How many result folders this process has put in place so far."""
    return _SWAPS[0]


def interrupted_line(prog: str, terminated: bool, swapped: bool) -> str:
    """The one line a command prints when a signal stops it; it says whether its new result is in place."""
    what = "terminated" if terminated else "interrupted"
    state = "the new result is in place" if swapped else "earlier results are unchanged"
    return f"{prog}: {what}; {state}"


def cli_prog(argv: list[str]) -> str | None:
    """The `prog` of the command that `argv` (as `sys.orig_argv`) starts, or None when it is no tappa command.

    `python -m tappa_utils analyze ...` and `tappa analyze ...` -> "analyze"; `python -m tappa_utils.book ...`
    -> "book"; anything else (a notebook kernel, pytest) -> None."""
    args, i = list(argv[1:]), 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-m":  # interpreter options (-u, -X dev ...)
        i += 2 if args[i] in ("-W", "-X") else 1
    if i < len(args) and args[i] == "-m":
        module, rest = (args[i + 1] if i + 1 < len(args) else ""), args[i + 2:]
    elif i < len(args) and os.path.basename(args[i]) in ("tappa", "tappa.exe"):
        module, rest = "tappa_utils", args[i + 1:]
    else:
        return None
    if module == "tappa_utils.book":
        return "book"
    if module == "tappa_utils":
        return rest[0] if rest and not rest[0].startswith("-") else "tappa"
    return None


def early_handlers(argv: list[str] | None = None) -> bool:
    """When this process runs a tappa command, make SIGINT / SIGTERM print one line and exit at once.

    Called first thing by `tappa_utils/__init__.py`; returns whether the handlers were installed (never in a
    library use, a notebook or a test run)."""
    prog = cli_prog(list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv))
    if prog is None or threading.current_thread() is not threading.main_thread():
        return False

    def handler(signum, frame):
        status, _ = STATUS[signum]
        line = interrupted_line(prog, signum == signal.SIGTERM, swaps() > 0)
        os.write(2, (line + "\n").encode())
        os._exit(status)

    for sig in STATUS:
        signal.signal(sig, handler)
    return True
