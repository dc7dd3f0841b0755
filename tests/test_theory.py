"""The derivations of tappa_utils.theory: symbolic (sympy reduces the residual to zero / signs it) and numeric
(identities to 1e-10 and bounds on random q, k, R)."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from tappa_utils import theory as T
from tappa_utils.rope import rotate

RNG = np.random.default_rng(0)
THETA = 10000.0 ** (-np.arange(16) * 2 / 32)  # d = 32, base 1e4


@pytest.mark.parametrize("derivation", T.all_derivations(), ids=lambda d: d.name)
def test_derivation_holds_symbolically(derivation):
    assert derivation.holds(), derivation.name
    assert derivation.latex()
    # sympy must do the work: a residual that is already zero as built derives nothing
    r = derivation.residual
    assert not (r == sp.zeros(*r.shape) if isinstance(r, sp.MatrixBase) else r == 0), derivation.name


def test_wrong_identities_do_not_hold():
    m, n, th = sp.symbols("m n theta", integer=True)
    bad = T.Derivation("wrong sign", T.rotation(m * th).T * T.rotation(n * th), T.rotation((n + m) * th),
                       T.rotation(m * th).T * T.rotation(n * th) - T.rotation((n + m) * th))
    assert not bad.holds()
    x = sp.symbols("x", real=True)
    assert not T.Derivation("sin <= 0", x, 0, sp.sin(x), relation=">=").holds()
    # the monotonicity proof of chord <= arc rejects a false inequality (theta/2 >= sin(theta) fails near 0) and a
    # wrong derivative
    th = sp.symbols("theta", nonnegative=True)
    f = th / 2 - sp.sin(th)
    assert not T.Derivation("wrong", th / 2, sp.sin(th), f, ">=",
                            proof=lambda: T.monotone_nonnegative(f, th, sp.diff(f, th))).holds()
    g = th - 2 * sp.sin(th / 2)
    assert not T.monotone_nonnegative(g, th, 2 * sp.sin(th / 2) ** 2)  # not its derivative
    assert not T.monotone_nonnegative(g + 1, th, 2 * sp.sin(th / 4) ** 2)  # not zero at 0
    assert T.monotone_nonnegative(g, th, 2 * sp.sin(th / 4) ** 2)


def test_rope_identity_numeric():
    lhs, rhs, syms = T.lambdified(T.rope_relative_identity())
    assert [s.name for s in syms] == ["m", "n", "theta"]
    for _ in range(20):
        m, n = RNG.integers(-500, 500, 2)
        th = RNG.uniform(1e-4, 1.0)
        assert np.abs(np.array(lhs(m, n, th), float) - np.array(rhs(m, n, th), float)).max() < 1e-10


def test_relative_logit_matches_rope_rotation():
    q, k = RNG.standard_normal((5, 32)), RNG.standard_normal((5, 32))
    t, j = np.array([3, 10, 100, 7, 400]), np.array([0, 10, 37, 2, 399])
    qr = rotate(torch.tensor(q), torch.tensor(t), THETA).numpy()
    kr = np.stack([rotate(torch.tensor(k[i:i + 1]), torch.tensor(j[i:i + 1]), THETA).numpy()[0] for i in range(5)])
    a = np.stack([rotate(torch.tensor(q[i:i + 1]), torch.tensor(t[i:i + 1]), THETA).numpy()[0] for i in range(5)])
    assert qr.shape == a.shape
    np.testing.assert_allclose((a * kr).sum(-1), T.relative_logit(q, k, t - j, THETA), atol=1e-10)


def test_logit_change_decomposition_numeric():
    t = 40
    q0, q1, keys = RNG.standard_normal(32), RNG.standard_normal(32), RNG.standard_normal((t + 1, 32))
    terms = T.logit_jump_terms(q0, q1, keys, t, THETA)
    np.testing.assert_allclose(terms["query"] + terms["rotation"], terms["total"], atol=1e-10)
    # the rotation term is bounded per channel (chord), which is below the paper's |q||k| max theta
    per_channel = T.rotation_term_bound(q0, keys, THETA)
    paper = T.rotation_term_bound(q0, keys, THETA, per_channel=False, chord=False)
    assert np.all(np.abs(terms["rotation"]) <= per_channel + 1e-12)
    assert np.all(per_channel <= paper + 1e-12)


def test_jump_proposition_needs_a_query_change_that_sees_the_keys():
    """The proposition's two sides: a large query change along a rotated key makes the logits jump (the bound
    c1 |dq| - c2 is positive and met), while an equally large change orthogonal to every rotated key leaves only the
    RoPE term (the premise "not orthogonal" is needed)."""
    t = 20  # 21 keys in 32 dimensions: a direction orthogonal to all rotated keys exists
    q0, keys = RNG.standard_normal(32), RNG.standard_normal((t + 1, 32))
    n = t + 1 - np.arange(t + 1)
    V = T.relative_logit(np.eye(32)[:, None, :], keys[None, :, :], n[None, :], THETA)  # x . V[:, j] = x^T R k_j
    rot = np.abs(T.logit_jump_terms(q0, q0, keys, t, THETA)["rotation"]).max()
    big = 1e3
    aligned = V[:, 0] / np.linalg.norm(V[:, 0])
    jump = np.abs(T.logit_jump_terms(q0, q0 + big * aligned, keys, t, THETA)["total"]).max()
    c1 = np.linalg.norm(V[:, 0])  # alignment of this step: |dq^T R k_0| / |dq|
    assert c1 * big - rot > 0 and jump >= c1 * big - rot - 1e-9
    ortho = np.linalg.svd(V.T)[2][-1]  # unit vector with ortho . V[:, j] = 0 for every key
    terms = T.logit_jump_terms(q0, q0 + big * ortho, keys, t, THETA)
    assert np.abs(terms["query"]).max() < 1e-9 * big
    np.testing.assert_allclose(terms["total"], terms["rotation"], atol=1e-8)
    assert np.abs(terms["total"]).max() < 0.01 * c1 * big  # a huge query change, no jump


def test_chord_arc_and_fixed_key_bound_on_random_vectors():
    th = RNG.uniform(0, 2 * np.pi, 1000)
    assert np.all(T.rotation_step_factor(th) <= T.rotation_step_factor(th, chord=False) + 1e-15)
    assert T.rotation_step_factor(np.array([1.0]))[0] < 1.0  # the chord is strictly shorter for a large angle
    for _ in range(200):
        q0, q1, k = RNG.standard_normal((3, 32)) * RNG.uniform(0.1, 5, (3, 1))
        t, i = RNG.integers(0, 1000), RNG.integers(0, 1000)
        change = abs(T.relative_logit(q1, k, t + 1 - i, THETA) - T.relative_logit(q0, k, t - i, THETA))
        assert change <= T.fixed_key_step_bound(q0, q1, k, THETA) + 1e-10
        assert T.fixed_key_step_bound(q0, q1, k, THETA) <= T.fixed_key_step_bound(q0, q1, k, THETA, chord=False) + 1e-12


def test_diagonal_bound_on_random_vectors_and_exact_shift():
    for _ in range(200):
        q0, q1, k0, k1 = RNG.standard_normal((4, 32))
        n = RNG.integers(0, 2000)
        change = abs(T.relative_logit(q1, k1, n, THETA) - T.relative_logit(q0, k0, n, THETA))
        assert change <= T.diagonal_step_bound(q0, q1, k0, k1) + 1e-10
    q, k = RNG.standard_normal((2, 32))
    assert T.diagonal_step_bound(q, q, k, k) == 0
    assert abs(T.relative_logit(q, k, 51 - 11, THETA) - T.relative_logit(q, k, 50 - 10, THETA)) < 1e-10


def test_seasonal_bound_full_holds_and_paper_form_can_fail():
    dom, n = 3, 2
    L = int(round(2 * np.pi * n / THETA[dom]))
    delta = T.resonance_mismatch(L, THETA[dom])
    assert abs(L * THETA[dom] - 2 * np.pi * n - delta) < 1e-12 and abs(delta) <= np.pi
    paper_fails = 0
    for _ in range(300):
        q0, k = RNG.standard_normal((2, 32))
        q1 = q0 + 0.05 * RNG.standard_normal(32)
        t, i = 500, RNG.integers(0, 500)
        change = abs(T.relative_logit(q1, k, t + L - i, THETA) - T.relative_logit(q0, k, t - i, THETA))
        sb = T.seasonal_bound(q0, q1, k, L, THETA, dom)
        assert change <= sb.full + 1e-10
        assert sb.resonant <= np.abs(T._c(q0)[dom] * T._c(k)[dom]) * abs(delta) + 1e-12  # <= C2 |delta|
        paper_fails += change > sb.paper + 1e-10
    assert paper_fails > 0  # without the non-dominant phase term the bound is not valid for generic q, k


def test_dominant_channel_and_interval():
    q, k = RNG.standard_normal((2, 10, 32))
    q[:, [4, 20]] *= 20
    m, share = T.dominant_channel_share(q, k)
    assert int(m) == 4 and 0.3 < float(share) <= 1  # uniform would be 1/16
    assert T.predicted_diagonal_interval(THETA[0]) == pytest.approx(2 * np.pi)
    with pytest.raises(ValueError):
        T.predicted_diagonal_interval(0.0)
    with pytest.raises(ValueError, match="channels"):
        T.relative_logit(np.ones(8), np.ones(8), 0, THETA)


@pytest.mark.parametrize("derivation", [d for d in T.all_derivations() if d.relation == "="], ids=lambda d: d.name)
def test_every_identity_holds_numerically(derivation):
    lhs, rhs, syms = T.lambdified(derivation)
    for _ in range(10):
        vals = [RNG.integers(-300, 300) if s.is_integer else RNG.uniform(-3, 3) for s in syms]
        diff = np.asarray(lhs(*vals), dtype=float) - np.asarray(rhs(*vals), dtype=float)
        assert np.abs(diff).max() < 1e-10


def test_inequality_holds_numerically():
    d = T.chord_le_arc()
    lhs, rhs, syms = T.lambdified(d)
    th = RNG.uniform(0, 50, 1000)
    assert np.all(lhs(th) >= rhs(th) - 1e-12)


@pytest.mark.parametrize("derivation", T.all_derivations(), ids=lambda d: d.name)
def test_show_puts_the_short_form_first_and_folds_a_long_expansion(derivation):
    """A derivation wider than a line shows its statement in the book's notation, sympy's expansion folded."""
    shown = T.show(derivation, width=60)
    html = shown._repr_html_()
    if T._visible(derivation.latex()) <= 60:
        assert shown.long == "" and "<details>" not in html
        return
    assert derivation.short, f"{derivation.name}: a long expansion needs a short form"
    assert T._visible(derivation.short) < T._visible(derivation.latex()) / 2
    assert shown.short == derivation.short and shown.long == T.latex_lines(derivation, 60)
    assert html.index(r"\[" + derivation.short) < html.index("<details>")
    assert html.count("<details>") == 1 and "</details>" in html


def test_show_of_an_expression_simplifies_it_or_keeps_it():
    x = sp.symbols("x", real=True)
    long = sp.expand((sp.sin(x) ** 2 + sp.cos(x) ** 2) * (x + 1) ** 6)
    shown = T.show(long, width=20)
    assert shown.short == sp.latex(T.simplify_all(long)) and sp.simplify(T.simplify_all(long) - (x + 1) ** 6) == 0
    assert shown.long == sp.latex(long)
    assert T.show(x + 1).long == "" and T.show(x + 1, short="y").short == "x + 1"  # short already: nothing folded
