"""sobol: unbiased Monte Carlo order variances vs exact values, and its own stderr."""

import itertools

import numpy as np
import pytest
import torch

import fanova_gpu as fg
from fanova_gpu.decompose.sobol import budget_evaluations, moebius_steps, subsets_up_to
from fanova_gpu.functions import g_function, ishigami, random_product_sum


def _within(res, f, K, z=4.0):
    exact = f.variance_by_order(K)
    tol = z * res.stderr + 1e-12 * f.total_variance  # entries that are exactly 0 have se ~ 0
    assert np.all(np.abs(res.variance_by_order - exact) <= tol), (res.variance_by_order, exact,
                                                                 res.stderr)
    assert abs(res.total_variance - f.total_variance) <= z * res.info["total_stderr"]


def test_moebius_steps_match_dense_inversion():
    # the fast transform equals sum_{v subset u} (-1)^{|u|-|v|} g(v), computed by enumeration
    d, K = 5, 3
    subs = subsets_up_to(d, K)
    g = np.random.default_rng(0).normal(size=len(subs))
    D = g.copy()
    for child, parent in moebius_steps(subs, d):
        D[child] -= D[parent]
    index = {u: j for j, u in enumerate(subs)}
    for j, u in enumerate(subs):
        ref = sum((-1) ** (len(u) - len(v)) * g[index[v]]
                  for r in range(len(u) + 1) for v in itertools.combinations(u, r))
        assert D[j] == pytest.approx(ref, abs=1e-12)
    assert len(subsets_up_to(25, 3)) == 2626
    assert budget_evaluations(25, 3, 1000, 2) == 1000 * (2 * 2626 + 1)


def test_g_function_within_4_stderr():
    f = g_function([0.0, 1.0, 4.5, 9.0, 99.0, 99.0])
    res = fg.decompose(f, f.dist, method="sobol", max_order=3, n=3000, complements=3, seed=1)
    assert res.method == "sobol" and res.stderr.shape == (4,)
    _within(res, f, 3)
    assert res.info["evaluations"] == 3000 * (3 * 42 + 1)


def test_ishigami_within_4_stderr():
    f = ishigami()
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=4000, seed=2)
    _within(res, f, 2)


def test_d25_product_sum_orders_1_to_4():
    f = random_product_sum(d=25, orders=[1, 2, 3, 4, 1, 2], seed=7)
    res = fg.decompose(f, f.dist, method="sobol", max_order=3, n=300, seed=3)
    assert res.info["subsets"] == 2626
    _within(res, f, 3)
    assert f.variance_by_order(3)[3] > 0  # the order-4 term lands in the tail


def test_subset_variances_within_4_stderr():
    f = g_function([0.0, 0.5, 3.0, 9.0])
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=3000, seed=4,
                       return_subsets=True)
    exact = f.subset_variances()
    sv, se = res.info["subset_variances"], res.info["subset_stderr"]
    assert len(sv) == 4 + 6
    for u, v in sv.items():
        assert abs(v - exact[u]) <= 4 * se[u], u


def test_stderr_is_calibrated_over_seeds():
    # spread of 25 independent estimates vs the stderr each run reports: ratio within 1.5
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=2, n=400, seed=s)
            for s in range(25)]
    est = np.array([np.r_[r.variance_by_order, r.total_variance] for r in runs])  # [25, 4]
    se = np.array([np.r_[r.stderr, r.info["total_stderr"]] for r in runs])
    ratio = est.std(axis=0, ddof=1) / np.sqrt((se**2).mean(axis=0))
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), ratio
    # the shares V_k / Var: delta-method stderr against the spread too
    fr = np.array([r.variance_by_order / r.total_variance for r in runs])
    fse = np.array([r.info["fraction_stderr"] for r in runs])
    fratio = fr.std(axis=0, ddof=1) / np.sqrt((fse**2).mean(axis=0))
    assert np.all((fratio > 1 / 1.5) & (fratio < 1.5)), fratio
    # and the mean over seeds is unbiased: within 4 stderr of the mean of 25 runs
    exact = np.r_[f.variance_by_order(2), f.total_variance]
    assert np.all(np.abs(est.mean(0) - exact) <= 4 * est.std(0, ddof=1) / 5)


def test_replica_axis_equals_per_replica_calls_and_chunking():
    fs = [random_product_sum(d=5, orders=[1, 2, 3], seed=s) for s in range(3)]
    dist = fs[0].dist

    def batched(X):
        return np.stack([f(X) for f in fs])  # [R, n]

    res = fg.decompose(batched, dist, method="sobol", max_order=2, n=150, seed=5, batch_size=40)
    assert res.variance_by_order.shape == (3, 3) and res.stderr.shape == (3, 3)
    assert res.total_variance.shape == (3,)
    for r, f in enumerate(fs):
        one = fg.decompose(f, dist, method="sobol", max_order=2, n=150, seed=5, batch_size=150)
        np.testing.assert_allclose(res.variance_by_order[r], one.variance_by_order, rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(res.stderr[r], one.stderr, rtol=1e-7, atol=1e-12)


def test_torch_module_input():
    f = random_product_sum(d=4, orders=[1, 2], seed=2, kinds=("x", "x2"))
    enc = f.encode()

    class Poly(torch.nn.Module):  # the same polynomial, in torch, with a replica axis
        def forward(self, X):
            out = torch.zeros(X.shape[0], dtype=X.dtype)
            for t in range(len(enc["coef"])):
                val = torch.full_like(out, float(enc["coef"][t]))
                for j in range(enc["nfac"][t]):
                    zz = float(enc["a"][t, j]) * X[:, int(enc["var"][t, j])] + float(enc["c"][t, j])
                    base = zz if enc["kind"][t, j] == 0 else zz * zz
                    val = val * (base + float(enc["b"][t, j]))
                out = out + val
            return out[None]

    a = fg.decompose(Poly(), f.dist, method="sobol", max_order=2, n=200, seed=1, device="cpu")
    b = fg.decompose(f, f.dist, method="sobol", max_order=2, n=200, seed=1)
    assert a.variance_by_order.shape == (1, 3)
    np.testing.assert_allclose(a.variance_by_order[0], b.variance_by_order, rtol=1e-9,
                               atol=1e-12)
    assert a.info["device"] == "cpu"


def test_target_stops_early():
    f = g_function([0.0, 1.0, 9.0])
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=100_000, seed=0,
                       batch_size=100, target=0.02, min_n=200)
    assert res.info["n"] < 100_000
    assert np.all(res.stderr <= 0.02 * res.total_variance)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"complements": 1}, "complements"),
        ({"n": 1}, "n"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"input": "jax"}, "input"),
        ({"target": -0.1}, "target"),
        ({"batch_size": 0}, "batch_size"),
        ({"sampler": "halton"}, "sampler"),
        ({"scrambles": 1}, "scrambles"),
    ],
)
def test_bad_input_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        fg.decompose(lambda X: X[:, 0], fg.Uniform(d=2), method="sobol", **kwargs)


def test_bad_output_shape_names_f():
    with pytest.raises(ValueError, match="f"):
        fg.decompose(lambda X: X, fg.Uniform(d=2), method="sobol", n=10)


def test_scrambled_sobol_sampler_within_4_stderr_and_calibrated():
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=2, n=512, seed=s, sampler="sobol",
                         scrambles=8) for s in range(25)]
    assert runs[0].info["n"] == 512 and runs[0].info["groups"] == 8
    for r in runs[:3]:
        _within(r, f, 2)
    est = np.array([np.r_[r.variance_by_order, r.total_variance] for r in runs])
    se = np.array([np.r_[r.stderr, r.info["total_stderr"]] for r in runs])
    ratio = est.std(axis=0, ddof=1) / np.sqrt((se**2).mean(axis=0))
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), ratio


def test_normal_inputs_hand_values_and_k_above_d():
    # F = x0 x1 + x0^2 + exp(x2/2) on N(0,1)^3: V_0 = 2, V_2 = e^(1/4)(e^(1/4) - 1), V_01 = 1
    def f(X):
        return X[:, 0] * X[:, 1] + X[:, 0] ** 2 + np.exp(0.5 * X[:, 2])

    v2 = np.exp(0.25) * (np.exp(0.25) - 1)
    exact = np.array([2 + v2, 1.0, 0.0, 0.0, 0.0])  # K = 4 > d = 3: orders 3, 4, >4 are 0
    res = fg.decompose(f, fg.Normal(d=3), method="sobol", max_order=4, n=4000, seed=6)
    assert res.info["subsets"] == 8
    assert np.all(np.abs(res.variance_by_order - exact) <= 4 * res.stderr + 1e-12)
    assert res.stderr[3] == 0.0 and res.variance_by_order[3] == 0.0  # no subset of size 4
    assert abs(res.total_variance - (3 + v2)) <= 4 * res.info["total_stderr"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    f = random_product_sum(d=6, orders=[1, 2, 3], seed=1)
    a = fg.decompose(f, f.dist, method="sobol", max_order=3, n=300, seed=2, device="cpu")
    b = fg.decompose(f, f.dist, method="sobol", max_order=3, n=300, seed=2, device="cuda")
    assert b.info["device"].startswith("cuda")
    np.testing.assert_allclose(b.variance_by_order, a.variance_by_order, rtol=1e-9, atol=1e-12)


def test_staged_design_within_4_stderr_and_calibrated():
    # n and complements per order: stage k uses subsets of size <= k; estimates are pooled
    f = random_product_sum(d=6, orders=[1, 2, 3, 4], seed=1)
    kw = dict(method="sobol", max_order=3, n=[400, 100, 50], complements=[2, 4, 8])
    runs = [fg.decompose(f, f.dist, seed=s, **kw) for s in range(25)]
    r0 = runs[0]
    assert r0.info["n"] == [400, 100, 50] and r0.info["complements"] == [2, 4, 8]
    assert r0.info["evaluations"] == sum(budget_evaluations(6, k, n, m) for k, n, m in
                                         zip([1, 2, 3], [400, 100, 50], [2, 4, 8], strict=True))
    _within(r0, f, 3)
    est = np.array([np.r_[r.variance_by_order, r.total_variance] for r in runs])
    se = np.array([np.r_[r.stderr, r.info["total_stderr"]] for r in runs])
    ratio = est.std(axis=0, ddof=1) / np.sqrt((se**2).mean(axis=0))
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), ratio
    exact = np.r_[f.variance_by_order(3), f.total_variance]
    assert np.all(np.abs(est.mean(0) - exact) <= 4 * est.std(0, ddof=1) / 5)


def test_staged_subsets_and_target():
    f = g_function([0.0, 0.5, 3.0, 9.0])
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=[2000, 1000], seed=3,
                       return_subsets=True)
    exact = f.subset_variances()
    for u, v in res.info["subset_variances"].items():
        assert abs(v - exact[u]) <= 4 * res.info["subset_stderr"][u], u
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=[50_000, 50_000], seed=0,
                       batch_size=100, target=0.02)
    assert all(k < 50_000 for k in res.info["n"])
    # stages stop against the first stage's Var F; the pooled Var F differs from it by about
    # its own stderr (~1%), hence the 1.05 allowance
    assert np.all(res.stderr[:2] <= 0.02 * 1.05 * res.total_variance)


def test_staged_bad_lengths_name_field():
    with pytest.raises(ValueError, match="n"):
        fg.decompose(lambda X: X[:, 0], fg.Uniform(d=3), method="sobol", max_order=3, n=[10, 10])
    with pytest.raises(ValueError, match="complements"):
        fg.decompose(lambda X: X[:, 0], fg.Uniform(d=3), method="sobol", max_order=2,
                     complements=[2, 1])


def _calibrated(runs, exact, limit=1.5):
    """Spread of independent estimates vs reported stderr within `limit`; mean unbiased."""
    est = np.array([np.r_[r.variance_by_order, r.total_variance] for r in runs])
    se = np.array([np.r_[r.stderr, r.info["total_stderr"]] for r in runs])
    ratio = est.std(axis=0, ddof=1) / np.sqrt((se**2).mean(axis=0))
    assert np.all((ratio > 1 / limit) & (ratio < limit)), ratio
    k = len(runs)
    assert np.all(np.abs(est.mean(0) - exact) <= 4 * est.std(0, ddof=1) / np.sqrt(k))


@pytest.mark.parametrize("estimator,m", [("saltelli", 1), ("saltelli", 3), ("combined", 2)])
def test_first_moment_estimators_within_4_stderr(estimator, m):
    f = g_function([0.0, 1.0, 4.5, 9.0, 99.0, 99.0])
    res = fg.decompose(f, f.dist, method="sobol", max_order=3, n=3000, complements=m, seed=1,
                       estimator=estimator)
    assert res.info["estimator"] == estimator
    _within(res, f, 3)
    g = ishigami()
    _within(fg.decompose(g, g.dist, method="sobol", max_order=2, n=4000, complements=m, seed=2,
                         estimator=estimator), g, 2)


def test_saltelli_one_complement_calibrated_over_seeds():
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=2, n=400, complements=1, seed=s,
                         estimator="saltelli") for s in range(25)]
    assert runs[0].info["evaluations"] == budget_evaluations(4, 2, 400, 1)
    _calibrated(runs, np.r_[f.variance_by_order(2), f.total_variance])


def test_combined_calibrated_over_seeds():
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=2, n=400, complements=2, seed=s,
                         estimator="combined") for s in range(25)]
    _calibrated(runs, np.r_[f.variance_by_order(2), f.total_variance])


def test_saltelli_scrambled_sobol_few_nets_calibrated():
    # 4 independent scrambles of one non-power-of-two net size: leave-one-net-out centring
    # keeps it unbiased; stderr from the spread of the 4 net estimates
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=1, n=1200, complements=1,
                         seed=s, sampler="sobol", scrambles=4, estimator="saltelli")
            for s in range(25)]
    assert runs[0].info["n"] == 1200 and runs[0].info["groups"] == 4
    _calibrated(runs, np.r_[f.variance_by_order(1), f.total_variance])


def test_staged_per_stage_estimators_calibrated():
    f = random_product_sum(d=6, orders=[1, 2, 3, 4], seed=1)
    kw = dict(method="sobol", max_order=3, n=[400, 100, 50], complements=[1, 2, 4],
              estimator=["saltelli", "combined", "ustat"])
    runs = [fg.decompose(f, f.dist, seed=s, **kw) for s in range(25)]
    _within(runs[0], f, 3)
    _calibrated(runs, np.r_[f.variance_by_order(3), f.total_variance])


def test_mirror_exact_on_additive_and_within_4_stderr():
    # additive F: the mirrored per-point estimate of V_1 equals the per-point Var F estimate
    # (F(x) - F(z))^2 / 2 identically, so V_1 == Var F and V_>1 == 0 up to rounding
    f = random_product_sum(d=5, orders=[1, 1, 1, 1], seed=3)
    res = fg.decompose(f, f.dist, method="sobol", max_order=2, n=300, complements=1, seed=1,
                       estimator="saltelli", mirror=True)
    assert res.info["evaluations"] == budget_evaluations(5, 2, 300, 1, mirror=True)
    assert res.variance_by_order[0] == pytest.approx(res.total_variance, rel=1e-10)
    assert abs(res.variance_by_order[1]) <= 1e-10 * res.total_variance
    _within(res, f, 2)
    g = ishigami()
    _within(fg.decompose(g, g.dist, method="sobol", max_order=2, n=3000, complements=1, seed=2,
                         estimator="saltelli", mirror=True), g, 2)


@pytest.mark.parametrize("sampler", ["random", "sobol"])
def test_mirror_calibrated_over_seeds(sampler):
    f = g_function([0.0, 1.0, 2.0, 9.0])
    runs = [fg.decompose(f, f.dist, method="sobol", max_order=2, n=400, complements=1, seed=s,
                         estimator="saltelli", mirror=True, sampler=sampler, scrambles=4)
            for s in range(25)]
    _calibrated(runs, np.r_[f.variance_by_order(2), f.total_variance])


def test_staged_pool_first_calibrated():
    # V_k from stage k alone, Var F from stage 1: unbiased, stderr calibrated
    f = random_product_sum(d=6, orders=[1, 2, 3, 4], seed=1)
    kw = dict(method="sobol", max_order=3, n=[400, 100, 50], complements=[1, 2, 4],
              estimator=["saltelli", "combined", "ustat"], mirror=True, pool="first")
    runs = [fg.decompose(f, f.dist, seed=s, **kw) for s in range(25)]
    assert runs[0].info["evaluations"] == sum(
        budget_evaluations(6, k, n, m, mirror=True)
        for k, n, m in zip([1, 2, 3], [400, 100, 50], [1, 2, 4], strict=True))
    _within(runs[0], f, 3)
    _calibrated(runs, np.r_[f.variance_by_order(3), f.total_variance])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"pool": "inverse"}, "pool"),
        ({"mirror": 1}, "mirror"),
        ({"estimator": "jansen"}, "estimator"),
        ({"estimator": ["saltelli", "ustat"], "max_order": 3}, "estimator"),
        ({"complements": 1, "estimator": "combined"}, "complements"),
        ({"complements": 1, "estimator": "saltelli", "return_subsets": True}, "complements"),
        ({"complements": [1, 1], "estimator": ["saltelli", "ustat"], "max_order": 2},
         "complements"),
    ],
)
def test_estimator_bad_input_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        fg.decompose(lambda X: X[:, 0], fg.Uniform(d=3), method="sobol", **kwargs)


def test_mirror_replica_axis_equals_per_replica_calls_and_chunking():
    fs = [random_product_sum(d=5, orders=[1, 2, 3], seed=s) for s in range(3)]

    def batched(X):
        return np.stack([f(X) for f in fs])  # [R, n]

    kw = dict(method="sobol", max_order=2, n=150, seed=5, complements=1, estimator="saltelli",
              mirror=True)
    res = fg.decompose(batched, fs[0].dist, batch_size=40, **kw)
    for r, f in enumerate(fs):
        one = fg.decompose(f, f.dist, batch_size=150, **kw)
        np.testing.assert_allclose(res.variance_by_order[r], one.variance_by_order, rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(res.stderr[r], one.stderr, rtol=1e-7, atol=1e-12)
