"""Shared Click plumbing: the command class, the options every command shares, YAML configs.

Every command is a `RobustCommand`: `--config FILE.yaml` supplies defaults for any option (keys are
the long flag names a user types: `attack`, `eps-l2`, `json`), flags on the command line win, and
options declared with `cls=MultiOption` accept several values after one flag (`--eps 0.1 0.2 0.3`).

An option that was renamed keeps answering to its old spellings (`RobustOption(old=...)`): on the
command line and as a config key they still work and print a one-line deprecation note on stderr.
Config keys spelled with underscores (`pgd_steps`) or by the Python name (`attack_names`,
`json_path`) read the same way, with the same note.

Option names avoid being prefixes of torchrun's own options (`--n` is one of `--nnodes`, ...):
torchrun's parser rejects an ambiguous prefix anywhere on its command line, even after
`-m robustcli`, so every option has a name that passes (`--num-points` for `--n`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import click
import yaml
from click.exceptions import NoArgsIsHelpError

from robustcli.core import distributed
from robustcli.errors import CheckFailed, InputError


class RobustOption(click.Option):
    """An option that also answers to its older spellings `old` (each read with a deprecation note)."""

    def __init__(self, *args: Any, old: tuple[str, ...] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.old = tuple(old)

    @property
    def long_names(self) -> list[str]:
        return [o[2:] for o in self.opts if o.startswith("--")]


class MultiOption(RobustOption):
    """An option that takes one or more values after a single flag; repeated flags also work."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)


def deprecation_note(old: str, new: str, where: str = "") -> None:
    """One line on stderr (rank 0 only under torchrun): the old spelling still works, for now."""
    if distributed.is_main():
        click.echo(f"note: {where}{old} is deprecated; write {new} (the old name still works for now)", err=True)


def rename_old_flags(params: list[click.Parameter], args: list[str]) -> list[str]:
    """Rewrite old option spellings (`--train-n 5`, `--train-n=5`) to the current name, with a note."""
    renames = {old: p.opts[0] for p in params if isinstance(p, RobustOption) for old in p.old}
    out = []
    for tok in args:
        if tok == "--":
            out.extend(args[len(out) :])
            break
        flag, eq, value = tok.partition("=")
        if flag in renames:
            deprecation_note(flag, renames[flag])
            tok = renames[flag] + eq + value
        out.append(tok)
    return out


def _looks_like_value(token: str) -> bool:
    if not token.startswith("-"):
        return True
    try:
        float(token)  # a negative number is a value, not a flag
        return True
    except ValueError:
        return False


def expand_multi_options(params: list[click.Parameter], args: list[str]) -> list[str]:
    """Rewrite `--eps a b c` as `--eps a --eps b --eps c` for MultiOption flags."""
    flags = {opt for p in params if isinstance(p, MultiOption) for opt in p.opts}
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        out.append(tok)
        i += 1
        if tok == "--":
            out.extend(args[i:])
            break
        if tok in flags:
            first = True
            while i < len(args) and _looks_like_value(args[i]):
                if not first:
                    out.append(tok)
                out.append(args[i])
                first = False
                i += 1
    return out


def _user_errors(invoke: Callable[[click.Context], Any], ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        ctx.exit(2)
    except CheckFailed as e:
        click.echo(f"check failed: {e}", err=True)
        ctx.exit(1)
    except SystemExit as e:
        # No command calls sys.exit itself (exits go through ctx.exit), so this came from model or
        # factory code; passing it on could turn a failed run into exit code 0.
        click.echo(f"error: code run by this command called sys.exit({e.code!r}); the run did not finish", err=True)
        ctx.exit(2)


class SelfCheckedFloat(click.Option):
    """A float option whose command refuses nan/inf itself with a more specific message."""


def check_finite_floats(ctx: click.Context) -> None:
    """No float option takes nan or inf: Click's FLOAT type accepts them, and a NaN budget or
    confidence turns every comparison false, which reads as a result (e.g. "95% robust")."""
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or not isinstance(p.type, click.types.FloatParamType):
            continue
        if isinstance(p, SelfCheckedFloat):
            continue
        value = ctx.params.get(p.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{p.opts[-1]} must be a finite number, got {v}")


class RobustCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_options(self.params, rename_old_flags(self.params, args)))

    def invoke(self, ctx: click.Context) -> Any:
        def checked(c: click.Context) -> Any:
            check_finite_floats(c)
            return click.Command.invoke(self, c)

        return _user_errors(checked, ctx)


class RobustGroup(click.Group):
    command_class = RobustCommand

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Like Click's, but usage errors print one line (no usage block), Ctrl-C exits 130, and no
        command at all prints the help and exits 0."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:  # bare `robust` (or `robust analyze`): the help, a normal exit
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        return _user_errors(super().invoke, ctx)


def read_config(path: Path) -> dict[str, Any]:
    if path.exists() and not path.is_file():
        raise click.BadParameter(f"{path} is not a regular file", param_hint="--config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise click.BadParameter(f"{path} is not valid YAML{where}", param_hint="--config") from None
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--config") from None
    except (UnicodeDecodeError, ValueError):
        raise click.BadParameter(f"{path} is not a text (YAML) file", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must be a mapping of option names to values", param_hint="--config")
    return data


def config_keys(params: list[click.Parameter]) -> tuple[dict[str, click.Parameter], dict[str, tuple[str, click.Parameter]]]:
    """Config keys of a command: {long flag name: param}, and {old spelling: (current name, param)}.

    Old spellings: an option's `old` names, the Python name (`attack_names`), underscores for dashes.
    """
    current: dict[str, click.Parameter] = {}
    for p in params:
        if p.name and p.name != "config" and isinstance(p, click.Option):
            for opt in p.opts:
                if opt.startswith("--"):
                    current.setdefault(opt[2:], p)
    old: dict[str, tuple[str, click.Parameter]] = {}
    for key, p in current.items():
        name = next(o[2:] for o in p.opts if o.startswith("--"))
        spellings = [key.replace("-", "_"), p.name or "", (p.name or "").replace("_", "-")]
        spellings += [o[2:] for o in getattr(p, "old", ())] + [o[2:].replace("-", "_") for o in getattr(p, "old", ())]
        for s in spellings:
            if s and s not in current:
                old.setdefault(s, (name, p))
    return current, old


def _apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    data = read_config(Path(value))
    current, old = config_keys(ctx.command.params)
    defaults: dict[str, Any] = {}
    for key, v in data.items():
        key = str(key)
        if key in current:
            p = current[key]
        elif key in old:
            name, p = old[key]
            deprecation_note(repr(key), repr(name), where=f"{value}: config key ")
        else:
            known = ", ".join(sorted(current))
            raise click.BadParameter(f"unknown key {key!r} in {value}; known keys: {known}", param_hint="--config")
        if getattr(p, "multiple", False) and not isinstance(v, (list, tuple)):
            v = [v]
        defaults[p.name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_apply_config,
        help="YAML file of option values (keys are the long flag names: attack, eps-l2, json); flags override it.",
    )(f)


def _stack(*decorators: Callable) -> Callable[[Callable], Callable]:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")(f)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")(f)


def batch_size_option(default: int = 256) -> Callable[[Callable], Callable]:
    return click.option("--batch-size", type=int, default=default, show_default=True)


def data_option(
    default: str | None = None, required: bool = False, help: str = "mnist, digits, or a .npz/.pt/.safetensors file or image folder."
) -> Callable[[Callable], Callable]:
    # No `default=None`: Click 8.2+ counts an explicit None default as a value and skips `required`.
    kind = {"default": default, "show_default": True} if default is not None else {}
    return click.option("--data", required=required, help=help, **kind)


def points_option(
    default: int | None = None,
    help: str = "Evaluate the first n points of the test split (default all).",
    old: tuple[str, ...] = (),
    name: str = "n",
) -> Callable[[Callable], Callable]:
    """How many test points: `--num-points` (works under torchrun) or `--n` (a prefix of torchrun's `--nnodes`)."""
    return click.option(
        "--num-points", "--n", name, cls=RobustOption, old=old, type=int, default=default,
        show_default=default is not None, help=help,
    )  # fmt: skip


def train_points_option(name: str = "n_train") -> Callable[[Callable], Callable]:
    """How many training points: `--n-train` in every trainer (`--train-n` is its old name)."""
    return click.option(
        "--n-train", "--num-train-points", name, cls=RobustOption, old=("--train-n",), type=int, default=None,
        help="Train on the first n training points only (quick runs).",
    )  # fmt: skip


def eps_option(
    help: str, default: float | None = None, multiple: bool = False, required: bool = False
) -> Callable[[Callable], Callable]:
    """`--eps`: the budget(s); validated by the command's request (`robustcli.requests.check_eps`)."""
    # No `default=None`: Click 8.2+ counts an explicit None default as a value and skips `required`.
    kind = {"cls": MultiOption} if multiple else ({"default": default, "show_default": True} if default is not None else {})
    return click.option("--eps", type=float, required=required, help=help, **kind)


model_options = _stack(
    click.option("--model", "model", required=True, help="Built-in model name (see `robust models`) or a model file."),
    click.option(
        "--arch",
        default=None,
        help="Architecture for a state dict: a built-in name, path/to/file.py:factory or package.module:factory.",
    ),
    click.option("--mean", cls=MultiOption, type=float, help="Per-channel mean to normalise inputs inside the model."),
    click.option("--std", cls=MultiOption, type=float, help="Per-channel std to normalise inputs inside the model."),
    click.option(
        "--allow-pickle",
        is_flag=True,
        help="Load a pickled whole model (can run arbitrary code: only for files you trust).",
    ),
)

DATA_FORMAT_KEY = "robustcli.data_format"


def _store_data_format(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    fmt = dict(ctx.meta.get(DATA_FORMAT_KEY, {}))
    if param.name == "classes" and value is not None:
        names = tuple(c.strip() for c in str(value).split(","))
        if not all(names):
            raise click.BadParameter("list class folder names separated by commas, e.g. cat,dog,bird", param_hint="--classes")
        fmt["classes"] = names
    elif param.name == "pixel_scale" and value is not None:
        fmt["pixel_scale"] = value
    ctx.meta[DATA_FORMAT_KEY] = fmt


def data_format(ctx: click.Context | None = None):
    """The `--classes` / `--pixel-scale` of the running command as a `DataFormat`."""
    from robustcli.data import DataFormat

    ctx = ctx or click.get_current_context(silent=True)
    return DataFormat(**(ctx.meta.get(DATA_FORMAT_KEY, {}) if ctx is not None else {}))


data_format_options = _stack(
    click.option(
        "--classes", default=None, expose_value=False, callback=_store_data_format,
        help="Image folders: class folder names in label order (a,b,c); default: numeric names are labels, else sorted.",
    ),
    click.option(
        "--pixel-scale", type=float, default=None, expose_value=False, callback=_store_data_format,
        help="Value of a white pixel in integer images (255 for 8-bit, 1 for 0/1); default: from the dtype.",
    ),
)  # fmt: skip

data_options = _stack(data_option(), points_option(), data_format_options)

runtime_options = _stack(device_option, batch_size_option(), seed_option)

json_option = click.option(
    "--json", "json_path", cls=RobustOption, old=("--json-path",), type=click.Path(dir_okay=False), help="Write a JSON report here."
)
