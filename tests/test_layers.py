"""The import contracts of pyproject.toml (``[tool.importlinter]``: STYLE.md's layers, no cycle in any
package, a model-blind engine, methods independent of each other), checked with import-linter's
``lint-imports`` on the package the tests import. Imports inside functions count (grimp reads them all)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mimkit

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(mimkit.__file__).parent


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with this repository's contracts on the ``mimkit`` package under ``src``."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(src), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],  # the contracts: ROOT's pyproject.toml
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_every_contract_is_kept():
    result = lint_imports(PACKAGE.parent)
    report = result.stdout[result.stdout.find("Contracts") :]
    assert result.returncode == 0, f"an import breaks the layers:\n{report}\n{result.stderr}"
    assert "0 broken" in report


def test_an_upward_import_inside_a_function_is_named(tmp_path):
    """The checker is not blind to a hidden import: a model module that imports the pretraining
    orchestration inside a function breaks the contracts, and the report names the import and its line."""
    copy = tmp_path / "mimkit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    layers = copy / "models" / "layers.py"
    hidden = "\n\ndef _climb():\n    from mimkit.pretrain import pretrain\n\n    return pretrain\n"
    text = layers.read_text() + hidden
    layers.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "mimkit.pretrain" in row)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"mimkit.models.layers -> mimkit.pretrain (l.{line})" in result.stdout, result.stdout
