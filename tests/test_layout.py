"""Package layout rules of DESIGN.md: the library imports nothing from the top-level folders, and not TFDS."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "editreward_jax"
TOP_LEVEL = ("data", "convert", "launch", "configs", "scripts")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
  """(line, absolute module name) of every import statement, nested ones included; relative imports are skipped."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.append((node.lineno, node.module))
  return found


def top_level_imports(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  return [f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in imported_modules(tree)
          if name.split(".")[0] in TOP_LEVEL]


def test_library_imports_no_top_level_folder():
  files = sorted(LIBRARY.rglob("*.py"))
  assert files, f"no sources under {LIBRARY}"
  offending = [hit for path in files for hit in top_level_imports(path)]
  assert not offending, "editreward_jax/ must not import the top-level folders:\n" + "\n".join(offending)


@pytest.mark.parametrize("source, expected", [
    ("import data.schema\n", ["imports data.schema"]),
    ("def f():\n  from convert import from_hf\n", ["imports convert"]),
    ("from configs.presets import TINY\n", ["imports configs.presets"]),
    ("import dataclasses\nfrom editreward_jax import schema\nfrom . import pairs\n", []),
])
def test_checker_catches_planted_imports(source, expected):
  hits = [name for _, name in imported_modules(ast.parse(source)) if name.split(".")[0] in TOP_LEVEL]
  assert [f"imports {name}" for name in hits] == expected


def test_core_modules_load_without_tensorflow_datasets():
  code = ("import sys\n"
          "import editreward_jax.pipeline, editreward_jax.scoring, editreward_jax.row_checks\n"
          "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'data'))\n"
          "assert not loaded, loaded\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]


def test_data_schema_reexports_the_library_schema():
  import data
  from data import schema as data_schema
  from editreward_jax import schema
  assert data.DataError is data_schema.DataError is schema.DataError
  assert data_schema.row_error is schema.row_error and data_schema.COLUMNS is schema.COLUMNS
