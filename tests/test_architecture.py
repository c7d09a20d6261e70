"""The intended layers (pyproject.toml `[tool.importlinter]`) hold: `lint-imports` passes.

Running it here puts the import contracts into the README's test command, so `.ci/run`
checks them with the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    """The `lint-imports` installed next to this interpreter (the venv's)."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"import-linter is not installed next to {sys.executable}"
    return str(exe)


def test_import_contracts_are_kept() -> None:
    env = dict(os.environ)
    # The checked code is this checkout's, whatever the venv was installed from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [_lint_imports(), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


# Installed by the `test` extra (or pulled in by it) but not by a plain `pip install .`:
# product code that imported one of these would pass the suite and break for users.
TEST_ONLY = ("click", "yaml", "psutil", "hypothesis", "importlinter", "pytest")

_IMPORT_ALL = """
import importlib, pkgutil, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is a test-only package')

sys.meta_path.insert(0, Refuse())
import connector
for info in pkgutil.walk_packages(connector.__path__, 'connector.'):
    importlib.import_module(info.name)
from connector.cli import app, main  # the console script's entry point
"""


def test_product_modules_import_without_test_only_packages() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    code = f"BLOCKED = {TEST_ONLY!r}\n" + _IMPORT_ALL
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# Each product module imported first, in a fresh `connector` (third-party packages stay
# loaded, so this takes seconds): an import cycle shows only for the module that starts it.
_IMPORT_EACH_FIRST = """
import importlib, pkgutil, sys
import connector
names = [i.name for i in pkgutil.walk_packages(connector.__path__, 'connector.')]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == 'connector' or m.startswith('connector.')]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f'{name}: {type(exc).__name__}: {exc}')
print(len(names))
print('\\n'.join(failed))
"""


def test_every_product_module_imports_when_it_comes_first() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH_FIRST], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, *failures = proc.stdout.strip().split("\n")
    assert int(count) > 50  # the walk found the package's modules
    assert [f for f in failures if f] == []
