"""Plots and the markdown table, generated from results JSON (never typed by hand).

    python -m bench.report bench/results/*.json --plots bench/results/plots --markdown bench/results/README.md \
        --readme README.md

Per file, by its suite: ``batch`` / ``seqlen`` / ``headdim`` -> ``<stem>-time-vs-B|T|D.png``: time (log-log, one
line per backend, cuDNN and the plain loop) with the speedup over cuDNN beneath, a column per cell and head
layout; ``reference`` -> ``<stem>-speedup.png``: speedup over cuDNN per configuration (bars). The markdown has
one table per file: one line per (cell, heads, shape, pass), each backend's median in ms with its ratios to
cuDNN (row dtype, fastest dtype), then cuDNN (and the fastest of its dtypes) and the plain loop. Where several
files have the same suite and GPU, the newest (by ``date``) is used; in a sweep or the reference suite, rows it
did not time come from the older files (``load``), marked ``*``. Plots need matplotlib
(``pip install flashrnn_core[bench]``); the markdown does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SWEEP_AXIS = {"batch": "B", "seqlen": "T", "headdim": "D"}
SUITE_ORDER = ("reference", "batch", "seqlen", "headdim", "heads", "varlen", "step", "sweep", "compile")
#: Suites whose newest file is completed from older ones where its time budget cut it (``fill_from_older``).
FILLED_SUITES = (*SWEEP_AXIS, "reference", "heads")
TIME_PASSES = ("fw", "fwbw")


@dataclass(frozen=True)
class Target:
    """One speed point of the `cuda_fused` issues (#5 forward, #6 forward+backward; bfloat16, T=1024, an H100):
    `cuda_fused`'s median for (function, N x D, B, pass) at most ``max_ms``, its cuDNN ratio in bfloat16 at least
    ``min_ratio`` and against cuDNN's fastest dtype at least ``min_ratio_best``, or (``of_lstm``) at most that
    multiple of lstm's median at the same shape and pass. ``limit``: what limits the point, measured, said under
    the table where the point is missed (the issues ask it of every miss)."""

    issue: int
    function: str
    N: int
    D: int
    B: int
    pass_: str
    max_ms: float | None = None
    min_ratio: float | None = None
    min_ratio_best: float | None = None
    of_lstm: float | None = None
    limit: str | None = None


MISSED = "**missed**"

#: What limits the lstm 1x768 points (stops 61 and 64; the records under bench/results/phases/).
LIMIT_1X768_FW = (
    "the step (~3400 cycles) is the matrix-vector product, ~1680 cycles that read ~147 kB of R a step from shared "
    "memory at 100-117 B a cycle (R is 295 kB an SM of the 16-block cluster, more than its register file), and "
    "the wait for the other blocks' h slices (~1000-1300 cycles); the best register split measured saves 4-6% "
    "(`phases/2026-12-06-h100-matvec-split.txt`). The bf16 ratio moves with cuDNN's bf16 time: 8.5-18.6 ms "
    "forward across the machines lent, ours within 3% on them.")
LIMIT_1X768_FWBW = (
    "the saving forward (1.88 ms on an H100) has the forward point's limit, and the backward (~2.05 ms: the "
    "kernel, ~2.0, and ~43 us of dR after it) runs the same product over R^T "
    "(`phases/2026-12-06-h100-dr-overlap-tail.txt`). cuDNN's bf16 LSTM took 23.3-48.6 ms forward+backward across "
    "the machines lent.")


SPEED_TARGETS = (
    Target(5, "lstm", 12, 64, 16, "fw", max_ms=0.40), Target(5, "lstm", 48, 16, 16, "fw", max_ms=0.40),
    Target(5, "lstm", 3, 256, 16, "fw", max_ms=0.8),
    Target(5, "lstm", 1, 768, 16, "fw", max_ms=1.5, min_ratio=9.0, min_ratio_best=1.5, limit=LIMIT_1X768_FW),
    *(Target(5, "slstm", n, d, 16, "fw", of_lstm=1.10) for n, d in ((12, 64), (48, 16), (3, 256), (1, 768))),
    Target(5, "gru", 12, 64, 16, "fw", max_ms=0.45),
    Target(5, "lstm", 12, 64, 64, "fw", max_ms=0.5), Target(5, "lstm", 12, 64, 256, "fw", max_ms=1.0),
    Target(6, "lstm", 12, 64, 16, "fwbw", max_ms=1.5),
    Target(6, "lstm", 1, 768, 16, "fwbw", max_ms=4.0, min_ratio=10.0, min_ratio_best=1.5, limit=LIMIT_1X768_FWBW),
    *(Target(6, "slstm", n, d, 16, "fwbw", of_lstm=1.10) for n, d in ((12, 64), (48, 16), (3, 256), (1, 768))),
    Target(6, "gru", 12, 64, 16, "fwbw", max_ms=1.8),
)


def load(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The documents, one per (suite, dtype, gpu), in SUITE_ORDER: the newest file's (by ``date``; ``dtype`` is the
    header's where a run chose one, ``bench.run --dtype``, else the reference's bfloat16). In a sweep suite
    (batch, seqlen, headdim), the reference suite or the heads suite (each run may time other heads) a
    (configuration, backend) that the newest file did not time
    (cut by its time budget, or a cell it did not run) is filled from the newest older file of the same suite and
    GPU that did; such a row carries ``from`` (that file's name) and the document lists the files in ``filled_from``."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        doc["_path"] = str(path)
        if "suite" not in doc and "shapes" in doc:  # bench/sweep_fused.py's document
            doc["suite"] = "sweep"
        by_key.setdefault((doc.get("suite", "?"), suite_dtype(doc), doc.get("gpu", "?")), []).append(doc)
    docs = []
    for (suite, _, _), group in by_key.items():
        group.sort(key=lambda d: d.get("date", ""), reverse=True)
        docs.append(fill_from_older(group[0], group[1:]) if suite in FILLED_SUITES else group[0])
    order = {s: i for i, s in enumerate(SUITE_ORDER)}
    return sorted(docs, key=lambda d: (order.get(d.get("suite"), 99), d.get("gpu", "")))


def suite_dtype(doc: dict[str, Any]) -> str:
    """The storage dtype a document's suite ran in: its header's (``bench.run --dtype``), else bfloat16."""
    return doc.get("dtype", "bfloat16")


def _timed(row: dict[str, Any]) -> bool:
    return row.get("median_ms") is not None


def fill_from_older(newest: dict[str, Any], older: list[dict[str, Any]]) -> dict[str, Any]:
    """``newest`` with its untimed rows replaced, and rows it lacks appended, from ``older`` (newest first)."""
    def key(row: dict[str, Any]) -> tuple:
        return (*config_key(row), row["backend"])

    donors: dict[tuple, dict[str, Any]] = {}
    for doc in reversed(older):  # the newer file wins
        for row in doc.get("rows", []):
            if _timed(row):
                donors[key(row)] = {**row, "from": Path(doc["_path"]).name}
    rows = [row if _timed(row) or key(row) not in donors else donors[key(row)] for row in newest["rows"]]
    present = {key(row) for row in rows}
    rows += [row for k, row in donors.items() if k not in present]
    used = list(OrderedDict.fromkeys(r["from"] for r in rows if "from" in r))
    return {**newest, "rows": rows, "filled_from": used}


def backends_of(rows: list[dict[str, Any]]) -> list[str]:
    return list(OrderedDict.fromkeys(r["backend"] for r in rows))


def config_key(row: dict[str, Any]) -> tuple:
    return (row["function"], row["N"], row["D"], row["B"], row["T"], row["dtype"], row["pass"])


def group_rows(rows: list[dict[str, Any]]) -> "OrderedDict[tuple, dict[str, dict[str, Any]]]":
    """config -> backend -> row, in the file's order."""
    groups: OrderedDict[tuple, dict[str, dict[str, Any]]] = OrderedDict()
    for row in rows:
        groups.setdefault(config_key(row), {})[row["backend"]] = row
    return groups


# ---------------------------------------------------------------------------------------------- markdown


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _cell(row: dict[str, Any] | None) -> str:
    """``1.23 (x4.5; best x2.1; saving 1.31)``: median ms, ratio to cuDNN in the row's dtype and to cuDNN's
    fastest dtype, and the forward that saves for a backward where measured; ``n/a`` for an error row (the
    reason is listed under the table)."""
    if row is None:
        return "-"
    if row.get("median_ms") is None:
        return "n/a"
    ratios = []
    if row.get("ratio"):
        ratios.append(f"x{row['ratio']:.2f}")
    if row.get("ratio_best") and row.get("baseline_best_ms") != row.get("baseline_ms"):
        ratios.append(f"best x{row['ratio_best']:.2f}")
    if row.get("fw_save_ms"):  # the forward that also saves for a backward (fw rows: the inference forward)
        ratios.append(f"saving {_ms(row['fw_save_ms'])}")
    mark = "*" if "from" in row else ""
    return _ms(row["median_ms"]) + mark + (f" ({'; '.join(ratios)})" if ratios else "")


def timing_table(doc: dict[str, Any]) -> list[str]:
    """The markdown lines of one timing suite."""
    rows = [r for r in doc["rows"] if r["pass"] in TIME_PASSES]
    names = backends_of(rows)
    head = ["cell", "heads NxD", "B", "T", "dtype", "pass", *[f"{b} ms (x cuDNN)" for b in names],
            "cuDNN ms", "cuDNN best ms", "loop ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    errors: OrderedDict[str, None] = OrderedDict()
    for key, by_backend in group_rows(rows).items():
        function, N, D, B, T, dtype, pass_ = key
        any_row = next(iter(by_backend.values()))
        best = any_row.get("baseline_best_ms")
        best_txt = f"{_ms(best)} ({any_row.get('baseline_best_dtype', '')})" if best else "-"
        cells = [function, f"{N}x{D}", str(B), str(T), dtype, pass_,
                 *[_cell(by_backend.get(b)) for b in names],
                 f"{_ms(any_row.get('baseline_ms'))} ({any_row.get('baseline', '-')})", best_txt,
                 _ms(any_row.get("loop_ms"))]
        lines.append("| " + " | ".join(cells) + " |")
        for b, row in by_backend.items():
            if row.get("error"):
                errors[f"{b}, {function} {N}x{D}: {row['error'].splitlines()[0][:160]}"] = None
    if errors:
        lines += ["", "n/a:"] + [f"- {e}" for e in list(errors)[:20]]
    return lines


def _table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table: the header, its rule, a line per row of cell texts."""
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if not value else spec.format(value)


def varlen_table(doc: dict[str, Any]) -> list[str]:
    """Variable-length rows: the batch with lengths against the same batch padded, and cuDNN's PackedSequence."""
    head = ["cell", "heads NxD", "B", "T", "pass", "backend", "lengths ms", "padded ms", "lengths / padded",
            "cuDNN packed ms", "cuDNN padded ms", "x cuDNN packed"]
    return _table(head, ([r["function"], f"{r['N']}x{r['D']}", str(r["B"]), str(r["T"]), r["pass"], r["backend"],
                          _ms(r["median_ms"]), _ms(r.get("padded_ms")), _fmt(r.get("varlen_ratio"), "{:.3f}"),
                          _ms(r.get("baseline_ms")), _ms(r.get("baseline_padded_ms")), _fmt(r.get("ratio"), "x{:.1f}")]
                         for r in doc["rows"] if r.get("median_ms") is not None))


def step_table(doc: dict[str, Any]) -> list[str]:
    """One-step rows (``Stepper``): microseconds a step, how it was timed, against the 10 us target."""
    head = ["cell", "heads NxD", "B", "backend", "timing", "us a step", "<= 10 us"]
    timed = lambda r: r.get("median_ms") is not None  # noqa: E731
    return _table(head, ([r["function"], f"{r['N']}x{r['D']}", str(r["B"]), r["backend"], r.get("step_timing", "-"),
                          f"{r['median_ms'] * 1e3:.2f}" if timed(r) else "-",
                          ("yes" if r.get("meets_target") else "no") if timed(r) else "-"] for r in doc["rows"]))


def sweep_table(doc: dict[str, Any]) -> list[str]:
    """bench/sweep_fused.py: per reference shape, the solver's configuration against the fastest measured."""
    head = ["shape", "solver's choice", "ms", "fastest measured", "ms", "ratio", "configurations"]
    # (an infeasible shape has no solver's choice and nothing measured: None there)
    return _table(head, ([sh["label"], sh.get("solver") or "-", _ms(sh.get("solver_ms")), sh.get("best") or "-",
                          _ms(sh.get("best_ms")), _fmt(sh.get("ratio"), "{:.3f}"),
                          f"{sh.get('measured', '-')}/{sh.get('configs', '-')}"] for sh in doc["shapes"]))


def compile_table(doc: dict[str, Any]) -> list[str]:
    head = ["kernel", "backend", "cold ms (median)", "warm ms (median)", "registers", "spill stores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_kernel: OrderedDict[tuple[str, str], dict[str, dict[str, Any]]] = OrderedDict()
    for row in doc["rows"]:
        if "kernel" in row:
            by_kernel.setdefault((row["kernel"], row["backend"]), {})[row["pass"]] = row
    for (kernel, backend), passes in by_kernel.items():
        cold, warm = passes.get("compile_cold", {}), passes.get("compile_warm", {})
        lines.append(f"| {kernel} | {backend} | {_ms(cold.get('median_ms'))} | {_ms(warm.get('median_ms'))} | "
                     f"{cold.get('registers', '-')} | {cold.get('spill_stores', '-')} |")
    errors = [f"- {r['backend']}, {r['function']} {r['N']}x{r['D']}: {r['error'][:160]}"
              for r in doc["rows"] if r.get("error")]
    return lines + (["", "not measured:"] + errors[:20] if errors else [])


def _commit(commit: Any) -> str:
    """A sha shortened to 12 characters; a sentence naming several commits as it is."""
    text = str(commit)
    return text if " " in text else text[:12]


def _provenance(doc: dict[str, Any]) -> str:
    """Where rows came from other runs, and which cuDNN dtypes the baselines timed where not all three."""
    text = ""
    if doc.get("filled_from"):
        older = ", ".join(f"`{name}`" for name in doc["filled_from"])
        text += f"; rows marked `*` were not timed in this run and come from {older} (commit and date in that file)"
    timed = sorted({d for r in doc.get("rows", []) for d in (r.get("baseline_all_ms") or {})})
    if timed and len(timed) < 3:
        text += f"; cuDNN timed in {', '.join(timed)} only (best of those)"
    return text


def markdown(docs: list[dict[str, Any]]) -> str:
    """The whole page: a section per document."""
    out = ["# Benchmark results", "",
           "Generated by `python -m bench.report` from the JSON files in this directory; do not edit by hand. "
           "Times are medians of CUDA-event timings in ms (protocol: `BENCH.md`); `(xR)` is cuDNN's time in the row's "
           "dtype over ours (above 1: faster than cuDNN), `best xR` the same against cuDNN's fastest of bfloat16, "
           "float16 and float32. cuDNN has no heads: it runs one head of size N*D. sLSTM is compared with cuDNN's "
           "LSTM and Elman with its tanh RNN (no cuDNN counterparts).", ""]
    for doc in docs:
        in_dtype = "" if suite_dtype(doc) == "bfloat16" else f" ({suite_dtype(doc)})"
        out += [f"## {doc['suite']}{in_dtype}: {doc.get('gpu')}", "",
                f"{doc.get('date')}, commit `{_commit(doc.get('commit'))}`, driver {doc.get('driver')}, "
                f"CUDA {doc.get('cuda_runtime')}, NVRTC {doc.get('nvrtc')}, CuPy {doc.get('cupy')}, "
                f"torch {doc.get('torch')}" + (" (dry run: CPU, tiny sizes)" if doc.get("dry_run") else ""),
                f"source: `{Path(doc['_path']).name}`" + (f"; {doc['note']}" if doc.get("note") else "")
                + _provenance(doc), ""]
        tables = {"compile": compile_table, "varlen": varlen_table, "step": step_table, "sweep": sweep_table}
        out += tables.get(doc["suite"], timing_table)(doc)
        out.append("")
    for gpu in sorted({d.get("gpu") for d in docs if d.get("suite") == "reference" and suite_dtype(d) == "bfloat16"}):
        sources = ", ".join(f"`{Path(d['_path']).name}`" for d in _target_docs(docs, gpu))
        out += [f"## Speed targets of issues 5 and 6: {gpu}", "",
                f"`cuda_fused` in the newest bfloat16 reference and batch results of this GPU ({sources}; the issues "
                "ask them of an H100); `fw` is the inference forward.", "", *targets_table(docs, gpu), ""]
    return "\n".join(out)


def _target_docs(docs: list[dict[str, Any]], gpu: str) -> list[dict[str, Any]]:
    """The documents SPEED_TARGETS are read from: ``gpu``'s bfloat16 reference and batch results."""
    return [d for d in docs
            if d.get("gpu") == gpu and d.get("suite") in ("reference", "batch") and suite_dtype(d) == "bfloat16"]


def target_rows(docs: list[dict[str, Any]], gpu: str) -> list[tuple[Target, dict[str, Any] | None, list[str]]]:
    """SPEED_TARGETS against the bfloat16 reference and batch documents of ``gpu``: per target its result row (or
    None) and its table cells (issue, shape, what is wanted, what was measured, whether it is met: "-" where
    neither document timed it)."""
    fused = {}
    for doc in _target_docs(docs, gpu):
        for r in doc["rows"]:
            if r["backend"] == "cuda_fused" and r["T"] == 1024 and r.get("median_ms") is not None:
                fused.setdefault((r["function"], r["N"], r["D"], r["B"], r["pass"]), r)
    lines = []
    for t in SPEED_TARGETS:
        row = fused.get((t.function, t.N, t.D, t.B, t.pass_))
        lstm = fused.get(("lstm", t.N, t.D, t.B, t.pass_))
        wanted, got, checks = [], [], []
        if t.max_ms is not None:
            wanted.append(f"<= {t.max_ms:g} ms")
            got.append(f"{_ms(row['median_ms'])} ms" if row else "-")
            checks.append(row["median_ms"] <= t.max_ms if row else None)
        for key, least, what in (("ratio", t.min_ratio, "cuDNN bf16"), ("ratio_best", t.min_ratio_best, "fastest")):
            if least is not None:
                wanted.append(f">= {least:g}x {what}")
                got.append(f"{row[key]:.2f}x" if row and row.get(key) else "-")
                checks.append(row[key] >= least if row and row.get(key) else None)
        if t.of_lstm is not None:
            wanted.append(f"<= {t.of_lstm:g} x lstm")
            ratio = row["median_ms"] / lstm["median_ms"] if row and lstm else None
            got.append(f"{_ms(row['median_ms'])} / {_ms(lstm['median_ms'])} = {ratio:.2f}" if ratio else "-")
            checks.append(ratio <= t.of_lstm if ratio else None)
        verdict = "-" if None in checks else "met" if all(checks) else MISSED
        lines.append((t, row, [f"#{t.issue}", f"{t.function} {t.N}x{t.D} B={t.B} {t.pass_}", ", ".join(wanted),
                          ", ".join(got), verdict]))
    return lines


def targets_table(docs: list[dict[str, Any]], gpu: str) -> list[str]:
    """``target_rows`` as a Markdown table, then what limits each missed point that says (``Target.limit``), with
    the cuDNN bf16 time its ratio would need."""
    rows = target_rows(docs, gpu)
    limits = [f"- {cells[0]} {cells[1]}: {t.limit}{_needed_cudnn(t, row)}"
              for t, row, cells in rows if t.limit and cells[-1] == MISSED]
    return _table(["issue", "shape", "target", "measured", ""], [cells for _, _, cells in rows]) + (
        ["", "What limits each missed point, measured:", "", *limits] if limits else [])


def _needed_cudnn(t: Target, row: dict[str, Any] | None) -> str:
    """Where ``t``'s cuDNN bf16 ratio is missed: the cuDNN time it would need at our median, and cuDNN's here."""
    if not (t.min_ratio and row and row.get("ratio")) or row["ratio"] >= t.min_ratio:
        return ""
    ms = row["median_ms"]
    return (f" At {_ms(ms)} ms, {t.min_ratio:g}x needs cuDNN bf16 at {t.min_ratio * ms:.1f} ms or more; it took "
            f"{row['ratio'] * ms:.1f} ms in this run.")


# ------------------------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], x: str, key: str) -> tuple[list[float], list[float]]:
    pts = sorted((r[x], r[key]) for r in rows if r.get(key))
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_sweep(doc: dict[str, Any], path: Path) -> Path:
    """A column per (cell, heads) (per cell for the head-dim sweep); rows: fw time, fw speedup over cuDNN,
    fwbw time, fwbw speedup. One line per backend, cuDNN and the plain loop dashed and dotted."""
    plt = _pyplot()
    x = SWEEP_AXIS[doc["suite"]]
    rows = [r for r in doc["rows"] if r["pass"] in TIME_PASSES]
    fixed = ("N", "D") if x in ("B", "T") else ()
    columns = list(OrderedDict.fromkeys((r["function"], *(r[k] for k in fixed)) for r in rows))
    passes = [p for p in TIME_PASSES if any(r["pass"] == p for r in rows)]
    fig, axes = plt.subplots(2 * len(passes), len(columns), figsize=(3.4 * len(columns), 2.6 * 2 * len(passes)),
                             squeeze=False, sharex="col")
    for col, column in enumerate(columns):
        for i, pass_ in enumerate(passes):
            sel = [r for r in rows if (r["function"], *(r[k] for k in fixed)) == column and r["pass"] == pass_]
            _sweep_panels(axes[2 * i][col], axes[2 * i + 1][col], sel, x)
            name = f"{column[0]} {column[1]}x{column[2]}" if fixed else column[0]
            axes[2 * i][col].set_title(f"{name} {pass_}", fontsize=9)
        axes[-1][col].set_xlabel(x)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{doc['suite']} sweep, {doc.get('gpu')} ({doc.get('date', '')[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sweep_panels(top: Any, bottom: Any, rows: list[dict[str, Any]], x: str) -> None:
    """Time (log-log) on ``top``, speedup over cuDNN on ``bottom``; a pass with no measured row (a suite cut
    short by its time budget) gets a note instead (a log axis without data cannot be drawn)."""
    if not any(r.get("median_ms") for r in rows):
        top.text(0.5, 0.5, "not measured", ha="center", va="center", transform=top.transAxes)
        top.set_axis_off()
        bottom.set_axis_off()
        return
    for backend in backends_of(rows):
        mine = [r for r in rows if r["backend"] == backend]
        top.plot(*_series(mine, x, "median_ms"), marker="o", ms=3, label=backend)
        bottom.plot(*_series(mine, x, "ratio"), marker="o", ms=3, label=backend)
    base = list({r[x]: r for r in rows}.values())  # the baselines are the same in every backend's row
    top.plot(*_series(base, x, "baseline_ms"), "k--", label="cuDNN")
    top.plot(*_series(base, x, "loop_ms"), "k:", marker="x", label="torch loop")
    bottom.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    top.set(xscale="log", yscale="log", ylabel="ms (median)")
    bottom.set(xscale="log", yscale="log", ylabel="x cuDNN (above 1: faster)")
    ticks = sorted({r[x] for r in rows})
    for ax in (top, bottom):
        _plain_ticks(ax.xaxis, ticks)
        _plain_ticks(ax.yaxis, None)


def _plain_ticks(axis: Any, ticks: list[float] | None) -> None:
    """Tick labels as plain numbers (``256``, not ``2.56x10^2``): on x only at the measured sizes, on a log y
    axis at 1, 2 and 5 of each decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ticks is not None:
        axis.set_ticks(ticks)
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_speedup(doc: dict[str, Any], path: Path) -> Path:
    """Bars: speedup over cuDNN (row dtype) per configuration, a bar per backend; a panel per pass."""
    plt = _pyplot()
    rows = [r for r in doc["rows"] if r["pass"] in TIME_PASSES]
    names = backends_of(rows)
    passes = [p for p in TIME_PASSES if any(r["pass"] == p for r in rows)]
    width_in = max(6.0, 0.55 * len(rows) / max(len(passes), 1) + 2)
    fig, axes = plt.subplots(len(passes), 1, figsize=(width_in, 3.6 * len(passes)), squeeze=False)
    for ax, pass_ in zip((a[0] for a in axes), passes, strict=True):
        groups = [(k, v) for k, v in group_rows(rows).items() if k[-1] == pass_]
        width = 0.8 / max(len(names), 1)
        for i, backend in enumerate(names):
            ratios = [(v.get(backend) or {}).get("ratio") or 0.0 for _, v in groups]
            ax.bar([g + i * width for g in range(len(groups))], ratios, width, label=backend)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{k[0]}\n{k[1]}x{k[2]}" for k, _ in groups], fontsize=7)
        ax.set(ylabel="speedup over cuDNN", title=f"{pass_}: cuDNN time / ours (above 1: faster)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['suite']}, {doc.get('gpu')} ({doc.get('date', '')[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plots(docs: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Every plot the documents allow; names from the source file (``<file stem>-<kind>.png``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for doc in docs:
        stem = Path(doc["_path"]).stem
        if not any(r.get("median_ms") for r in doc.get("rows", []) if r["pass"] in TIME_PASSES):
            continue
        if doc["suite"] in SWEEP_AXIS:  # time and speedup vs the swept size
            written.append(plot_sweep(doc, directory / f"{stem}-time-vs-{SWEEP_AXIS[doc['suite']]}.png"))
        else:  # speedup per configuration
            written.append(plot_speedup(doc, directory / f"{stem}-speedup.png"))
    return written


#: The top-level README's summary: (cell, heads) columns of the newest reference run, between these markers.
SUMMARY_BEGIN, SUMMARY_END = "<!-- bench-summary -->", "<!-- /bench-summary -->"
SUMMARY_CONFIGS = (("lstm", 12, 64), ("lstm", 48, 16), ("lstm", 3, 256), ("lstm", 1, 768), ("slstm", 12, 64),
                   ("slstm", 1, 768), ("gru", 12, 64), ("elman", 12, 64))


def summary(docs: list[dict[str, Any]]) -> str:
    """The README's table: for each summary configuration, our fastest backend's median (and its ratios to
    cuDNN) forward and forward+backward, from the newest ``reference`` document."""
    refs = [d for d in docs if d.get("suite") == "reference" and suite_dtype(d) == "bfloat16"]
    if not refs:
        return "(no reference results)"
    doc = max(refs, key=lambda d: d.get("date", ""))
    fastest: dict[tuple, dict[str, Any]] = {}
    for r in doc["rows"]:
        key = (r["function"], r["N"], r["D"], r["pass"])
        if r.get("median_ms") is not None and (key not in fastest or r["median_ms"] < fastest[key]["median_ms"]):
            fastest[key] = r
    configs = [c for c in SUMMARY_CONFIGS if any((*c, p) in fastest for p in TIME_PASSES)]
    names = {"lstm": "LSTM", "slstm": "sLSTM", "gru": "GRU", "elman": "Elman"}
    head = [""] + [f"{names.get(f, f)} {N}x{D}" for f, N, D in configs]
    rows = [[{"fw": "forward", "fwbw": "forward+backward"}[p]]
            + [_summary_cell(fastest.get((*c, p))) for c in configs] for p in TIME_PASSES]
    source = Path(doc["_path"]).name
    names = [f"`bench/results/{name}`" for name in doc.get("filled_from", [])]
    older = f", * from {' or '.join(names)}" if names else ""
    return "\n".join([f"{doc.get('gpu')}, {doc['rows'][0]['dtype']}, B={doc['rows'][0]['B']}, "
                      f"T={doc['rows'][0]['T']} (median ms; ratio = cuDNN's time over ours, in the row's dtype / "
                      f"against cuDNN's fastest dtype; backend where not `cuda_fused`; `bench/results/{source}`"
                      f"{older}):",
                      "", *_table(head, rows)])


def _summary_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    ratios = [f"{row['ratio']:.1f}x"] if row.get("ratio") else []
    if row.get("ratio_best") and row.get("baseline_best_ms") != row.get("baseline_ms"):
        ratios.append(f"{row['ratio_best']:.2f}x")
    backend = "" if row["backend"] == "cuda_fused" else f" `{row['backend']}`"
    mark = "*" if "from" in row else ""
    return _ms(row["median_ms"]) + mark + (f" ({' / '.join(ratios)})" if ratios else "") + backend


def write_summary(readme: Path, docs: list[dict[str, Any]]) -> None:
    """Replace the text between the summary markers of ``readme`` with ``summary(docs)``."""
    text = readme.read_text()
    if SUMMARY_BEGIN not in text or SUMMARY_END not in text:
        raise ValueError(f"{readme}: no {SUMMARY_BEGIN} ... {SUMMARY_END} block to fill")
    head, rest = text.split(SUMMARY_BEGIN, 1)
    tail = rest.split(SUMMARY_END, 1)[1]
    readme.write_text(f"{head}{SUMMARY_BEGIN}\n{summary(docs)}\n{SUMMARY_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results JSON files")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the markdown tables here (else stdout)")
    p.add_argument("--readme", default=None, metavar="FILE",
                   help=f"fill the summary table between {SUMMARY_BEGIN} markers of this file")
    args = p.parse_args(argv)
    docs = load(args.files)
    if args.readme:
        write_summary(Path(args.readme), docs)
        print(f"wrote the summary into {args.readme}")
    text = markdown(docs)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
        print(f"wrote {args.markdown}")
    else:
        print(text)
    if args.plots:
        try:
            for path in plots(docs, Path(args.plots)):
                print(f"wrote {path}")
        except ImportError as err:
            print(f"no plots: {err} (pip install matplotlib)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
