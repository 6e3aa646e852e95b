"""Exact fANOVA of analytic functions against hand-derived closed forms."""

import itertools
import math

import numpy as np
import pytest

import fanova_gpu as fg
from fanova_gpu.functions import (
    KIND_CODES,
    Factor,
    ProductSum,
    Term,
    base,
    g_function,
    ishigami,
    moment,
    paper_generator,
    random_product_sum,
)

U11 = fg.Uniform(-1.0, 1.0, d=3)


def test_ishigami_closed_form():
    a, b, pi = 7.0, 0.1, math.pi
    sv = ishigami(a, b).subset_variances()
    v1 = 0.5 * (1 + b * pi**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * pi**8 * (1 / 18 - 1 / 50)
    assert sv[(0,)] == pytest.approx(v1, rel=1e-13)
    assert sv[(1,)] == pytest.approx(v2, rel=1e-13)
    assert sv[(0, 2)] == pytest.approx(v13, rel=1e-13)
    assert abs(sv[(2,)]) < 1e-14
    f = ishigami()
    assert f.total_variance == pytest.approx(v1 + v2 + v13, rel=1e-13)
    # the 6-decimal constants
    assert round(v1, 6) == 4.345888 and round(v13, 6) == 3.373700
    assert round(f.total_variance, 6) == 13.844588
    assert f.mean == pytest.approx(a / 2, rel=1e-13)
    np.testing.assert_allclose(f.variance_by_order(2), [v1 + v2, v13, 0.0], atol=1e-12)


def test_ishigami_evaluates_formula():
    X = fg.Uniform(-math.pi, math.pi, d=3).sample(100, seed=0).astype(np.float64)
    ref = np.sin(X[:, 0]) + 7 * np.sin(X[:, 1]) ** 2 + 0.1 * X[:, 2] ** 4 * np.sin(X[:, 0])
    np.testing.assert_allclose(ishigami()(X), ref, rtol=1e-12, atol=1e-12)


def test_g_function_all_subsets_and_orders():
    a = [0.0, 1.0, 4.5, 9.0, 99.0]
    f = g_function(a)
    vi = [1 / (3 * (1 + ai) ** 2) for ai in a]
    sv = f.subset_variances()
    assert len(sv) == 2**5 - 1
    by_order = np.zeros(6)
    for r in range(1, 6):
        for u in itertools.combinations(range(5), r):
            exact = math.prod(vi[i] for i in u)
            assert sv[u] == pytest.approx(exact, rel=1e-12)
            by_order[r] += exact
    np.testing.assert_allclose(f.variance_by_order(5)[:5], by_order[1:], rtol=1e-12)
    vbo = f.variance_by_order(2)
    assert vbo[2] == pytest.approx(by_order[3:].sum(), rel=1e-12)
    assert f.total_variance == pytest.approx(math.prod(1 + v for v in vi) - 1, rel=1e-12)
    assert f.mean == pytest.approx(1.0, rel=1e-13)


def test_paper_generators_split_by_hand():
    # under U(-1,1): E sin = 0, E sin^2 = 1/2 - sin2/4, E cos = sin1, E cos^2 = 1/2 + sin2/4
    s2 = 0.5 - math.sin(2) / 4
    c1, c2 = math.sin(1), 0.5 + math.sin(2) / 4
    vc = c2 - c1**2
    main = paper_generator("main_effects", d=5).variance_by_order(3)
    np.testing.assert_allclose(main, [s2 + vc, 0, 0, 0], atol=1e-14)
    pair = paper_generator("pair_effect", d=5).variance_by_order(3)
    np.testing.assert_allclose(pair, [s2 * c1**2, s2 * vc, 0, 0], rtol=1e-12, atol=1e-14)
    assert pair[0] / pair.sum() == pytest.approx(c1**2 / c2, rel=1e-12)
    assert 0.973 < c1**2 / c2 < 0.974  # the "pair" generator is ~97% main effect
    trip = paper_generator("triple_effect").variance_by_order(3)
    np.testing.assert_allclose(trip, [0, s2 * c1**2 / 3, s2 * vc / 3, 0], rtol=1e-12, atol=1e-14)
    pp = paper_generator("pure_pair").variance_by_order(3)
    np.testing.assert_allclose(pp, [0, s2 * vc, 0, 0], rtol=1e-12, atol=1e-14)
    pt = paper_generator("pure_triple").variance_by_order(3)
    np.testing.assert_allclose(pt, [0, 0, s2 * vc / 3, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "factor,dist,exact",
    [
        (Factor("sin", a=1.3, c=0.2), fg.Uniform(-1, 2, d=1),
         (math.cos(-1.3 + 0.2) - math.cos(2.6 + 0.2)) / (1.3 * 3)),
        (Factor("abs", c=-0.3), fg.Uniform(-1, 1, d=1), (1 + 0.3**2) / 2),
        (Factor("exp", a=0.7, b=1.0), fg.Uniform(0, 1, d=1), (math.exp(0.7) - 1) / 0.7 + 1),
        (Factor("x4"), fg.Uniform(-math.pi, math.pi, d=1), math.pi**4 / 5),
        (Factor("exp", a=0.7), fg.Normal(d=1, mean=0.5, std=2.0),
         math.exp(0.7 * 0.5 + 0.49 * 4 / 2)),
        (Factor("abs"), fg.Normal(d=1, std=1.5), 1.5 * math.sqrt(2 / math.pi)),
        (Factor("abs", c=-1.0), fg.Normal(d=1),  # E|X-1| = 2 phi(1) + 1*(2 Phi(1) - 1)
         2 * math.exp(-0.5) / math.sqrt(2 * math.pi) + math.erf(1 / math.sqrt(2))),
        (Factor("cos", a=2.0), fg.Normal(d=1, mean=0.3, std=0.8),
         math.cos(0.6) * math.exp(-4 * 0.64 / 2)),
        (Factor("x4"), fg.Normal(d=1, std=1.2), 3 * 1.2**4),
        (Factor("x3", c=1.0), fg.Normal(d=1), 1 + 3),  # E(X+1)^3 = 1 + 3 E X^2
    ],
)
def test_moments_closed_form(factor, dist, exact):
    assert moment(dist, factor) == pytest.approx(exact, rel=1e-13, abs=1e-15)


def test_cross_variable_terms_by_hand():
    # F = (x0 + 1) x1 + x0^2 on U(-1,1): f_0 = x0^2 - 1/3, f_1 = x1, f_01 = x0 x1
    f = ProductSum(
        [Term(1.0, ((0, Factor("x", b=1.0)), (1, Factor("x")))), Term(1.0, ((0, Factor("x2")),))],
        fg.Uniform(-1, 1, d=2),
    )
    sv = f.subset_variances()
    assert sv[(0,)] == pytest.approx(1 / 5 - 1 / 9, rel=1e-13)
    assert sv[(1,)] == pytest.approx(1 / 3, rel=1e-13)
    assert sv[(0, 1)] == pytest.approx(1 / 9, rel=1e-13)
    X = fg.Uniform(-1, 1, d=2).sample(50, seed=1).astype(np.float64)
    np.testing.assert_allclose(f.component((0,), X), X[:, 0] ** 2 - 1 / 3, atol=1e-13)
    np.testing.assert_allclose(f.component((1,), X), X[:, 1], atol=1e-13)
    np.testing.assert_allclose(f.component((0, 1), X), X[:, 0] * X[:, 1], atol=1e-13)
    np.testing.assert_allclose(f.component((), X), np.full(50, 1 / 3), atol=1e-13)
    # shrunk: sum_u (1-p)^|u| f_u by hand
    p = 0.3
    hand = 1 / 3 + (1 - p) * (X[:, 0] ** 2 - 1 / 3 + X[:, 1]) + (1 - p) ** 2 * X[:, 0] * X[:, 1]
    np.testing.assert_allclose(f.shrunk(X, p), hand, atol=1e-13)


def _reference_components(f, nodes=24):
    """Plain tensor Gauss-Legendre reference: f_u = sum_{v<=u} (-1)^{|u|-|v|} E[F | x_v]."""
    d, lo, hi = f.d, f.dist.low, f.dist.high
    x, w = np.polynomial.legendre.leggauss(nodes)
    x = lo + (hi - lo) * (x + 1) / 2
    w = w / 2
    grid = np.array(list(itertools.product(x, repeat=d)))
    vals = f(grid).reshape((nodes,) * d)
    cond = {}
    for r in range(d + 1):
        for v in itertools.combinations(range(d), r):
            t = vals
            for ax in sorted(set(range(d)) - set(v), reverse=True):
                t = np.tensordot(t, w, axes=([ax], [0]))
            cond[v] = t  # E[F | x_v] on the v-grid
    out = {}
    for r in range(1, d + 1):
        for u in itertools.combinations(range(d), r):
            comp = np.zeros((nodes,) * r)
            for s in range(r + 1):
                for v in itertools.combinations(u, s):
                    t = cond[v]
                    idx = [u.index(i) for i in v]
                    shape = [nodes if j in idx else 1 for j in range(r)]
                    comp = comp + (-1) ** (r - s) * t.reshape(shape)
            wu = w
            for _ in range(r - 1):
                wu = np.multiply.outer(wu, w)
            out[u] = float(np.sum(wu * comp**2))
    return out


def test_subset_variances_match_quadrature_reference():
    # shared variables across terms with smooth factors: the reference integrates directly
    f = ProductSum(
        [
            Term(1.2, ((0, Factor("sin", a=1.1, c=0.3)), (1, Factor("exp", a=0.5)))),
            Term(-0.7, ((1, Factor("cos", a=0.9, b=0.2)), (2, Factor("x2", c=0.4)))),
            Term(0.5, ((0, Factor("x", b=0.3)), (1, Factor("x3")), (2, Factor("exp", a=-0.6)))),
            Term(0.4, ()),
        ],
        U11,
    )
    ref = _reference_components(f)
    sv = f.subset_variances()
    for u, v in ref.items():
        assert sv.get(u, 0.0) == pytest.approx(v, rel=1e-10, abs=1e-14), u
    assert f.total_variance == pytest.approx(sum(ref.values()), rel=1e-12)


def test_components_sum_to_f_and_are_orthogonal():
    f = random_product_sum(d=6, orders=[1, 2, 3, 3], seed=3)
    X = f.dist.sample(64, seed=2).astype(np.float64)
    subsets = [u for r in range(f.d + 1) for u in itertools.combinations(range(f.d), r)]
    total = sum(f.component(u, X) for u in subsets)
    np.testing.assert_allclose(total, f(X), rtol=1e-12, atol=1e-12)
    p = 0.4
    shr = sum((1 - p) ** len(u) * f.component(u, X) for u in subsets)
    np.testing.assert_allclose(f.shrunk(X, p), shr, rtol=1e-12, atol=1e-12)


def test_centered_random_terms_are_pure():
    f = random_product_sum(d=8, orders=[2, 3], seed=5, centered=True)
    v = f.variance_by_order(3)
    assert abs(v[0]) < 1e-12 * v.sum()
    assert v[1] > 0 and v[2] > 0


def test_encode_reconstructs_f():
    f = random_product_sum(d=7, orders=[0, 1, 2, 4], seed=1)
    enc = f.encode()
    X = f.dist.sample(40, seed=0).astype(np.float64)
    out = np.zeros(40)
    for t in range(len(enc["coef"])):
        val = np.full(40, enc["coef"][t])
        for j in range(enc["nfac"][t]):
            z = enc["a"][t, j] * X[:, enc["var"][t, j]] + enc["c"][t, j]
            val *= base(int(enc["kind"][t, j]), z) + enc["b"][t, j]
        out += val
    np.testing.assert_allclose(out, f(X), rtol=1e-13)
    assert enc["var"].dtype == np.int32 and enc["kind"].shape == (4, 4)
    assert KIND_CODES == {"x": 0, "x2": 1, "sin": 2, "cos": 3, "exp": 4, "abs": 5,
                          "x3": 6, "x4": 7}


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: Factor("tanh"), "kind"),
        (lambda: Factor("sin", a=float("nan")), "a"),
        (lambda: Term(1.0, ((0, Factor("x")), (0, Factor("sin")))), "factors"),
        (lambda: Term(float("inf")), "coef"),
        (lambda: ProductSum([Term(1.0, ((5, Factor("x")),))], fg.Uniform(d=3)), "terms"),
        (lambda: ProductSum([Term(1.0)], "uniform"), "dist"),
        (lambda: paper_generator("quad_effect"), "name"),
        (lambda: g_function([-1.0]), "a"),
        (lambda: ishigami().shrunk(np.zeros((2, 3)), 1.5), "p"),
        (lambda: ishigami()(np.zeros((2, 4))), "X"),
    ],
)
def test_bad_input_names_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()
