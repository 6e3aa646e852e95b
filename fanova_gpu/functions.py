"""Analytic test functions with exact functional-ANOVA components: the truth tests measure against.

A `ProductSum` is F(x) = sum_t coef_t prod_{i in S_t} g_{t,i}(x_i) under an independent input
distribution (`fg.Uniform` or `fg.Normal`). Each univariate factor g = mu + h splits into its
mean mu = E g(X_i) and a mean-zero part h, so every term expands into products of h's and the
fANOVA components follow exactly:

    f_u(x) = sum_{t: u subset S_t} coef_t prod_{i in S_t \\ u} mu_{t,i} prod_{i in u} h_{t,i}(x_i)
    Var f_u = sum_{t, t'} w_t w_t' prod_{i in u} Cov(g_{t,i}, g_{t',i})   (w_t = coef_t prod mu)

Terms may share variables (x1 x2 + x1^2), which is why the cross moments E[g h] of different
factors on the same variable are needed. All 1-D moments are computed by composite
Gauss-Legendre quadrature split at the kinks of `abs` factors (accurate to ~1e-14 relative;
checked against closed forms in tests/test_functions.py).

"Centered" factors: `Factor.centered(dist)` returns the same factor shifted (via `b`) to mean
zero under `dist`; products of centered factors are pure interactions of exactly their order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .data import Normal, Uniform

KINDS = ("x", "x2", "sin", "cos", "exp", "abs", "x3", "x4")
KIND_CODES = {k: i for i, k in enumerate(KINDS)}  # stable: new kinds are appended at the end

_MAX_SUBSETS = 1 << 20  # enumeration limit of subset_variances()


def base(kind: str | int, z: np.ndarray) -> np.ndarray:
    """The base function of a factor kind (name or code) applied to z = a*x + c."""
    code = KIND_CODES[kind] if isinstance(kind, str) else int(kind)
    if code == 0:
        return z
    if code == 1:
        return z * z
    if code == 2:
        return np.sin(z)
    if code == 3:
        return np.cos(z)
    if code == 4:
        return np.exp(z)
    if code == 5:
        return np.abs(z)
    if code == 6:
        return z * z * z
    if code == 7:
        return (z * z) * (z * z)
    raise ValueError(f"kind: expected one of {KINDS} (codes 0..{len(KINDS) - 1}), got {kind!r}")


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a finite real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite real number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Factor:
    """Univariate factor g(x) = base(a*x + c) + b, base one of KINDS (x2 = square, abs = |.|)."""

    kind: str
    a: float = 1.0
    c: float = 0.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KIND_CODES:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("a", "c", "b"):
            object.__setattr__(self, name, _check_finite(name, getattr(self, name)))

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return base(self.kind, self.a * x + self.c) + self.b

    @property
    def code(self) -> int:
        return KIND_CODES[self.kind]

    def mean(self, dist: Uniform | Normal) -> float:
        """E g(X_i) for X_i distributed as one coordinate of `dist`."""
        return moment(dist, self)

    def centered(self, dist: Uniform | Normal) -> Factor:
        """The same factor shifted by its mean, so that E g(X_i) = 0 under `dist`."""
        return Factor(self.kind, self.a, self.c, self.b - self.mean(dist))


# ---------------------------------------------------------------- 1-D moments by quadrature


def _check_dist(dist) -> Uniform | Normal:
    if not isinstance(dist, (Uniform, Normal)):
        raise ValueError(f"dist: expected fg.Uniform or fg.Normal, got {type(dist).__name__}")
    return dist


def _dist_key(dist: Uniform | Normal) -> tuple:
    if isinstance(dist, Uniform):
        return ("uniform", float(dist.low), float(dist.high))
    return ("normal", float(dist.mean), float(dist.std))


_GL_X, _GL_W = np.polynomial.legendre.leggauss(64)
_PANELS = 48


def _panel_rule(lo: float, hi: float, breaks: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Composite 64-point Gauss-Legendre nodes/weights on [lo, hi], split at `breaks`."""
    pts = sorted({lo, hi, *[float(x) for x in breaks if lo < x < hi]})
    xs, ws = [], []
    for s, e in zip(pts[:-1], pts[1:], strict=True):
        m = max(1, math.ceil(_PANELS * (e - s) / (hi - lo)))
        edges = np.linspace(s, e, m + 1)
        half = 0.5 * np.diff(edges)[:, None]  # [m, 1]
        mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
        xs.append((mid + half * _GL_X).ravel())
        ws.append((half * _GL_W).ravel())
    return np.concatenate(xs), np.concatenate(ws)


def _kinks(factors: Sequence[Factor]) -> list[float]:
    return [-f.c / f.a for f in factors if f.kind == "abs" and f.a != 0.0]


@lru_cache(maxsize=65536)
def _moment_cached(key: tuple, factors: tuple[Factor, ...]) -> float:
    breaks = _kinks(factors)
    if key[0] == "uniform":
        lo, hi = key[1], key[2]
        x, w = _panel_rule(lo, hi, breaks)
        w = w / (hi - lo)
    else:
        mu, sd = key[1], key[2]
        lo, hi = mu - 40.0 * sd, mu + 40.0 * sd
        x, w = _panel_rule(lo, hi, breaks)
        z = (x - mu) / sd
        w = w * np.exp(-0.5 * z * z) / (sd * math.sqrt(2.0 * math.pi))
    val = np.ones_like(x)
    for f in factors:
        val = val * f(x)
    return float(np.dot(w, val))


def moment(dist: Uniform | Normal, *factors: Factor) -> float:
    """E[prod_j g_j(X_i)] for one coordinate X_i of `dist` (1 or 2 factors in practice)."""
    _check_dist(dist)
    return _moment_cached(_dist_key(dist), tuple(factors))


# ---------------------------------------------------------------- terms and sums


@dataclass(frozen=True)
class Term:
    """coef * prod_j g_j(x_{var_j}) over DISTINCT variables; no factors = a constant."""

    coef: float
    factors: tuple[tuple[int, Factor], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "coef", _check_finite("coef", self.coef))
        facs = tuple(tuple(p) for p in self.factors)
        seen = set()
        for p in facs:
            if len(p) != 2 or not isinstance(p[1], Factor):
                raise ValueError(f"factors: expected (variable, Factor) pairs, got {p!r}")
            v = p[0]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"factors: variable index must be an int >= 0, got {v!r}")
            if int(v) in seen:
                raise ValueError(f"factors: variables must be distinct within a term, {v} repeats")
            seen.add(int(v))
        object.__setattr__(self, "factors", tuple(sorted((int(v), f) for v, f in facs)))

    @property
    def variables(self) -> tuple[int, ...]:
        return tuple(v for v, _ in self.factors)


class ProductSum:
    """F(x) = sum_t coef_t prod_{i in S_t} g_{t,i}(x_i) under an independent distribution.

    Exact fANOVA: `component(u, X)`, `subset_variances()`, `variance_by_order(K)`,
    `total_variance`, `mean`, and Theorem 1's right side `shrunk(X, p)`.
    """

    def __init__(self, terms: Sequence[Term], dist: Uniform | Normal, name: str = "") -> None:
        self.dist = _check_dist(dist)
        terms = tuple(terms)
        if not terms:
            raise ValueError("terms: expected at least one Term, got none")
        for t in terms:
            if not isinstance(t, Term):
                raise ValueError(f"terms: expected Term objects, got {type(t).__name__}")
            for v in t.variables:
                if v >= dist.d:
                    raise ValueError(f"terms: variable {v} out of range for dist.d={dist.d}")
        self.terms = terms
        self.name = name
        self.d = int(dist.d)
        self.variables = tuple(sorted({v for t in terms for v in t.variables}))
        # per-term factor means, mu[t][var]
        self._mu = [{v: moment(dist, f) for v, f in t.factors} for t in terms]
        self._fac = [dict(t.factors) for t in terms]

    # -- evaluation
    def __call__(self, X) -> np.ndarray:
        """F at rows X [n, d] -> [n] float64."""
        X = self._check_X(X)
        out = np.zeros(X.shape[0])
        for t in self.terms:
            val = np.full(X.shape[0], t.coef)
            for v, f in t.factors:
                val *= f(X[:, v])
            out += val
        return out

    def _check_X(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"X: expected shape [n, {self.d}], got {list(X.shape)}")
        return X

    def factor_mean(self, var: int, factor: Factor) -> float:
        """E g(X_var) (the distribution is the same for every coordinate)."""
        return moment(self.dist, factor)

    def factor_cov(self, g: Factor, h: Factor) -> float:
        """Cov(g(X_i), h(X_i)) = E[g h] - E g E h for two factors on the same variable."""
        return moment(self.dist, g, h) - moment(self.dist, g) * moment(self.dist, h)

    @property
    def mean(self) -> float:
        terms = enumerate(self.terms)
        return float(sum(t.coef * math.prod(self._mu[k].values()) for k, t in terms))

    # -- exact components
    def component(self, u: Sequence[int], X) -> np.ndarray:
        """The exact fANOVA component f_u at rows X [n, d] -> [n]; u = () gives the mean."""
        X = self._check_X(X)
        u = self._check_u(u)
        out = np.zeros(X.shape[0])
        for k, t in enumerate(self.terms):
            if not set(u) <= set(t.variables):
                continue
            w = t.coef * math.prod(m for v, m in self._mu[k].items() if v not in u)
            val = np.full(X.shape[0], w)
            for v in u:
                val *= self._fac[k][v](X[:, v]) - self._mu[k][v]
            out += val
        return out

    def _check_u(self, u) -> tuple[int, ...]:
        u = tuple(int(v) for v in u)
        if len(set(u)) != len(u) or any(v < 0 or v >= self.d for v in u):
            raise ValueError(f"u: expected distinct variable indices in [0, {self.d}), got {u!r}")
        return tuple(sorted(u))

    def shrunk(self, X, p: float) -> np.ndarray:
        """sum_u (1-p)^|u| f_u(X) = sum_t coef_t prod_i (mu_i + (1-p) h_i(x_i)) (Theorem 1)."""
        X = self._check_X(X)
        p = _check_finite("p", p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        out = np.zeros(X.shape[0])
        for k, t in enumerate(self.terms):
            val = np.full(X.shape[0], t.coef)
            for v, f in t.factors:
                m = self._mu[k][v]
                val *= m + (1.0 - p) * (f(X[:, v]) - m)
            out += val
        return out

    # -- exact variances
    def _pair_poly(self, k: int, l: int) -> np.ndarray:
        """Coefficients in z of sum_u z^|u| E[f_u^(k) f_u^(l)] for terms k, l (f^(k) = term k)."""
        tk, tl = self.terms[k], self.terms[l]
        shared = set(tk.variables) & set(tl.variables)
        const = tk.coef * tl.coef
        const *= math.prod(m for v, m in self._mu[k].items() if v not in shared)
        const *= math.prod(m for v, m in self._mu[l].items() if v not in shared)
        poly = np.array([const])
        for v in sorted(shared):
            mm = self._mu[k][v] * self._mu[l][v]
            cov = self.factor_cov(self._fac[k][v], self._fac[l][v])
            poly = np.convolve(poly, [mm, cov])
        return poly

    def variance_by_order(self, max_order: int = 3) -> np.ndarray:
        """[K+1] float64: V_1..V_K, then every order > K (no subset enumeration needed)."""
        if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order: expected a positive integer, got {max_order!r}")
        width = 1 + max((len(t.factors) for t in self.terms), default=0)
        acc = np.zeros(max(width, max_order + 2))
        T = len(self.terms)
        for k in range(T):
            for l in range(k, T):
                poly = self._pair_poly(k, l)
                acc[: len(poly)] += poly if k == l else 2.0 * poly
        out = np.zeros(max_order + 1)
        out[:max_order] = acc[1 : max_order + 1]
        out[max_order] = acc[max_order + 1 :].sum()
        return out

    @property
    def total_variance(self) -> float:
        return float(self.variance_by_order(1).sum())

    def subset_variances(self) -> dict[tuple[int, ...], float]:
        """Exact Var f_u for every nonempty u contained in some term's variable set."""
        subsets = set()
        for t in self.terms:
            S = t.variables
            if 2 ** len(S) > _MAX_SUBSETS:
                raise ValueError(
                    f"terms: a term with {len(S)} factors has too many subsets to enumerate "
                    f"(limit 2^20); use variance_by_order instead"
                )
            for r in range(1, len(S) + 1):
                subsets.update(itertools.combinations(S, r))
        out = {}
        for u in sorted(subsets, key=lambda s: (len(s), s)):
            ks = [k for k, t in enumerate(self.terms) if set(u) <= set(t.variables)]
            w = np.array([
                self.terms[k].coef * math.prod(m for v, m in self._mu[k].items() if v not in u)
                for k in ks
            ])
            M = np.ones((len(ks), len(ks)))
            for v in u:
                for a, ka in enumerate(ks):
                    for b_, kb in enumerate(ks):
                        M[a, b_] *= self.factor_cov(self._fac[ka][v], self._fac[kb][v])
            out[u] = float(w @ M @ w)
        return out

    # -- for kernels
    def encode(self) -> dict[str, np.ndarray]:
        """Padded arrays for kernels: coef [T], nfac [T], var/kind [T, F] int32, a/c/b/mu [T, F].

        Entries j >= nfac[t] are padding (kind 0, a = c = b = 0, mu = 0) and must be skipped.
        """
        T = len(self.terms)
        F = max(1, max(len(t.factors) for t in self.terms))
        enc = {
            "coef": np.array([t.coef for t in self.terms], dtype=np.float64),
            "nfac": np.array([len(t.factors) for t in self.terms], dtype=np.int32),
            "var": np.zeros((T, F), dtype=np.int32),
            "kind": np.zeros((T, F), dtype=np.int32),
            "a": np.zeros((T, F)),
            "c": np.zeros((T, F)),
            "b": np.zeros((T, F)),
            "mu": np.zeros((T, F)),
        }
        for k, t in enumerate(self.terms):
            for j, (v, f) in enumerate(t.factors):
                enc["var"][k, j] = v
                enc["kind"][k, j] = f.code
                enc["a"][k, j], enc["c"][k, j], enc["b"][k, j] = f.a, f.c, f.b
                enc["mu"][k, j] = self._mu[k][v]
        return enc

    def __repr__(self) -> str:
        return f"ProductSum(name={self.name!r}, terms={len(self.terms)}, d={self.d})"


# ---------------------------------------------------------------- named constructors


def ishigami(a: float = 7.0, b: float = 0.1) -> ProductSum:
    """Ishigami on Unif(-pi, pi)^3: sin x0 + a sin^2 x1 + b x2^4 sin x0.

    sin^2 x = (1 - cos 2x) / 2. Exact (a=7, b=0.1): V_0 = 4.345888, V_1 = 6.125,
    V_02 = 3.373700, total 13.844588.
    """
    sin = Factor("sin")
    terms = [
        Term(1.0, ((0, sin),)),
        Term(a / 2.0, ()),
        Term(-a / 2.0, ((1, Factor("cos", a=2.0)),)),
        Term(b, ((0, sin), (2, Factor("x4")))),
    ]
    return ProductSum(terms, Uniform(-math.pi, math.pi, d=3), name="ishigami")


def g_function(a: Sequence[float]) -> ProductSum:
    """Sobol's G-function on Unif(0,1)^d: prod_i (|4 x_i - 2| + a_i) / (1 + a_i).

    Each factor has mean 1 and variance 1/(3 (1+a_i)^2), so V_u = prod_{i in u} 1/(3(1+a_i)^2).
    """
    a = [float(x) for x in a]
    if not a or any(not math.isfinite(x) or x <= -1.0 for x in a):
        raise ValueError(f"a: expected a non-empty sequence of finite values > -1, got {a!r}")
    facs = tuple(
        (i, Factor("abs", a=4.0 / (1 + ai), c=-2.0 / (1 + ai), b=ai / (1 + ai)))
        for i, ai in enumerate(a)
    )
    return ProductSum([Term(1.0, facs)], Uniform(0.0, 1.0, d=len(a)), name="g_function")


PAPER_GENERATORS = ("main_effects", "pair_effect", "triple_effect", "pure_pair", "pure_triple")


def paper_generator(name: str, d: int = 25) -> ProductSum:
    """The noise-free signal of the paper's Sec. 4.5 generators on Unif(-1, 1)^d.

    - main_effects: sin x0 + cos x1 (purely additive).
    - pair_effect: sin x0 cos x1. NOT a pure pair: E cos x1 = sin 1 != 0, so the main effect
      of x0 carries sin^2(1) / E cos^2 = sin^2(1) / (1/2 + sin(2)/4) ~ 97.4% of the variance.
    - triple_effect: sin x0 cos x1 x2. E x2 = 0 kills the x0,x1 terms but the same sin 1
      makes the pair {x0, x2} ~97.4% of the variance; the triple is ~2.6%.
    - pure_pair: sin x0 (cos x1 - sin 1); pure_triple: sin x0 (cos x1 - sin 1) x2 —
      products of mean-zero factors, so all variance sits in the planted order.
    """
    if name not in PAPER_GENERATORS:
        raise ValueError(f"name: expected one of {PAPER_GENERATORS}, got {name!r}")
    need = 3 if "triple" in name else 2
    if isinstance(d, bool) or not isinstance(d, int) or d < need:
        raise ValueError(f"d: expected an integer >= {need} for {name!r}, got {d!r}")
    dist = Uniform(-1.0, 1.0, d=d)
    sin, cos, x = Factor("sin"), Factor("cos"), Factor("x")
    if name == "main_effects":
        terms = [Term(1.0, ((0, sin),)), Term(1.0, ((1, cos),))]
    elif name == "pair_effect":
        terms = [Term(1.0, ((0, sin), (1, cos)))]
    elif name == "triple_effect":
        terms = [Term(1.0, ((0, sin), (1, cos), (2, x)))]
    elif name == "pure_pair":
        terms = [Term(1.0, ((0, sin), (1, cos.centered(dist))))]
    else:
        terms = [Term(1.0, ((0, sin), (1, cos.centered(dist)), (2, x)))]
    return ProductSum(terms, dist, name=name)


def random_product_sum(
    d: int,
    orders: Sequence[int],
    seed: int = 0,
    dist: Uniform | Normal | None = None,
    kinds: Sequence[str] = ("x", "x2", "sin", "cos", "exp", "abs"),
    centered: bool = False,
) -> ProductSum:
    """One random term per entry of `orders` (its number of factors), on distinct variables.

    Factors get a in [0.5, 1.5], c in [-0.5, 0.5], b in [-0.5, 0.5], coef in [0.5, 1.5] with
    a random sign. `centered=True` shifts every factor to mean zero (pure interactions).
    """
    dist = Uniform(-1.0, 1.0, d=d) if dist is None else _check_dist(dist)
    if dist.d != d:
        raise ValueError(f"dist: expected d={d}, got d={dist.d}")
    rng = np.random.default_rng(seed)
    terms = []
    for k in orders:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= d:
            raise ValueError(f"orders: expected integers in [0, {d}], got {k!r}")
        vars_ = rng.choice(d, size=int(k), replace=False)
        facs = []
        for v in vars_:
            f = Factor(
                str(rng.choice(list(kinds))),
                a=float(rng.uniform(0.5, 1.5)),
                c=float(rng.uniform(-0.5, 0.5)),
                b=float(rng.uniform(-0.5, 0.5)),
            )
            facs.append((int(v), f.centered(dist) if centered else f))
        coef = float(rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0]))
        terms.append(Term(coef, tuple(facs)))
    return ProductSum(terms, dist, name="random")


__all__ = [
    "KINDS",
    "KIND_CODES",
    "PAPER_GENERATORS",
    "Factor",
    "ProductSum",
    "Term",
    "base",
    "g_function",
    "ishigami",
    "moment",
    "paper_generator",
    "random_product_sum",
]
