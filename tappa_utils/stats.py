"""Permutation p-values and bootstrap intervals for the book's claims: fixed seeds, vectorised, cheap.

Every function takes `n_resamples` (default 2000) and `seed` (a `numpy.random.Generator` is built from it, so the
same call gives the same answer) and returns a `StatResult`: the estimate, a p-value, a percentile bootstrap interval
(95 % by default), the sample size and the method in words.

p-values are one-sided in the direction of `alternative` ("greater": H0 says the effect is <= 0; "less": >= 0;
"two-sided") and never 0: ``(1 + #{resampled as extreme}) / (1 + n_resamples)``, so with 2000 resamples the smallest
is about 0.0005.

- `spearman_test`: Spearman correlation; p by permuting y (within groups when `groups` is given: then each group's
  mean is removed from x and y first, the "within-layer" correlation); ci by resampling pairs (within groups).
- `spearman_difference`: correlation of sample 1 minus that of sample 2 (trained vs null); ci and p from
  independent bootstraps of the two samples (p = share of bootstrap differences on the wrong side of 0: approximate).
- `paired_difference`: mean of a - b over paired units (windows); p by random sign flips, ci by bootstrap.
- `two_sample`: mean of x minus mean of y (trained vs null heads); p by permuting the labels, ci by resampling each
  sample.
- `bootstrap_ci`: any vectorised statistic.
- `partial_spearman_test`: Spearman correlation of x and y after regressing both on z's ranks (within groups: the
  part of the relation that z, e.g. concentration, cannot produce); p by permuting y's residuals (Freedman-Lane).
- `sign_test`: are more of the values above 0 than chance (binomial).
- `reachable_p`: the smallest p-value a test can give with its units and resamples (every `StatResult` has it).
- `null_seed`: the seed of a random-weight null, never equal to the model's own seed.
- `holm`: Holm-Bonferroni adjusted p-values of a family of tests.
- `wilson_interval`: the Wilson score interval of a proportion k / n (task accuracies).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class StatResult:
    """Result of a test.

    Parameters
    ----------
    estimate : float
        The statistic on the data.
    p_value : float
        p-value for `alternative` (never 0).
    ci : (float, float)
        Percentile bootstrap interval at `level`.
    n : int
        Number of units (pairs, heads, windows) used.
    n_resamples : int
        Resamples for both the p-value and the interval.
    method : str
        How p and ci were obtained, in words.
    alternative : str
        "greater", "less" or "two-sided".
    reachable_p : float
        The smallest p-value this test can give with these units and resamples (`reachable_p`): a claim whose
        reachable p is not below 0.05 cannot be supported, whatever the data (NaN when unknown).
    """

    estimate: float
    p_value: float
    ci: tuple[float, float]
    n: int
    n_resamples: int
    method: str
    alternative: str = "greater"
    reachable_p: float = float("nan")

    def as_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return {"estimate": self.estimate, "p_value": self.p_value, "ci": list(self.ci), "n": self.n,
                "n_resamples": self.n_resamples, "method": self.method, "alternative": self.alternative,
                "reachable_p": self.reachable_p}


def reachable_p(log_arrangements: float, n_resamples: int = N_RESAMPLES, two_sided: bool = False) -> float:
    """The smallest p-value a resampling test can give: ``max(1 / (1 + n_resamples), 1 / arrangements)``, where
    `arrangements` (given as its natural log) is the number of distinct relabellings of the units (2^n sign flips
    of n paired units, the product of n_g! within-group permutations of heads, C(n1 + n2, n1) label permutations,
    draws + 1 ranks against a null of `draws` draws), doubled for a two-sided test. With 2 paired units it is 0.25,
    with 4 units 0.0625: no data can make such a test significant at 0.05.

    >>> round(reachable_p(2 * math.log(2)), 3), round(reachable_p(math.log(math.factorial(10))), 5)
    (0.25, 0.0005)
    """
    floor = 1.0 / (1 + n_resamples)
    p = max(floor, math.exp(-min(log_arrangements, 700.0)))
    return float(min(1.0, 2 * p if two_sided else p))


def _log_within_group_perms(codes: np.ndarray) -> float:
    """log of the number of within-group permutations: sum over groups of log(n_g!)."""
    return float(sum(math.lgamma(c + 1) for c in np.bincount(codes)))


def null_seed(seed: int) -> int:
    """The seed for a random-weight null of a model run with `seed`: derived from it (so runs are reproducible) and
    never equal to it. Use it for every `models.random_weight_copy` that serves as a null, so that the null of a
    random-weight model built with `seed` is not that very model."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    s = int(np.random.SeedSequence([int(seed), 0x6E756C6C]).generate_state(1)[0]) % (2**31 - 1)
    return s if s != seed else s + 1


def _check(alternative: str, n_resamples: int, level: float) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def permutation_p(observed: float, resampled: np.ndarray, alternative: str = "greater") -> float:
    """``(1 + #{resampled at least as extreme as observed}) / (1 + len)`` (NaN draws count as not extreme)."""
    r = np.asarray(resampled, dtype=np.float64)
    if math.isnan(observed):
        return float("nan")
    with np.errstate(invalid="ignore"):
        if alternative == "greater":
            hits = r >= observed - 1e-12
        elif alternative == "less":
            hits = r <= observed + 1e-12
        else:
            hits = np.abs(r) >= abs(observed) - 1e-12
    return float((1 + hits.sum()) / (1 + r.size))


def _percentile_ci(draws: np.ndarray, level: float) -> tuple[float, float]:
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(data, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int = N_RESAMPLES,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the units (first axis) of `data`.

    `statistic` is vectorised: it receives an array of shape (B, n, ...) and returns (B,), e.g.
    ``lambda x: x.mean(1)``.
    """
    _check("greater", n_resamples, level)
    x = np.asarray(data, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"bootstrap needs at least 2 units, got {x.shape[0]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_resamples, x.shape[0]))
    return _percentile_ci(statistic(x[idx]), level)


# ---------------------------------------------------------------------------------------------------------------
# Spearman


def _rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-300, (a * b).sum(-1) / np.where(den > 1e-300, den, 1.0), np.nan)


def _group_codes(groups, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one label per pair ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].astype(np.int64)


def _demean(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Remove each group's mean along the last axis (groups fixed per position)."""
    k = codes.max() + 1
    G = np.zeros((codes.size, k))
    G[np.arange(codes.size), codes] = 1.0
    means = (x @ G) / G.sum(0)
    return x - means @ G.T


def _clean_pairs(x, y, groups):
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    if groups is not None and np.asarray(groups).ravel().shape != x.shape:
        raise ValueError(f"groups must have one label per pair ({x.size}), got {np.asarray(groups).size}")
    g = None if groups is None else np.asarray(groups).ravel()[keep]
    return x[keep], y[keep], g


def spearman(x, y, groups=None) -> float:
    """Spearman correlation (average ranks); with `groups`, of x and y with each group's mean removed first
    (NaN when either side is constant or fewer than 3 pairs)."""
    x, y, g = _clean_pairs(x, y, groups)
    if x.size < 3:
        return float("nan")
    codes = _group_codes(g, x.size)
    if groups is not None:
        x, y = _demean(x, codes), _demean(y, codes)
    return float(_pearson_rows(_rank_rows(x), _rank_rows(y)))


def _within_group_permutations(codes: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) index arrays, each a permutation that keeps every position inside its group."""
    n = codes.size
    order = np.argsort(codes, kind="stable")
    keys = rng.random((B, n)) + codes[None, :] * 2.0
    perm = np.argsort(keys, axis=1)  # sorted by group code, random within group
    out = np.empty((B, n), dtype=np.int64)
    out[:, order] = perm
    return out


def _within_group_bootstrap(codes: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) index arrays resampling with replacement inside each group (position i keeps its group)."""
    out = np.empty((B, codes.size), dtype=np.int64)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        out[:, members] = members[rng.integers(0, members.size, size=(B, members.size))]
    return out


def _spearman_boot(x, y, codes, grouped, B, rng) -> np.ndarray:
    idx = _within_group_bootstrap(codes, B, rng)
    xb, yb = x[idx], y[idx]
    if grouped:
        xb, yb = _demean(xb, codes), _demean(yb, codes)
    return _pearson_rows(_rank_rows(xb), _rank_rows(yb))


def spearman_test(x, y, groups=None, alternative: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
                  level: float = 0.95) -> StatResult:
    """Spearman correlation of (x, y) with a permutation p-value and a bootstrap interval.

    With `groups` (e.g. the layer of each head), each group's mean is removed from x and y (the within-layer
    correlation of `patterns.qsim_predictability`), y is permuted only within groups and the bootstrap resamples
    within groups. Pairs with a NaN are dropped.
    """
    _check(alternative, n_resamples, level)
    x, y, g = _clean_pairs(x, y, groups)
    n = x.size
    if n < 4:
        raise ValueError(f"spearman_test needs at least 4 complete pairs, got {n}")
    codes = _group_codes(g, n)
    grouped = groups is not None
    xd, yd = (_demean(x, codes), _demean(y, codes)) if grouped else (x, y)
    rx, ry = _rank_rows(xd), _rank_rows(yd)
    est = float(_pearson_rows(rx, ry))
    rng = np.random.default_rng(seed)
    perm = _within_group_permutations(codes, n_resamples, rng)
    # permuting y within groups leaves the group means unchanged, so permuting the demeaned ranks is exact
    null = _pearson_rows(rx[None, :], ry[perm])
    p = permutation_p(est, null, alternative)
    ci = _percentile_ci(_spearman_boot(x, y, codes, grouped, n_resamples, rng), level)
    how = "within-group " if grouped else ""
    return StatResult(est, p, ci, n, n_resamples, f"Spearman; {how}permutation p, {how}bootstrap ci", alternative,
                      reachable_p(_log_within_group_perms(codes), n_resamples, alternative == "two-sided"))


def spearman_difference(x1, y1, x2, y2, groups1=None, groups2=None, alternative: str = "greater",
                        n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> StatResult:
    """Spearman(x1, y1) minus Spearman(x2, y2) (e.g. trained minus null heads, within layers when groups are
    given); ci from independent bootstraps of the two samples, p = share of bootstrap differences on the wrong side
    of 0 (a bootstrap test: approximate, slightly liberal for small samples)."""
    _check(alternative, n_resamples, level)
    rng = np.random.default_rng(seed)
    draws, ests, ns = [], [], []
    for x, y, g in ((x1, y1, groups1), (x2, y2, groups2)):
        x, y, gg = _clean_pairs(x, y, g)
        if x.size < 4:
            raise ValueError(f"spearman_difference needs at least 4 complete pairs per sample, got {x.size}")
        codes = _group_codes(gg, x.size)
        ests.append(spearman(x, y, gg))
        draws.append(_spearman_boot(x, y, codes, g is not None, n_resamples, rng))
        ns.append(x.size)
    est = ests[0] - ests[1]
    d = draws[0] - draws[1]
    d = d[np.isfinite(d)]
    if alternative == "greater":
        p = (1 + (d <= 0).sum()) / (1 + d.size)
    elif alternative == "less":
        p = (1 + (d >= 0).sum()) / (1 + d.size)
    else:
        p = min(1.0, 2 * (1 + min((d <= 0).sum(), (d >= 0).sum())) / (1 + d.size))
    return StatResult(float(est), float(p), _percentile_ci(d, level), int(min(ns)), n_resamples,
                      "difference of Spearman correlations; independent bootstraps (p: bootstrap test)", alternative,
                      reachable_p(math.inf, n_resamples, alternative == "two-sided"))


def _residual_rows(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rows of a (..., n) minus their least-squares line on the rows of z (same shape), intercept included."""
    a = a - a.mean(-1, keepdims=True)
    z = z - z.mean(-1, keepdims=True)
    zz = (z * z).sum(-1, keepdims=True)
    beta = np.where(zz > 1e-300, (a * z).sum(-1, keepdims=True) / np.where(zz > 1e-300, zz, 1.0), 0.0)
    return a - beta * z


def _partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray, codes: np.ndarray, grouped: bool):
    """(residual ranks of x, of y) on z's ranks, rows of (..., n); each group's mean removed first when grouped."""
    if grouped:
        x, y, z = _demean(x, codes), _demean(y, codes), _demean(z, codes)
    rz = _rank_rows(z)
    return _residual_rows(_rank_rows(x), rz), _residual_rows(_rank_rows(y), rz)


def partial_ranks(x, y, z, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """The residual ranks `partial_spearman_test` correlates: x's and y's ranks minus their least-squares line on
    z's ranks (each group's mean removed from x, y, z first when `groups` is given); NaN rows dropped."""
    x, y, z, g = _clean_triples(x, y, z, groups)
    return _partial_rows(x, y, z, _group_codes(g, x.size), g is not None)


def _clean_triples(x, y, z, groups):
    x, y, z = (np.asarray(v, dtype=np.float64).ravel() for v in (x, y, z))
    if not x.shape == y.shape == z.shape:
        raise ValueError(f"x, y and z must have the same length, got {x.size}, {y.size} and {z.size}")
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    g = None if groups is None else np.asarray(groups).ravel()
    if g is not None and g.shape != x.shape:
        raise ValueError(f"groups must have one label per unit ({x.size}), got {g.size}")
    return x[keep], y[keep], z[keep], (None if g is None else g[keep])


def partial_spearman_test(x, y, z, groups=None, alternative: str = "greater", n_resamples: int = N_RESAMPLES,
                          seed: int = 0, level: float = 0.95) -> StatResult:
    """Spearman correlation of x and y with z partialled out: Pearson of the residual ranks (`partial_ranks`: x's
    and y's ranks minus their linear fit on z's ranks, within groups when `groups` is given). A relation that z
    alone produces (x and y both following z) gives about 0.

    p by permuting y's residuals within groups (Freedman-Lane), ci by resampling units within groups and
    recomputing everything (ranks, fits). Triples with a NaN are dropped.
    """
    _check(alternative, n_resamples, level)
    x, y, z, g = _clean_triples(x, y, z, groups)
    n = x.size
    if n < 5:
        raise ValueError(f"partial_spearman_test needs at least 5 complete triples, got {n}")
    codes = _group_codes(g, n)
    grouped = g is not None
    ex, ey = _partial_rows(x, y, z, codes, grouped)
    est = float(_pearson_rows(ex, ey))
    rng = np.random.default_rng(seed)
    perm = _within_group_permutations(codes, n_resamples, rng)
    p = permutation_p(est, _pearson_rows(ex[None, :], ey[perm]), alternative)
    idx = _within_group_bootstrap(codes, n_resamples, rng)
    bx, by = _partial_rows(x[idx], y[idx], z[idx], codes, grouped)
    ci = _percentile_ci(_pearson_rows(bx, by), level)
    how = "within-group " if grouped else ""
    return StatResult(est, p, ci, n, n_resamples,
                      f"partial Spearman (z's ranks regressed out); {how}residual permutation p, {how}bootstrap ci",
                      alternative, reachable_p(_log_within_group_perms(codes), n_resamples, alternative == "two-sided"))


# ---------------------------------------------------------------------------------------------------------------
# differences of means


def paired_difference(a, b, alternative: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
                      level: float = 0.95) -> StatResult:
    """Mean of a - b over paired units (e.g. held-out windows): p by random sign flips of the differences, ci by
    bootstrap of the mean. NaN pairs are dropped."""
    _check(alternative, n_resamples, level)
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    d = a - b
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise ValueError(f"paired_difference needs at least 2 complete pairs, got {d.size}")
    est = float(d.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, d.size))
    p = permutation_p(est, (signs * d).mean(1), alternative)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    ci = _percentile_ci(d[idx].mean(1), level)
    return StatResult(est, p, ci, int(d.size), n_resamples, "paired mean difference; sign-flip p, bootstrap ci",
                      alternative, reachable_p(d.size * math.log(2), n_resamples, alternative == "two-sided"))


def two_sample(x, y, alternative: str = "greater", n_resamples: int = N_RESAMPLES, seed: int = 0,
               level: float = 0.95) -> StatResult:
    """Mean of x minus mean of y for independent samples (e.g. trained vs null heads): p by permuting the pooled
    labels, ci by resampling each sample. NaN values are dropped."""
    _check(alternative, n_resamples, level)
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        raise ValueError(f"two_sample needs at least 2 values per sample, got {x.size} and {y.size}")
    est = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([x, y])
    perm = rng.permuted(np.broadcast_to(pooled, (n_resamples, pooled.size)), axis=1)
    null = perm[:, : x.size].mean(1) - perm[:, x.size:].mean(1)
    p = permutation_p(est, null, alternative)
    bx = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
    by = y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(1)
    log_n = math.lgamma(x.size + y.size + 1) - math.lgamma(x.size + 1) - math.lgamma(y.size + 1)
    return StatResult(est, p, _percentile_ci(bx - by, level), int(min(x.size, y.size)), n_resamples,
                      "difference of means; label-permutation p, bootstrap ci", alternative,
                      reachable_p(log_n, n_resamples, alternative == "two-sided"))


def sign_test(values, alternative: str = "greater") -> float:
    """Binomial p-value that more values are > 0 ("greater") / < 0 ("less") than a fair coin gives (zeros and
    NaN dropped)."""
    from scipy.stats import binomtest

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v != 0)]
    if v.size == 0:
        return float("nan")
    return float(binomtest(int((v > 0).sum()), int(v.size), 0.5, alternative=alternative).pvalue)


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (rounded to 12 digits); a NaN p-value sorts last and
    gets 1.0.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(list(p_values), dtype=np.float64)
    adj, running = np.empty_like(p), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return [round(float(x), 12) for x in adj]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95 % by default); (nan, nan) for n = 0.

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if n == 0:
        return (math.nan, math.nan)
    p, d = k / n, 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
