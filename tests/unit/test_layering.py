"""Architecture rules that a refactor could quietly break."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_never_imports_celery() -> None:
    """The library runs without a broker; only workers/ knows Celery."""
    code = (
        "import sys, pipeline.run, pipeline.stages, pipeline.cli, pipeline.synth, pipeline.stitch;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'celery', 'kombu', 'workers'});"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == ""


def test_environment_is_read_in_one_place() -> None:
    """os.environ and os.getenv appear only in the settings module."""
    offenders = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name == "settings.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def _imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Every absolute module an `import` or `from ... import` names, at any depth of the tree."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def test_local_engine_imports_nothing_from_the_library() -> None:
    """rime_local stands in for Rime's cloud: it must not lean on the client it is checking."""
    offenders = []
    modules = sorted((ROOT / "rime_local").rglob("*.py"))
    assert modules, "rime_local has no modules"
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module, line in _imported_modules(tree):
            if module.split(".")[0] in {"pipeline", "workers"}:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offenders == []
