"""Per-layer KV budgets from per-layer preference scores: proportional share, floors, caps, exact integer total."""
from __future__ import annotations

import math
from collections.abc import Sequence


def allocate_budgets(preferences: Sequence[float], total: int, cap: int, floor: int = 0) -> list[int]:
    """Split `total` kept tokens over layers in proportion to `preferences`, each in [floor, cap].

    Water-filling: layers whose proportional share exceeds `cap` (or falls under `floor`) are fixed there and the
    rest of the total is re-split among the others by preference; then largest-remainder rounding makes the integer
    budgets sum to exactly `total`. All-zero preferences give equal shares. Raises ValueError when the total cannot
    be met (total < n*floor or total > n*cap) or a preference is negative / not finite.
    """
    prefs = [float(p) for p in preferences]
    n = len(prefs)
    if n == 0:
        raise ValueError("preferences is empty: need one preference per layer")
    if any(not math.isfinite(p) or p < 0 for p in prefs):
        raise ValueError(f"preferences must be finite and >= 0, got {prefs}")
    if not (isinstance(total, int) and isinstance(cap, int) and isinstance(floor, int)):
        raise TypeError("total, cap and floor must be integers")
    if floor < 0 or cap < floor:
        raise ValueError(f"need 0 <= floor <= cap, got floor={floor}, cap={cap}")
    if total < n * floor or total > n * cap:
        raise ValueError(f"total budget {total} cannot be split over {n} layers with each in [{floor}, {cap}]: "
                         f"it must lie in [{n * floor}, {n * cap}]")
    if sum(prefs) <= 0:
        prefs = [1.0] * n
    shares = [0.0] * n
    free = set(range(n))
    remaining = float(total)
    while True:
        weight = sum(prefs[i] for i in free)
        for i in free:
            shares[i] = remaining * prefs[i] / weight if weight > 0 else remaining / len(free)
        over = {i for i in free if shares[i] > cap}
        under = {i for i in free if shares[i] < floor}
        if not over and not under:
            break
        fix = over if over else under  # caps first; floors next
        for i in fix:
            shares[i] = float(cap if i in over else floor)
            remaining -= shares[i]
            free.discard(i)
        if not free:
            break
    budgets = [int(math.floor(s + 1e-9)) for s in shares]
    short = total - sum(budgets)
    order = sorted(range(n), key=lambda i: shares[i] - budgets[i], reverse=True)
    for i in order:
        if short <= 0:
            break
        if budgets[i] < cap:
            budgets[i] += 1
            short -= 1
    i = 0
    while short > 0:  # only when rounding left every fractional layer at its cap (cannot happen with exact shares)
        if budgets[i % n] < cap:
            budgets[i % n] += 1
            short -= 1
        i += 1
    return budgets


def adjust_budgets(budgets: Sequence[float], total: int, cap: int) -> list[int]:
    """The official TAPPA/CAKE budget fix-up, ported rule for rule (MIRALab-USTC/LLM-TAPPA, KVCache/cake/utils.py,
    `adjust_budgets`; the same function ships with CAKE).

    1. integer truncation of the float shares (numpy `astype(int)`, towards zero);
    2. cap every layer at `cap`; the excess is spread evenly over the layers still under the cap (the remainder,
       one token each, to the first of them in layer order);
    3. the difference to `total` is spread the same way (over layers under the cap when short, over layers with
       more than 1 token when over).
    As in the reference, steps 2-3 do not re-check the cap, so a layer can end above it; `reference_budgets`
    then clamps, exactly as the reference's caller (`CakeprefillKVCache.__call__`) does.
    """
    import numpy as np

    b = np.array(budgets, dtype=float).astype(int)
    excess = np.maximum(b - cap, 0)
    b = np.minimum(b, cap)
    total_excess = int(excess.sum())
    if total_excess > 0:
        valid = b < cap
        n_valid = int(valid.sum())
        if n_valid > 0:
            b[valid] += total_excess // n_valid
            b[np.where(valid)[0][: total_excess % n_valid]] += 1
    diff = int(total - b.sum())
    if diff != 0:
        valid = b < cap if diff > 0 else b > 1
        n_valid = int(valid.sum())
        if n_valid > 0:
            step, rem = abs(diff) // n_valid, abs(diff) % n_valid
            sign = 1 if diff > 0 else -1
            b[valid] += sign * step
            b[np.where(valid)[0][:rem]] += sign
    return [int(x) for x in b]


def reference_budgets(preferences: Sequence[float], total: int, seq_len: int, window: int) -> list[int]:
    """Per-layer kept tokens as the official code computes them (KVCache/cake/cake_cache.py, CakeprefillKVCache).

    `total` kept tokens summed over layers (the reference's `cache_size * num_layers`) minus the window in every
    layer, i.e. `total - window * L` non-window tokens, are split in proportion to the preferences
    (`pref / sum(pref) * (total - window * L)`, floats), fixed up by `adjust_budgets` with the cap
    `seq_len - window`, clamped at that cap, and then the window is added to every layer. Deviation: all-zero
    preferences (undefined 0/0 in the reference) give equal shares.
    """
    prefs = [float(p) for p in preferences]
    n = len(prefs)
    if n == 0:
        raise ValueError("preferences is empty: need one preference per layer")
    if any(not math.isfinite(p) or p < 0 for p in prefs):
        raise ValueError(f"preferences must be finite and >= 0, got {prefs}")
    if not 0 <= window <= seq_len:
        raise ValueError(f"need 0 <= window <= seq_len, got window={window}, seq_len={seq_len}")
    non_window = total - window * n
    cap = seq_len - window
    if not 0 <= non_window <= cap * n:
        raise ValueError(f"total budget {total} over {n} layers must lie in [{window * n}, {seq_len * n}] "
                         f"(window {window} to seq_len {seq_len} per layer)")
    weight = sum(prefs)
    shares = [p / weight * non_window for p in prefs] if weight > 0 else [non_window / n] * n
    return [min(b, cap) + window for b in adjust_budgets(shares, non_window, cap)]
