"""theory.py against truths computed another way: math.comb, scipy quadrature, hand algebra."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fanova_gpu import theory as th
from fanova_gpu.data import Normal, Uniform


def enc_of(terms):
    """Encoding from [(coef, [(var, kind, a, c, b), ...]), ...] (kind by name)."""
    T, F = len(terms), max(1, max(len(fs) for _, fs in terms))
    enc = {"coef": np.array([c for c, _ in terms], float), "nfac": np.zeros(T, np.int32),
           "var": np.zeros((T, F), np.int32), "kind": np.zeros((T, F), np.int32),
           "a": np.ones((T, F)), "c": np.zeros((T, F)), "b": np.zeros((T, F))}
    for t, (_, fs) in enumerate(terms):
        enc["nfac"][t] = len(fs)
        for j, (v, kind, a, c, b) in enumerate(fs):
            enc["var"][t, j] = v
            enc["kind"][t, j] = th.KIND_NAMES.index(kind)
            enc["a"][t, j], enc["c"][t, j], enc["b"][t, j] = a, c, b
    return th.check_encoding(enc)


def test_shrinkage_factors_and_counts():
    assert th.r_p(3, 0.25) == pytest.approx(0.75**3, rel=1e-15)
    np.testing.assert_allclose(th.r_p(np.arange(4), 0.5), [1, 0.5, 0.25, 0.125], rtol=0)
    assert th.n_interactions(25, 3) == 2300 == math.comb(25, 3)
    V = np.array([0.3, 0.2, 0.1])  # V_1, V_2, V_3
    q = 0.6
    assert th.predicted_shrinkage(V, 0.4) == pytest.approx(0.3 * q + 0.2 * q**2 + 0.1 * q**3)
    np.testing.assert_allclose(th.predicted_order_variances(V, 0.4),
                               [0.3 * q**2, 0.2 * q**4, 0.1 * q**6], rtol=1e-15)
    with pytest.raises(ValueError, match="p"):
        th.r_p(1, 1.5)


@pytest.mark.parametrize("kind", th.KIND_NAMES)
@pytest.mark.parametrize("dist", [Uniform(-1.0, 2.0, d=1), Normal(d=1, mean=0.3, std=0.8)])
def test_factor_mean_matches_numerical_integration(kind, dist):
    a, c, b = 1.3, -0.4, 0.25
    code = th.KIND_NAMES.index(kind)

    def g(x):
        return float(th.factor_values(code, a, c, b, np.array([x]))[0])

    if hasattr(dist, "low"):
        kink = [(-c / a)] if kind == "abs" else None
        val = integrate.quad(g, dist.low, dist.high, points=kink, epsabs=1e-13)[0]
        truth = val / (dist.high - dist.low)
    else:
        pdf = stats.norm(dist.mean, dist.std).pdf
        lo, hi = dist.mean - 30 * dist.std, dist.mean + 30 * dist.std  # tails < 1e-190
        kink = [(-c / a)] if kind == "abs" else None
        truth = integrate.quad(lambda x: g(x) * pdf(x), lo, hi, points=kink, epsabs=1e-13,
                               limit=200)[0]
    assert th.factor_mean(code, a, c, b, dist) == pytest.approx(truth, abs=1e-10)


def test_closed_forms_of_the_gap_example():
    # F = x1 x2 + x1^2 - 1/3 on Unif(-1, 1)^2: f_1 = x1^2 - 1/3, f_12 = x1 x2, gap = -p/3
    enc = enc_of([(1.0, [(0, "x", 1, 0, 0), (1, "x", 1, 0, 0)]), (1.0, [(0, "x2", 1, 0, 0)]),
                  (-1 / 3, [])])
    dist = Uniform(d=2)
    X = dist.sample(50, seed=4).astype(float)
    gx, mu, g0 = th.factor_tables(enc, dist, X)
    comp = th.components_by_order(enc, gx, mu)
    np.testing.assert_allclose(comp[:, 0], 0.0, atol=1e-15)
    np.testing.assert_allclose(comp[:, 1], X[:, 0] ** 2 - 1 / 3, atol=1e-15)
    np.testing.assert_allclose(comp[:, 2], X[:, 0] * X[:, 1], atol=1e-15)
    for p in (0.1, 0.5, 0.9):
        q = 1 - p
        rhs = q * (X[:, 0] ** 2 - 1 / 3) + q**2 * X[:, 0] * X[:, 1]
        np.testing.assert_allclose(th.conditional_form(enc, gx, mu, p), rhs, atol=1e-15)
        np.testing.assert_allclose(th.shrunk_by_components(enc, gx, mu, p), rhs, atol=1e-15)
        np.testing.assert_allclose(th.zero_gap(enc, gx, mu, g0, p), -p / 3, atol=1e-15)
    assert not th.zero_gap_vanishes(mu, g0, enc)


def test_components_product_equals_subset_sum_on_random_functions():
    rng = np.random.default_rng(0)
    terms = [(rng.normal(), [(v, rng.choice(th.KIND_NAMES), rng.uniform(0.5, 1.5),
                              rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
                             for v in rng.choice(5, size=rng.integers(1, 4), replace=False)])
             for _ in range(6)]
    enc = enc_of(terms)
    for dist in (Uniform(d=5), Normal(d=5)):
        X = dist.sample(20, seed=1).astype(float)
        gx, mu, g0 = th.factor_tables(enc, dist, X)
        # p = 0: both sides are F itself, evaluated directly from the terms
        F = sum(c * np.prod([th.factor_values(th.KIND_NAMES.index(k), a, cc, b, X[:, v])
                             for v, k, a, cc, b in fs], axis=0) for c, fs in terms)
        np.testing.assert_allclose(th.conditional_form(enc, gx, mu, 0.0), F, rtol=1e-12)
        for p in (0.2, 0.7):
            np.testing.assert_allclose(th.conditional_form(enc, gx, mu, p),
                                       th.shrunk_by_components(enc, gx, mu, p), atol=1e-12)


def test_gap_vanishes_for_odd_factors_under_symmetric_inputs():
    enc = enc_of([(2.0, [(0, "x", 1, 0, 0), (1, "sin", 1, 0, 0)])])
    dist = Uniform(d=2)
    X = dist.sample(10, seed=2).astype(float)
    gx, mu, g0 = th.factor_tables(enc, dist, X)
    assert th.zero_gap_vanishes(mu, g0, enc)
    np.testing.assert_allclose(th.zero_gap(enc, gx, mu, g0, 0.3), 0.0, atol=1e-15)


def test_bad_encodings_name_the_field():
    with pytest.raises(ValueError, match="var"):
        enc_of([(1.0, [(0, "x", 1, 0, 0), (0, "sin", 1, 0, 0)])])  # repeated input in a term
    with pytest.raises(ValueError, match="missing"):
        th.check_encoding({"coef": [1.0]})
    with pytest.raises(ValueError, match="kind"):
        th.factor_values(17, 1, 0, 0, np.zeros(2))
