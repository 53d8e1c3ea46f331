"""The package layers of docs/architecture.md, kept by a test: each package imports only packages of lower layers,
and no module imports itself back through others (no cycle), counting imports inside functions too.

Read from the source with :mod:`ast` (nothing is imported), so the test takes well under a second. It fails on a
reversed import, e.g. adding to ``treg_exp/common/seeding.py``::

    from treg_exp.experiment.runner import Runner   # the base layer importing a top one

fails :func:`test_every_package_has_a_layer_and_every_import_points_down_the_layers` with
``treg_exp.common.seeding:<line> imports treg_exp.experiment.runner: common may not import experiment``;
and putting back the old ``from treg_exp.reporting import report`` inside ``tables.run_from_args`` fails
:func:`test_no_module_imports_itself_back` with the cycle
``treg_exp.reporting.report -> treg_exp.reporting.tables -> treg_exp.reporting.report``.
:func:`test_the_checks_catch_a_reversed_import_and_a_cycle` shows both on a made-up source tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: top to bottom; packages in one layer are independent (neither may import the other); ``cli`` is the root module.
LAYERS: list[set[str]] = [
    {"cli"},
    {"reporting"},
    {"experiment"},
    {"solvers", "metrics", "prompts"},
    {"data"},
    {"models", "operators"},
    {"tracking"},
    {"common"},
]
LAYER_OF = {package: depth for depth, packages in enumerate(LAYERS) for package in packages}


def module_files(source_root: Path) -> dict[str, Path]:
    """``treg_exp.<...>`` module name → file, for every module under ``source_root/treg_exp``."""
    modules = {}
    for path in sorted((source_root / "treg_exp").rglob("*.py")):
        parts = path.relative_to(source_root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """The treg_exp modules ``name`` imports (anywhere in the file, lazily too), each with its line number.

    ``from package import name`` counts as importing the submodule ``package.name`` when there is one, else the
    package itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("treg_exp")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "treg_exp" or base.startswith("treg_exp."):
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    found.append((submodule if submodule in modules else base, node.lineno))
    return found


def package_of(module: str) -> str:
    """``treg_exp.solvers.treg`` → ``solvers``; the root modules (``treg_exp.cli``, ``treg_exp``) → their name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def layer_violations(source_root: Path) -> list[str]:
    """One line per import that does not point to a strictly lower layer (or from/to a package in no layer)."""
    modules = module_files(source_root)
    problems = []
    for name, path in modules.items():
        source = package_of(name)
        if name == "treg_exp":
            continue  # the package's own __init__ imports nothing of its own
        for target, line in imports_of(name, path, modules):
            imported = package_of(target)
            if imported == source:
                continue
            where = f"{name}:{line} imports {target}"
            if source not in LAYER_OF or imported not in LAYER_OF:
                unplaced = source if source not in LAYER_OF else imported
                problems.append(f"{where}: package {unplaced} has no layer (add it to LAYERS and the docs)")
            elif LAYER_OF[imported] <= LAYER_OF[source]:
                problems.append(f"{where}: {source} may not import {imported}")
    return problems


def import_cycles(source_root: Path) -> list[list[str]]:
    """Every strongly connected group of two or more modules (or a module importing itself), as a cycle path."""
    modules = module_files(source_root)
    graph = {
        name: sorted({t for t, _ in imports_of(name, path, modules) if t in modules}) for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for name in graph:
        if name not in index:
            visit(name)
    return [_cycle_path(group, graph) for group in groups]


def _cycle_path(group: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A closed path through ``group``'s first member (for the failure message)."""
    start, members = group[0], set(group)
    path, seen = [start], {start}
    while True:
        step = next(t for t in graph[path[-1]] if t in members and (t == start or t not in seen))
        path.append(step)
        if step == start:
            return path
        seen.add(step)


def test_every_package_has_a_layer_and_every_import_points_down_the_layers():
    """Catches a lower layer importing a higher one (``common`` importing ``experiment``), two packages of one
    layer importing each other, and a new package added to ``treg_exp/`` without a place in the layers."""
    packages = {package_of(name) for name in module_files(ROOT)}
    assert packages <= set(LAYER_OF), f"packages without a layer: {sorted(packages - set(LAYER_OF))}"
    assert layer_violations(ROOT) == []


def test_no_module_imports_itself_back():
    """Catches an import cycle between modules, such as ``tables`` and ``report`` importing each other (the one
    this layout removed), including cycles closed by an import inside a function."""
    assert [" -> ".join(cycle) for cycle in import_cycles(ROOT)] == []


def test_the_checks_catch_a_reversed_import_and_a_cycle(tmp_path):
    """On a made-up tree: an upward import and a two-module cycle are both reported (so the two tests above would
    fail on them), and a downward import is not. Catches a checker that reads no import and passes anything."""
    files = {
        "treg_exp/__init__.py": "",
        "treg_exp/common/__init__.py": "",
        "treg_exp/common/seeding.py": "def f():\n    from treg_exp.experiment import runner\n",
        "treg_exp/experiment/__init__.py": "",
        "treg_exp/experiment/runner.py": "from treg_exp.common.seeding import f\n",
        "treg_exp/reporting/__init__.py": "",
        "treg_exp/reporting/tables.py": "from . import report\n",
        "treg_exp/reporting/report.py": "from treg_exp.reporting.tables import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert layer_violations(tmp_path) == [
        "treg_exp.common.seeding:2 imports treg_exp.experiment.runner: common may not import experiment"
    ]
    cycles = sorted(" -> ".join(c) for c in import_cycles(tmp_path))
    assert cycles == [
        "treg_exp.common.seeding -> treg_exp.experiment.runner -> treg_exp.common.seeding",
        "treg_exp.reporting.report -> treg_exp.reporting.tables -> treg_exp.reporting.report",
    ]
