"""The `fanova-gpu` command. Parses argv, calls the library, prints; the library never does.

Exit codes: 0 success, 1 a check failed, 2 bad input (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys


class InputError(Exception):
    """Bad user input: reported on stderr with exit code 2."""


def cmd_info(args: argparse.Namespace) -> int:
    from .device import capability_report

    rep = capability_report()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"auto device     : {rep['auto_device']}"
          + (f" ({rep['cuda_device_name']})" if rep["cuda_device_name"] else ""))
    print(f"cpu threads     : {rep['cpu_threads']} (cpu count {rep['cpu_count']})")
    for name, ver in rep["versions"].items():
        print(f"{name:<16}: {ver or 'not installed'}")
    print("fast paths:")
    for name, live in rep["fast_paths"].items():
        print(f"  {name:<14}: {'live' if live else 'off'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fanova-gpu", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="devices, versions, which fast paths are live")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    # Other subcommands register themselves here (run, verify, bench, plot).
    for register in _subcommand_registrars():
        register(sub)
    return p


def _subcommand_registrars():
    """Each feature module that offers a subcommand exposes `register_cli(subparsers)`."""
    import importlib

    for name in ("fanova_gpu.cli_run", "fanova_gpu.cli_verify", "fanova_gpu.cli_bench",
                 "fanova_gpu.cli_plot"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        yield module.register_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"fanova-gpu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
