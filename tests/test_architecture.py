"""The layering of docs/architecture.md, enforced: each package imports only what its rule allows.

Every import in every module is read from the source (top-level and inside functions alike), so a
lazy ``from fleetwarden.app import ...`` inside a detector is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fleetwarden"

# package (first dotted level under fleetwarden) -> the packages of ours it may import
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "detection": {"core", "detection"},
    "sources": {"core", "sources"},
    "control": {"core", "control"},
    "store": {"core", "store", "config"},
    "bus": {"core", "bus", "sources"},
    "simulate": {"core", "simulate", "sources"},
    "config": {"core"},
    "app": {"core", "detection", "sources", "control", "store", "bus", "simulate", "config", "app"},
    # faces: parse, call a service, render
    "cli": {"core", "app", "report", "cli", "api", "web"},  # api: `serve`; web: `demo --serve`
    "api": {"core", "app", "report", "api"},
    "web": {"core", "app", "report", "api", "web"},
    "report": {"core", "report"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Third-party and standard modules a pure layer must not touch: I/O, terminals, processes,
# databases, brokers, the garbage collector, pickling, the clock.
IMPURE = {
    "alembic",
    "asyncio",
    "gc",
    "joblib",
    "nats",
    "os",
    "paho",
    "pathlib",
    "pickle",
    "psycopg",
    "rich",
    "shutil",
    "socket",
    "sqlalchemy",
    "sqlite3",
    "subprocess",
    "tempfile",
    "time",
    "typer",
    "urllib.request",
}
PURE_LAYERS = {"core", "detection"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``source``."""
    out: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def violations(source: str, module: str) -> list[str]:
    """What ``module`` (e.g. ``fleetwarden.detection.engine``) imports against its layer's rule."""
    layer = _layer(module)
    allowed = ALLOWED.get(layer)
    if allowed is None:
        return [f"{module}: package {layer!r} has no rule in docs/architecture.md"]
    bad = []
    for line, name in imports_of(source, module):
        if name.startswith("fleetwarden."):
            target = name.split(".")[1]
            if target != layer and target not in allowed:
                bad.append(f"{module}:{line} imports {name} ({layer} may import {sorted(allowed)})")
        elif layer in PURE_LAYERS and any(name == m or name.startswith(m + ".") for m in IMPURE):
            bad.append(f"{module}:{line} imports {name}: {layer} is pure (no I/O, clock or process settings)")
    return bad


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def test_every_module_keeps_its_layer_rule():
    found = []
    for module, path in _modules():
        found += violations(path.read_text(), module)
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("fleetwarden.detection.engine", "def f():\n    from fleetwarden.app.session import DetectionSession\n"),
        ("fleetwarden.detection.analytics.beacon", "from fleetwarden.store import open_store\n"),
        ("fleetwarden.core.events", "import sqlalchemy\n"),
        ("fleetwarden.detection.engine", "import gc\n"),
        ("fleetwarden.core.findings", "from ..sources import read_events\n"),
        ("fleetwarden.sources.pcap", "from fleetwarden.detection.state import stable_hash\n"),
        ("fleetwarden.report", "from fleetwarden.store import open_store\n"),
    ],
)
def test_a_forbidden_import_is_caught(module, source):
    assert violations(source, module)


def test_every_package_is_in_the_architecture_document():
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    for module, _path in _modules():
        layer = _layer(module)
        if layer in ("__init__", "__main__"):
            continue
        assert f"`{layer}" in doc, f"docs/architecture.md does not describe {layer}"
