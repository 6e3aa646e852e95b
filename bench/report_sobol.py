"""sobol: accuracy per model evaluation against SALib, and throughput for the MLP use case.

(1) Sobol' G-function (d = 8, a = 0, 1, 4.5, 9, 99, 99, 99, 99; exact split from
    fanova_gpu.functions): root-mean-square error of V_1/Var, V_2/Var (SALib: sum of S1, sum of
    S2) and V_3/Var over repetitions, every method at the same number of evaluations
    B = N (2d + 2) (SALib's Saltelli design with second order). SALib runs twice: with its own
    scrambled Sobol' sampler (the default) and with iid points in the same design (plain MC).
    Rows marked "(before)" are the U-statistic designs; the others use the first-moment
    estimator (mirrored: SALib's A, B, AB_i, BA_i rows) for V_1 and a staged design for
    V_2, V_3, at the same total budget.
(2) 140 trained 3x32 ReLU replicas (d = 25), V_1..V_3 with standard errors: batched over
    replicas (one torch forward for all replicas, `baddbmm`) against the straightforward way
    (one decompose call per replica), and the projected time to stderr <= 1% of Var F.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402

import fanova_gpu as fg  # noqa: E402
from fanova_gpu.decompose.sobol import budget_evaluations  # noqa: E402
from fanova_gpu.functions import g_function  # noqa: E402

G_A = (0.0, 1.0, 4.5, 9.0, 99.0, 99.0, 99.0, 99.0)


# ----------------------------------------------------------------------------- (1) accuracy


def _saltelli_iid(d: int, N: int, seed: int) -> np.ndarray:
    """SALib's Saltelli layout (A, AB_1..AB_d, BA_1..BA_d, B per base row) with iid points."""
    rng = np.random.default_rng(seed)
    A, B = rng.random((N, d)), rng.random((N, d))
    rows = [A]
    for i in range(d):
        ab = A.copy()
        ab[:, i] = B[:, i]
        rows.append(ab)
    for i in range(d):
        ba = B.copy()
        ba[:, i] = A[:, i]
        rows.append(ba)
    rows.append(B)
    return np.stack(rows, axis=1).reshape(-1, d)  # [N (2d+2), d]


def salib_fractions(f, d: int, N: int, seed: int, sampler: str) -> np.ndarray:
    """(sum S1, sum S2) from SALib's Saltelli estimators."""
    from SALib.analyze import sobol as analyze
    from SALib.sample import sobol as sample

    problem = {"num_vars": d, "names": [f"x{i}" for i in range(d)], "bounds": [[0, 1]] * d}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler == "qmc":
            X = sample.sample(problem, N, calc_second_order=True, scramble=True, seed=seed)
        else:
            X = _saltelli_iid(d, N, seed)
        Si = analyze.analyze(problem, f(X), calc_second_order=True, num_resamples=2, seed=seed)
    return np.array([np.sum(Si["S1"]), np.nansum(np.triu(Si["S2"], 1)), np.nan])


def ours_fractions(f, N: int, spec: dict, seed: int) -> tuple[np.ndarray, int]:
    """(V_1, V_2, V_3)/Var from fg sobol within the budget N (2d+2); returns also evaluations.

    spec: K, m, estimator, sampler, scrambles; staged designs give per-order lists m,
    estimator and `share` (the fraction of the budget each stage k spends).
    """
    d, K, m, mirror = f.d, spec["K"], spec["m"], spec.get("mirror", False)
    budget, G = N * (2 * d + 2), spec.get("scrambles", 8)
    if "share" in spec:  # stages 2..K get their share (>= 2 points per net), stage 1 the rest
        n = [max(2 * G, int(budget * spec["share"][k]) //
                 budget_evaluations(d, k + 1, 1, m[k], mirror)) for k in range(K)]
        rest = budget - sum(budget_evaluations(d, k + 1, n[k], m[k], mirror) for k in range(1, K))
        n[0] = rest // budget_evaluations(d, 1, 1, m[0], mirror)
    else:
        n = budget // budget_evaluations(d, K, 1, m, mirror)
    res = fg.decompose(f, f.dist, method="sobol", max_order=K, n=n, complements=m,
                       seed=seed, sampler=spec["sampler"], scrambles=G,
                       estimator=spec.get("estimator", "ustat"), mirror=mirror,
                       pool=spec.get("pool", "points"))
    frac = np.full(3, np.nan)
    frac[:K] = res.variance_by_order[:K] / res.total_variance
    return frac, res.info["evaluations"]


STAGED = {"K": 3, "m": [1, 2, 2], "estimator": ["saltelli", "combined", "ustat"],
          "mirror": True, "pool": "first", "sampler": "sobol"}


def accuracy(quick: bool) -> tuple[list, list]:
    f = g_function(G_A)
    d = f.d
    exact = f.variance_by_order(3)[:3] / f.total_variance
    N, reps = (1024, 48) if quick else (4096, 64)
    budget = N * (2 * d + 2)
    u, sal = "ustat", "saltelli"
    configs = [
        ("SALib Saltelli, scrambled Sobol' (default)", "salib", "qmc"),
        ("SALib Saltelli, iid points", "salib", "iid"),
        ("fg sobol K=1 m=2 U-stat, random (before)", "ours",
         {"K": 1, "m": 2, "estimator": u, "sampler": "random"}),
        ("fg sobol K=2 m=2 U-stat, random (before)", "ours",
         {"K": 2, "m": 2, "estimator": u, "sampler": "random"}),
        ("fg sobol K=3 m=8 U-stat, random (before)", "ours",
         {"K": 3, "m": 8, "estimator": u, "sampler": "random"}),
        ("fg sobol K=3 m=8 U-stat, scrambled Sobol' x8 (before)", "ours",
         {"K": 3, "m": 8, "estimator": u, "sampler": "sobol", "scrambles": 8}),
        ("fg sobol K=1 m=1 first-moment, random", "ours",
         {"K": 1, "m": 1, "estimator": sal, "sampler": "random"}),
        ("fg sobol K=1 m=1 first-moment mirrored, random", "ours",
         {"K": 1, "m": 1, "estimator": sal, "mirror": True, "sampler": "random"}),
        ("fg sobol K=1 m=1 first-moment mirrored, scrambled x2", "ours",
         {"K": 1, "m": 1, "estimator": sal, "mirror": True, "sampler": "sobol",
          "scrambles": 2}),
        ("fg sobol K=2 m=2 combined, random", "ours",
         {"K": 2, "m": 2, "estimator": "combined", "sampler": "random"}),
        ("fg sobol staged 80/15/5%: K=1 mirrored first-moment, K=2 combined m=2, K=3 U-stat "
         "m=2, pool first, scrambled x2", "ours", dict(STAGED, share=[0.8, 0.15, 0.05],
                                                       scrambles=2)),
        ("fg sobol staged 60/30/10%, same, scrambled x2", "ours",
         dict(STAGED, share=[0.6, 0.3, 0.1], scrambles=2)),
        ("fg sobol staged 60/30/10%, same, scrambled x4", "ours",
         dict(STAGED, share=[0.6, 0.3, 0.1], scrambles=4)),
        ("fg sobol staged 60/30/10%, same, random points", "ours",
         dict(STAGED, share=[0.6, 0.3, 0.1], sampler="random")),
    ]
    rows, rmse = [], {}
    for label, who, spec in configs:
        errs, evals = [], budget
        t0 = time.perf_counter()
        for rep in range(reps):
            if who == "salib":
                frac = salib_fractions(f, d, N, rep, spec)
            else:
                frac, evals = ours_fractions(f, N, spec, 1000 + rep)
            errs.append(frac - exact)
        sec = (time.perf_counter() - t0) / reps
        sq = np.square(errs)  # [reps, 3]
        rmse[label] = np.sqrt(np.mean(sq, axis=0))
        # relative stderr of an RMSE over reps (delta method): sd(e^2) / (2 mean(e^2) sqrt(reps))
        rel = sq.std(axis=0, ddof=1) / (2 * sq.mean(axis=0) * np.sqrt(reps))
        rows.append([f"G-function accuracy: {label}", evals, *_pct(rmse[label]), round(sec, 3),
                     "-", "-", rel])
    base = rmse[configs[0][0]]
    for row, (label, *_rest) in zip(rows, configs, strict=True):
        ratio, rel = rmse[label] / base, row.pop()
        row[-1] = (f"err / SALib default: V1 {ratio[0]:.2f}, V2 {ratio[1]:.2f}"
                   f" (RMSE +-{100 * np.nanmax(rel[:2]):.0f}%)")
    notes = [
        f"accuracy: G-function d = {d}, a = {list(G_A)}; exact fractions V_1..V_3 / Var = "
        f"{np.round(exact, 6).tolist()}; budget B = N (2d+2) = {budget} evaluations "
        f"(N = {N}); RMSE over {reps} repetitions, in percentage points of Var F; the RMSE "
        "of heavy-tailed errors is itself noisy (+-% in the last column: its own stderr)",
        "fg sobol uses n = B / (m S + 1) base points (S = subsets of size <= K incl. the empty "
        "one), so it uses <= B; staged: stage k gets the stated share of B",
        "first-moment = estimator='saltelli' (Sobol' 2007 / Saltelli 2010 form with "
        "leave-one-group-out centring, exactly unbiased, 1 complement); mirrored = also the "
        "swapped hybrids (SALib's BA_i rows): 2S evaluations per point; scrambled xG = G "
        "independent scrambled Sobol' nets, stderr from their spread (G - 1 degrees of "
        "freedom; SALib's default reports no valid QMC stderr)",
    ]
    return rows, notes


def _pct(e: np.ndarray) -> list:
    return [("-" if np.isnan(v) else round(100 * float(v), 3)) for v in e]


# ----------------------------------------------------------------------------- (2) throughput


def trained_replicas(steps: int, seed: int = 0):
    """140 replicas (35 seeds x 4 activation-dropout rates), width 32, depth 3, d = 25."""
    from fanova_gpu import data

    X, y = data.main_effects(n=1500, d=25, seed=seed)
    grid = fg.ReplicaGrid(seeds=range(35), dropout_rates=[0.0, 0.1, 0.25, 0.5],
                          dropout_kinds=["activation"], widths=[32], weight_decays=[0.0],
                          depth=3)
    t0 = time.perf_counter()
    run = fg.train_replicas(X, y, grid, steps=steps, lr=1e-3, device="auto")
    return run, time.perf_counter() - t0


class StackedMLP(torch.nn.Module):
    """All replicas in one forward: layers W [R, in, out], b [R, 1, out]; [N, d] -> [R, N]."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.layers = layers

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = X.expand(self.layers[0][0].shape[0], *X.shape)  # [R, N, d]
        for i, (W, b) in enumerate(self.layers):
            h = torch.baddbmm(b, h, W)  # [R, N, out]
            if i < len(self.layers) - 1:
                h = h.clamp_(min=0)
        return h[..., 0]

    def select(self, rows: slice) -> StackedMLP:
        return StackedMLP([(W[rows], b[rows]) for W, b in self.layers])


def glorot_layers(R: int, d: int, width: int, depth: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    dims = [d] + [width] * depth + [1]
    out = []
    for i, o in zip(dims[:-1], dims[1:], strict=True):
        a = (6.0 / (i + o)) ** 0.5
        out.append(((torch.rand(R, i, o, generator=g) * 2 - 1) * a, torch.zeros(R, 1, o)))
    return out


def throughput(quick: bool) -> tuple[list, list]:
    steps = 20 if quick else 1000
    d, width, depth, m, K = 25, 32, 3, 16, 3
    dev = fg.device.resolve_device("auto")
    try:
        from fanova_gpu.replicas import param_views

        run, train_s = trained_replicas(steps)
        theta = torch.from_numpy(np.asarray(run.params[width]))  # [140, P]
        net = StackedMLP([(W.contiguous(), b.contiguous())
                          for W, b in param_views(theta, d, width, depth)])
        source = f"trained {steps} steps (main_effects data, {train_s:.0f} s)"
    except Exception as exc:  # the trainer is another module; fall back to Glorot nets
        net = StackedMLP(glorot_layers(140, d, width, depth))
        source = f"Glorot-initialized (trainer unavailable: {type(exc).__name__}: {exc})"
    net = StackedMLP([(W.to(dev), b.to(dev)) for W, b in net.layers])
    R = net.layers[0][0].shape[0]
    dist = fg.Uniform(-1.0, 1.0, d=d)
    kw = dict(max_order=K, complements=m, input="torch", dtype="float32", device=str(dev))
    n_batched, n_loop, R_loop = (2, 2, 4) if quick else (48, 8, 16)

    t0 = time.perf_counter()
    res = fg.decompose(net, dist, method="sobol",
                       n=n_batched, seed=0, **kw)
    t_batched = time.perf_counter() - t0
    evals = res.info["evaluations"] * R
    rate = evals / t_batched

    t0 = time.perf_counter()
    for r in range(R_loop):
        fg.decompose(net.select(slice(r, r + 1)), dist, method="sobol",
                     n=n_loop, seed=0, **kw)
    t_loop = time.perf_counter() - t0
    rate_loop = res.info["evaluations"] / n_batched * n_loop * R_loop / t_loop

    # efficiency constant c = (stderr / Var) sqrt(evaluations) per replica, from more points
    R_eff, n_eff = (8, 16) if quick else (140, n_batched)
    if quick:
        eff = fg.decompose(net.select(slice(0, R_eff)), dist,
                           method="sobol", n=n_eff, seed=1, **kw)
    else:
        eff = res
    rel = eff.stderr[:, :K] / eff.total_variance[:, None]  # [R_eff, K]
    c = rel * np.sqrt(eff.info["evaluations"])
    need = float((c.max(axis=0) / 0.01).max() ** 2)  # evaluations per replica for <= 1%
    projected = need * R / rate
    frac = (eff.variance_by_order / eff.total_variance[:, None]).mean(axis=0)
    # the same budget with m = 2 complements (8 replicas): error per evaluation vs m = 16
    n2 = n_eff * (m * 2626 + 1) // (2 * 2626 + 1)
    kw2 = dict(kw, complements=2)
    e2 = fg.decompose(net.select(slice(0, 8)), dist, method="sobol", n=n2, seed=1, **kw2)
    rel2 = e2.stderr[:, :K] / e2.total_variance[:, None]
    rel16 = rel[:8]
    gain = np.sqrt((rel2**2).mean(axis=0) / (rel16**2).mean(axis=0))
    staged = staged_projection(net, dist, quick, rate, R)

    rows = [
        [f"MLP throughput: batched, R={R}, n={n_batched}", evals, *_pct(rel.max(axis=0)),
         round(t_batched, 2), f"{rate:.3g}", f"{rate / rate_loop:.2f}x the loop"],
        [f"MLP throughput: one replica at a time, {R_loop} replicas, n={n_loop}",
         res.info["evaluations"] // n_batched * n_loop * R_loop, "-", "-", "-", round(t_loop, 2),
         f"{rate_loop:.3g}", "1.00x"],
        [f"MLP: projected time to stderr <= 1% of Var F, all {R} replicas, V_1..V_3",
         int(need * R), "-", "-", "-", round(projected, 1), f"{rate:.3g}",
         f"{need:.3g} evals/replica"],
        [f"MLP: m=2 complements at the same budget (8 replicas, n={n2})",
         e2.info["evaluations"] * 8, *_pct(rel2.max(axis=0)), "-", "-",
         "stderr / stderr(m=16): " + ", ".join(f"V{k + 1} {g:.2f}" for k, g in enumerate(gain))],
        *staged["rows"],
    ]
    notes = [
        f"throughput: {R} replicas, width {width}, depth {depth}, d = {d}, {source}; "
        f"K = {K}, m = {m} complements, S = 2626 subsets, {m * 2626 + 1} evaluations per base "
        f"point per replica; float32 forward, float64 statistics; device {dev}",
        f"error columns of the throughput rows: worst replica's stderr / Var F per order "
        f"(from {R_eff} replicas x {n_eff} base points); projection = max_replica "
        f"(stderr/Var)^2 x evaluations / 0.01^2 x R / measured evals/s",
        f"mean split over replicas (V_1, V_2, V_3, V_>3) / Var: {np.round(frac, 3).tolist()}",
    ]
    return rows, notes


STAGES = ((1, 2), (2, 16), (3, 16))  # (order k, complements m) of the staged design


def staged_projection(net, dist, quick: bool, rate: float, R: int) -> dict:
    """Evaluations per replica a staged design needs for stderr <= 1% of Var F.

    Each stage k (subsets of size <= k, m_k complements) is measured alone on 8 replicas;
    its top order V_k (and Var F for k = 1) sets how many evaluations it needs. The pooled
    staged estimate can only be better than these single-stage numbers.
    """
    kw = dict(max_order=1, input="torch", dtype="float32", device=str(dist_device()))
    pilot_n = {1: 400, 2: 16, 3: 16} if quick else {1: 2000, 2: 64, 3: 48}
    need, sub = {}, net.select(slice(0, 8))
    for k, m in STAGES:
        res = fg.decompose(sub, dist, method="sobol", n=pilot_n[k], complements=m, seed=10 + k,
                           **dict(kw, max_order=k))
        se = res.stderr[:, k - 1]
        if k == 1:
            se = np.maximum(se, res.info["total_stderr"])
        c = se / res.total_variance * np.sqrt(res.info["evaluations"])
        need[k] = float((c.max() / 0.01) ** 2)
    n_stage = [int(np.ceil(need[k] / budget_evaluations(25, k, 1, m))) for k, m in STAGES]
    total = sum(need.values())
    rows = [[f"MLP: staged design (K=1 m=2, K=2 m=16, K=3 m=16), projected to 1%, all {R}",
             int(total * R), "-", "-", "-", round(total * R / rate, 1), f"{rate:.3g}",
             f"{total:.3g} evals/replica; n per stage {n_stage}"]]
    if not quick:  # run it: target 1%, every replica, n per stage from the pilot x 1.5
        t0 = time.perf_counter()
        res = fg.decompose(net, dist, method="sobol", max_order=3,
                           n=[max(int(1.5 * v), 200) for v in n_stage],
                           complements=[m for _, m in STAGES], seed=2, target=0.01, min_n=16,
                           input="torch", dtype="float32", device=str(dist_device()))
        sec = time.perf_counter() - t0
        rel = res.stderr[:, :3] / res.total_variance[:, None]
        rows.append([f"MLP: staged design run with target 1%, all {R} replicas, n={res.info['n']}",
                     res.info["evaluations"] * R, *_pct(rel.max(axis=0)), round(sec, 1),
                     f"{res.info['evaluations'] * R / sec:.3g}", "measured"])
    return {"rows": rows}


def dist_device():
    return fg.device.resolve_device("auto")


def report(quick: bool = False) -> dict:
    torch.manual_seed(0)
    rows1, notes1 = accuracy(quick)
    rows2, notes2 = throughput(quick)
    return {
        "title": "sobol: error per evaluation vs SALib (G-function) and MLP-replica throughput",
        "columns": ["case", "evaluations", "err V1 %", "err V2 %", "err V3 %", "seconds",
                    "evals/s", "comparison"],
        "rows": rows1 + rows2,
        "notes": notes1 + notes2 + [
            "timings on a shared 2-core machine are contended; ratios are from one run",
        ],
        "machine": machine_info(),
    }


if __name__ == "__main__":
    from fanova_gpu.cli_bench import format_table

    print(format_table(report(quick="--full" not in sys.argv)))
