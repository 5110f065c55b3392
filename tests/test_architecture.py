"""The package layout and the layering rule (core <- engines <- CLI), checked on the installed layout.

The engine folders sit at the top of the repository and install as `robustcli.attacks`, ...
(setuptools package-dir), so import-linter runs on a copy of the tree arranged as the wheel
arranges it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]


def _installed_layout(dest: Path) -> Path:
    """Copies the package as the wheel lays it out: robustcli/ with the engine folders inside."""
    site = dest / "site"
    for package in SETUPTOOLS["packages"]:
        src = ROOT / SETUPTOOLS["package-dir"].get(package, package.replace(".", "/"))
        target = site / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, target / f.name)
    return site


def _lint_imports(site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    run = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", run, str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=site, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return _installed_layout(tmp_path_factory.mktemp("layout"))


def test_every_package_folder_is_installed():
    """A folder with an __init__.py that pyproject does not list would be missing from the wheel."""
    listed = {SETUPTOOLS["package-dir"].get(p, p.replace(".", "/")) for p in SETUPTOOLS["packages"]}
    on_disk = {
        str(init.parent.relative_to(ROOT))
        for top in ["robustcli", *SETUPTOOLS["package-dir"].values()]
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk == listed


def test_every_cli_module_is_in_the_top_layer():
    """The layers contract ignores modules it does not name, so each CLI module must be named."""
    layers = CONTRACTS[0]["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    top_level = {p.stem for p in (ROOT / "robustcli").glob("*.py") if p.stem != "__init__"}
    top_level |= {p.parent.name for p in (ROOT / "robustcli").glob("*/__init__.py")}
    assert top_level - named == set()


def test_import_contracts_hold(site):
    result = _lint_imports(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "engine_file, line",
    [
        ("attacks/_upward.py", "from robustcli.report import print_table\n"),
        ("certify/_upward.py", "import robustcli.commands.attack\n"),
        ("core/_upward.py", "from robustcli.attacks import base\n"),
        ("defenses/_rich.py", "import rich.console\n"),
    ],
)
def test_contract_fails_on_a_wrong_import(site, tmp_path, engine_file, line):
    bad = tmp_path / "site"
    shutil.copytree(site, bad)
    (bad / "robustcli" / engine_file).write_text(line)
    result = _lint_imports(bad)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def test_wheel_holds_robustcli_alone(tmp_path):
    # Built from a copy, so the build leaves no build/ folder in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md", "robustcli", *SETUPTOOLS["package-dir"].values()]:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("robustcli-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"robustcli"}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"robustcli/attacks/pgd.py", "robustcli/certify/ibp.py", "robustcli/core/nn.py"} <= names
