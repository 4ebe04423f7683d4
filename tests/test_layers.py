"""The package's layers: every import runs one way, from the entry points down to the data, with no circle.

Imports are read from the source (ast), not from a run, so an import inside a function or under
`TYPE_CHECKING` counts like any other. MLflow is imported only where runs are started and logged.
"""

from __future__ import annotations

import ast
from pathlib import Path

import anomaly_repr
import tuning

ROOTS = (Path(anomaly_repr.__file__).parent, Path(tuning.__file__).parent)

# Top to bottom: a module may import its own layer and the layers below it.
LAYERS = (
    ("entry", ("anomaly_repr.cli", "anomaly_repr.__main__")),
    ("study", ("anomaly_repr.study", "tuning")),
    ("tracking", ("anomaly_repr.tracking",)),
    ("engine", ("anomaly_repr.engine",)),
    ("methods", ("anomaly_repr.methods",)),
    ("scoring", ("anomaly_repr.scoring",)),
    ("models", ("anomaly_repr.models",)),
    ("data", ("anomaly_repr.data",)),
    ("base", ("anomaly_repr.config", "anomaly_repr.presets", "anomaly_repr.registry", "anomaly_repr.errors",
              "anomaly_repr")),
)
# config reads the registries that the layers above fill, and nothing else of the package
CONFIG_IMPORTS = {"anomaly_repr.errors", "anomaly_repr.registry", "anomaly_repr.presets"}
MLFLOW_LAYERS = {"tracking", "study", "entry"}
# The edge that reads the environment: the CLI, and the tracking setup that reads MLflow's own variables
# (the store, and the experiment `mlflow run` chose). The pool copies it for the workers it starts.
ENVIRONMENT_READERS = {"anomaly_repr.cli", "anomaly_repr.tracking.setup", "anomaly_repr.study.pool"}


def module_name(path: Path) -> str:
    root = next(r for r in ROOTS if r in path.parents)
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for root in ROOTS for p in sorted(root.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module of the project, line) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` names the module
                name = f"{node.module}.{alias.name}"
                found.append((name if name in known else node.module, node.lineno))
    return sorted({(name, line) for name, line in found if name.split(".")[0] in ("anomaly_repr", "tuning")})


def layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "anomaly_repr"):
            return index
    assert module == "anomaly_repr", f"{module} is in no layer: add it to LAYERS"
    return len(LAYERS) - 1


def graph() -> dict[str, list[tuple[str, int]]]:
    found = modules()
    return {name: [(m, line) for m, line in imports(path, set(found)) if m != name] for name, path in found.items()}


def circles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target, _ in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{name}:{line} imports {target} ({LAYERS[layer(target)][0]} is above {LAYERS[layer(name)][0]})"
              for name, targets in graph().items() for target, line in targets if layer(target) < layer(name)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    assert not circles(graph()), circles(graph())


def test_config_imports_only_errors_and_registries():
    edges = {target for target, _ in graph()["anomaly_repr.config"]}
    assert edges <= CONFIG_IMPORTS, edges - CONFIG_IMPORTS


def test_mlflow_is_imported_only_where_runs_are_started_and_logged():
    outside = []
    for name, path in modules().items():
        if LAYERS[layer(name)][0] in MLFLOW_LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            outside += [f"{name}:{node.lineno}" for n in names if n.split(".")[0] == "mlflow"]
    assert not outside, outside


def environment_reads(path: Path) -> list[int]:
    """Lines that touch os.environ or call os.getenv / os.putenv / os.unsetenv."""
    return sorted({node.lineno for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                   and node.attr in ("environ", "getenv", "putenv", "unsetenv")})


def test_the_environment_is_read_at_the_edge_and_passed_down():
    deep = [f"{name}:{line}" for name, path in modules().items() if name not in ENVIRONMENT_READERS
            for line in environment_reads(path)]
    assert not deep, deep
    assert environment_reads(modules()["anomaly_repr.cli"])  # the checker sees a read where one is


def test_the_checker_finds_a_circle_and_an_upward_import():
    edges = {"anomaly_repr.data.split": [("anomaly_repr.engine.train", 3)],
             "anomaly_repr.engine.train": [("anomaly_repr.data.split", 5)]}
    assert circles(edges) == [["anomaly_repr.data.split", "anomaly_repr.engine.train"]]
    assert layer("anomaly_repr.engine.train") < layer("anomaly_repr.data.split")
