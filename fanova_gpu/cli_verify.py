"""`fanova-gpu verify theorem1|theorem2`: a default battery of checks printed as tables.

Theorem 1 battery: pure order-k products (k = 1..4) of mean-zero factors on Unif(-1, 1)^4,
one whose factors vanish at 0 (x, sin x: f_u(0) = 0, zero imputation exact too) and one whose
factors do not (x^2 - 1/3, cos x - sin 1), plus the gap example x0 x1 + x0^2 - 1/3. The measured
factor of order k is the least-squares coefficient of f_(k) (the order-k part) in the
Monte Carlo left side over the points; its tolerance is z standard errors.
Exit codes: 0 every check holds, 1 one fails, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from . import theory
from .data import Uniform

D = 4
_VANISH = (("x", 0.0), ("sin", 0.0))  # h(0) = 0 = E h on Unif(-1, 1)
_NONVANISH = (("x2", -1.0 / 3.0), ("cos", -math.sin(1.0)))  # centered, h(0) != 0


def _product(order: int, factors) -> dict:
    """Encoding of prod_{i < order} h_i(x_i), cycling through `factors` (kind, offset b)."""
    kinds = [factors[i % len(factors)] for i in range(order)]
    return theory.check_encoding({
        "coef": [1.0], "nfac": [order], "var": [list(range(order))],
        "kind": [[theory.KIND_NAMES.index(k) for k, _ in kinds]], "a": [[1.0] * order],
        "c": [[0.0] * order], "b": [[b for _, b in kinds]]})


def battery() -> list[tuple[str, bool, dict]]:
    """(name, f_u(0) = 0 for every component, encoding) for the default Theorem 1 checks."""
    out = []
    for k in range(1, 5):
        out.append((f"vanish{k}", True, _product(k, _VANISH)))
        out.append((f"offset{k}", False, _product(k, _NONVANISH)))
    gap = theory.check_encoding({
        "coef": [1.0, 1.0, -1.0 / 3.0], "nfac": [2, 1, 0], "var": [[0, 1], [0, 0], [0, 0]],
        "kind": [[0, 0], [1, 0], [0, 0]], "a": np.ones((3, 2)), "c": np.zeros((3, 2)),
        "b": np.zeros((3, 2))})
    out.append(("x0x1+x0^2-1/3", False, gap))
    return out


def _fit(y, se, A):
    """Least-squares coefficients of y on columns A [m, K] and their standard errors."""
    pinv = np.linalg.pinv(A)  # [K, m]
    coef = pinv @ y
    cse = np.sqrt((pinv**2) @ (se**2)) if se is not None else np.zeros_like(coef)
    return coef, cse


def theorem1_rows(ps, samples: int, device: str, seed: int, n_points: int, z: float) -> list:
    from .verify import theorem1

    dist = Uniform(-1.0, 1.0, d=D)
    X = dist.sample(n_points, seed=seed).astype(np.float64)
    rows = []
    for p in ps:
        q = 1.0 - p
        for name, vanish, enc in battery():
            gx, mu, g0 = theory.factor_tables(enc, dist, X)
            comp = theory.components_by_order(enc, gx, mu)  # [m, F+1], order 0..F
            orders = [k for k in range(1, comp.shape[1]) if np.any(np.abs(comp[:, k]) > 1e-12)]
            A = comp[:, orders]
            ex = theorem1(enc, dist, p, X, method="exact")
            mc = theorem1(enc, dist, p, X, method="mc", samples=samples, seed=seed,
                          device=device, z=z)
            zero_closed = theory.zero_form(enc, gx, g0, p)
            for form in ("conditional", "zero"):
                if form == "conditional":
                    pred = q ** np.array(orders, dtype=float)
                    exact_y, mc_y, se = (ex.lhs_conditional - comp[:, 0], mc.lhs_conditional
                                         - comp[:, 0], mc.stderr_conditional)
                    exact_ok = ex.max_abs_error <= ex.tolerance
                else:
                    pred = _fit(zero_closed - comp[:, 0], None, A)[0]
                    exact_y, mc_y, se = (ex.lhs_zero - comp[:, 0], mc.lhs_zero - comp[:, 0],
                                         mc.stderr_zero)
                    exact_ok = bool(np.max(np.abs(ex.lhs_zero - zero_closed)) <= ex.tolerance)
                f_exact = _fit(exact_y, None, A)[0]
                f_mc, f_se = _fit(mc_y, se, A)
                for j, k in enumerate(orders):
                    err = abs(f_mc[j] - pred[j])
                    tol = z * f_se[j] + 1e-9
                    holds = exact_ok and abs(f_exact[j] - pred[j]) <= 1e-9 and err <= tol
                    rows.append({
                        "p": p, "function": name, "order": k, "f_u(0)=0": vanish, "form": form,
                        "predicted": float(pred[j]), "exact": float(f_exact[j]),
                        "measured": float(f_mc[j]), "error": float(err), "tolerance": float(tol),
                        "equals (1-p)^k": bool(abs(pred[j] - q**k) <= 1e-9),
                        "max |gap|": float(np.max(np.abs(ex.gap))),
                        "verdict": "holds" if holds else "FAILS"})
    return rows


def theorem2_rows(ps, samples: int, seed: int, z: float, n: int) -> list:
    from .verify import BASES, theorem2

    dist = Uniform(-1.0, 1.0, d=D)
    rows = []
    for p in ps:
        for basis in BASES:
            for theta in (0.0, 0.5):
                rep = theorem2(dist, p, max_order=4, basis=basis, n=n, theta_scale=theta,
                               samples=samples, seed=seed, z=z)
                for j, k in enumerate(rep.orders):
                    ref = rep.predicted[j] if rep.exact_expected else rep.ratio_exact[j]
                    err = abs(rep.ratio_mc[j] - ref)
                    tol = z * rep.stderr_mc[j]
                    if rep.exact_expected:
                        good = abs(rep.ratio_exact[j] - ref) <= 1e-10 and err <= tol + 1e-9
                        verdict = "holds" if good else "FAILS"
                    else:
                        verdict = "measured" if err <= tol + 1e-9 else "FAILS (MC != exact)"
                    rows.append({
                        "p": p, "basis": basis, "h(0)=0": abs(rep.info["h(0)"]) < 1e-14,
                        "theta": theta, "order": int(k), "predicted": float(rep.predicted[j]),
                        "exact": float(rep.ratio_exact[j]), "measured": float(rep.ratio_mc[j]),
                        "error": float(err), "tolerance": float(tol),
                        "deviation from (1-p)^k": float(rep.ratio_exact[j] - rep.predicted[j]),
                        "verdict": verdict})
    return rows


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _print_tables(rows: list, title: str) -> None:
    cols = [c for c in rows[0] if c != "p"]
    for p in sorted({r["p"] for r in rows}):
        sub = [[_fmt(r[c]) for c in cols] for r in rows if r["p"] == p]
        width = [max(len(c), *(len(s[i]) for s in sub)) for i, c in enumerate(cols)]
        print(f"\n{title}, p = {p:g}, predicted factor (1-p)^k = E_M shrinkage of order k")
        print("  ".join(c.ljust(w) for c, w in zip(cols, width, strict=True)))
        for s in sub:
            print("  ".join(v.ljust(w) for v, w in zip(s, width, strict=True)))


def _parse_ps(text: str) -> list[float]:
    try:
        ps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--p: expected comma-separated rates in [0, 1), got {text!r}") from None
    if not ps or any(not 0.0 <= p < 1.0 for p in ps):
        raise ValueError(f"--p: expected comma-separated rates in [0, 1), got {text!r}")
    return ps


def cmd_verify(args: argparse.Namespace) -> int:
    ps = _parse_ps(args.p)
    if args.samples is None:
        args.samples = 100_000 if args.theorem == "theorem1" else 500
    if args.samples < 2:
        raise ValueError(f"--samples: expected an integer >= 2, got {args.samples}")
    if args.points < 2:
        raise ValueError(f"--points: expected an integer >= 2, got {args.points}")
    if args.theorem == "theorem1":
        from .verify import _mc_device

        _mc_device(args.device)  # bad or unavailable device -> ValueError -> exit 2
        rows = theorem1_rows(ps, args.samples, args.device, args.seed, args.points, args.z)
        title = "Theorem 1: E[Y | X*M] = sum_u (1-p)^|u| f_u(x)"
    else:
        rows = theorem2_rows(ps, args.samples, args.seed, args.z, 50 * args.points)
        title = "Theorem 2: masked gradient projected on the unmasked one"
    failed = sum(r["verdict"].startswith("FAILS") for r in rows)
    if args.json:
        print(json.dumps({"theorem": args.theorem, "ok": failed == 0, "failed": failed,
                          "rows": rows}, indent=1))
    else:
        _print_tables(rows, title)
        print(f"\n{len(rows) - failed} of {len(rows)} checks hold" + (
            "" if not failed else f"; {failed} FAIL"))
    return 0 if failed == 0 else 1


def register_cli(subparsers) -> None:
    sp = subparsers.add_parser("verify", help="check Theorem 1 / 2 numerically",
                               description=__doc__.splitlines()[0])
    sp.add_argument("theorem", choices=("theorem1", "theorem2"))
    sp.add_argument("--p", default="0.1,0.25,0.5", help="dropout rates, comma-separated")
    sp.add_argument("--samples", type=int, default=None,
                    help="Monte Carlo masks per point (theorem1, default 100000) or per "
                         "check (theorem2, default 500)")
    sp.add_argument("--points", type=int, default=32,
                    help="evaluation points (theorem1) / data rows (theorem2 uses 50x)")
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cupy | numpy")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--z", type=float, default=5.0, help="tolerance in standard errors")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_verify)
