"""VNNLIB (the VNN-COMP property format, an SMT-LIB subset) -> input boxes and margin specifications.

A VNNLIB file asserts the *violation*: inputs X_i in a region and outputs Y_j meeting a condition.
The property holds iff no input satisfies all assertions. We read

    (declare-const X_i Real) / (declare-const Y_j Real)
    (assert F)   with F built from (and F ...), (or F ...) and linear comparisons
                 (<= a b), (>= a b), (< a b), (> a b), (= a b) of terms made of numbers,
                 variables, (+ ...), (- ...), (* const term), (/ term const)

and normalise the conjunction of all assertions to a disjunction of conjunctions. Each conjunction
splits into input bounds on single X_i (a box) and output comparisons, each written as a margin
m_k(y) = C_k . y + d_k with the violation side m_k <= 0 (m_k < 0 for a strict comparison). A
conjunction is refuted (safe) as soon as one of its margins has a positive lower bound over its box;
the property holds when every conjunction is refuted. Terms with equal boxes are grouped into one
`SpecCase`, so bound engines run once per box with all margins as the rows of one C matrix.

Choice: strict input bounds are read as their closure (the box's boundary is included); that only
enlarges the region a proof covers, so `holds` stays sound.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustcli.core.errors import InputError

# Bounds that keep one property's memory in check (each is far above VNN-COMP's largest):
MAX_TERMS = 100_000  # conjunctions in the disjunctive normal form
MAX_ATOMS = 2_000_000  # comparisons over all those conjunctions
MAX_TOKENS = 10_000_000  # tokens of the file (the parse tree costs about 100 bytes per token)
# Cells of the largest tensors a case leads to: its margin rows x outputs, and in the spec attack
# its disjuncts x margin rows (a row-ownership mask) -- 2**28 cells is 256 MB of bools, 2 GB of float64.
MAX_CASE_CELLS = 1 << 28
_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d{1,9})$")  # a billion inputs is past any network; longer indices are not numbers to read


@dataclass
class OutputConstraints:
    """One conjunction over outputs: the violation is every C y + d <= 0 (< 0 where strict)."""

    C: torch.Tensor  # (K, n_outputs) float64
    d: torch.Tensor  # (K,)
    strict: torch.Tensor  # (K,) bool

    def violated_by(self, y: torch.Tensor) -> torch.Tensor:
        """For outputs y (B, n_outputs): does each row meet this conjunction (a counterexample)?"""
        m = y.to(self.C.dtype) @ self.C.T + self.d
        bad = torch.where(self.strict, m < 0, m <= 0)
        return bad.all(1)


@dataclass
class SpecCase:
    """Inputs in [lower, upper]; violated iff some disjunct holds on the outputs."""

    lower: torch.Tensor  # (n_inputs,) float64
    upper: torch.Tensor
    disjuncts: list[OutputConstraints]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
        """All margins as one (C, d) and the row range of each disjunct."""
        rows, start = [], 0
        for o in self.disjuncts:
            rows.append(slice(start, start + len(o.d)))
            start += len(o.d)
        C = torch.cat([o.C for o in self.disjuncts]) if self.disjuncts else torch.zeros(0, 0, dtype=torch.float64)
        d = torch.cat([o.d for o in self.disjuncts]) if self.disjuncts else torch.zeros(0, dtype=torch.float64)
        return C, d, rows

    def violated_by(self, y: torch.Tensor) -> torch.Tensor:
        hits = [o.violated_by(y) for o in self.disjuncts]
        return torch.stack(hits).any(0) if hits else torch.zeros(len(y), dtype=torch.bool)


@dataclass
class VnnlibProperty:
    n_inputs: int
    n_outputs: int
    cases: list[SpecCase] = field(default_factory=list)  # empty: no input meets the assertions
    source: str = "<string>"


@dataclass
class _Node:
    items: list  # sub-nodes or str atoms
    line: int


class _Linear:
    """sum coeffs[var] * var + const."""

    __slots__ = ("coeffs", "const")

    def __init__(self, coeffs: dict[str, float] | None = None, const: float = 0.0):
        self.coeffs = coeffs or {}
        self.const = const

    def scaled(self, s: float) -> "_Linear":
        return _Linear({k: v * s for k, v in self.coeffs.items()}, self.const * s)

    def plus(self, other: "_Linear") -> "_Linear":
        c = dict(self.coeffs)
        for k, v in other.coeffs.items():
            c[k] = c.get(k, 0.0) + v
        return _Linear(c, self.const + other.const)


@dataclass
class _Atom:
    """margin <= 0 (strict: < 0), margin a linear form."""

    margin: _Linear
    strict: bool
    line: int

    def __post_init__(self) -> None:
        # A variable whose coefficient cancelled (X_0 - X_0, 0 * X_0) is not in the comparison: an
        # input bound c X_i <= k with c = 0 is the constant comparison 0 <= k.
        self.margin = _Linear({k: v for k, v in self.margin.coeffs.items() if v != 0.0}, self.margin.const)


def _parse_sexprs(text: str, source: str) -> list[_Node]:
    """The top-level forms of `text`. Atoms are kept as interned strings (no per-token line
    record): a property repeats a few names (`assert`, `<=`, `X_0`) millions of times, and a
    tuple per token tripled the memory. Error messages use the enclosing form's line."""
    stack: list[_Node] = [_Node([], 1)]
    count, line, pos = 0, 1, 0
    for m in _TOKEN.finditer(text):
        start = m.start()
        line += text.count("\n", pos, start)
        pos = start
        tok = m.group()
        if tok[0] == ";":
            continue
        count += 1
        if count > MAX_TOKENS:
            raise InputError(f"{source}: more than {MAX_TOKENS:,} tokens; split the property into several files")
        if tok == "(":
            stack.append(_Node([], line))
        elif tok == ")":
            if len(stack) == 1:
                raise InputError(f"{source}:{line}: unbalanced ')'")
            node = stack.pop()
            stack[-1].items.append(node)
        elif len(stack) == 1:
            raise InputError(f"{source}:{line}: {tok!r} outside any (...) form")
        else:
            stack[-1].items.append(sys.intern(tok))
    if len(stack) > 1:
        raise InputError(f"{source}:{stack[-1].line}: '(' is never closed")
    return stack[0].items


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.vars: set[str] = set()

    def err(self, line: int, what: str) -> InputError:
        return InputError(f"{self.source}:{line}: {what} (supported: declare-const, assert with and/or of "
                          "linear comparisons <=, >=, <, >, = of X_i/Y_j terms)")

    def head(self, node: _Node) -> str | None:
        first = node.items[0] if node.items else None
        return first if isinstance(first, str) else None

    # Terms and formulas nest arbitrarily deep, so both are evaluated bottom-up with an explicit
    # stack (a 50,000-deep `(and (and ...))` must not exhaust Python's call stack).
    def term(self, item, line: int) -> _Linear:
        return self._evaluate(item, "term", line)

    def formula(self, item, line: int) -> list[list[_Atom]]:
        """Disjunctive normal form: a list of conjunctions (lists of atoms)."""
        return self._evaluate(item, "formula", line)

    def _evaluate(self, root, kind: str, line: int):
        stack: list[tuple[object, str, bool, int]] = [(root, kind, False, line)]
        results: list = []
        while stack:
            item, mode, expanded, at = stack.pop()
            if not isinstance(item, _Node):
                results.append(self._leaf(item, at, mode))
                continue
            op, args = self.head(item), item.items[1:]
            if not expanded:
                child_mode = self._child_mode(item, op, args, mode)
                stack.append((item, mode, True, item.line))
                stack.extend((a, child_mode, False, item.line) for a in reversed(args))
                continue
            values = results[len(results) - len(args) :]
            del results[len(results) - len(args) :]
            results.append(self._finite(item, op, self._combine_term(item, op, values)) if mode == "term"
                           else self._combine_formula(item, op, values))
        return results[0]

    def _child_mode(self, item: _Node, op: str | None, args: list, mode: str) -> str:
        if mode == "term":
            if op is None or not args:
                raise self.err(item.line, "empty or malformed term")
            if op not in ("+", "-", "*", "/"):
                raise self.err(item.line, f"unsupported term ({op} ...)")
            return "term"
        if op in ("and", "or"):
            return "formula"
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.err(item.line, f"({op} ...) needs exactly two operands")
            return "term"
        raise self.err(item.line, f"unsupported construct ({op} ...)" if op else "malformed formula")

    def _leaf(self, tok: str, line: int, mode: str) -> _Linear:
        if mode == "formula":
            raise self.err(line, f"expected a formula, got {tok!r}")
        if tok in self.vars:
            return _Linear({tok: 1.0})
        try:
            value = float(tok)
        except ValueError:
            raise self.err(line, f"unknown symbol {tok!r} (declare it with declare-const)") from None
        if not math.isfinite(value):
            raise self.err(line, f"{tok!r} is not a finite number")
        return _Linear(const=value)

    def _combine_term(self, item: _Node, op: str, parts: list[_Linear]) -> _Linear:
        if op == "+":
            out = _Linear()
            for p in parts:
                out = out.plus(p)
            return out
        if op == "-":
            if len(parts) == 1:
                return parts[0].scaled(-1.0)
            out = parts[0]
            for p in parts[1:]:
                out = out.plus(p.scaled(-1.0))
            return out
        if op == "*":
            nonconst = [p for p in parts if p.coeffs]
            if len(nonconst) > 1:
                raise self.err(item.line, "product of two variables is not linear")
            factor = 1.0
            for p in parts:
                if not p.coeffs:
                    factor *= p.const
            return (nonconst[0] if nonconst else _Linear(const=1.0)).scaled(factor)
        if op == "/" and len(parts) == 2 and not parts[1].coeffs and parts[1].const != 0:
            return parts[0].scaled(1.0 / parts[1].const)
        raise self.err(item.line, f"unsupported term ({op} ...)")

    def _finite(self, item: _Node, op: str, value: _Linear) -> _Linear:
        """`value` unless its arithmetic overflowed float64: an inf or NaN coefficient would make the
        bound engines refute margins with inf - inf, so such a term is refused, not evaluated."""
        if math.isfinite(value.const) and all(math.isfinite(c) for c in value.coeffs.values()):
            return value
        raise self.err(item.line, f"({op} ...) overflows double precision (a coefficient or constant is "
                       "not finite); rescale its numbers")

    def _combine_formula(self, item: _Node, op: str, subs) -> list[list[_Atom]]:
        if op == "and":
            terms: list[list[_Atom]] = [[]]
            for sub in subs:
                _check_expansion(len(terms) * len(sub), sum(map(len, terms)) * len(sub) + len(terms) * sum(map(len, sub)),
                                 f"{self.source}:{item.line}")
                terms = [t + s for t in terms for s in sub]
            return terms
        if op == "or":
            out = [t for sub in subs for t in sub]
            _check_expansion(len(out), sum(map(len, out)), f"{self.source}:{item.line}")
            return out
        a, b = subs
        diff = self._finite(item, op, a.plus(b.scaled(-1.0)))  # the margin a - b of the comparison
        if op in ("<=", "<"):
            return [[_Atom(diff, op == "<", item.line)]]
        if op in (">=", ">"):
            return [[_Atom(diff.scaled(-1.0), op == ">", item.line)]]
        return [[_Atom(diff, False, item.line), _Atom(diff.scaled(-1.0), False, item.line)]]


def _check_expansion(cases: int, atoms: int, where: str) -> None:
    """Refuse a disjunctive normal form past the bounds before building it."""
    if cases > MAX_TERMS:
        raise InputError(
            f"{where}: the property expands to {cases:,} cases, more than the {MAX_TERMS:,} this tool expands; "
            "split it into several properties"
        )
    if atoms > MAX_ATOMS:
        raise InputError(
            f"{where}: the property expands to {atoms:,} comparisons, more than the {MAX_ATOMS:,} this tool "
            "expands; split it into several properties"
        )


def parse_vnnlib(text: str, source: str = "<string>") -> VnnlibProperty:
    """Parse VNNLIB text; any construct outside the supported subset is an InputError naming its line."""
    r = _Reader(source)
    base: list[_Atom] = []  # atoms of assertions that are plain conjunctions (the usual input box)
    branches: list[list[list[_Atom]]] = []
    for node in _parse_sexprs(text, source):
        op = r.head(node)
        if op == "declare-const":
            if len(node.items) != 3 or not isinstance(node.items[1], str):
                raise r.err(node.line, "malformed declare-const")
            if node.items[2] != "Real":  # an Int or Bool variable would need integer reasoning this tool does not do
                raise r.err(node.line, f"{node.items[1]} is declared of sort "
                            f"{node.items[2] if isinstance(node.items[2], str) else '(...)'}; only Real variables are supported")
            name = node.items[1]
            if not _VAR.match(name):
                shown = name if len(name) <= 40 else name[:40] + "..."
                raise r.err(node.line, f"variable {shown!r} is not named X_<i> (input) or Y_<j> (output, i, j < 10^9)")
            r.vars.add(name)
        elif op == "assert":
            if len(node.items) != 2:
                raise r.err(node.line, "assert takes one formula")
            dnf = r.formula(node.items[1], node.line)
            if len(dnf) == 1:
                base.extend(dnf[0])
            else:
                branches.append(dnf)
        else:
            raise r.err(node.line, f"unsupported command ({op} ...)" if op else "malformed command")
    xs = sorted(int(_VAR.match(v).group(2)) for v in r.vars if v[0] == "X")
    ys = sorted(int(_VAR.match(v).group(2)) for v in r.vars if v[0] == "Y")
    if not xs or not ys:
        raise InputError(f"{source}: declares no {'X_i inputs' if not xs else 'Y_j outputs'}")
    if xs != list(range(len(xs))) or ys != list(range(len(ys))):
        raise InputError(f"{source}: X_i and Y_j must be numbered 0, 1, 2, ... without gaps")
    prop = VnnlibProperty(len(xs), len(ys), source=source)

    terms: list[list[_Atom]] = [[]]
    for dnf in branches:
        _check_expansion(len(terms) * len(dnf), sum(map(len, terms)) * len(dnf) + len(terms) * sum(map(len, dnf)), source)
        terms = [t + s for t in terms for s in dnf]
    n_in, n_out = len(xs), len(ys)
    base_box = _box(base, n_in, r)
    base_lo, base_hi = base_box[0].tolist(), base_box[1].tolist()
    unbounded = (~(torch.isfinite(base_box[0]) & torch.isfinite(base_box[1]))).nonzero().flatten().tolist()
    base_empty = bool((base_box[0] > base_box[1]).any())
    base_out = [a for a in base if a.margin.coeffs and next(iter(a.margin.coeffs))[0] == "Y"]
    cases: dict[tuple, SpecCase] = {}
    sizes: dict[tuple, tuple[int, int]] = {}  # per box: (disjuncts, margin rows)
    for term in terms:
        # A term's box is the base box with the few inputs its own atoms tighten: work on those only,
        # so a wide input times many output disjuncts costs the atoms, not inputs x disjuncts.
        changes = _tightened(term, base_lo, base_hi, r)
        if changes is None:
            continue  # a false constant comparison: this case cannot be violated
        missing = [i for i in unbounded if not (i in changes and math.isfinite(changes[i][0]) and math.isfinite(changes[i][1]))]
        missing += [i for i, (a, b) in changes.items() if not (math.isfinite(a) and math.isfinite(b))]
        if missing:
            raise InputError(f"{source}: input X_{min(missing)} has no finite lower and upper bound; "
                             "VNNLIB properties must bound every input")
        if base_empty or any(a > b for a, b in changes.values()):
            continue  # empty input region: this case cannot be violated
        key = tuple(sorted((i, a, b) for i, (a, b) in changes.items() if (a, b) != (base_lo[i], base_hi[i])))
        if key not in cases:
            lo, hi = base_box[0].clone(), base_box[1].clone()
            for i, a, b in key:
                lo[i], hi[i] = a, b
            cases[key] = SpecCase(lo, hi, [])
        outs = base_out + [a for a in term if a.margin.coeffs and next(iter(a.margin.coeffs))[0] == "Y"]
        C = torch.zeros(len(outs), n_out, dtype=torch.float64)
        d = torch.zeros(len(outs), dtype=torch.float64)
        for k, a in enumerate(outs):
            for v, c in a.margin.coeffs.items():
                C[k, int(v[2:])] += c
            d[k] = a.margin.const
        strict = torch.tensor([a.strict for a in outs], dtype=torch.bool)
        case = cases[key]
        case.disjuncts.append(OutputConstraints(C, d, strict))
        rows = sizes.get(key, (0, 0))
        rows = sizes[key] = (rows[0] + 1, rows[1] + len(outs))
        if rows[0] * rows[1] > MAX_CASE_CELLS or rows[1] * n_out > MAX_CASE_CELLS:
            raise InputError(
                f"{source}: one input box has {rows[0]:,} output disjuncts with {rows[1]:,} comparisons, which needs "
                f"more than {MAX_CASE_CELLS:,} cells of memory to check; split the property into several files"
            )
    prop.cases = list(cases.values())
    return prop


def _box(atoms: list[_Atom], n_in: int, r: _Reader) -> tuple[torch.Tensor, torch.Tensor]:
    """The input box (lower, upper) the atoms bound, unbounded where they say nothing; an empty box
    (lower 1 > upper 0) when a constant comparison among them is false."""
    lo, hi = [float("-inf")] * n_in, [float("inf")] * n_in
    changes = _tightened(atoms, lo, hi, r)
    if changes is None:
        lo, hi = [1.0] * n_in, [0.0] * n_in
    else:
        for i, (a, b) in changes.items():
            lo[i], hi[i] = a, b
    return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)


def _tightened(atoms: list[_Atom], base_lo: list[float], base_hi: list[float], r: _Reader) -> dict[int, tuple[float, float]] | None:
    """{i: (lower, upper)} of the inputs `atoms` bound, starting from the base box; None when a
    constant comparison among them is false (the region is empty)."""
    out: dict[int, tuple[float, float]] = {}
    empty = False
    for a in atoms:
        kinds = {v[0] for v in a.margin.coeffs}
        if not kinds:
            empty |= a.margin.const > 0 or (a.strict and a.margin.const == 0)
            continue
        if kinds == {"Y"}:
            continue
        if kinds != {"X"}:
            raise r.err(a.line, "a comparison mixes inputs X_i and outputs Y_j")
        if len(a.margin.coeffs) != 1:
            raise r.err(a.line, "input constraints must bound a single X_i by a constant")
        ((v, c),) = a.margin.coeffs.items()
        i, bound = int(v[2:]), -a.margin.const / c
        lo, hi = out.get(i, (base_lo[i], base_hi[i]))
        out[i] = (lo, min(hi, bound)) if c > 0 else (max(lo, bound), hi)  # c x + k <= 0  ->  x <= -k / c
    return None if empty else out


def check_fits(prop: VnnlibProperty, n_inputs: int, n_outputs: int, network: str) -> None:
    """InputError unless the property's X_i and Y_j count the network's inputs and outputs."""
    if prop.n_inputs != n_inputs or prop.n_outputs != n_outputs:
        raise InputError(
            f"{prop.source} declares {prop.n_inputs} inputs X_i and {prop.n_outputs} outputs Y_j, but {network} has "
            f"{n_inputs} inputs and {n_outputs} outputs; the property does not fit this network"
        )


MAX_TEXT_BYTES = 512 << 20  # a property file (after gunzip) larger than this is refused unread


def read_vnnlib(path: str | Path) -> VnnlibProperty:
    import gzip

    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file (a folder, device or FIFO); pass a .vnnlib file")
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise InputError(f"{path} is larger than {MAX_TEXT_BYTES >> 20} MB; split the property into several files")
        # `.vnnlib.gz` is how VNN-COMP 2022+ ships properties
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_TEXT_BYTES + 1)  # bounded: a gzip bomb stops here
            if len(raw) > MAX_TEXT_BYTES:
                raise InputError(f"{path} unpacks to more than {MAX_TEXT_BYTES >> 20} MB; split the property")
            text = raw.decode("utf-8-sig")  # -sig: drops a byte-order mark, which is not VNNLIB
        else:
            text = path.read_text(encoding="utf-8-sig")
    except (EOFError, gzip.BadGzipFile, zlib.error):
        raise InputError(f"{path} is not a valid gzip file") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file") from None
    return parse_vnnlib(text, path.name)


def robustness_vnnlib(lower: torch.Tensor, upper: torch.Tensor, label: int, n_outputs: int) -> str:
    """VNNLIB text of local robustness over a box (VNN-COMP's `mnistfc` / `cifar2020` shape): inputs
    X_i in [lower_i, upper_i] (flattened), violated where some other output reaches the label's."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lower.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    for i, (a, b) in enumerate(zip(lower.flatten().tolist(), upper.flatten().tolist())):
        lines += [f"(assert (<= X_{i} {b!r}))", f"(assert (>= X_{i} {a!r}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_outputs) if j != label)
    return "\n".join(lines + [f"(assert (or {ors}))"]) + "\n"
