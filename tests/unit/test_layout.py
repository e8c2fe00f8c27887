"""The house layout, checked on the source: who may import whom, and modules of one job.

`service/`'s root is the torch-free core; `service/server`, `service/inspect` and `service/batch` are
the applications; `training/` may import only the core. The server mounts the inspect application's
routes, so it alone may import `service.inspect`. `service/cli.py` is the one CLI root and registers
each application's subcommands (inside functions, so `--help` imports little).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPS = ("server", "inspect", "batch", "studio")
MAX_LINES = 330  # "~300 lines at most"; a little slack for a docstring


def _modules(root: str) -> list[Path]:
    return sorted(p for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement in `path`, top level or not."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _where(path: Path) -> str:
    """core | server | inspect | batch | training."""
    rel = path.relative_to(REPO).parts
    if rel[0] == "training":
        return "training"
    return rel[1] if len(rel) > 2 and rel[1] in APPS else "core"


FORBIDDEN = {
    "core": ("torch", "training", "service.server", "service.inspect", "service.batch", "service.studio"),
    "training": ("service.server", "service.inspect", "service.batch", "service.studio"),
    "server": ("torch", "training", "service.batch", "service.studio"),
    "inspect": ("torch", "training", "service.server", "service.batch", "service.studio"),
    "batch": ("torch", "training", "service.server", "service.inspect", "service.studio"),
    # The studio serves the production service (server, and the inspect views it mounts) plus its own
    # routes; its jobs run `manylabel train` in a child process, so it never imports training or torch.
    "studio": ("torch", "training", "service.batch"),
}


@pytest.mark.parametrize(
    "path", _modules("service") + _modules("training"), ids=lambda p: str(p.relative_to(REPO))
)
def test_imports_follow_the_layout(path: Path) -> None:
    where = _where(path)
    if path == REPO / "service" / "cli.py":  # the root registers every application and training
        return
    bad = sorted(
        name
        for name in _imports(path)
        for prefix in FORBIDDEN[where]
        if name == prefix or name.startswith(prefix + ".")
    )
    assert not bad, f"{path.relative_to(REPO)} ({where}) imports {bad}"


@pytest.mark.parametrize(
    "path", _modules("service") + _modules("training"), ids=lambda p: str(p.relative_to(REPO))
)
def test_modules_stay_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: split it along a seam"


def test_the_cli_root_imports_no_application_at_module_level() -> None:
    tree = ast.parse((REPO / "service" / "cli.py").read_text(encoding="utf-8"))
    top = {
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("service", "training"))
    }
    assert top <= {"service.errors"}, top
