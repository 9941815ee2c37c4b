"""client/ speaks only HTTP: it imports none of the server's packages, so a notebook needs none of them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = {"api", "worker", "store", "core", "cli"}


def _imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_client_package_imports_no_server_code() -> None:
    files = sorted((ROOT / "client").glob("*.py"))
    assert files
    offenders = {path.name: sorted(_imported_top_levels(path) & SERVER_PACKAGES) for path in files}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_cli_client_verbs_import_only_the_client() -> None:
    for name in ("connection.py", "jobs.py", "uploads.py", "render.py", "watch.py"):
        assert _imported_top_levels(ROOT / "cli" / name) & SERVER_PACKAGES <= {"cli"}, name


def test_core_imports_no_host_package() -> None:
    """The engine is a library its hosts call (the worker, `distill run`): it never imports one of them."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & (SERVER_PACKAGES - {"core"}))
        for path in sorted((ROOT / "core").rglob("*.py"))
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}
