"""Reporting a pruning evaluation: the summary table, the files written under `out_dir`, the figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import scores as P
from .evaluate import METRICS, PruneEvalResult, comparisons, lm_eval_available, superiority, task_accuracy

FAMILY_TITLES = {"facts": "factual and cloze prompts (greedy answer)",
                 "passkey": "pass-key retrieval (greedy answer)"}
METRIC_LABELS = {"nats_per_byte": "held-out loss (nats/byte)", "next_token_acc": "next-token accuracy",
                 "copy_ratio": "copy ratio (loss 2nd / 1st copy)"}


def summary_table(res: PruneEvalResult):
    """Results for reading: one row per (metric, layers removed), one column per distinct removal order.

    Methods that remove the same layers at every k share a column (`merge_identical_methods`), labelled with
    `short_label`, so the table stays a few columns wide whatever the number of betas.
    """
    df = merge_identical_methods(res.results)
    df["method"] = df.method.map(short_label)
    metrics = list(METRICS) + [c for c in df.columns if c.startswith("acc_")]
    long = df.melt(id_vars=["method", "n_removed"], value_vars=metrics, var_name="metric")
    long["metric"] = long.metric.map(lambda m: METRIC_LABELS.get(m, m.replace("acc_", "accuracy: ")))
    tab = long.pivot_table(index=["metric", "n_removed"], columns="method", values="value", sort=False)
    tab.columns.name = None
    return tab.rename_axis(["metric", "layers removed"])


def short_label(joined: str) -> str:
    """'ShortGPT = TAPPA b=0.1 = TAPPA best (b=0.1)' -> 'ShortGPT = TAPPA β=0.1 (chosen)': a short column label.

    >>> short_label("TAPPA b=0.2 = TAPPA b=0.3 = TAPPA best (b=0.2)")
    'TAPPA β=0.2, 0.3 (chosen: 0.2)'
    >>> short_label("TAPPA best (b=0.05)")
    'TAPPA β=0.05 (chosen on calibration)'
    """
    names = joined.split(" = ")
    betas, chosen = [], None
    for n in names:
        if n.startswith("TAPPA best (b="):
            chosen = n[len("TAPPA best (b="):-1]
        elif n.startswith("TAPPA b="):
            betas.append(n[len("TAPPA b="):])
    head = [n for n in names if not n.startswith("TAPPA")]
    if betas:
        tappa = "TAPPA β=" + ", ".join(betas) + (f" (chosen: {chosen})" if chosen is not None else "")
    elif chosen is not None:
        tappa = f"TAPPA β={chosen} (chosen on calibration)"
    else:
        tappa = ""
    return " = ".join(head + ([tappa] if tappa else []))


def save_results(res: PruneEvalResult, out_dir: str | Path, figures: bool = True) -> list[Path]:
    """Write scores and orders (reference-code fields), tables, results JSON and figures under `out_dir`."""
    from ..results import save_figure, save_json, save_table

    out = Path(out_dir)
    ch = res.scores.chunking
    written = []
    bi_rec = P.score_record(f"block_influence_{res.scores.bi_kind}", res.model_name, res.calib_data, ch, res.scores.bi)
    q_rec = P.score_record(f"qsim_{res.scores.qsim_rope}_rope_{res.scores.qsim_mode}", res.model_name,
                           res.calib_data, ch, res.scores.qsim, order=P.prune_order(-res.scores.qsim))
    written.append(P.save_score_record(out / "scores_bi.json", bi_rec))
    written.append(P.save_score_record(out / "scores_qsim.json", q_rec))
    controls = {n: {k: v for k, v in spec.items() if k != "beta"} for n, spec in res.orders.items()
                if spec["beta"] is None and n != "ShortGPT"}
    written.append(save_json(out, "order_controls.json", controls))  # last layers, random draws
    for name, spec in res.orders.items():
        if name in controls:
            continue
        if spec["beta"] is None:
            rec = P.score_record("shortgpt", res.model_name, res.calib_data, ch, res.scores.bi, spec["order"])
            fname = "order_shortgpt.json"
        else:
            rec = P.score_record(f"tappa_beta{spec['beta']:g}", res.model_name, res.calib_data, ch,
                                 P.tappa_scores(res.scores.bi, res.scores.qsim, spec["beta"]), spec["order"])
            rec["beta"] = spec["beta"]
            fname = ("order_tappa_best.json" if name.startswith("TAPPA best")
                     else f"order_tappa_beta{spec['beta']:g}.json")
        written.append(P.save_score_record(out / fname, rec))
    written.append(save_table(res.scores.table(), out, "layer_scores.csv"))
    written.append(save_table(res.beta_selection, out, "beta_selection.csv"))
    written.append(save_table(res.results, out, "results.csv"))
    comparison = None
    if res.per_window is not None:
        written.append(save_table(res.per_window, out, "per_window.csv"))
        comparison = superiority(res.results, res.per_window, seed=res.cfg.seed)
        written.append(save_table(comparison, out, "paired_vs_shortgpt.csv"))
        comp = comparisons(res, seed=res.cfg.seed)
        written.append(save_table(comp, out, "comparisons.csv"))
    if res.per_prompt is not None and not res.per_prompt.empty:
        written.append(save_table(res.per_prompt, out, "per_prompt.csv"))
        written.append(save_table(task_accuracy(res.per_prompt), out, "task_accuracy.csv"))
    written.append(save_json(out, "results.json", {
        "model": res.model_name, "n_layers": res.n_layers, "calibration_data": res.calib_data,
        "evaluation_data": res.eval_data_desc, "best_beta": res.best_beta,
        "best_beta_chosen_on": "calibration loss (mean over 1..max_removed removed layers)",
        "orders": res.orders, "results": res.results.to_dict(orient="records"),
        "paired_vs_shortgpt": comparison.to_dict(orient="records") if comparison is not None else None,
        "comparisons": comp.to_dict(orient="records") if comparison is not None else None,
        "task_accuracy": task_accuracy(res.per_prompt).to_dict(orient="records"),
        "lm_eval": res.lm_eval or {"available": lm_eval_available(), "tasks": []}, "timings": res.timings}))
    if figures:
        import matplotlib.pyplot as plt

        fig = plot_layer_scores(res.scores)
        written.append(save_figure(fig, out, "layer_scores.png"))
        plt.close(fig)
        fig = plot_results(res.results)
        written.append(save_figure(fig, out, "results.png"))
        plt.close(fig)
        fig = plot_removed_layers(res.orders, res.n_layers, res.cfg.max_removed)
        written.append(save_figure(fig, out, "removed_layers.png"))
        plt.close(fig)
    return written


def plot_layer_scores(scores: P.LayerScores, null_qsim=None):
    """Per-layer BI and q-similarity side by side (with `null_qsim`, random weights' beside), normalised terms; the
    legends sit below their panels, never over a bar or a line."""
    import matplotlib.pyplot as plt

    tab = scores.table()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].bar(tab.layer, tab.bi, color="tab:blue")
    axes[0].set(title=f"block influence ({scores.bi_kind})", xlabel="layer", ylabel="BI")
    if null_qsim is None:
        axes[1].bar(tab.layer, tab.qsim, color="tab:orange")
    else:
        axes[1].bar(tab.layer - 0.2, tab.qsim, width=0.4, color="tab:orange", label="trained")
        axes[1].bar(tab.layer + 0.2, np.asarray(null_qsim), width=0.4, color="grey", label="random weights")
        axes[1].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below: covers no bar
    axes[1].set(title=f"q-similarity ({scores.qsim_rope}-RoPE, {scores.qsim_mode})", xlabel="layer",
                ylabel="mean cosine")
    axes[2].plot(tab.layer, tab.bi_norm, "o-", label="BI (norm.)")
    axes[2].plot(tab.layer, 1 - tab.qsim_norm, "s--", label="1 - q-sim (norm.)")
    axes[2].set(title="normalised (lower = pruned earlier)", xlabel="layer")
    axes[2].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    step = max(1, -(-len(tab) // 14))  # at most ~14 tick labels per panel (24-28 layer models stay readable)
    for ax in axes:
        ax.set_xticks(tab.layer[::step])
    fig.tight_layout()
    return fig


def removal_positions(orders: dict[str, dict], n_layers: int, max_removed: int):
    """Which layers each order removes first: a (method x layer) table of removal positions 1..max_removed (NaN for
    a layer kept at k = max_removed). Orders whose first `max_removed` layers are the same share one row ('A = B')."""
    import pandas as pd

    groups: dict[tuple, list[str]] = {}
    for name, spec in orders.items():
        groups.setdefault(tuple(spec["order"][:max_removed]), []).append(name)
    rows = {}
    for first, names in groups.items():
        pos = np.full(n_layers, np.nan)
        pos[list(first)] = np.arange(1, len(first) + 1)
        rows[short_label(" = ".join(names))] = pos
    return pd.DataFrame.from_dict(rows, orient="index", columns=range(n_layers))


def plot_removed_layers(orders: dict[str, dict], n_layers: int, max_removed: int):
    """A grid of methods x layers: the number in a cell is the step (1 = first) at which the method removes that
    layer, up to `max_removed`; blank cells are layers it keeps."""
    import matplotlib.pyplot as plt

    tab = removal_positions(orders, n_layers, max_removed)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.34 * n_layers + 2.5), 0.5 * len(tab) + 1.4))
    ax.imshow(np.ma.masked_invalid(tab.to_numpy()), cmap="viridis_r", vmin=1, vmax=max_removed, aspect="auto")
    for i, j in zip(*np.nonzero(~np.isnan(tab.to_numpy()))):
        step = int(tab.iat[i, j])  # viridis_r: early steps are light cells (dark digits), late ones dark
        ax.text(j, i, f"{step}", ha="center", va="center", fontsize=8,
                color="black" if step <= (max_removed + 1) / 2 else "white")
    ax.set_yticks(range(len(tab)), tab.index)
    ax.set_xticks(range(n_layers), [str(c) for c in tab.columns], fontsize=8)
    ax.set_xticks(np.arange(-0.5, n_layers), minor=True)
    ax.set_yticks(np.arange(-0.5, len(tab)), minor=True)
    ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="layer", title=f"layers removed first (number = removal step, up to k = {max_removed})")
    fig.tight_layout()
    return fig


def merge_identical_methods(results):
    """Rows of methods that removed the same layers at every k merged under one joined label ('A = B')."""
    import pandas as pd

    groups: dict[tuple, list[str]] = {}
    for name, g in results.groupby("method", sort=False):
        key = tuple(tuple(r) for r in g.sort_values("n_removed")["removed"])
        groups.setdefault(key, []).append(name)
    rename = {n: " = ".join(names) for names in groups.values() for n in names}
    keep = [names[0] for names in groups.values()]
    out = results[results.method.isin(keep)].copy()
    out["method"] = out.method.map(rename)
    return pd.DataFrame(out).reset_index(drop=True)


def plot_results(results, metrics=METRICS):
    """Quality vs number of removed layers, one line per distinct order (one panel per metric); the legend below
    the panels in a readable size."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    results = merge_identical_methods(results)
    results["method"] = results.method.map(short_label)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        sns.lineplot(data=results, x="n_removed", y=m, hue="method", style="method", markers=True, dashes=False,
                     markersize=8, ax=ax, legend=ax is axes[0])
        ax.set(xlabel="layers removed", ylabel=METRIC_LABELS.get(m, m), xticks=sorted(results.n_removed.unique()))
        if m == "copy_ratio":
            ax.axhline(1.0, color="grey", lw=1, ls=":")  # 1 = the second copy is no easier: no copying
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    ncol = min(len(labels), 3)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=12, frameon=False)
    nrows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.06 + 0.07 * nrows, 1, 1))
    return fig


def _cell(acc: float, lo: float, hi: float) -> str:
    return f"{acc:.2f} [{lo:.2f}, {hi:.2f}]"


def measure_tables(out: Path) -> dict:
    """From a prune-eval folder: one table per measure (title -> DataFrame of strings), rows k = 0..max, a column per
    distinct removal order (random draws pooled: the mean loss, the accuracy over prompts x draws)."""
    import json

    import pandas as pd

    out = Path(out)
    results = pd.read_csv(out / "results.csv")
    results["removed"] = results.removed.map(lambda s: tuple(json.loads(s)))
    merged = merge_identical_methods(results)
    rename = {m: short_label(m) for m in merged.method.unique()}
    names = {n: rename[j] for j in rename for n in j.split(" = ")}  # each original method -> its column label
    rnd = results[results.method.str.startswith("random #")]
    tables = {}
    loss = merged.assign(method=merged.method.map(rename)).pivot_table(
        index="n_removed", columns="method", values="nats_per_byte", sort=False)
    loss = loss[[c for c in loss.columns if not c.startswith("random #")]]
    if len(rnd):
        loss[f"random ({rnd.method.nunique()} draws, mean)"] = rnd.groupby("n_removed").nats_per_byte.mean()
    tables["held-out loss (nats per byte, lower is better)"] = loss.map(
        lambda v: "" if pd.isna(v) else f"{v:.3f}")
    acc_path = out / "task_accuracy.csv"
    if acc_path.is_file():
        acc = pd.read_csv(acc_path)
        acc = acc[~acc.method.str.startswith("random #")]
        acc["column"] = acc.method.map(lambda m: names.get(m, m))
        acc = acc.drop_duplicates(["column", "n_removed", "family"])
        for fam, g in acc.groupby("family", sort=False):
            t = g.assign(cell=[_cell(a, lo, hi) for a, lo, hi in zip(g.accuracy, g.ci_low, g.ci_high)]).pivot_table(
                index="n_removed", columns="column", values="cell", aggfunc="first", sort=False)
            tables[f"{FAMILY_TITLES.get(fam, fam)}: accuracy [Wilson 95 %], n = {int(g.n.min())} prompts "
                   f"({int(g.n.max())} for the pooled random draws)"] = t.fillna("")
    return tables


def comparison_lines(out: Path) -> list[str]:
    """TAPPA (chosen beta) against each comparator per measure: where it is better (the registered one-sided test,
    Holm over k, 0.05) and where its bootstrap interval lies wholly below zero (worse: a one-sided test cannot say so).
    """
    import pandas as pd

    path = Path(out) / "comparisons.csv"
    if not path.is_file():
        return []
    comp = pd.read_csv(path)
    lines = []
    for (against, measure), g in comp.groupby(["against", "measure"], sort=False):
        ties = int(g.tie.sum())
        better = g[(~g.tie) & (g.p_holm < 0.05) & (g.gain > 0)]
        worse = g[(~g.tie) & (g.ci_high < 0)]
        lines.append(f"- vs {against}, {measure}: {len(g)} values of k; {ties} tied (same layers removed); "
                     f"TAPPA better at k = {', '.join(map(str, better.n_removed)) or 'none'} (one-sided, Holm over "
                     f"k, 0.05); interval below zero (TAPPA worse) at k = "
                     f"{', '.join(map(str, worse.n_removed)) or 'none'}.")
    return lines


def shipped_task_run(model: str, root=None):
    """The newest pruning run with tasks shipped in `artifacts/prune-tasks-*` (made by
    `benchmarks/prune_task_table.py`) for `model` (its label, e.g. "SmolLM2-135M-Instruct", or id), as (folder, its
    results.json); None if there is none. A chapter shows it beside its own run, never instead of it."""
    import json

    from ..models import model_label

    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    found = []
    for path in sorted((root / "artifacts").glob("prune-tasks-*/results.json")):
        res = json.loads(path.read_text())
        if model in (res.get("model"), model_label(res.get("model", ""))) and (path.parent / "MANIFEST.md").is_file():
            found.append((path.parent, res))
    return found[-1] if found else None
