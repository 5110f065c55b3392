"""The YAML config of `robust eval`: parsing and validation with line numbers.

    model: digits-mlp          # built-in name or a model file (relative to the config's folder)
    data: digits               # optional for built-in models
    n: 100                     # first n test points
    seed: 0
    checks:
      - name: pgd-linf
        type: attack           # a check type from robustcli.checks.CHECK_TYPES
        attack: [fgsm, pgd]    # keys are the long flag names of the matching command
        eps: [0.05, 0.1]
        gates:
          - robust_accuracy >= 0.6 at eps=0.05
          - clean_accuracy >= 0.9

Keys are spelled like the long flags of the matching command (`attack`, `pgd-steps`,
`batch-size`); older spellings (`attacks`, `pgd_steps`) still read, each with a one-line
deprecation note. Every problem (unknown key, wrong type, missing file, a gate the check cannot measure) is an
InputError naming the file, the line and the key, raised before anything runs. Line numbers come
from composing the YAML into nodes, whose marks keep positions; values are then read with
`yaml.safe_load` from the same text.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustcli.archs import ARCHS
from robustcli.checks import CHECK_TYPES, NOT_AVAILABLE, CheckType
from robustcli.checks.base import KeySpec
from robustcli.data import BUILTIN_DATASETS
from robustcli.core.errors import InputError
from robustcli.gates import OPS, Gate, GateSyntaxError, parse_gate_string
from robustcli.options import deprecation_note

TOP_KEYS: dict[str, KeySpec] = {
    "name": KeySpec("str", help="a name for the report"),
    "model": KeySpec("str", required=True, help="built-in model name or model file"),
    "data": KeySpec("str", help="mnist, digits or a data file"),
    "n": KeySpec("int", minimum=1, help="evaluate the first n test points"),
    "seed": KeySpec("int", default=0, minimum=0),
    "device": KeySpec("str", default="auto", choices=("auto", "cpu", "cuda")),
    "batch-size": KeySpec("int", default=256, minimum=1),
    "arch": KeySpec("str", help="architecture for a state dict"),
    "allow-pickle": KeySpec("bool", default=False, help="load a pickled whole model (runs code: trusted files only)"),
    "mean": KeySpec("floats", help="per-channel mean for normalisation inside the model"),
    "std": KeySpec("floats", minimum=0.0, help="per-channel std"),
    "classes": KeySpec("strs", help="image folders: class folder names in label order"),
    "pixel-scale": KeySpec("float", help="value of a white pixel in integer images (255 for 8-bit, 1 for 0/1)"),
    "checks": KeySpec("list", required=True, help="list of checks"),
}
CHECK_COMMON_KEYS: dict[str, KeySpec] = {
    "name": KeySpec("str"),
    "type": KeySpec("str", required=True),
    "gates": KeySpec("list", required=True),
}
GATE_KEYS: dict[str, KeySpec] = {
    "metric": KeySpec("str", required=True),
    "op": KeySpec("str", required=True, choices=tuple(OPS)),
    "value": KeySpec("float", required=True),
    "eps": KeySpec("float", minimum=0.0),
    "attack": KeySpec("str", help="one attack's row instead of the worst case"),
    "method": KeySpec("str", help="one bound method's row (certify checks)"),
}


@dataclass
class CheckConfig:
    name: str
    type: str
    options: dict[str, Any]
    gates: list[Gate]
    line: int

    @property
    def check_type(self) -> CheckType:
        return CHECK_TYPES[self.type]


@dataclass
class EvalConfig:
    path: Path
    name: str
    model: str
    data: str | None
    n: int | None
    seed: int
    device: str
    batch_size: int
    arch: str | None
    allow_pickle: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checks: list[CheckConfig] = field(default_factory=list)
    model_line: int = 1
    classes: tuple[str, ...] | None = None
    pixel_scale: float | None = None

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "name": self.name,
            "model": self.model,
            "data": self.data,
            "n": self.n,
            "seed": self.seed,
            "checks": [{"name": c.name, "type": c.type, "options": c.options, "gates": [g.text for g in c.gates]} for c in self.checks],
        }


class _Lines:
    """Line numbers (1-based) of keys and list items, by path from the document root."""

    def __init__(self, path: Path, root: yaml.Node | None):
        self.path = path
        self.lines: dict[tuple, int] = {(): 1 if root is None else root.start_mark.line + 1}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, at: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
                line = k.start_mark.line + 1
                if key in seen:
                    raise InputError(f"{self.path}:{line}: key {key!r} repeats the one on line {seen[key]}")
                seen[key] = line
                self.lines[at + (key,)] = line
                self._walk(v, at + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[at + (i,)] = item.start_mark.line + 1
                self._walk(item, at + (i,))

    def error(self, at: tuple, message: str) -> InputError:
        probe = at
        while probe not in self.lines and probe:
            probe = probe[:-1]
        return InputError(f"{self.path}:{self.lines.get(probe, 1)}: {message}")


def _describe(at: tuple) -> str:
    parts = []
    for p in at:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "the document"


def _kind_name(kind: str) -> str:
    return {
        "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
        "floats": "a number or a list of numbers", "strs": "a name or a list of names", "list": "a list",
    }[kind]  # fmt: skip


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(value: Any, spec: KeySpec, at: tuple, lines: _Lines) -> Any:
    key = _describe(at)
    bad = lines.error(at, f"{key} must be {_kind_name(spec.kind)}, got {value!r}")
    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad
        out: Any = value
    elif spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        out = value
    elif spec.kind == "float":
        if not _is_number(value):
            raise bad
        out = float(value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        out = value
    elif spec.kind == "floats":
        items = value if isinstance(value, list) else [value]
        if not items or not all(_is_number(v) for v in items):
            raise bad
        out = tuple(float(v) for v in items)
    elif spec.kind == "strs":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) for v in items):
            raise bad
        out = tuple(items)
    elif spec.kind == "list":
        if not isinstance(value, list) or not value:
            raise lines.error(at, f"{key} must be a non-empty list")
        out = value
    else:  # pragma: no cover - a KeySpec with an unknown kind is a programming error
        raise ValueError(spec.kind)
    values = out if isinstance(out, tuple) else (out,)
    if spec.choices is not None:
        for v in values:
            if v not in spec.choices:
                raise lines.error(at, f"{key}: {v!r} is not one of {', '.join(spec.choices)}{_suggest(v, spec.choices)}")
    if spec.minimum is not None and spec.kind in ("int", "float", "floats"):
        for v in values:
            if v < spec.minimum:
                raise lines.error(at, f"{key} must be >= {spec.minimum:g}, got {v:g}")
    return out


def _suggest(word: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def current_key(key: Any, specs: dict[str, KeySpec], old_keys: dict[str, str]) -> Any:
    """The key's current spelling (the long flag name): old names and underscores map to it."""
    if key in specs or not isinstance(key, str):
        return key
    if key in old_keys:
        return old_keys[key]
    dashed = key.replace("_", "-")
    return dashed if dashed in specs else key


def _read_mapping(
    raw: Any, specs: dict[str, KeySpec], at: tuple, lines: _Lines, what: str, old_keys: dict[str, str] | None = None
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise lines.error(at, f"{what} must be a mapping of keys to values, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = current_key(raw_key, specs, old_keys or {})
        if key != raw_key:
            line = lines.lines.get(at + (raw_key,), 1)
            deprecation_note(repr(raw_key), repr(key), where=f"{lines.path}:{line}: key ")
            if key in raw:
                raise lines.error(at + (raw_key,), f"{raw_key!r} and {key!r} are the same key; keep {key!r}")
        if key not in specs:
            known = ", ".join(specs)
            raise lines.error(at + (key,), f"unknown key {key!r} in {what}{_suggest(key, specs)}; known keys: {known}")
        if value is None and not specs[key].required:
            continue
        out[key] = _coerce(value, specs[key], at + (raw_key,), lines)
    for key, spec in specs.items():
        if key not in out:
            if spec.required:
                raise lines.error(at, f"{what} lacks the required key {key!r}")
            if spec.default is not None:
                out[key] = spec.default
    return out


def _resolve_file(spec: str, builtin: bool, base: Path, at: tuple, lines: _Lines, what: str) -> str:
    if builtin:
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise lines.error(at, f"{what} {spec!r} is not built in and no file {path} exists")
    return str(path)


def _parse_gate(raw: Any, at: tuple, lines: _Lines) -> Gate:
    if isinstance(raw, str):
        try:
            return parse_gate_string(raw)
        except GateSyntaxError as e:
            raise lines.error(at, str(e)) from None
    if isinstance(raw, dict):
        g = _read_mapping(raw, GATE_KEYS, at, lines, "a gate")
        if "attack" in g and "method" in g:
            raise lines.error(at, "a gate names either an attack or a bound method, not both")
        return Gate(g["metric"], g["op"], g["value"], g.get("eps"), g.get("attack", g.get("method")))
    raise lines.error(at, f"a gate must be a string such as 'robust_accuracy >= 0.6 at eps=0.1' or a mapping, got {raw!r}")


def _check_gate(gate: Gate, ctype: CheckType, options: dict, at: tuple, lines: _Lines) -> Gate:
    """Validate a gate against what its check measures; fill in the eps when the check has one."""
    name = gate.metric
    if gate.is_flag:
        if name in ctype.flags:
            return gate
        if name in NOT_AVAILABLE:
            raise lines.error(at, NOT_AVAILABLE[name])
        if name in ctype.metrics:
            raise lines.error(at, f"gate {name!r} needs a comparison, e.g. '{name} >= 0.5'")
        known = [*ctype.metrics, *ctype.flags]
        raise lines.error(at, f"check type {ctype.name!r} has no flag gate {name!r}{_suggest(name, known)}; metrics: {', '.join(ctype.metrics)}")
    if name not in ctype.metrics:
        if name in ctype.flags:
            raise lines.error(at, f"{name!r} is a flag gate: write it alone, without a comparison")
        raise lines.error(
            at, f"check type {ctype.name!r} does not measure {name!r}{_suggest(name, ctype.metrics)}; metrics: {', '.join(ctype.metrics)}"
        )
    spec = ctype.metrics[name]
    eps_values = ctype.eps_of(options)
    eps = gate.eps
    if spec.per_eps:
        if eps is None:
            if len(eps_values) != 1:
                listed = ", ".join(f"{e:g}" for e in eps_values)
                raise lines.error(at, f"gate '{gate.text}' must say at which eps (the check runs eps {listed}), e.g. '... at eps={eps_values[0]:g}'")
            eps = eps_values[0]
        elif not any(math.isclose(eps, e, rel_tol=1e-9, abs_tol=1e-12) for e in eps_values):
            listed = ", ".join(f"{e:g}" for e in eps_values)
            raise lines.error(at, f"gate '{gate.text}' asks for eps={eps:g}, which the check does not run (its eps: {listed})")
    elif eps is not None:
        raise lines.error(at, f"{name!r} is not measured per eps; drop 'at eps={eps:g}' from the gate")
    if gate.attack is not None:
        if not spec.per_attack:
            raise lines.error(at, f"{name!r} is not measured per attack or method; drop 'attack'/'method' from the gate")
        attacks = ctype.attacks_of(options)
        if gate.attack not in attacks:
            raise lines.error(at, f"gate names {gate.attack!r}, which the check does not run (it runs: {', '.join(attacks)})")
    return Gate(gate.metric, gate.op, gate.value, eps, gate.attack)


def _parse_check(raw: Any, index: int, lines: _Lines) -> CheckConfig:
    at = ("checks", index)
    if not isinstance(raw, dict):
        raise lines.error(at, f"checks[{index}] must be a mapping with keys type, gates and the type's options")
    kind = raw.get("type")
    if kind is None:
        raise lines.error(at, f"checks[{index}] lacks the required key 'type' (one of {', '.join(CHECK_TYPES)})")
    if not isinstance(kind, str):
        raise lines.error(at + ("type",), f"checks[{index}].type must be a string, got {kind!r}")
    if kind in NOT_AVAILABLE:
        raise lines.error(at + ("type",), NOT_AVAILABLE[kind])
    if kind not in CHECK_TYPES:
        raise lines.error(at + ("type",), f"unknown check type {kind!r}{_suggest(kind, CHECK_TYPES)}; known: {', '.join(CHECK_TYPES)}")
    ctype = CHECK_TYPES[kind]
    specs = {**CHECK_COMMON_KEYS, **ctype.keys}
    values = _read_mapping(raw, specs, at, lines, f"checks[{index}] (type {kind})", ctype.old_keys)
    options = {k: v for k, v in values.items() if k not in CHECK_COMMON_KEYS}
    problem = ctype.validate(options)
    if problem is not None:
        key, message = problem
        raw_key = next((k for k in raw if current_key(k, specs, ctype.old_keys) == key), None)
        raise lines.error(at + (raw_key,) if raw_key is not None else at, f"checks[{index}].{key}: {message}")
    gates = []
    for j, g in enumerate(values["gates"]):
        gate_at = at + ("gates", j)
        gates.append(_check_gate(_parse_gate(g, gate_at, lines), ctype, options, gate_at, lines))
    name = values.get("name") or f"{kind}-{index + 1}"
    return CheckConfig(name, kind, options, gates, lines.lines.get(at, 1))


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and validate a `robust eval` config; raises InputError naming file, line and key."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise InputError(f"config {path} is not a regular file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read config {path}: {e}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{path}{where}: not valid YAML ({problem})") from None
    lines = _Lines(path, root)
    if raw is None:
        raise lines.error((), "the config is empty; it needs at least 'model' and 'checks'")
    top = _read_mapping(raw, TOP_KEYS, (), lines, "the config")
    base = path.parent
    model = _resolve_file(top["model"], top["model"] in ARCHS, base, ("model",), lines, "model")
    data = top.get("data")
    if data is not None:
        data = _resolve_file(data, data in BUILTIN_DATASETS, base, ("data",), lines, "data")
    if ("mean" in top) != ("std" in top):
        raise lines.error(("mean",) if "mean" in top else ("std",), "mean and std go together; give both (one value per channel)")
    checks = [_parse_check(c, i, lines) for i, c in enumerate(top["checks"])]
    seen: dict[str, int] = {}
    for c in checks:
        if c.name in seen:
            raise InputError(f"{path}:{c.line}: check name {c.name!r} repeats the one on line {seen[c.name]}; names must be unique")
        seen[c.name] = c.line
    return EvalConfig(
        path=path,
        name=top.get("name") or path.stem,
        model=model,
        data=data,
        n=top.get("n"),
        seed=top["seed"],
        device=top["device"],
        batch_size=top["batch-size"],
        arch=top.get("arch"),
        allow_pickle=top["allow-pickle"],
        mean=top.get("mean", ()),
        std=top.get("std", ()),
        checks=checks,
        model_line=lines.lines.get(("model",), 1),
        classes=top.get("classes"),
        pixel_scale=top.get("pixel-scale"),
    )
