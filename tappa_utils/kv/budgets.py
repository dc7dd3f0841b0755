"""Per-layer KV budgets from per-layer preference scores: proportional share, floors, caps, exact integer total."""
from __future__ import annotations

import math
from typing import Sequence


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
