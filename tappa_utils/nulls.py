"""The random-weight null as a distribution: a measure taken on `draws` random-weight copies of the model.

One random draw says little: between draws a head statistic moves by about as much as many effects the book tests
(a correlation on random heads varies by ~0.15 from seed to seed). `null_distribution(model, measure, draws=20,
seed=seed)` runs `measure` on `models.random_weight_copy(model, s)` for each of `null_seeds(seed, draws)` (the first
is `stats.null_seed(seed)`, the single null the chapters used before) and returns a `NullDistribution`: one row per
draw, one column per statistic the measure returned ("value" for a measure returning a single number).

A claim about trained structure then reads "the trained value exceeds every draw's, or all but a few (rank p), by
the registered margin above the null's upper quantile": `NullDistribution.test(observed, ci)` gives those numbers
for one statistic, `rank_p` and `upper` give them one at a time. The rank p is ``(1 + #{draws >= observed}) / (1 +
draws)``: with 20 draws at least 1/21 = 0.048, so fewer than 20 draws can never be significant at 0.05.
"""
from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import StatResult, null_seed, reachable_p

NULL_DRAWS = 20  # default number of random-weight draws (smallest rank p 1/21 = 0.048)
UPPER = 0.95  # quantile of the null a trained effect must clear by the claim's margin
VALUE = "value"  # the statistic's name when the measure returns a single number


def null_seeds(seed: int, draws: int) -> list[int]:
    """The one seed rule of the random-weight draws: `draws` distinct seeds for a model run with `seed`, the first
    `stats.null_seed(seed)` (the single null of earlier versions), none equal to `seed`. Every chapter's null uses it.

    >>> s = null_seeds(0, 3); s[0] == null_seed(0), len(set(s)), 0 in s
    (True, 3, False)
    """
    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    out = [null_seed(seed)]
    i = 1
    while len(out) < draws:
        s = int(np.random.SeedSequence([int(seed), 0x6E756C6C, i]).generate_state(1)[0]) % (2**31 - 1)
        if s != seed and s not in out:
            out.append(s)
        i += 1
    return out


def rank_p(observed: float, null_values, alternative: str = "greater") -> float:
    """Rank p-value of `observed` among `null_values` (one per random draw): (1 + #{null >= observed}) / (1 + n)
    for "greater", with <= for "less"; NaN draws are left out, NaN when `observed` is NaN or no draw is finite. The
    smallest value is 1 / (n + 1).

    >>> rank_p(5.0, [1.0, 2.0, 3.0]), rank_p(2.0, [1.0, 2.0, 3.0])
    (0.25, 0.75)
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    v = np.asarray(null_values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size or not math.isfinite(observed):
        return math.nan
    hits = (v >= observed).sum() if alternative == "greater" else (v <= observed).sum()
    return float((1 + hits) / (1 + v.size))


@dataclass(frozen=True, eq=False)
class NullDistribution:
    """A measure on random-weight draws: `values` has one row per draw (a `seed` column plus one column per
    statistic, "value" when the measure returned a single number); `quantile` (default 0.95) is the null's upper
    quantile the claims compare against. Every method takes the statistic's `name` ("value" by default)."""

    values: pd.DataFrame
    quantile: float = UPPER

    def __post_init__(self) -> None:
        if "seed" not in self.values.columns:
            raise ValueError("NullDistribution.values needs a 'seed' column (one row per draw)")
        if not 0.5 <= self.quantile < 1:
            raise ValueError(f"quantile must be in [0.5, 1), got {self.quantile}")

    @classmethod
    def from_values(cls, values, seeds, quantile: float = UPPER, name: str = VALUE) -> NullDistribution:
        """A null of one statistic `name` from its `values` per draw and the draws' `seeds`."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if len(seeds) != v.size:
            raise ValueError(f"need one seed per value, got {len(seeds)} seeds for {v.size} values")
        return cls(pd.DataFrame({"seed": [int(s) for s in seeds], name: v}), quantile)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The draws' seeds, in order."""
        return tuple(int(s) for s in self.values["seed"])

    @property
    def statistics(self) -> list[str]:
        """The names of the statistics measured on each draw."""
        return [c for c in self.values.columns if c != "seed"]

    def column(self, name: str = VALUE) -> np.ndarray:
        """The values of statistic `name` over the draws (NaN draws dropped)."""
        if name not in self.statistics:
            raise KeyError(f"the null has no statistic {name!r}; it has {', '.join(self.statistics)}")
        v = self.values[name].to_numpy(np.float64)
        return v[np.isfinite(v)]

    def draws(self, name: str = VALUE) -> int:
        """Number of draws with a finite value of statistic `name`."""
        return int(self.column(name).size)

    def upper(self, name: str = VALUE, alternative: str = "greater") -> float:
        """The null's `quantile` ("greater") or 1 - `quantile` ("less") of statistic `name` over the finite draws
        (the bar a trained effect must clear by its margin; NaN without any draw)."""
        v = self.column(name)
        if not v.size:
            return math.nan
        return float(np.quantile(v, self.quantile if alternative == "greater" else 1 - self.quantile))

    def rank_p(self, name: str, observed: float, alternative: str = "greater") -> float:
        """(1 + number of draws at least as extreme as `observed`) / (1 + draws) for statistic `name` (`rank_p`):
        the p-value of `observed` being a draw of this null; NaN when `observed` is NaN or no draw is finite."""
        return rank_p(observed, self.column(name), alternative)

    def spread(self, name: str = VALUE) -> dict[str, float]:
        """mean, sd, min, median, the 5 % / 95 % quantiles and max of statistic `name` over the draws, and their
        number (for the page)."""
        v = self.column(name)
        if not v.size:
            return {"draws": 0, **dict.fromkeys(("mean", "sd", "min", "median", "q05", "q95", "max"), math.nan)}
        q05, q95 = np.quantile(v, [0.05, 0.95])
        return {"draws": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                "min": float(v.min()), "median": float(np.median(v)), "q05": float(q05), "q95": float(q95),
                "max": float(v.max())}

    def describe(self, name: str = VALUE, digits: int = 3) -> str:
        """The spread of statistic `name` in words: 'median m (range [a, b], 95 % quantile q; n draws)', or
        that no draw has a value."""
        s = self.spread(name)
        if not s["draws"]:
            return f"no value on any of the {len(self.values)} draws"
        f = f"{{:.{digits}g}}"
        return (f"median {f.format(s['median'])} (range [{f.format(s['min'])}, {f.format(s['max'])}], "
                f"95 % quantile {f.format(s['q95'])}; {s['draws']} draws)")

    def test(self, observed: float, ci: tuple[float, float] | None = None, alternative: str = "greater",
             name: str = VALUE) -> StatResult:
        """The claim "observed beats the null" for statistic `name`: estimate = observed minus the null's upper
        quantile (`upper`; for "less", the lower quantile minus observed, so larger is better either way), ci = the
        observed value's ci shifted the same way (the quantile held fixed; NaN without one), p = `rank_p`, n =
        draws, reachable p = 1 / (1 + draws)."""
        if alternative not in ("greater", "less"):
            raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
        q = self.upper(name, alternative)
        sign = 1.0 if alternative == "greater" else -1.0
        est = sign * (observed - q)
        lo, hi = ci if ci is not None else (math.nan, math.nan)
        shifted = sorted((sign * (lo - q), sign * (hi - q)))
        n = self.draws(name)
        method = (f"observed minus the null's {self.quantile:.0%} quantile over {n} random-weight draws; "
                  "rank p over the draws; ci: the observed value's ci minus that quantile")
        return StatResult(float(est), self.rank_p(name, observed, alternative), (shifted[0], shifted[1]), n, n,
                          method, "greater", reachable_p(math.log(n + 1), 10**9))


def null_distribution(model, measure: Callable[[object], float | Mapping[str, float]], draws: int = NULL_DRAWS,
                      seed: int = 0, quantile: float = UPPER, progress: bool = False) -> NullDistribution:
    """`measure(null_model)` on `draws` random-weight copies of `model` (`models.random_weight_copy`, seeds
    `null_seeds(seed, draws)`): a `NullDistribution`.

    `measure` receives a model of the same architecture (eval mode, same device and dtype) and returns a number
    (the statistic "value") or a mapping name -> number (several statistics from one forward); NaN is allowed (that
    draw is left out of the quantile and the rank p). Each copy is built, measured and freed in turn, so memory holds
    one extra model at a time; the q/k capture cache is cleared after each draw. Cost: `draws` x (one random draw of
    the weights + the measure).
    """
    from .models import random_weight_copy
    from .patterns.head import clear_qk_capture

    if not callable(measure):
        raise TypeError(f"measure must be a callable model -> number or mapping, got {type(measure).__name__}")
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    seeds = null_seeds(seed, draws)
    rows = []
    for i, s in enumerate(seeds):
        null = random_weight_copy(model, s)
        try:
            out = measure(null)
        finally:
            del null
            clear_qk_capture()
            gc.collect()
        stats = dict(out) if isinstance(out, Mapping) else {VALUE: out}
        rows.append({"seed": s, **{k: float(v) for k, v in stats.items()}})
        if progress:
            print(f"null draw {i + 1}/{len(seeds)} (seed {s})", flush=True)
    return NullDistribution(pd.DataFrame(rows), quantile)


def top_k_mean(values, k: int) -> float:
    """Mean of the `k` largest finite values (all of them when fewer): the statistic of an existence claim (the
    strongest heads), compared with the same on each null draw.

    >>> top_k_mean([1.0, 5.0, 3.0, float("nan")], 2)
    4.0
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    return float(v[-k:].mean()) if v.size else math.nan
