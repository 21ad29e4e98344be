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

# Bottom to top; a module may import its own layer and the layers below, never above.
LAYERS: list[tuple[str, frozenset[str]]] = [
    # Pure data and rules: no I/O, no threads, no outside world.
    ("pure", frozenset({
        "controller.assets", "controller.config", "controller.errors", "controller.objects",
        "controller.times", "controller.redaction", "controller.eventquery",
        "controller.parameters", "controller.rendering", "controller.planning",
        "controller.health", "controller.logs"})),
    # The outside world (Kubernetes, Git, SQLite, Prometheus), knowing nothing of passes.
    ("adapters", frozenset({
        "controller.kube", "controller.watching", "controller.crds", "controller.startup",
        "controller.requirements", "controller.leadership", "controller.sources",
        "controller.sources.editing", "controller.sources.git", "controller.sources.resource",
        "controller.events", "controller.history", "controller.metrics"})),
    # One pass for one instance.
    ("reconcile", frozenset({"controller.applying", "controller.engine"})),
    # Long-lived threads and the composition root.
    ("runtime", frozenset({
        "controller.observing", "controller.recording", "controller.reporting",
        "controller.operations", "controller.loop", "controller.notifying",
        "controller.main"})),
    # HTTP only.
    ("api", frozenset()),  # every controller.api.* module (see layer_of)
    # Entry points.
    ("top", frozenset({"controller", "controller.__main__", "controller.cli"})),
]

PURE_MAY_NOT_IMPORT = frozenset({
    "kubernetes", "urllib3", "git", "sqlite3", "falcon", "gunicorn", "prometheus_client",
    "tenacity", "threading", "socket", "subprocess", "requests"})
# An outside library -> the only modules that may import it.
DOORS: dict[str, frozenset[str]] = {
    "kubernetes": frozenset({"controller.kube"}),
    "urllib3": frozenset({"controller.kube"}),
    "git": frozenset({"controller.sources.git"}),
    # The stores: events, parameter history, the notifier's cursor in the events file.
    "sqlite3": frozenset({"controller.events", "controller.history", "controller.notifying"}),
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
    if name.startswith("controller.api.") or name == "controller.api":
        return [n for n, _ in LAYERS].index("api")
    for i, (_, members) in enumerate(LAYERS):
        if name in members:
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
    pure = LAYERS[0][1]
    for name, targets in graph().items():
        if name not in pure:
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
             and not name.startswith("controller.api")]
    assert not found, "\n".join(found)


def test_timestamps_have_one_home() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for name, path in modules().items() if name != "controller.times"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if TIME_TEXT.search(line)]
    assert not found, "format or parse timestamps in controller/times.py:\n" + \
        "\n".join(found)
