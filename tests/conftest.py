"""Shared test fixtures: the `gpu` marker skips cleanly where CuPy or a GPU is missing."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from flashrnn_core.cells import CELLS


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def random_inputs(rng, function: str, B: int, T: int, N: int, D: int, with_states: bool = True):
    """Wx ``[B, T, Gw, N, D]``, R ``[Gr, N, D, D]`` (scaled by 1/sqrt(D)), b ``[Gb, N, D]`` and initial states
    ``[S, B, 1, N, D]`` (None without ``with_states``), float64; slstm's normaliser n >= 1, as a forward leaves it."""
    cell = CELLS[function]
    Wx = rng.standard_normal((B, T, cell.gates_w, N, D))
    R = rng.standard_normal((cell.gates_r, N, D, D)) / np.sqrt(D)
    b = rng.standard_normal((cell.gates_b, N, D))
    s0 = None
    if with_states:
        s0 = rng.standard_normal((cell.states, B, 1, N, D))
        if function == "slstm":
            s0[2] = 1.0 + np.abs(s0[2])
    return Wx, R, b, s0


def gradient_case_id(case) -> str:
    """A backward test case's id: (B, T, N, D, initial states, upstream gradients) -> "B4-T6-N2-D112-s0-dh+last"."""
    B, T, N, D, with_states, grads = case
    return f"B{B}-T{T}-N{N}-D{D}" + ("-s0" if with_states else "") + f"-d{grads}"


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64, after asserting that ``out`` holds no NaN (an output left unwritten
    from NaN-poisoned memory)."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert not np.isnan(out).any(), "NaN in the output"
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def assert_states_close(function: str, states, ref_states, tol: float, what: str = "state") -> None:
    """Each of ``function``'s states (``[S, ...]``) within ``tol`` (``relative_error``) of the reference's;
    ``what`` names them in the message (a kernel's label, "inference state", ...)."""
    for s, name in enumerate(CELLS[function].state_names):
        err = relative_error(states[s], ref_states[s])
        assert err < tol, f"{what} {name}: relative error {err:.2e} >= {tol:g}"


def saved_error(saved, ref_saved, lengths=None) -> float:
    """``relative_error`` of the saved pre-activations ``[B, T, ...]`` at the steps a sequence runs (all of them
    without ``lengths``: past its end a sequence's saved values may hold anything, but no NaN)."""
    saved = np.asarray(saved, np.float64)
    if lengths is None:
        return relative_error(saved, ref_saved)
    assert not np.isnan(saved).any(), "saved not fully written"
    valid = np.arange(saved.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [B, T]
    return relative_error(saved[valid], np.asarray(ref_saved)[valid])
