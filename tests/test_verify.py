"""verify.py: Theorem 1 by exact enumeration (1e-10 vs closed forms) and Monte Carlo (within
z standard errors), the zero-imputation gap, Theorem 2's gradients and S(p) on ensembles."""

import numpy as np
import pytest

from fanova_gpu import theory as th
from fanova_gpu import verify as V
from fanova_gpu.data import Normal, Uniform
from tests.test_theory import enc_of

GAP = enc_of([(1.0, [(0, "x", 1, 0, 0), (1, "x", 1, 0, 0)]), (1.0, [(0, "x2", 1, 0, 0)]),
              (-1 / 3, [])])  # F = x1 x2 + x1^2 - 1/3


def random_enc(seed, d, kinds=th.KIND_NAMES):
    rng = np.random.default_rng(seed)
    return enc_of([(rng.normal(), [(int(v), str(rng.choice(kinds)), rng.uniform(0.5, 1.5),
                                    rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
                                   for v in rng.choice(d, size=rng.integers(1, 4), replace=False)])
                    for _ in range(5)])


@pytest.mark.parametrize("dist", [Uniform(d=5), Normal(d=5, mean=0.2, std=0.7)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.85])
def test_exact_enumeration_equals_closed_forms(dist, p):
    enc = random_enc(3, 5)
    X = dist.sample(12, seed=5).astype(float)
    gx, mu, g0 = th.factor_tables(enc, dist, X)
    rep = V.theorem1(enc, dist, p, X, method="exact")
    assert rep.method == "exact" and rep.ok
    np.testing.assert_allclose(rep.lhs_conditional, th.shrunk_by_components(enc, gx, mu, p),
                               atol=1e-10)
    np.testing.assert_allclose(rep.lhs_zero, th.zero_form(enc, gx, g0, p), atol=1e-10)
    zero = V.theorem1(enc, dist, p, X, method="exact", form="zero")
    np.testing.assert_allclose(zero.gap, th.zero_gap(enc, gx, mu, g0, p), atol=1e-10)


def test_gap_example_is_minus_p_over_3():
    dist = Uniform(d=2)
    X = dist.sample(8, seed=0)
    for p in (0.1, 0.25, 0.5):
        rep = V.theorem1(GAP, dist, p, X, method="exact")
        assert rep.ok
        np.testing.assert_allclose(rep.gap, -p / 3, atol=1e-12)
        zero = V.theorem1(GAP, dist, p, X, method="exact", form="zero")
        assert not zero.ok and zero.max_abs_error == pytest.approx(p / 3, abs=1e-12)
    mc = V.theorem1(GAP, dist, 0.25, X, method="mc", samples=40_000, seed=3, device="cpu")
    # the MC gap is mean(zero) - rhs: within z standard errors of -p/3
    assert np.all(np.abs(mc.gap + 0.25 / 3) <= 5 * mc.stderr_zero)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_monte_carlo_within_its_confidence_interval(device):
    dist = Uniform(d=5)
    enc = random_enc(7, 5)
    X = dist.sample(16, seed=2)
    gx, mu, g0 = th.factor_tables(enc, dist, X.astype(float))
    p = 0.3
    rep = V.theorem1(enc, dist, p, X, method="mc", samples=20_000, seed=1, device=device)
    truth = th.shrunk_by_components(enc, gx, mu, p)  # independent of the kernels
    zsc = (rep.lhs_conditional - truth) / rep.stderr_conditional
    assert rep.ok and np.all(np.abs(zsc) < 5)
    zz = (rep.lhs_zero - th.zero_form(enc, gx, g0, p)) / rep.stderr_zero
    assert np.all(np.abs(zz) < 5)
    # the standard error is that of a mean of `samples` draws: check its scale by a rerun
    rep2 = V.theorem1(enc, dist, p, X, method="mc", samples=20_000, seed=2, device=device)
    spread = (rep.lhs_conditional - rep2.lhs_conditional) / np.sqrt(2) / rep.stderr_conditional
    assert 0.3 < np.std(spread) < 2.0


def test_callable_exact_by_quadrature_and_mc_by_torch():
    dist = Uniform(d=3)
    enc = random_enc(11, 3, kinds=("x", "x2", "sin", "cos", "exp"))  # smooth: Gauss is exact

    def F(X):
        gx, _, _ = th.factor_tables(enc, dist, X)
        return th.conditional_form(enc, gx, np.ones_like(gx[0]), 0.0)

    X = dist.sample(5, seed=9).astype(float)
    gx, mu, g0 = th.factor_tables(enc, dist, X)
    for p in (0.2, 0.6):
        rep = V.theorem1(F, dist, p, X, method="exact")
        assert rep.ok
        np.testing.assert_allclose(rep.rhs, th.shrunk_by_components(enc, gx, mu, p), atol=1e-10)
        np.testing.assert_allclose(rep.lhs_zero, th.zero_form(enc, gx, g0, p), atol=1e-10)
    rep = V.theorem1(F, dist, 0.4, X, method="mc", samples=8192, seed=0, device="cpu")
    assert rep.ok
    assert np.all(np.abs(rep.lhs_zero - th.zero_form(enc, gx, g0, 0.4)) <= 5 * rep.stderr_zero)


def test_theorem2_exact_at_theta_zero_and_closed_form_away():
    dist = Uniform(d=4)
    for p in (0.2, 0.5):
        rep = V.theorem2(dist, p, max_order=3, basis="x", n=400, samples=300, seed=1)
        assert rep.exact_expected and rep.ok
        np.testing.assert_allclose(rep.ratio_exact, (1 - p) ** np.arange(1, 4), atol=1e-12)
        assert np.all(rep.residual < 1e-12)
    # away from theta = 0: E_M grad_u = -(1/n) sum_i [q^|u| Y phi_u - sum_v theta_v q^|u v v|
    # phi_u phi_v] for h(0) = 0 (mask bits of distinct inputs are independent)
    p, q = 0.3, 0.7
    rep = V.theorem2(dist, p, max_order=2, basis="sin", n=300, theta_scale=0.7, samples=200,
                     seed=2)
    info = rep.info
    Phi = np.stack([np.prod(np.sin(info["X"][:, list(u)]) - 0.0, axis=1)
                    for u in info["subsets"]], axis=1)  # E sin(X) = 0 on Unif(-1, 1)
    sizes = [len(u) for u in info["subsets"]]
    union = np.array([[len(set(u) | set(v)) for v in info["subsets"]] for u in info["subsets"]])
    G = -(q ** np.array(sizes) * (Phi.T @ info["Y"])
          - ((q**union) * (Phi.T @ Phi)) @ info["theta"]) / Phi.shape[0]
    np.testing.assert_allclose(info["grad_masked_exact"], G, atol=1e-12)
    assert not rep.exact_expected and rep.ok  # MC agrees with the exact expectation


def test_theorem2_zero_imputation_breaks_when_h0_is_not_zero():
    dist = Uniform(d=3)
    p, q = 0.4, 0.6
    rep = V.theorem2(dist, p, max_order=2, basis="x2", n=300, samples=200, seed=0)
    info = rep.info
    h = info["X"] ** 2 - 1 / 3
    h0 = -1 / 3
    assert info["h(0)"] == pytest.approx(h0)
    # theta = 0: E_M phi_u(X*M) = prod_{i in u} (q h_i + p h0)
    Em = np.stack([np.prod(q * h[:, list(u)] + p * h0, axis=1) for u in info["subsets"]], 1)
    np.testing.assert_allclose(info["grad_masked_exact"], -(Em.T @ info["Y"]) / 300, atol=1e-12)
    assert not rep.exact_expected and rep.ok
    assert abs(rep.ratio_exact[1] - q**2) > 0.01


def test_masked_shrinkage_matches_sum_of_shrunk_orders():
    # F = x0 x1 + x2 on Unif(-1, 1)^3: V_1 = 1/3, V_2 = 1/9, so S(p) = q/3 + q^2/9
    dist = Uniform(d=3)

    def F(X):  # [n, 3] -> [2, n]: two "replicas", the second scaled by 2 (S scales by 4)
        y = X[:, 0] * X[:, 1] + X[:, 2]
        return np.stack([y, 2 * y])

    Vk = np.array([[1 / 3, 1 / 9, 0.0, 0.0], [4 / 3, 4 / 9, 0.0, 0.0]])
    for p in (0.2, 0.6):
        q = 1 - p
        rep = V.masked_shrinkage(F, dist, p, n=20_000, seed=1, variance_by_order=Vk,
                                 device="cpu")
        truth = np.array([1, 4]) * (q / 3 + q**2 / 9)
        np.testing.assert_allclose(rep.predicted, truth, rtol=1e-12)
        assert np.all(np.abs(rep.measured - truth) <= 5 * rep.stderr) and rep.ok
        # zero imputation: Cov(F, F(X*M)) = q^2/9 + q/3 too here (odd factors, symmetric)
        assert np.all(np.abs(rep.zero_imputed - truth) <= 5 * rep.zero_stderr)


def test_bad_input_names_the_field():
    dist = Uniform(d=2)
    X = dist.sample(3)
    with pytest.raises(ValueError, match="p"):
        V.theorem1(GAP, dist, 1.5, X)
    with pytest.raises(ValueError, match="form"):
        V.theorem1(GAP, dist, 0.1, X, form="half")
    with pytest.raises(ValueError, match="points"):
        V.theorem1(GAP, dist, 0.1, X[:, :1])
    with pytest.raises(ValueError, match="samples"):
        V.theorem1(GAP, dist, 0.1, X, method="mc", samples=1)
    with pytest.raises(ValueError, match="device"):
        V.theorem1(GAP, dist, 0.1, X, method="mc", device="tpu")
    with pytest.raises(ValueError, match="basis"):
        V.theorem2(dist, 0.1, basis="relu")


def test_subset_enumeration_helper_is_complete():
    keep, w = V._mask_table(4, 0.3)
    assert keep.shape == (16, 4) and len({tuple(k) for k in keep}) == 16
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    for k, wk in zip(keep, w, strict=True):
        assert wk == pytest.approx(0.7 ** k.sum() * 0.3 ** (4 - k.sum()), rel=1e-14)


def test_product_sums_from_functions_module():
    from fanova_gpu import functions as fns

    assert tuple(fns.KINDS[: len(th.KIND_NAMES)]) == th.KIND_NAMES
    f = fns.random_product_sum(6, orders=[1, 2, 3, 4], seed=3,
                               kinds=("x", "x2", "sin", "cos", "exp", "abs", "x3", "x4"))
    X = f.dist.sample(10, seed=1)
    for p in (0.1, 0.5):
        rep = V.theorem1(f, f.dist, p, X, method="exact")  # rhs: f.shrunk, written separately
        assert rep.ok and "ProductSum" in rep.info["rhs_source"]
        np.testing.assert_allclose(rep.lhs, f.shrunk(X, p), atol=1e-10)
    rep = V.theorem1(f, f.dist, 0.3, X, method="mc", samples=20_000, device="cpu")
    assert rep.ok
    with pytest.raises(ValueError, match="dist"):
        V.theorem1(f, Uniform(-2.0, 2.0, d=6), 0.3, X)


def test_masked_shrinkage_against_sobol_orders():
    from fanova_gpu import functions as fns

    f = fns.random_product_sum(4, orders=[1, 2, 3], seed=5, centered=True)
    truth_V = f.variance_by_order(3)
    p = 0.4
    rep = V.masked_shrinkage(f, f.dist, p, n=20_000, seed=2, max_order=3, n_sobol=2000)
    truth = th.predicted_shrinkage(truth_V[:3], p)
    assert abs(rep.measured[0] - truth) <= 5 * rep.stderr[0]
    assert abs(rep.predicted[0] - truth) <= 5 * rep.predicted_stderr[0] + 1e-12
    assert rep.ok


def test_masked_shrinkage_on_random_relu_nets_vs_sobol():
    # stacked random ReLU nets [n, d] -> [R, n] stand in for a ReplicaRun's predict
    rng = np.random.default_rng(0)
    R, d, w = 2, 3, 16
    dims = [d, w, w, 1]
    Ws = [np.stack([rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b)) for _ in range(R)])
          for a, b in zip(dims, dims[1:], strict=False)]

    def nets(X):
        h = np.broadcast_to(np.asarray(X, np.float64), (R, *X.shape))
        for i, W in enumerate(Ws):
            h = h @ W
            h = np.maximum(h, 0.0) if i < len(Ws) - 1 else h
        return h[..., 0]

    rep = V.masked_shrinkage(nets, Uniform(d=d), 0.3, n=20_000, max_order=3, n_sobol=4000,
                             seed=3, device="cpu")
    assert rep.measured.shape == (R,) and np.all(rep.stderr > 0)
    assert rep.ok  # |measured - sum_k q^k V_k(sobol)| within 5 combined standard errors


def test_quadrature_components_against_the_grid_decomposition():
    # an independent implementation (decompose.grid: orthonormal basis + Parseval) gives
    # Var f_u; ours: Moebius of conditional expectations, squared and integrated on a grid
    from fanova_gpu.decompose import decompose
    from fanova_gpu.decompose.grid import quadrature

    dist = Uniform(d=3)

    def F(X):
        return X[:, 0] * X[:, 1] ** 2 + np.sin(X[:, 2]) * X[:, 0] + X[:, 1] * X[:, 2] ** 3

    nodes = 10
    z, w = quadrature(dist, nodes)
    G = np.stack(np.meshgrid(z, z, z, indexing="ij"), axis=-1).reshape(-1, 3)
    W = np.einsum("i,j,k->ijk", w, w, w).reshape(-1)
    comp = V.components(F, dist, G, nodes=10)
    truth = decompose(F, dist, method="grid", max_order=3, nodes=nodes,
                      return_subsets=True).info["subset_variances"]
    for u, var in truth.items():
        assert W @ comp[u] ** 2 == pytest.approx(var, abs=1e-10)
