"""TAPPA's derivations in sympy, with the numeric bounds they give.

Conventions (one RoPE channel is a 2-D plane; a head of dimension d has d/2 of them):

* `R_p` rotates a channel by the angle `p * theta` (what RoPE does to a vector at position p).
* The logit of query t on key j is `(R_t q)^T (R_j k) = q^T R_t^T R_j k = q^T R(t - j) k`, where the paper's
  relative matrix `R(n) := R_n^T = R_{-n}` (a rotation by `-n theta`). Only differences of positions appear.
* Per channel, with `z = x[m] + i x[m + d/2]`: `a[t, j] = sum_m |q^m| |k^m| cos((t - j) theta_m + phi_m)`,
  `phi_m = arg q^m - arg k^m` (see `tappa_utils.rope`).

Every symbolic function returns a `Derivation` whose `residual` simplifies to zero when the identity holds (never
zero as built: sympy has to do the trigonometry; `tests/test_theory.py` checks this) or, for an inequality, is
shown non-negative (`monotone_nonnegative`: zero at 0 and a derivative that is a square). What they are: algebraic
identities of rotations and cosines that the chapters' bounds rest on; a failure would be a bug in the derivation,
not a finding about a model (results rows built from them are sanity checks). The statements about models (bounds
holding with measured constants, assumptions being met) are measured in `tappa_utils.patterns`. The `*_bound`
functions are the numeric right-hand sides used by the chapters, in float64 numpy.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

# ---------------------------------------------------------------------------------------------------------------
# symbolic building blocks
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Derivation:
    """One identity or inequality: `lhs` (relation) `rhs`, the `residual` that must vanish / be non-negative,
    the assumptions it needs (plain sentences) and a LaTeX rendering for the chapters."""

    name: str
    lhs: sp.Expr | sp.Matrix
    rhs: sp.Expr | sp.Matrix
    residual: sp.Expr | sp.Matrix
    relation: str = "="
    assumptions: list[str] = field(default_factory=list)
    proof: Callable[[], bool] | None = None
    short: str = ""  # the statement in the book's notation (LaTeX), shown before sympy's expanded form

    def holds(self) -> bool:
        """True when the simplified residual is identically zero ("="), or provably non-negative (">="): by sympy's
        sign rules, else by `proof` (e.g. `monotone_nonnegative`)."""
        r = simplify_all(self.residual)
        if self.relation == "=":
            return bool(r == sp.zeros(*r.shape)) if isinstance(r, sp.MatrixBase) else bool(r == 0)
        if r.is_nonnegative:
            return True
        return bool(self.proof()) if self.proof is not None else False

    def latex(self) -> str:
        """`lhs rel rhs` as LaTeX (for `IPython.display.Math`)."""
        rel = {"=": "=", ">=": r"\geq", "<=": r"\leq"}[self.relation]
        return f"{sp.latex(self.lhs)} {rel} {sp.latex(self.rhs)}"


def _visible(tex: str) -> int:
    """Rough count of the characters a LaTeX string shows (commands, braces and sizing left out)."""
    t = re.sub(r"\\(left|right|cdot|,|;|quad)", " ", tex)
    t = re.sub(r"\\[A-Za-z]+", "x", t)
    return len(re.sub(r"[{}\s^_]", "", t))


def _pieces(expr: sp.Expr, width: int) -> list[str]:
    """LaTeX pieces of `expr` no wider than `width` where possible: its terms, and a long product's factors."""
    if isinstance(expr, sp.Add):
        out = []
        for i, term in enumerate(sp.Add.make_args(expr)):
            neg = term.could_extract_minus_sign()
            body = _pieces(-term if neg else term, width)
            sign = "- " if neg else ("+ " if i else "")
            out += [sign + body[0]] + body[1:]
        return out
    tex = sp.latex(expr)
    if isinstance(expr, sp.Mul) and _visible(tex) > width:
        factors = []
        for f in expr.args:
            ft = sp.latex(f)
            factors.append(rf"\left({ft}\right)" if isinstance(f, sp.Add) else ft)
        return [factors[0]] + [r"\cdot " + f for f in factors[1:]]
    return [tex]


def latex_lines(d: Derivation, width: int = 60) -> str:
    """`d.latex()` broken into an `aligned` block of lines about `width` characters wide (terms, then the factors
    of a long product), so that a long expanded identity wraps on the page instead of running off its right edge.
    Short derivations come back unchanged."""
    one = d.latex()
    if _visible(one) <= width:
        return one
    rel = {"=": "=", ">=": r"\geq", "<=": r"\leq"}[d.relation]
    lines, cur = [], ""
    for side, expr in (("lhs", d.lhs), ("rhs", d.rhs)):
        pieces = _pieces(expr, width) if isinstance(expr, sp.Expr) else [sp.latex(expr)]
        if side == "rhs":
            if cur:
                lines.append(cur)
            cur = rel + " "
        for p in pieces:
            if cur and _visible(cur + p) > width:
                lines.append(cur)
                cur = ""
            cur += p + " "
    lines.append(cur)
    return r"\begin{aligned}" + r" \\ ".join("& " + ln.strip() for ln in lines) + r"\end{aligned}"


@dataclass
class Folded:
    """A formula for notebooks and the book: its short form, and the long one folded beneath it (HTML `<details>`,
    closed until the reader opens it); each in a horizontally scrolling box. Jupyter without HTML gets the short
    form as LaTeX."""

    short: str
    long: str = ""
    summary: str = "sympy's expanded form"

    def _repr_latex_(self) -> str:
        return f"$$ {self.short} $$"

    def _repr_html_(self) -> str:
        def box(tex: str) -> str:
            return (f'<div class="overflow-x-auto"><div class="math notranslate nohighlight">'
                    f"\\[{html.escape(tex, quote=False)}\\]</div></div>")

        if not self.long:
            return box(self.short)
        return box(self.short) + f"<details><summary>{html.escape(self.summary)}</summary>{box(self.long)}</details>"


def show(expr: Derivation | sp.Basic, short: str | None = None, width: int = 60) -> Folded:
    """A derivation or sympy expression as a reader should see it: the short form first, sympy's long form (lines of
    about `width` characters) folded beneath; a result that is short already is shown as is, unfolded.

    The short form is `short`, else the derivation's own `short` (the statement in the book's notation), else, for an
    expression, its simplification when that is shorter.

    >>> f = show(rope_relative_identity())
    >>> print(f.short)
    R_m^{\\top} R_n = R_{n-m}
    >>> f.long.startswith(r"\\begin{aligned}"), "<details>" in f._repr_html_()
    (True, True)
    >>> show(chord_le_arc()).long  # short already: nothing folded
    ''
    """
    if isinstance(expr, Derivation):
        one, short = expr.latex(), short or expr.short
        full = latex_lines(expr, width)
    else:
        one = sp.latex(expr)
        full = one
        if not short:
            simple = sp.latex(simplify_all(expr))
            short = simple if _visible(simple) < _visible(one) else ""
    if _visible(one) <= width or not short:
        return Folded(full)
    return Folded(short, full)


def simplify_all(expr):
    """`sympy.simplify` after expanding trig sums, element-wise for matrices."""
    if isinstance(expr, sp.MatrixBase):
        return expr.applyfunc(lambda e: sp.simplify(sp.expand_trig(sp.expand(e))))
    return sp.simplify(sp.expand_trig(sp.expand(expr)))


def rotation(angle: sp.Expr) -> sp.Matrix:
    """The 2x2 counter-clockwise rotation by `angle` (what RoPE applies to one channel)."""
    return sp.Matrix([[sp.cos(angle), -sp.sin(angle)], [sp.sin(angle), sp.cos(angle)]])


def relative_rotation(n: sp.Expr, theta: sp.Expr) -> sp.Matrix:
    """The paper's `R(n) = R_n^T`, so that the logit is `q^T R(t - j) k`."""
    return rotation(n * theta).T


def vec(name: str) -> sp.Matrix:
    """A symbolic real 2-vector (one channel), components `name_1, name_2`."""
    a, b = sp.symbols(f"{name}_1 {name}_2", real=True)
    return sp.Matrix([a, b])


_t, _j, _n, _m, _L = sp.symbols("t j n m L", integer=True)
_theta, _delta, _phi, _x = sp.symbols("theta delta phi x", real=True)


def rope_relative_identity() -> Derivation:
    """`R_m^T R_n = R_{n-m}`: RoPE logits depend on positions only through their difference."""
    lhs = rotation(_m * _theta).T * rotation(_n * _theta)
    rhs = rotation((_n - _m) * _theta)
    return Derivation("RoPE relative position", lhs, rhs, lhs - rhs,
                      assumptions=["each channel is rotated by position x theta_m (rotate-half layout)"],
                      short=r"R_m^{\top} R_n = R_{n-m}")  # R_p: the rotation by p theta


def channel_logit_identity() -> Derivation:
    """One channel: `q^T R(t-j) k = |q||k| cos((t-j) theta + arg q - arg k)` (polar form of the logit)."""
    rq, rk, aq, ak = sp.symbols("r_q r_k alpha_q alpha_k", real=True)
    q = sp.Matrix([rq * sp.cos(aq), rq * sp.sin(aq)])
    k = sp.Matrix([rk * sp.cos(ak), rk * sp.sin(ak)])
    lhs = (rotation(_t * _theta) * q).T * (rotation(_j * _theta) * k)
    rhs = rq * rk * sp.cos((_t - _j) * _theta + aq - ak)
    return Derivation("logit of one channel", lhs[0], rhs, lhs[0] - rhs,
                      short=r"(R_t\,q)^{\top} (R_j\,k) = |q|\,|k| \cos\big((t-j)\theta + \arg q - \arg k\big)")


def logit_change_decomposition() -> Derivation:
    """`a[t+1,j] - a[t,j] = (q_{t+1} - q_t)^T R(t+1-j) k_j + q_t^T (R(t+1-j) - R(t-j)) k_j` (one channel; the
    head is the sum over channels, so the identity holds for any d)."""
    q0, q1, k = vec("q_t"), vec("q_t1"), vec("k_j")
    a = lambda q, t: (q.T * relative_rotation(t - _j, _theta) * k)[0]  # noqa: E731
    lhs = a(q1, _t + 1) - a(q0, _t)
    rhs = ((q1 - q0).T * relative_rotation(_t + 1 - _j, _theta) * k)[0] + \
        (q0.T * (relative_rotation(_t + 1 - _j, _theta) - relative_rotation(_t - _j, _theta)) * k)[0]
    return Derivation("logit change decomposition", lhs, rhs, lhs - rhs,
                      assumptions=["the key k_j is cached (does not change between steps t and t+1)"],
                      short=r"a_{t+1,j} - a_{t,j} = (q_{t+1} - q_t)^{\top} R(t+1-j)\,k_j + q_t^{\top} "
                            r"\big(R(t+1-j) - R(t-j)\big)\,k_j")


def rotation_step_norm() -> Derivation:
    """`(R(n+1) - R(n))^T (R(n+1) - R(n)) = 4 sin^2(theta/2) I`: one RoPE step moves a unit vector by the chord
    `2|sin(theta/2)|`, not by the arc `theta` (the two agree only for small angles)."""
    D = relative_rotation(_n + 1, _theta) - relative_rotation(_n, _theta)
    lhs = D.T * D
    rhs = 4 * sp.sin(_theta / 2) ** 2 * sp.eye(2)
    return Derivation("chord of one RoPE step", lhs, rhs, lhs - rhs,
                      short=r"\big(R(n+1) - R(n)\big)^{\top} \big(R(n+1) - R(n)\big) = 4 \sin^2(\theta/2)\, I")


def monotone_nonnegative(f: sp.Expr, x: sp.Symbol, derivative: sp.Expr) -> bool:
    """Proof that f(x) >= 0 for x >= 0: f(0) = 0, f'(x) equals `derivative` (sympy checks the identity) and sympy
    can sign `derivative` as non-negative (e.g. a square). False when any step fails."""
    if sp.simplify(f.subs(x, 0)) != 0:
        return False
    if sp.simplify(sp.expand_trig(sp.diff(f, x) - derivative)) != 0:
        return False
    return bool(derivative.is_nonnegative)


def chord_le_arc() -> Derivation:
    """`theta >= 2 sin(theta/2)` for theta >= 0 (the chord of one RoPE step is shorter than the arc): the residual
    f = theta - 2 sin(theta/2) is 0 at 0 and its derivative 1 - cos(theta/2) = 2 sin^2(theta/4) is a square, so f
    never decreases (`monotone_nonnegative`)."""
    th = sp.symbols("theta", nonnegative=True)
    f = th - 2 * sp.sin(th / 2)
    return Derivation("chord <= arc", th, 2 * sp.sin(th / 2), f, relation=">=",
                      assumptions=["theta >= 0"],
                      proof=lambda: monotone_nonnegative(f, th, 2 * sp.sin(th / 4) ** 2))


def fixed_key_step_identity() -> Derivation:
    """Column of a fixed key, frozen query, one channel:
    `cos(x + theta) - cos(x) = -2 sin(theta/2) sin(x + theta/2)` with x = (t-i) theta + phi."""
    lhs = sp.cos(_x + _theta) - sp.cos(_x)
    rhs = -2 * sp.sin(_theta / 2) * sp.sin(_x + _theta / 2)
    return Derivation("fixed-key step (one channel)", lhs, rhs, lhs - rhs)


def diagonal_shift_identity() -> Derivation:
    """One step along a diagonal with frozen vectors leaves the logit unchanged: with absolute rotations,
    `(R_{t+1} q)^T (R_{i+1} k) = (R_t q)^T (R_i k)` (the extra rotation of the query and of the key cancel), so along
    i = t - n only changes of q and k can move the logit."""
    i = sp.symbols("i", integer=True)
    q, k = vec("q"), vec("k")
    lhs = ((rotation((_t + 1) * _theta) * q).T * (rotation((i + 1) * _theta) * k))[0]
    rhs = ((rotation(_t * _theta) * q).T * (rotation(i * _theta) * k))[0]
    return Derivation("diagonal shift invariance", lhs, rhs, lhs - rhs,
                      assumptions=["q and k are the same vectors at both steps (frozen)"],
                      short=r"(R_{t+1}\,q)^{\top} (R_{i+1}\,k) = (R_t\,q)^{\top} (R_i\,k)")


def diagonal_change_decomposition() -> Derivation:
    """`a[t+1,i+1] - a[t,i] = (q_{t+1} - q_t)^T R(t-i) k_{i+1} + q_t^T R(t-i) (k_{i+1} - k_i)`; with R orthogonal,
    Cauchy-Schwarz gives `|a[t+1,i+1] - a[t,i]| <= |q_{t+1} - q_t||k_{i+1}| + |q_t||k_{i+1} - k_i|`."""
    i = sp.symbols("i", integer=True)
    q0, q1, k0, k1 = vec("q_t"), vec("q_t1"), vec("k_i"), vec("k_i1")
    R = lambda a, b: relative_rotation(a - b, _theta)  # noqa: E731
    lhs = (q1.T * R(_t + 1, i + 1) * k1)[0] - (q0.T * R(_t, i) * k0)[0]
    rhs = ((q1 - q0).T * R(_t, i) * k1)[0] + (q0.T * R(_t, i) * (k1 - k0))[0]
    return Derivation("diagonal change decomposition", lhs, rhs, lhs - rhs,
                      assumptions=["query continuity |q_{t+1} - q_t| <= eps_q",
                                   "key continuity |k_{i+1} - k_i| <= eps_k"],
                      short=r"a_{t+1,i+1} - a_{t,i} = (q_{t+1} - q_t)^{\top} R(t-i)\,k_{i+1} + q_t^{\top} R(t-i)"
                            r"\,(k_{i+1} - k_i)")


def periodic_diagonal_identity() -> Derivation:
    """Where the parallel diagonals are: a dominant channel's logit `A cos(n theta + phi)` at distance n = t - i
    is largest where its phase is a multiple of 2 pi; sympy solves `n theta + phi = 2 pi k` for n_k, checks that
    n_k is a maximum (first derivative 0, second -A theta^2 < 0), and the derivation is that consecutive maxima are
    `n_{k+1} - n_k = 2 pi / theta` tokens apart, whatever the phase phi."""
    th = sp.symbols("theta", positive=True)
    x, amp = sp.symbols("x A", positive=True)
    k = sp.symbols("k", integer=True)
    sols = sp.solve(sp.Eq(x * th + _phi, 2 * sp.pi * k), x)
    if len(sols) != 1:
        raise ArithmeticError(f"periodic diagonals: expected one solution for the maxima, got {sols}")
    nk = sols[0]
    f = amp * sp.cos(x * th + _phi)
    if sp.simplify(sp.diff(f, x).subs(x, nk)) != 0 or sp.simplify(sp.diff(f, x, 2).subs(x, nk) + amp * th ** 2) != 0:
        raise ArithmeticError("periodic diagonals: n_k is not a maximum of A cos(n theta + phi)")
    lhs = sp.Add(nk.subs(k, k + 1), -nk, evaluate=False)
    rhs = 2 * sp.pi / th
    return Derivation("periodic diagonals", lhs, rhs, sp.Add(lhs, -rhs, evaluate=False),
                      assumptions=["one channel m* dominates the logit (amplitude A > 0)",
                                   "its phase phi is stable along t"])


def seasonal_step_identity() -> Derivation:
    """Frozen q/k, one channel, period L: `cos(x + L theta) - cos(x) = -2 sin(L theta/2) sin(x + L theta/2)`; with
    `L theta = 2 pi n + delta` the factor is `|sin(delta/2)|`, so a resonant channel contributes `<= |q^m||k^m||delta|`
    while a non-resonant channel contributes up to `2 |q^m||k^m| |sin(L theta_m / 2)|` (the phase term)."""
    lhs = sp.cos(_x + _L * _theta) - sp.cos(_x)
    rhs = -2 * sp.sin(_L * _theta / 2) * sp.sin(_x + _L * _theta / 2)
    return Derivation("seasonal step (one channel)", lhs, rhs, lhs - rhs,
                      assumptions=["L theta_{m*} = 2 pi n + delta (resonance with mismatch delta)"])


def resonance_factor_identity() -> Derivation:
    """A resonant channel sees only the mismatch: with `L theta = 2 pi n + delta` (n integer), the squared chord of
    the rotation by L theta is `(cos(L theta) - 1)^2 + sin(L theta)^2 = 4 sin^2(delta/2)`, so its step is
    `2 |sin(delta/2)| <= |delta|`."""
    ang = 2 * sp.pi * _n + _delta
    lhs = (sp.cos(ang) - 1) ** 2 + sp.sin(ang) ** 2
    rhs = 4 * sp.sin(_delta / 2) ** 2
    return Derivation("resonance factor", lhs, rhs, lhs - rhs,
                      assumptions=["L theta_{m*} = 2 pi n + delta with n an integer"])


def all_derivations() -> list[Derivation]:
    """Every identity/inequality of the four theory chapters."""
    return [rope_relative_identity(), channel_logit_identity(), logit_change_decomposition(), rotation_step_norm(),
            chord_le_arc(), fixed_key_step_identity(), diagonal_shift_identity(), diagonal_change_decomposition(),
            periodic_diagonal_identity(), seasonal_step_identity(), resonance_factor_identity()]


def lambdified(derivation: Derivation) -> tuple[Callable, Callable, tuple[sp.Symbol, ...]]:
    """Numeric versions `(lhs_fn, rhs_fn, symbols)` of a derivation (numpy), symbols sorted by name."""
    syms = tuple(sorted(derivation.lhs.free_symbols | derivation.rhs.free_symbols, key=lambda s: s.name))
    return sp.lambdify(syms, derivation.lhs, "numpy"), sp.lambdify(syms, derivation.rhs, "numpy"), syms


# ---------------------------------------------------------------------------------------------------------------
# numeric: rotations and bounds (float64 numpy; vectors are (..., d) in the rotate-half layout, pre-RoPE)
# ---------------------------------------------------------------------------------------------------------------


def _c(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    h = x.shape[-1] // 2
    return x[..., :h] + 1j * x[..., h:]


def _check_dims(x: np.ndarray, theta: np.ndarray) -> None:
    if np.asarray(x).shape[-1] != 2 * len(theta):
        raise ValueError(f"vectors have {np.asarray(x).shape[-1]} dimensions but theta has {len(theta)} channels; "
                         "expected d = 2 * len(theta)")


def relative_logit(q: np.ndarray, k: np.ndarray, n: np.ndarray | int, theta: np.ndarray) -> np.ndarray:
    """`q^T R(n) k` for pre-RoPE q, k (..., d) at relative distance n = t - j (broadcasts), float64."""
    theta = np.asarray(theta, dtype=np.float64)
    _check_dims(q, theta)
    n = np.asarray(n, dtype=np.float64)
    return np.real(_c(q) * np.conj(_c(k)) * np.exp(1j * n[..., None] * theta)).sum(-1)


def rotation_step_factor(theta: np.ndarray, steps: float = 1.0, chord: bool = True) -> np.ndarray:
    """How far one channel's rotation moves a unit vector after `steps` positions: the chord
    `2 |sin(steps theta / 2)|` (exact) or the arc `|steps theta|` (the small-angle bound the paper uses)."""
    ang = np.asarray(theta, dtype=np.float64) * steps
    return 2 * np.abs(np.sin(ang / 2)) if chord else np.abs(ang)


def logit_jump_terms(q_t: np.ndarray, q_t1: np.ndarray, keys: np.ndarray, t: int, theta: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """The two terms of `a[t+1,j] - a[t,j]` for keys j = 0..t (keys: (t+1, d)): `query` (query change) and
    `rotation` (RoPE step with the query frozen), plus `total`; they sum exactly."""
    j = np.arange(keys.shape[0])
    query = relative_logit(q_t1 - q_t, keys, t + 1 - j, theta)
    rot = relative_logit(q_t, keys, t + 1 - j, theta) - relative_logit(q_t, keys, t - j, theta)
    total = relative_logit(q_t1, keys, t + 1 - j, theta) - relative_logit(q_t, keys, t - j, theta)
    return {"query": query, "rotation": rot, "total": total}


def rotation_term_bound(q: np.ndarray, k: np.ndarray, theta: np.ndarray, steps: float = 1.0, chord: bool = True,
                        per_channel: bool = True) -> np.ndarray:
    """Bound on `|q^T (R(n+steps) - R(n)) k|`: `sum_m |q^m||k^m| 2|sin(steps theta_m/2)|` (per_channel) or the
    paper's coarser `|q||k| max_m (...)`; with chord=False the arc `steps theta_m` replaces the chord."""
    f = rotation_step_factor(theta, steps, chord)
    if per_channel:
        return (np.abs(_c(q)) * np.abs(_c(k)) * f).sum(-1)
    return np.linalg.norm(q, axis=-1) * np.linalg.norm(k, axis=-1) * f.max()


def fixed_key_step_bound(q_t: np.ndarray, q_t1: np.ndarray, k_i: np.ndarray, theta: np.ndarray,
                         chord: bool = True) -> np.ndarray:
    """Vertical case: `|a[t+1,i] - a[t,i]| <= |q_{t+1} - q_t||k_i| + sum_m |q_t^m||k_i^m| 2|sin(theta_m/2)|`
    (chord; with chord=False the arc theta_m: valid but looser)."""
    return np.linalg.norm(q_t1 - q_t, axis=-1) * np.linalg.norm(k_i, axis=-1) + \
        rotation_term_bound(q_t, k_i, theta, 1.0, chord)


def diagonal_step_bound(q_t: np.ndarray, q_t1: np.ndarray, k_i: np.ndarray, k_i1: np.ndarray) -> np.ndarray:
    """Diagonal case: `|a[t+1,i+1] - a[t,i]| <= |q_{t+1} - q_t||k_{i+1}| + |q_t||k_{i+1} - k_i|`."""
    n = lambda x: np.linalg.norm(x, axis=-1)  # noqa: E731
    return n(q_t1 - q_t) * n(k_i1) + n(q_t) * n(k_i1 - k_i)


def resonance_mismatch(L: float | np.ndarray, theta: float | np.ndarray) -> np.ndarray:
    """delta = L theta - 2 pi n for the nearest integer n (in [-pi, pi])."""
    x = np.asarray(L, dtype=np.float64) * np.asarray(theta, dtype=np.float64)
    return x - 2 * np.pi * np.round(x / (2 * np.pi))


@dataclass
class SeasonalBound:
    """Terms of the seasonal bound for `|a[t+L,i] - a[t,i]|` (query one period later, same key):
    `query` = |q_{t+L} - q_t||k_i| (the C1 eps_q part), `resonant` = |q^{m*}||k^{m*}| 2|sin(delta/2)| (<= C2 |delta|),
    `phase` = sum over the other channels of |q^m||k^m| 2|sin(L theta_m/2)| (the term the paper's proof omits)."""

    query: np.ndarray
    resonant: np.ndarray
    phase: np.ndarray

    @property
    def full(self) -> np.ndarray:
        """The complete bound (always valid)."""
        return self.query + self.resonant + self.phase

    @property
    def paper(self) -> np.ndarray:
        """The bound without the non-dominant phase term (the paper's form): can fail."""
        return self.query + self.resonant


def seasonal_bound(q_t: np.ndarray, q_tL: np.ndarray, k_i: np.ndarray, L: int, theta: np.ndarray,
                   dominant: int) -> SeasonalBound:
    """Terms bounding `|a[t+L,i] - a[t,i]|` with channel `dominant` as m* (see `SeasonalBound`)."""
    theta = np.asarray(theta, dtype=np.float64)
    _check_dims(q_t, theta)
    amp = np.abs(_c(q_t)) * np.abs(_c(k_i))
    f = rotation_step_factor(theta, L, chord=True)
    mask = np.ones(len(theta), bool)
    mask[dominant] = False
    query = np.linalg.norm(q_tL - q_t, axis=-1) * np.linalg.norm(k_i, axis=-1)
    return SeasonalBound(query=query, resonant=amp[..., dominant] * f[dominant], phase=(amp * f)[..., mask].sum(-1))


def dominant_channel_share(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, share) of the channel with the largest amplitude |q^m||k^m| (share of the sum over channels),
    averaged over the leading axes of q and k (which broadcast)."""
    amp = (np.abs(_c(q)) * np.abs(_c(k)))
    amp = amp.reshape(-1, amp.shape[-1]).mean(0)
    m = int(np.argmax(amp))
    return np.asarray(m), np.asarray(amp[m] / amp.sum())


def predicted_diagonal_interval(theta_m: float) -> float:
    """Tokens between parallel diagonals when channel m dominates: `2 pi / theta_m`."""
    if theta_m <= 0:
        raise ValueError(f"theta_m must be positive, got {theta_m}")
    return 2 * math.pi / theta_m
