"""Dropout mask kernels against the NumPy reference of the stream and against binomial truths."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from fanova_gpu.kernels import dropout_masks as dm
from fanova_gpu.kernels.rng import derive_key, uniform_numpy


def _keys(seeds, kinds, rates, step, layer):
    return dm.step_keys(dm.base_keys(seeds, kinds, rates), step, layer)


def test_step_keys_continue_derive_key():
    seeds, kinds, rates = [0, 7, 123], ["input", "activation", "both"], [0.0, 0.25, 0.5]
    got = _keys(seeds, kinds, rates, 41, 2)
    want = [derive_key(dm.MASK_STREAM, s, dm.KIND_CODES[k], round(p * 1e6), 41, 2)
            for s, k, p in zip(seeds, kinds, rates, strict=True)]
    np.testing.assert_array_equal(got, np.array(want, dtype=np.uint64))
    np.testing.assert_array_equal(dm.step_keys_py(dm.base_keys(seeds, kinds, rates), 41, 2), got)


def test_cpu_kernel_equals_numpy_reference_bit_for_bit():
    rates = np.array([0.0, 0.1, 0.5, 0.75, 0.999], dtype=np.float32)
    keys = _keys(range(5), ["both"] * 5, rates, 3, 1)
    out = np.full((5, 37, 19), np.nan, dtype=np.float32)
    dm.fill_masks(out, keys, rates, dm.scales(rates))
    ref = masks_ref = dm.masks_numpy(keys, rates, 37, 19)
    np.testing.assert_array_equal(out, ref)
    # the reference itself: keep iff u >= p, kept value 1 / (1 - p)
    u = uniform_numpy(int(keys[2]), np.arange(37 * 19)).reshape(37, 19)
    np.testing.assert_array_equal(masks_ref[2], np.where(u >= 0.5, np.float32(2.0), 0.0))


def test_fused_relu_dropout_equals_mask_times_relu():
    rng = np.random.default_rng(0)
    rates = np.array([0.0, 0.3, 0.6], dtype=np.float32)
    keys = _keys([1, 2, 3], ["activation"] * 3, rates, 9, 3)
    z = rng.standard_normal((3, 50, 13)).astype(np.float32)
    bias = rng.standard_normal((3, 13)).astype(np.float32)
    a = z.copy()
    dm.relu_dropout(a, bias, keys, rates, dm.scales(rates))
    M = dm.masks_numpy(keys, rates, 50, 13)
    zb = z + bias[:, None, :]
    np.testing.assert_array_equal(a, np.maximum(zb, 0) * M)
    # the backward pass's derivative: mask * (zb > 0) == scale * (a > 0)
    np.testing.assert_array_equal(M * (zb > 0), dm.scales(rates)[:, None, None] * (a > 0))


def test_fused_input_dropout_equals_x_times_mask():
    rng = np.random.default_rng(1)
    rates = np.array([0.2, 0.0, 0.5], dtype=np.float32)
    keys = _keys([1, 2, 3], ["input"] * 3, rates, 4, 0)
    M = dm.masks_numpy(keys, rates, 30, 7)
    for x in (rng.standard_normal((1, 30, 7)), rng.standard_normal((3, 30, 7))):
        x = x.astype(np.float32)
        out = np.empty((3, 30, 7), dtype=np.float32)
        dm.mask_mul(out, x, keys, rates, dm.scales(rates))
        np.testing.assert_array_equal(out, x * M)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_masks_keep_each_unit_with_probability_one_minus_p(p):
    R, n, units = 4, 500, 64
    rates = np.full(R, p, dtype=np.float32)
    out = np.empty((R, n, units), dtype=np.float32)
    dm.fill_masks(out, _keys(range(R), ["input"] * R, rates, 0, 0), rates, dm.scales(rates))
    assert set(np.unique(out)) <= {0.0, np.float32(1 / (1 - p))}
    kept = out > 0
    N = kept.size
    assert abs(kept.sum() - N * (1 - p)) < 5 * np.sqrt(N * p * (1 - p))
    # per unit (column) over R * n draws: each within 5 binomial standard errors
    per_unit = kept.sum(axis=(0, 1))
    m = R * n
    assert np.all(np.abs(per_unit - m * (1 - p)) < 5 * np.sqrt(m * p * (1 - p)))
    # two different steps are independent: agreement rate p^2 + (1-p)^2 within 5 SE
    out2 = np.empty_like(out)
    dm.fill_masks(out2, _keys(range(R), ["input"] * R, rates, 1, 0), rates, dm.scales(rates))
    q = p**2 + (1 - p) ** 2
    assert abs((kept == (out2 > 0)).mean() - q) < 5 * np.sqrt(q * (1 - q) / N)


def test_masks_identical_on_repeat_and_independent_of_stack_composition():
    seeds, kinds, rates = [0, 1, 2, 3], ["input", "both", "activation", "both"], [.2, .5, .5, .7]
    r = np.array(rates, dtype=np.float32)
    full = np.empty((4, 20, 11), dtype=np.float32)
    dm.fill_masks(full, _keys(seeds, kinds, rates, 5, 1), r, dm.scales(r))
    again = np.empty_like(full)
    dm.fill_masks(again, _keys(seeds, kinds, rates, 5, 1), r, dm.scales(r))
    np.testing.assert_array_equal(full, again)
    alone = np.empty((1, 20, 11), dtype=np.float32)
    dm.fill_masks(alone, _keys(seeds[2:3], kinds[2:3], rates[2:3], 5, 1), r[2:3],
                  dm.scales(r[2:3]))
    np.testing.assert_array_equal(alone[0], full[2])


def test_torch_stream_equals_numpy_reference():
    keys = _keys([4, 5], ["input", "both"], [0.1, 0.2], 7, 0)
    counters = np.arange(1000, dtype=np.int64)
    got = dm.uniform_torch(torch.from_numpy(keys.view(np.int64)), torch.from_numpy(counters))
    for r in range(2):
        np.testing.assert_array_equal(got[r].numpy(), uniform_numpy(int(keys[r]), counters))
    rates = np.array([0.1, 0.6], dtype=np.float32)
    out = torch.empty(2, 10, 9)
    dm.fill_masks_torch(out, torch.from_numpy(keys.view(np.int64)), torch.from_numpy(rates),
                        torch.from_numpy(dm.scales(rates)))
    np.testing.assert_array_equal(out.numpy(), dm.masks_numpy(keys, rates, 10, 9))


def test_cuda_kernel_logic_in_simulator():
    """The numba.cuda kernel run by Numba's CUDA simulator equals the NumPy reference."""
    code = textwrap.dedent("""
        import warnings
        import numpy as np
        warnings.simplefilter("ignore")
        from fanova_gpu.kernels import dropout_masks as dm
        rates = np.array([0.0, 0.4, 0.7], dtype=np.float32)
        keys = dm.step_keys(dm.base_keys([0, 1, 2], ["both"] * 3, rates), 2, 1)
        out = np.full((3, 3, 5), np.nan, dtype=np.float32)
        dm.fill_masks_cuda(out, keys, rates, dm.scales(rates))
        assert np.array_equal(out, dm.masks_numpy(keys, rates, 3, 5)), out
        print("OK")
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_on_gpu_equals_reference():
    rates = np.array([0.0, 0.25, 0.5, 0.75], dtype=np.float32)
    keys = _keys(range(4), ["both"] * 4, rates, 11, 2)
    ref = dm.masks_numpy(keys, rates, 300, 64)
    out = torch.empty(4, 300, 64, device="cuda")
    dm.fill_masks_torch(out, torch.from_numpy(keys.view(np.int64)).cuda(),
                        torch.from_numpy(rates).cuda(), torch.from_numpy(dm.scales(rates)).cuda())
    np.testing.assert_array_equal(out.cpu().numpy(), ref)
    from fanova_gpu.device import numba_cuda_available

    if numba_cuda_available():
        out.zero_()
        dm.fill_masks_cuda(out, keys, torch.from_numpy(rates).cuda(),
                           torch.from_numpy(dm.scales(rates)).cuda())
        torch.cuda.synchronize()
        np.testing.assert_array_equal(out.cpu().numpy(), ref)
