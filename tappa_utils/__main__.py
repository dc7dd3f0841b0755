"""Command line: `python -m tappa_utils <command> ...` (also installed as `tappa`).

Each command lives in its own module with `main(argv)`; bad input exits with status 2 and one clear line
(`tappa_utils.preflight`), Ctrl-C with 130; results are built aside and swapped in whole (`tappa_utils.io.ResultDir`).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "analyze": ("tappa_utils.analysis", "per-head metrics (q-similarity, sinks, diagonals, periods) of a model"),
    "kv-eval": ("tappa_utils.kv.evaluate", "KV-cache compression: TAPPA vs kvpress baselines"),
    "kv-tasks": ("tappa_utils.kv.task_cli", "KV-cache compression judged by task accuracy (needles, QA, ...)"),
    "prune-eval": ("tappa_utils.prune.cli", "layer pruning: ShortGPT vs TAPPA orders"),
    "model-card": ("tappa_utils.tiny.card", "regenerate the default model's card (measurements vs random weights)"),
    "train-tiny": ("tappa_utils.tiny.train", "train (or resume, or export) the default model"),
}


def usage() -> str:
    """The top-level help text listing the commands."""
    lines = ["usage: python -m tappa_utils <command> [options]   (<command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `argv[0]` to its command module's `main(argv[1:])`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"tappa: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
