"""The random-weight null as a distribution: a measure taken on many random-weight draws of one architecture.

One random draw says little: between draws a head statistic moves by about as much as many effects the book
tests. `null_distribution` takes a measure on `draws` independent random-weight copies of a model (seeds
`null_seeds(seed, draws)`, the first of them `stats.null_seed(seed)`, the single null the chapters used before)
and returns a `NullDistribution`: the values per draw, the rank p-value of an observed value among them and the
null's upper quantile. A claim about trained structure then reads "the trained value exceeds every draw's, or all
but a few (rank p), by the registered margin above the null's upper quantile".

With n draws the smallest rank p is 1 / (n + 1): 20 draws reach 0.048, below the book's 0.05.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

NULL_DRAWS = 20  # default number of random-weight draws (smallest rank p 1/21 = 0.048)
UPPER = 0.95  # quantile of the null a trained effect must clear by the claim's margin


def null_seeds(seed: int, draws: int) -> list[int]:
    """The seeds of `draws` random-weight draws for a run with `seed`: `stats.null_seed(seed)` first (the single
    null of earlier versions), then `stats.null_seed` of further derived seeds; all distinct and never `seed`."""
    from .stats import null_seed

    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    first = null_seed(seed)
    out, i = [first], 1
    while len(out) < draws:
        s = null_seed(int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]) % (2**31 - 1))
        if s not in out and s != seed:
            out.append(s)
        i += 1
    return out


@dataclass
class NullDistribution:
    """A measure on random-weight draws: `values` has one row per draw (`seed` column plus one column per
    statistic the measure returned)."""

    values: pd.DataFrame

    def column(self, name: str) -> np.ndarray:
        """The values of statistic `name` over the draws (NaN draws dropped)."""
        if name not in self.values.columns or name == "seed":
            stats = [c for c in self.values.columns if c != "seed"]
            raise KeyError(f"the null has no statistic {name!r}; it has {', '.join(stats)}")
        v = self.values[name].to_numpy(np.float64)
        return v[np.isfinite(v)]

    def rank_p(self, name: str, observed: float, alternative: str = "greater") -> float:
        """(1 + number of draws at least as extreme as `observed`) / (1 + draws): the p-value of `observed` being a
        draw of this null; NaN when `observed` is NaN or no draw is finite."""
        return rank_p(observed, self.column(name), alternative)

    def upper(self, name: str, q: float = UPPER) -> float:
        """The null's `q` quantile of statistic `name` (the bar a trained effect must clear by its margin)."""
        v = self.column(name)
        return float(np.quantile(v, q)) if v.size else math.nan

    def spread(self, name: str) -> dict[str, float]:
        """min, median, upper quantile, max and count of statistic `name` over the draws (for display)."""
        v = self.column(name)
        if not v.size:
            return {"min": math.nan, "median": math.nan, "q95": math.nan, "max": math.nan, "draws": 0}
        return {"min": float(v.min()), "median": float(np.median(v)), "q95": float(np.quantile(v, UPPER)),
                "max": float(v.max()), "draws": int(v.size)}

    def describe(self, name: str, digits: int = 3) -> str:
        """The spread in words: 'median m (range [a, b], 95 % quantile q; n draws)'."""
        s = self.spread(name)
        f = f"{{:.{digits}g}}"
        return (f"median {f.format(s['median'])} (range [{f.format(s['min'])}, {f.format(s['max'])}], "
                f"95 % quantile {f.format(s['q95'])}; {s['draws']} draws)")


def rank_p(observed: float, null_values, alternative: str = "greater") -> float:
    """Rank p-value of `observed` among `null_values` (one per random draw): (1 + #{null >= observed}) / (1 + n)
    for "greater", with <= for "less". The smallest value is 1 / (n + 1)."""
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    v = np.asarray(null_values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size or not math.isfinite(observed):
        return math.nan
    hits = (v >= observed).sum() if alternative == "greater" else (v <= observed).sum()
    return float((1 + hits) / (1 + v.size))


def null_distribution(model, measure: Callable[[object], float | Mapping[str, float]], draws: int = NULL_DRAWS,
                      seed: int = 0, progress: bool = False) -> NullDistribution:
    """`measure(null_model)` on `draws` random-weight copies of `model` (`models.random_weight_copy`, seeds
    `null_seeds(seed, draws)`).

    `measure` returns a number or a mapping name -> number (several statistics from one forward). Each copy is
    built, measured and freed in turn, so memory holds one extra model at a time; the q/k capture cache is cleared
    after each draw. Cost: `draws` times (one random draw of the weights + the measure).
    """
    from .models import random_weight_copy
    from .patterns.head import clear_qk_capture

    seeds = null_seeds(seed, draws)
    rows = []
    for i, s in enumerate(seeds):
        null = random_weight_copy(model, s)
        try:
            out = measure(null)
        finally:
            del null
            clear_qk_capture()
        stats = dict(out) if isinstance(out, Mapping) else {"value": out}
        rows.append({"seed": s, **{k: float(v) for k, v in stats.items()}})
        if progress:
            print(f"null draw {i + 1}/{len(seeds)} (seed {s})", flush=True)
    return NullDistribution(pd.DataFrame(rows))


def top_k_mean(values, k: int) -> float:
    """Mean of the `k` largest finite values (all of them when fewer): the statistic of an existence claim (the
    strongest heads), compared with the same on each null draw."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    return float(v[-k:].mean()) if v.size else math.nan
