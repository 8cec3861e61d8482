"""The benchmark pipeline without a GPU: the CPU dry run writes BENCH.md's JSON, the report turns it into a
markdown table and plots, the plain-loop baseline computes the cells of SPEC.md, and the sanitizer driver maps
every fused kernel variant to a problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import report, run, sanitize_fused, shard, timing

HEADER_KEYS = {"suite", "date", "commit", "gpu", "driver", "cuda_runtime", "nvrtc", "cupy", "torch", "rows"}
ROW_KEYS = {"function", "backend", "dtype", "pass", "B", "T", "N", "D", "median_ms", "p10_ms", "p90_ms",
            "peak_mem_bytes", "baseline", "baseline_ms", "baseline_best_ms", "ratio"}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """A reference dry run (two cells) and a batch dry run (one), written once for the module."""
    out = tmp_path_factory.mktemp("bench")
    paths = {}
    for suite, functions in (("reference", "lstm,elman"), ("batch", "gru")):
        paths[suite] = out / f"{suite}.json"
        argv = ["--suite", suite, "--dry-run", "--functions", functions, "--out", str(paths[suite])]
        assert run.main(argv) == 0
    return paths


def test_dry_run_rows_have_the_bench_format(dry_runs):
    doc = json.loads(dry_runs["reference"].read_text())
    assert HEADER_KEYS <= set(doc) and doc["suite"] == "reference" and doc["dry_run"] is True
    # 2 cells x 2 head layouts x 2 passes, one backend (vanilla) on the CPU
    assert len(doc["rows"]) == 8
    assert {(r["function"], r["pass"]) for r in doc["rows"]} == {(f, p) for f in ("lstm", "elman") for p in run.PASSES}
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert "error" not in row, row["error"]
        assert row["backend"] == "vanilla" and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["peak_mem_bytes"] > 0
        if row["baseline_ms"] is not None:  # torch is installed: the CPU stand-in for cuDNN ran
            assert row["ratio"] == pytest.approx(row["baseline_ms"] / row["median_ms"])
            assert row["baseline_best_ms"] <= row["baseline_ms"]
    loops = [r for r in doc["rows"] if "loop_ms" in r]
    if doc["torch"]:  # --loop first: the first shape of each cell and pass
        assert sorted((r["function"], r["pass"], r["N"]) for r in loops) == sorted(
            (f, p, 2) for f in ("lstm", "elman") for p in run.PASSES)


def test_report_writes_markdown_and_plots(dry_runs, tmp_path):
    md = tmp_path / "README.md"
    assert report.main([str(p) for p in dry_runs.values()] + ["--markdown", str(md)]) == 0
    text = md.read_text()
    assert "## reference" in text and "## batch" in text and "| lstm | 2x8 | 2 | 8 | float32 | fwbw |" in text
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert report.main([str(p) for p in dry_runs.values()] + ["--plots", str(plots)]) == 0
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["batch-time-vs-B.png", "reference-speedup.png"]


def test_report_plots_a_sweep_cut_short_by_its_budget(dry_runs, tmp_path):
    """A suite stopped by its time limit can leave a cell with forward rows only: its forward+backward panel says
    'not measured' instead of failing on a log axis without data."""
    pytest.importorskip("matplotlib")
    doc = json.loads(dry_runs["batch"].read_text())
    doc["rows"] = [r for r in doc["rows"] if r["pass"] == "fw" or r["D"] != doc["rows"][0]["D"]]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(doc))
    assert report.main([str(path), "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "batch-time-vs-B.png").stat().st_size > 0


def test_absent_and_gpu_backends_become_error_rows(tmp_path):
    out = tmp_path / "r.json"
    assert run.main(["--suite", "headdim", "--dry-run", "--functions", "gru", "--backends", "vanilla,cuda_fused",
                     "--loop", "none", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["D"] for r in rows} == {8, 16}
    fused = [r for r in rows if r["backend"] == "cuda_fused"]
    assert fused and all("error" in r and "median_ms" not in r and r["ratio"] is None for r in fused)
    assert all("error" not in r for r in rows if r["backend"] == "vanilla")


def test_step_suite_dry_run_times_plain_calls_and_says_why_not_graphs(tmp_path):
    out = tmp_path / "s.json"
    assert run.main(["--suite", "step", "--dry-run", "--functions", "lstm,elman", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    # 2 cells x 2 batches x 3 ways of timing a step, one backend (vanilla) on the CPU
    assert len(rows) == 12 and {r["pass"] for r in rows} == {"step"} and {r["T"] for r in rows} == {1}
    assert {r["step_timing"] for r in rows} == {m for m, _, _ in run.STEP_MODES}
    for row in rows:
        assert ROW_KEYS <= set(row) | {"median_ms", "p10_ms", "p90_ms", "peak_mem_bytes"}, ROW_KEYS - set(row)
        assert row["graph"] == (row["step_timing"] != "call") and row["target_ms"] == run.STEP_TARGET_MS
        if row["graph"]:
            assert row["error"] == "not timed: CUDA graphs need a GPU" and "median_ms" not in row
        else:
            assert "error" not in row and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
            assert row["backend"] == "vanilla" and row["peak_mem_bytes"] > 0 and "meets_target" in row


def test_compile_suite_without_gpu_records_why(tmp_path):
    out = tmp_path / "c.json"
    assert run.main(["--suite", "compile", "--dry-run", "--functions", "lstm", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["pass"] == "compile_cold" and "needs a GPU" in r["error"] for r in rows)


def test_real_suites_have_the_issue_shapes():
    ref = run.suite_shapes("reference", run.FUNCTIONS)
    assert len(ref) == 16 and {(s.N, s.D) for s in ref} == set(run.REFERENCE_HEADS)
    assert all(s.dtype == "bfloat16" and s.B == 16 and s.T == 1024 and s.N * s.D == 768 for s in ref)
    batch = run.suite_shapes("batch", ["lstm"])
    assert {s.B for s in batch} == {1, 2, 4, 8, 16, 32, 64, 128, 256}
    assert {(s.N, s.D) for s in batch} == {(12, 64), (1, 768)}
    assert {s.T for s in run.suite_shapes("seqlen", ["lstm"])} == {256 * 2**k for k in range(7)}
    head = run.suite_shapes("headdim", ["lstm"])
    assert min(s.D for s in head) == 16 and max(s.D for s in head) == 768 and all(s.N * s.D == 768 for s in head)


def test_heads_suite_times_the_heads_asked_for(tmp_path):
    """The heads suite: B=16, T=1024 over ODD_CLUSTER_HEADS (heads on clusters of 3-15 blocks) or --heads; a dry
    run writes its rows; a malformed --heads, or --heads for another suite, is refused before anything runs."""
    from flashrnn_core.constrint import H100, solve_fused

    odd = run.suite_shapes("heads", ["lstm"])
    assert {(s.N, s.D) for s in odd} == set(run.ODD_CLUSTER_HEADS) and all(s.B == 16 and s.T == 1024 for s in odd)
    lstm_144 = solve_fused(H100, "lstm", "bfloat16", 16, 5, 144)
    assert lstm_144 and lstm_144.blocks_per_head not in (1, 2, 4, 8, 16)  # what the default is there to time
    assert [(s.N, s.D) for s in run.suite_shapes("heads", ["gru"], heads=((3, 96),))] == [(3, 96)]
    assert run.parse_heads("5x144, 1x640") == ((5, 144), (1, 640)) and run.parse_heads(None) is None
    for bad in ("5x", "x144", "5*144", "0x16"):
        with pytest.raises(ValueError, match="--heads"):
            run.parse_heads(bad)
    with pytest.raises(SystemExit, match="only the heads suite"):
        run.main(["--suite", "reference", "--dry-run", "--heads", "2x8"])
    out = tmp_path / "h.json"
    assert run.main(["--suite", "heads", "--dry-run", "--functions", "gru", "--loop", "none", "--heads", "2x8",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "heads" and {(r["N"], r["D"]) for r in doc["rows"]} == {(2, 8)}


def test_shards_merge_into_the_single_run(tmp_path):
    """Three shards of a dry run merge into the rows, in the order, of one process running the whole suite."""
    argv = ["--suite", "seqlen", "--dry-run", "--functions", "lstm,gru", "--loop", "none"]
    whole = tmp_path / "whole.json"
    assert run.main(argv + ["--out", str(whole)]) == 0
    for k in range(3):
        assert run.main(argv + ["--out", str(tmp_path / "s.json"), "--shard", f"{k}/3"]) == 0
    parts = sorted(tmp_path.glob("s-shard*of3.json"))
    assert len(parts) == 3
    assert shard.main([str(tmp_path / "s.json"), *map(str, parts)]) == 0
    merged, single = (json.loads(p.read_text()) for p in (tmp_path / "s.json", whole))
    key = lambda r: (r["function"], r["N"], r["D"], r["B"], r["T"], r["pass"], r["backend"])  # noqa: E731
    assert [key(r) for r in merged["rows"]] == [key(r) for r in single["rows"]] and len(merged["rows"]) > 6
    assert merged["shards"] == 3 and "shard" not in merged and not list(tmp_path.glob("s-shard*"))
    with pytest.raises(ValueError, match="shards 0..M-1"):
        shard.merge([merged])  # a merged document is not a shard of anything
    with pytest.raises(ValueError, match="expected K/M"):
        shard.parse_shard("1of3")
    assert shard.take_shard(list(range(7)), (1, 3)) == [1, 4]


def test_report_fills_a_cut_sweep_from_an_older_run(tmp_path):
    """A sweep cut by its budget, and without a cell an older run of the same suite and GPU timed: the report
    takes the missing rows from the older file, marks them, and names the file."""
    older, newer = tmp_path / "old.json", tmp_path / "new.json"
    assert run.main(["--suite", "headdim", "--dry-run", "--functions", "lstm,gru", "--out", str(older)]) == 0
    assert run.main(["--suite", "headdim", "--dry-run", "--functions", "lstm", "--out", str(newer)]) == 0
    doc = json.loads(newer.read_text())
    doc["date"] = "9999-01-01T00:00:00Z"  # newer than the older file whatever the clock
    cut = doc["rows"][-1]
    cut.update(median_ms=None, error="not run: --budget-s 1 spent")
    newer.write_text(json.dumps(doc))
    (merged,) = report.load([older, newer])
    assert merged["_path"] == str(newer) and merged["filled_from"] == ["old.json"]
    key = lambda r: (*report.config_key(r), r["backend"])  # noqa: E731
    by_key = {key(r): r for r in merged["rows"]}
    assert by_key[key(cut)]["from"] == "old.json" and by_key[key(cut)]["median_ms"] is not None
    assert {r["function"] for r in merged["rows"] if r.get("from")} == {"lstm", "gru"}
    assert [key(r) for r in merged["rows"] if r["function"] == "lstm" and r.get("from")] == [key(cut)]
    text = report.markdown([merged])
    assert "rows marked `*`" in text and "`old.json`" in text and "*" in text.split("|---")[-1]


def test_report_fills_a_cut_reference_run_and_marks_the_summary(tmp_path):
    """A reference run cut by its budget: the README summary takes the cells it did not time from the older
    reference file of the same GPU, marks them ``*`` and names that file; the cells it timed are its own."""
    older, newer = tmp_path / "old.json", tmp_path / "new.json"
    for path, date in ((older, "2000-01-01T00:00:00Z"), (newer, "9999-01-01T00:00:00Z")):
        assert run.main(["--suite", "reference", "--dry-run", "--functions", "lstm,gru", "--out", str(path)]) == 0
        doc = json.loads(path.read_text())
        doc["date"] = date
        doc["rows"] = [{**r, "N": 12, "D": 64} for r in doc["rows"] if r["N"] > 1]  # as the summary's 12x64 heads
        for row in doc["rows"]:
            if path == newer and row["function"] == "gru":
                row.update(median_ms=None, error="not run: --budget-s 1 spent")
        path.write_text(json.dumps(doc))
    (merged,) = report.load([older, newer])
    assert merged["filled_from"] == ["old.json"]
    assert {r["function"] for r in merged["rows"] if r.get("from")} == {"gru"}
    text = report.summary([merged])
    assert "* from `bench/results/old.json`" in text
    gru_column = [line.split("|")[-2] for line in text.splitlines() if line.startswith("| forward")]
    assert gru_column and all("*" in cell for cell in gru_column)
    assert all("*" not in line.split("|")[2] for line in text.splitlines() if line.startswith("| forward"))
    # Rows from two older files: the one mark names both, once each.
    text = report.summary([{**merged, "filled_from": ["old.json", "older.json"]}])
    assert "* from `bench/results/old.json` or `bench/results/older.json`" in text and text.count("* from") == 1


def test_a_suite_in_another_dtype_is_its_own_document(tmp_path):
    """``--dtype`` runs a suite in that storage dtype and says so in the header; the report keeps it apart from the
    suite's bfloat16 runs (no filling across dtypes, its own heading) and the README summary reads bfloat16 only."""
    assert {s.dtype for s in run.suite_shapes("reference", ["lstm"], dtype="float32")} == {"float32"}
    assert {s.dtype for s in run.suite_shapes("reference", ["lstm"])} == {"bfloat16"}
    bf16, f32 = tmp_path / "bf16.json", tmp_path / "f32.json"
    assert run.main(["--suite", "reference", "--dry-run", "--functions", "lstm", "--out", str(bf16)]) == 0
    assert run.main(["--suite", "reference", "--dry-run", "--functions", "lstm", "--dtype", "float32",
                     "--out", str(f32)]) == 0
    for path, dtype, date in ((bf16, "bfloat16", "2000-01-01T00:00:00Z"), (f32, "float32", "9999-01-01T00:00:00Z")):
        doc = json.loads(path.read_text())
        doc.update(date=date, rows=[{**r, "dtype": dtype, "N": 12, "D": 64} for r in doc["rows"] if r["N"] > 1])
        if dtype == "bfloat16":
            doc.pop("dtype", None)  # as every run before the option
        path.write_text(json.dumps(doc))
    assert json.loads(f32.read_text())["dtype"] == "float32"
    docs = report.load([bf16, f32])
    assert sorted(report.suite_dtype(d) for d in docs) == ["bfloat16", "float32"]
    assert not any(d.get("filled_from") for d in docs)
    assert "## reference (float32):" in report.markdown(docs)
    assert "`bench/results/bf16.json`" in report.summary(docs) and "f32.json" not in report.summary(docs)


def test_varlen_dry_run_rows(tmp_path):
    """The varlen suite on the CPU: lstm and gru (the cells with a PackedSequence cuDNN counterpart), both head
    layouts, fw and fwbw, each row timed with lengths and padded, against torch's packed and padded modules."""
    out = tmp_path / "v.json"
    assert run.main(["--suite", "varlen", "--dry-run", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "varlen"
    assert sorted((r["function"], r["N"], r["pass"]) for r in doc["rows"]) == sorted(
        (f, n, f"{p}_varlen") for f in ("lstm", "gru") for n in (2, 1) for p in run.PASSES)
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert "error" not in row and "padded_error" not in row, row
        assert row["padded_p10_ms"] <= row["padded_ms"] <= row["padded_p90_ms"] and row["padded_peak_mem_bytes"] > 0
        assert row["varlen_ratio"] == pytest.approx(row["median_ms"] / row["padded_ms"])
        assert row["T"] // 4 <= row["lengths_min"] <= row["lengths_mean"] <= row["lengths_max"] <= row["T"]
        if row["baseline_ms"] is not None:  # torch is installed: its CPU modules stand in for cuDNN
            assert row["baseline"].endswith(" packed") and "PackedSequence" in row["baseline_module"]
            assert row["ratio"] == pytest.approx(row["baseline_ms"] / row["median_ms"])
            assert row["baseline_varlen_ratio"] == pytest.approx(row["baseline_ms"] / row["baseline_padded_ms"])
            assert row["ratio_padded"] == pytest.approx(row["baseline_padded_ms"] / row["padded_ms"])


def test_varlen_suite_shapes_lengths_and_backends():
    shapes = run.suite_shapes("varlen", run.FUNCTIONS)
    assert {(s.function, s.N, s.D) for s in shapes} == {(f, n, d) for f in ("lstm", "gru") for n, d in ((12, 64), (1, 768))}
    assert all(s.dtype == "bfloat16" and s.B == 16 and s.T == 1024 for s in shapes) and len(shapes) == 4
    lengths = run.varlen_lengths(16, 1024)
    assert lengths.dtype == np.int32 and lengths.shape == (16,) and np.array_equal(lengths, run.varlen_lengths(16, 1024))
    assert 256 <= lengths.min() and lengths.max() <= 1024 and len(set(lengths.tolist())) > 8
    opts = _gpu_options(["vanilla", "cuda", "cuda_fused"])
    assert run.varlen_backends(opts, run.Shape("lstm", "bfloat16", 16, 1024, 1, 768)) == ["cuda", "cuda_fused"]
    assert run.varlen_backends(opts, run.Shape("lstm", "bfloat16", 16, 1024, 12, 64)) == ["vanilla", "cuda", "cuda_fused"]


def test_inputs_are_fresh_per_shape_and_the_same_for_every_backend():
    a, b = run.Shape("lstm", "float32", 2, 3, 1, 8), run.Shape("lstm", "float32", 2, 3, 1, 16)
    x1, x2 = run.make_inputs(np, a, with_grads=True), run.make_inputs(np, a, with_grads=True)
    assert all(np.array_equal(x1[k], x2[k]) for k in x1)  # same inputs in a row
    assert not np.allclose(x1["Wx"][..., :8], run.make_inputs(np, b, with_grads=False)["Wx"][..., :8])
    assert x1["dstates"].shape == (2, 2, 3, 1, 8) and np.all(x1["Wx"] != 0)
    assert np.std(x1["R"]) < 0.7  # scaled by 1/sqrt(D)


def test_loop_baseline_computes_the_cells_of_the_spec():
    """The plain PyTorch loop (float32, CPU) gives the vanilla backend's states for every cell."""
    torch = pytest.importorskip("torch")
    import flashrnn_core as fc
    from bench import baselines
    from flashrnn_core.cells import CELLS

    for function in run.FUNCTIONS:
        arrays = run.make_inputs(np, run.Shape(function, "float32", 3, 5, 2, 4), with_grads=False)
        ref = fc.forward(arrays["Wx"], arrays["R"], arrays["b"], function=function, backend="vanilla").states
        with torch.no_grad():
            got = baselines.loop_forward(*(torch.as_tensor(arrays[k]) for k in ("Wx", "R", "b")), function,
                                         CELLS[function].states)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5, err_msg=function)


def test_measure_cpu_counts_runs_and_memory():
    calls = []

    def work():
        calls.append(1)
        return np.ones(1 << 18)  # 2 MB returned: counted in the peak

    t = timing.measure(work, "cpu", runs=5, warmup=1)
    assert t.runs == timing.MIN_RUNS and len(calls) == timing.MIN_WARMUP + 1 + timing.MIN_RUNS
    assert t.peak_mem_bytes >= 8 << 18 and t.p10_ms <= t.median_ms <= t.p90_ms
    loose = timing.measure(work, "cpu", runs=2, warmup=1, strict=False)
    assert loose.runs == 2


def test_sanitizer_driver_maps_every_variant_to_a_problem(capsys, tmp_path):
    """--list needs no GPU: each fused forward variant is selected by the backend for its problem."""
    fused = sanitize_fused.load_fused()
    if fused is None:
        pytest.skip("cuda_fused is not importable here")
    from flashrnn_core.constrint import A100, H100

    # A variant is built from the oldest preset the solver picks it on (min_sm): that preset maps it.
    variants = sanitize_fused.pick_families(fused.solver_variants(), False)
    found = [sanitize_fused.find_problem(fused, s, A100 if s.min_sm == 80 else H100) for s in variants]
    missing = [x for x in found if isinstance(x, str)]
    assert not missing, missing[:3]
    # --one-cluster: each problem on one head and one batch tile, the same kernel (one_cluster asserts it)
    for problem in found:
        small = sanitize_fused.one_cluster(fused, problem)
        assert small.params.grid == (problem.params.blocks_per_head, 1) and small.N == 1
        assert small.B == min(problem.B, problem.params.batch_tile) and small.label == problem.label
    assert sanitize_fused.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "problems" in out and "(forward + backward)" in out
    # --match before the solves: the same problems as the whole list's lines that it takes
    match = "slstm,D48,~float32"
    every = [x for x in out.splitlines()[1:] if sanitize_fused.label_matches(x.split(": B=")[0], match)]
    assert every and sanitize_fused.main(["--list", "--match", match]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == every
    # --labels FILE: exactly the variants listed (every one, not per family), an inference one among them
    infer = [s.label for s in fused.solver_variants() if s.label.endswith(" infer")][:2]
    listed = tmp_path / "labels.txt"
    listed.write_text("\n".join(infer + ["no such variant"]) + "\n")
    assert sanitize_fused.main(["--list", "--labels", str(listed)]) == 0
    out = capsys.readouterr().out
    assert "2 problems (2 forward, 0 backward) of 2 variants" in out and all(f"{x}: B=" in out for x in infer)


def test_sanitizer_resume_skips_what_a_cut_run_reported_ok(tmp_path):
    """--resume LOG: the problems a cut run's log says ran 'ok' are left out, the rest kept in their order (then
    --match, --start and --shard as before)."""
    labels = [f"lstm cuda_fused fw bfloat16 D{d} nbt1 p8{tail}" for d in (16, 48, 64) for tail in ("", " infer")]
    problems = [sanitize_fused.Problem("lstm", np.float32, 16, 1, 64, label) for label in labels]
    log = tmp_path / "cut.log"
    # A log as compute-sanitizer leaves it: header, two problems ok, one failed, the cut.
    log.write_text(f"========= COMPUTE-SANITIZER\n6 problems\n{labels[0]} (B=16): ok\n{labels[3]} (B=1): ok\n"
                   f"{labels[1]} (B=4): forward gave non-finite states\n")
    done = sanitize_fused.ran_ok([log])
    assert done == {labels[0], labels[3]}

    def chosen(match: str = "", start: int = 0, shard: str | None = None) -> list[str]:
        return [x.label for x in sanitize_fused.select(problems, match, done, start, shard)]

    assert chosen() == [labels[1], labels[2], labels[4], labels[5]]
    assert chosen("infer") == [labels[1], labels[5]]
    assert chosen("~infer,p8") == [labels[2], labels[4]]
    assert chosen(start=1, shard="0/2") == [labels[2], labels[5]]
    assert [x.label for x in sanitize_fused.select(problems, "", set(), 0, None)] == labels


def test_matvec_bound_kernels_compile_for_sm90a():
    """bench/matvec_bound.py's kernels (the 1x768 step's matrix-vector product through mma.sync, through wgmma
    and with R's register fragments real, setmaxnreg among them, and wgmma's layout check) build for sm_90a,
    spill-free: the measurement stays reproducible."""
    from bench import matvec_bound
    from flashrnn_core.runtime.compile import compile_spec

    wanted = ("29 smem, h smem", "wgmma 3 wg, A 16", "(today's)", "regs 232, A 10/24")
    chosen = [("wgmma_check", {})] + [(matvec_bound.launch_shape(d)[0], d) for label, d in matvec_bound.VARIANTS
                                      if any(w in label for w in wanted)]
    assert {d.get("KIND") for _, d in chosen[1:]} == {0, 1, 2}
    for entry, defines in chosen:
        result = compile_spec(matvec_bound.spec(entry, defines), "sm_90", root=matvec_bound.ROOT, use_cache=False)
        assert "sm_90a" in result.log and result.resources is not None, entry
        assert result.resources.spill_stores == 0, (entry, defines)


def test_cluster_exchange_kernels_compile_for_sm90():
    """bench/cluster_exchange.py's kernel (h's exchange in one cluster and between clusters, alone) builds for
    sm_90 spill-free with each signal, and for its synccheck repro's clusters of 13; its cases stay launchable:
    whole clusters, heads that need another cluster for a remote exchange, shared memory within a block's."""
    from bench import cluster_exchange as cx
    from flashrnn_core.runtime.compile import compile_spec

    repro = cx.Case(groups=1, slice=4, cl=13)
    chosen = [case for case in cx.CASES if case.remote and case.heads == 1 and case.work == 0 and case.groups == 2]
    assert {case.signal for case in chosen} == set(cx.SIGNALS) and all(case.local for case in chosen[3:])
    for case in chosen[3:] + [repro]:
        result = compile_spec(cx.spec(case), "sm_90", use_cache=False)
        assert result.resources is not None and result.resources.spill_stores == 0, case.label()
    for case in cx.CASES:
        assert case.groups > 1 or not case.remote, case.label()
        assert case.smem() <= 227 * 1024 and case.blocks() % case.cl == 0, case.label()


def test_head_split_kernels_compile_for_sm90():
    """bench/head_split.py's launches (a 1x768 head on two 16-block clusters, fused_fw.cu FLASHRNN_HEAD_CLUSTERS,
    as constrint.assess prices it) build for sm_90 spill-free at the k-tiles of R in shared memory the register
    rule admits (6 for lstm, 7 for slstm; the kernel's static_asserts hold threads and shared memory to Tile's),
    and a measurement knob reaches the kernel's defines and label."""
    from bench import head_split
    from flashrnn_core.constrint import H100
    from flashrnn_core.runtime.compile import compile_spec

    for cell, rs in (("lstm", 6), ("slstm", 7)):
        tight, admitted = head_split.configs(H100, cell, "bfloat16", 16, [rs - 1, rs], 4, False)
        assert not tight and admitted.head_clusters == 2 and admitted.dims_per_block == 24, admitted
        result = compile_spec(head_split.launch_spec(admitted), "sm_90", use_cache=False)
        assert result.resources is not None and result.resources.spill_stores == 0, cell
    knob = head_split.launch_spec(admitted, (("FLASHRNN_HANDOFF_BATCH", "8"),))
    assert ("FLASHRNN_HANDOFF_BATCH", "8") in knob.defines and knob.label.endswith(" FLASHRNN_HANDOFF_BATCH=8")


def test_phase_clocks_compare_saved_values_where_both_variants_save():
    """bench/phase_clocks.py holds a variant's states and saved values to the first variant's bit for bit, but not
    the saved buffer of a FLASHRNN_SAVE=0 variant (its kernel leaves the saving call's buffer unwritten: the
    comparison was noise), and the backward by dWx."""
    from types import SimpleNamespace

    from bench import phase_clocks

    r = SimpleNamespace(states=np.zeros(2), saved=np.ones(3), dWx=np.ones(1))
    assert [len(a) for a in phase_clocks.variant_outputs(r, (), False)] == [2, 3]
    assert [len(a) for a in phase_clocks.variant_outputs(r, (("FLASHRNN_SAVE", "0"),), False)] == [2]
    assert [len(a) for a in phase_clocks.variant_outputs(r, (("FLASHRNN_SAVE", "1"),), False)] == [2, 3]
    inference = SimpleNamespace(states=np.zeros(2), saved=None)
    assert [len(a) for a in phase_clocks.variant_outputs(inference, (), False)] == [2]
    assert phase_clocks.variant_outputs(r, (), True)[0] is r.dWx


def test_phase_clock_knobs_change_only_their_direction_and_compile():
    """bench/phase_clocks.py's variants: the defines go on the chosen direction's kernel only, and the measurement
    knobs it names (fused_fw.cu's clock64 phases, ablations, block sends, unpaired dims and trading lanes;
    fused_bw.cu's late copies and lean copies; the scatter kernel's ablations, its old product order and partials'
    pairs) still compile, spill-free (the scatter kernel's exchange ablation: at most 8 bytes), for sm_90
    on cluster kernels (where the exchange and the copies' order exist), the scatter kernel's clock build too (it spills 8
    bytes: a measurement's, not a kernel's), for the unpaired dims (FLASHRNN_PAIRED_DIMS=0) on the one-block and cluster kernels of
    the two-dims-a-lane cells (gru, elman) in every dtype, and for trading lanes forced on and off."""
    fused = sanitize_fused.load_fused()
    if fused is None:
        pytest.skip("cuda_fused is not importable here")
    from bench import phase_clocks
    from flashrnn_core.constrint import H100, problems
    from flashrnn_core.runtime.compile import compile_spec

    assert phase_clocks.parse_variant("base=") == ("base", ())
    assert phase_clocks.parse_variant("x=A,B=2") == ("x", (("A", "1"), ("B", "2")))
    knobs = (("FLASHRNN_PHASE_CLOCKS", "1"), ("FLASHRNN_ABLATE_EXCHANGE", "1"), ("FLASHRNN_ABLATE_FLUSH", "1"))
    fw = fused.choose("lstm", "bfloat16", 16, 12, 64, hardware=H100).choice
    bw = fused.choose("lstm", "bfloat16", 16, 3, 256, hardware=H100, direction="backward").choice
    assert fw.blocks_per_head > 1 and bw.blocks_per_head > 1
    forward_knobs = phase_clocks.with_defines(knobs, "forward")
    assert forward_knobs(fw).spec.defines[-3:] == knobs
    # (the inference kernel too: fused_fw.cu, the solver's direction "inference")
    infer = fused.choose("lstm", "bfloat16", 16, 12, 64, hardware=H100, direction="inference").choice
    assert forward_knobs(infer).spec.defines == fused.launch_of(infer).spec.defines + knobs
    assert forward_knobs(bw).spec == fused.launch_of(bw).spec
    late = phase_clocks.with_defines((("FLASHRNN_LATE_COPIES", "1"),), "backward")(bw).spec
    lean = phase_clocks.with_defines((("FLASHRNN_LEAN_COPIES", "1"),), "backward")(bw).spec
    block_sends = phase_clocks.with_defines((("FLASHRNN_WARP_SENDS", "0"),), "forward")(fw).spec
    unpaired = phase_clocks.with_defines((("FLASHRNN_PAIRED_DIMS", "0"),), "forward")
    unpaired_specs = [unpaired(fused.choose(cell, dtype, 16, N, D, hardware=H100).choice).spec
                    for cell, dtype, N, D in (("gru", "bfloat16", 12, 64), ("gru", "float32", 12, 64),
                                              ("elman", "float16", 12, 64), ("gru", "bfloat16", 3, 256))]
    # Lanes trading a column (Tile::TRADE) forced on where the rule leaves it off (2 warps of k_split 1: the solver
    # takes whole-K warps at D = 16, so the geometry is given) and off where it is on.
    two_warps = [problems.assess(H100, "lstm", dtype, 16, 12, 16, k_split=1, prefetch_steps=8)
                 for dtype in ("bfloat16", "float32")]
    assert all(c and c.warps_per_block == 2 for c in two_warps)
    trade = [phase_clocks.with_defines((("FLASHRNN_TRADE_CELLS", on),), "forward")(choice).spec
             for on, choice in (("1", two_warps[0]), ("1", two_warps[1]),
                                ("0", fused.choose("lstm", "bfloat16", 256, 12, 64, hardware=H100).choice))]
    scatter = fused.choose("lstm", "bfloat16", 16, 1, 768, hardware=H100, direction="backward").choice
    assert scatter.scatter
    scatter_knobs = [phase_clocks.with_defines(((knob, value),), "backward")(scatter).spec
                     for knob, value in (("FLASHRNN_ABLATE_EXCHANGE", "1"), ("FLASHRNN_ABLATE_MATMUL", "1"),
                                         ("FLASHRNN_SCATTER_MERGED", "0"), ("FLASHRNN_SCATTER_PAIRS_01", "1"))]
    # The scatter kernel's exchange ablation spills 4 bytes under the merged product order (stop 63, ptxas at 255
    # registers): its timings are read with that cost in them. Every other knob compiles spill-free.
    spill_allowed = {scatter_knobs[0].label: 8}
    for spec in (forward_knobs(fw).spec, late, lean, block_sends, *unpaired_specs, *trade, *scatter_knobs):
        resources = compile_spec(spec, "sm_90", use_cache=False).resources
        assert resources is not None and resources.spill_stores <= spill_allowed.get(spec.label, 0), spec.label
    clocks = phase_clocks.with_defines((("FLASHRNN_PHASE_CLOCKS", "1"),), "backward")(scatter).spec
    assert compile_spec(clocks, "sm_90", use_cache=False).resources is not None


_SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   IMAD.MOV.U32 R2, RZ, RZ, R3 ;
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0030*/              @!P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0040*/                   FADD R1, R1, R2 ;
        /*0050*/                   BRA `(.L_x_2) ;
        /*0060*/                   EXIT ;
"""


def test_sass_loop_finds_the_loop_that_holds_a_barrier():
    """bench/sass_loop.py's reading of nvdisasm's text: the loop with a barrier is the step loop (the one without
    is not), guards and modifiers are not opcodes."""
    from bench import sass_loop

    listed, labels = sass_loop.instructions(_SASS)
    assert len(listed) == 7 and labels == {"L_x_1": 1, "L_x_2": 4}
    assert sass_loop.barrier_loops(listed, labels) == [sass_loop.Loop(1, 3)]
    assert sass_loop.step_loop(_SASS) == listed[1:4] == sass_loop.step_loop(_SASS, last=True)
    assert [sass_loop.opcode(x) for x in listed[1:4]] == ["IMAD", "BAR", "BRA"]
    assert sass_loop.step_loop(_SASS.replace("BAR.SYNC.DEFER_BLOCKING 0x0", "NOP")) == []
    # a second back edge into the middle of the first loop's body: one loop
    rotated = _SASS.replace("BRA `(.L_x_2) ;", "BRA `(.L_x_3) ;").replace(
        "IMAD.MOV.U32 R2, RZ, RZ, R3 ;", "IMAD.MOV.U32 R2, RZ, RZ, R3 ;\n.L_x_3:")
    listed, labels = sass_loop.instructions(rotated)
    assert sass_loop.barrier_loops(listed, labels) == [sass_loop.Loop(1, 5)]


# ----------------------------------------------------------------------------- on the GPU (device_check.sh)


def _gpu_options(backends, absent=None):
    return run.Options("reference", backends, absent or {}, runs=timing.MIN_RUNS, spin_ms=0.5, loop="first",
                       budget_s=0.0, cudnn_dtypes=("float16",), gpu=True)


@pytest.mark.gpu
def test_gpu_timing_suite_rows(tmp_path):
    """The GPU path end to end on one small shape: CUDA-event timings, pool peak memory, cuDNN and loop."""
    names, absent = run.choose_backends(None, gpu=True)
    results = run.Results(tmp_path / "g.json", {"suite": "reference"})
    run.run_timing_suite(_gpu_options(names, absent), [run.Shape("lstm", "bfloat16", 4, 16, 2, 16)], results)
    rows = results.doc["rows"]
    assert {(r["backend"], r["pass"]) for r in rows} == {(b, p) for b in names for p in run.PASSES}
    for row in rows:
        if absent.get(row["backend"]) is None:
            assert "error" not in row, row
            assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["peak_mem_bytes"] > 0
        if row.get("baseline_error") is None and row["pass"] == "fw":
            assert row["baseline_ms"] > 0 and set(row["baseline_all_ms"]) == {"bfloat16", "float16"}


@pytest.mark.gpu
def test_gpu_measure_counts_pool_memory():
    import cupy

    t = timing.measure(lambda: cupy.ones(1 << 20, dtype=cupy.float32), "cupy", spin_ms=0.1)
    assert t.runs == timing.MIN_RUNS and t.peak_mem_bytes >= 4 << 20 and t.median_ms > 0


@pytest.mark.gpu
def test_gpu_compile_rows_for_a_fused_kernel(tmp_path, monkeypatch):
    """The compile suite's discovery and one cold and warm compile (the 12x64 lstm kernel: D=16's compiled in
    56 ms on an H200, within the noise of a 60 ms module load, and once measured cold below warm)."""
    if sanitize_fused.load_fused() is None:
        pytest.skip("cuda_fused is not importable")
    import importlib

    # Discovery lists the kernels a call loads; earlier tests in this process may have loaded them already.
    monkeypatch.setattr(importlib.import_module("flashrnn_core.runtime.launch"), "_kernels", {})
    shape = run.Shape("lstm", "bfloat16", 3, 1024, 1, 64)
    results = run.Results(tmp_path / "c.json", {"suite": "compile"})
    found = run.discover_kernels(_gpu_options(["cuda_fused"]), [shape], results)
    assert found, results.doc["rows"]
    # The forward kernel (about a second of NVRTC): the first one found may be a small one whose cold compile is
    # within the noise of the module load (the backward's GEMM path measured 105 ms cold against 110 warm).
    spec = next(s for specs in found.values() for s in specs if s.source == "fused_fw.cu")
    fields = run.time_compile(spec, cold_runs=1, warm_runs=timing.MIN_RUNS)
    assert fields["compile_cold"]["median_ms"] > fields["compile_warm"]["median_ms"] > 0


@pytest.mark.gpu
def test_gpu_sanitizer_problem_runs():
    fused = sanitize_fused.load_fused()
    if fused is None:
        pytest.skip("cuda_fused is not importable")
    info = sanitize_fused.device_info()
    spec = fused.choose("lstm", "bfloat16", 16, 12, 64, hardware=info).spec  # one this GPU's solver picks
    problem = sanitize_fused.find_problem(fused, spec, info)
    assert isinstance(problem, sanitize_fused.Problem), problem
    assert sanitize_fused.run_problem(problem, seed=0) is None
    # a backward variant on one cluster (--one-cluster), after the fused forward and after the `cuda` one
    spec = fused.choose("lstm", "bfloat16", 16, 3, 256, hardware=info, direction="backward").spec
    problem = sanitize_fused.one_cluster(fused, sanitize_fused.find_problem(fused, spec, info))
    for cuda_forward in (False, True):
        assert sanitize_fused.run_problem(problem, seed=0, cuda_forward=cuda_forward) is None


def test_compile_rows_time_a_real_nvrtc_compile(monkeypatch):
    """Cold (empty cache directory) and warm (disk hit) compiles of the smallest fused kernel for sm_90, with
    the module load stubbed out (no GPU here): the warm path must be a cache hit, far faster than NVRTC."""
    pytest.importorskip("cuda.core")
    fused = sanitize_fused.load_fused()
    if fused is None:
        pytest.skip("cuda_fused is not importable here")
    import flashrnn_core.runtime as runtime

    monkeypatch.setattr(runtime, "device_arch", lambda device=None: "sm_90")
    loaded = []
    monkeypatch.setattr(run, "_load_module", lambda spec, cubin: loaded.append(len(cubin)))
    spec = min(fused.solver_variants(), key=lambda s: s.smem_dynamic)
    try:
        fields = run.time_compile(spec, cold_runs=1, warm_runs=timing.MIN_RUNS)
    except Exception as err:  # NVRTC or the CUDA headers missing on this machine
        pytest.skip(f"cannot compile here: {err}")
    cold, warm = fields["compile_cold"], fields["compile_warm"]
    assert cold["runs"] == 1 and warm["runs"] == timing.MIN_RUNS and len(loaded) == 1 + timing.MIN_RUNS
    assert cold["median_ms"] > warm["median_ms"] > 0 and cold["registers"] > 0 and cold["spill_stores"] == 0


@pytest.mark.gpu
def test_gpu_varlen_suite_rows(tmp_path):
    """The varlen suite's GPU path on one small shape: each present backend timed with and without lengths
    (vanilla always takes them; a GPU backend that does not yet gets an error row), cuDNN on the PackedSequence
    and on the padded batch."""
    names, absent = run.choose_backends(None, gpu=True)
    names = [*names, "vanilla"]
    results = run.Results(tmp_path / "v.json", {"suite": "varlen"})
    run.run_varlen_suite(_gpu_options(names, absent), [run.Shape("lstm", "bfloat16", 4, 64, 2, 64)], results)
    rows = results.doc["rows"]
    assert {(r["backend"], r["pass"]) for r in rows} == {(b, f"{p}_varlen") for b in names for p in run.PASSES}
    timed = [r for r in rows if "error" not in r]
    assert {r["backend"] for r in timed} >= {"vanilla"}, rows
    for row in timed:
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["padded_ms"] > 0
        assert row["varlen_ratio"] == pytest.approx(row["median_ms"] / row["padded_ms"])
    if rows[0].get("baseline_error") is None:
        assert all(r["baseline_ms"] > 0 and r["baseline_padded_ms"] > 0 for r in rows)


def test_report_tables_the_varlen_step_and_sweep_results():
    """The committed H200 results of those suites render as their own tables (issue 10's rows, issue 7's sweep)."""
    results = Path(__file__).resolve().parent.parent / "bench" / "results"
    docs = report.load(sorted(results.glob("2026-11-30-h200-*.json")))
    md = report.markdown(docs)
    for heading in ("## varlen: NVIDIA H200", "## step: NVIDIA H200", "## sweep: NVIDIA H200"):
        assert heading in md
    assert "| lstm | 12x64 | 16 | 1024 | fw_varlen | cuda_fused |" in md
    assert "lstm bfloat16 B=16 12x64 T=1024 | cl1 ks1 bt8 pf8 |" in md


def test_cold_compile_runs_in_a_fresh_process(tmp_path):
    """The compile suite's cold compile: a new process, an empty cache directory, NVRTC's time and ptxas's
    report back (on the device an in-process repeat came back at once without a log); a second one into the
    same directory is a cache hit and refused as not cold."""
    pytest.importorskip("cuda.core")
    from flashrnn_core.backends import alternating

    spec = alternating.AlternatingBackend().kernel_variants()[0]
    ms, report = run.cold_compile(spec, "sm_90", tmp_path / "cold")
    assert ms > 1e3 * report["nvrtc_s"] > 0 and report["registers"] > 0 and report["spill_stores"] == 0
    with pytest.raises(RuntimeError, match="was not one"):
        run.cold_compile(spec, "sm_90", tmp_path / "cold")


def test_readme_summary_is_generated_from_the_results():
    """The top-level README's performance table is bench.report's summary of the newest reference results,
    not typed by hand (regenerate with ``python -m bench.report ... --readme README.md``)."""
    root = Path(__file__).resolve().parent.parent
    docs = report.load(sorted((root / "bench" / "results").glob("*.json")))
    readme = (root / "README.md").read_text()
    block = readme.split(report.SUMMARY_BEGIN, 1)[1].split(report.SUMMARY_END, 1)[0]
    assert block.strip() == report.summary(docs).strip()
    assert "| forward |" in block and "LSTM 12x64" in block


def test_backward_stages_dry_run_names_each_kernels_best(capsys):
    """bench/backward_stages.py (the A/B behind problems._weighed_with), without a GPU: the solver's choice and each
    backward kernel's best on the H100 preset; float32 lstm 3x256 takes the scatter kernel, D = 768 its last stage
    (fp16 operands, one receive buffer), which neither stage of the A/B offers."""
    from bench import backward_stages

    assert backward_stages.main(["--dry-run", "--dtype", "float32", "lstm:3:256", "lstm:1:768"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("backward stages on H100, float32") and lines[0].endswith("(dry run)")
    first = lines[1].split(" | ")
    assert first[0].startswith("lstm 3x256: solver cl8 scatter") and first[1].startswith("exchange cl16 ks")
    assert first[2].startswith("scatter cl8 scatter") and " ms" not in lines[1]
    assert lines[2].startswith("lstm 1x768: solver cl16 scatter w8")
    assert lines[2].endswith(" | exchange no launch | scatter no launch")


def test_targets_table_holds_each_issue_point_to_its_rows():
    """bench/results/README.md's speed-target table: a target is met only where every bound holds on the GPU's
    own rows, missed where one fails, "-" where a row is absent; sLSTM is measured against lstm's row."""
    def row(function, N, D, ms, B=16, pass_="fw", ratio=None, ratio_best=None):
        return {"function": function, "N": N, "D": D, "B": B, "T": 1024, "pass": pass_, "backend": "cuda_fused",
                "dtype": "bfloat16", "median_ms": ms, "ratio": ratio, "ratio_best": ratio_best}

    rows = [row("lstm", 12, 64, 0.39), row("lstm", 48, 16, 0.41), row("slstm", 12, 64, 0.42),
            row("lstm", 1, 768, 1.4, ratio=9.5, ratio_best=1.4), row("lstm", 12, 64, 0.49, B=64)]
    docs = [{"suite": "reference", "gpu": "G", "rows": rows[:4], "_path": "ref.json"},
            {"suite": "batch", "gpu": "G", "rows": rows[4:], "_path": "batch.json"},
            {"suite": "reference", "gpu": "other", "rows": [row("gru", 12, 64, 0.1)], "_path": "o.json"}]
    table = report.targets_table(docs, "G")
    lines = {line.split(" | ")[1]: line for line in table[2:] if line.startswith("| #")}
    assert lines["lstm 12x64 B=16 fw"].endswith("| 0.39 ms | met |")
    assert lines["lstm 48x16 B=16 fw"].endswith("| **missed** |")
    assert lines["slstm 12x64 B=16 fw"].endswith("| 0.42 / 0.39 = 1.08 | met |")
    assert lines["lstm 1x768 B=16 fw"].endswith("| 1.4 ms, 9.50x, 1.40x | **missed** |")  # 1.5x cuDNN's fastest
    assert lines["lstm 12x64 B=64 fw"].endswith("| met |") and lines["gru 12x64 B=16 fw"].endswith("| - | - |")
    assert "## Speed targets of issues 5 and 6: G" in report.markdown(docs[:2])
    # Under the table, what limits each missed point that says it: lstm 1x768's, not lstm 48x16's (no limit).
    limits = table[table.index("What limits each missed point, measured:") + 2:]
    assert limits == [f"- #5 lstm 1x768 B=16 fw: {report.LIMIT_1X768_FW}"]  # its 9x cuDNN bf16 met: no need said
    slow = [row("lstm", 1, 768, 3.93, pass_="fwbw", ratio=7.5, ratio_best=1.7)]
    table = report.targets_table([{"suite": "reference", "gpu": "G", "rows": slow, "_path": "ref.json"}], "G")
    assert table[-1].endswith("At 3.93 ms, 10x needs cuDNN bf16 at 39.3 ms or more; it took 29.5 ms in this run.")
    met = [row("lstm", 1, 768, 1.4, ratio=9.5, ratio_best=1.6)]
    assert not any("What limits" in line for line in report.targets_table(
        [{"suite": "reference", "gpu": "G", "rows": met, "_path": "ref.json"}], "G"))
