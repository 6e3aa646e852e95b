import json
import subprocess
import sys


def test_info_json_reports_cpu_and_versions():
    out = subprocess.run(
        [sys.executable, "-m", "fanova_gpu.cli", "info", "--json"],
        capture_output=True, text=True, check=True,
    )
    rep = json.loads(out.stdout)
    import torch

    assert rep["auto_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert rep["versions"]["torch"] == torch.__version__
    assert set(rep["fast_paths"]) >= {"torch_cuda", "xgboost_cuda", "numba_cuda", "cupy"}


def test_cuda_request_without_cuda_is_an_error():
    import pytest
    import torch

    from fanova_gpu.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
