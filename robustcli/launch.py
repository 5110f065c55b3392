"""`python -m robustcli.launch [torchrun options] -- COMMAND [options]`: torchrun for robust.

`torchrun ... -m robustcli attack --n 500` fails before any process starts: torchrun's argument
parser (Python's argparse) also reads the options after the module and rejects `--n` as an
ambiguous abbreviation of its own `--nnodes` / `--nproc-per-node` (likewise `--start`, `--log`,
`--max`, ...). This launcher lets torchrun's parser see only the options before `--` and hands
everything after it to robust unread, then starts the workers through torchrun's own `run`,
and exits with the workers' exit code (torchrun itself exits 1 on any failure).
"""

from __future__ import annotations

from robustcli.safe_path import drop_current_folder

if __name__ == "__main__":  # run as `python -m`, not imported
    drop_current_folder()

import argparse  # noqa: E402 - after the sys.path fix
import sys  # noqa: E402

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

USAGE = "usage: python -m robustcli.launch [torchrun options] -- COMMAND [options]"


def parse(argv: list[str]) -> argparse.Namespace:
    """torchrun's options from before `--`, with `-m robustcli` and the rest as its arguments."""
    if "--" not in argv:
        raise SystemExit(f"{USAGE}\n(put `--` between torchrun's options and robust's command)")
    cut = argv.index("--")
    args = get_args_parser().parse_args([*argv[:cut], "-m", "robustcli"])
    args.training_script_args = argv[cut + 1 :]
    return args


def main(argv: list[str] | None = None) -> None:
    """Exit with the first failed rank's exit code (2: bad input, 1: a check failed), like robust does."""
    try:
        run(parse(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"robust: rank {rank} exited with code {failure.exitcode}", file=sys.stderr)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)


if __name__ == "__main__":
    main()
