"""Layer pruning evaluation: ShortGPT vs TAPPA orders, 1..k removed layers, quality on held-out text.

    python -m tappa_utils prune-eval --out _build/results/prune-eval [--model tappa-tiny] [--max-removed 3]

Scores (block influence, q-similarity) and the choice of the best beta use the calibration text only (the
training split of `tappa_utils.tiny.corpus`, or `--calib-text-file`); quality is measured on the evaluation text (the
held-out sample, or `--eval-text-file`): loss in nats per byte, next-token accuracy, and the copy test (loss on the
second occurrence of a random segment divided by the loss on the first).  With `lm-eval` installed and
`--lm-eval-tasks` given, the paper's zero-shot tasks run too, with a sample limit.

Function API for the chapter: `PruneEvalConfig`, `run_pruning_eval(cfg) -> PruneEvalResult`; the tables, files
and figures are in `tappa_utils.prune.report`, the command line in `tappa_utils.prune.cli`.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..stats import holm, wilson_interval
from . import scores as P
from .prefix import PrefixStates, pruned_logits
from .removal import layers_removed

DEFAULT_BETAS = (0.1, 0.2, 0.3)
DEFAULT_BETA_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "winogrande")
METRICS = ("nats_per_byte", "next_token_acc", "copy_ratio")


@dataclass
class PruneEvalConfig:
    """Parameters of one pruning evaluation (see the module docstring); `validate()` checks them all."""

    model: str = "tappa-tiny"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    seq_len: int = 512
    calib_chunks: int = 8
    calib_stride: int = 256
    calib_text_file: str | None = None
    eval_text_file: str | None = None
    eval_windows: int = 16
    copy_windows: int = 16
    copy_seg_len: int = 48
    max_removed: int = 3
    betas: tuple = DEFAULT_BETAS
    beta_grid: tuple = DEFAULT_BETA_GRID
    qsim_rope: str = "pre"
    qsim_mode: str = "all_pairs"
    bi_kind: str = "cosine"
    batch_size: int = 4
    lm_eval_tasks: tuple = ()
    lm_eval_limit: int = 100
    tasks: tuple = ()
    task_prompts: int = 32
    passkey_tokens: int = 160
    random_draws: int = 3
    random_ks: tuple = ()

    def validate(self, n_layers: int | None = None, names: dict[str, str] | None = None) -> PruneEvalConfig:
        """Raise ValueError/TypeError naming the bad parameter; with `n_layers`, check max_removed against it.

        `names` maps field names to the names the messages use (the command line passes `OPTIONS`: `--seq-len`)."""
        def n(name: str) -> str:
            return (names or {}).get(name, name)

        for name in ("seed",):
            _int(n(name), getattr(self, name), 0)
        _int(n("random_draws"), self.random_draws, 0)
        for name in ("seq_len", "calib_chunks", "calib_stride", "eval_windows", "copy_windows", "copy_seg_len",
                     "max_removed", "batch_size", "lm_eval_limit", "task_prompts", "passkey_tokens"):
            _int(n(name), getattr(self, name), 1)
        if self.seq_len < 8:
            raise ValueError(f"{n('seq_len')} must be >= 8, got {self.seq_len}")
        if self.copy_seg_len * 2 + 50 > self.seq_len:
            raise ValueError(f"{n('copy_seg_len')} {self.copy_seg_len} does not fit twice in {n('seq_len')} "
                             f"{self.seq_len}; use {n('copy_seg_len')} <= {(self.seq_len - 50) // 2}")
        self.betas = tuple(self.betas)
        self.beta_grid = tuple(self.beta_grid)
        for name in ("betas", "beta_grid"):
            if not getattr(self, name):
                raise ValueError(f"{n(name)} must not be empty")
            for b in getattr(self, name):
                try:
                    P._check_beta(b)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"{n(name)}: {e}") from e
        if self.qsim_rope not in P.QSIM_ROPE:
            raise ValueError(f"{n('qsim_rope')} must be one of {P.QSIM_ROPE}, got {self.qsim_rope!r}")
        if self.bi_kind not in ("cosine", "angular"):
            raise ValueError(f"{n('bi_kind')} must be 'cosine' or 'angular', got {self.bi_kind!r}")
        if self.qsim_mode not in P.QSIM_MODES:
            raise ValueError(f"{n('qsim_mode')} must be one of {P.QSIM_MODES}, got {self.qsim_mode!r}")
        for name in ("calib_text_file", "eval_text_file"):
            f = getattr(self, name)
            if f is not None and not Path(f).is_file():
                what = "is a folder" if Path(f).is_dir() else "is not a regular file" if Path(f).exists() else \
                    "file not found"
                raise FileNotFoundError(f"{n(name)} {f}: {what}")
        if self.calib_text_file is not None and self.eval_text_file is not None and \
                Path(self.calib_text_file).resolve() == Path(self.eval_text_file).resolve():
            raise ValueError(f"{n('calib_text_file')} and {n('eval_text_file')} are the same file; calibration must "
                             "not see the evaluation text")
        if n_layers is not None and self.max_removed >= n_layers:
            raise ValueError(f"{n('max_removed')} {self.max_removed} leaves no layer: the model has {n_layers} "
                             f"layers; use at most {n_layers - 1}")
        self.lm_eval_tasks = tuple(self.lm_eval_tasks)
        from .tasks import FAMILIES

        self.tasks = tuple(self.tasks)
        bad = [t for t in self.tasks if t not in FAMILIES]
        if bad:
            raise ValueError(f"{n('tasks')}: unknown task {bad[0]!r}; use some of {', '.join(FAMILIES)}")
        self.random_ks = tuple(self.random_ks)
        for k in self.random_ks:
            _int(n("random_ks"), k, 1)
            if k > self.max_removed:
                raise ValueError(f"{n('random_ks')}: {k} exceeds {n('max_removed')} {self.max_removed}")
        return self


OPTIONS = {f: "--" + f.replace("_", "-") for f in PruneEvalConfig.__dataclass_fields__}  # field -> option


def _int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


# ------------------------------------------------------------------------------------------------- data
@dataclass
class EvalData:
    """Evaluation inputs: held-out windows (N, T), copy-test windows and the slices of the two segment copies."""

    ids: torch.Tensor
    n_bytes: int
    copy_ids: torch.Tensor
    first: slice
    second: slice


def token_bytes(tokenizer, ids: torch.Tensor) -> int:
    """UTF-8 bytes the tokens stand for: exact for byte-level (GPT-2 alphabet) tokenizers, else by decoding rows."""
    from ..tiny.tokenizer import _bytes_to_unicode

    alphabet = set(_bytes_to_unicode().values())
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    total, byte_level = 0, True
    for row in ids.tolist():
        toks = tokenizer.convert_ids_to_tokens([i for i in row if i not in special])
        if byte_level and all(isinstance(t, str) and set(t) <= alphabet for t in toks):
            total += sum(len(t) for t in toks)
        else:
            byte_level = False
            total += len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8"))
    return total


def eval_data(tokenizer, cfg: PruneEvalConfig, text: str | None = None) -> EvalData:
    """Held-out windows and the copy test (random segments inserted into evaluation text) for `cfg`."""
    from ..data import load_text, token_windows
    from ..tiny.corpus import copy_test_batch

    text = load_text(text=text, text_file=None if text is not None else cfg.eval_text_file, model=cfg.model)
    ids = token_windows(tokenizer, text, cfg.seq_len, cfg.eval_windows)
    flat = np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int64)
    if len(flat) <= cfg.seq_len:
        raise ValueError(f"evaluation text too short for the copy test: {len(flat)} tokens, need > {cfg.seq_len}")
    rng = np.random.default_rng(cfg.seed + 1)
    cx, first, second = copy_test_batch(rng, flat, cfg.copy_windows, cfg.seq_len, cfg.copy_seg_len)
    if tokenizer.bos_token_id is not None:
        cx[:, 0] = tokenizer.bos_token_id
    else:
        cx[:, 0] = flat[0]
    return EvalData(ids, token_bytes(tokenizer, ids[:, 1:]), torch.from_numpy(cx), first, second)


def _nll(model, ids: torch.Tensor, batch_size: int, removed: Iterable[int] = (), prefix: PrefixStates | None = None,
         positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood (N, T-1) (nll[:, i] predicts token i+1) and the argmax hits, of `model`
    without decoder layers `removed` (none: the model as it is), started from `prefix`'s states where it has them.

    `positions` (sorted indices < T-1): only the predictions from those positions, (N, len(positions))."""
    nll, hit = [], []
    for x, logits in pruned_logits(model, removed, ids, batch_size, prefix, positions):
        tgt = x[:, 1:] if positions is None else x[:, torch.as_tensor(positions, device=x.device) + 1]
        logits = (logits[:, :-1] if positions is None else logits).float()
        flat = logits.reshape(-1, logits.shape[-1])  # cross_entropy on (N*T, V) is ~15x faster than on (N, V, T)
        nll.append(torch.nn.functional.cross_entropy(flat, tgt.reshape(-1), reduction="none").view(tgt.shape).cpu())
        hit.append((logits.argmax(-1) == tgt).cpu())
    return torch.cat(nll), torch.cat(hit)


def lm_quality(model, data: EvalData, batch_size: int = 4, per_window: bool = False, removed: Iterable[int] = (),
               prefixes: Iterable[PrefixStates] = (), copy_test: bool = True):
    """Held-out loss (nats/token, nats/byte), next-token accuracy, and the copy test (first, second, ratio), of
    `model` without decoder layers `removed` (`prefixes`: stored states of `data.ids` / `data.copy_ids`).

    With `per_window=True` also returns the (N,) mean loss (nats/token) of each held-out window.
    `copy_test=False` skips the copy windows (their three values are NaN).
    """
    own = {id(p.ids): p for p in prefixes}
    nll, hit = _nll(model, data.ids, batch_size, removed, own.get(id(data.ids)))
    out = {"nats_per_token": nll.mean().item(), "nats_per_byte": nll.sum().item() / max(1, data.n_bytes),
           "next_token_acc": hit.float().mean().item()}
    if not copy_test:
        out.update(copy_first=float("nan"), copy_second=float("nan"), copy_ratio=float("nan"))
        return (out, nll.double().mean(1).numpy()) if per_window else out
    # tokens 2.. of each copy (the first token of a random segment is unpredictable): predicted from these positions
    seg1, seg2 = range(data.first.start, data.first.stop - 1), range(data.second.start, data.second.stop - 1)
    cnll, _ = _nll(model, data.copy_ids, batch_size, removed, own.get(id(data.copy_ids)),
                   positions=torch.tensor([*seg1, *seg2]))
    c1 = cnll[:, : len(seg1)].mean().item()
    c2 = cnll[:, len(seg1) :].mean().item()
    out.update(copy_first=c1, copy_second=c2, copy_ratio=c2 / c1 if c1 > 0 else float("nan"))
    return (out, nll.double().mean(1).numpy()) if per_window else out


def calibration_loss(model, calib_ids: torch.Tensor, batch_size: int = 4, removed: Iterable[int] = (),
                     prefix: PrefixStates | None = None) -> float:
    """Mean next-token loss (nats/token) on the calibration chunks of `model` without decoder layers `removed`:
    the only signal used to choose beta."""
    return _nll(model, calib_ids, batch_size, removed, prefix)[0].mean().item()


# ----------------------------------------------------------------------------------------- beta and orders
def select_beta(model, scores: P.LayerScores, calib_ids: torch.Tensor, max_removed: int,
                grid=DEFAULT_BETA_GRID, batch_size: int = 4):
    """Best beta on calibration data: lowest mean calibration loss over 1..max_removed removed layers.

    Ties go to the smaller beta. Returns (beta, DataFrame with beta, n_removed, removed, calib_loss).
    """
    import pandas as pd

    sets = [(float(beta), k, tuple(sorted(P.tappa_order(scores.bi, scores.qsim, beta)[:k])))
            for beta in grid for k in range(1, max_removed + 1)]
    prefix = PrefixStates(model, calib_ids, batch_size, {key[0] for _, _, key in sets})
    cache: dict[tuple, float] = {}
    rows = []
    for beta, k, key in sets:
        if key not in cache:
            cache[key] = calibration_loss(model, calib_ids, batch_size, key, prefix)
        rows.append({"beta": beta, "n_removed": k, "removed": list(key), "calib_loss": cache[key]})
    df = pd.DataFrame(rows)
    mean = df.groupby("beta", sort=True)["calib_loss"].mean()
    best = float(mean.index[int(np.argmin(mean.to_numpy()))])  # argmin takes the first (smallest beta) on ties
    return best, df


LAST = "last layers"
RANDOM_PREFIX = "random #"


def method_orders(scores: P.LayerScores, betas, best_beta: float | None = None, random_draws: int = 0,
                  seed: int = 0, last: bool = False, random_ks=()) -> dict[str, dict]:
    """{method: {"beta", "order"[, "ks"]}}: ShortGPT, TAPPA at each beta, TAPPA at the calibration-chosen beta, and
    the controls: the last layers first (`last=True`), and `random_draws` seeded random orders (evaluated only at
    `random_ks`, their "ks", when given)."""
    out = {"ShortGPT": {"beta": None, "order": P.shortgpt_order(scores.bi)}}
    L = len(scores.bi)
    if last:
        out[LAST] = {"beta": None, "order": list(range(L - 1, -1, -1))}
    rng = np.random.default_rng(seed + 104729)
    for d in range(random_draws):
        out[f"{RANDOM_PREFIX}{d + 1}"] = {"beta": None, "order": [int(x) for x in rng.permutation(L)],
                                          **({"ks": [int(k) for k in random_ks]} if random_ks else {})}
    for b in betas:
        out[f"TAPPA b={b:g}"] = {"beta": float(b), "order": P.tappa_order(scores.bi, scores.qsim, b)}
    if best_beta is not None:
        out[f"TAPPA best (b={best_beta:g})"] = {"beta": float(best_beta),
                                                 "order": P.tappa_order(scores.bi, scores.qsim, best_beta)}
    return out


def evaluate_orders(model, orders: dict[str, dict], data: EvalData, max_removed: int, batch_size: int = 4,
                    progress: Callable[[str], None] | None = None, held_out_only: bool = False,
                    task_sets: dict | None = None):
    """(results, per_window, per_prompt): one row per (method, n_removed in 0..max_removed; a method with "ks" only
    at those) with the removed layers, `lm_quality` and the accuracy on each task family (`acc_<family>`); the
    per-window held-out losses (method, n_removed, window, nats_per_token); and the per-prompt greedy correctness
    (method, n_removed, family, prompt, correct; empty without `task_sets`). Pruned sets are evaluated once.
    `held_out_only=True`: n_removed 1..max_removed, held-out windows only (no copy test, no tasks)."""
    import pandas as pd

    from .tasks import task_correct

    task_sets = {} if held_out_only else dict(task_sets or {})
    plan = [(name, k) for name, spec in orders.items() for k in range(1 if held_out_only else 0, max_removed + 1)
            if k == 0 or "ks" not in spec or k in spec["ks"]]
    firsts = {min(orders[name]["order"][:k]) for name, k in plan if k > 0}
    prefixes = [PrefixStates(model, data.ids, batch_size, firsts)]
    if not held_out_only:
        prefixes.append(PrefixStates(model, data.copy_ids, batch_size, firsts))
    task_prefix = {f: PrefixStates(model, ts.ids, batch_size, firsts) for f, ts in task_sets.items()}
    cache: dict[tuple, tuple] = {}
    rows, win, per_prompt = [], [], []
    for name, k in plan:
        spec = orders[name]
        key = tuple(sorted(spec["order"][:k]))
        if key not in cache:
            if progress:
                progress(f"evaluating without layers {list(key)}")
            q, w = lm_quality(model, data, batch_size, per_window=True, removed=key, prefixes=prefixes,
                              copy_test=not held_out_only)
            correct = {f: task_correct(model, ts, key, batch_size, task_prefix[f]) for f, ts in task_sets.items()}
            cache[key] = (q, w, correct)
        q, w, correct = cache[key]
        accs = {f"acc_{f}": float(c.mean()) for f, c in correct.items()}
        rows.append({"method": name, "beta": spec["beta"], "n_removed": k, "removed": list(key), **q, **accs})
        win += [{"method": name, "n_removed": k, "window": i, "nats_per_token": float(v)} for i, v in enumerate(w)]
        per_prompt += [{"method": name, "n_removed": k, "family": f, "prompt": i, "correct": int(v)}
                       for f, c in correct.items() for i, v in enumerate(c)]
    return pd.DataFrame(rows), pd.DataFrame(win), pd.DataFrame(
        per_prompt, columns=["method", "n_removed", "family", "prompt", "correct"])


BASELINE = "ShortGPT"
CHOSEN_PREFIX = "TAPPA best"  # the method whose beta was chosen on calibration data (`method_orders`)


def _window_losses(per_window, method: str, k: int) -> np.ndarray:
    g = per_window[(per_window.method == method) & (per_window.n_removed == k)].sort_values("window")
    return g.nats_per_token.to_numpy(dtype=np.float64)


def _paired_gain(base: np.ndarray, other: np.ndarray, seed: int, n_resamples: int):
    """stats.paired_difference(base, other) (one-sided "greater"), or NaNs when fewer than 2 windows."""
    from .. import stats as S

    if len(base) < 2:
        d = float(np.mean(base - other)) if len(base) else float("nan")
        return d, (float("nan"), float("nan")), float("nan")
    r = S.paired_difference(base, other, alternative="greater", seed=seed, n_resamples=n_resamples)
    return r.estimate, r.ci, r.p_value


def superiority(results, per_window, baseline: str = BASELINE, seed: int = 0, n_resamples: int | None = None):
    """TAPPA's gain over `baseline`, each distinct pruned model counted once, paired over held-out windows.

    One row per number of removed layers k >= 1 and distinct set of removed layers among the other methods (methods
    that remove the same layers at k share a row; `methods` lists them, `chosen` says whether the calibration-chosen
    beta is among them). `gain` = mean over windows of loss(baseline) - loss(this set) in nats/token (> 0: TAPPA's
    set hurts less), with `stats.paired_difference`'s bootstrap ci and one-sided sign-flip p. A set equal to the
    baseline's at that k is a tie by construction (`tie = True`, gain 0 exactly, no test): such rows are no evidence
    either way and are left out of the claims.
    """
    import pandas as pd

    from .. import stats as S

    n_resamples = n_resamples or S.N_RESAMPLES
    removed = {(r.method, int(r.n_removed)): tuple(r.removed) for r in results.itertuples()}
    rows = []
    for k in sorted(int(k) for k in results.n_removed.unique() if k > 0):
        base_set = removed[(baseline, k)]
        groups: dict[tuple, list] = {}
        for name in results.method.unique():
            if name != baseline and name.startswith("TAPPA") and (name, k) in removed:
                groups.setdefault(removed[(name, k)], []).append(name)
        base = _window_losses(per_window, baseline, k)
        for key, names in groups.items():
            tie = key == base_set
            if tie:
                gain, ci, p = 0.0, (0.0, 0.0), float("nan")
            else:
                gain, ci, p = _paired_gain(base, _window_losses(per_window, names[0], k), seed, n_resamples)
            rows.append({"n_removed": k, "removed": list(key), "baseline_removed": list(base_set),
                         "methods": " = ".join(names), "chosen": any(n.startswith(CHOSEN_PREFIX) for n in names),
                         "tie": tie, "gain": gain, "ci_low": ci[0], "ci_high": ci[1], "p_value": p,
                         "n_windows": len(base)})
    return pd.DataFrame(rows, columns=["n_removed", "removed", "baseline_removed", "methods", "chosen", "tie",
                                       "gain", "ci_low", "ci_high", "p_value", "n_windows"])


def gains_vs_null(res: PruneEvalResult, null: PruneEvalResult, baseline: str = BASELINE, seed: int = 0,
                  n_resamples: int | None = None):
    """The calibration-chosen TAPPA's gain over `baseline` on the model minus the same on its random-weight null.

    `null` is the same procedure (scores, beta chosen on calibration data, orders, evaluation on the same windows)
    run on random weights (`models.random_weights(model, stats.null_seed(seed))`). Per k >= 1 where the model's
    chosen set differs from the baseline's: per window, (loss_baseline - loss_TAPPA) on the model minus the same on
    the null, paired over windows (`stats.paired_difference`). Columns: n_removed, gain, gain_null, diff, ci_low,
    ci_high, p_value, null_tie (the null's chosen order removed the baseline's layers: its gain is 0 exactly).
    """
    import pandas as pd

    from .. import stats as S

    n_resamples = n_resamples or S.N_RESAMPLES
    chosen = _chosen_method(res)
    null_chosen = _chosen_method(null)
    rows = []
    for k in sorted(int(k) for k in res.results.n_removed.unique() if k > 0):
        sets = res.results.set_index(["method", "n_removed"]).removed
        if list(sets[(chosen, k)]) == list(sets[(baseline, k)]):
            continue
        g = _window_losses(res.per_window, baseline, k) - _window_losses(res.per_window, chosen, k)
        g0 = _window_losses(null.per_window, baseline, k) - _window_losses(null.per_window, null_chosen, k)
        nsets = null.results.set_index(["method", "n_removed"]).removed
        d, ci, p = _paired_gain(g, g0, seed, n_resamples)
        rows.append({"n_removed": k, "gain": float(g.mean()), "gain_null": float(g0.mean()), "diff": d,
                     "ci_low": ci[0], "ci_high": ci[1], "p_value": p,
                     "null_tie": list(nsets[(null_chosen, k)]) == list(nsets[(baseline, k)]), "n_windows": len(g)})
    return pd.DataFrame(rows, columns=["n_removed", "gain", "gain_null", "diff", "ci_low", "ci_high", "p_value",
                                       "null_tie", "n_windows"])


def _chosen_method(res: PruneEvalResult) -> str:
    names = [m for m in res.orders if m.startswith(CHOSEN_PREFIX)]
    if not names:
        raise ValueError("the results have no calibration-chosen TAPPA order (method_orders(..., best_beta=...))")
    return names[0]


def task_accuracy(per_prompt):
    """Accuracy with its Wilson 95 % interval per (method, n_removed, family); random draws also pooled as
    "random (all draws)" (their prompts x draws as units)."""
    import pandas as pd


    if per_prompt is None or per_prompt.empty:
        return pd.DataFrame(columns=["method", "n_removed", "family", "accuracy", "ci_low", "ci_high", "n"])
    pooled = per_prompt[per_prompt.method.str.startswith(RANDOM_PREFIX)].assign(method="random (all draws)")
    rows = []
    for (m, k, f), g in pd.concat([per_prompt, pooled]).groupby(["method", "n_removed", "family"], sort=False):
        c, n = int(g.correct.sum()), len(g)
        lo, hi = wilson_interval(c, n)
        rows.append({"method": m, "n_removed": int(k), "family": f, "accuracy": c / n, "ci_low": lo, "ci_high": hi,
                     "n": n})
    return pd.DataFrame(rows)


def _units(res: PruneEvalResult, measure: str, method: str, k: int) -> np.ndarray:
    """Per-unit values of `method` at k: held-out window losses ("loss") or 0/1 task answers of every family
    ("tasks", in family then prompt order); a "random" method is the mean over the random draws per unit."""
    names = ([m for m in res.orders if m.startswith(RANDOM_PREFIX)] if method == "random" else [method])
    vals = []
    for m in names:
        if measure == "loss":
            vals.append(_window_losses(res.per_window, m, k))
        else:
            g = res.per_prompt[(res.per_prompt.method == m) & (res.per_prompt.n_removed == k)]
            vals.append(g.sort_values(["family", "prompt"]).correct.to_numpy(dtype=np.float64))
    return np.mean(vals, axis=0)


def comparisons(res: PruneEvalResult, seed: int = 0, n_resamples: int | None = None):
    """The calibration-chosen TAPPA against ShortGPT and against the random draws, per k and measure.

    One row per (against, measure, k): `gain` = the comparator's loss minus TAPPA's (measure "loss", nats/token,
    paired over held-out windows) or TAPPA's accuracy minus the comparator's ("tasks", paired over prompts);
    positive favours TAPPA. `stats.paired_difference` (one-sided sign-flip p, bootstrap ci), then `p_holm`: Holm
    over the k of each (against, measure). `tie` = TAPPA removes the comparator's layers (ShortGPT only): gain 0
    exactly, ci [0, 0], no test (a tie by construction). Random draws are compared at the k they were run at.
    """
    import pandas as pd

    from .. import stats as S

    n_resamples = n_resamples or S.N_RESAMPLES
    chosen = _chosen_method(res)
    sets = {(r.method, int(r.n_removed)): list(r.removed) for r in res.results.itertuples()}
    measures = ["loss"] + (["tasks"] if res.per_prompt is not None and not res.per_prompt.empty else [])
    has_random = any(m.startswith(RANDOM_PREFIX) for m in res.orders)
    rows = []
    for against in [BASELINE] + (["random"] if has_random else []):
        ref = BASELINE if against == BASELINE else next(m for m in res.orders if m.startswith(RANDOM_PREFIX))
        ks = sorted(k for (m, k) in sets if m == ref and k > 0)
        for measure in measures:
            block = []
            for k in ks:
                mine, theirs = _units(res, measure, chosen, k), _units(res, measure, against, k)
                tie = against == BASELINE and sets[(chosen, k)] == sets[(BASELINE, k)]
                if tie:
                    gain, ci, p = 0.0, (0.0, 0.0), float("nan")
                else:
                    a, b = (theirs, mine) if measure == "loss" else (mine, theirs)
                    gain, ci, p = _paired_gain(a, b, seed, n_resamples)
                block.append({"against": against, "measure": measure, "n_removed": k, "tie": tie, "gain": gain,
                              "ci_low": ci[0], "ci_high": ci[1], "p_value": p, "n_units": len(mine),
                              "removed": sets[(chosen, k)]})
            tested = [r for r in block if not np.isnan(r["p_value"])]
            adj = holm([r["p_value"] for r in tested])
            for r, q in zip(tested, adj):
                r["p_holm"] = q
            rows += [{**r, "p_holm": r.get("p_holm", float("nan")), "n_tests": len(tested)} for r in block]
    return pd.DataFrame(rows, columns=["against", "measure", "n_removed", "tie", "gain", "ci_low", "ci_high",
                                       "p_value", "p_holm", "n_tests", "n_units", "removed"])


# ------------------------------------------------------------------------------------------------ lm-eval
def lm_eval_available() -> bool:
    """Whether the `lm-eval` harness is installed (`importlib.util.find_spec("lm_eval")`)."""
    return importlib.util.find_spec("lm_eval") is not None


def run_lm_eval(model, tokenizer, tasks, limit: int = 100, batch_size: int = 4) -> dict:
    """Zero-shot accuracy per task with lm-eval (sample `limit` per task); {} with a note when not installed."""
    if not tasks:
        return {}
    if not lm_eval_available():
        return {"note": "lm-eval is not installed: zero-shot tasks skipped"}
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit)
    return {t: {k: v for k, v in r.items() if isinstance(v, (int, float))} for t, r in res["results"].items()}


# ------------------------------------------------------------------------------------------------- pipeline
@dataclass
class PruneEvalResult:
    """Everything one evaluation produced (see `save_results` for the files)."""

    cfg: PruneEvalConfig
    model_name: str
    n_layers: int
    scores: P.LayerScores
    best_beta: float
    beta_selection: Any
    orders: dict
    results: Any
    lm_eval: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    calib_data: str = ""
    eval_data_desc: str = ""
    calib_ids: torch.Tensor | None = None
    per_window: Any = None
    per_prompt: Any = None
    task_sets: dict = field(default_factory=dict)


def run_pruning_eval(cfg: PruneEvalConfig, model=None, tokenizer=None,
                     progress: Callable[[str], None] | None = None, null: bool = False) -> PruneEvalResult:
    """Scores on calibration text, beta chosen on calibration text, orders evaluated on the evaluation text.

    `null=True` evaluates only what a random-weight null needs (`gains_vs_null`), at a fraction of the cost:
    ShortGPT and the calibration-chosen beta (not `cfg.betas`), 1..max_removed removed layers, held-out loss
    only (no copy test, no unpruned row). Scores and the choice of beta are the full procedure.
    """
    from ..data import load_text, text_source
    from ..models import check_supported, load_model, num_layers

    cfg.validate()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_supported(model)
    L = num_layers(model)
    cfg.validate(L)
    say = progress or (lambda s: None)
    calib = P.calibration_ids(tokenizer, cfg.seq_len, cfg.calib_chunks, cfg.calib_stride, cfg.seed,
                              cfg.calib_text_file, model=cfg.model)
    data = eval_data(tokenizer, cfg)
    if cfg.calib_text_file is not None and _texts_overlap(P.calibration_text(text_file=cfg.calib_text_file),
                                                          load_text(text_file=cfg.eval_text_file)):
        raise ValueError("the calibration text overlaps the evaluation text; give a different calib_text_file")
    if _overlaps(calib, data.ids):
        raise ValueError("the calibration chunks overlap the evaluation text; give a different calib_text_file")
    timings = {"load_s": time.time() - t0}
    say(f"scoring {L} layers on {calib.shape[0]} calibration chunks of {calib.shape[1]} tokens")
    t = time.time()
    scores = P.layer_scores(model, calib, rope=cfg.qsim_rope, mode=cfg.qsim_mode, angular=cfg.bi_kind == "angular",
                            batch_size=cfg.batch_size, stride=cfg.calib_stride)
    timings["scores_s"] = time.time() - t
    t = time.time()
    say("choosing beta on calibration data")
    best, sel = select_beta(model, scores, calib, cfg.max_removed, cfg.beta_grid, cfg.batch_size)
    timings["select_beta_s"] = time.time() - t
    orders = method_orders(scores, () if null else cfg.betas, best, 0 if null else cfg.random_draws, cfg.seed,
                           last=not null, random_ks=cfg.random_ks)
    tsets = {}
    if cfg.tasks and not null:
        from .tasks import task_sets

        tsets = task_sets(tokenizer, cfg.tasks, cfg.task_prompts, cfg.seed, cfg.passkey_tokens)
    t = time.time()
    results, per_window, per_prompt = evaluate_orders(model, orders, data, cfg.max_removed, cfg.batch_size, progress,
                                                      held_out_only=null, task_sets=tsets)
    timings["evaluate_s"] = time.time() - t
    lm = {}
    if cfg.lm_eval_tasks and not null:
        lm = {"available": lm_eval_available()}
        if lm["available"]:
            for name, spec in orders.items():
                for k in range(1, cfg.max_removed + 1):
                    with layers_removed(model, spec["order"][:k]) as pruned:
                        lm[f"{name} k={k}"] = run_lm_eval(pruned, tokenizer, cfg.lm_eval_tasks, cfg.lm_eval_limit)
        else:
            lm["note"] = "lm-eval is not installed: zero-shot tasks skipped"
    timings["total_s"] = time.time() - t0
    calib_desc = cfg.calib_text_file or text_source(cfg.model, "calibration", cfg.seed)
    eval_desc = cfg.eval_text_file or text_source(cfg.model, "heldout")
    return PruneEvalResult(cfg, str(cfg.model), L, scores, best, sel, orders, results, lm, timings, calib_desc,
                           eval_desc, calib, per_window, per_prompt, tsets)


def _texts_overlap(a: str, b: str, probe: int = 1000) -> bool:
    """True when one of five evenly spaced `probe`-character pieces of either text occurs verbatim in the other."""
    for x, y in ((a, b), (b, a)):
        n = min(probe, len(x))
        step = max(1, (len(x) - n) // 4)
        if any(x[i : i + n] in y for i in range(0, len(x) - n + 1, step)[:5]):
            return True
    return False


def _overlaps(calib: torch.Tensor, ids: torch.Tensor, n: int = 64, max_fraction: float = 0.5) -> bool:
    """True when most (> max_fraction) 64-token stretches of the calibration chunks appear verbatim in the
    evaluation windows: the same text was given twice (a few shared boilerplate lines are tolerated)."""
    n = min(n, calib.shape[1] - 1)
    seen = {tuple(r[i : i + n]) for r in ids[:, 1:].tolist() for i in range(0, len(r) - n + 1)}
    probes = [tuple(r[i : i + n]) for r in calib[:, 1:].tolist() for i in range(0, len(r) - n + 1, n)]
    return bool(probes) and sum(p in seen for p in probes) / len(probes) > max_fraction
