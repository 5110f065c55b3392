"""scripts/docs_figures.py: every registered figure has its block in its document and a runnable
command, a script figure runs the script and shows its stdout, and a refusal figure shows the
error line only when the command exits with the expected code. The figures themselves are not
run here (they train models for minutes)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_docs_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "scripts" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_figures"] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


df = _load_docs_figures()


def test_every_figure_has_one_block_in_its_document_and_a_command_that_exists():
    ids = [f.id for f in df.FIGURES]
    assert len(ids) == len(set(ids))
    for figure in df.FIGURES:
        text = (ROOT / figure.doc).read_text()
        assert len(df.block_pattern(figure.id).findall(text)) == 1, f"{figure.doc}: block of {figure.id}"
        if figure.script is not None:
            assert (ROOT / figure.script).is_file(), figure.script
            assert figure.command.startswith(f"python {figure.script} ")
        else:
            assert figure.command.startswith("robust ")


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bench.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_script_figure_shows_the_scripts_stdout_not_its_progress(tmp_path):
    script = _script(tmp_path, """
        import sys
        print("epoch 1 loss 0.3", file=sys.stderr)
        print("model  acc   ")
        print("ramp   " + sys.argv[1])
    """)
    figure = df.Figure("bench", "docs/defenses.md", ("--epochs",), script=str(script))
    assert figure.command == f"python {script} --epochs"
    assert df.run(figure, tmp_path) == "model  acc\nramp   --epochs"


def test_a_figure_whose_command_fails_is_an_error_not_a_figure(tmp_path):
    script = _script(tmp_path, "import sys; print('half a table'); sys.exit(2)")
    with pytest.raises(RuntimeError, match="exited 2"):
        df.run(df.Figure("bench", "docs/defenses.md", (), script=str(script)), tmp_path)


def test_a_refusal_figure_shows_the_error_line_and_needs_the_expected_exit_code(tmp_path):
    refusal = _script(tmp_path, "import sys; print('error: too few inputs; use more', file=sys.stderr); sys.exit(2)")
    figure = df.Figure("refusal", "docs/defenses.md", (), script=str(refusal), expect_exit=2)
    assert df.run(figure, tmp_path) == "error: too few inputs; use more"
    success = tmp_path / "ok.py"
    success.write_text("print('a table')")
    with pytest.raises(RuntimeError, match="exited 0, not 2"):
        df.run(df.Figure("refusal", "docs/defenses.md", (), script=str(success), expect_exit=2), tmp_path)


def test_write_figure_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- figure:a -->\nold a\n<!-- /figure:a -->\nmiddle\n<!-- figure:b -->\nold b\n<!-- /figure:b -->\n")
    figure = df.Figure("a", str(doc), ("models",))
    df.write_figure(figure, "new table")
    assert doc.read_text() == (
        "intro\n<!-- figure:a -->\n```\n$ robust models\nnew table\n```\n<!-- /figure:a -->\nmiddle\n"
        "<!-- figure:b -->\nold b\n<!-- /figure:b -->\n"
    )
    with pytest.raises(RuntimeError, match="no <!-- figure:c -->"):
        df.write_figure(df.Figure("c", str(doc), ("models",)), "x")
