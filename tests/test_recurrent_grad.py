"""dR after the fused backward kernel (backends/recurrent_grad.py): the dr_gemm.cu kernel and the cuBLAS path
against a float64 sum over (b, t), every element written, bitwise deterministic; the split and tile rules."""

from __future__ import annotations

import numpy as np
import pytest

from flashrnn_core import _arrays
from flashrnn_core.backends import recurrent_grad as rg

DTYPES = {"bfloat16": _arrays.bfloat16, "float16": _arrays.float16, "float32": np.float32}
# (B, T, N, D, initial h): B = T = 1, odd B and T, one head (cuBLAS's merged gates), D = 48 and 80 (tiles of 16),
# a split that ends inside a sequence (B*T not a multiple of the split), D = 768.
#: (path, storage): both paths take every storage dtype.
PATHS = [(path, dtype) for path in ("kernel", "cublas") for dtype in DTYPES]
SHAPES = [(1, 1, 1, 16, True), (3, 17, 2, 48, False), (5, 9, 3, 64, True), (4, 33, 2, 80, False),
          (2, 5, 1, 768, True), (7, 300, 3, 32, True), (16, 64, 4, 256, False)]


def test_tile_divides_and_splits_cover_the_rows():
    assert [rg.dr_tile(D) for D in (16, 32, 48, 64, 80, 96, 768)] == [16, 32, 16, 64, 16, 32, 64]
    for rows in (1, 31, 32, 1000, 16384, 65536 * 256):
        for tiles in (1, 48, 192, 576, 10000):
            for warps in (1, 2, 4):
                per = rg.split_rows(rows, tiles, 132, warps)
                splits = -(-rows // per)
                assert per % rg.KROWS == 0 and per >= rg.KROWS
                assert splits == 1 or per >= rg.SPLIT_ROWS_MIN  # no split sums fewer rows than the minimum
                assert splits * per >= rows > (splits - 1) * per  # every row in exactly one split, none empty
                assert splits * tiles * warps <= max(tiles * warps, rg.WARPS_PER_SM * 132 + tiles * warps)
    # one-warp blocks (D = 16) get four times the splits of four-warp ones, up to the rows' minimum
    assert -(-16384 // rg.split_rows(16384, 192, 132, 1)) == 11
    assert -(-16384 // rg.split_rows(16384, 192, 132, 4)) == 3


def test_kernel_variants_and_path_rule(monkeypatch):
    specs = rg.dr_specs()
    assert len(specs) == len(set(specs)) == 3 * len(rg.DR_TILES)
    monkeypatch.delenv(rg.PATH_ENV, raising=False)
    assert rg.uses_kernel(_arrays.bfloat16, 12, 64) and rg.uses_kernel(_arrays.float16, 6, 128)
    assert not rg.uses_kernel(_arrays.bfloat16, 1, 768)  # one head: one cuBLAS GEMM over every gate
    assert not rg.uses_kernel(_arrays.bfloat16, 3, 256)  # large heads: the kernel re-reads its operands
    assert rg.uses_kernel(np.float32, 12, 64) and rg.uses_kernel(np.float32, 3, 256)  # cuBLAS's float32: slow
    assert rg.uses_kernel(np.float32, 1, 64) and not rg.uses_kernel(np.float32, 1, 768)
    assert not rg.uses_kernel(np.float32, 2, 8)  # D not a multiple of 16
    monkeypatch.setenv(rg.PATH_ENV, "kernel")
    assert rg.uses_kernel(_arrays.bfloat16, 1, 768)
    monkeypatch.setenv(rg.PATH_ENV, "cublas")
    assert not rg.uses_kernel(_arrays.bfloat16, 12, 64) and not rg.uses_kernel(np.float32, 12, 64)


@pytest.fixture
def nan_buffers(monkeypatch):
    import cupy

    monkeypatch.setattr(rg, "_empty", lambda shape, dtype: cupy.full(shape, np.nan, dtype=dtype))


def _reference(drs, h, h0):
    """float64 sum over (b, t) of drs[b, t, g, n, i] h_{t-1}[b, n, j]."""
    B, T, G, N, D = drs.shape
    prev = np.concatenate([h0 if h0 is not None else np.zeros((B, 1, N, D)), h[:, :-1]], axis=1)
    return np.einsum("btgni,btnj->gnij", drs, prev)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s[:4]) + ("-h0" if s[4] else ""))
@pytest.mark.parametrize("path,dtype_name", PATHS)
def test_sum_dr_matches_float64(path, dtype_name, shape, nan_buffers, monkeypatch):
    import cupy

    dtype = DTYPES[dtype_name]
    monkeypatch.setenv(rg.PATH_ENV, path)
    B, T, N, D, with_h0 = shape
    G = 4
    rng = np.random.default_rng(B * 1000 + T)
    host = [rng.standard_normal(s).astype(dtype) for s in ((B, T, G, N, D), (B, T, N, D), (B, 1, N, D))]
    drs, h, h0 = host[0], host[1], host[2] if with_h0 else None
    got = rg.sum_dr(*[None if a is None else cupy.asarray(a) for a in (drs, h, h0)])
    ref = _reference(*[None if a is None else a.astype(np.float64) for a in (drs, h, h0)])
    got = cupy.asnumpy(got)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert not np.isnan(got).any(), "an element of dR was never written"
    # 16-bit operands: the products are exact in float32; what differs is float32 accumulation over B*T rows.
    # float32 operands: the kernel's products carry hi + lo's 16 significant bits (dr_gemm.cu), ~1.5e-5 each.
    tol = 2e-5 if dtype == np.float32 else 1e-5
    assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max()) * max(1.0, np.sqrt(B * T) / 8)


@pytest.mark.gpu
@pytest.mark.parametrize("path,dtype_name", [("kernel", "bfloat16"), ("kernel", "float32"), ("cublas", "bfloat16")])
def test_sum_dr_deterministic(path, dtype_name, monkeypatch):
    import cupy

    monkeypatch.setenv(rg.PATH_ENV, path)
    B, T, N, D, G = 16, 512, 3, 64, 4  # the kernel splits the 8192 rows (12 tiles)
    assert -(-B * T // rg.split_rows(B * T, G * N, 132)) > 1
    rng = np.random.default_rng(3)
    drs = cupy.asarray(rng.standard_normal((B, T, G, N, D)).astype(DTYPES[dtype_name]))
    h = cupy.asarray(rng.standard_normal((B, T, N, D)).astype(DTYPES[dtype_name]))
    a, b = (cupy.asnumpy(rg.sum_dr(drs, h, None)) for _ in range(2))
    assert a.tobytes() == b.tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3, 17, 2, 48, True), (5, 9, 1, 768, False), (2, 33, 3, 32, True)],
                         ids=lambda s: "B{}-T{}-N{}-D{}".format(*s[:4]) + ("-h0" if s[4] else ""))
@pytest.mark.parametrize("path,dtype_name", PATHS)
def test_sum_dr_steps_add_up_to_the_sum(path, dtype_name, shape, nan_buffers, monkeypatch):
    """The overlap's sums (recurrent_grad.sum_dr_steps, h_rows_of_steps): steps [t0, t1) of each sum, the first
    allocating and the others adding into it, from the top down and with a first sum at step 0, come to the
    float64 sum over every step (each element written: the buffers are NaN-filled)."""
    import cupy

    dtype = DTYPES[dtype_name]
    monkeypatch.setenv(rg.PATH_ENV, path)
    B, T, N, D, with_h0 = shape
    rng = np.random.default_rng(B * 100 + T)
    host = [rng.standard_normal(s).astype(dtype) for s in ((B, T, 4, N, D), (B, T, N, D), (B, 1, N, D))]
    drs, h, h0 = host[0], host[1], host[2] if with_h0 else None
    ref = _reference(*[None if a is None else a.astype(np.float64) for a in (drs, h, h0)])
    device = [None if a is None else cupy.asarray(a) for a in (drs, h, h0)]
    for cuts in ([T, T - 1, T // 2, 1, 0], [0, 1, T // 3, T]):  # (t0, t1) pairs of neighbouring cuts
        dR = None
        for a, b in zip(cuts, cuts[1:]):
            t0, t1 = min(a, b), max(a, b)
            dR = rg.sum_dr_steps(device[0], rg.h_rows_of_steps(*device, t0, t1), t0, t1, into=dR)
        got = cupy.asnumpy(dR)
        assert not np.isnan(got).any(), "an element of dR was never written"
        tol = 2e-5 if dtype == np.float32 else 1e-5
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max()) * max(1.0, np.sqrt(B * T) / 8)
