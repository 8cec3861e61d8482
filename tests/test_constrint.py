"""ConstrINT: the solver against brute force and known answers, explanations, speed, the hardware presets, the
fused-kernel problems on the CI presets (every limit re-checked here, independently of the model), and the
tuning cache. No GPU needed."""

from __future__ import annotations

import itertools
import json
import math
import operator
import random
import statistics
import time
from fractions import Fraction
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from flashrnn_core import tune
from flashrnn_core.constrint import hardware, problems, solver, tuning
from flashrnn_core.constrint.hardware import A100, H100, H200, L40S, PRESETS, RTX4090, Hardware
from flashrnn_core.constrint.problems import FusedParams, solve_fused
from flashrnn_core.constrint.solver import Infeasible, Problem, Solution, divides, predicate

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
       "!=": operator.ne}

# ---------------------------------------------------------------------------------------------- brute force


def _random_problem(rng: random.Random):
    """A small random problem as (domains, specs, objective spec); every spec carries its own Python test, so
    brute force never goes through the solver's code."""
    n = rng.randint(1, 4)
    domains = []
    for _ in range(n):
        if rng.random() < 0.5:
            lo = rng.randint(-4, 3)
            domains.append(list(range(lo, lo + rng.randint(1, 7))))
        else:
            domains.append(sorted(rng.sample(range(-6, 13), rng.randint(1, 5))))
    specs = []
    for k in range(rng.randint(1, 4)):
        specs.append(_random_constraint(rng, n, f"c{k}"))
    kind = rng.choice(["linear", "poly", "callable", "callable_lb", "none"])
    coefs = [rng.randint(-3, 3) for _ in range(n)]
    return domains, specs, (kind, coefs)


def _random_constraint(rng: random.Random, n: int, name: str):
    kind = rng.choice(["linear", "linear", "product", "product", "divides", "predicate", "fraction"])
    op = rng.choice(list(OPS))
    if kind == "divides":
        a, b = rng.randrange(n), rng.randrange(n)
        shape = rng.choice(["vv", "cv", "vc"])
        c = rng.choice([-4, -2, 0, 1, 2, 3, 4, 6, 12])
        if shape == "vv":
            return name, ("div", ("v", a), ("v", b)), lambda x: solver.Divides.test(x[a], x[b])
        if shape == "cv":
            return name, ("div", ("c", c), ("v", b)), lambda x: solver.Divides.test(c, x[b])
        return name, ("div", ("v", a), ("c", c)), lambda x: solver.Divides.test(x[a], c)
    if kind == "predicate":
        a, b = rng.randrange(n), rng.randrange(n)
        m = rng.randint(2, 4)
        return name, ("pred", a, b, m), lambda x: (x[a] + 2 * x[b]) % m != 0
    # polynomial: terms (coef, var indices)
    terms = [(rng.randint(-3, 3), (rng.randrange(n),)) for _ in range(rng.randint(1, 2))]
    if kind == "product":
        deg = rng.randint(2, 3)
        terms.append((rng.choice([-2, -1, 1, 2, 3]), tuple(rng.randrange(n) for _ in range(deg))))
    if kind == "fraction":
        terms = [(Fraction(rng.randint(-3, 3), rng.randint(1, 4)), t[1]) for t in terms]
    const = rng.randint(-8, 12) if kind != "fraction" else Fraction(rng.randint(-8, 12), rng.randint(1, 3))

    def value(x, terms=terms):
        return sum(c * math.prod(x[i] for i in idx) for c, idx in terms)

    return name, ("poly", terms, op, const), lambda x: OPS[op](value(x), const)


def _build(domains, specs, objective):
    p = Problem()
    xs = [p.var(f"x{i}", d, prefer=random.Random(i).choice(["low", "high"])) for i, d in enumerate(domains)]
    for name, spec, _test in specs:
        if spec[0] == "div":
            a = xs[spec[1][1]] if spec[1][0] == "v" else spec[1][1]
            b = xs[spec[2][1]] if spec[2][0] == "v" else spec[2][1]
            p.add(divides(a, b), name=name)
        elif spec[0] == "pred":
            _, a, b, m = spec
            p.add(predicate(lambda u, v, m=m: (u + 2 * v) % m != 0, xs[a], xs[b]), name=name)
        else:
            _, terms, op, const = spec
            expr = sum((c * math.prod((xs[i] for i in idx), start=solver.Expr.lift(1)) for c, idx in terms),
                       start=solver.Expr.lift(0))
            p.add({"<=": expr <= const, "<": expr < const, ">=": expr >= const, ">": expr > const,
                   "==": expr == const, "!=": expr != const}[op], name=name)
    kind, coefs = objective
    f = _objective_fn(kind, coefs)
    if kind in ("linear", "poly"):
        expr = sum((c * x for c, x in zip(coefs, xs)), start=solver.Expr.lift(0))
        if kind == "poly" and len(xs) >= 2:
            expr = expr + xs[0] * xs[1]
        p.minimize(expr)
    elif kind == "callable":
        p.minimize(lambda v: f([v[f"x{i}"] for i in range(len(xs))]))
    elif kind == "callable_lb":
        # admissible: each squared distance at least its distance to the box
        def lb(box):
            return sum((max(0, box[f"x{i}"][0] - 1, 1 - box[f"x{i}"][1])) ** 2 for i in range(len(xs)))

        p.minimize(lambda v: f([v[f"x{i}"] for i in range(len(xs))]), lower_bound=lb)
    return p


def _objective_fn(kind, coefs):
    if kind == "linear":
        return lambda x: sum(c * v for c, v in zip(coefs, x))
    if kind == "poly":
        return lambda x: sum(c * v for c, v in zip(coefs, x)) + (x[0] * x[1] if len(x) >= 2 else 0)
    if kind == "callable":
        return lambda x: sum((v - c) ** 2 for v, c in zip(x, coefs)) + (x[0] % 3)
    if kind == "callable_lb":
        return lambda x: sum((v - 1) ** 2 for v in x)
    return None


def _brute(domains, specs, objective):
    kind, coefs = objective
    f = _objective_fn(kind, coefs)
    feasible = [x for x in itertools.product(*domains) if all(test(x) for _n, _s, test in specs)]
    values = sorted(f(x) for x in feasible) if f else []
    return feasible, values


@pytest.mark.parametrize("seed", range(6))
def test_solver_matches_brute_force(seed):
    """50 random problems a seed (300 in all): feasibility agreed, the optimum equal, the solution valid."""
    rng = random.Random(1000 + seed)
    for case in range(50):
        domains, specs, objective = _random_problem(rng)
        feasible, values = _brute(domains, specs, objective)
        result = _build(domains, specs, objective).solve()
        label = f"seed {seed} case {case}: domains {domains} constraints {[s[1] for s in specs]} obj {objective}"
        if not feasible:
            assert isinstance(result, Infeasible), label
            continue
        assert isinstance(result, Solution), label
        x = tuple(result.values[f"x{i}"] for i in range(len(domains)))
        assert x in feasible, label
        if values:
            assert result.objective == values[0], label


@pytest.mark.parametrize("seed", range(2))
def test_top_k_and_enumeration_match_brute_force(seed):
    rng = random.Random(2000 + seed)
    for case in range(40):
        domains, specs, objective = _random_problem(rng)
        if objective[0] == "none":
            objective = ("linear", objective[1])
        feasible, values = _brute(domains, specs, objective)
        p = _build(domains, specs, objective)
        found = p.best(4)
        if not feasible:
            assert isinstance(found, Infeasible)
            continue
        assert [s.objective for s in found] == values[:4], (domains, specs)
        enumerated = {tuple(v[f"x{i}"] for i in range(len(domains))) for v in p.solutions()}
        assert enumerated == set(feasible)


@pytest.mark.parametrize("seed", range(2))
def test_infeasible_explanations_are_irreducible(seed):
    """The conflict named is infeasible on its own, and dropping any one of its constraints makes it feasible
    (checked by brute force)."""
    rng = random.Random(3000 + seed)
    checked = 0
    while checked < 25:
        domains, specs, objective = _random_problem(rng)
        specs = specs + [_random_constraint(rng, len(domains), f"extra{k}") for k in range(2)]
        feasible, _ = _brute(domains, specs, ("none", []))
        if feasible:
            continue
        result = _build(domains, specs, objective).solve()
        assert isinstance(result, Infeasible)
        by_name = {spec[0]: spec for spec in specs}
        conflict = [by_name[n] for n in result.conflict]
        assert conflict, "an empty conflict needs an empty domain, and none is"
        assert not _brute(domains, conflict, ("none", []))[0]
        for drop in range(len(conflict)):
            rest = conflict[:drop] + conflict[drop + 1:]
            assert _brute(domains, rest, ("none", []))[0], (result.conflict, drop)
        checked += 1


# ---------------------------------------------------------------------------------------------- known answers


def test_known_linear_maximum():
    p = Problem()
    x, y = p.var("x", range(0, 7)), p.var("y", range(0, 7))
    p.add(2 * x + 3 * y <= 12, name="capacity")
    p.maximize(3 * x + 4 * y)
    s = p.solve()
    assert s.objective == 18 and (s["x"], s["y"]) == (6, 0)


def test_known_divisibility_chain():
    p = Problem()
    x = p.var("x", range(1, 101))
    p.add(divides(7, x), name="7 | x")
    p.add(divides(x, 84), name="x | 84")
    p.maximize(x)
    assert p.solve()["x"] == 84
    assert sorted(v["x"] for v in p.solutions()) == [7, 14, 21, 28, 42, 84]


def test_known_variable_divides_variable():
    p = Problem()
    tile, rows = p.var("tile", [8, 16, 24, 32]), p.var("rows", range(40, 100))
    p.add(divides(tile, rows), name="tile | rows")
    p.add(divides(16, tile), name="mma")
    p.minimize(rows - tile)
    s = p.solve()
    assert s.objective == 32 and s["rows"] % s["tile"] == 0  # 48 - 16 or 64 - 32


def test_known_products():
    p = Problem()
    x, y, z = (p.var(n, range(1, 11)) for n in "xyz")
    p.add(x * y * z <= 100, name="volume")
    p.maximize(x + y + z)
    assert p.solve().objective == 21  # 10 * 10 * 1

    q = Problem()
    a, b = q.var("a", range(1, 21)), q.var("b", range(1, 21))
    q.add(3 * a * b >= 50, name="area")
    q.minimize(a + b)
    assert q.solve().objective == 9  # a*b >= 17: 4*5 or 3*6

    r = Problem()
    a, b = r.var("a", range(1, 40)), r.var("b", range(1, 40))
    r.add(a * b == 36)
    r.add(a < b)
    r.minimize(b - a)
    s = r.solve()
    assert (s["a"], s["b"]) == (4, 9)


def test_known_negative_domains_and_not_equal():
    p = Problem()
    x, y = p.var("x", range(-5, 6)), p.var("y", range(-5, 6))
    p.add(x * y <= -20)
    p.minimize(x + y)
    assert p.solve().objective == -1

    q = Problem()
    a, b = q.var("a", [1, 2]), q.var("b", [1, 2])
    q.add(a != b)
    q.minimize(a + 2 * b)
    s = q.solve()
    assert (s["a"], s["b"]) == (2, 1)


def test_fraction_coefficients_and_strict_comparisons():
    p = Problem()
    x, y = p.var("x", range(0, 11)), p.var("y", range(0, 11))
    p.add(Fraction(1, 2) * x + Fraction(1, 3) * y <= 2)
    p.maximize(x + y)
    assert p.solve().objective == 6

    q = Problem()
    z = q.var("z", range(0, 6))
    q.add(Fraction(1, 2) * z < 1)
    q.maximize(z)
    assert q.solve()["z"] == 1


def test_callable_objective_with_lower_bound():
    p = Problem()
    x, y = p.var("x", range(0, 10)), p.var("y", range(0, 10))
    p.add(x + y <= 8)

    def lb(box):
        return sum(max(0, lo - t, t - hi) ** 2 for (lo, hi), t in ((box["x"], 3), (box["y"], 7)))

    p.minimize(lambda v: (v["x"] - 3) ** 2 + (v["y"] - 7) ** 2, lower_bound=lb)
    s = p.solve()
    assert s.objective == 2 and s["x"] + s["y"] == 8


def test_large_domains_are_bisected():
    p = Problem()
    x = p.var("x", range(0, 10**9))
    p.add(divides(7, x))
    p.add(3 * x >= 10**8)
    p.minimize(x)
    assert p.solve()["x"] == 33333335


def test_infeasible_names_the_conflict():
    p = Problem()
    x, y, z = (p.var(n, range(0, 10)) for n in "xyz")
    p.add(x + y >= 10, name="sum")
    p.add(z >= 0, name="irrelevant")
    p.add(x <= 3, name="x small")
    p.add(y <= 3, name="y small")
    r = p.solve()
    assert not r and set(r.conflict) == {"sum", "x small", "y small"}
    assert "sum" in r.reason

    q = Problem()
    t = q.var("t", range(1, 16))
    q.add(divides(16, t), name="mma tile")
    assert q.solve().conflict == ("mma tile",)

    e = Problem()
    e.var("w", [])
    assert e.solve().conflict == () and "empty" in e.solve().reason


def test_expression_misuse_is_refused():
    p = Problem()
    x = p.var("x", range(3))
    with pytest.raises(TypeError):
        p.add(0.5 * x <= 1)
    with pytest.raises(TypeError):
        bool(x <= 1 <= 2)
    with pytest.raises(ValueError):
        p.var("x", range(2))
    with pytest.raises(TypeError):
        p.add(True)  # type: ignore[arg-type]


def test_node_limit_raises():
    p = Problem()
    xs = [p.var(f"x{i}", range(10)) for i in range(6)]
    p.add(sum(xs, start=solver.Expr.lift(0)) == 27)
    p.minimize(lambda v: -v["x0"] * v["x5"])
    with pytest.raises(solver.SolverError):
        p.solve(node_limit=10)


# ---------------------------------------------------------------------------------------------- speed


def test_kernel_problems_solve_fast():
    """The fused-kernel problems (12 variables, 19 constraints): under 50 ms of CPU on one core, median
    (and no single one over 250 ms: generous for a loaded CI machine), infeasible ones with the explanation."""
    shapes = [("lstm", "bfloat16", 16, 12, 64), ("lstm", "bfloat16", 16, 48, 16), ("lstm", "bfloat16", 16, 3, 256),
              ("lstm", "bfloat16", 16, 1, 768), ("gru", "float32", 64, 12, 128), ("slstm", "float16", 256, 12, 64),
              ("elman", "bfloat16", 1, 4, 512), ("lstm", "float32", 256, 1, 256)]
    times = []
    for hw in (H100, A100):
        for function, dtype, B, N, D in shapes:
            start = time.process_time()
            solve_fused(hw, function, dtype, B, N, D)
            times.append(time.process_time() - start)
    assert statistics.median(times) < 0.050, times
    assert max(times) < 0.250, times


# ---------------------------------------------------------------------------------------------- hardware


def test_presets_are_sane():
    for name, hw in PRESETS.items():
        assert hw.regs_per_sm == 65536 and hw.max_regs_per_thread == 255 and hw.warp_size == 32
        assert hw.smem_per_sm - hw.smem_per_block_optin == 1024  # the 1 KB the runtime reserves per block
        assert hw.max_threads_per_block == 1024 <= hw.max_threads_per_sm
        assert hw.max_cluster == (16 if hw.cc == (9, 0) else 1)
        assert hw.clusters == (hw.cc >= (9, 0))
        assert hw.l2_bytes >= 40 * 2**20 and hw.clock_mhz > 1000 and hw.mem_bandwidth_gbs > 500
        assert hardware.preset(name) is hw
    assert (A100.sm_count, A100.smem_per_block_optin, A100.arch) == (108, 163 * 1024, "sm_80")
    assert (H100.sm_count, H100.smem_per_block_optin, H100.arch) == (132, 227 * 1024, "sm_90")
    assert H200.sm_count == H100.sm_count and H200.mem_bandwidth_gbs > H100.mem_bandwidth_gbs
    assert (L40S.sm_count, L40S.smem_per_block_optin, L40S.max_threads_per_sm) == (142, 99 * 1024, 1536)
    assert (RTX4090.sm_count, RTX4090.cc) == (128, (8, 9))
    assert hardware.preset("sm_90") is H100 and hardware.preset("rtx 4090") is RTX4090
    with pytest.raises(KeyError):
        hardware.preset("V100")


def test_from_properties_maps_cuda_core_names():
    props = SimpleNamespace(
        compute_capability_major=9, compute_capability_minor=0, multiprocessor_count=132,
        max_registers_per_multiprocessor=65536, max_registers_per_block=65536,
        max_shared_memory_per_block_optin=232448, max_shared_memory_per_multiprocessor=233472,
        reserved_shared_memory_per_block=1024, max_threads_per_block=1024, max_threads_per_multiprocessor=2048,
        max_blocks_per_multiprocessor=32, warp_size=32, cluster_launch=True, l2_cache_size=52428800,
        clock_rate=1980000, memory_clock_rate=2619000, global_memory_bus_width=5120)
    hw = Hardware.from_properties("NVIDIA H100 80GB HBM3", props)
    assert hw == H100.with_(name="NVIDIA H100 80GB HBM3", mem_bandwidth_gbs=hw.mem_bandwidth_gbs)
    assert 3300 < hw.mem_bandwidth_gbs < 3400


def test_from_device_without_gpu_is_a_clear_error():
    from flashrnn_core.errors import CudaUnavailableError

    try:
        hw = Hardware.from_device()
    except CudaUnavailableError as err:
        assert "preset" in str(err)
    else:  # a machine with a GPU: the reading must be sane
        assert hw.sm_count > 0 and hw.smem_per_block_optin >= 48 * 1024


# ---------------------------------------------------------------------------------------------- kernel problems

CELLS = ("lstm", "slstm", "gru", "elman")
DTYPES = ("bfloat16", "float16", "float32")
DS = (16, 32, 64, 128, 256, 512, 768)
BS = (1, 16, 64, 256)
# Gate and state counts, written out here so the checks do not trust the model's reading of cells/.
COUNTS = {"lstm": (4, 4, 2, 4), "slstm": (4, 4, 4, 4), "gru": (3, 3, 1, 4), "elman": (1, 1, 1, 1)}  # Gw Gr S saved


def _reg_cap(hw: Hardware, threads: int) -> int:
    """__launch_bounds__(threads, 1): the register file shared by the block's warps (counted in groups of 4:
    ptxas gives 448 threads 128 registers) in units of 256."""
    warps = -(-threads // 128) * 4
    return min(255, (65536 // warps) // 256 * 256 // 32)


def _smem(function, dtype, D, prm: FusedParams) -> int:
    """Tile::SMEM_BYTES of cuda_src/fused_fw.cu (forward), computed from the kernel's own formula."""
    gw, gr, s, saved = COUNTS[function]
    item = 4 if dtype == "float32" else 2
    split = 2 if dtype == "float32" and not prm.half_operands else 1  # (fp16 operands: one a value)
    bt, db, ns = prm.batch_tile, prm.dims_per_block, prm.prefetch_steps + 1
    u = 1 if gr % 2 == 0 and not prm.wide_warps else 2  # (Tile::WIDE: two d-groups a warp)
    mt = u * gr // 2
    h = 2 * split * bt * (D + 8) * 2
    x = ns * bt * (gw * db + 16 // item) * item
    slots = 2 if prm.wide_warps else 4  # (Tile::PART_SLOTS)
    part = (prm.k_split * prm.warps_along_dims * mt * prm.batch_ntiles * slots * 32 * 4
            if prm.k_split > 1 and not prm.whole_k else 0)
    out = 2 * (s + saved) * bt * (db + 16 // item) * item
    compute_warps = prm.warps_per_block - prm.dma_warps
    r = compute_warps * split * mt * prm.r_ktiles_in_smem * 512  # R's k-tiles in shared memory
    # mbarriers: one a buffer in a cluster, three groups a buffer with DMA warps (Tile::XG)
    bars = 16 * (3 if prm.dma_warps else 1) if prm.blocks_per_head > 1 else 0
    return h + x + part + out + bars + r


def _check_limits(hw: Hardware, function: str, dtype: str, B: int, N: int, D: int, prm: FusedParams) -> None:
    assert D % 16 == 0
    assert prm.blocks_per_head * prm.dims_per_block == D
    assert prm.dims_per_block % prm.dims_per_warp == 0
    assert prm.warps_along_dims * prm.dims_per_warp == prm.dims_per_block
    assert prm.warps_per_block == prm.warps_along_dims * prm.k_split + prm.dma_warps and prm.k_split in (1, 2)
    # DMA warps (Tile::DMA): clusters of 8+, whole k-tiles a block; split K (Tile::INTERLEAVE) not with hi + lo
    assert not prm.dma_warps or (prm.blocks_per_head >= 8 and prm.dims_per_block % 16 == 0 and hw.clusters)
    split_k = prm.k_split == 2 and not prm.whole_k
    assert not (prm.dma_warps and split_k and dtype == "float32" and not prm.half_operands)
    assert prm.threads_per_block == 32 * prm.warps_per_block <= hw.max_threads_per_block
    # forward: K = D, split over the k_split warps or run whole by each (then k_split 2)
    assert prm.ktiles_per_warp * (1 if prm.whole_k else prm.k_split) == D // 16
    assert not prm.whole_k or prm.k_split == 2
    assert prm.batch_tile % 8 == 0 and prm.batch_tile == 8 * prm.batch_ntiles
    assert prm.grid == (N * prm.blocks_per_head, -(-B // prm.batch_tile))
    assert prm.blocks_per_head <= (16 if hw.clusters else 1)
    assert prm.sync == ("block" if prm.blocks_per_head == 1 else "cluster")
    assert prm.smem_bytes == _smem(function, dtype, D, prm) <= hw.smem_per_block_optin
    assert prm.register_cap == _reg_cap(hw, prm.threads_per_block)
    assert prm.registers_estimate <= prm.register_cap <= 255
    if prm.r_ktiles_in_smem:  # the fallback where R does not fit the registers (16-block clusters)
        assert prm.blocks_per_head == 16 and prm.batch_ntiles == 1 and prm.r_bytes_smem > 0
    else:
        assert prm.r_bytes_smem == 0
    gr = COUNTS[function][1]
    split = 2 if dtype == "float32" and not prm.half_operands else 1  # (fp16 operands: 2 bytes a value)
    assert prm.r_bytes_registers + prm.r_bytes_smem == gr * D * D * 2 * split // prm.blocks_per_head
    # R's slice must fit the block's registers: its bytes within the register file.
    assert prm.r_bytes_registers <= prm.threads_per_block * prm.register_cap * 4
    assert prm.prefetch_steps in problems.DEFAULT_MODEL.prefetches
    assert prm.blocks_per_sm >= 1 and prm.waves >= 1 and prm.step_cycles > 0


@pytest.mark.parametrize("hw", [A100, H100], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("function", CELLS)
def test_solve_fused_matrix(hw, function):
    """Every cell x dtype x D x B on the CI presets: valid parameters, or Infeasible naming constraints."""
    names_seen = set()
    for dtype, D, B in itertools.product(DTYPES, DS, BS):
        N = 4
        prm = solve_fused(hw, function, dtype, B, N, D)
        label = f"{hw.arch} {function} {dtype} D{D} B{B}"
        if isinstance(prm, Infeasible):
            assert prm.conflict, label
            names_seen.update(prm.conflict)
            continue
        _check_limits(hw, function, dtype, B, N, D, prm)
    assert all(isinstance(n, str) for n in names_seen)


def test_known_feasibility_boundaries():
    """Small heads always run; lstm D=1024 does not (R, 8 MB even as fp16 operands, needs more than 255
    registers a thread: the binding constraint is named); sm_80 has no clusters for heads above one block."""
    for hw, function, dtype in itertools.product((A100, H100), CELLS, DTYPES):
        for D in (16, 32, 64):
            assert solve_fused(hw, function, dtype, 16, 12, D), (hw.arch, function, dtype, D)
    r = solve_fused(H100, "lstm", "float32", 16, 1, 1024)
    assert not r and any("registers per thread" in n for n in r.conflict), r
    assert "fp16 operands" in r.reason
    r = solve_fused(A100, "lstm", "bfloat16", 16, 3, 256)
    assert not r and any("no thread-block clusters" in n for n in r.conflict), r
    r = solve_fused(H100, "lstm", "bfloat16", 16, 3, 24)
    assert not r and r.conflict == ("D divisible by 16 (mma k-tile)",)
    ok = solve_fused(H100, "lstm", "bfloat16", 16, 3, 256)
    assert ok and ok.sync == "cluster" and ok.blocks_per_head > 1


#: Measured on the H200 (bench/results/2026-11-30-h200-sweep.json: the kernels of 5277a5c, bf16, T=1024; cycles
#: a step at the preset's 1.98 GHz) at (blocks per head, k_split, batch n-tiles, prefetch): each shape's fastest
#: configuration and a few others. The forward's latency constants were fitted on this sweep
#: (problems.LATENCY_CALIBRATION, bench/refit_forward.py), so this checks that the model still describes it, not
#: that it predicts. (lstm 3x256 is left out: the model estimates its configurations ~38% high, alike, so its
#: choice there is still the sweep's best, which test_solver_choice_..._measured_sweep checks.)
MEASURED = {("lstm", 16, 12, 64, (4, 2, 1, 4)): 859, ("lstm", 16, 12, 64, (1, 1, 1, 8)): 906,
            ("lstm", 16, 48, 16, (1, 1, 1, 8)): 501, ("gru", 16, 12, 64, (1, 1, 1, 4)): 948,
            ("gru", 16, 12, 64, (4, 2, 1, 8)): 963, ("slstm", 16, 12, 64, (4, 2, 1, 4)): 920,
            ("slstm", 16, 12, 64, (1, 1, 1, 8)): 1111, ("elman", 16, 12, 64, (1, 1, 1, 8)): 413,
            ("lstm", 64, 12, 64, (1, 1, 1, 8)): 920, ("lstm", 256, 12, 64, (1, 1, 3, 8)): 2562,
            ("lstm", 256, 12, 64, (1, 1, 1, 8)): 2887}


def test_model_describes_the_measurements():
    for (function, B, N, D, (cl, ks, nbt, pf)), cycles in MEASURED.items():
        prm = problems.assess(H200, function, "bfloat16", B, N, D, blocks_per_head=cl, k_split=ks,
                              batch_ntiles=nbt, prefetch_steps=pf)
        assert prm, prm
        assert abs(prm.step_cycles - cycles) / cycles < 0.20, (function, B, N, D, prm.step_cycles, cycles)


def test_model_choices_follow_the_measurements():
    """What the H200 sweep of the 5277a5c kernels measured fastest (bench/results/2026-11-30-h200-sweep.json):
    at B=16 a 4-block cluster per head with k_split 2 for lstm 12x64 (0.444 ms against one block's 0.469) and
    sLSTM, one block for GRU and Elman, 8-sequence tiles while the blocks fit one wave, the deepest prefetch that
    the chain hides on one block (pf 4 and 8 measured alike) and 3 on a cluster (problems.PREFETCH_ON_CLUSTERS);
    at B=256 one wave of wider tiles."""
    small = solve_fused(H200, "lstm", "bfloat16", 16, 12, 64)
    assert (small.blocks_per_head, small.k_split, small.batch_tile, small.prefetch_steps) == (4, 2, 8, 3)
    assert solve_fused(H200, "slstm", "bfloat16", 16, 12, 64).blocks_per_head == 4
    for function in ("gru", "elman"):
        one = solve_fused(H200, function, "bfloat16", 16, 12, 64)
        assert (one.blocks_per_head, one.k_split, one.batch_tile, one.prefetch_steps) == (1, 1, 8, 8), one
    assert solve_fused(H200, "lstm", "bfloat16", 16, 3, 256).blocks_per_head == 8  # 0.788 ms; 16 blocks 0.811
    # B=256: one wave of 24-sequence tiles (1.33 ms) against three waves of 8 (1.27 at prefetch 4, 1.49 at 8:
    # waves vary from run to run); either way within 5% of the best one-wave configuration by the model.
    big = solve_fused(H200, "lstm", "bfloat16", 256, 12, 64)
    assert big.waves == 1 and big.batch_tile == 24
    one_wave = [problems.assess(H200, "lstm", "bfloat16", 256, 12, 64, blocks_per_head=1, k_split=1,
                                batch_ntiles=nbt, prefetch_steps=p) for nbt in (2, 3, 4) for p in (2, 4, 8)]
    one_wave = [r for r in one_wave if r and r.waves == 1]
    assert one_wave and big.step_us <= 1.05 * min(r.step_us for r in one_wave)


def test_inference_solve_prices_the_states_alone():
    """The inference kernel's own solve (direction "inference", problems.CLUSTER_CALIBRATION): lstm 12x64 B=16 on one
    block with k_split 1 (0.321 ms measured, the saving forward's 4-block cluster 0.346 as inference) where the
    forward that saves keeps the cluster (0.353 against one block's 0.426); the same variables and shared memory,
    FLASHRNN_SAVE=0 among its template arguments; sLSTM 3x256 on 8-block clusters (0.648 against 16 blocks'
    0.706: a non-portable cluster pays a step)."""
    saving = solve_fused(H200, "lstm", "bfloat16", 16, 12, 64)
    infer = solve_fused(H200, "lstm", "bfloat16", 16, 12, 64, direction="inference")
    assert (saving.blocks_per_head, saving.k_split) == (4, 2) and (infer.blocks_per_head, infer.k_split) == (1, 1)
    assert infer.direction == "inference" and infer.template_args()["FLASHRNN_SAVE"] == 0
    assert "FLASHRNN_SAVE" not in saving.template_args()
    as_forward = problems.assess(H200, "lstm", "bfloat16", 16, 12, 64, blocks_per_head=1, k_split=1,
                                 batch_ntiles=1, prefetch_steps=infer.prefetch_steps)
    assert as_forward.smem_bytes == infer.smem_bytes and as_forward.step_cycles > infer.step_cycles
    assert solve_fused(H200, "slstm", "bfloat16", 16, 3, 256, direction="inference").blocks_per_head == 8
    with pytest.raises(ValueError, match="inference"):
        problems.geometry("lstm", "bfloat16", 64, "sideways")


def test_whole_k_warps():
    """k_split = 2 warps either split K (partial sums in shared memory) or each run the whole K (fused_fw.cu
    Tile::WHOLE_K: no partial sums, half the cells a warp): D = 16 has one k-tile, so only the second; whole-K needs
    the two warps; the kernel gets FLASHRNN_WHOLE_K only where it is set (the other variants keep their defines)."""
    from flashrnn_core.backends.fused import launch_of

    whole = problems.assess(H200, "lstm", "bfloat16", 16, 48, 16, k_split=2, whole_k=True, prefetch_steps=8)
    assert whole and whole.whole_k and whole.ktiles_per_warp == 1 and whole.threads_per_block == 128
    assert whole.template_args()["FLASHRNN_WHOLE_K"] == 1 and "wholek" in launch_of(whole).spec.label
    split = problems.assess(H200, "lstm", "bfloat16", 16, 48, 16, k_split=2, prefetch_steps=8)
    assert not split and any(n.startswith("K split evenly") for n in split.conflict), split.conflict
    assert not problems.assess(H200, "lstm", "bfloat16", 16, 48, 16, k_split=1, whole_k=True, prefetch_steps=8)
    one = problems.assess(H200, "lstm", "bfloat16", 16, 48, 16, k_split=1, prefetch_steps=8)
    assert "FLASHRNN_WHOLE_K" not in one.template_args() and not one.whole_k
    # D = 64 on a 4-block cluster: both kinds; whole-K's blocks hold no partial sums (4 KB less shared memory).
    halves = problems.assess(H200, "lstm", "bfloat16", 16, 12, 64, blocks_per_head=4, k_split=2, prefetch_steps=8)
    wholes = problems.assess(H200, "lstm", "bfloat16", 16, 12, 64, blocks_per_head=4, k_split=2, whole_k=True,
                             prefetch_steps=8)
    assert (halves.ktiles_per_warp, wholes.ktiles_per_warp) == (2, 4)
    assert halves.smem_bytes - wholes.smem_bytes == 2 * 2 * 2 * 4 * 32 * 4  # KS x WARPS_D x MT x 4 x 32 floats
    # The model prices whole-K: no partial-sum exchange and barrier.
    assert wholes.breakdown["barrier"] < halves.breakdown["barrier"]


def test_dma_warps():
    """DMA warps (fused_fw.cu Tile::DMA: two more warps a block copy and send h while the others compute) on the
    1x768 heads of 16-bit storage, where the solver takes them: counted in the block's threads, three mbarrier
    groups a buffer in its shared memory, FLASHRNN_DMA_WARPS only where set; clusters of 8+ blocks, D >= 768
    (``KernelModel.dma_min_D``), never without clusters; the model prices the
    overlap of the exchange with the mma below the same geometry without them."""
    from flashrnn_core.backends.fused import launch_of

    eight_dims = replace(problems.DEFAULT_MODEL, wide_warp_stages=False)  # (test_wide_warps: 16 dims a warp)
    for function in ("lstm", "slstm"):
        with_dma = solve_fused(H200, function, "bfloat16", 16, 1, 768, model=eight_dims)
        assert with_dma.dma_warps == problems.DEFAULT_MODEL.dma_warps == 2 and with_dma.blocks_per_head == 16
        compute = with_dma.warps_along_dims * with_dma.k_split
        assert with_dma.warps_per_block == compute + 2 and with_dma.threads_per_block == 32 * (compute + 2)
        args = with_dma.template_args()
        assert args["FLASHRNN_DMA_WARPS"] == 2 and args["FLASHRNN_THREADS"] == with_dma.threads_per_block
        assert "dma2" in launch_of(with_dma).spec.label
        without = problems.assess(H200, function, "bfloat16", 16, 1, 768, blocks_per_head=16, k_split=1,
                                  prefetch_steps=with_dma.prefetch_steps, model=eight_dims,
                                  r_ktiles_in_smem=with_dma.r_ktiles_in_smem)
        assert without and not without.dma_warps and "FLASHRNN_DMA_WARPS" not in without.template_args()
        assert with_dma.smem_bytes - without.smem_bytes == 32  # two more mbarrier pairs
        assert with_dma.breakdown["exchange"] < without.breakdown["exchange"]
        assert with_dma.step_cycles < without.step_cycles
    assert not any(solve_fused(hw, "lstm", "bfloat16", 16, N, D).dma_warps
                   for hw, N, D in ((A100, 12, 64), (H100, 12, 64), (H100, 3, 256), (H100, 1, 512)))
    given = dict(blocks_per_head=4, k_split=2, whole_k=True, prefetch_steps=8, dma_warps=2)
    assert not problems.assess(H200, "lstm", "bfloat16", 16, 12, 64, **given)  # D < 768, 4 blocks


def test_head_split_stage():
    """A head on two clusters (fused_fw.cu Tile::G, problems.HEAD_SPLIT): off (measured slower), so no choice of the
    solver's has it, and with the stage on at the measured hand-off cost it still loses to one cluster; assessed,
    the lstm/slstm 1x768 forward on 2 x 16 blocks has 24 dims a block, twice the grid, the kernel's shared memory
    and hand-off words, and spills where ptxas does (lstm below 6 of a warp's 24 k-tiles of R in shared memory,
    slstm below 7); with the stage on and the hand-off free it wins at B=16, and never where the grid's clusters
    cannot all be resident (B=256) nor for float32 or the backward."""
    from flashrnn_core.backends.fused import handoff_words, launch_of
    from flashrnn_core.cells import CELLS

    for function in ("lstm", "slstm"):
        for direction in ("forward", "inference"):
            assert solve_fused(H100, function, "bfloat16", 16, 1, 768, direction=direction).head_clusters == 1
        split = problems.assess(H100, function, "bfloat16", 16, 1, 768, blocks_per_head=16, k_split=2,
                                prefetch_steps=4, r_ktiles_in_smem=8, dma_warps=2, head_clusters=2)
        assert split.head_clusters == 2 and split.dims_per_block == 24 and split.grid == (32, 2), split.summary()
        assert split.threads_per_block == 256 and not split.wide_warps and split.dims_per_warp == 8
        # (shared memory: h 24832, 5 Wx stages 5 x 1664, partial sums 6144, staged outputs 2 x (2 + 4 or 4 + 4) x 512,
        # 4 mbarrier groups x 16, R 6 warps x 2 m-tiles x 8 x 512: Tile's, which the kernel's static_assert checks)
        outputs = 2 * (CELLS[function].states + CELLS[function].n_saved) * 8 * 32 * 2
        assert split.smem_bytes == 24832 + 5 * 1664 + 6144 + outputs + 64 + 6 * 2 * 8 * 512, split.smem_bytes
        assert split.template_args()["FLASHRNN_HEAD_CLUSTERS"] == 2 and " split2" in launch_of(split).spec.label
        assert handoff_words(split) == 2 * 1 * 2 * 16 * 2 * (8 * 24 * 2 // 4)  # tiles, heads, blocks, buffers, slice
        fits = {rs: bool(problems.assess(H100, function, "bfloat16", 16, 1, 768, blocks_per_head=16, k_split=2,
                                         prefetch_steps=4, r_ktiles_in_smem=rs, dma_warps=2, head_clusters=2,
                                         explain=False)) for rs in (5, 6, 7)}
        assert fits == ({5: False, 6: True, 7: True} if function == "lstm" else {5: False, 6: False, 7: True})
    measured = replace(problems.DEFAULT_MODEL, head_split_stages=True)
    assert solve_fused(H100, "lstm", "bfloat16", 16, 1, 768, model=measured).head_clusters == 1
    free = replace(measured, handoff_cycles=0)
    chosen = solve_fused(H100, "lstm", "bfloat16", 16, 1, 768, model=free)
    assert chosen.head_clusters == 2 and chosen.blocks_per_head == 16, chosen.summary()
    for hw, function, dtype, B, direction in ((H100, "lstm", "bfloat16", 256, "forward"),
                                              (H100, "lstm", "float32", 16, "forward"),
                                              (H100, "lstm", "bfloat16", 16, "backward"),
                                              (A100, "lstm", "bfloat16", 16, "forward")):
        chosen = solve_fused(hw, function, dtype, B, 1, 768, direction=direction, model=free)
        assert not (chosen and getattr(chosen, "head_clusters", 1) > 1), (function, dtype, B, direction)


def test_wide_warps():
    """16 dims a warp for lstm and slstm (fused_fw.cu Tile::WIDE, problems.WIDE_WARPS): the solver's choice for
    their 16-bit forwards at D = 768 on GPUs with clusters, always split K under DMA warps, 12 of a warp's 24
    k-tiles of R in shared memory for lstm (what ptxas compiles spill-free; 11 spills) and 13 for slstm (12 at 254
    registers measured 3-9% slower), the partial sums in 2 slots a tile;
    weighed against the 8-dims choice and estimated below it; FLASHRNN_WIDE_WARPS only where set; never for gru and
    elman (16 dims a warp already), float32, the backward, D < 768, or without clusters."""
    from flashrnn_core.backends.fused import launch_of

    eight_dims = replace(problems.DEFAULT_MODEL, wide_warp_stages=False)
    for function, dtype, direction in itertools.product(("lstm", "slstm"), ("bfloat16", "float16"),
                                                        ("forward", "inference")):
        wide = solve_fused(H100, function, dtype, 16, 1, 768, direction=direction)
        assert wide.wide_warps and wide.dims_per_warp == 16 and wide.warps_along_dims == 3, wide.summary()
        assert wide.k_split == 2 and not wide.whole_k and wide.dma_warps == 2 and wide.blocks_per_head == 16
        assert (wide.ktiles_per_warp, wide.r_ktiles_in_smem) == (24, 12 if function == "lstm" else 13), wide.summary()
        assert wide.prefetch_steps == (8 if function == "lstm" else 4), wide.summary()
        assert wide.template_args()["FLASHRNN_WIDE_WARPS"] == 1 and " wide" in launch_of(wide).spec.label
        narrow = solve_fused(H100, function, dtype, 16, 1, 768, direction=direction, model=eight_dims)
        assert not narrow.wide_warps and narrow.dims_per_warp == 8
        assert "FLASHRNN_WIDE_WARPS" not in narrow.template_args()
        assert wide.step_cycles < narrow.step_cycles
        # ... and one k-tile more in registers is estimated to spill (ptxas: 20-40 bytes; slstm: to be too slow)
        model = replace(problems.DEFAULT_MODEL, wide_warps=True)
        assert not problems.assess(H100, function, dtype, 16, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=4,
                                   r_ktiles_in_smem=wide.r_ktiles_in_smem - 1, dma_warps=2, direction=direction,
                                   model=model)
        # (its shared memory, 2 partial-sum slots a tile, is Tile's: the kernel's static_assert, test_fused.py)
        assert problems.geometry(function, dtype, 768, wide=True).mt == 4
        assert wide.r_bytes_smem == 6 * wide.r_ktiles_in_smem * 4 * 512
    for hw, function, dtype, D, direction in (
            (H100, "gru", "bfloat16", 768, "forward"), (H100, "elman", "bfloat16", 768, "forward"),
            (H100, "lstm", "float32", 768, "forward"), (H100, "lstm", "bfloat16", 768, "backward"),
            (H100, "slstm", "bfloat16", 512, "forward"), (H100, "lstm", "bfloat16", 64, "forward"),
            (A100, "lstm", "bfloat16", 768, "forward")):
        assert not problems.wide_warps_allowed(problems.DEFAULT_MODEL, hw, function, dtype, D, direction)
        chosen = solve_fused(hw, function, dtype, 16, 1, D, direction=direction)
        assert not (chosen and chosen.wide_warps), (function, dtype, D, direction)
    with pytest.raises(ValueError, match="even-Gr"):
        problems.geometry("gru", "bfloat16", 768, wide=True)
    with pytest.raises(ValueError, match="even-Gr"):
        problems.geometry("lstm", "bfloat16", 768, "backward", wide=True)


def test_dma_warps_with_split_k():
    """A split-K pair with DMA warps takes alternate k-tiles (fused_fw.cu Tile::INTERLEAVE, problems.DMA_SPLIT_K):
    the solver's choice for gru and elman D = 768 in 16-bit storage and for gru's fp16 operands, priced below the
    same geometry without DMA warps; never for float32's hi + lo operands (measured slower: elman keeps k_split 1);
    and with split K the fp16-operand rule's 77/100 of the rest does not apply (float32 gru with 10 k-tiles of R in
    shared memory spilled)."""
    for function, dtype in (("gru", "bfloat16"), ("gru", "float16"), ("elman", "bfloat16"), ("gru", "float32")):
        for direction in ("forward", "inference"):
            chosen = solve_fused(H100, function, dtype, 16, 1, 768, direction=direction)
            assert chosen.dma_warps == 2 and chosen.k_split == 2 and not chosen.whole_k, (function, dtype)
            assert chosen.half_operands == (dtype == "float32")
            # (the same split without DMA warps priced at the DMA kernels' register rule, which a 16-bit gru's
            # 9 k-tiles of R in shared memory need: PAIRED_R_LOADS)
            model = replace(problems.DEFAULT_MODEL, f32_half_operands=chosen.half_operands,
                            reg_rest_with_smem=problems.DEFAULT_MODEL.reg_rest_with_smem_16bit_dma)
            without = problems.assess(H100, function, dtype, 16, 1, 768, blocks_per_head=16, k_split=2,
                                      prefetch_steps=chosen.prefetch_steps, model=model, direction=direction,
                                      r_ktiles_in_smem=chosen.r_ktiles_in_smem)
            assert without and without.step_cycles > chosen.step_cycles, (function, dtype)
    hi_lo = solve_fused(H100, "elman", "float32", 16, 1, 768)
    assert hi_lo.dma_warps and hi_lo.k_split == 1 and not hi_lo.half_operands
    r = problems.assess(H100, "elman", "float32", 16, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=8,
                        r_ktiles_in_smem=7, dma_warps=2)
    assert not r and any("hi + lo" in n for n in r.conflict), r.conflict
    half = replace(problems.DEFAULT_MODEL, f32_half_operands=True)
    assert problems.solve_fused(H100, "gru", "float32", 16, 1, 768).r_ktiles_in_smem >= 11
    assert not problems.assess(H100, "gru", "float32", 16, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=8,
                               r_ktiles_in_smem=10, dma_warps=2, model=half)
    with pytest.raises(ValueError, match="DMA warps"):
        problems.assess(H200, "lstm", "bfloat16", 16, 1, 768, blocks_per_head=16, k_split=1, prefetch_steps=4,
                        dma_warps=1)


def test_assess_names_what_a_given_choice_breaks():
    r = problems.assess(H100, "lstm", "bfloat16", 256, 12, 64, blocks_per_head=1, k_split=1, batch_ntiles=4,
                        prefetch_steps=8)
    assert not r and any(n.startswith("given nbt") for n in r.conflict), r.conflict
    assert any("registers" in n or "shared memory" in n for n in r.conflict), r.conflict


def test_backward_problem_describes_fused_bw():
    """The backward problem is fused_bw.cu's: 8 sequences a block, one block a head where R^T fits one and a
    cluster where it does not (sm_90) or where the model prices one cheaper (D >= 64,
    KernelModel.bw_clusters_weighed_from_d), D/cluster/16 M tiles over k_split warps each, every gate's rows along
    K, dR in the kernel only for 16-bit storage on one block, within every budget; the heads it cannot take are
    refused with the binding constraint."""
    for hw, function, dtype, D in itertools.product((A100, H100), CELLS, DTYPES, (16, 48, 64, 96, 128, 256)):
        prm = solve_fused(hw, function, dtype, 16, 4, D, direction="backward")
        if not prm:
            assert prm.conflict and D >= 96, (function, dtype, D, prm.reason)
            continue
        gr, cl = COUNTS[function][1], prm.blocks_per_head
        one_block = solve_fused(hw, function, dtype, 16, 4, D, direction="backward",
                                model=replace(problems.DEFAULT_MODEL, clusters=(1,)))
        assert (cl == 1 and one_block) or (cl > 1 and hw.clusters)
        assert cl == 1 or not one_block or prm.step_cycles <= one_block.step_cycles  # weighed: the cheaper
        assert prm.direction == "backward" and prm.batch_tile == 8 and prm.sync == ("block" if cl == 1 else "cluster")
        if prm.scatter:  # (float32 lstm/slstm D = 256 since stop 45: weighed against the cluster kernel, measured)
            assert dtype == "float32" and D == 256 and function in ("lstm", "slstm") and hw.clusters
            assert prm.grid == (4 * cl, 2) and prm.threads_per_block == 32 * prm.warps_per_block
            assert prm.registers_estimate <= _reg_cap(hw, prm.threads_per_block)
            continue
        assert prm.grid == (4 * cl, 2) and prm.threads_per_block == 32 * D // 16 // cl * prm.k_split
        assert prm.ktiles_per_warp == -(-gr * D // 16 // prm.k_split)  # K over every gate row
        assert prm.registers_estimate <= _reg_cap(hw, prm.threads_per_block)
        assert prm.smem_bytes <= hw.smem_per_block_optin
        assert not (prm.fused_dr and (dtype == "float32" or cl > 1))
        assert prm.template_args()["FLASHRNN_STORE_DRS"] == int(function == "gru" and not prm.fused_dr)
        assert prm.template_args()["FLASHRNN_CLUSTER"] == cl
    assert not solve_fused(A100, "lstm", "bfloat16", 16, 3, 256, direction="backward")
    assert solve_fused(H100, "lstm", "bfloat16", 16, 3, 256, direction="backward").blocks_per_head > 1
    # R^T partly in shared memory: a third stage, 16-bit heads that no cluster holds in registers.
    big = solve_fused(H100, "lstm", "bfloat16", 16, 1, 512, direction="backward")
    assert big.blocks_per_head == 16 and big.r_ktiles_in_smem > 0 and big.blocks_per_sm == 1
    # Scatter clusters: the last stage, for what no other takes (lstm D=768): R^T by the block's gate columns.
    scatter = solve_fused(H100, "lstm", "bfloat16", 16, 1, 768, direction="backward")
    assert scatter.scatter and scatter.blocks_per_head == 16 and scatter.rows_per_block == 768
    assert scatter.registers_estimate <= scatter.register_cap and scatter.smem_bytes <= H100.smem_per_block_optin
    assert scatter.template_args()["FLASHRNN_SCATTER"] == 1 and scatter.template_args()["FLASHRNN_WARPS"] == 8
    # slstm D=768 too since stop 19 (the stages hold only the state rows its cells read; it spilled before).
    assert solve_fused(H100, "slstm", "bfloat16", 16, 1, 768, direction="backward").scatter
    # The reference head: warps split K (issue 6 measured one warp a scheduler ~6800 cycles a step).
    assert solve_fused(H100, "lstm", "bfloat16", 16, 12, 64, direction="backward").k_split == 4


def test_float32_backward_register_rule_rejects_every_measured_spill():
    """KernelModel.bw_reg_rest_with_smem_split against ptxas (bench/results/constrint/bw_smem_registers_f32.json,
    bench/bw_smem_register_data.py: float32 backward kernels on 16-block clusters with R^T partly in shared memory,
    every cell, D = 256-768, k split 1-4, prefetch 1-3, the fewest shared-memory k-tiles that compile without a
    spill). Every split below that fewest spills, so the rule must reject the largest of them (the estimate falls
    as k-tiles move to shared memory), for the register rule's own reason: without it the split launches. And the
    heads it was refitted for get a launch of that stage, at a split the data found clean: float32 lstm and slstm
    D = 256 and gru D = 512 (their backward was `cuda`'s)."""
    from bench.bw_smem_register_data import any_split_model

    rows = json.loads((RESULTS / "constrint" / "bw_smem_registers_f32.json").read_text())
    anything = any_split_model()
    clean = {}
    for row in rows:
        key = (row["function"], row["D"], row["ks"], row["prefetch"])
        clean[key] = row["rs"]
        if row["rs"] == row["rs_min_feasible"]:
            continue  # no split below it launches at all (shared memory): nothing spilled there
        given = dict(blocks_per_head=16, k_split=row["ks"], prefetch_steps=row["prefetch"],
                     r_ktiles_in_smem=row["rs"] - 1, direction="backward")
        rejected = problems.assess(H100, row["function"], "float32", 16, 1, row["D"], **given, explain=False)
        assert isinstance(rejected, Infeasible), (key, row["rs"] - 1, rejected.registers_estimate)
        assert problems.assess(H100, row["function"], "float32", 16, 1, row["D"], **given, model=anything,
                               explain=False), key
    # (Since stop 45 the solver weighs the float32 scatter kernel against this stage's choice and takes it, measured
    # 21-38% faster: bench/results/phases/2026-12-03-h200-float32-scatter.txt; the stage's own choice is checked.)
    for function, D in (("lstm", 256), ("slstm", 256), ("gru", 512)):
        for hw in (H100, H200):
            assert solve_fused(hw, function, "float32", 16, 3, D, direction="backward").scatter, (function, D)
            fp = problems.build_fused(hw, function, "float32", 16, 3, D, "backward", problems.DEFAULT_MODEL)
            prm = problems.params_from(fp, fp.problem.solve(explain=False).values)
            assert prm and prm.blocks_per_head == 16 and prm.r_ktiles_in_smem, (function, D, prm)
            assert prm.r_ktiles_in_smem >= clean[function, D, prm.k_split, prm.prefetch_steps], (function, D, prm)


def test_backward_prices_blocks_that_share_an_sm():
    """problems.BW_CO_RESIDENT: each block sharing an SM adds half a block's issue to the backward's step. lstm
    12x64 on an H200 is a 4-block cluster at B=16 (an SM a block) and one block with dR in the kernel at B=128,
    where the model without the term prices 2-block clusters three an SM cheapest (measured 1.11x the fastest), as
    it does for gru B=128 (1.25x; stop 39's rule against them left gru one block of k_split 2 two an SM, 1.30x)."""
    small = solve_fused(H200, "lstm", "bfloat16", 16, 12, 64, direction="backward")
    assert small.blocks_per_head > 1 and small.breakdown["on_sm"] == 1
    shapes = json.loads((RESULTS / BW_CLUSTER_LARGE_BATCH_SWEEP).read_text())["shapes"]
    as_swept = as_measured_backward(problems.DEFAULT_MODEL)
    without = replace(as_swept, bw_co_resident_issue=0.0)
    for function, missed in (("lstm", 1.10), ("gru", 1.24)):
        shape = next(s for s in shapes if s["shape"]["function"] == function and s["shape"]["B"] == 128)
        measured = {_config(r["params"]): r["ms"] for r in shape["rows"] if r.get("ms")}
        fastest = min(measured.values())
        chosen = solve_fused(H200, function, "bfloat16", 128, 12, 64, direction="backward", model=as_swept)
        assert chosen.blocks_per_head == 1 and chosen.fused_dr and chosen.breakdown["on_sm"] == 1
        assert measured[_config(chosen.to_dict())] < 1.01 * fastest
        priced = solve_fused(H200, function, "bfloat16", 128, 12, 64, direction="backward", model=without)
        assert priced.breakdown["on_sm"] > 1 and priced.step_cycles < chosen.step_cycles
        assert measured[_config(priced.to_dict())] > missed * fastest, function
    # The term alone kept a cluster for a head one block holds off shared SMs (stop 39's rule, now priced), while
    # dR after the kernel cost a copy of the states: since that went (5efa2a9), 2-block clusters three an SM with
    # dR after the kernel measure fastest at lstm 12x64 B=96 (1.50 ms against 2.18 for one block summing dR,
    # test_dr_after_the_kernel_priced_as_measured), and the refit model takes them there.
    for hw, function, B in itertools.product((H100, H200), ("lstm", "slstm", "gru", "elman"), (16, 32, 96, 128, 256)):
        prm = solve_fused(hw, function, "bfloat16", B, 12, 64, direction="backward", model=as_swept)
        assert prm.blocks_per_head == 1 or prm.breakdown["on_sm"] == 1, (hw.name, function, B)


#: dR in the backward kernel against after it (recurrent_grad), measured by tune on the H200 with the dR path of
#: 5efa2a9: the B=16 pairs the refit of KernelModel.bw_gemm_rows_extra was made on, then the shapes whose choice
#: the refit changed (large batches, D = 48-128).
DR_AFTER_TUNE = "constrint/2026-12-03-h200-tune-dr-after.json"
#: Where the refit model's choice is measured slower than 10% over the fastest listed: lstm 12x64 B=128 keeps one
#: block summing dR (model 2.14 ms against 2.17 for 2-block clusters, which measured 1.57 against 2.18).
DR_AFTER_MISSES = {("lstm", 128, 12, 64): 1.39}


def test_dr_after_the_kernel_priced_as_measured():
    """The solver's backward choice today, among the configurations tune measured with today's dR path, is
    within 10% of the fastest (one known miss; the refit picked the faster of 11 of the 13 B=16 pairs of dR in the
    kernel and after it, the model before it 8). Against the model before the refit's choices at the large
    batches: gru 12x64 B=128 1.68 -> 1.46 ms, lstm 12x64 B=96 2.18 -> 1.50, gru 48x64 B=256
    10.08 -> 9.16, elman 12x128 B=64 0.72 -> 0.67; slower: lstm 24x48 0.94 -> 1.00, slstm 24x48 0.96 -> 1.05,
    elman 48x96 0.60 -> 0.62."""
    shapes = json.loads((RESULTS / DR_AFTER_TUNE).read_text())["shapes"]
    assert len(shapes) == 25
    unmeasured = []
    for shape in shapes:
        key = (shape["function"], shape["B"], shape["N"], shape["D"])
        measured = {r["config"]: r["ms"] for r in shape["rows"]}
        choice = solve_fused(H200, shape["function"], shape["dtype"], shape["B"], shape["N"], shape["D"],
                             direction="backward")
        label = tune.config_label(choice)
        if label not in measured:
            unmeasured.append(key)
            continue
        bound = DR_AFTER_MISSES.get(key, 1.10)
        assert measured[label] <= bound * min(measured.values()), (key, label, measured)
    # elman 24x32's run measured the old model's two best geometries (k split 4 and 2, dR in the kernel); the refit
    # takes k split 2 with dR after it.
    assert unmeasured == [("elman", 16, 24, 32)]


def test_a_shape_no_stage_takes_is_explained_on_the_first():
    """Where every stage is infeasible (slstm 1x704's backward: one block, clusters of every size, R^T in shared memory,
    scatter clusters; its R^T, 4 MB, fits no 11-block cluster, the only size that splits D = 704), the reason is
    the first stage's conflict plus what the others tried; explaining the R^T in shared memory stage's larger
    problem took 213 s (lstm 1x768 then: a user's first backward call waited for it, the tuning cache does not
    keep infeasible shapes)."""
    start = time.perf_counter()
    r = solve_fused(H100, "slstm", "bfloat16", 16, 1, 704, direction="backward")
    assert time.perf_counter() - start < 5
    assert not r and r.conflict and "registers" in r.reason
    # in the constraints' names, not their polynomials over the model's variables (a user reads this)
    assert r.reason.startswith("its limits conflict: ") and "*" not in r.reason and "/80" not in r.reason
    assert all(name in r.reason for name in r.conflict)
    assert r.reason.endswith("(and none with a cluster a head or a cluster of any size or R in shared memory or a "
                             "scatter cluster either)")
    # (float32 elman D = 480's forward with split operands: R in shared memory is left out there,
    # ANY_CLUSTER_REGISTERS; fp16 operands take it)
    split_only = problems.KernelModel(f32_half_operand_stages=False)
    r = solve_fused(H100, "elman", "float32", 16, 1, 480, model=split_only)
    assert not r and r.reason.endswith("(and none with a cluster of any size either)"), r.reason
    assert solve_fused(H100, "elman", "float32", 16, 1, 480).half_operands
    r = solve_fused(H100, "elman", "float32", 16, 1, 528)
    assert not r and r.reason.endswith("(and none with a cluster of any size or R in shared memory or fp16 operands "
                                       "either)"), r.reason
    assert "either" not in solve_fused(A100, "slstm", "bfloat16", 16, 1, 704, direction="backward").reason


def test_assess_a_backward_configuration():
    """A measured backward configuration's estimate, and what a given one breaks: dR in the kernel for float32's
    split operands is outside its domain; four warps per 16 rows at D=128 is over the 1024 threads a block."""
    ok = problems.assess(H100, "lstm", "bfloat16", 16, 12, 64, k_split=4, prefetch_steps=2, fused_dr=True,
                         direction="backward")
    assert ok and ok.k_split == 4 and ok.prefetch_steps == 2 and ok.fused_dr and ok.direction == "backward"
    bad = problems.assess(H100, "lstm", "float32", 16, 12, 32, k_split=4, prefetch_steps=2, fused_dr=True,
                          direction="backward")
    assert not bad and any(n.startswith("given fused_dr") for n in bad.conflict), bad.conflict
    wide = problems.assess(H100, "elman", "bfloat16", 16, 12, 256, k_split=4, prefetch_steps=2, direction="backward")
    assert not wide and any("threads per block" in n or "regist" in n for n in wide.conflict), wide.conflict
    with pytest.raises(ValueError, match="8 sequences a block"):
        problems.assess(H100, "lstm", "bfloat16", 16, 12, 64, batch_ntiles=2, k_split=4, prefetch_steps=2,
                        direction="backward")
    pair = problems.assess(H100, "lstm", "bfloat16", 16, 12, 64, blocks_per_head=2, k_split=4, prefetch_steps=2,
                           direction="backward")
    assert pair and pair.blocks_per_head == 2 and pair.grid == (24, 2) and pair.breakdown["exchange"] > 0
    fused_dr = problems.assess(H100, "lstm", "bfloat16", 16, 12, 64, blocks_per_head=2, k_split=4,
                               prefetch_steps=2, fused_dr=True, direction="backward")
    assert not fused_dr and "dR in the kernel: one block a head" in fused_dr.conflict


def test_r_in_shared_memory_is_the_fallback():
    """R's k-tiles go to shared memory only where no launch holds R in registers (KernelModel.r_in_shared_memory):
    16-bit heads of D = 512-768 on one 16-block cluster, one batch n-tile, within every budget; nothing changes
    where R fits the registers, float32 and GPUs without clusters never use it."""
    off = problems.KernelModel(r_in_shared_memory=False)
    for hw, function, D in itertools.product((H100, H200), CELLS, (64, 256)):
        on = solve_fused(hw, function, "bfloat16", 16, 3, D)
        assert on and on.r_ktiles_in_smem == 0 and on == solve_fused(hw, function, "bfloat16", 16, 3, D, model=off)
    for function, D in itertools.product(("lstm", "gru", "slstm"), (512, 768)):
        assert not solve_fused(H100, function, "bfloat16", 16, 1, D, model=off)
        prm = solve_fused(H100, function, "bfloat16", 16, 1, D)
        assert prm and prm.r_ktiles_in_smem > 0 and prm.r_bytes_smem > 0, (function, D)
        assert prm.blocks_per_head == 16 and prm.batch_ntiles == 1
        assert prm.smem_bytes <= H100.smem_per_block_optin and prm.registers_estimate <= prm.register_cap
        gr = COUNTS[function][1]
        assert prm.r_bytes_smem + prm.r_bytes_registers == gr * D * D * 2 // prm.blocks_per_head
        assert prm.template_args()["FLASHRNN_R_SMEM"] == prm.r_ktiles_in_smem
    assert not solve_fused(H100, "lstm", "float32", 16, 1, 1024)  # R (8 MB as fp16 operands) fits no cluster
    assert not solve_fused(A100, "lstm", "bfloat16", 16, 1, 128)  # no clusters: R stays in registers


def test_odd_clusters_only_where_no_power_of_two_takes_the_head():
    """Clusters of 3, 5, 6, 7, 9-15 blocks (KernelModel.any_cluster_size) take the heads whose D no power-of-two
    cluster splits into whole warps' dims (lstm D = 144: 18 of its 8-dim groups; 16-bit lstm D = 640's backward),
    and nothing else: every head a power-of-two cluster takes keeps its choice, and GPUs without clusters gain
    nothing."""
    off = problems.KernelModel(any_cluster_size=False, f32_half_operand_stages=False)
    for function, dtype, D, direction, cluster, scatter in (
            ("lstm", "bfloat16", 144, "forward", 6, False), ("gru", "bfloat16", 160, "forward", 5, False),
            ("lstm", "float32", 112, "forward", 7, False), ("elman", "bfloat16", 208, "inference", 13, False),
            ("lstm", "bfloat16", 144, "backward", 3, False), ("lstm", "bfloat16", 640, "backward", 10, True),
            ("elman", "bfloat16", 640, "backward", 10, False)):
        assert not solve_fused(H100, function, dtype, 16, 1, D, direction, model=off), (function, D, direction)
        prm = solve_fused(H100, function, dtype, 16, 1, D, direction)
        assert prm and prm.blocks_per_head == cluster and prm.scatter == scatter, (function, D, direction, prm)
        assert D % cluster == 0 and prm.grid[0] % cluster == 0 and prm.registers_estimate <= prm.register_cap
        assert not solve_fused(A100, function, dtype, 16, 1, D, direction)
    for function, D, direction in itertools.product(CELLS, (64, 256, 512, 768), ("forward", "backward")):
        on = solve_fused(H100, function, "bfloat16", 16, 3, D, direction, explain=False)
        assert on == solve_fused(H100, function, "bfloat16", 16, 3, D, direction, model=off, explain=False)
        assert not on or on.blocks_per_head in (1, 2, 4, 8, 16)


def test_r_in_shared_memory_on_any_cluster_is_the_last_stage():
    """R (R^T) partly in shared memory on clusters of any size (KernelModel.r_shared_any_cluster) comes after every
    other stage, with its register margin, and not for the forward heads ptxas spilled at every margin
    (ANY_CLUSTER_REGISTERS): 16-bit gru 2x384 runs forward on 8-block clusters with 7 of R's k-tiles in shared
    memory, float32 lstm 5x144 on 3 blocks, float32 lstm 1x224's backward on 7; float32 elman D = 560 and 16-bit gru
    D = 480 forward have no launch."""
    off = problems.KernelModel(any_cluster_size=False, f32_half_operand_stages=False)
    stages = problems._stages(problems.DEFAULT_MODEL, H100, "gru", "bfloat16", 384, "forward")
    last = [s.r_shared_any_cluster for s in stages]
    assert last[-1] and not any(last[:-1]) and stages[-1].r_shared_any_cluster_margin > 0
    for function, dtype, N, D, direction, cluster in (("gru", "bfloat16", 2, 384, "forward", 8),
                                                      ("lstm", "float32", 5, 144, "forward", 3),
                                                      ("lstm", "float32", 1, 224, "backward", 7)):
        assert not solve_fused(H100, function, dtype, 16, N, D, direction, model=off)
        prm = solve_fused(H100, function, dtype, 16, N, D, direction)
        assert prm and prm.blocks_per_head == cluster and prm.r_ktiles_in_smem > 0, (function, D, prm)
        assert prm.registers_estimate <= prm.register_cap and prm.smem_bytes <= H100.smem_per_block_optin
    for function, dtype, D in (("elman", "float32", 560), ("gru", "bfloat16", 480), ("gru", "float16", 480)):
        assert not solve_fused(H100, function, dtype, 16, 1, D, explain=False), (function, dtype, D)
    assert not solve_fused(A100, "gru", "bfloat16", 16, 2, 384)


def test_all_feasible_enumerates_the_problem():
    """Every configuration the problem admits: distinct launches, each within the limits, best estimate first,
    the solver's choice among the best; ``top_k`` is its prefix."""
    for hw, function, dtype, B, N, D in ((H100, "lstm", "bfloat16", 16, 12, 64), (A100, "gru", "float32", 64, 4, 48),
                                         (H100, "elman", "bfloat16", 16, 3, 256)):
        found = problems.all_feasible(hw, function, dtype, B, N, D)
        assert len(found) > 1
        keys = [json.dumps(p.template_args(), sort_keys=True) for p in found]
        assert len(set(keys)) == len(keys)
        cycles = [p.step_cycles for p in found]
        assert cycles == sorted(cycles)
        for p in found:
            _check_limits(hw, function, dtype, B, N, D, p)
        best = solve_fused(hw, function, dtype, B, N, D)
        assert best.step_cycles == cycles[0]
        assert [p.step_cycles for p in problems.top_k(hw, function, dtype, B, N, D, k=3)] == cycles[:3]
    assert problems.all_feasible(H100, "lstm", "float32", 16, 1, 1024) == []


def test_unexplained_infeasible_is_quick_and_says_so():
    r = solve_fused(H100, "lstm", "float32", 16, 1, 1024, explain=False)
    assert not r and r.conflict == () and "not explained" in r.reason
    assert solve_fused(H100, "lstm", "bfloat16", 16, 12, 64, explain=False)


def test_lower_bound_prunes_nothing_optimal():
    """solve_fused prunes with the model's lower bound; an exhaustive search (top_k evaluates every leaf) must
    find the same optimum, or the bound is not admissible."""
    for hw, function, dtype, D, B in itertools.product((A100, H100, L40S), CELLS, ("bfloat16", "float32"),
                                                       (16, 128, 512), (1, 256)):
        fast = solve_fused(hw, function, dtype, B, 12, D)
        if fast:
            assert fast.step_cycles == problems.top_k(hw, function, dtype, B, 12, D, k=1)[0].step_cycles


def test_top_k_ranks_configurations():
    ranked = problems.top_k(H100, "lstm", "bfloat16", 16, 12, 64, k=5)
    assert len(ranked) == 5
    cycles = [p.step_cycles for p in ranked]
    assert cycles == sorted(cycles)
    assert ranked[0].step_cycles == solve_fused(H100, "lstm", "bfloat16", 16, 12, 64).step_cycles
    assert len({json.dumps(p.template_args(), sort_keys=True) for p in ranked}) == 5


# ---------------------------------------------------------------------------------------------- tuning cache


def test_tuning_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    assert tuning.cache_root() == tmp_path / "tuning"
    first = tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64)
    assert isinstance(first, FusedParams)
    files = list((tmp_path / "tuning").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "tuning").glob(".tmp-*"))
    entry = json.loads(files[0].read_text())
    assert entry["key"]["gpu"] == "H100" and entry["key"]["cc"] == "9.0" and entry["source"] == "solver"

    def no_solving(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(tuning, "solve_fused", no_solving)
    assert tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64) == first
    # Other keys miss: another GPU, cell, dtype or shape.
    assert tuning.load(A100, "lstm", "bfloat16", 16, 12, 64) is None
    assert tuning.load(H100, "lstm", "float16", 16, 12, 64) is None
    assert tuning.load(H100, "lstm", "bfloat16", 16, 12, 128) is None


def test_tuning_measured_entries_win(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    ranked = problems.top_k(H100, "gru", "bfloat16", 16, 12, 64, k=2)
    tuning.store(H100, "gru", "bfloat16", 16, 12, 64, ranked[1], measured_us=0.42, note="sweep")
    tuning.store(H100, "gru", "bfloat16", 16, 12, 64, ranked[0])  # a solver entry does not replace it
    params, meta = tuning.load(H100, "gru", "bfloat16", 16, 12, 64)
    assert params == ranked[1] and meta["source"] == "measured" and meta["measured_us"] == 0.42
    assert tuning.choose(H100, "gru", "bfloat16", 16, 12, 64) == ranked[1]
    assert len(tuning.entries()) == 1


def test_tuning_unreadable_entry_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    prm = tuning.choose(H100, "elman", "float32", 16, 2, 32)
    path = tuning.path_for(tuning.key(H100, "elman", "float32", 16, 2, 32))
    path.write_text("{ half an entr")
    assert tuning.load(H100, "elman", "float32", 16, 2, 32) is None
    assert tuning.choose(H100, "elman", "float32", 16, 2, 32) == prm  # solved again and rewritten
    assert tuning.load(H100, "elman", "float32", 16, 2, 32)[0] == prm


def test_tuning_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    """Every launch asks the cache: an unchanged entry is not parsed again, a rewritten one (another process's
    measured entry) is."""
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    first = tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64)
    parsed = []
    real = tuning.FusedParams.from_dict
    monkeypatch.setattr(tuning.FusedParams, "from_dict", lambda d: parsed.append(1) or real(d))
    for _ in range(3):
        assert tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64) == first
    assert len(parsed) <= 1
    other = problems.top_k(H100, "lstm", "bfloat16", 16, 12, 64, k=2)[1]
    tuning.store(H100, "lstm", "bfloat16", 16, 12, 64, other, measured_us=1.0)
    assert tuning.choose(H100, "lstm", "bfloat16", 16, 12, 64) == other


def test_tuning_solves_a_key_once_a_process(tmp_path, monkeypatch):
    """A refused shape (asked on every ``auto`` call) and a choice that cannot be stored are solved once."""
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path / "missing" / "x"))
    calls = []
    real = tuning.solve_fused
    monkeypatch.setattr(tuning, "solve_fused", lambda *a, **k: calls.append(a) or real(*a, **k))
    (tmp_path / "missing").write_text("a file where the cache directory should be: nothing can be stored")
    for _ in range(3):
        assert not tuning.choose(H100, "lstm", "float32", 16, 7771, 1024)
        assert tuning.choose(H100, "lstm", "bfloat16", 16, 7771, 64)
    assert len(calls) == 2


def test_tuning_infeasible_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHRNN_CORE_CACHE", str(tmp_path))
    assert not tuning.choose(H100, "lstm", "float32", 16, 1, 1024)
    assert not list(tmp_path.rglob("*.json"))


def test_cooperative_heads_option_on_sm80():
    """The (not yet implemented) cooperative-grid option lets sm_80 take heads above one block, with a grid
    barrier a step, only where every block of the grid is resident at once."""
    model = problems.KernelModel(cooperative_heads=True)
    prm = solve_fused(A100, "lstm", "bfloat16", 16, 3, 256, model=model)
    assert prm and prm.sync == "grid" and prm.blocks_per_head > 1 and prm.waves == 1
    assert prm.grid[0] * prm.grid[1] <= A100.sm_count
    r = solve_fused(A100, "lstm", "bfloat16", 256, 12, 256, model=model)
    assert not r and any(n.startswith("cooperative grid") for n in r.conflict), r


# ---------------------------------------------------------------------------------------------- ptxas agreement

@pytest.mark.slow  # ~1 min of NVRTC on 2 cores with an empty kernel cache, which the compile tests then reuse
def test_solver_choices_compile_as_modelled(tmp_path_factory):
    """Issue 7, item 4 (CI part): every forward and backward choice on the CI presets compiles for its
    architecture with no spill, at most the register cap, the model's shared memory (static_asserts in
    fused_fw.cu and fused_bw.cu compare it with Tile::SMEM_BYTES) and ptxas's registers within the stated
    margin of the estimate."""
    from flashrnn_core.backends.fused import launch_of
    from flashrnn_core.runtime import compile_spec

    seen, report = set(), []
    shapes = [("forward", D) for D in DS] + [("backward", D) for D in BW_DS]
    for (direction, D), hw, function, dtype, B in itertools.product(shapes, (A100, H100), CELLS, DTYPES, BS):
        prm = solve_fused(hw, function, dtype, B, 4, D, direction=direction)
        if not prm:
            continue
        spec = launch_of(prm).spec
        if (hw.arch, spec.defines) in seen:
            continue
        seen.add((hw.arch, spec.defines))
        res = compile_spec(spec, hw.arch).resources
        report.append((hw.arch, function, dtype, D, prm.batch_ntiles, prm.blocks_per_head, prm.k_split,
                       res.registers, prm.registers_estimate, res.spill_stores + res.spill_loads))
        assert res.spill_stores == res.spill_loads == 0, report[-1]
        assert res.registers <= prm.register_cap, report[-1]
        # ptxas takes what the cap allows, so it may use more than the estimate; far more, or far less, means
        # the register fit no longer describes the kernel (refit: problems.REGISTER_FIT).
        # The estimate carries a safety margin proportional to it (KernelModel.reg_margin_fraction): the stated
        # agreement is with the fit plus the constant margin, as it was measured.
        m = problems.DEFAULT_MODEL
        if direction == "backward":  # fitted with no margin (backward.BW_REGISTER_FIT)
            assert -BW_REGISTER_MARGIN[0] <= res.registers - prm.registers_estimate <= BW_REGISTER_MARGIN[1], \
                report[-1]
            continue
        if prm.r_ktiles_in_smem:  # R partly in shared memory: ptxas fills the file there (REGISTER_FIT, last
            continue              # paragraph), so no spill and the cap are what the estimate promises
        modelled = float(m.reg_margin + (prm.registers_estimate - m.reg_margin) / (1 + m.reg_margin_fraction))
        below, above = REGISTER_MARGIN_16BIT if dtype != "float32" else REGISTER_MARGIN
        assert -below <= res.registers - modelled <= above, (*report[-1], modelled)


#: Stated margin of ptxas's registers around the model's estimate, (below, above). Measured 2026-11-23 on the 171
#: distinct choices for sm_80 and sm_90 (NVRTC 12.9): from 31 below to 54 above, mean 0; never a spill.
REGISTER_MARGIN = (40, 64)
#: ... for 16-bit storage since its prologue loads R's pairs as one word (problems.PAIRED_R_LOADS): the fit, made on
#: the old prologue, now overestimates these kernels (options lost, never a spill) until it is refitted. Measured
#: 2026-12-04 on the 168 distinct choices (sm_80 and sm_90, NVRTC 12.9): from 51 below to 3 above.
REGISTER_MARGIN_16BIT = (56, 64)
#: The same for the backward's choices (backward.BW_REGISTER_FIT: the fit over every variant ranged from 44
#: below to 70 above since stop 19, 22 below to 107 above before; the choices, which stay below their caps, sit
#: within these).
BW_REGISTER_MARGIN = (50, 110)
#: Head dimensions of the backward's agreement test (its kernel takes D <= 192 on one block: elman in 16-bit).
BW_DS = (16, 32, 48, 64, 80, 96, 112, 128, 160, 176, 192)


RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
#: The measured sweeps (bench/sweep_fused.py on an H200, every feasible configuration of each shape): the
#: forward's reference shapes on the kernels of 61adcb0 and the backward's (the backward's constants were set on
#: these), the backward's held-out shapes (bench/sweep_fused.py --holdout; they showed one flaw, fixed by
#: KernelModel.bw_occupancy_reg_margin, and set nothing else), replayed on the H100 and H200 presets; and both
#: directions again on the kernels of 5277a5c (per-thread addresses in registers: 15-35% faster steps), replayed
#: on the H200 preset, the GPU it measured: the forward's constants were refitted on it
#: (problems.LATENCY_CALIBRATION), so its forward shapes must be within 5%. The 61adcb0 forward sweep measured the
#: older, slower kernels and still replays within 10% (lstm and slstm B=16 12x64 at 1.085: the 4-block clusters
#: the refit picks were 8% slower than one block there). (On the H100 preset the solver picks prefetch 8 for
#: lstm B=256 12x64 where the 5277a5c sweep measured 1.49 ms against 1.27 ms for prefetch 4; the same pair
#: measured 1.37 and 1.38 ms at 61adcb0: three waves of blocks vary from run to run.)
SWEEPS = [(f, preset) for f in ("constrint/2026-11-30-h200-sweep-61adcb0.json",
                                "constrint/2026-11-30-h200-sweep-backward.json",
                                "constrint/2026-11-30-h200-sweep-backward-holdout.json") for preset in ("H100", "H200")]
SWEEPS += [("2026-11-30-h200-sweep.json", "H200")]
#: Sweeps of the kernels with whole-K warps (FusedParams.whole_k, 2026-12-01: also paired dims, trading lanes and
#: the other changes since 5277a5c), the 16 reference shapes at B=16 and at B=64/256 (12x64) between them. The older
#: sweeps never measured whole-K kernels: their shapes replay with the solver restricted to the kernels they measured
#: (KernelModel.whole_k = (0,)).
WHOLE_K_SWEEPS = ("constrint/2026-12-01-h200-sweep-wholek.json", "constrint/2026-12-01-h200-sweep-wholek-2.json")
SWEEPS += [(f, "H200") for f in WHOLE_K_SWEEPS]
#: Both forwards of the kernels of 40c9465 (12 shapes at B=16: every cell at 12x64, 48x16 and 3x256), each as the
#: forward that saves and as the inference kernel: the inference solve and the forward's cluster exchange
#: (problems.CLUSTER_CALIBRATION) were fitted on it.
INFERENCE_SWEEP = "constrint/2026-12-02-h200-sweep-forward-inference.json"
#: ... and seven shapes held out of that fit (D = 48 to 384, B = 16 and 64), both forwards.
CLUSTER_HOLDOUT_SWEEP = "constrint/2026-12-02-h200-sweep-holdout-clusters.json"
SWEEPS += [(INFERENCE_SWEEP, "H200"), (CLUSTER_HOLDOUT_SWEEP, "H200")]
#: Both forwards of six cluster shapes (12x64 lstm/slstm, 3x256 every cell) with prefetch 3 among the depths
#: (problems.PREFETCH_ON_CLUSTERS), measured after the model took it (ae9feb6: its slstm cell carried a
#: polynomial log1p that cf68210 took out again, so its slstm rows are ~10% slower than the kernels now; the
#: geometries rank alike).
PREFETCH3_SWEEP = "constrint/2026-12-02-h200-sweep-prefetch3.json"
SWEEPS += [(PREFETCH3_SWEEP, "H200")]
#: Every backward configuration, clusters among them, of eight shapes whose R^T one block holds (lstm, slstm, gru,
#: elman 12x64, lstm and slstm 12x64 B=64, lstm 24x32, slstm 6x128): problems.BW_CLUSTERS_AT_SMALL_HEADS. The older
#: backward sweeps measured clusters only where no block holds R^T: their shapes replay with the solver restricted
#: to that (KernelModel.bw_clusters_weighed_from_d = None).
BW_CLUSTER_SWEEP = "constrint/2026-12-03-h200-sweep-backward-clusters.json"
#: ... and seven shapes held out of that choice (D = 32 to 128, B = 16 and 32), measured after it.
BW_CLUSTER_HOLDOUT_SWEEP = "constrint/2026-12-03-h200-sweep-backward-clusters-holdout.json"
#: ... and four at B = 96-128, where blocks share SMs (KernelModel.bw_co_resident_issue was fitted on it).
BW_CLUSTER_LARGE_BATCH_SWEEP = "constrint/2026-12-03-h200-sweep-backward-clusters-large-batch.json"
#: ... and three held out of stop 39's rule for it (elman 12x64 B=128 and 256, gru 12x64 B=256), measured after it.
BW_LARGE_BATCH_HOLDOUT_SWEEP = "constrint/2026-12-03-h200-sweep-backward-large-batch-holdout.json"
#: ... and two held out of the co-residency price (BW_CO_RESIDENT): elman 12x64 B=32 and 8x256 B=64.
BW_CO_RESIDENT_HOLDOUT_SWEEP = "constrint/2026-12-03-h200-sweep-backward-co-resident-holdout.json"
BW_CLUSTER_SWEEPS = (BW_CLUSTER_SWEEP, BW_CLUSTER_HOLDOUT_SWEEP, BW_CLUSTER_LARGE_BATCH_SWEEP,
                     BW_LARGE_BATCH_HOLDOUT_SWEEP, BW_CO_RESIDENT_HOLDOUT_SWEEP)
SWEEPS += [(f, "H200") for f in BW_CLUSTER_SWEEPS]
#: Shapes where the solver's choice is known to miss the bound, with the ratio it measured. gru 12x64 B=16: one block
#: of 16 whole-K warps measured 0.343 ms against the choice's (8 warps, k_split 1) 0.391. The model sums its terms,
#: each the larger of a latency and the issue slots of the warps sharing a scheduler, so at 4 warps a scheduler it
#: counts the cells' issue (2 x 92 x 4 cycles) in full on top of the mma's, where the warps overlap one another's
#: phases; the refit (bench/refit_forward.py --fit on both sweeps) did not change that choice (constants alone cannot
#: here). The choice itself measured as before whole-K warps existed (0.388 ms at 1e4b023's reference run).
#: elman 1x384: an 8-block cluster with k_split 2 (0.615 ms saving, 0.608 inference) where k_split 1 measured 0.571
#: at the same prefetch and 0.555 at prefetch 2 (the model never prices a shallower prefetch faster; the choice
#: before the refit, 4 blocks, measured 0.635).
KNOWN_MISSES = {("constrint/2026-12-01-h200-sweep-wholek.json", "gru bfloat16 B=16 12x64 T=1024"): 1.15,
                (CLUSTER_HOLDOUT_SWEEP, "elman bfloat16 B=16 1x384 T=1024"): 1.12,
                (CLUSTER_HOLDOUT_SWEEP, "elman bfloat16 B=16 1x384 T=1024 inference"): 1.12}
#: The shapes of the sweeps the forward's constants were fitted on: within 5% (the best achievable for lstm B=256
#: 12x64 is 4.0%, see test_model_choices_follow_the_measurements); the rest within 10% (issue 7).
FITTED = {("2026-11-30-h200-sweep.json", "forward"): 1.05, (INFERENCE_SWEEP, "forward"): 1.05,
          (INFERENCE_SWEEP, "inference"): 1.05}


def at_measured_depths(model: problems.KernelModel, rows: list[dict]) -> problems.KernelModel:
    """``model`` offering only the forward prefetch depths a sweep's ``rows`` measured; one that never measured 3
    (those before problems.PREFETCH_ON_CLUSTERS) prices a cluster's deeper depths as the model did then, since
    without 3 the term would steer clusters to 2 where 2 does not hide the load
    (test_cluster_prefetch_depth_follows_the_measurements checks the term on its own measurements)."""
    depths = tuple(sorted({r["params"]["prefetch_steps"] for r in rows}))
    if 3 in depths or rows[0]["params"]["direction"] == "backward":
        return model
    return replace(model, prefetches=tuple(p for p in model.prefetches if p in depths), cluster_deep_prefetch=0)


def as_measured_backward(model: problems.KernelModel) -> problems.KernelModel:
    """``model`` pricing dR after the backward kernel as it ran when the repository's backward sweeps were measured
    (all before 5efa2a9): cuBLAS over a gathered copy of h_{t-1} (Gr + 3 rows a step, MODEL_VERSION 15), since
    those sweeps' times of configurations without dR in the kernel include that copy."""
    return replace(model, bw_gemm_rows_extra=3)


@pytest.mark.parametrize("sweep_file,preset", SWEEPS)
def test_solver_choice_within_10_percent_of_the_measured_sweep(preset, sweep_file):
    """Issue 7: for every shape of a sweep, the configuration the solver picks today, looked up among the
    configurations an H200 measured, is within 10% of the fastest (5% for the shapes the forward's constants were
    fitted on). A shape's direction is the sweep's (its rows' params say "forward" for the inference rows of a
    sweep from before the inference solve)."""
    sweep = json.loads((RESULTS / sweep_file).read_text())
    for shape in sweep["shapes"]:
        rows = [r for r in shape["rows"] if r.get("ms")]
        if not rows:
            assert shape["infeasible"], shape["label"]
            continue
        measured = {_config(r["params"]): r["ms"] for r in rows}
        p = rows[0]["params"]
        direction = shape.get("shape", {}).get("direction", p["direction"])
        whole_k_measured = sweep_file in WHOLE_K_SWEEPS + (INFERENCE_SWEEP, CLUSTER_HOLDOUT_SWEEP, PREFETCH3_SWEEP)
        model = problems.DEFAULT_MODEL if whole_k_measured else replace(problems.DEFAULT_MODEL, whole_k=(0,))
        model = at_measured_depths(model, rows)
        if direction == "backward" and sweep_file not in BW_CLUSTER_SWEEPS:
            model = replace(model, bw_clusters_weighed_from_d=None)
        if direction == "backward":
            model = as_measured_backward(model)
        choice = solve_fused(getattr(hardware, preset), p["function"], p["dtype"], p["B"], p["N"], p["D"],
                             direction=direction, model=model)
        ms = measured.get(_config(choice.to_dict()))
        assert ms is not None, f"{shape['label']}: the solver's choice was not among the measured ones"
        bound = FITTED.get((sweep_file, direction), 1.10)
        bound = KNOWN_MISSES.get((sweep_file, shape["label"]), bound)
        assert ms <= bound * min(measured.values()), (shape["label"], _config(choice.to_dict()), ms,
                                                      min(measured.values()), bound)


def test_cluster_prefetch_depth_follows_the_measurements():
    """problems.PREFETCH_ON_CLUSTERS: six cluster geometries, each timed at prefetch 2, 3, 4 and/or 8 (the saving
    forward pinned, H200). The depth the model prices cheapest for each measured within 2% of its fastest depth
    (lstm 12x64's 4-block clusters: 3 hides the Wx load that 2 does not, and costs 4% less than 4 and 8); the
    model without the deeper depths' term, which takes the deepest of equal estimates, missed by 4%."""
    probe = json.loads((RESULTS / "phases/2026-12-02-h200-prefetch-clusters.json").read_text())
    geometries: dict[tuple, dict[int, float]] = {}
    for r in probe["rows"]:
        key = (r["function"], r["B"], r["N"], r["D"], r["blocks_per_head"], r["k_split"], r["batch_ntiles"],
               r["whole_k"])
        geometries.setdefault(key, {})[r["prefetch_steps"]] = r["median_ms"]

    def cheapest(model, key, depths):
        function, B, N, D, cl, ks, nbt, wk = key
        priced = {p: problems.assess(H200, function, "bfloat16", B, N, D, blocks_per_head=cl, k_split=ks,
                                     batch_ntiles=nbt, whole_k=wk, prefetch_steps=p, model=model).step_cycles
                  for p in depths}
        return min(sorted(depths, reverse=True), key=priced.get)  # ties: the deepest, as the search prefers

    worst_without = 1.0
    for key, ms in geometries.items():
        fastest = min(ms.values())
        assert ms[cheapest(problems.DEFAULT_MODEL, key, ms)] <= 1.02 * fastest, (key, ms)
        unpriced = replace(problems.DEFAULT_MODEL, cluster_deep_prefetch=0)
        worst_without = max(worst_without, ms[cheapest(unpriced, key, ms)] / fastest)
    assert worst_without > 1.035
    # DMA-warp kernels (their own warps issue the copies) were not measured: priced alike at every depth, so lstm
    # 1x768 takes the deepest its shared memory holds (8 since its wide warps; by hand at stop 48 prefetch 2 and 4
    # measured within 0.3%, problems.WIDE_WARPS).
    dma = solve_fused(H200, "lstm", "bfloat16", 16, 1, 768)
    assert dma.dma_warps and dma.prefetch_steps == max(problems.DEFAULT_MODEL.prefetches) == 8
    model = replace(problems.DEFAULT_MODEL, wide_warps=dma.wide_warps)
    priced = {p: problems.assess(H200, "lstm", "bfloat16", 16, 1, 768, blocks_per_head=16, k_split=dma.k_split,
                                 prefetch_steps=p, r_ktiles_in_smem=dma.r_ktiles_in_smem, model=model,
                                 dma_warps=dma.dma_warps).step_cycles for p in (3, 4, 8)}
    assert priced[3] == priced[4] == priced[8]


def _config(params: dict) -> tuple:
    return (params["blocks_per_head"], params["k_split"], params.get("whole_k", False), params["batch_ntiles"],
            params["prefetch_steps"], params.get("fused_dr", False), params.get("r_ktiles_in_smem", 0))


def test_float32_half_operands_only_where_the_split_fits_nothing():
    """float32 forwards and backwards hold R (R^T) as bf16 hi + lo wherever a launch takes them; the last stages
    (KernelModel.f32_half_operands) take the heads none does with one fp16 operand each, TF32's precision: the
    forward of lstm, slstm and gru D = 768 on 16-block clusters, the backward of gru D = 768 on scatter clusters
    (drs scaled a batch row), and of lstm D = 768 there with one receive buffer for its float32 partials, slstm's
    (whose stages hold more state rows) with one input stage too.
    Never 16-bit storage, never weighed against a split launch, and the define reaches the kernel only where set."""
    for function in ("lstm", "slstm", "gru"):
        for direction in ("forward", "inference"):
            assert not solve_fused(H100, function, "float32", 16, 1, 768, direction=direction,
                                   model=problems.KernelModel(f32_half_operand_stages=False)), function
            half = solve_fused(H100, function, "float32", 16, 1, 768, direction=direction)
            assert half and half.half_operands and half.blocks_per_head == 16, (function, direction)
            assert half.template_args()["FLASHRNN_F32_HALF"] == 1 and "fp16 operands" in half.summary()
            assert half.r_bytes_registers + half.r_bytes_smem == COUNTS[function][1] * 768 * 768 * 2 // 16
        backward = solve_fused(H100, function, "float32", 16, 1, 768, direction="backward", explain=False)
        assert backward.scatter and backward.half_operands and backward.template_args()["FLASHRNN_F32_HALF"] == 1
        # lstm only with one receive buffer (KernelModel.bw_scatter_one_recv), slstm with one input stage too
        # (KernelModel.bw_scatter_one_stage: prefetch 0, the very last stages)
        assert backward.one_recv == (function != "gru")
        assert ("FLASHRNN_ONE_RECV" in backward.template_args()) == backward.one_recv
        assert (backward.prefetch_steps == 0) == (function == "slstm")
    # elman D = 768's split launches hold their own: the fp16-operand scatter stage is not weighed against them
    for B, N in ((16, 1), (64, 12)):
        assert not solve_fused(H100, "elman", "float32", B, N, 768, direction="backward").half_operands
    for function, D in itertools.product(CELLS, (64, 256, 512)):  # the split takes these: no fp16 operands
        split = solve_fused(H100, function, "float32", 16, 1, D)
        assert split and not split.half_operands and "FLASHRNN_F32_HALF" not in split.template_args()
    for dtype in ("bfloat16", "float16"):
        assert not solve_fused(H100, "lstm", dtype, 16, 1, 768).half_operands
    with pytest.raises(ValueError, match="float32 storage only"):
        problems.geometry("lstm", "bfloat16", 768, half_operands=True)
    for direction in problems.DIRECTIONS:
        geo = problems.geometry("lstm", "float32", 768, direction, half_operands=True)
        assert (geo.split, geo.mma_split, geo.itemsize) == (1, 1, 4)


def test_16bit_dma_register_rule():
    """The register rule of 16-bit DMA-warp forwards whose warps hold two d-groups by an odd Gr
    (``KernelModel.reg_rest_with_smem_16bit_dma``, problems.PAIRED_R_LOADS): refitted on the paired R loads, it
    keeps 9 of gru 1x768's k-tiles a warp in shared memory (12 by the old rule; ptxas: 246-248 registers, no spill;
    measured 4% faster), and one fewer is estimated to spill; lstm and slstm keep their wide-warp choice, and
    16-bit heads without DMA warps (lstm D = 640) the old rule (the refit measured slower there)."""
    old = replace(problems.DEFAULT_MODEL, reg_rest_with_smem_16bit_dma=problems.DEFAULT_MODEL.reg_rest_with_smem)
    for dtype, direction in itertools.product(("bfloat16", "float16"), ("forward", "inference")):
        chosen = solve_fused(H100, "gru", dtype, 16, 1, 768, direction=direction)
        assert chosen.dma_warps == 2 and chosen.r_ktiles_in_smem == 9, chosen.summary()
        assert solve_fused(H100, "gru", dtype, 16, 1, 768, direction=direction, model=old).r_ktiles_in_smem == 12
        assert not problems.assess(H100, "gru", dtype, 16, 1, 768, blocks_per_head=16, k_split=2, prefetch_steps=8,
                                   r_ktiles_in_smem=8, dma_warps=2, direction=direction)
    for function in ("lstm", "slstm"):
        assert solve_fused(H100, function, "bfloat16", 16, 1, 768).wide_warps
    assert solve_fused(H100, "lstm", "bfloat16", 16, 1, 640).r_ktiles_in_smem == 20


def test_slstm_reciprocal_form_rule():
    """sLSTM's forward takes h's own reciprocal (FLASHRNN_SLSTM_SHARED_RCP=2, ``slstm_own_h_reciprocal``) in 16-bit
    inference forwards and DMA-warp kernels, where it measured faster, and nowhere else: the one-block and cluster
    saving forwards, float32 (a division) and the other cells keep their defines, and so their cache keys."""
    def form(function, dtype, N, D, direction):
        chosen = solve_fused(H100, function, dtype, 16, N, D, direction=direction)
        return chosen.template_args().get("FLASHRNN_SLSTM_SHARED_RCP"), chosen

    for dtype in ("bfloat16", "float16"):
        for N, D in ((48, 16), (12, 64), (3, 256), (1, 768)):
            assert form("slstm", dtype, N, D, "inference")[0] == 2
        rcp, chosen = form("slstm", dtype, 1, 768, "forward")
        assert chosen.dma_warps and rcp == 2
        for N, D in ((48, 16), (12, 64), (3, 256)):
            rcp, chosen = form("slstm", dtype, N, D, "forward")
            assert not chosen.dma_warps and rcp is None
    for direction in ("forward", "inference"):
        assert form("slstm", "float32", 48, 16, direction)[0] is None
        assert form("slstm", "float32", 1, 768, direction)[0] is None
        for function in ("lstm", "gru", "elman"):
            assert form(function, "bfloat16", 1, 768, direction)[0] is None
    assert "FLASHRNN_SLSTM_SHARED_RCP" not in solve_fused(H100, "slstm", "bfloat16", 16, 48, 16,
                                                           direction="backward").template_args()
    # The define comes before FLASHRNN_SAVE, which stays last (the inference kernel's mark).
    assert list(form("slstm", "bfloat16", 48, 16, "inference")[1].template_args())[-2:] == [
        "FLASHRNN_SLSTM_SHARED_RCP", "FLASHRNN_SAVE"]
