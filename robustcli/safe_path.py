"""Keep the current folder off the import path of `python -m robustcli` and its launcher.

`python -m` puts the current folder first on `sys.path`, so a `.py` file that sits next to a
downloaded model (say `numpy.py` or `yaml.py`) would be imported in place of the real module and
run. The CLI never needs the current folder as an import root (the `robust` script does not have
it either). `PYTHONPATH` entries stay: those are the user's explicit choice, e.g. for
`--arch mymodule:factory`. Only `os` and `sys` are imported here; both are loaded at start-up,
before the current folder is on the path.
"""

import os
import sys


def drop_current_folder() -> None:
    """Remove the entry `python -m` put first on `sys.path`, if it is the current folder."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
