"""`fanova-gpu bench [--quick]`: run bench/report_*.py side by side and print ratio tables.

The bench/ folder sits beside the package in a source checkout (it is not installed); each
`report_*.py` module exposes `report(quick: bool) -> dict` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path


def bench_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "bench"
    if not here.is_dir():
        raise FileNotFoundError(
            f"bench folder: expected {here} (run from a source checkout of fanova-gpu)"
        )
    return here


def discover(only: list[str] | None = None) -> dict[str, Path]:
    """Report modules by short name (report_train.py -> 'train')."""
    found = {p.stem.removeprefix("report_"): p for p in sorted(bench_dir().glob("report_*.py"))}
    if only:
        unknown = [name for name in only if name not in found]
        if unknown:
            raise ValueError(
                f"--only: unknown suite(s) {unknown}; expected some of {sorted(found)}"
            )
        found = {name: found[name] for name in only}
    return found


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"fanova_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def format_table(rep: dict) -> str:
    cols = [str(c) for c in rep["columns"]]
    rows = [[_fmt(v) for v in row] for row in rep["rows"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [f"### {rep['title']}", "", line(cols), rule]
    out += [line(r) for r in rows]
    out += [""] + [f"- {n}" for n in rep.get("notes", [])]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def cmd_bench(args: argparse.Namespace) -> int:
    from .device import capability_report

    suites = discover(args.only.split(",") if args.only else None)
    reports = {}
    for name, path in suites.items():
        t0 = time.perf_counter()
        rep = load(path).report(quick=args.quick)
        rep["seconds"] = round(time.perf_counter() - t0, 1)
        reports[name] = rep
        if not args.json:
            print(format_table(rep), flush=True)
            print(f"({name}: {rep['seconds']} s)\n", flush=True)
    if args.json:
        print(json.dumps({"machine": capability_report(), "reports": reports}, indent=2,
                         default=str))
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("bench", help="side-by-side ratio tables (bench/report_*.py)")
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute per suite")
    p.add_argument("--only", default=None, help="comma-separated suite names, e.g. train,masks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)
