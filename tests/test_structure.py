"""The package's shape: one job per module, a public surface, no cycles, a torch-free core.

These are checks on the source tree (read with ``ast``), so a change that breaks the layout
fails here with the offending file named, instead of in a reviewer's head.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rnet_hub"
MAX_MODULE_LINES = 400
#: Importing these must not import torch (the CLI's fast path and ``--help`` rely on it).
TORCH_FREE = ("rnet_hub", "rnet_hub.version", "rnet_hub.errors", "rnet_hub.architectures", "rnet_hub.names",
              "rnet_hub.staging", "rnet_hub.folder", "rnet_hub.hub", "rnet_hub.progress", "rnet_hub.archives.extract",
              "rnet_hub.archives.torchzip", "rnet_hub.archives.download", "rnet_hub.cli", "rnet_hub.cli.clean",
              "rnet_hub.leftovers", "rnet_hub.interrupts")
PRIVATE_IMPORT = re.compile(r"rnet_hub(\.[A-Za-z0-9_]+)*\._[a-z]\w*|from rnet_hub(\.\w+)* import \(?\s*_[a-z]")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(module: str, path: Path) -> set[str]:
    """The rnet_hub modules ``module`` imports (at any depth, outside ``if TYPE_CHECKING``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # drop type-checking-only imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("rnet_hub"):
                submodules = {f"{base}.{a.name}" for a in node.names} & set(_modules())
                found.update(submodules or {base})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rnet_hub"))
    return found


def test_no_private_module_is_used_outside_the_package() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for folder in ("tests", "benchmarks", "conversion") for path in sorted((ROOT / folder).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_IMPORT.search(line)]
    assert offenders == []


def test_every_module_is_short_and_says_what_it_is_for() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
    undocumented = [str(p.relative_to(ROOT)) for p in _modules().values()
                    if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert undocumented == []


def test_no_module_imports_upward_into_the_package_face() -> None:
    modules = _modules()
    upward = {name: sorted(i for i in _imported(name, path) if i in ("rnet_hub", "rnet_hub.__version__")
                           or (i.startswith("rnet_hub.") and i.count(".") == 1 and i not in modules))
              for name, path in modules.items() if name != "rnet_hub"}
    assert {k: v for k, v in upward.items() if v} == {}


def test_there_are_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: {i for i in _imported(name, path) if i in modules and i != name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    for name in graph:
        graph[name] = {i for i in graph[name] if not (i.startswith(name + ".") or name.startswith(i + "."))}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_core_imports_without_torch(module: str) -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; "
            f"import {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['timm', 'torch']"  # only the two blockers themselves
