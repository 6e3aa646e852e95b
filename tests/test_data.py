import numpy as np
import pytest

import fanova_gpu as fg
from fanova_gpu import data


def test_uniform_moments_within_standard_error():
    X = fg.Uniform(low=-1.0, high=1.0, d=4).sample(200_000, seed=1)
    assert X.dtype == np.float32 and X.shape == (200_000, 4)
    assert X.min() >= -1.0 and X.max() <= 1.0
    se_mean = np.sqrt(1 / 3 / 200_000)
    assert np.all(np.abs(X.mean(0)) < 4 * se_mean)
    # Var of X^2 for U(-1,1) is 1/5 - 1/9 = 4/45
    assert np.all(np.abs(X.var(0) - 1 / 3) < 4 * np.sqrt(4 / 45 / 200_000))


def test_normal_moments_within_standard_error():
    X = fg.Normal(d=3, mean=1.0, std=2.0).sample(100_000, seed=2)
    assert np.all(np.abs(X.mean(0) - 1.0) < 4 * 2.0 / np.sqrt(100_000))


def test_same_seed_same_sample():
    a = fg.Uniform(d=5).sample(10, seed=3)
    b = fg.Uniform(d=5).sample(10, seed=3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"d": 0}, "d"), ({"low": 1.0, "high": 0.0}, "high")],
)
def test_uniform_bad_input_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        fg.Uniform(**kwargs)


def test_generators_match_formulas():
    X, y = data.main_effects(n=50, d=4, seed=0, noise=0.0)
    np.testing.assert_allclose(y, np.sin(X[:, 0]) + np.cos(X[:, 1]), rtol=1e-6, atol=1e-6)
    X, y = data.pair_effect(n=50, d=4, seed=0, noise=0.0)
    np.testing.assert_allclose(y, np.sin(X[:, 0]) * np.cos(X[:, 1]), rtol=1e-6, atol=1e-6)
    X, y = data.triple_effect(n=50, d=4, seed=0, noise=0.0)
    np.testing.assert_allclose(
        y, np.sin(X[:, 0]) * np.cos(X[:, 1]) * X[:, 2], rtol=1e-5, atol=1e-6
    )


def test_pure_noise_is_independent_standard_normal():
    X, y = data.pure_noise(n=20_000, d=25, seed=0)
    assert X.shape == (20_000, 25)
    assert abs(y.mean()) < 4 / np.sqrt(20_000)
    assert abs(y.var() - 1) < 4 * np.sqrt(2 / 20_000)
    # correlation with any input ~ N(0, 1/n)
    c = np.corrcoef(np.c_[X, y].T)[-1, :-1]
    assert np.all(np.abs(c) < 4.5 / np.sqrt(20_000))


def test_correlated_product_has_requested_correlation():
    X, y = data.correlated_product(n=100_000, seed=0, rho=0.6)
    r = np.corrcoef(X[:, 0], X[:, 1])[0, 1]
    assert abs(r - 0.6) < 4 * (1 - 0.36) / np.sqrt(100_000)
    np.testing.assert_allclose(y, X[:, 0] * X[:, 1], rtol=1e-5, atol=1e-6)


def test_generator_bad_input():
    with pytest.raises(ValueError, match="noise"):
        data.pure_noise(n=10, noise=-1.0)
    with pytest.raises(ValueError, match="rho"):
        data.correlated_product(n=10, rho=1.0)
    with pytest.raises(ValueError, match="data.generator"):
        data.generate("nope")
