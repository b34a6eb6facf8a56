"""The floors of docs/architecture.md hold: import-linter's layers contract (pyproject.toml) passes, with imports
inside functions counted; only tracking/ and the pyfunc wrapper import MLflow; no command sets the tracking URI for
another process."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "src" / "medexp"


def test_the_layers_contract_is_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), "import-linter is missing: install the dev extras (make install)"
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_tracking_and_the_pyfunc_wrapper_import_mlflow():
    importers = sorted(str(path.relative_to(SOURCE)) for path in SOURCE.rglob("*.py")
                       if any(name == "mlflow" or name.startswith("mlflow.") for name in imported_modules(path)))
    assert importers and all(name.startswith("tracking/") or name == "export/pyfunc.py" for name in importers), importers


def test_no_command_sets_the_tracking_uri_for_another():
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        assert 'environ["MLFLOW_TRACKING_URI"] =' not in text and "set_tracking_uri(" not in text.replace(
            "``mlflow.set_tracking_uri``", ""), path
