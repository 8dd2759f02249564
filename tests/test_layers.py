"""The package's import graph: no cycles, and no module imports one from a layer above its own.

Every `import` in src/mnist_cnn is read with `ast`, those inside functions included (a lazy
import is still a dependency). The layers, lowest first, are written out below; a new module
must be placed in one, which is the point: where a change goes is decided here, once.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mnist_cnn"

# Lowest first. A module may import its own layer or lower ones; a name ending in "." is a
# package prefix (the package and everything in it).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mnist_cnn.errors", "mnist_cnn.fileio", "mnist_cnn.version")),
    ("device", ("mnist_cnn.precision", "mnist_cnn.compilation")),
    ("data", ("mnist_cnn.data", "mnist_cnn.data.", "mnist_cnn.preprocess", "mnist_cnn.ink", "mnist_cnn.decode_budget",
              "mnist_cnn.augment")),
    ("models", ("mnist_cnn.models", "mnist_cnn.models.", "mnist_cnn.ema")),
    ("config", ("mnist_cnn.config",)),
    ("run on disk", ("mnist_cnn.runs", "mnist_cnn.trainstate", "mnist_cnn.checkpoint")),
    ("inference", ("mnist_cnn.inference", "mnist_cnn.outputs", "mnist_cnn.plots", "mnist_cnn.evaluate",
                   "mnist_cnn.predict")),
    ("training", ("mnist_cnn.distributed", "mnist_cnn.runlog", "mnist_cnn.budget", "mnist_cnn.train")),
    ("commands", ("mnist_cnn.lr_find", "mnist_cnn.tune", "mnist_cnn.tune.", "mnist_cnn.export", "mnist_cnn.show",
                  "mnist_cnn.compare", "mnist_cnn.tbexport")),
    ("surface", ("mnist_cnn.serve", "mnist_cnn.serve.", "mnist_cnn.api", "mnist_cnn.cli", "mnist_cnn",
                 "mnist_cnn.__main__")),
]


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (functions included).
    `from package import submodule` counts as importing the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # mnist_cnn.x.SomeClass -> mnist_cnn.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".") and module.startswith(member)):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checks_can_fail():
    """The walker sees function-level imports and the cycle finder finds a planted cycle."""
    assert "mnist_cnn.api" in GRAPH["mnist_cnn"]  # imported inside __getattr__, at first use
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("mnist_cnn_other.module")


def test_no_reexport_shims():
    """Names are imported from the module that defines them: no `# noqa: F401` re-exports outside
    package front doors (__init__.py) and the public API module."""
    shims = [f"{path.relative_to(SRC)}:{n}" for path in MODULES.values() if path.name != "__init__.py"
             and path.name != "api.py" for n, line in enumerate(path.read_text().splitlines(), 1)
             if line.startswith(("from mnist_cnn", "import mnist_cnn")) and "F401" in line]
    assert not shims, shims
