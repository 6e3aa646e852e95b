"""The paper's XGBoost depth-staged distillation, batched over replicas.

Fit boosted trees of max depth 1, 2, ..., K to F and read interaction orders off the stages:

- ``nested`` (the paper's released code): model m_k of depth k is fit to F on its own;
  V_1 = Var m_1, V_k = Var(m_k - m_{k-1}), V_>K = Var(F - m_K).
- ``residual`` (the paper's text): stage k (depth k) is fit to F - m_{k-1}, m_k = m_{k-1} + stage k;
  V_k = Var(stage k), V_>K = Var(F - m_K).

Both read V_k = Var(m_k - m_{k-1}); they differ only in what stage k is trained on. The split
is an fANOVA split only if the stage contributions are uncorrelated (the paper assumes it);
their correlation matrix is reported in ``info`` so the assumption can be checked.

Batching: all R replicas are targets of one multi-target booster per (target group, depth)
(``multi_strategy="one_output_per_tree"``): the quantized matrix is built once per group and
each round grows one tree per target from that target's own gradients, so a target's trees are
the ones a single-target fit would grow. On CPU, target groups run in threads with one XGBoost
thread each (XGBoost releases the GIL; one OpenMP thread per fit avoids OpenMP's poor scaling
and spin-waiting on small, contended machines). Each target's intercept is its own mean (targets
are centred here, ``base_score=0``; a shared scalar intercept would bias V_1), and early stopping
is per target: a target stops, and is truncated at its own best round on the held-out points,
exactly when it would have alone, whatever else shares its booster. Batched results therefore
equal R single-target fits with the same settings (tests/test_distill.py checks this against
plain XGBoost).

Overfitting: 1000 depth-3 rounds on 1500 rows interpolate the rows (training R^2 ~0.99999),
which pushes V_>K towards 0 on the rows they were fit on. When F can be queried, fit on one
sample, stop on held-out points and measure on a fresh sample; the in-sample numbers are kept in
``info`` under labelled keys.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xgboost as xgb
from xgboost.callback import TrainingCallback

from .effects import EffectSizes

VARIANTS = ("nested", "residual")

# profile -> XGBoost settings. "paper": the released code (XGBRegressor defaults: eta 0.3,
# 256 bins, 1000 rounds per depth, no early stopping). "fast": chosen by measurement
# (bench/report_distill.py: 16 random 3x32 ReLU nets, d = 25, 5000 rows, held-out R^2 of every
# stage model of every replica at least the paper profile's): 16 quantile bins (split finding is
# most of a depth-3 round at 256 bins, and the coarser grid generalised better on these targets),
# and per-target early stopping with patience 100 rounds on 10% of the rows (patience 50 stopped
# some depth-2 fits on a plateau). Caveat: 16 bins resolve a feature's range into 16 steps;
# a function with finer structure along one input loses it (use max_bin=64 or "paper").
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"n_estimators": 1000, "learning_rate": 0.3, "max_bin": 256, "early_stopping": 0,
              "stop_fraction": 0.1},
    "fast": {"n_estimators": 1000, "learning_rate": 0.3, "max_bin": 16, "early_stopping": 100,
             "stop_fraction": 0.1},
}
# Early stopping on a queried function (callable input) when the profile has none: the issue's
# protocol fits on one sample and stops on held-out points.
CALLABLE_EARLY_STOPPING = 100
# Held-out error is checked every STOP_CHECK_EVERY rounds (per-round checks cost ~30% of the
# training time in prediction calls); a target's stopping round is a multiple of it.
STOP_CHECK_EVERY = 10


# ----------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _as_targets(name: str, arr: Any, n_rows: int | None = None) -> tuple[np.ndarray, bool]:
    """[R, n] or [n] finite values -> ([R, n] float64, had_replica_axis)."""
    a = np.asarray(arr)
    if a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"{name}: expected an array of shape [R, n] or [n], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite numbers")
    batched = a.ndim == 2
    a = np.atleast_2d(a).astype(np.float64)
    if n_rows is not None and a.shape[1] != n_rows:
        raise ValueError(f"{name}: expected {n_rows} values per replica (one per row), "
                         f"got shape {a.shape}")
    return a, batched


def _as_rows(name: str, X: Any) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"{name}: expected rows of shape [n, d] with n >= 2, got {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: expected finite numbers")
    return np.ascontiguousarray(X, dtype=np.float32)


def _seeds(seed: int, k: int) -> list[int]:
    """k independent integer seeds derived from one (for fit / stop / eval samples)."""
    ss = np.random.SeedSequence(seed)
    return [int(s.generate_state(1)[0]) for s in ss.spawn(k)]


# ----------------------------------------------------------------------------- xgboost core


class _PerTargetStop(TrainingCallback):
    """Per-target early stopping: held-out MSE of every target at rounds 0, E, 2E, ... (E =
    STOP_CHECK_EVERY). A target stops (is frozen) once it has gone `patience` rounds without a
    strictly lower MSE, exactly as if it were trained alone; training ends when all have stopped,
    and each target is later truncated at its own best checkpoint.

    The held-out predictions are accumulated from the trees added since the last checkpoint
    (base_score is 0), so a check costs E rounds of prediction on the stop rows.
    """

    def __init__(self, X_stop: np.ndarray, y_stop: np.ndarray, patience: int, every: int,
                 nthread: int):
        super().__init__()
        self.dstop = xgb.DMatrix(X_stop, nthread=nthread)
        self.y = y_stop.astype(np.float64)  # [m, G], centred
        self.patience, self.every = patience, every
        self.acc = np.zeros_like(self.y)  # current held-out prediction [m, G]
        self.done = 0  # rounds accumulated into acc
        self.best = np.mean(self.y**2, axis=0)  # round 0: the intercept alone
        self.best_round = np.zeros(self.y.shape[1], dtype=np.int64)
        self.active = np.ones(self.y.shape[1], dtype=bool)

    def check(self, model, rounds: int) -> bool:
        """Evaluate at `rounds` rounds; True when every target has stalled for `patience`."""
        if rounds > self.done:
            seg = model.predict(self.dstop, iteration_range=(self.done, rounds), output_margin=True)
            self.acc += seg.reshape(self.acc.shape)
            self.done = rounds
            mse = np.mean((self.acc - self.y) ** 2, axis=0)  # [G]
            better = (mse < self.best) & self.active
            self.best = np.where(better, mse, self.best)
            self.best_round = np.where(better, rounds, self.best_round)
        # a stalled target is frozen, so its result does not depend on the rest of its group
        self.active &= rounds - self.best_round < self.patience
        return not self.active.any()

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        rounds = epoch + 1
        return self.check(model, rounds) if rounds % self.every == 0 else False


def _predict_truncated(booster, X: np.ndarray, rounds: np.ndarray, nthread: int) -> np.ndarray:
    """Predictions [m, G] where target g uses only its first rounds[g] rounds (base_score = 0)."""
    dm = xgb.DMatrix(X, nthread=nthread)
    out = np.zeros((X.shape[0], len(rounds)))
    acc = np.zeros((X.shape[0], len(rounds)))
    start = 0
    for stop in np.unique(rounds):  # sum of trees in [start, stop), added to every target
        if stop > start:
            seg = booster.predict(dm, iteration_range=(start, int(stop)), output_margin=True)
            acc += seg.reshape(X.shape[0], -1)
            start = int(stop)
        out[:, rounds == stop] = acc[:, rounds == stop]
    return out


def _fit_stage(
    X: np.ndarray,
    T: np.ndarray,
    depth: int,
    params: dict[str, Any],
    n_rounds: int,
    stop: tuple[np.ndarray, np.ndarray] | None,
    patience: int,
    predict_on: list[np.ndarray],
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Fit depth-`depth` boosting to targets T [n, G]; return predictions on each predict_on set
    ([m, G], intercept included), rounds used per target [G], and the device the booster ran on."""
    mu = T.mean(axis=0)  # [G] each target's own intercept
    p = {**params, "max_depth": depth, "base_score": 0.0}
    if T.shape[1] > 1:
        p["multi_strategy"] = "one_output_per_tree"
    # matrices built with the fit's thread count: OpenMP teams on a busy machine spin-wait
    dfit = xgb.QuantileDMatrix(X, label=(T - mu).astype(np.float32), max_bin=p["max_bin"],
                               nthread=p.get("nthread", -1))
    tracker = None
    if stop is not None and patience > 0:
        tracker = _PerTargetStop(stop[0], stop[1] - mu, patience, STOP_CHECK_EVERY,
                                 p.get("nthread", -1))
    booster = xgb.train(p, dfit, num_boost_round=n_rounds,
                        callbacks=[tracker] if tracker is not None else None)
    if tracker is not None:
        tracker.check(booster, booster.num_boosted_rounds())  # the last rounds, if unchecked
        rounds = tracker.best_round
    else:
        rounds = np.full(T.shape[1], booster.num_boosted_rounds(), dtype=np.int64)
    device = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    preds = [mu + _predict_truncated(booster, Xp, rounds, p.get("nthread", -1))
             for Xp in predict_on]
    return preds, rounds, device


def _run_group(
    variant: str,
    depths: list[int],
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    params: dict[str, Any],
    n_rounds: int,
    patience: int,
) -> dict[str, Any]:
    """Fit the stages listed in `depths` for one target group. sets: name -> (X, F [m, G]).

    nested: each depth fit to F. residual: depths must be 1..K in order, each fit to F - m_{k-1}.
    Returns {"m": {depth: {set: m_k [m, G]}}, "rounds": {depth: [G]}, "device": [...]}.
    """
    names = list(sets)
    Xf, Ff = sets["fit"]
    stop = sets.get("stop")
    prev = {s: np.zeros_like(sets[s][1]) for s in names}  # m_{k-1} on each set
    out: dict[str, Any] = {"m": {}, "rounds": {}, "device": []}
    for k in depths:
        base = prev if variant == "residual" else {s: 0.0 for s in names}
        stop_k = None if stop is None else (stop[0], stop[1] - base["stop"])
        preds, rounds, dev = _fit_stage(
            Xf, Ff - base["fit"], k, params, n_rounds, stop_k, patience,
            [sets[s][0] for s in names],
        )
        m = {s: base[s] + p for s, p in zip(names, preds, strict=True)}
        out["m"][k], out["rounds"][k] = m, rounds
        out["device"].append(dev)
        prev = m
    return out


# ----------------------------------------------------------------------------- summaries


def _split(F: np.ndarray, m: list[np.ndarray]) -> np.ndarray:
    """Stage contributions [K+1, R, n]: m_1, m_2 - m_1, ..., F - m_K (F, m_k: [R, n])."""
    parts = [m[0]] + [m[k] - m[k - 1] for k in range(1, len(m))] + [F - m[-1]]
    return np.stack(parts)


def _summaries(F: np.ndarray, m: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Order variances [R, K+1], Var F [R], R^2 of each m_k [R, K], correlations [R, K+1, K+1]."""
    c = _split(F, m)  # [K+1, R, n]
    v = c.var(axis=2, ddof=1).T  # [R, K+1]
    tot = F.var(axis=1, ddof=1)  # [R]
    ss = ((F - F.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)  # [R]
    r2 = np.stack([1.0 - ((F - mk) ** 2).sum(axis=1) / ss for mk in m], axis=1)  # [R, K]
    cc = c - c.mean(axis=2, keepdims=True)
    cov = np.einsum("irn,jrn->rij", cc, cc)  # [R, K+1, K+1]
    sd = np.sqrt(np.einsum("rii->ri", cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
        cov_share = 1.0 - v.sum(axis=1) / tot
    return {"v": v, "tot": tot, "r2": r2, "corr": corr, "cov_share": cov_share}


# ----------------------------------------------------------------------------- public verb


def decompose(
    f_or_preds: Any,
    X_or_dist: Any,
    max_order: int = 3,
    variant: str = "nested",
    profile: str = "paper",
    n_estimators: int | None = None,
    learning_rate: float | None = None,
    max_bin: int | None = None,
    early_stopping_rounds: int | None = None,
    device: str = "auto",
    n: int = 5000,
    n_stop: int | None = None,
    n_eval: int | None = None,
    stop_fraction: float | None = None,
    X_eval: Any = None,
    preds_eval: Any = None,
    seed: int = 0,
    n_jobs: int | None = None,
) -> EffectSizes:
    """Split F into V_1..V_K, V_>K by fitting XGBoost of depth 1..K (the paper's distillation).

    Input A: `f_or_preds` = predictions [R, n] (or [n]) on rows `X_or_dist` = X [n, d]. The
      variances are measured on those rows, which the trees were fit on (the paper's in-sample
      numbers; `info["in_sample"]` is True). With early stopping (profile "fast"), a random
      `stop_fraction` of the rows is held out of the fit to stop on. Optional fresh rows
      `X_eval` with `preds_eval` [R, m]: variances are then measured there instead.
    Input B: `f_or_preds` = callable [n, d] -> [n] or [R, n], `X_or_dist` = a distribution with
      `.sample(n, seed)`. Fit on n points, stop early on `n_stop` held-out points (default n/4;
      patience: the profile's, or CALLABLE_EARLY_STOPPING for "paper"), measure on `n_eval`
      fresh points (default n); in-sample numbers go to `info`.

    variant: "nested" | "residual" (see module docstring). profile: "paper" | "fast" (see
      PROFILES); n_estimators, learning_rate, max_bin, early_stopping_rounds override it
      (early_stopping_rounds=0 turns stopping off). device: "auto" | "cpu" | "cuda" ("cuda"
      without a usable CUDA build and device is a ValueError).
    n_jobs: CPU worker threads, each running one XGBoost thread (default: all cores).

    Returns EffectSizes(variance_by_order [R, K+1] or [K+1], total_variance [R] or scalar,
    stderr=None). `info`: variant, profile, device (read back from the boosters' config),
    in_sample, measured_on, n_rows per set, xgboost_params, rounds [R, K] (per target and
    depth), r2 {set: [R, K]} (R^2 of each stage model m_k against F on the fit / stop / eval
    rows), stage_correlation [R, K+1, K+1], covariance_share [R] (1 - sum V / Var F: nonzero
    when stages are correlated), in_sample_variance_by_order, in_sample_total_variance.
    """
    t0 = time.perf_counter()
    from ..device import xgboost_device  # torch import deferred: keeps this module light

    K = _positive_int("max_order", max_order)
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {tuple(PROFILES)}, got {profile!r}")
    prof = dict(PROFILES[profile])
    n_rounds = _positive_int(
        "n_estimators", prof["n_estimators"] if n_estimators is None else n_estimators)
    eta = prof["learning_rate"] if learning_rate is None else learning_rate
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 < eta <= 1:
        raise ValueError(f"learning_rate: expected a number in (0, 1], got {learning_rate!r}")
    bins = _positive_int("max_bin", prof["max_bin"] if max_bin is None else max_bin)
    if bins < 2:
        raise ValueError(f"max_bin: expected an integer >= 2, got {max_bin!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    xdev = xgboost_device(device)
    if n_jobs is None:
        n_jobs = 1 if xdev != "cpu" else (os.cpu_count() or 1)
    n_jobs = _positive_int("n_jobs", n_jobs)

    callable_input = callable(f_or_preds)
    patience = prof["early_stopping"]
    if callable_input and patience == 0:
        patience = CALLABLE_EARLY_STOPPING
    if early_stopping_rounds is not None:
        if isinstance(early_stopping_rounds, bool) or not isinstance(
            early_stopping_rounds, (int, np.integer)) or early_stopping_rounds < 0:
            raise ValueError(
                "early_stopping_rounds: expected a non-negative integer (0 = off), "
                f"got {early_stopping_rounds!r}")
        patience = int(early_stopping_rounds)

    # ---- assemble fit / stop / measurement sets: name -> (X [m, d], F [R, m])
    if callable_input:
        if not (hasattr(X_or_dist, "sample") and hasattr(X_or_dist, "d")):
            raise ValueError("X_or_dist: a callable f needs a distribution with .sample(n, seed)")
        n = _positive_int("n", n)
        n_stop = _positive_int("n_stop", n_stop if n_stop is not None else max(n // 4, 2))
        n_eval = _positive_int("n_eval", n_eval if n_eval is not None else n)
        s_fit, s_stop, s_eval = _seeds(int(seed), 3)

        def query(m: int, s: int, label: str):
            Xq = _as_rows(label, X_or_dist.sample(m, seed=s))
            F, b = _as_targets(f"f({label})", f_or_preds(Xq), Xq.shape[0])
            return Xq, F, b

        Xf, Ff, batched = query(n, s_fit, "fit sample")
        sets = {"fit": (Xf, Ff)}
        if patience > 0:
            Xs, Fs, _ = query(n_stop, s_stop, "stop sample")
            sets["stop"] = (Xs, Fs)
        Xe, Fe, _ = query(n_eval, s_eval, "eval sample")
        sets["eval"] = (Xe, Fe)
        measure_on = ("eval",)
    else:
        X = _as_rows("X_or_dist", X_or_dist)
        F, batched = _as_targets("f_or_preds", f_or_preds, X.shape[0])
        if patience > 0:
            if stop_fraction is None:
                stop_fraction = prof["stop_fraction"]
            if isinstance(stop_fraction, bool) or not (0 < stop_fraction < 1):
                raise ValueError(
                    f"stop_fraction: expected a number in (0, 1), got {stop_fraction!r}")
            perm = np.random.default_rng(int(seed)).permutation(X.shape[0])
            n_s = int(round(stop_fraction * X.shape[0]))
            if n_s < 1 or n_s >= X.shape[0] - 1:
                raise ValueError(f"stop_fraction: leaves no rows to fit or to stop on ({n_s})")
            s_idx, f_idx = np.sort(perm[:n_s]), np.sort(perm[n_s:])
            sets = {"fit": (X[f_idx], F[:, f_idx]), "stop": (X[s_idx], F[:, s_idx])}
            measure_on = ("fit", "stop")  # all given rows
        else:
            sets = {"fit": (X, F)}
            measure_on = ("fit",)
        if (X_eval is None) != (preds_eval is None):
            raise ValueError("X_eval: give both X_eval and preds_eval, or neither")
        if X_eval is not None:
            Xe = _as_rows("X_eval", X_eval)
            if Xe.shape[1] != X.shape[1]:
                raise ValueError(f"X_eval: expected {X.shape[1]} columns, got {Xe.shape[1]}")
            Fe, _ = _as_targets("preds_eval", preds_eval, Xe.shape[0])
            if Fe.shape[0] != F.shape[0]:
                raise ValueError(f"preds_eval: expected {F.shape[0]} replicas, got {Fe.shape[0]}")
            sets["eval"] = (Xe, Fe)
            measure_on = ("eval",)
    R = sets["fit"][1].shape[0]

    # ---- fit: target groups x depths, in worker threads (one XGBoost thread each on CPU)
    params = {"eta": float(eta), "max_bin": bins, "tree_method": "hist", "device": xdev,
              "seed": int(seed)}
    if xdev == "cpu":
        params["nthread"] = 1  # one XGBoost thread per worker thread
    n_groups = min(n_jobs, R)
    groups = [g for g in np.array_split(np.arange(R), n_groups) if len(g)]
    depth_lists = [[k] for k in range(K, 0, -1)] if variant == "nested" else [list(range(1, K + 1))]
    tasks = [(g, ds) for ds in depth_lists for g in groups]  # deepest (slowest) first

    def work(task):
        g, ds = task
        sub = {s: (Xs, Fs[g].T) for s, (Xs, Fs) in sets.items()}  # F: [m, G]
        return task, _run_group(variant, ds, sub, params, n_rounds, patience)

    if n_jobs == 1 or len(tasks) == 1:
        results = [work(t) for t in tasks]
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as ex:
            results = list(ex.map(work, tasks))

    # ---- gather m_k [R, m] per set, rounds [R, K]
    m_k = {s: [np.zeros_like(sets[s][1]) for _ in range(K)] for s in sets}
    rounds = np.zeros((R, K), dtype=np.int64)
    devices: set[str] = set()
    for (g, _), res in results:
        devices.update(res["device"])
        for k, per_set in res["m"].items():
            rounds[g, k - 1] = res["rounds"][k]
            for s, pred in per_set.items():
                m_k[s][k - 1][g] = pred.T

    def joined(names):
        F = np.concatenate([sets[s][1] for s in names], axis=1)
        return F, [np.concatenate([m_k[s][k] for s in names], axis=1) for k in range(K)]

    main = _summaries(*joined(measure_on))
    in_names = ("fit",) if callable_input or "eval" in measure_on else measure_on
    ins = _summaries(*joined(in_names))
    r2 = {s: _summaries(sets[s][1], m_k[s])["r2"] for s in sets}

    def squeeze(a):
        return a if batched else a[0]

    info = {
        "variant": variant,
        "profile": profile,
        "device": sorted(devices)[0] if len(devices) == 1 else sorted(devices),
        "device_requested": str(device),
        "in_sample": measure_on != ("eval",),
        "measured_on": "+".join(measure_on),
        "n_rows": {s: int(sets[s][0].shape[0]) for s in sets},
        "xgboost_params": {**params, "n_estimators": n_rounds, "early_stopping_rounds": patience},
        "rounds": squeeze(rounds),
        "r2": {s: squeeze(v) for s, v in r2.items()},
        "stage_correlation": squeeze(main["corr"]),
        "covariance_share": squeeze(main["cov_share"]),
        "in_sample_variance_by_order": squeeze(ins["v"]),
        "in_sample_total_variance": squeeze(ins["tot"]),
        "n_jobs": n_jobs,
        "seconds": time.perf_counter() - t0,
    }
    return EffectSizes(
        variance_by_order=squeeze(main["v"]),
        total_variance=squeeze(main["tot"]),
        stderr=None,
        method="distill",
        max_order=K,
        info=info,
    )
