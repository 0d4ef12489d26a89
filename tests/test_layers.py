"""The package's import drawing: every import points down the layers, and no module comes back to
itself. Read from the source (ast), every import counted: at the top, inside functions (lazy)
and under TYPE_CHECKING. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"

# Lowest first. A module may import its own layer's modules and any lower layer's, never a
# higher one's. A name is a module or a package (all of its modules).
LAYERS = [
    ["pipeline", "pipeline.errors"],
    ["pipeline.config"],
    [
        "pipeline.interrupts",
        "pipeline.provenance",
        "pipeline.summary",
        "pipeline.plots",
        "pipeline.tensorflow_internals",
    ],
    ["pipeline.data", "pipeline.catalog", "pipeline.backbones"],
    ["pipeline.model", "pipeline.boundary", "pipeline.pretrain"],
    ["pipeline.stages"],
    ["pipeline.tracking"],
    ["pipeline.validation"],
    ["pipeline.sweeps"],
    ["pipeline.search"],
    ["pipeline.experiment"],
    ["pipeline.cli", "pipeline.__main__"],
    # sweeps/sequential/ (hydra/sweeper=sequential) decides with report/sequential.py's statistics
    ["pipeline.report", "pipeline.reproduce", "pipeline.replicate", "pipeline.sweeps.sequential"],
]

# The one import that goes up, on purpose: `python -m pipeline` imports the package first, and
# the package holds Ctrl-C from its first line (pipeline/cli/entry.py says why).
ALLOWED_UP = {("pipeline", "pipeline.cli.startup")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST) -> list[str]:
    """The project modules an import statement loads (`from pipeline.x import y`: pipeline.x.y
    when y is a module, else pipeline.x)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        module = node.module
        names = [
            f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
            for alias in node.names
        ]
    else:
        return []
    return [name for name in names if name == "pipeline" or name.startswith("pipeline.")]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {target for node in ast.walk(tree) for target in imported(node)}
        graph[name] = {target for target in targets if target != name}
    return graph


def layer_of(module: str) -> int:
    """The layer of the longest name in LAYERS that is the module or a package above it."""
    best, found = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, found = name, index
    assert found is not None, f"{module} is in no layer: add it to LAYERS (and the docs)"
    return found


def test_every_module_has_a_layer_and_every_layer_a_module():
    for module in MODULES:
        layer_of(module)
    for names in LAYERS:
        for name in names:
            assert name in MODULES, f"{name} in LAYERS is not a module of the package"


def test_no_import_goes_back_up():
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(source) and (source, target) not in ALLOWED_UP
    ]
    assert upward == []


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the path that closes it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_module_imports_itself_around_a_circle():
    assert cycle(import_graph()) is None


def unit_of(module: str) -> str:
    """The name in LAYERS that holds the module: its package, or the module itself."""
    names = [name for names in LAYERS for name in names]
    return max((n for n in names if module == n or module.startswith(n + ".")), key=len)


def test_no_package_imports_itself_around_a_circle():
    units: dict[str, set[str]] = {}
    for source, targets in import_graph().items():
        if source == "pipeline":  # the package's own start (ALLOWED_UP), not a unit of code
            continue
        units.setdefault(unit_of(source), set()).update(
            unit_of(target) for target in targets if unit_of(target) != unit_of(source)
        )
    assert cycle(units) is None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycle(graph) == expected


def test_the_drawing_sees_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "pipeline.search.stage" in graph["pipeline.experiment"]  # inside a function
    assert "pipeline.pretrain" in graph["pipeline.tracking.protocol"]  # under TYPE_CHECKING
    assert "pipeline.sweeps.stop" in graph["pipeline.sweeps.callbacks"]  # `from pkg import mod`
