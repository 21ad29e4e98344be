"""The floors of the house, checked: every import under controller/ points down, none
goes round in a circle, and each outside library has its one door.

The imports of every module are read with `ast` (none is executed), lazy ones inside
functions included: a deferred import is still a dependency. The layers below are
written down as the code is today (issue 10 moves them into folders); a new module must be
placed in one, which is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "controller"

# Bottom to top, by folder; a module may import its own layer and the layers below, never
# above. A name ending in "." is a package: every module under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Settings, the error vocabulary and package data: read by every floor.
    ("base", ("controller.config", "controller.errors", "controller.assets")),
    # Pure data and rules: no I/O, no threads, no outside world.
    ("model", ("controller.model", "controller.model.")),
    # The outside world (Kubernetes, Git, SQLite, Prometheus), knowing nothing of passes.
    ("adapters", ("controller.adapters", "controller.adapters.")),
    # One pass for one instance.
    ("reconcile", ("controller.reconcile", "controller.reconcile.")),
    # Long-lived threads and the composition root.
    ("runtime", ("controller.runtime", "controller.runtime.")),
    # HTTP only.
    ("api", ("controller.api", "controller.api.")),
    # Clients of a conductor over HTTP (CLI commands, MCP server, init): see AGENTS_MAY_USE.
    ("agents", ("controller.agents", "controller.agents.")),
    # Entry points: the command line, the gunicorn application and their log format.
    ("top", ("controller", "controller.__main__", "controller.cli", "controller.serving",
             "controller.logs")),
]
PURE_LAYERS = ("base", "model")
# The composition root: only the entry points build it.
ROOT_MODULE = "controller.runtime.controller"
# Modules that still reach the composition root, each naming the issue that removes it.
# Empty since the API talks to runtime/service.py (issue 10): keep it so.
KNOWN_ROOT_USERS: frozenset[str] = frozenset()

PURE_MAY_NOT_IMPORT = frozenset({
    "kubernetes", "urllib3", "git", "sqlite3", "falcon", "gunicorn", "prometheus_client",
    "tenacity", "threading", "socket", "subprocess", "requests"})
# An outside library -> the only modules that may import it.
DOORS: dict[str, frozenset[str]] = {
    "kubernetes": frozenset({"controller.adapters.kube"}),
    "urllib3": frozenset({"controller.adapters.kube"}),
    "git": frozenset({"controller.adapters.sources.git"}),
    # The stores: events, parameter history, the notifier's cursor in the events file.
    "sqlite3": frozenset({"controller.adapters.store.events",
                          "controller.adapters.store.sql",
                          "controller.runtime.notifying"}),
    # PostgreSQL (issue 14): sql.py is the one place that knows the two databases.
    "psycopg": frozenset({"controller.adapters.store.sql"}),
    "psycopg_pool": frozenset({"controller.adapters.store.sql"}),
}
# Known violations, each naming the issue that removes it. Empty: keep it so.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()
# Only times.py writes or reads timestamp text (issue 10: one timestamp module).
TIME_TEXT = re.compile(r"\.(strftime|strptime|isoformat|fromisoformat)\(")


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if not all(p.isidentifier() for p in parts):
            continue  # not importable (assets/gunicorn.conf.py is read as a file)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for each import in the file: a name imported from a
    package is the submodule when there is one (`from controller import planning`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def layer_of(name: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(name == m or (m.endswith(".") and name.startswith(m)) for m in members):
            return i
    raise KeyError(name)


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    out: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges: dict[str, int] = {}
        for target, line in imports(name, path, known):
            edges.setdefault(target, line)
        out[name] = edges
    return out


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for name in modules():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"place these modules in a layer of {__file__}: {unplaced}"


def test_imports_point_down() -> None:
    found = []
    for name, edges in graph().items():
        for target, line in edges.items():
            if not target.startswith("controller") or target not in modules():
                continue
            if layer_of(target) > layer_of(name) and (name, target) not in KNOWN_UPWARD:
                found.append(f"{name}:{line} imports {target} "
                             f"({LAYERS[layer_of(name)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not found, "upward imports:\n" + "\n".join(found)


def test_no_import_cycle() -> None:
    known = modules()
    edges = {name: {t for t in targets if t in known} for name, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_pure_modules_import_nothing_stateful() -> None:
    found = []
    for name, targets in graph().items():
        if LAYERS[layer_of(name)][0] not in PURE_LAYERS:
            continue
        for target, line in targets.items():
            if target.split(".")[0] in PURE_MAY_NOT_IMPORT:
                found.append(f"{name}:{line} imports {target}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("library", sorted(DOORS))
def test_each_outside_library_has_one_door(library: str) -> None:
    found = [f"{name}:{line}" for name, targets in graph().items()
             for target, line in targets.items()
             if target.split(".")[0] == library and name not in DOORS[library]]
    assert not found, f"{library} imported outside {sorted(DOORS[library])}: {found}"


def test_only_the_api_imports_falcon_and_gunicorn() -> None:
    found = [f"{name}:{line} imports {target}" for name, targets in graph().items()
             for target, line in targets.items()
             if target.split(".")[0] in ("falcon", "gunicorn")
             and not name.startswith("controller.api") and name != "controller.serving"]
    assert not found, "\n".join(found)


def test_timestamps_have_one_home() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for name, path in modules().items() if name != "controller.model.times"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if TIME_TEXT.search(line)]
    assert not found, "format or parse timestamps in controller/model/times.py:\n" + \
        "\n".join(found)


def test_only_entry_points_build_the_controller() -> None:
    """The API talks to a narrow service, never to the composition root."""
    found = [f"{name}:{line}" for name, targets in graph().items()
             for target, line in targets.items()
             if target == ROOT_MODULE and LAYERS[layer_of(name)][0] != "top"
             and name not in KNOWN_ROOT_USERS]
    assert not found, f"{ROOT_MODULE} imported below the entry points: {found}"


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/support/; a test file can be read, moved or deleted
    on its own."""
    tests = ROOT / "tests"
    found = []
    for path in sorted(tests.rglob("*.py")):
        if "support" in path.relative_to(tests).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.startswith("tests") and not n.startswith("tests.support")
                      and n != "tests"]
    assert not found, "import shared test code from tests/support/:\n" + "\n".join(found)


# The agents talk to a conductor over HTTP only (it may be remote): of the floors below
# they use the base and the pure model, never the controller's insides.
AGENTS_MAY_USE = ("base", "model", "agents")


def test_agents_use_http_not_the_controller() -> None:
    found = [f"{name}:{line} imports {target}" for name, targets in graph().items()
             if LAYERS[layer_of(name)][0] == "agents"
             for target, line in targets.items()
             if target in modules() and LAYERS[layer_of(target)][0] not in AGENTS_MAY_USE]
    assert not found, "\n".join(found)
