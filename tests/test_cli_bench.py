import subprocess
import sys

from fanova_gpu.cli_bench import format_table


def test_bench_unknown_suite_exits_2_and_names_flag():
    out = subprocess.run(
        [sys.executable, "-m", "fanova_gpu.cli", "bench", "--only", "no-such-suite"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "--only" in out.stderr


def test_format_table_aligns_columns():
    text = format_table({"title": "t", "columns": ["a", "bb"], "rows": [[1.23456, "x"]]})
    lines = text.splitlines()
    assert lines[0] == "### t"
    assert lines[2] == "| a    | bb |"
    assert lines[4] == "| 1.23 | x  |"
