"""Chapter 07's task-accuracy results: checks, tables, figures and sentences from `task_eval.run_task_eval`'s rows.

Inputs are the per-sample rows of `run_task_eval` (task, length, sample, method, keep, correct, press_ms,
answer_ms, layer_lengths, layer_qsim). A (task, length) cell is *solvable* when the full cache answers at least half
of its samples (`kv_cache.A_task_solvable`); the claims are TAPPA minus a baseline in accuracy, paired over samples,
one check per (task, length, keep), Holm-corrected within each claim (`claims.holm_adjust`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import claims as C
from .. import stats as S
from .. import tables as T
from ..stats import wilson_interval
from .task_eval import accuracy_table, ranks

SOLVABLE_ID = "kv_cache.A_task_solvable"
# claim id -> the method TAPPA is compared with (positive effect = TAPPA answers more)
TASK_CLAIMS = {"kv_cache.tappa_vs_uniform_budgets": "uniform_cake", "kv_cache.tappa_vs_snapkv": "snapkv",
               "kv_cache.tappa_vs_expected_attention": "expected_attention"}


def check_grid(tasks: Sequence[str], lengths: Sequence[int], samples: int, keep: Sequence[float],
               methods: Sequence[str], window: int) -> None:
    """Refuse a task grid the evaluation cannot run (ValueError, one line naming the option and the fix)."""
    from ..long_tasks import TASKS
    from .methods import method_names

    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks: unknown {bad}; choose from {', '.join(TASKS)}")
    method_names(methods)
    if not keep or any(not 0 < k < 1 for k in keep):
        raise ValueError(f"keep {list(keep)}: every fraction must be in (0, 1), e.g. [0.1, 0.25, 0.5]")
    if not lengths or min(lengths) < 256:
        raise ValueError(f"lengths {list(lengths)}: contexts must be at least 256 tokens")
    if samples < 1:
        raise ValueError(f"samples {samples}: must be >= 1")
    if window < 1 or min(keep) * min(lengths) <= window:
        raise ValueError(f"window {window} is not below the smallest budget ({min(keep)} x {min(lengths)} tokens); "
                         "lower window or raise keep")


def full_cache_table(results):
    """Full-cache accuracy per (task, length): correct, n, accuracy, ci_low, ci_high (Wilson) and `solvable`
    (accuracy >= the threshold of `kv_cache.A_task_solvable`)."""
    import pandas as pd

    bar = C.spec(SOLVABLE_ID).threshold
    rows = []
    for (task, length), g in results[results.method == "full"].groupby(["task", "length"], sort=False):
        k, n = int(g.correct.sum()), len(g)
        lo, hi = wilson_interval(k, n)
        rows.append({"task": task, "length": int(length), "correct": k, "n": n, "accuracy": k / n, "ci_low": lo,
                     "ci_high": hi, "solvable": k / n >= bar})
    return pd.DataFrame(rows)


def sign_test_greater(a, b) -> float:
    """One-sided exact sign test that paired 0/1 outcomes `a` beat `b`: P(Bin(n, 1/2) >= wins) over the n
    discordant pairs (1.0 when there is none).

    >>> round(sign_test_greater([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]), 4)
    0.0312
    """
    a, b = np.asarray(a, int), np.asarray(b, int)
    wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n if n else 1.0


def _pct(k: float) -> str:
    return f"{100 * k:.3g} %"


def _paired(results, task: str, length: int, keep: float, a: str, b: str):
    def values(m):
        g = results[(results.task == task) & (results.length == length) & (results.method == m)
                    & (results.keep == keep)]
        return g.set_index("sample").correct

    x, y = values(a), values(b)
    common = x.index.intersection(y.index)
    return x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)


def task_checks(results, seed: int = 0, claims: dict[str, str] | None = None) -> list:
    """The chapter's checks on task accuracy: `kv_cache.A_task_solvable` per (task, length); per registered claim
    (`TASK_CLAIMS`) one check per (task, length, keep) with TAPPA's paired gain in accuracy (bootstrap ci, exact
    one-sided sign test, Holm within the claim; p = NaN in a cell the full cache cannot do); the budget sanity row;
    TAPPA's rank per keep and its compression time over SnapKV's as measurements."""
    claims = TASK_CLAIMS if claims is None else claims
    full = full_cache_table(results)
    checks = [C.assumption(SOLVABLE_ID, r.accuracy, ci=(r.ci_low, r.ci_high),
                           name=f"full-cache accuracy, {r.task} at {r.length} tokens") for r in full.itertuples()]
    solvable = {(r.task, r.length): bool(r.solvable) for r in full.itertuples()}
    methods = set(results.method)
    keeps = sorted(results.loc[results.method != "full", "keep"].unique())
    for cid, base in claims.items():
        if not {"tappa", base} <= methods:
            continue
        for task, length in solvable:
            for k in keeps:
                t, b = _paired(results, task, length, k, "tappa", base)
                name = f"TAPPA vs {base}, {task} at {length} tokens, {_pct(k)} kept"
                ok = solvable[(task, length)]
                gate = "" if ok else "not informative: the full cache fails this task at this length"
                if len(t) < 2:
                    eff = float(np.mean(t - b)) if len(t) else math.nan
                    checks.append(C.claim(cid, eff, p_value=math.nan, name=name,
                                          note=f"{len(t)} paired sample(s): no interval; run with samples >= 2"))
                    continue
                r = S.paired_difference(t, b, seed=seed)
                wins, losses = int(((t == 1) & (b == 0)).sum()), int(((t == 0) & (b == 1)).sum())
                note = (f"{wins} win{'s' * (wins != 1)}, {losses} loss{'es' * (losses != 1)} of {len(t)}"
                        + (f"; {gate}" if gate else ""))
                checks.append(C.claim(cid, r.estimate, ci=r.ci, p_value=sign_test_greater(t, b) if ok else math.nan,
                                      name=name, note=note))
    C.holm_adjust(checks)
    comp = results[results.method != "full"]
    if len(comp):
        dev = float((comp.kept_fraction - comp.keep).abs().max())
        checks.append(C.sanity("every method keeps its budget: max |kept fraction - keep|", 0.0, dev, 0.02, "le"))
    if "tappa" in methods and len(comp):
        rk = ranks(results)
        for r in rk[rk.method == "tappa"].itertuples():
            checks.append(C.measurement(f"TAPPA's rank by mean accuracy at {_pct(r.keep)} kept (1 = best of "
                                        f"{int((rk.keep == r.keep).sum())})", float(r.rank)))
    cost = cost_ratios(results)
    for r in cost.itertuples():
        checks.append(C.measurement(f"TAPPA / SnapKV time, {r.stage}", r.ratio, ci=(r.ci_low, r.ci_high)))
    return checks


def cost_ratios(results, method: str = "tappa", baseline: str = "snapkv", seed: int = 0):
    """`method`'s mean time over `baseline`'s, paired by (sample, keep), for compressing the shared prefill
    (`press_ms`) and for answering after it (`answer_ms`), with bootstrap 95 % intervals; empty when either
    method is missing."""
    import pandas as pd

    rows = []
    a = results[results.method == method].set_index(["task", "length", "sample", "keep"])
    b = results[results.method == baseline].set_index(["task", "length", "sample", "keep"])
    common = a.index.intersection(b.index)
    if len(common) >= 2:
        for col, stage in (("press_ms", "compression of the prefill"), ("answer_ms", "answer (decode)")):
            pair = np.stack([a.loc[common, col].to_numpy(float), b.loc[common, col].to_numpy(float)], axis=1)
            ci = S.bootstrap_ci(pair, lambda x: x[..., 0].mean(-1) / x[..., 1].mean(-1), seed=seed)
            rows.append({"stage": stage, "ratio": pair[:, 0].mean() / pair[:, 1].mean(),
                         "ms": pair[:, 0].mean(), "baseline_ms": pair[:, 1].mean(), "ci_low": ci[0], "ci_high": ci[1]})
    return pd.DataFrame(rows, columns=["stage", "ratio", "ms", "baseline_ms", "ci_low", "ci_high"])


def accuracy_markdown(results) -> str:
    """Every method's accuracy [Wilson 95 % interval] as Markdown: one table per (task, length), under a line giving
    the full cache's accuracy, with a row per compressing method and a column per fraction kept (only the fractions
    some method ran for that cell). A method run on fewer samples than the cell's others shows its n."""
    acc = accuracy_table(results)
    comp = acc[acc.method != "full"]
    methods = [m for m in dict.fromkeys(results.method) if m != "full"]
    out = []
    for t, n in dict.fromkeys(zip(acc.task, acc.length)):
        full = acc[(acc.method == "full") & (acc.task == t) & (acc.length == n)]
        head = f"**{T.escape(t)}, {n:,} tokens**"
        if len(full):
            f = full.iloc[0]
            head += (f": full cache {T.number(f.accuracy, 2)} {T.interval((f.ci_low, f.ci_high), 2)}, "
                     f"n = {int(f.n)}")
        cell = comp[(comp.task == t) & (comp.length == n)]
        keeps = sorted(cell.keep.unique())
        if not keeps:
            out.append(head + "; no compressing method ran this cell.")
            continue
        most = int(cell.n.max())
        rows = []
        for m in (m for m in methods if (cell.method == m).any()):
            row = {"method": m}
            for k in keeps:
                g = cell[(cell.method == m) & (cell.keep == k)]
                if not len(g):
                    row[_pct(k)] = T.DASH
                    continue
                g = g.iloc[0]
                row[_pct(k)] = (f"{T.number(g.accuracy, 2)} {T.interval((g.ci_low, g.ci_high), 2)}"
                                + (f" (n = {int(g.n)})" if int(g.n) != most else ""))
            rows.append(row)
        out += [head, "", T.markdown_table(rows)]
    return "\n\n".join(out)


def accuracy_by_depth(results, methods: Sequence[str] | None = None):
    """Accuracy per needle depth (0: the context's start, 1: its end, next to the question): one row per (task,
    length, keep, method), one column per depth, for the samples that have a depth (the needle tasks). Shows where
    each press loses the needle; a press that keeps only recent tokens answers the depth-1 needles alone."""
    import pandas as pd

    r = results[results.depth.notna() & (results.method != "full")] if "depth" in results else results.iloc[:0]
    if methods is not None:
        r = r[r.method.isin(methods)]
    if r.empty:
        return pd.DataFrame(columns=["task", "length", "keep", "method"])
    wide = r.pivot_table(index=["task", "length", "keep", "method"], columns="depth", values="correct",
                         aggfunc="mean", sort=False)
    wide.columns = [f"depth {d:g}" for d in wide.columns]
    return wide.reset_index()


def recent_only(results) -> list[tuple[str, int, float, list[str], int]]:
    """(task, length, keep, presses, n_presses) for each budget where some presses answer only the needles at depth 1
    (the end of the context, inside every press's recent window) and none deeper: they kept nothing the question
    needed that a plain recent window would not."""
    by_depth = accuracy_by_depth(results)
    depths = [c for c in by_depth.columns if c.startswith("depth ")]
    if by_depth.empty or len(depths) < 2 or depths[-1] != "depth 1":
        return []
    out = []
    for (task, length, keep), g in by_depth.groupby(["task", "length", "keep"], sort=True):
        hit = g[(g[depths[:-1]].fillna(0) == 0).all(axis=1) & (g[depths[-1]] > 0)].method.tolist()
        if hit:
            out.append((task, int(length), float(keep), hit, len(g)))
    return out


def recent_only_text(results, method: str = "tappa") -> str:
    """One sentence from `recent_only`: at which budgets `method` (and how many others) found only the last needles."""
    rows = recent_only(results)
    if not rows:
        return "Every press answers some needle placed before the context's last part."
    mine = [f"{task} at {length} tokens, {_pct(keep)} kept" for task, length, keep, hit, _ in rows if method in hit]
    most = max(rows, key=lambda r: len(r[3]) / r[4])
    return (f"By needle depth, {method} answers only the needles at the end of the context (inside every press's "
            f"recent window) at {'; '.join(mine) if mine else 'no budget'}; the most presses in that state: "
            f"{len(most[3])} of {most[4]} ({most[0]} at {most[1]} tokens, {_pct(most[2])} kept).")


def sample_counts(results) -> str:
    """How many samples each (task, length, method, keep) cell holds: "50", or "30 (multikey 1024) to 50" when the
    cells differ (a grid whose parts ran different sample sizes)."""
    n = results.groupby(["task", "length", "method", "keep"]).size()
    per_task = n.groupby(["task", "length"]).min()
    lo, hi = int(per_task.min()), int(n.max())
    if lo == hi:
        return str(hi)
    fewest = ", ".join(f"{t} {ln}" for (t, ln), v in per_task.items() if v == lo)
    return f"{lo} ({fewest}) to {hi}"


def rank_text(results, method: str = "tappa") -> str:
    """'TAPPA ranks 2nd of 5 at 25 % kept (mean accuracy 0.41; best: snapkv, 0.45), ...' over every keep."""
    rk = ranks(results)
    parts = []
    for keep, g in rk.groupby("keep"):
        mine = g[g.method == method]
        if mine.empty:
            continue
        best = g.sort_values("accuracy", ascending=False).iloc[0]
        r = mine.iloc[0]
        tied = int((g.accuracy == r.accuracy).sum()) - 1
        parts.append(f"rank {int(r['rank'])} of {len(g)} at {_pct(keep)} kept (mean accuracy {r.accuracy:.2f}"
                     + (f", tied with {tied} other{'s' if tied > 1 else ''}" if tied else "")
                     + (f"; best {best.method}, {best.accuracy:.2f}" if best.accuracy > r.accuracy else "") + ")")
    return f"{method} takes " + "; ".join(parts) if parts else f"{method} was not run"


def full_cache_text(full) -> str:
    """One sentence: which (task, length) cells the full cache can do, and which it cannot (dropped from the
    claims: inconclusive by the registered rule)."""
    cells = [f"{r.task} at {r.length} tokens {r.correct}/{r.n}" for r in full.itertuples()]
    bad = full[~full.solvable]
    text = "With the full cache the model answers " + ", ".join(cells) + "."
    if len(bad):
        text += (" Below the registered bar of 0.5: " + ", ".join(f"{r.task} at {r.length}" for r in bad.itertuples())
                 + "; its claim rows are reported inconclusive (they say nothing about compression).")
    else:
        text += " Every cell clears the registered bar of 0.5."
    return text


def layer_profile(results, keep: float, methods: Sequence[str] = ("tappa", "uniform_cake", "snapkv")):
    """Mean cached tokens per layer (rows) and method (columns) at one keep, over samples, plus TAPPA's mean window
    q-similarity per layer (column `qsim`, NaN when TAPPA was not run)."""
    import pandas as pd

    g = results[(results.keep == keep) & results.method.isin(methods)]
    out = {}
    for m, h in g.groupby("method"):
        out[m] = np.mean([[int(x) for x in s.split()] for s in h.layer_lengths], axis=0)
    t = g[(g.method == "tappa") & (g.layer_qsim != "")]
    table = pd.DataFrame(out)
    table["qsim"] = (np.mean([[float(x) for x in s.split()] for s in t.layer_qsim], axis=0) if len(t)
                     else math.nan)
    table.index.name = "layer"
    return table


def plot_layer_profile(profile, keep: float, context_tokens: float):
    """TAPPA's per-layer budgets (bars) beside the uniform split, with the window q-similarity (right axis)."""
    import matplotlib.pyplot as plt

    from .methods import palette

    colours = palette()
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(profile))
    if "tappa" in profile:
        ax.bar(x, profile.tappa, color=colours["tappa"], alpha=0.8, label="TAPPA (mean over samples)")
    ax.axhline(keep * context_tokens, color="k", ls="--", lw=1, label=f"uniform split ({_pct(keep)} kept)")
    ax.set(xlabel="layer", ylabel="cached tokens", xticks=x[::max(1, len(x) // 15)])
    if profile.qsim.notna().any():
        ax2 = ax.twinx()
        ax2.plot(x, profile.qsim, "o-", color="crimson", ms=3, label="window q-similarity")
        ax2.set_ylabel("q-similarity (window, post-RoPE)", color="crimson")
        ax2.grid(False)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2, fontsize=8)
    ax.set_title(f"TAPPA's per-layer budgets at {_pct(keep)} kept")
    fig.tight_layout()
    return fig


__all__ = ["SOLVABLE_ID", "TASK_CLAIMS", "accuracy_markdown", "check_grid", "cost_ratios", "full_cache_table",
           "full_cache_text", "layer_profile", "plot_layer_profile", "rank_text", "sign_test_greater", "task_checks"]


def shipped_grid(model: str, root=None):
    """The newest task grid shipped in `artifacts/kv-grid-*` (made by `benchmarks/kv_task_grid.py`) for `model`
    (its label, e.g. "SmolLM2-135M-Instruct", or id), as (folder, per-sample rows, its options); None if there is none.

    A chapter shows it beside its own run, never instead of it.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from ..models import model_label

    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    found = []
    for grid in sorted((root / "artifacts").glob("kv-grid-*/grid.json")):
        options = json.loads(grid.read_text())
        names = (options.get("model"), model_label(options.get("model", "")))
        if model in names and (grid.parent / "samples.csv").is_file():
            found.append((grid.parent, options))
    if not found:
        return None
    folder, options = found[-1]
    return folder, pd.read_csv(folder / "samples.csv"), options
