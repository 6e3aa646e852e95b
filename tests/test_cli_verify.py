"""`fanova-gpu verify`: exit codes, JSON rows, and the battery's numbers against closed forms."""

import json

import pytest

from fanova_gpu.cli import main


def run(capsys, *argv):
    code = main(["verify", *argv])
    return code, capsys.readouterr()


def test_theorem1_battery_holds_and_reports_the_gap(capsys):
    code, out = run(capsys, "theorem1", "--p", "0.25,0.5", "--samples", "4000", "--points",
                    "8", "--json")
    assert code == 0
    rep = json.loads(out.out)
    assert rep["ok"] and rep["failed"] == 0
    rows = rep["rows"]
    assert len(rows) == 2 * 20
    assert {r["order"] for r in rows} == {1, 2, 3, 4}
    for r in rows:
        assert r["verdict"] == "holds"
        if r["form"] == "conditional" or r["f_u(0)=0"]:
            assert r["predicted"] == pytest.approx((1 - r["p"]) ** r["order"], abs=1e-12)
            assert r["exact"] == pytest.approx(r["predicted"], abs=1e-9)
        if r["function"] == "x0x1+x0^2-1/3":
            assert r["max |gap|"] == pytest.approx(r["p"] / 3, abs=1e-12)
        if r["f_u(0)=0"]:
            assert r["max |gap|"] == pytest.approx(0.0, abs=1e-12)


def test_theorem1_table_and_failure_exit_code(capsys):
    code, out = run(capsys, "theorem1", "--p", "0.3", "--samples", "2000", "--points", "4")
    assert code == 0 and "20 of 20 checks hold" in out.out and "p = 0.3" in out.out
    # zero tolerance: Monte Carlo error is never exactly zero, so checks fail -> exit 1
    code, out = run(capsys, "theorem1", "--p", "0.3", "--samples", "2000", "--points", "4",
                    "--z", "0")
    assert code == 1 and "FAIL" in out.out


def test_theorem2_battery(capsys):
    code, out = run(capsys, "theorem2", "--p", "0.5", "--samples", "60", "--points", "4",
                    "--json")
    assert code == 0
    rows = json.loads(out.out)["rows"]
    exact = [r for r in rows if r["h(0)=0"] and r["theta"] == 0.0]
    assert len(exact) == 2 * 4
    for r in exact:
        assert r["verdict"] == "holds"
        assert r["exact"] == pytest.approx(0.5 ** r["order"], abs=1e-10)


@pytest.mark.parametrize("argv", [
    ["theorem1", "--p", "1.5"],
    ["theorem1", "--p", "a,b"],
    ["theorem1", "--samples", "1"],
    ["theorem1", "--device", "tpu"],
])
def test_bad_input_exits_2(capsys, argv):
    code, out = run(capsys, *argv)
    assert code == 2 and "error" in out.err
