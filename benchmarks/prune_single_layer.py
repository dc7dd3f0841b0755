"""Which single layer does a task need? Remove one decoder layer at a time and score the pruning tasks.

    .venv/bin/python benchmarks/prune_single_layer.py [--model smollm2-135m] [--layers 10-22] [--prompts 12]
        [--family passkey] [--tokens 1024]

Prints a table: layer, accuracy without it (teacher-forced greedy check, `prune.tasks`), and the layer's mean
q-similarity on the calibration text when a `prune-eval` run's `layer_scores.csv` is given (`--scores`). Made to
check one reading of the shipped pruning run: the layer TAPPA's q-similarity term ranks most removable (the
highest q-similarity) is the one the pass key cannot do without.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from tappa_utils.models import load_model
from tappa_utils.prune.tasks import task_correct, task_sets


def layer_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default="10-22", help="a layer or a range, e.g. 16 or 10-22")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--family", default="passkey", choices=("facts", "passkey"))
    p.add_argument("--tokens", type=int, default=1024, help="pass-key length in tokens")
    p.add_argument("--scores", default=None, help="a prune-eval run's layer_scores.csv (adds the q-similarity)")
    args = p.parse_args(argv)
    model, tok = load_model(args.model)
    ts = task_sets(tok, (args.family,), n=args.prompts, seed=0, passkey_tokens=args.tokens)[args.family]
    n_layers = model.config.num_hidden_layers
    layers = layer_range(args.layers)
    if not layers or min(layers) < 0 or max(layers) >= n_layers:
        raise SystemExit(f"--layers {args.layers}: the model has layers 0..{n_layers - 1}")
    rows = [{"layer": "none", "accuracy": task_correct(model, ts).mean()}]
    for layer in layers:
        t0 = time.perf_counter()
        rows.append({"layer": layer, "accuracy": task_correct(model, ts, removed=[layer]).mean(),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    if args.scores:
        q = pd.read_csv(args.scores).set_index("layer").qsim
        table["qsim"] = [q.get(r, float("nan")) if r != "none" else float("nan") for r in table.layer]
    print(f"{args.family}, {args.prompts} prompts, {args.model}: accuracy without one layer")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
