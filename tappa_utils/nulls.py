"""The random-weight null as a distribution: a chapter's statistic on `draws` random-weight copies of the model.

One random draw says nothing about the spread between draws (a correlation on random heads varies by ~0.15 from
seed to seed), so a claim about trained structure is tested against many: `null_distribution(model, statistic,
draws=20, seed=seed)` runs `statistic` on `models.random_weight_copy(model, s)` for each of `null_seeds(seed,
draws)` (the first is `stats.null_seed(seed)`, the single null the chapters used before) and returns a
`NullDistribution`. Its `test(observed, ci)` gives the claim's numbers: the effect is the observed value minus the
null's upper quantile (the registered margin must clear it), p the rank of the observed value among the draws
(`(1 + #{draws >= observed}) / (1 + draws)`: with 20 draws at least 1/21 = 0.048, so fewer than 20 draws can never
be significant at 0.05).
"""
from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .stats import StatResult, null_seed, reachable_p


def null_seeds(seed: int, draws: int) -> list[int]:
    """`draws` distinct seeds for the random-weight draws of a model run with `seed`: the first is
    `stats.null_seed(seed)`, none equals `seed`.

    >>> s = null_seeds(0, 3); s[0] == null_seed(0), len(set(s)), 0 in s
    (True, 3, False)
    """
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    out = [null_seed(seed)]
    i = 1
    while len(out) < draws:
        s = int(np.random.SeedSequence([int(seed), 0x6E756C6C, i]).generate_state(1)[0]) % (2**31 - 1)
        if s != seed and s not in out:
            out.append(s)
        i += 1
    return out


@dataclass(frozen=True)
class NullDistribution:
    """A statistic on random-weight draws: `values` (one per draw, in the order of `seeds`) and the `quantile`
    (default 0.95) the claims compare against."""

    values: np.ndarray
    seeds: tuple[int, ...]
    quantile: float = 0.95

    @property
    def draws(self) -> int:
        """Number of draws with a finite value."""
        return int(np.isfinite(self.values).sum())

    def upper(self, alternative: str = "greater") -> float:
        """The null's `quantile` ("greater") or 1 - `quantile` ("less") over the finite draws (NaN without any)."""
        v = self.values[np.isfinite(self.values)]
        if v.size == 0:
            return float("nan")
        return float(np.quantile(v, self.quantile if alternative == "greater" else 1 - self.quantile))

    def rank_p(self, observed: float, alternative: str = "greater") -> float:
        """``(1 + #{draws at least as extreme as observed}) / (1 + draws)`` (NaN when observed is NaN)."""
        v = self.values[np.isfinite(self.values)]
        if math.isnan(observed) or v.size == 0:
            return float("nan")
        hits = v >= observed if alternative == "greater" else v <= observed
        return float((1 + hits.sum()) / (1 + v.size))

    def spread(self) -> dict[str, float]:
        """mean, sd, min, max and the 5 % / 95 % quantiles of the draws, and their number (for the page)."""
        v = self.values[np.isfinite(self.values)]
        if v.size == 0:
            return {"draws": 0, **dict.fromkeys(("mean", "sd", "min", "q05", "q95", "max"), float("nan"))}
        q05, q95 = np.quantile(v, [0.05, 0.95])
        return {"draws": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                "min": float(v.min()), "q05": float(q05), "q95": float(q95), "max": float(v.max())}

    def test(self, observed: float, ci: tuple[float, float] | None = None, alternative: str = "greater"
             ) -> StatResult:
        """The claim "observed beats the null": estimate = observed minus the null's upper quantile (`upper`; for
        "less", the lower quantile minus observed, so larger is better either way), ci = the observed value's ci
        shifted the same way (the quantile held fixed; NaN without one), p = `rank_p`, n = draws, reachable p =
        1 / (1 + draws)."""
        if alternative not in ("greater", "less"):
            raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
        q = self.upper(alternative)
        sign = 1.0 if alternative == "greater" else -1.0
        est = sign * (observed - q)
        lo, hi = ci if ci is not None else (float("nan"), float("nan"))
        shifted = sorted((sign * (lo - q), sign * (hi - q)))
        method = (f"observed minus the null's {self.quantile:.0%} quantile over {self.draws} random-weight draws; "
                  "rank p over the draws; ci: the observed value's ci minus that quantile")
        return StatResult(float(est), self.rank_p(observed, alternative), (shifted[0], shifted[1]), self.draws,
                          self.draws, method, "greater", reachable_p(math.log(self.draws + 1), 10**9))


def null_distribution(model, statistic: Callable[[object], float], draws: int = 20, seed: int = 0,
                      quantile: float = 0.95, progress: bool = False) -> NullDistribution:
    """`statistic(random_model)` on `draws` random-weight copies of `model` (`models.random_weight_copy`, seeds
    `null_seeds(seed, draws)`), one copy alive at a time: a `NullDistribution`.

    `statistic` receives a model of the same architecture (eval mode, same device and dtype) and returns a float
    (NaN allowed: that draw is left out of the quantile and the rank p); collect side tables in a closure if the
    page needs them. Cost: `draws` x (one random draw of the weights + the statistic).
    """
    from .models import random_weight_copy

    if not callable(statistic):
        raise TypeError(f"statistic must be a callable model -> float, got {type(statistic).__name__}")
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    seeds = null_seeds(seed, draws)
    it = seeds
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(seeds, desc="null draws", leave=False)
    values = []
    for s in it:
        null = random_weight_copy(model, s)
        try:
            values.append(float(statistic(null)))
        finally:
            del null
            gc.collect()
    return NullDistribution(np.asarray(values, dtype=np.float64), tuple(seeds), quantile)
