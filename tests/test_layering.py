"""The import rules of engine/, connectors/ and layers/, read from the code's own imports (module level, inside
functions and under TYPE_CHECKING alike); nothing is imported or run.

    no import cycle between modules
    connectors and layers import nothing of the engine outside engine.core
    engine.core imports nothing of the project outside engine.core
    inside engine, a subpackage never imports one ranked above it: core < controlplane < run < pipelines < cli
    mcp/ is a plain folder (`ipai mcp` loads mcp/server.py by path), never a package shadowing the `mcp` library

Each failure lists its violations by module. A control case runs the same checks over a small made-up tree
with one violation of each kind planted, so a check that finds nothing is known to be able to find something.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "connectors", "layers")
OURS = (*PACKAGES, "tests", "benchmarks")  # top-level names that are the project's own code
RANKS = ("core", "controlplane", "run", "pipelines", "cli")  # engine's subpackages, lowest first


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} imports {self.target} (line {self.line})"


def module_name(relative: Path) -> str:
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(package: str, module: str | None, level: int) -> str:
    """The module a `from` import names, with a relative one (`from ..x import y`) resolved from `package`."""
    if not level:
        return module or ""
    parts = package.split(".")
    base = parts[:len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def deepest(target: str, known: set[str]) -> str:
    """The module `target` lands in: itself, or the longest prefix that is a module (`a.b.Name` -> `a.b`)."""
    name = target
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or target


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import of the project's own code in `path`, wherever it stands in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(package, node.module, node.level)
            # `from pkg import sub` imports the module pkg.sub; `from pkg import Name` takes a name from pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in OURS and (landed := deepest(target, known)) != name:
                yield Import(name, landed, node.lineno)


def read_imports(root: Path) -> dict[str, list[Import]]:
    """The project imports of every module of PACKAGES under `root`, by module."""
    paths = {module_name(p.relative_to(root)): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    return {name: sorted(set(imports_of(name, path, set(paths))), key=lambda i: (i.line, i.target))
            for name, path in sorted(paths.items())}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# -- the rules: each returns its violations, by module -------------------------------------------------------


def cycles(found: dict[str, list[Import]]) -> list[str]:
    """Every group of modules that import each other round in a circle, with the imports that close it."""
    graph = {name: {i.target for i in imports if i.target in found} for name, imports in found.items()}
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            if (v := todo.pop()) not in seen:
                seen.add(v)
                todo.extend(graph[v])
        reach[start] = seen
    groups = {frozenset({v, *(w for w in reach[v] if v in reach[w])}) for v in graph if v in reach[v]}
    out = []
    for group in sorted(groups, key=sorted):
        out.append(f"import cycle between {len(group)} modules:")
        out += [f"  {i}" for name in sorted(group) for i in found[name] if i.target in group]
    return out


def upward_from_connectors_and_layers(found: dict[str, list[Import]]) -> list[str]:
    return [f"{i}: connectors and layers import only engine.core of the engine"
            for name, imports in found.items() if name.split(".")[0] in ("connectors", "layers")
            for i in imports if within(i.target, "engine") and not within(i.target, "engine.core")]


def core_reaching_out(found: dict[str, list[Import]]) -> list[str]:
    return [f"{i}: engine.core imports nothing of the project outside engine.core"
            for name, imports in found.items() if within(name, "engine.core")
            for i in imports if not within(i.target, "engine.core")]


def engine_rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.index(parts[1]) if len(parts) > 1 and parts[0] == "engine" and parts[1] in RANKS else None


def engine_upward(found: dict[str, list[Import]]) -> list[str]:
    order = " < ".join(RANKS)
    out = []
    for name, imports in found.items():
        if not within(name, "engine") or name == "engine":
            continue
        rank = engine_rank(name)
        if rank is None:
            out.append(f"{name}: in none of engine's subpackages ({order}), so no rank to check it by")
            continue
        out += [f"{i}: {RANKS[rank]} may not import {RANKS[target_rank]}, ranked above it ({order})"
                for i in imports if (target_rank := engine_rank(i.target)) is not None and target_rank > rank]
    return out


def mcp_package(root: Path) -> list[str]:
    init = root / "mcp" / "__init__.py"
    return [f"mcp: {init.relative_to(root)} exists; mcp/ must stay a plain folder, or it shadows the mcp library"
            ] if init.exists() else []


RULES = {
    "no import cycles": cycles,
    "connectors and layers import only engine.core": upward_from_connectors_and_layers,
    "engine.core imports nothing above it": core_reaching_out,
    "engine's subpackages import downward only": engine_upward,
}


def check(rule: str, violations: list[str]) -> None:
    report = f"{rule}: {len(violations)} violation(s)\n" + "\n".join(violations)
    print(report)
    assert not violations, report


# -- the project ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def found() -> dict[str, list[Import]]:
    return read_imports(ROOT)


@pytest.mark.parametrize("rule", RULES)
def test_the_import_rule_holds(rule: str, found: dict[str, list[Import]]) -> None:
    check(rule, RULES[rule](found))


def test_mcp_is_a_plain_folder() -> None:
    check("mcp is a plain folder", mcp_package(ROOT))


def test_the_reader_sees_the_project() -> None:
    found = read_imports(ROOT)
    assert {"engine.core.spec", "connectors.github", "layers.bronze.writer", "engine.cli.main"} <= set(found)
    assert sum(map(len, found.values())) > 100, "too few imports read: the checks would pass on nothing"


# -- the control case: one violation of each kind, planted ---------------------------------------------------

PLANTED = {
    "engine/__init__.py": "",
    "engine/stray.py": "",
    "engine/core/__init__.py": "",
    "engine/core/spec.py": "from engine.run import driver\n",
    "engine/controlplane/__init__.py": "",
    "engine/controlplane/db.py": "from engine.core.spec import Spec\n",
    "engine/run/__init__.py": "",
    "engine/run/driver.py": "import json\n\n\ndef go():\n    from engine.cli import main\n",
    "engine/cli/__init__.py": "",
    "engine/cli/main.py": "from ..core import spec\n",
    "connectors/__init__.py": "from .odoo import api\n",
    "connectors/odoo/__init__.py": "",
    "connectors/odoo/api.py": "from . import rpc\nfrom engine.core.spec import Spec\n",
    "connectors/odoo/rpc.py": "from connectors.odoo.api import Client\n",
    "layers/__init__.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                          "    from engine.controlplane.db import Database\n",
    "mcp/__init__.py": "",
}


def test_each_check_finds_what_was_planted(tmp_path: Path) -> None:
    for relative, text in PLANTED.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    found = read_imports(tmp_path)
    # engine.core.spec -> engine.run.driver -> (in a function) engine.cli.main -> engine.core.spec is a cycle too.
    assert cycles(found) == [
        "import cycle between 2 modules:",
        "  connectors.odoo.api imports connectors.odoo.rpc (line 1)",
        "  connectors.odoo.rpc imports connectors.odoo.api (line 1)",
        "import cycle between 3 modules:",
        "  engine.cli.main imports engine.core.spec (line 1)",
        "  engine.core.spec imports engine.run.driver (line 1)",
        "  engine.run.driver imports engine.cli.main (line 5)",
    ]
    assert upward_from_connectors_and_layers(found) == [
        "layers imports engine.controlplane.db (line 4): connectors and layers import only engine.core of the engine"]
    assert core_reaching_out(found) == [
        "engine.core.spec imports engine.run.driver (line 1): engine.core imports nothing of the project outside "
        "engine.core"]
    order = "core < controlplane < run < pipelines < cli"
    assert engine_upward(found) == [
        f"engine.core.spec imports engine.run.driver (line 1): core may not import run, ranked above it ({order})",
        f"engine.run.driver imports engine.cli.main (line 5): run may not import cli, ranked above it ({order})",
        f"engine.stray: in none of engine's subpackages ({order}), so no rank to check it by",
    ]
    assert mcp_package(tmp_path) == [
        "mcp: mcp/__init__.py exists; mcp/ must stay a plain folder, or it shadows the mcp library"]
