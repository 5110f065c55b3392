"""Shared Click plumbing: the command class, option groups, YAML configs, variadic options.

Every command is a `RobustCommand`: `--config FILE.yaml` supplies defaults for any option (keys are
option names, dashes or underscores), flags on the command line win, and options declared with
`cls=MultiOption` accept several values after one flag (`--eps 0.1 0.2 0.3`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from robustcli.errors import CheckFailed, InputError


class MultiOption(click.Option):
    """An option that takes one or more values after a single flag; repeated flags also work."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)


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


class RobustCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_options(self.params, args))

    def invoke(self, ctx: click.Context) -> Any:
        return _user_errors(super().invoke, ctx)


class RobustGroup(click.Group):
    command_class = RobustCommand

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Like Click's, but usage errors print one line (no usage block) and Ctrl-C exits 130."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise click.BadParameter(f"{path} is not valid YAML{where}", param_hint="--config") from None
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must be a mapping of option names to values", param_hint="--config")
    return data


def _apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    data = read_config(Path(value))
    # Keys are the long option names (`attack`, `eps-l2`, `json`), with dashes or underscores.
    params: dict[str, click.Parameter] = {}
    for p in ctx.command.params:
        if p.name and p.name != "config":
            for opt in getattr(p, "opts", []):
                if opt.startswith("--"):
                    params[opt[2:].replace("-", "_")] = p
            params.setdefault(p.name, p)
    defaults: dict[str, Any] = {}
    for key, v in data.items():
        name = str(key).replace("-", "_")
        if name not in params:
            known = ", ".join(sorted({o[2:] for p in params.values() for o in p.opts if o.startswith("--")}))
            raise click.BadParameter(f"unknown key {key!r} in {value}; known keys: {known}", param_hint="--config")
        p = params[name]
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
        help="YAML file of option values (keys are option names); command-line flags override it.",
    )(f)


def _stack(*decorators: Callable) -> Callable[[Callable], Callable]:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


model_options = _stack(
    click.option("--model", "model", required=True, help="Built-in model name (see `robust models`) or a model file."),
    click.option("--arch", default=None, help="Architecture for a state dict: built-in name or package.module:factory."),
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

data_options = _stack(
    click.option("--data", default=None, help="mnist, digits, or a .npz/.pt/.safetensors file or image folder."),
    click.option("--n", type=int, default=None, help="Evaluate the first n points of the test split (default all)."),
    data_format_options,
)

runtime_options = _stack(
    click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
    click.option("--batch-size", type=int, default=256, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
)

json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write a JSON report here.")
