"""Architecture rules that a refactor could quietly break."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# The library's layers, lowest first. A module may import its own package, and anything in a
# lower layer; never a layer above it, nor another package of its own layer. Imports under
# TYPE_CHECKING count too: they are a dependency all the same.
LAYERS: list[set[str]] = [
    {
        "pipeline",
        "pipeline.errors",
        "pipeline.files",
        "pipeline.wav",
        "pipeline.g711",
        "pipeline.addresses",
        "pipeline.loudness",
        "pipeline.mp3",
    },
    {
        "pipeline.rime",
        "pipeline.markup",
        "pipeline.storage",
        "pipeline.audio",
        "pipeline.webhook",
        "pipeline.acx",
    },
    {"pipeline.lexicon", "pipeline.options"},
    {
        "pipeline.analysis",
        "pipeline.retry",
        "pipeline.limits",
        "pipeline.segment",
        "pipeline.manifest",
        "pipeline.logs",
        "pipeline.schedules",
    },
    {"pipeline.plan", "pipeline.synth", "pipeline.settings"},
    {"pipeline.stitch", "pipeline.book", "pipeline.store"},
    {
        "pipeline.results",
        "pipeline.captions",
        "pipeline.reach",
        "pipeline.executor",
        "pipeline.cache",
        "pipeline.diff",
        "pipeline.notify",
        "pipeline.deliver",
    },
    {"pipeline.publish", "pipeline.scheduler"},
    {"pipeline.stages"},
    {"pipeline.run", "pipeline.preflight", "pipeline.display", "pipeline.progress"},
    {"pipeline.embedded"},
    {"pipeline.cli"},
]
# Only the command line's entry point may reach the workers (`submit`, `worker`, `cancel`).
CELERY_SIDE = {"celery", "kombu", "workers"}


def _unit(module: str) -> str:
    """The layered unit a module belongs to: its subpackage of pipeline, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(unit: str) -> int:
    for level, units in enumerate(LAYERS):
        if unit in units:
            return level
    raise AssertionError(f"{unit} is in no layer of tests/unit/test_layering.py")


def _pipeline_modules() -> list[tuple[Path, str]]:
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((path, ".".join(parts)))
    return found


def test_no_upward_import_anywhere_in_the_library() -> None:
    """Lower layers never import higher ones, read from the import statements themselves."""
    offenders = []
    for path, module in _pipeline_modules():
        here = _unit(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for imported, line in _imported_modules(tree):
            if imported.split(".")[0] != "pipeline":
                continue
            there = _unit(imported)
            if there != here and _layer(there) >= _layer(here):
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {imported}")
    assert offenders == []


def test_only_the_command_line_reaches_celery() -> None:
    """pipeline/ runs without a broker: no celery, kombu or workers import but in the CLI."""
    offenders = []
    for path, module in _pipeline_modules():
        if module == "pipeline.cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for imported, line in _imported_modules(tree):
            if imported.split(".")[0] in CELERY_SIDE:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert offenders == []


def test_only_the_command_line_reaches_the_service() -> None:
    """`service/` sits above pipeline/ and workers/: neither imports it, but the CLI's `serve`
    and `token` commands."""
    offenders = []
    modules = [(p, m) for p, m in _pipeline_modules() if m != "pipeline.cli"]
    modules += [(p, p.stem) for p in sorted((ROOT / "workers").rglob("*.py"))]
    for path, _module in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for imported, line in _imported_modules(tree):
            if imported.split(".")[0] == "service":
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert offenders == []
    assert sorted((ROOT / "service").rglob("*.py")), "service has no modules"


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


def test_the_limits_package_does_not_import_redis() -> None:
    """`rime-batch render` never needs Redis: only the shared limiter's own modules import it."""
    code = (
        "import sys, pipeline.limits;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'redis');"
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
            # `from pipeline import wav` imports the module pipeline.wav, not just the package.
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                is_module = (ROOT / (name.replace(".", "/") + ".py")).exists() or (
                    ROOT / name.replace(".", "/")
                ).is_dir()
                found.append((name if is_module else node.module, node.lineno))
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
