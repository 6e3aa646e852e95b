"""distill: the paper's XGBoost depth-staged split against exact fANOVA truths.

Truths (fanova_gpu.functions, exact; on Unif(-1, 1)^4):
  main_effects  sin x0 + cos x1                 V = [cos^2(1), 0, 0, 0]       (closed form)
  pure_pair     sin x0 (cos x1 - sin 1)         all variance in order 2
  pure_triple   sin x0 (cos x1 - sin 1) x2      all variance in order 3
  pure_quad     x0 x1 x2 x3                     all variance in order 4 (> K = 3)

Distillation is biased by construction, so its tolerance is a budget, stated here, for the share
of variance fraction_k = V_k / Var F (truth: 1 on the planted order, 0 elsewhere):
  tau = (1 - R2_FLOOR) + NOISE_FIT + SAMPLING
  - approximation: the planted-depth model leaves 1 - R^2 of Var F unexplained; the floor is
    asserted on the held-out R^2 (against the true F on fresh points), not assumed;
  - noise fit: a depth-k model of a function with no depth-k part fits only noise; early stopping
    on n_s held-out points keeps it while it lowers held-out MSE, which bounds its variance by
    about 4 z^2 / n_s of Var F (Var_s m <= 2 Cov_s(F, m), Cov_s ~ z sd F sd m / sqrt(n_s));
    z = 2.5 (selection over checkpoints), n_s = 750: 0.033. It enters a nested difference
    m_k - m_{k-1} at most twice: NOISE_FIT = 0.035 per order, 0.07 on the planted order;
  - sampling: ratios V_k / Var F on n_eval = 4000 fresh points; for the planted order numerator
    and denominator move together, SE < 0.005; 0.01 allowed.
"""

import numpy as np
import pytest
import xgboost as xgb

import fanova_gpu as fg
from fanova_gpu.decompose import distill
from fanova_gpu.device import xgboost_has_cuda
from fanova_gpu.functions import Factor, ProductSum, Term, paper_generator

D = 4
DIST = fg.Uniform(-1.0, 1.0, d=D)
TRUTHS = [paper_generator("main_effects", d=D), paper_generator("pure_pair", d=D),
          paper_generator("pure_triple", d=D)]
PLANTED = [1, 2, 3]
R2_FLOOR = [0.99, 0.95, 0.85]  # held-out R^2 of the planted-depth model at n = 3000
NOISE_FIT, SAMPLING = 0.035, 0.01
N_FIT, N_EVAL = 3000, 4000


def stacked(fs):
    return lambda X: np.stack([f(X) for f in fs])  # [R, n]


def test_truths_match_closed_forms():
    # the truths themselves, by hand: Var sin x = 1/2 - sin(2)/4, Var cos x = 1/2 + sin(2)/4
    # - sin(1)^2, Var x = 1/3, under Unif(-1, 1)
    vs = 0.5 - np.sin(2) / 4
    vc = 0.5 + np.sin(2) / 4 - np.sin(1) ** 2
    expected = [[vs + vc, 0, 0, 0], [0, vs * vc, 0, 0], [0, 0, vs * vc / 3, 0]]
    for f, e in zip(TRUTHS, expected, strict=True):
        np.testing.assert_allclose(f.variance_by_order(3), e, rtol=1e-10, atol=1e-14)
    assert vs + vc == pytest.approx(np.cos(1) ** 2, rel=1e-12)


@pytest.fixture(scope="module")
def fits():
    """Both variants, fast profile, the three truths as one batch of R = 3 targets."""
    f = stacked(TRUTHS)
    return {v: distill.decompose(f, DIST, max_order=3, variant=v, profile="fast", n=N_FIT,
                                 n_eval=N_EVAL, seed=1) for v in distill.VARIANTS}


@pytest.mark.parametrize("variant", distill.VARIANTS)
def test_planted_order_recovered_within_budget(fits, variant):
    res = fits[variant]
    assert res.variance_by_order.shape == (3, 4) and res.stderr is None
    assert not res.info["in_sample"] and res.info["measured_on"] == "eval"
    r2 = res.info["r2"]["eval"]  # [R, K] held-out R^2 of m_k against the true F
    frac = res.fraction_by_order
    for i, (f, j) in enumerate(zip(TRUTHS, PLANTED, strict=True)):
        truth = f.variance_by_order(3) / f.total_variance
        assert r2[i, j - 1] >= R2_FLOOR[i], (f.name, r2[i])
        tau = np.full(4, NOISE_FIT + SAMPLING)  # absent orders
        tau[j - 1] = (1 - R2_FLOOR[i]) + 2 * NOISE_FIT + SAMPLING
        tau[3] = max(tau[3], 1 - R2_FLOOR[i] + SAMPLING)  # V_>3 = Var(F - m_3)
        assert np.all(np.abs(frac[i] - truth) <= tau), (f.name, frac[i], tau)


def test_total_variance_within_4_standard_errors(fits):
    # Var F on the fresh points vs the exact total; SE from an independent sample of the truth
    for i, f in enumerate(TRUTHS):
        y = f(DIST.sample(200_000, seed=99))
        se = np.sqrt(np.var((y - y.mean()) ** 2) / N_EVAL)
        for res in fits.values():
            assert abs(res.total_variance[i] - f.total_variance) <= 4 * se


def test_depth1_on_pure_pair_is_near_zero_and_variants_agree_on_additive(fits):
    nested, residual = fits["nested"], fits["residual"]
    for res in (nested, residual):
        assert res.fraction_by_order[1, 0] <= NOISE_FIT  # no main effect in a pure pair
        # the in-sample numbers are reported too, labelled
        assert res.info["in_sample_variance_by_order"].shape == (3, 4)
    # on an additive truth both variants fit the same depth-1 model first
    tau = 2 * ((1 - R2_FLOOR[0]) + 2 * NOISE_FIT + SAMPLING)
    assert abs(nested.fraction_by_order[0, 0] - residual.fraction_by_order[0, 0]) <= tau


def test_in_sample_numbers_hide_a_pure_4way_interaction():
    """The paper measures on the rows it fit: 1000 depth-3 rounds memorise them, so a pure
    4-way interaction (truth: 100% in order > 3) shows up in orders <= 3. Held out, it does not."""
    x = Factor("x")
    quad = ProductSum([Term(1.0, tuple((i, x) for i in range(4)))], DIST, name="pure_quad")
    np.testing.assert_allclose(quad.variance_by_order(3), [0, 0, 0, 3.0**-4], atol=1e-14)
    X = DIST.sample(400, seed=3)
    Xe = DIST.sample(2000, seed=4)
    res = distill.decompose(quad(X), X, profile="paper", n_estimators=300,
                            X_eval=Xe, preds_eval=quad(Xe))
    ins = res.info["in_sample_variance_by_order"] / np.var(quad(X), ddof=1)
    assert ins[3] < 0.5  # in-sample: most of a pure order-4 effect assigned to orders <= 3
    assert res.info["r2"]["fit"][2] > 0.9 and res.info["r2"]["eval"][2] < 0.1
    held = distill.decompose(quad, DIST, profile="fast", n=N_FIT, n_eval=N_EVAL, seed=2)
    # held out, with early stopping: orders 1..3 are absent, each within the noise-fit budget
    assert np.all(held.fraction_by_order[:3] <= NOISE_FIT + SAMPLING), held.fraction_by_order


# ------------------------------------------------------------- batched == one target at a time


def _plain_single_target(F, X, Xe, depth, rounds, max_bin, stop=None, patience=0, every=10):
    """Reference: plain single-target XGBoost with the same settings (intercept = mean).

    With `stop` = (Xs, Fs): held-out MSE at rounds 0, every, 2*every, ...; stop once `patience`
    rounds pass without a strictly lower MSE; keep the best checkpoint.
    """
    mu = F.mean()
    params = {"max_depth": depth, "eta": 0.3, "max_bin": max_bin, "nthread": 1,
              "base_score": 0.0, "tree_method": "hist", "seed": 0}
    dfit = xgb.QuantileDMatrix(X, (F - mu).astype(np.float32), max_bin=max_bin, nthread=1)
    b = xgb.train(params, dfit, rounds)
    best = rounds
    if stop is not None:
        Xs, Fs = stop
        best, best_mse = 0, np.mean((Fs - mu) ** 2)
        for t in range(every, rounds + 1, every):
            p = b.predict(xgb.DMatrix(Xs, nthread=1), iteration_range=(0, t), output_margin=True)
            mse = np.mean((p - (Fs - mu)) ** 2)
            if mse < best_mse:
                best, best_mse = t, mse
            if t - best >= patience:
                break
    if best == 0:
        return np.full(len(Xe), mu), 0
    pe = b.predict(xgb.DMatrix(Xe, nthread=1), iteration_range=(0, best), output_margin=True)
    return mu + pe, best


def _plain_split(m, F):
    parts = [m[0]] + [m[k] - m[k - 1] for k in range(1, len(m))] + [F - m[-1]]
    return np.array([np.var(p, ddof=1) for p in parts])


@pytest.mark.parametrize("variant", distill.VARIANTS)
def test_batched_equals_single_target_fits(variant):
    rng = np.random.default_rng(0)
    X, Xe = DIST.sample(600, seed=5), DIST.sample(500, seed=6)
    truths = [*TRUTHS, paper_generator("pair_effect", d=D)]
    F, Fe = np.stack([f(X) for f in truths]), np.stack([f(Xe) for f in truths])
    F = F + 0.05 * rng.standard_normal(F.shape)  # a little noise: distinct targets
    res = distill.decompose(F, X, variant=variant, n_estimators=40, max_bin=64, n_jobs=1,
                            X_eval=Xe, preds_eval=Fe)
    for r in range(len(truths)):
        m, prev_fit, prev_e = [], np.zeros(len(X)), np.zeros(len(Xe))
        for k in (1, 2, 3):
            if variant == "nested":
                me, _ = _plain_single_target(F[r], X, Xe, k, 40, 64)
            else:  # stage k on the residual of the stages before it
                both = np.vstack([X, Xe])
                pk, _ = _plain_single_target(F[r] - prev_fit, X, both, k, 40, 64)
                prev_fit, prev_e = prev_fit + pk[: len(X)], prev_e + pk[len(X):]
                me = prev_e
            m.append(me)
        # same trees; float32 predictions summed in a different order: ~1e-7 relative
        np.testing.assert_allclose(res.variance_by_order[r], _plain_split(m, Fe[r]),
                                   rtol=2e-5, atol=1e-9 * Fe[r].var())


def test_batched_early_stopping_equals_single_target_and_ignores_grouping():
    X, Xe = DIST.sample(800, seed=7), DIST.sample(500, seed=8)
    truths = [*TRUTHS, paper_generator("triple_effect", d=D)]
    F, Fe = np.stack([f(X) for f in truths]), np.stack([f(Xe) for f in truths])
    kw = dict(profile="fast", n_estimators=200, max_bin=32, early_stopping_rounds=20,
              stop_fraction=0.25,
              X_eval=Xe, preds_eval=Fe, seed=4)
    one = distill.decompose(F, X, n_jobs=1, **kw)  # one group of 4 targets
    two = distill.decompose(F, X, n_jobs=2, **kw)  # two groups of 2, in two threads
    np.testing.assert_array_equal(one.info["rounds"], two.info["rounds"])
    # same trees; the per-target truncation sums float32 segments in a group-dependent order
    np.testing.assert_allclose(one.variance_by_order, two.variance_by_order, rtol=2e-6,
                               atol=1e-9 * Fe.var())
    # the rows held out for stopping: the same permutation the method documents
    perm = np.random.default_rng(4).permutation(len(X))
    s_idx, f_idx = np.sort(perm[:200]), np.sort(perm[200:])
    for r in range(len(truths)):
        m, rounds = [], []
        for k in (1, 2, 3):
            me, best = _plain_single_target(F[r, f_idx], X[f_idx], Xe, k, 200, 32,
                                            stop=(X[s_idx], F[r, s_idx]), patience=20)
            m.append(me)
            rounds.append(best)
        assert list(one.info["rounds"][r]) == rounds
        np.testing.assert_allclose(one.variance_by_order[r], _plain_split(m, Fe[r]),
                                   rtol=2e-5, atol=1e-9 * Fe[r].var())


# ------------------------------------------------------------- shapes, info, devices, input


def test_one_dimensional_input_and_info():
    X = DIST.sample(300, seed=9)
    y = TRUTHS[0](X)
    res = fg.decompose(y, X, method="distill", max_order=2, n_estimators=20)
    assert res.variance_by_order.shape == (3,) and np.ndim(res.total_variance) == 0
    assert res.method == "distill" and res.max_order == 2
    info = res.info
    assert info["device"] == "cpu" and info["in_sample"] and info["variant"] == "nested"
    assert info["profile"] == "paper" and info["rounds"].tolist() == [20, 20]
    assert info["stage_correlation"].shape == (3, 3)
    np.testing.assert_allclose(np.diag(info["stage_correlation"]), 1.0, rtol=1e-12)
    assert res.total_variance == pytest.approx(np.var(y, ddof=1), rel=1e-12)


BAD = [
    ({"variant": "text"}, "variant"),
    ({"profile": "slow"}, "profile"),
    ({"n_estimators": 0}, "n_estimators"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"max_bin": 1}, "max_bin"),
    ({"max_order": 0}, "max_order"),
    ({"early_stopping_rounds": -1}, "early_stopping_rounds"),
    ({"early_stopping_rounds": 5, "stop_fraction": 1.5}, "stop_fraction"),
    ({"X_eval": np.zeros((5, D))}, "X_eval"),
    ({"n_jobs": 0}, "n_jobs"),
    ({"seed": -1}, "seed"),
    ({"device": "tpu"}, "device"),
]


@pytest.mark.parametrize("kwargs,field", BAD)
def test_bad_arguments_name_the_field(kwargs, field):
    X = DIST.sample(50, seed=0)
    with pytest.raises(ValueError, match=field):
        distill.decompose(TRUTHS[0](X), X, **kwargs)


def test_bad_inputs_name_the_field():
    X = DIST.sample(50, seed=0)
    y = TRUTHS[0](X)
    with pytest.raises(ValueError, match="f_or_preds"):
        distill.decompose(y[:49], X)
    with pytest.raises(ValueError, match="f_or_preds"):
        distill.decompose(np.where(np.arange(50) == 3, np.nan, y), X)
    with pytest.raises(ValueError, match="X_or_dist"):
        distill.decompose(y, X[:, 0])
    with pytest.raises(ValueError, match="X_or_dist"):
        distill.decompose(TRUTHS[0], X)  # a callable needs a distribution
    with pytest.raises(ValueError, match="preds_eval"):
        distill.decompose(y, X, X_eval=X, preds_eval=np.stack([y, y]))
    with pytest.raises(ValueError, match=r"f\(fit sample\)"):
        distill.decompose(lambda Z: Z[:, :2].T.ravel(), DIST, n=100)


@pytest.mark.skipif(xgboost_has_cuda() and __import__("torch").cuda.is_available(),
                    reason="a CUDA device is present")
def test_cuda_without_cuda_is_an_error():
    X = DIST.sample(50, seed=0)
    with pytest.raises(ValueError, match="device"):
        distill.decompose(TRUTHS[0](X), X, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not (xgboost_has_cuda() and __import__("torch").cuda.is_available()),
                    reason="needs XGBoost with CUDA and a GPU")
def test_cuda_run_reports_cuda_and_matches_cpu_split():
    X, Xe = DIST.sample(2000, seed=5), DIST.sample(2000, seed=6)
    F = np.stack([f(X) for f in TRUTHS])
    Fe = np.stack([f(Xe) for f in TRUTHS])
    kw = dict(n_estimators=100, X_eval=Xe, preds_eval=Fe)
    gpu = distill.decompose(F, X, device="cuda", **kw)
    cpu = distill.decompose(F, X, device="cpu", **kw)
    assert str(gpu.info["device"]).startswith("cuda")  # read back from the booster config
    # GPU hist builds the same kind of trees but sketches/sums differently: compare the split
    np.testing.assert_allclose(gpu.fraction_by_order, cpu.fraction_by_order, atol=0.02)
