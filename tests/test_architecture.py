"""The import rules of docs/architecture-rules.md hold: lint-imports (import-linter) keeps every contract.

Here as well as in `make lint` so that `make test` fails on an import that breaks a rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is a dev dependency (pip install -e '.[dev]')"
    run = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout
