"""grid: exact fANOVA by tensor quadrature, against closed forms."""

import math

import numpy as np
import pytest

import fanova_gpu as fg
from fanova_gpu.functions import Factor, ProductSum, Term, ishigami, random_product_sum


def test_hand_polynomial_uniform():
    # F = x0 x1 + x0^2 on U(-1,1)^3: V_0 = 1/5 - 1/9, V_01 = 1/9, nothing else
    res = fg.decompose(lambda X: X[:, 0] * X[:, 1] + X[:, 0] ** 2, fg.Uniform(-1, 1, d=3),
                       method="grid", max_order=2, nodes=3, return_subsets=True)
    assert res.method == "grid" and res.stderr is None
    np.testing.assert_allclose(res.variance_by_order, [4 / 45, 1 / 9, 0.0], rtol=1e-12, atol=1e-15)
    assert res.total_variance == pytest.approx(4 / 45 + 1 / 9, rel=1e-12)
    sv = res.info["subset_variances"]
    assert sv[(0,)] == pytest.approx(4 / 45, rel=1e-12) and abs(sv[(1,)]) < 1e-15
    assert len(sv) == 3 + 3
    assert res.info["mean"] == pytest.approx(1 / 3, rel=1e-12)


def test_hand_normal():
    # F = x0 x1 + x0^2 + exp(x2/2) on N(0,1)^3: V_0 = 2, V_2 = e^(1/4)(e^(1/4) - 1), V_01 = 1
    def f(X):
        return X[:, 0] * X[:, 1] + X[:, 0] ** 2 + np.exp(0.5 * X[:, 2])

    res = fg.decompose(f, fg.Normal(d=3), method="grid", max_order=3, nodes=30)
    v2 = math.exp(0.25) * (math.exp(0.25) - 1)
    np.testing.assert_allclose(res.variance_by_order, [2 + v2, 1.0, 0.0, 0.0], rtol=1e-10,
                               atol=1e-13)


def test_polynomial_product_sum_all_orders():
    # degree <= 3 per variable, so F^2 has degree <= 6 < 2 * 4 nodes: quadrature is exact
    f = random_product_sum(d=6, orders=[1, 2, 3, 4, 6, 2], seed=4, kinds=("x", "x2", "x3"))
    res = fg.decompose(f, f.dist, method="grid", max_order=6, nodes=4, return_subsets=True)
    np.testing.assert_allclose(res.variance_by_order, f.variance_by_order(6), rtol=1e-10,
                               atol=1e-14 * f.total_variance)
    assert res.total_variance == pytest.approx(f.total_variance, rel=1e-10)
    exact = f.subset_variances()
    for u, v in res.info["subset_variances"].items():
        assert v == pytest.approx(exact.get(u, 0.0), rel=1e-8, abs=1e-13)
    k3 = fg.decompose(f, f.dist, method="grid", max_order=3, nodes=4)
    np.testing.assert_allclose(k3.variance_by_order, f.variance_by_order(3), rtol=1e-10)


def test_ishigami_constants():
    f = ishigami()
    res = fg.decompose(f, f.dist, method="grid", max_order=2, nodes=40, return_subsets=True)
    a, b, pi = 7.0, 0.1, math.pi
    sv = res.info["subset_variances"]
    assert sv[(0,)] == pytest.approx(0.5 * (1 + b * pi**4 / 5) ** 2, rel=1e-10)
    assert sv[(1,)] == pytest.approx(a**2 / 8, rel=1e-10)
    assert sv[(0, 2)] == pytest.approx(b**2 * pi**8 * (1 / 18 - 1 / 50), rel=1e-10)
    assert res.total_variance == pytest.approx(13.844587940719, rel=1e-10)


def test_smooth_shared_variables_match_product_sum():
    f = ProductSum(
        [
            Term(1.2, ((0, Factor("sin", a=1.1, c=0.3)), (1, Factor("exp", a=0.5)))),
            Term(-0.7, ((1, Factor("cos", a=0.9, b=0.2)), (3, Factor("x2", c=0.4)))),
            Term(0.5, ((0, Factor("x", b=0.3)), (2, Factor("x3")), (3, Factor("exp", a=-0.6)))),
        ],
        fg.Normal(d=4, mean=0.2, std=0.7),
    )
    res = fg.decompose(f, f.dist, method="grid", max_order=4, nodes=24)
    np.testing.assert_allclose(res.variance_by_order, f.variance_by_order(4), rtol=1e-10,
                               atol=1e-14)


def test_replica_axis_equals_per_replica_calls():
    fs = [random_product_sum(d=4, orders=[1, 2, 3], seed=s, kinds=("x", "x2")) for s in range(3)]
    dist = fs[0].dist

    def batched(X):
        return np.stack([f(X) for f in fs])  # [R, n]

    res = fg.decompose(batched, dist, method="grid", max_order=2, nodes=3, chunk=7)
    assert res.variance_by_order.shape == (3, 3) and res.total_variance.shape == (3,)
    for r, f in enumerate(fs):
        one = fg.decompose(f, dist, method="grid", max_order=2, nodes=3)
        assert one.variance_by_order.shape == (3,)
        np.testing.assert_allclose(res.variance_by_order[r], one.variance_by_order, rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_allclose(res.variance_by_order[r], f.variance_by_order(2), rtol=1e-10,
                                   atol=1e-14)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"dist": fg.Uniform(d=9), "nodes": 8}, "dist.d"),
        ({"dist": "uniform"}, "dist"),
        ({"nodes": 0}, "nodes"),
        ({"chunk": 0}, "chunk"),
        ({"f": lambda X: X}, "f"),
    ],
)
def test_bad_input_names_field(kwargs, field):
    args = {"f": lambda X: X[:, 0], "dist": fg.Uniform(d=2), "nodes": 4}
    args.update(kwargs)
    f, dist = args.pop("f"), args.pop("dist")
    with pytest.raises(ValueError, match=field):
        fg.decompose(f, dist, method="grid", **args)


def test_torch_module_is_called_with_a_tensor():
    import torch

    class Prod(torch.nn.Module):
        def forward(self, X):  # [n, 2] float32 -> [1, n]
            return (X[:, 0] * X[:, 1])[None]

    res = fg.decompose(Prod(), fg.Uniform(-1, 1, d=2), method="grid", max_order=2, nodes=3)
    assert res.variance_by_order.shape == (1, 3)
    np.testing.assert_allclose(res.variance_by_order[0], [0.0, 1 / 9, 0.0], atol=1e-7)
