"""The package's layout: its modules import each other without circles and only from their layer or
below, the development page's map is its tree, and no function runs over 60 lines.

The graph is read here from the source with ``ast``: every ``import`` of a ``lightning_reg`` module, at the
top of a file, under ``TYPE_CHECKING`` or inside a function, is an edge from the importing module to the
imported one (``from lightning_reg.x import y`` reaches ``lightning_reg.x.y`` when that is a module).
A package's ``__init__`` that a submodule's import runs first is not counted: Python's own order, not
the code's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_reg

ROOT = Path(lightning_reg.__file__).resolve().parent
PACKAGE = "lightning_reg"


def module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` (the file ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds ``name``
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of ``graph`` as the list of its modules (the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_check_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_is_read_from_the_source() -> None:
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert "lightning_reg.sweeps.storages" in graph["lightning_reg.sweeps.study"]
    assert "lightning_reg.utilities.optional" in graph["lightning_reg.sweeps.arguments"]
    assert (
        "lightning_reg.functional.group_layout" in graph["lightning_reg.optim.group_prox"]
    )  # from lightning_reg import x


def test_no_module_imports_itself_through_others() -> None:
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_namespace_shows_the_public_api_and_nothing_else() -> None:
    assert dir(lightning_reg) == sorted(lightning_reg.__all__)
    assert callable(lightning_reg.shrink)  # the function, no longer hidden by a submodule of its name
    assert not isinstance(lightning_reg.shrink, type(lightning_reg))
    for helper in ("importlib", "TYPE_CHECKING", "Any"):
        assert helper not in dir(lightning_reg)


def test_a_module_path_of_0_2_still_imports_with_a_warning() -> None:
    import importlib
    import sys

    import pytest

    from lightning_reg.utilities import checks

    sys.modules.pop("lightning_reg.checks", None)
    with pytest.warns(FutureWarning, match=r"lightning_reg.checks moved to lightning_reg.utilities.checks"):
        old = importlib.import_module("lightning_reg.checks")
    assert old is checks
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lightning_reg.no_such_module")


#: The modules 0.2.0 shipped at the top of the package, as its wheel had them (``shrink`` is the function).
SHIPPED_IN_0_2 = [
    "channels",
    "checks",
    "couplings",
    "deferred",
    "kernels",
    "optional",
    "param_groups",
    "penalties",
    "pruning",
    "sharding",
    "step_hooks",
    "step_sizes",
    "step_updates",
]


def test_every_module_path_of_0_2_and_no_other_old_path_imports() -> None:
    import importlib
    import warnings

    import pytest

    for name in SHIPPED_IN_0_2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            old = importlib.import_module(f"lightning_reg.{name}")
        assert old.__name__.startswith("lightning_reg.")
        assert old.__name__.endswith(f".{name}")
        assert old.__name__ != f"lightning_reg.{name}"
    for added_since in ("group_prox", "fused", "batchnorm", "eager"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"lightning_reg.{added_since}")


#: The layers, from the bottom; a module imports only from its own layer or below.
LAYERS = (
    ("utilities",),
    ("functional",),
    ("options", "selection"),
    ("optim", "structured"),
    ("terms",),
    ("activity", "statistics", "regularizer", "module", "monitor", "recalibration"),
    ("sweeps", "demos"),
    ("cli",),
)


def rank(name: str) -> int | None:
    """The layer of a module by its first name under the package (``None``: the package itself)."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1].startswith("_"):
        return None  # the package's __init__ (the public facade) and its private helpers
    return next(index for index, layer in enumerate(LAYERS) if parts[1] in layer)


def test_each_module_imports_only_from_its_layer_or_below() -> None:
    modules = module_names()
    upward = [
        f"{name} -> {target}"
        for name, path in modules.items()
        for target in imports_of(name, path, set(modules))
        if rank(name) is not None and rank(target) is not None and rank(target) > rank(name)  # type: ignore[operator]
    ]
    assert upward == []


DEVELOPMENT = ROOT.parent / "docs" / "development.md"
APPS = ("sweeps", "demos", "cli")  # the map describes each as a whole


def mapped_tree() -> set[str]:
    """The files and folders the development page's map of the package names, as paths in the package."""
    block = DEVELOPMENT.read_text().split("```text\nlightning_reg/\n", 1)[1].split("```", 1)[0]
    found, folder = set(), ""
    for line in block.splitlines():
        indent, token = len(line) - len(line.lstrip(" ")), (line.split() or [""])[0]
        if indent == 2 and token.endswith("/"):
            folder = token
            found.add(token)
        elif indent == 2 and token.endswith(".py"):
            found.add(token)
        elif indent == 4 and token.endswith(".py"):
            found.add(folder + token)
    return found


def test_the_development_map_shows_the_real_tree() -> None:
    real = set()
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if len(parts) == 1 and (parts[0] == "__init__.py" or not parts[0].startswith("_")):
            real.add(parts[0])
        elif len(parts) > 1:
            real.add(parts[0] + "/")
            if parts[0] not in APPS and parts[-1] != "__init__.py":
                real.add("/".join(parts))
    assert sorted(mapped_tree()) == sorted(real)


MAX_FUNCTION_LINES = 60


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from its first statement after the docstring to its end."""
    body = function.body
    documented = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
    end = function.end_lineno or function.lineno
    return end - body[1 if documented else 0].lineno + 1


def test_no_function_is_longer_than_60_lines_without_its_docstring() -> None:
    long = [
        f"{name}.{node.name}: {body_lines(node)}"
        for name, path in module_names().items()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert long == []
