"""``python -m flashrnn_core.tune`` and ``bench/sweep_fused.py``: argument parsing, candidate selection and the
choice of the fastest with a fake timer, the tuning-cache entry it writes, the sweep's dry run (no GPU); the
timed path on the GPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from flashrnn_core import tune
from flashrnn_core.constrint import H100, tuning

from bench import sweep_fused


def test_default_shapes_are_the_reference_shapes():
    shapes = tune.parse_shapes(tune.parser().parse_args([]))
    directions = ("forward", "inference", "backward")
    assert shapes == [s._replace(direction=d) for d in directions for s in tune.REFERENCE_SHAPES]
    assert len(shapes) == 24 and all(s.dtype == "bfloat16" and s.T == 1024 for s in shapes)
    backward = tune.parse_shapes(tune.parser().parse_args(["--direction", "backward", "--cell", "gru"]))
    assert backward == [tune.Shape("gru", "bfloat16", 16, 12, 64, 1024, "backward")]
    with pytest.raises(SystemExit):
        tune.parser().parse_args(["--direction", "sideways"])
    assert tune.parse_shapes(tune.parser().parse_args(["--dtype", "float16", "--T", "64"]))[0].T == 64


def test_shape_flags_combine_as_a_product():
    args = tune.parser().parse_args(["--cell", "lstm,gru", "--B", "16,64", "--D", "32", "--T", "8", "--top-k", "3",
                                     "--direction", "forward"])
    shapes = tune.parse_shapes(args)
    assert len(shapes) == 4 and args.top_k == 3
    assert {(s.function, s.B) for s in shapes} == {("lstm", 16), ("lstm", 64), ("gru", 16), ("gru", 64)}
    assert all(s.N == 12 and s.D == 32 and s.T == 8 and s.dtype == "bfloat16" for s in shapes)
    for bad in (["--cell", "rnn"], ["--B", "0"], ["--D", "x"]):
        with pytest.raises(SystemExit):
            tune.parser().parse_args(bad)


def test_distinct_candidates_are_geometries():
    """--distinct: the k best geometries (cluster, k split or whole-K warps, batch tile, ...), each once at the
    prefetch depth the model ranks first, the solver's choice first; without it the same geometry comes at
    several prefetch depths."""
    shape = tune.Shape("lstm", "bfloat16", 16, 12, 64)
    plain = tune.candidates(H100, shape, 6)
    distinct = tune.candidates(H100, shape, 6, distinct=True)
    assert len({tune.geometry_key(p) for p in plain}) < len(plain)
    keys = [tune.geometry_key(p) for p in distinct]
    assert len(distinct) == 6 and len(set(keys)) == 6
    assert distinct[0] == plain[0]  # the solver's choice
    assert [p.step_cycles for p in distinct] == sorted(p.step_cycles for p in distinct)
    assert any(p.whole_k for p in distinct) and any(p.k_split == 2 and not p.whole_k for p in distinct)
    assert tune.parser().parse_args(["--distinct"]).distinct


def test_fastest_candidate_is_stored_as_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    shape = tune.Shape("gru", "bfloat16", 16, 12, 64, T=128)
    found = tune.candidates(H100, shape, 4)
    assert len(found) == 4 and found[0].template_args() == tuning.solve_fused(H100, "gru", "bfloat16", 16, 12,
                                                                            64).template_args()
    fake = {tune.config_label(p): ms for p, ms in zip(found, (2.0, 1.5, None, 3.0))}

    def timer(params):
        ms = fake[tune.config_label(params)]
        if ms is None:
            raise RuntimeError("launch failed")
        return ms

    tuned = tune.measure_all(shape, found, timer)
    assert tuned.solver.params == found[0] and tuned.best.params == found[1]
    assert tuned.rows[2].error.startswith("RuntimeError") and tuned.rows[2].ms is None
    text = "\n".join(tune.table(tuned))
    assert "failed: RuntimeError" in text and "solver" in text and "best" in text
    assert tune.store_best(H100, tuned) is not None
    params, meta = tuning.load(H100, "gru", "bfloat16", 16, 12, 64)
    assert params == found[1] and meta["source"] == "measured" and meta["measured_us"] == 1500.0
    assert tuning.choose(H100, "gru", "bfloat16", 16, 12, 64) == found[1]


def test_backward_candidates_are_stored_under_their_direction(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    shape = tune.Shape("lstm", "bfloat16", 16, 12, 64, T=128, direction="backward")
    found = tune.candidates(H100, shape, 3)
    assert len(found) == 3 and all(p.direction == "backward" for p in found)
    assert all(tune.config_label(p).endswith(("dr0", "dr1")) for p in found)
    tuned = tune.measure_all(shape, found, lambda params: 1.0 if params == found[2] else 2.0)
    assert tune.store_best(H100, tuned) is not None
    assert tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64, direction="backward") == found[2]
    assert tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64) != found[2]  # the forward's key is another


def test_nothing_stored_when_nothing_ran(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    shape = tune.Shape("lstm", "bfloat16", 16, 12, 64)
    tuned = tune.measure_all(shape, tune.candidates(H100, shape, 2), lambda p: 1 / 0)
    assert tuned.best is None and tune.store_best(H100, tuned) is None
    reason = tune.candidates(H100, tune.Shape("lstm", "float32", 16, 1, 1024), 2)
    assert isinstance(reason, str) and "registers" in reason


def test_sweep_dry_run_lists_every_feasible_configuration(capsys):
    plans = sweep_fused.plan(H100, list(tune.REFERENCE_SHAPES))
    assert [p.shape for p in plans] == list(tune.REFERENCE_SHAPES)
    for pl in plans:
        assert pl.infeasible is None and len(pl.configs) > 1
        solver = tuning.solve_fused(H100, pl.shape.function, "bfloat16", pl.shape.B, pl.shape.N, pl.shape.D)
        assert pl.configs[0].template_args() == solver.template_args()  # the solver's choice first
        assert len({json.dumps(p.template_args(), sort_keys=True) for p in pl.configs}) == len(pl.configs)
    assert sweep_fused.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lstm bfloat16 B=16 12x64 T=1024" in out and "<- solver" in out and "distinct kernels" in out


def test_sweep_summary_and_table():
    pl = sweep_fused.plan(H100, [tune.Shape("elman", "bfloat16", 16, 12, 64)])[0]
    measured = [{"ms": 1.2}, {"ms": 1.0}] + [{"error": "boom"}] + [{"skipped": "budget"}] * (len(pl.configs) - 3)
    rec = sweep_fused.summarise(pl, measured)
    assert rec["solver_ms"] == 1.2 and rec["best_ms"] == 1.0 and rec["ratio"] == pytest.approx(1.2)
    assert rec["measured"] == 2 and rec["configs"] == len(pl.configs) and rec["rows"][0]["solver"]
    assert "1.200" in "\n".join(sweep_fused.short_table([rec]))
    json.dumps(rec)  # serialisable


def test_sweep_inference_takes_the_forwards_configurations_and_its_own_kernels():
    """--direction inference: the forward's configurations as the solver's inference problem lists them, each
    the inference kernel (FLASHRNN_SAVE=0); the direction list parses and refuses what it does not know."""
    import argparse

    assert sweep_fused.directions_of("both") == ("forward", "backward")
    assert sweep_fused.directions_of("forward,inference") == ("forward", "inference")
    with pytest.raises(argparse.ArgumentTypeError):
        sweep_fused.directions_of("forward,sideways")
    shapes = sweep_fused.parse_shapes("slstm:3x256", "forward,inference")
    assert [s.direction for s in shapes] == ["forward", "inference"]
    assert shapes[1].label() == "slstm bfloat16 B=16 3x256 T=1024 inference"
    forward, inference = sweep_fused.plan(H100, shapes)
    assert {p.direction for p in inference.configs} == {"inference"}
    # (as forwards: the inference kernel's own defines, FLASHRNN_SAVE=0 and sLSTM's reciprocal form, set aside)
    as_forwards = sorted(json.dumps(replace(p, direction="forward").template_args(), sort_keys=True)
                        for p in inference.configs)
    assert as_forwards == sorted(json.dumps(p.template_args(), sort_keys=True) for p in forward.configs)
    saving, infer = sweep_fused.kernels([forward]), sweep_fused.kernels([inference])
    assert len(saving) == len(infer) and not set(saving) & set(infer)
    assert all(("FLASHRNN_SAVE", "0") in k.defines and k.label.endswith(" infer") for k in infer)


def test_refit_prices_inference_rows_with_the_states_as_the_only_outputs():
    """bench/refit_forward.py --direction inference: the sweep's inference rows, each estimated as the solver's
    inference problem does, a kernel that writes the states only (below the same configuration's estimate as the
    forward that saves), with the forward's shared memory (its staging buffer: one geometry compiles both ways)."""
    from pathlib import Path

    from bench import refit_forward
    from flashrnn_core.constrint import preset
    from flashrnn_core.constrint.problems import estimate

    sweep = [Path(__file__).resolve().parents[1] / "bench/results/constrint/2026-12-02-h200-sweep-3x256-clusters.json"]
    hw = preset("H200")
    saving = {s["shape"]["function"]: s for s in refit_forward.load(sweep, hw)}
    infer = {s["shape"]["function"]: s for s in refit_forward.load(sweep, hw, ("inference",))}
    assert set(saving) == set(infer) == {"lstm", "slstm", "gru", "elman"}
    for function, s in infer.items():
        assert s["fp"].geo.stream_out == s["fp"].geo.states < saving[function]["fp"].geo.stream_out
        assert s["fp"].geo.staged_out == saving[function]["fp"].geo.staged_out == saving[function]["fp"].geo.stream_out
        cheaper = 0
        for (values, ms_infer), (_, ms_save) in zip(s["configs"], saving[function]["configs"]):
            infer_cycles, save_cycles = (estimate(x, values)["total"] for x in (s["fp"], saving[function]["fp"]))
            assert infer_cycles <= save_cycles  # (equal where the Wx prefetch binds the step)
            cheaper += infer_cycles < save_cycles
            if ms_infer and ms_save:
                assert ms_infer <= ms_save * 1.01  # measured: the inference kernel is never slower
        assert cheaper
    assert refit_forward.main([str(sweep[0]), "--direction", "forward,inference"]) == 0


@pytest.mark.gpu
def test_gpu_tune_times_and_stores(tmp_path, monkeypatch, capsys):
    """On the GPU: two candidates of a small shape compiled, timed with CUDA events, the fastest stored and then
    chosen by the backend's chooser."""
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    assert tune.main(["--cell", "lstm", "--B", "8", "--N", "2", "--D", "32", "--T", "16", "--top-k", "2",
                      "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "stored:" in out
    from flashrnn_core.constrint.hardware import current

    hw = current()
    params, meta = tuning.load(hw, "lstm", "bfloat16", 8, 2, 32)
    assert meta["source"] == "measured" and meta["measured_us"] > 0
    from flashrnn_core.backends import fused

    assert fused.choose("lstm", "bfloat16", 8, 2, 32).choice == params


def test_sweep_measures_in_a_child_process_and_reports_its_failure():
    """The per-shape child process and its queue, end to end: a shape whose inputs cannot be made (a dtype no
    backend knows) fails in the child's setup, and every configuration says so; nothing is left running."""
    import time

    pl = sweep_fused.plan(H100, [tune.Shape("elman", "bfloat16", 16, 12, 64, T=8)])[0]
    broken = sweep_fused.Plan(pl.shape._replace(dtype="no-such-dtype"), pl.configs[:3])
    rows = sweep_fused.measure_plan(broken, runs=20, deadline=time.monotonic() + 120)
    assert len(rows) == 3 and all(r["error"].startswith("setup failed: KeyError") for r in rows), rows
    assert sweep_fused.measure_plan(broken, runs=20, deadline=time.monotonic() - 1) == [
        {"skipped": "not reached within --budget-s"}] * 3


@pytest.mark.gpu
def test_gpu_sweep_times_a_few_configurations():
    import time

    from flashrnn_core.constrint.hardware import current

    pl = sweep_fused.plan(current(), [tune.Shape("lstm", "bfloat16", 8, 2, 32, T=16)])[0]
    few = sweep_fused.Plan(pl.shape, pl.configs[:2])
    rec = sweep_fused.summarise(few, sweep_fused.measure_plan(few, runs=20, deadline=time.monotonic() + 120))
    assert rec["measured"] == 2 and rec["solver_ms"] > 0 and rec["ratio"] >= 1.0, rec
