"""A small exact integer constraint solver: bounded domains, polynomial (in)equalities, divisibility, predicates,
and an objective to minimise, by domain propagation plus depth-first branch and bound. Pure Python.

Why a solver of our own: the kernel problems are tiny (about 12 variables, 15 constraints), but they mix
linear budgets, products (registers = fragments x tiles x ...; shared memory = stages x tile x row) and
divisibility (mma tiles), and we want the *proof* when a shape cannot run: the conflicting constraints, by
name. A MILP/CP library would be a heavy dependency for a 12-variable problem solved once per shape.

Usage::

    p = Problem()
    x = p.var("x", range(1, 17))              # any sorted iterable of ints; a range stays a range (cheap)
    y = p.var("y", [1, 2, 4, 8], prefer="high")  # value order tried first when branching
    p.add(x * y <= 255, name="registers")      # sums of products with int/Fraction coefficients
    p.add(divides(16, x), name="mma tile")     # x | y, c | x, x | c
    p.minimize(3 * x - y)                      # or p.minimize(fn, lower_bound=lb); p.maximize(...)
    result = p.solve()                         # Solution (truthy) or Infeasible (falsy, .conflict names)
    ranked = p.best(5)                         # the 5 best Solutions, best first (or Infeasible)
    every = list(p.solutions())                # every feasible assignment, as {name: value}

Semantics:

- Expressions are polynomials over variables: ``Expr`` maps monomials (sorted tuples of variable indices, with
  repeats for powers) to coefficients (``int`` or ``fractions.Fraction``; floats are refused, since the
  propagation rounds bounds to integers and must be exact). ``<=, <, >=, >, ==, !=`` between expressions (or
  an expression and a number) build a ``Constraint``, not a bool. Python's chained comparisons (``1 <= x <= 5``)
  do not work: write two constraints.
- ``divides(a, b)``: ``b % a == 0`` for ints or variables (``0 | b`` means ``b == 0``).
- ``predicate(fn, *vars)``: any test on the listed variables, checked once all of them are fixed (and used to
  filter the last free one's domain when that domain is small).
- The objective is an ``Expr`` (its lower bound over a node's domains comes from interval arithmetic) or a
  callable over a complete assignment ``{name: value}``; a callable may come with an admissible
  ``lower_bound(box)`` where ``box`` maps each name to its current ``(lo, hi)`` (it must never exceed the
  objective of any completion, or the optimum may be missed). Without an objective ``solve`` returns the first
  feasible assignment found.

Propagation: bounds consistency on every polynomial constraint (interval arithmetic per monomial; the bounds of
each variable are narrowed by dividing the residual by the interval of the rest of its monomial, exactly for
every sign), divisibility filtering (supports on small domains, multiples/divisors when one side is fixed),
forward checking on predicates. Propagation is sound but not complete, so every leaf is checked exactly.
Search: depth first; variables of the highest ``priority`` first, smallest domain first among them; values in
each variable's preferred order (domains over 64 values are bisected); a node is pruned when the objective's
lower bound reaches the k-th best value found (ties keep the first found). ``Infeasible.conflict`` is an
irreducible set of constraints found by deletion filtering: drop each constraint in turn (latest added first)
while the rest stays infeasible. ``solve(node_limit=...)`` raises ``SolverError`` past that many nodes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Mapping, Sequence, Union

Number = Union[int, Fraction]
Domain = Sequence[int]  # sorted ascending: a ``range`` with positive step or a tuple
Monomial = tuple  # sorted tuple of variable indices; () is the constant term

#: Largest domain that is filtered value by value (divisibility supports, predicates); larger ones are only
#: narrowed by bounds, which stays sound.
FILTER_LIMIT = 4096
#: Domains up to this size are branched on value by value, larger ones are bisected.
ENUMERATE_LIMIT = 64


class SolverError(RuntimeError):
    """The search ran past ``node_limit`` (or another solver-level failure, not infeasibility)."""


def _number(c) -> Number:
    if isinstance(c, bool):
        return int(c)
    if isinstance(c, (int, Fraction)):
        return c
    try:  # NumPy integers and the like
        import numbers

        if isinstance(c, numbers.Integral):
            return int(c)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"coefficients must be int or fractions.Fraction (exact), got {type(c).__name__} {c!r}")


# ---------------------------------------------------------------------------------------------- expressions


class Expr:
    """A polynomial: ``{monomial: coefficient}`` (monomial ``()`` is the constant). Immutable by convention."""

    __slots__ = ("problem", "terms")

    def __init__(self, problem: "Problem | None", terms: dict):
        self.problem = problem
        self.terms = {m: c for m, c in terms.items() if c != 0}

    # -- building
    @staticmethod
    def lift(value, problem: "Problem | None" = None) -> "Expr":
        if isinstance(value, Expr):
            return value
        return Expr(problem, {(): _number(value)})

    def _combine(self, other, sign: int) -> "Expr":
        other = Expr.lift(other, self.problem)
        terms = dict(self.terms)
        for m, c in other.terms.items():
            terms[m] = terms.get(m, 0) + sign * c
        return Expr(self.problem or other.problem, terms)

    def __add__(self, other) -> "Expr":
        return self._combine(other, 1)

    __radd__ = __add__

    def __sub__(self, other) -> "Expr":
        return self._combine(other, -1)

    def __rsub__(self, other) -> "Expr":
        return Expr.lift(other, self.problem)._combine(self, -1)

    def __neg__(self) -> "Expr":
        return Expr(self.problem, {m: -c for m, c in self.terms.items()})

    def __mul__(self, other) -> "Expr":
        other = Expr.lift(other, self.problem)
        terms: dict = {}
        for (m1, c1), (m2, c2) in itertools.product(self.terms.items(), other.terms.items()):
            m = tuple(sorted(m1 + m2))
            terms[m] = terms.get(m, 0) + c1 * c2
        return Expr(self.problem or other.problem, terms)

    __rmul__ = __mul__

    # -- comparisons build constraints
    def _cmp(self, other, op: str) -> "Constraint":
        return Constraint.compare(self - Expr.lift(other, self.problem), op)

    def __le__(self, other) -> "Constraint":
        return self._cmp(other, "<=")

    def __lt__(self, other) -> "Constraint":
        return self._cmp(other, "<")

    def __ge__(self, other) -> "Constraint":
        return self._cmp(other, ">=")

    def __gt__(self, other) -> "Constraint":
        return self._cmp(other, ">")

    def __eq__(self, other) -> "Constraint":  # type: ignore[override]
        return self._cmp(other, "==")

    def __ne__(self, other) -> "Constraint":  # type: ignore[override]
        return self._cmp(other, "!=")

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError("an Expr has no truth value; did you chain comparisons (1 <= x <= 5)? write two constraints")

    # -- evaluation
    def evaluate(self, values: Sequence[int]) -> Number:
        """Value at a complete assignment given by variable index."""
        total: Number = 0
        for m, c in self.terms.items():
            p = c
            for i in m:
                p *= values[i]
            total += p
        return total

    def interval(self, domains: Sequence[Domain]) -> tuple[Number, Number]:
        """Bounds over a box of domains (interval arithmetic per monomial; sound, exact when linear)."""
        lo: Number = 0
        hi: Number = 0
        for m, c in self.terms.items():
            a, b = _monomial_interval(c, m, domains)
            lo += a
            hi += b
        return lo, hi

    def variables(self) -> tuple[int, ...]:
        return tuple(sorted({i for m in self.terms for i in m}))

    def __repr__(self) -> str:
        names = self.problem.names if self.problem else None
        return _format_poly(self.terms, names)


class Var(Expr):
    """A decision variable (an ``Expr`` of one monomial) with a name and an index in its ``Problem``."""

    __slots__ = ("name", "index")

    def __init__(self, problem: "Problem", name: str, index: int):
        super().__init__(problem, {(index,): 1})
        self.name, self.index = name, index

    def __repr__(self) -> str:
        return self.name


def _format_poly(terms: Mapping, names: Sequence[str] | None) -> str:
    def name(i: int) -> str:
        return names[i] if names else f"v{i}"

    parts = []
    for m, c in sorted(terms.items(), key=lambda mc: (len(mc[0]) == 0, mc[0])):
        body = "*".join(name(i) for i in m)
        if not body:
            parts.append(str(c))
        elif c == 1:
            parts.append(body)
        elif c == -1:
            parts.append("-" + body)
        else:
            parts.append(f"{c}*{body}")
    text = " + ".join(parts) or "0"
    return text.replace("+ -", "- ")


# ---------------------------------------------------------------------------------------------- constraints


class Constraint:
    """Base class: a named condition over some variables, with propagation and an exact check."""

    name: str = ""

    def variables(self) -> tuple[int, ...]:
        raise NotImplementedError

    def holds(self, values: Sequence[int]) -> bool:
        """Exact test at a complete assignment (by index)."""
        raise NotImplementedError

    def propagate(self, domains: list[Domain]) -> list[int] | None:
        """Narrow ``domains`` in place; return the indices changed, or None when a domain empties (no solution)."""
        raise NotImplementedError

    def describe(self, names: Sequence[str]) -> str:
        raise NotImplementedError

    @staticmethod
    def compare(poly: Expr, op: str) -> "Constraint":
        """``poly <op> 0`` as a ``Polynomial`` constraint (the constant term moves to the bounds)."""
        terms = dict(poly.terms)
        const = -terms.pop((), 0)  # poly = body - const
        shown = (dict(terms), op, const)  # as written, for explanations
        # Scale to integer coefficients: the body then takes integer values, so strict comparisons become
        # non-strict ones exactly, and propagation divides integers only.
        scale = math.lcm(*(Fraction(c).denominator for c in (*terms.values(), const)))
        terms = {m: int(c * scale) for m, c in terms.items()}  # plain ints: Fraction arithmetic is slow
        const = _simplest(const * scale)
        body = Expr(poly.problem, terms)
        if op == "<=":
            made = Polynomial(body, None, _floor(const))
        elif op == "<":
            made = Polynomial(body, None, _ceil(const) - 1)
        elif op == ">=":
            made = Polynomial(body, _ceil(const), None)
        elif op == ">":
            made = Polynomial(body, _floor(const) + 1, None)
        elif op == "==":  # a non-integer constant stays a Fraction: then no integer body reaches it
            made = Polynomial(body, const, const)
        elif op == "!=":
            made = Polynomial(body, const, const, negate=True)
        else:
            raise ValueError(f"unknown comparison {op!r}")
        made.shown = shown
        return made

    # Constraints are compared by identity (they live in lists and sets); ``==`` on Exprs builds them instead.
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        # ``1 <= x <= 5`` is ``(1 <= x) and (x <= 5)`` in Python: it would silently keep only the second.
        raise TypeError("a constraint has no truth value; chained comparisons (1 <= x <= 5) do not work: "
                        "add two constraints")


class Polynomial(Constraint):
    """``lo <= body <= hi`` (either bound may be None), or ``body != lo`` when ``negate``.

    ``body`` has no constant term; with integer variables and rational coefficients, a strict comparison was
    already turned into a non-strict one where that is exact (integer bodies).
    """

    def __init__(self, body: Expr, lo: Number | None, hi: Number | None, negate: bool = False):
        self.body, self.lo, self.hi, self.negate = body, lo, hi, negate
        self.problem = body.problem
        self.shown: tuple | None = None  # (terms, op, constant) as written, set by ``Constraint.compare``
        self.monomials = list(body.terms.items())
        self._vars = body.variables()
        # Per monomial, the factors whose bounds can be narrowed (a variable appearing once) with the rest of
        # the monomial beside each: computed once, used at every propagation.
        self._factors = [[(i, m[:pos] + m[pos + 1:]) for pos, i in enumerate(m) if m.count(i) == 1]
                         for m, _c in self.monomials]

    def variables(self) -> tuple[int, ...]:
        return self._vars

    def holds(self, values: Sequence[int]) -> bool:
        v = self.body.evaluate(values)
        if self.negate:
            return v != self.lo
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)

    def propagate(self, domains: list[Domain]) -> list[int] | None:
        if self.negate:
            return self._propagate_ne(domains)
        changed: set[int] = set()
        lo, hi = self.lo, self.hi
        while True:  # passes until nothing narrows (bounds from a pass's start stay valid, only weaker)
            spans = [_monomial_interval(c, m, domains) for m, c in self.monomials]
            total_lo = sum(sp[0] for sp in spans)
            total_hi = sum(sp[1] for sp in spans)
            if (hi is not None and total_lo > hi) or (lo is not None and total_hi < lo):
                return None
            progress = False
            for (m, c), (tlo, thi), factors in zip(self.monomials, spans, self._factors):
                # What this term may take given the others' extremes; a term already inside needs nothing.
                rhi = None if hi is None else hi - (total_lo - tlo)
                rlo = None if lo is None else lo - (total_hi - thi)
                if (rhi is None or thi <= rhi) and (rlo is None or tlo >= rlo):
                    continue
                for i, rest in factors:
                    qlo, qhi = _monomial_interval(c, rest, domains)
                    new = _narrow_factor(domains[i], qlo, qhi, rlo, rhi)
                    if not new:  # None, or bounds between an explicit domain's values
                        return None
                    if len(new) != len(domains[i]):
                        domains[i] = new
                        changed.add(i)
                        progress = True
            if not progress:
                return list(changed)

    def _propagate_ne(self, domains: list[Domain]) -> list[int] | None:
        free = [i for i in self._vars if len(domains[i]) > 1]
        if not free:
            return [] if self.holds([d[0] if len(d) == 1 else 0 for d in domains]) else None
        if len(free) == 1 and len(domains[free[0]]) <= FILTER_LIMIT:
            i = free[0]
            values = [d[0] if len(d) == 1 else 0 for d in domains]

            def ok(v: int) -> bool:
                values[i] = v
                return self.holds(values)

            return _filter_domain(domains, i, ok)
        return []

    def describe(self, names: Sequence[str]) -> str:
        if self.shown is not None:  # as the caller wrote it (the stored form may be scaled to integers)
            terms, op, const = self.shown
            return f"{_format_poly(terms, names)} {op} {const}"
        body = _format_poly(self.body.terms, names)
        if self.negate:
            return f"{body} != {self.lo}"
        if self.lo is not None and self.hi is not None:
            return f"{body} == {self.lo}" if self.lo == self.hi else f"{self.lo} <= {body} <= {self.hi}"
        return f"{body} <= {self.hi}" if self.hi is not None else f"{body} >= {self.lo}"


class Divides(Constraint):
    """``a | b`` (``b % a == 0``): each side is a variable index or an int constant."""

    def __init__(self, a: int | Var, b: int | Var):
        self.a = a.index if isinstance(a, Var) else _int(a)
        self.b = b.index if isinstance(b, Var) else _int(b)
        self.a_var, self.b_var = isinstance(a, Var), isinstance(b, Var)
        self._vars = tuple(sorted({v for v, is_var in ((self.a, self.a_var), (self.b, self.b_var)) if is_var}))

    def variables(self) -> tuple[int, ...]:
        return self._vars

    @staticmethod
    def test(a: int, b: int) -> bool:
        return b == 0 if a == 0 else b % a == 0

    def holds(self, values: Sequence[int]) -> bool:
        a = values[self.a] if self.a_var else self.a
        b = values[self.b] if self.b_var else self.b
        return self.test(a, b)

    def propagate(self, domains: list[Domain]) -> list[int] | None:
        da = domains[self.a] if self.a_var else (self.a,)
        db = domains[self.b] if self.b_var else (self.b,)
        changed = []
        if len(da) == 1:
            new_b = _multiples(db, da[0])
        elif len(db) == 1:
            new_b = db
        elif len(da) * len(db) <= FILTER_LIMIT:
            new_b = tuple(v for v in db if any(self.test(a, v) for a in da))
        else:
            new_b = db
        if new_b is None or not new_b:
            return None
        if len(db) == 1:
            new_a = _divisors_in(da, db[0])
        elif len(da) * len(new_b) <= FILTER_LIMIT:
            new_a = tuple(a for a in da if any(self.test(a, v) for v in new_b))
        else:
            new_a = da
        if new_a is None or not new_a:
            return None
        if self.b_var and len(new_b) != len(db):
            domains[self.b] = new_b
            changed.append(self.b)
        if self.a_var and len(new_a) != len(da):
            domains[self.a] = new_a
            changed.append(self.a)
        return changed

    def describe(self, names: Sequence[str]) -> str:
        a = names[self.a] if self.a_var else str(self.a)
        b = names[self.b] if self.b_var else str(self.b)
        return f"{a} | {b}"


class Predicate(Constraint):
    """``fn(*values) -> bool`` over the listed variables (forward checking only)."""

    def __init__(self, fn: Callable[..., bool], variables: Sequence[Var], label: str | None = None):
        self.fn, self.vars = fn, tuple(v.index for v in variables)
        self.label = label or getattr(fn, "__name__", "predicate")
        self._vars = tuple(sorted(set(self.vars)))

    def variables(self) -> tuple[int, ...]:
        return self._vars

    def holds(self, values: Sequence[int]) -> bool:
        return bool(self.fn(*(values[i] for i in self.vars)))

    def propagate(self, domains: list[Domain]) -> list[int] | None:
        free = [i for i in self._vars if len(domains[i]) > 1]
        fixed = {i: domains[i][0] for i in self._vars if len(domains[i]) == 1}
        if not free:
            return [] if self.fn(*(fixed[i] for i in self.vars)) else None
        if len(free) == 1 and len(domains[free[0]]) <= FILTER_LIMIT:
            i = free[0]

            def ok(v: int) -> bool:
                fixed[i] = v
                return bool(self.fn(*(fixed[j] for j in self.vars)))

            return _filter_domain(domains, i, ok)
        return []

    def describe(self, names: Sequence[str]) -> str:
        return f"{self.label}({', '.join(names[i] for i in self.vars)})"


def divides(a: int | Var, b: int | Var) -> Divides:
    """The constraint ``a | b`` (``b`` is a multiple of ``a``); either side a variable or an int."""
    return Divides(a, b)


def predicate(fn: Callable[..., bool], *variables: Var, label: str | None = None) -> Predicate:
    """A constraint given by a Python test over ``variables`` (checked when they are fixed)."""
    return Predicate(fn, variables, label)


# ---------------------------------------------------------------------------------------------- arithmetic


def _int(c) -> int:
    n = _number(c)
    if isinstance(n, Fraction):
        if n.denominator != 1:
            raise TypeError(f"divisibility needs integers, got {n}")
        return int(n)
    return n


def _simplest(x: Number) -> Number:
    """An int where the value is integral (ints keep arithmetic fast), else the Fraction."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return int(x)
    return x


def _floor(x: Number) -> int:
    return x if isinstance(x, int) else math.floor(x)


def _ceil(x: Number) -> int:
    return x if isinstance(x, int) else math.ceil(x)


def _ceil_div(a: Number, b: Number) -> int:
    """ceil(a / b) for b > 0, exact for ints and Fractions."""
    return -_floor_div(-a, b)


def _floor_div(a: Number, b: Number) -> int:
    """floor(a / b) for b > 0."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return math.floor(Fraction(a) / Fraction(b))


def _monomial_interval(c: Number, m: Monomial, domains: Sequence[Domain]) -> tuple[Number, Number]:
    """Bounds of ``c * prod(m)`` over the domains (factors taken independently: sound for powers too)."""
    lo: Number = c
    hi: Number = c
    for i in m:
        d = domains[i]
        a, b = d[0], d[-1]
        if a >= 0 and lo >= 0:  # the common all-positive case without four products
            lo, hi = lo * a, hi * b
            continue
        products = (lo * a, lo * b, hi * a, hi * b)
        lo, hi = min(products), max(products)
    return lo, hi


def _positive_factor_bounds(qlo: Number, qhi: Number, rlo: Number | None, rhi: Number | None) -> tuple[int, int | None] | None:
    """For x >= 1 and some q in [qlo, qhi]: the bounds on x such that rlo <= x*q <= rhi is possible.

    Returns (low, high or None for unbounded), or None when no positive x works. x*q for fixed x spans
    [x*qlo, x*qhi]; it meets [rlo, rhi] iff x*qlo <= rhi and x*qhi >= rlo.
    """
    low, high = 1, None
    if rhi is not None:  # x*qlo <= rhi
        if qlo > 0:
            high = _floor_div(rhi, qlo)
        elif qlo == 0:
            if rhi < 0:
                return None
        else:
            low = max(low, _ceil_div(-rhi, -qlo))
    if rlo is not None:  # x*qhi >= rlo
        if qhi > 0:
            low = max(low, _ceil_div(rlo, qhi))
        elif qhi == 0:
            if rlo > 0:
                return None
        else:
            bound = _floor_div(-rlo, -qhi)
            high = bound if high is None else min(high, bound)
    if high is not None and high < low:
        return None
    return low, high


def _filter_domain(domains: list[Domain], i: int, ok: Callable[[int], bool]) -> list[int] | None:
    """Keeps the values of variable i's domain that ``ok`` accepts (the constraint's only free variable): None
    where none is left, ``[i]`` where the domain shrank, ``[]`` where it did not."""
    new = tuple(v for v in domains[i] if ok(v))
    if not new:
        return None
    if len(new) != len(domains[i]):
        domains[i] = new
        return [i]
    return []


def _narrow_factor(d: Domain, qlo: Number, qhi: Number, rlo: Number | None, rhi: Number | None) -> Domain | None:
    """Narrow the domain of a factor x so that x*q can lie in [rlo, rhi] for some q in [qlo, qhi].

    Handled per sign part (x < 0, x == 0, x > 0) and joined as a hull: exact for the interval relaxation.
    """
    lo, hi = d[0], d[-1]
    parts: list[tuple[int, int]] = []
    if hi >= 1:
        pos = _positive_factor_bounds(qlo, qhi, rlo, rhi)
        if pos is not None:
            a, b = max(pos[0], 1, lo), hi if pos[1] is None else min(pos[1], hi)
            if a <= b:
                parts.append((a, b))
    if lo <= 0 <= hi and (rlo is None or rlo <= 0) and (rhi is None or rhi >= 0):
        parts.append((0, 0))
    if lo <= -1:  # x = -y, y >= 1: x*q = y*(-q)
        neg = _positive_factor_bounds(-qhi, -qlo, rlo, rhi)
        if neg is not None:
            a = max(lo, -neg[1]) if neg[1] is not None else lo
            b = min(-neg[0], -1, hi)
            if a <= b:
                parts.append((a, b))
    if not parts:
        return None
    new_lo = min(p[0] for p in parts)
    new_hi = max(p[1] for p in parts)
    if new_lo == lo and new_hi == hi:
        return d
    return _restrict(d, new_lo, new_hi)


def _restrict(d: Domain, lo: int, hi: int) -> Domain:
    i = bisect.bisect_left(d, lo)
    j = bisect.bisect_right(d, hi)
    return d[i:j]


def _multiples(d: Domain, a: int) -> Domain | None:
    """The values of ``d`` divisible by ``a`` (``a == 0``: only 0)."""
    if a == 0:
        return (0,) if 0 in d else ()
    a = abs(a)
    if isinstance(d, range) and d.step == 1:  # a range of multiples, without enumerating
        first = _ceil_div(d.start, a) * a
        return range(first, d.stop, a)
    if len(d) <= FILTER_LIMIT:
        return tuple(v for v in d if v % a == 0)
    return d  # too large to filter: bounds stay sound


def _divisors_in(d: Domain, b: int) -> Domain | None:
    """The values of ``d`` that divide ``b`` (every value divides 0; 0 divides only 0)."""
    if b == 0:
        return d
    if len(d) <= FILTER_LIMIT:
        return tuple(a for a in d if a != 0 and b % a == 0)
    n = abs(b)
    divs = set()
    for k in range(1, math.isqrt(n) + 1):
        if n % k == 0:
            divs.update((k, n // k, -k, -(n // k)))
    return tuple(v for v in sorted(divs) if v in d)


def _as_domain(values: Iterable[int]) -> Domain:
    if isinstance(values, range):
        if values.step < 0:
            values = values[::-1]
        return values
    dom = tuple(sorted({_int(v) for v in values}))
    if dom and len(dom) > 1 and dom[-1] - dom[0] + 1 == len(dom):
        return range(dom[0], dom[-1] + 1)
    return dom


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Stats:
    """Search effort: nodes visited, leaves reached, propagation calls, wall time in seconds."""

    nodes: int = 0
    leaves: int = 0
    propagations: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Solution:
    """An optimal (or, without an objective, a feasible) assignment. Truthy."""

    values: dict[str, int]
    objective: float | Number | None
    stats: Stats = field(default_factory=Stats)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Infeasible:
    """No assignment satisfies every constraint. Falsy.

    ``conflict``: names of an irreducible conflicting set (deletion filtering: remove any one and the rest is
    feasible) — empty when a variable's own domain is empty. ``reason``: one readable sentence.
    """

    conflict: tuple[str, ...]
    reason: str
    stats: Stats = field(default_factory=Stats)

    def __bool__(self) -> bool:
        return False


# ---------------------------------------------------------------------------------------------- the problem


class _Limit(Exception):
    pass


class Problem:
    """Variables, named constraints and an objective; ``solve`` / ``best`` / ``solutions`` search them."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.domains: list[Domain] = []
        self.prefer: list[str] = []
        self.priority: list[int] = []
        self.constraints: list[Constraint] = []
        self._objective: Expr | Callable[[dict[str, int]], float] | None = None
        self._lower_bound: Callable[[dict[str, tuple[int, int]]], float] | None = None
        self._negated = False

    # -- model
    def var(self, name: str, domain: Iterable[int], prefer: str = "low", priority: int = 0) -> Var:
        """A variable over ``domain`` (a range, or any iterable of ints).

        ``prefer``: "low" or "high": which values branching tries first (ties in the objective keep the first
        found, so this is also the tie-break). ``priority``: variables of a higher priority are branched on
        first (smallest domain first within one priority); give auxiliary variables that the others determine
        a lower one, so that the search decides the real choices and propagation fills in the rest.
        """
        if name in self.names:
            raise ValueError(f"variable {name!r} defined twice")
        if prefer not in ("low", "high"):
            raise ValueError(f"prefer must be 'low' or 'high', got {prefer!r}")
        self.names.append(name)
        self.domains.append(_as_domain(domain))
        self.prefer.append(prefer)
        self.priority.append(priority)
        return Var(self, name, len(self.names) - 1)

    def add(self, constraint: Constraint, name: str | None = None) -> Constraint:
        """Add a constraint; ``name`` is what an infeasibility explanation reports (default: its formula)."""
        if not isinstance(constraint, Constraint):
            raise TypeError(f"expected a constraint (a comparison of expressions, divides, predicate), got "
                            f"{type(constraint).__name__}")
        if any(c.name == name for c in self.constraints) and name:
            raise ValueError(f"constraint name {name!r} used twice")
        constraint.name = name or constraint.describe(self.names)
        self.constraints.append(constraint)
        return constraint

    def minimize(self, objective, lower_bound: Callable[[dict[str, tuple[int, int]]], float] | None = None) -> None:
        """Minimise an ``Expr`` (or int), or a callable ``f({name: value}) -> number`` with an optional admissible
        ``lower_bound({name: (lo, hi)}) -> number`` used to prune."""
        self._negated = False
        if callable(objective) and not isinstance(objective, Expr):
            self._objective, self._lower_bound = objective, lower_bound
        else:
            self._objective, self._lower_bound = Expr.lift(objective, self), None

    def maximize(self, objective) -> None:
        """Maximise an ``Expr`` or a callable (minimises the negation; the reported objective is the maximised
        value). A callable is searched without a bound."""
        if callable(objective) and not isinstance(objective, Expr):
            self.minimize(lambda values: -objective(values))
        else:
            self.minimize(-Expr.lift(objective, self))
        self._negated = True

    def describe(self) -> str:
        """The model as text: one line per variable and per constraint."""
        lines = [f"{n} in {_domain_text(d)}" for n, d in zip(self.names, self.domains)]
        lines += [f"[{c.name}] {c.describe(self.names)}" for c in self.constraints]
        return "\n".join(lines)

    # -- solving
    def solve(self, node_limit: int | None = None, explain: bool = True) -> Solution | Infeasible:
        """The optimum (or the first feasible assignment without an objective), else ``Infeasible`` with an
        irreducible conflicting set of constraints (``explain=False``: without one, which saves the deletion
        filtering's re-solves when only feasibility matters)."""
        found = self.best(1, node_limit=node_limit, explain=explain)
        if isinstance(found, Infeasible):
            return found
        return found[0]

    def best(self, k: int, node_limit: int | None = None, explain: bool = True) -> list[Solution] | Infeasible:
        """The ``k`` best assignments, best first (fewer if fewer exist), or ``Infeasible`` (naming the conflict
        when ``explain``)."""
        start = time.perf_counter()
        search = _Search(self, self.constraints, k, node_limit)
        found = search.run()
        stats = search.stats(time.perf_counter() - start)
        if not found:
            return self._explain(stats) if explain else Infeasible((), "no assignment satisfies every constraint "
                                                                       "(not explained)", stats)
        sign = -1 if self._negated else 1
        return [Solution(dict(zip(self.names, values)),
                         None if self._objective is None else sign * obj, stats) for obj, values in found]

    def solutions(self) -> Iterable[dict[str, int]]:
        """Every feasible assignment (ignores the objective), in search order."""
        search = _Search(self, self.constraints, 0, None, collect_all=True)
        for values in search.iterate():
            yield dict(zip(self.names, values))

    def feasible(self, constraints: Sequence[Constraint] | None = None, node_limit: int | None = None) -> bool:
        """Whether some assignment satisfies ``constraints`` (default: all); past ``node_limit`` nodes,
        ``SolverError``."""
        search = _Search(self, self.constraints if constraints is None else constraints, 0, node_limit)
        return next(iter(search.iterate()), None) is not None

    def _explain(self, stats: Stats) -> Infeasible:
        empty = [n for n, d in zip(self.names, self.domains) if not d]
        if empty:
            return Infeasible((), f"the domain of {', '.join(empty)} is empty", stats)
        kept = list(self.constraints)
        # Deletion filtering: what stays is irreducible. Latest added are tried first, so where several
        # explanations exist the one naming the earliest-added constraints is kept (add the constraints a
        # reader should hear about first). A trial that runs past EXPLAIN_NODE_LIMIT keeps its constraint: the
        # set stays a conflict, perhaps not an irreducible one (without the limit, explaining a 1x768 lstm
        # backward, whose dropped budgets open a large search, took 213 s).
        for c in reversed(list(kept)):
            trial = [k for k in kept if k is not c]
            try:
                if not self.feasible(trial, node_limit=EXPLAIN_NODE_LIMIT):
                    kept = trial
            except SolverError:
                pass
        names = tuple(c.name for c in kept)
        text = "; ".join(f"[{c.name}] {c.describe(self.names)}" if c.name != c.describe(self.names)
                         else f"[{c.name}]" for c in kept)
        return Infeasible(names, f"no assignment satisfies together: {text}", stats)


#: Nodes one deletion-filtering trial may search (``Problem._explain``).
EXPLAIN_NODE_LIMIT = 20_000


def _domain_text(d: Domain) -> str:
    if isinstance(d, range) and len(d) > 8:
        return f"range({d.start}, {d.stop}{'' if d.step == 1 else f', {d.step}'})"
    return "{" + ", ".join(map(str, d)) + "}"


class _Search:
    """One depth-first branch and bound over a problem's variables and a subset of its constraints."""

    def __init__(self, problem: Problem, constraints: Sequence[Constraint], k: int, node_limit: int | None,
                 collect_all: bool = False):
        self.p, self.constraints, self.k, self.node_limit = problem, list(constraints), k, node_limit
        self.watch: list[list[Constraint]] = [[] for _ in problem.names]
        for c in self.constraints:
            for i in c.variables():
                self.watch[i].append(c)
        self.best: list[tuple] = []  # max-heap by objective via negation: (-obj, -seq, values)
        self.seq = 0
        self.nodes = self.leaves = self.props = 0
        self.objective = None if collect_all or k == 0 else problem._objective

    def stats(self, seconds: float) -> Stats:
        return Stats(self.nodes, self.leaves, self.props, seconds)

    # -- propagation
    def propagate(self, domains: list[Domain], queue: Iterable[Constraint]) -> bool:
        pending = list(queue)
        queued = set(map(id, pending))
        while pending:
            c = pending.pop()
            queued.discard(id(c))
            self.props += 1
            changed = c.propagate(domains)
            if changed is None:
                return False
            for i in changed:
                for other in self.watch[i]:
                    if id(other) not in queued and other is not c:
                        pending.append(other)
                        queued.add(id(other))
        return True

    # -- bounds
    def lower_bound(self, domains: list[Domain]) -> float | Number | None:
        obj = self.objective
        if obj is None:
            return None
        if isinstance(obj, Expr):
            return obj.interval(domains)[0]
        if self.p._lower_bound is None:
            return None
        return self.p._lower_bound({n: (d[0], d[-1]) for n, d in zip(self.p.names, domains)})

    def value(self, values: tuple[int, ...]):
        obj = self.objective
        if isinstance(obj, Expr):
            return obj.evaluate(values)
        return obj(dict(zip(self.p.names, values)))

    def threshold(self):
        return -self.best[0][0] if self.k and len(self.best) >= self.k else None

    # -- search
    def run(self) -> list[tuple]:
        found = []
        for values in self.iterate():
            if self.objective is None:  # the first k feasible assignments, in search order
                found.append((None, values))
                if len(found) >= max(1, self.k):
                    return found
        if self.objective is None:
            return found
        ordered = sorted(self.best, key=lambda e: (-e[0], -e[1]))
        return [(-neg, values) for neg, _seq, values in ordered]

    def iterate(self):
        """Yield feasible complete assignments; with an objective, keeps the k best in ``self.best``."""
        domains = list(self.p.domains)
        if any(len(d) == 0 for d in domains):
            return
        if not self.propagate(domains, self.constraints):
            return
        yield from self._dfs(domains)

    def _dfs(self, domains: list[Domain]):
        self.nodes += 1
        if self.node_limit is not None and self.nodes > self.node_limit:
            raise SolverError(f"search passed node_limit={self.node_limit}")
        bound, limit = self.lower_bound(domains), self.threshold()
        if bound is not None and limit is not None and bound >= limit:
            return
        free = [i for i, d in enumerate(domains) if len(d) > 1]
        if not free:
            yield from self._leaf(tuple(d[0] for d in domains))
            return
        prio = self.p.priority
        i = min(free, key=lambda j: (-prio[j], len(domains[j]), j))  # first fail within the top priority
        for part in self._split(i, domains[i]):
            child = list(domains)
            child[i] = part
            if self.propagate(child, self.watch[i]):
                yield from self._dfs(child)

    def _split(self, i: int, d: Domain) -> list[Domain]:
        high = self.p.prefer[i] == "high"
        if len(d) <= ENUMERATE_LIMIT:
            parts = [d[j:j + 1] for j in range(len(d))]
        else:
            mid = len(d) // 2
            parts = [d[:mid], d[mid:]]
        return parts[::-1] if high else parts

    def _leaf(self, values: tuple[int, ...]):
        self.leaves += 1
        if not all(c.holds(values) for c in self.constraints):
            return  # propagation is sound, not complete: the exact check decides
        if self.objective is None:
            yield values
            return
        obj = self.value(values)
        limit = self.threshold()
        if limit is not None and obj >= limit:
            return
        self.seq += 1
        entry = (-obj, -self.seq, values)  # ties: the earlier found stays (search order is the preference)
        if len(self.best) < self.k:
            heapq.heappush(self.best, entry)
        else:
            heapq.heapreplace(self.best, entry)
        yield values
